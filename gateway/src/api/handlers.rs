//! The route handlers. Reads of the store run on the blocking pool, each
//! as a contained scope and holding one of `max_concurrent_queries` slots.
//! Every parameter is checked by `params` before any work.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequestParts, Path, RawQuery, State};
use axum::http::request::Parts;
use axum::Json;
use ferry_core::record::Value;
use serde_json::{json, Map, Value as Json_};

use super::json::{Body, DeviceOut, DevicesOut, FieldOut, Latest, LatestOut, QueryOut, SeriesOut};
use super::params::{known, now, one, parse_count, parse_duration_ms, parse_pairs, parse_query};
use super::{ApiContext, ApiError, PanicAnswer, CANCELLED};
use crate::contain;
use crate::metrics::UplinkMetrics;
use crate::query::QueryError;
use crate::store::{Cancel, StoreError, Stream};
use crate::uplink::cursor_name;

type Ctx = State<Arc<ApiContext>>;

/// A route's query parameters, decoded by `params::parse_pairs` (bounded
/// by `max_query_bytes`; a bad one is a JSON 400, as every API error).
pub(super) struct Params(pub Vec<(String, String)>);

#[axum::async_trait]
impl FromRequestParts<Arc<ApiContext>> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        ctx: &Arc<ApiContext>,
    ) -> Result<Params, ApiError> {
        let raw = parts.uri.query().unwrap_or("");
        parse_pairs(raw, ctx.limits.max_query_bytes).map(Params)
    }
}

/// The longest `wait` a `/records` request may ask for.
const MAX_WAIT: Duration = Duration::from_secs(60);
/// The most records or dead letters in one response.
const MAX_RECORDS: usize = 1000;
/// The most devices in one `/devices` page.
const MAX_DEVICES: usize = 1000;
/// The most fields in one `/devices` page past its first device (a device
/// has at most `store.max_fields_per_device`).
const MAX_PAGE_FIELDS: usize = 10_000;
/// The most stored records one `/records?device=` request looks through.
const MAX_SCAN: usize = 200_000;

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Cancelled => ApiError::cancelled(),
            e => ApiError::internal(e),
        }
    }
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> Self {
        match e {
            QueryError::Cancelled | QueryError::Store(StoreError::Cancelled) => {
                ApiError::cancelled()
            }
            QueryError::TooManyPoints { .. } => ApiError {
                status: axum::http::StatusCode::BAD_REQUEST,
                code: "too_many_points",
                message: e.to_string(),
            },
            QueryError::Step { .. } => ApiError::bad(format!("`step`: {e}")),
            e => ApiError::internal(e),
        }
    }
}

/// Holds the gauge of running queries up while it lives.
struct Running(prometheus_client::metrics::gauge::Gauge);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Runs `f` on the blocking pool holding a query slot (all taken: a 503
/// `busy`), as a contained scope: a panic in `f` is a 500 `internal`,
/// counted as `panic`. The slot is held until `f` ends. `f` is given a
/// cancel flag raised when the request is gone (answered 503
/// `request_timeout` after `[api] request_timeout`, or its connection
/// closed): the engine's and the store's reads made with it end soon after
/// with a `cancelled` error, which frees the slot, and are counted in
/// `ferry_api_queries_cancelled_total`.
pub(super) async fn blocking<T: Send + 'static>(
    ctx: &ApiContext,
    f: impl FnOnce(&Cancel) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, axum::response::Response> {
    use axum::response::IntoResponse;
    let slot = ctx
        .limits
        .slots
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::busy(ctx.limits.max_concurrent_queries).into_response())?;
    let gauge = ctx.metrics.queries_running.clone();
    gauge.inc();
    let running = Running(gauge);
    let cancel = Cancel::new();
    // Dropped with this future when the request is gone: cancels `f`'s reads.
    let gone = cancel.on_drop();
    let cancelled = ctx.metrics.queries_cancelled.clone();
    let joined = tokio::task::spawn_blocking(move || {
        let _held = (slot, running);
        let result = contain::contained(|| f(&cancel));
        if matches!(&result, Ok(Err(e)) if e.code == CANCELLED) {
            cancelled.inc();
        }
        result
    })
    .await;
    gone.disarm();
    match joined {
        Ok(Ok(result)) => result.map_err(IntoResponse::into_response),
        Ok(Err(p)) => Err(PanicAnswer(ApiError::panicked(&p)).into_response()),
        Err(e) => Err(ApiError::internal(format!("query task failed: {e}")).into_response()),
    }
}

type Reply<T> = Result<T, axum::response::Response>;

fn value_json(v: &Value) -> Json_ {
    match v {
        Value::Bool(b) => json!(b),
        Value::Int(i) => json!(i),
        Value::Float(x) => serde_json::Number::from_f64(*x).map_or(Json_::Null, Json_::Number),
        Value::Str(s) => json!(&**s),
    }
}

/// `GET /api/v1/devices?after=&limit=&fields=`: the devices by name, each
/// with its fields, their first and last timestamp and last value; a page
/// of at most `limit` devices (default 100, at most 1000) and, past its
/// first device, `MAX_PAGE_FIELDS` fields, and `next` to ask for the rest
/// with `after=`. `fields=false` leaves the fields out (names and counts
/// only: what a device picker needs).
pub async fn devices(State(ctx): Ctx, Params(params): Params) -> Reply<Body> {
    known(&params, &["after", "limit", "fields"]).map_err(reply)?;
    let limit = parse_count(
        "limit",
        one(&params, "limit").map_err(reply)?,
        100,
        MAX_DEVICES,
    )
    .map_err(reply)?;
    let after = one(&params, "after").map_err(reply)?.map(str::to_owned);
    let with_fields = match one(&params, "fields").map_err(reply)? {
        None | Some("true") => true,
        Some("false") => false,
        Some(v) => {
            return Err(reply(ApiError::bad(format!(
                "`fields={v}`: expected `true` or `false`"
            ))))
        }
    };
    let c = ctx.clone();
    blocking(&c, move |cancel| {
        let page = ctx.engine.cancellable(cancel.clone()).devices_page(
            after.as_deref(),
            limit,
            with_fields,
            MAX_PAGE_FIELDS,
        )?;
        let devices = page
            .devices
            .iter()
            .map(|d| DeviceOut {
                device: &d.device,
                field_count: d.field_count,
                last_ts: with_fields.then(|| d.fields.iter().map(|s| s.last.ts).max()),
                fields: with_fields.then(|| d.fields.iter().map(FieldOut::new).collect()),
            })
            .collect();
        Body::of(&DevicesOut {
            devices,
            next: page.next.as_deref(),
            index_lag_records: page.lag,
            complete: page.lag == 0,
        })
    })
    .await
}

/// `GET /api/v1/devices/{device}/latest`: the last value of each field.
pub async fn latest(
    State(ctx): Ctx,
    device: Result<Path<String>, PathRejection>,
    Params(params): Params,
) -> Reply<Body> {
    let Path(device) = device.map_err(|e| reply(path_error(e)))?;
    known(&params, &[]).map_err(reply)?;
    let c = ctx.clone();
    blocking(&c, move |cancel| {
        let engine = ctx.engine.cancellable(cancel.clone());
        let (list, lag) = engine.device_fields(&device)?;
        if list.is_empty() {
            return Err(ApiError::not_found(format!(
                "no readings of device `{device}`"
            )));
        }
        Body::of(&LatestOut {
            device: &device,
            ts: list.iter().map(|s| s.last.ts).max(),
            fields: Latest(&list),
            index_lag_records: lag,
            complete: lag == 0,
        })
    })
    .await
}

/// A path parameter that does not decode.
fn path_error(e: PathRejection) -> ApiError {
    use axum::extract::path::ErrorKind;
    match &e {
        PathRejection::FailedToDeserializePathParams(p)
            if matches!(p.kind(), ErrorKind::InvalidUtf8InPathParam { .. }) =>
        {
            ApiError::bad("the device in the path is not valid UTF-8 once percent-decoded")
        }
        _ => ApiError::bad(format!("the path: {}", e.body_text())),
    }
}

fn reply(e: ApiError) -> axum::response::Response {
    axum::response::IntoResponse::into_response(e)
}

/// `GET /api/v1/query?series=DEVICE/FIELD&from=&to=&step=&limit=`.
pub async fn query(State(ctx): Ctx, RawQuery(raw): RawQuery) -> Reply<Body> {
    // Every bound (query length, series, times, step, buckets) is checked
    // before any work.
    let q = parse_query(raw.as_deref(), now(), &ctx.query_limits()).map_err(reply)?;
    let c = ctx.clone();
    // The lookups, the query and the body's serialization all run off the
    // runtime's threads (a 24 h query reads ~1,500 blocks).
    blocking(&c, move |cancel| {
        let engine = ctx.engine.cancellable(cancel.clone());
        // A series asked for twice is read once (and answered twice).
        let mut keys = Vec::with_capacity(q.series.len());
        let mut slots = Vec::with_capacity(q.series.len());
        for (device, field) in &q.series {
            let key = engine.series_key(device, field).ok_or_else(|| {
                ApiError::not_found(format!(
                    "no series `{device}/{field}`: device or field never stored"
                ))
            })?;
            let slot = keys.iter().position(|k| *k == key).unwrap_or_else(|| {
                keys.push(key);
                keys.len() - 1
            });
            slots.push(slot);
        }
        let (from, to, step) = (q.from, q.to, q.step);
        let (result, lag) = engine.range_with_lag(&keys, from, to, step, q.limit)?;
        let series = q
            .series
            .iter()
            .zip(&slots)
            .map(|((device, field), &slot)| SeriesOut::new(device, field, &result[slot]))
            .collect();
        Body::of(&QueryOut {
            from,
            to,
            step,
            index_lag_records: lag,
            complete: lag == 0,
            series,
        })
    })
    .await
}

/// One uplink's state, from the store (durable cursor, what is stored after
/// it in the stream the uplink sends: a route's output or the raw records)
/// and the uplink's metrics (connection, acknowledged sequence).
fn uplink_state(ctx: &ApiContext, name: &str, now_ms: i64) -> Result<Json_, ApiError> {
    let store = ctx.engine.store();
    let label = UplinkMetrics::label(name);
    let stream = ctx.uplink_streams.get(name).unwrap_or(&Stream::Raw);
    let cursor = store.cursor(&cursor_name(name))?;
    let acked = ctx
        .uplinks
        .acked_seq
        .get_or_create(&label)
        .get()
        .max(cursor);
    let head = store.stream_head(stream)?;
    let mut first = Vec::with_capacity(1);
    if head > acked {
        store.read_stream(stream, acked, 1, &mut first)?;
    }
    let oldest = first.first().map(|r| r.record.ts);
    // Records evicted before delivery are not backlog any more.
    let backlog = first
        .first()
        .map_or(0, |r| head.saturating_add(1).saturating_sub(r.seq));
    // The drain as the uplink last sampled it (about once a second): none
    // while the backlog does not shrink (an infinite estimate) or before
    // the first sample.
    let eta = ctx.uplinks.drain_eta.get_or_create(&label).get();
    let drain_eta_s = if backlog == 0 {
        Some(0.0)
    } else {
        (eta.is_finite() && eta > 0.0).then_some(eta)
    };
    let link = ctx.uplinks.link_rate.get_or_create(&label).get();
    Ok(json!({
        "name": name,
        "stream": match stream {
            Stream::Raw => None,
            Stream::Route(r) => Some(&**r),
        },
        "connected": ctx.uplinks.connected.get_or_create(&label).get() > 0,
        "backlog": backlog,
        "oldest_unsent_ts": oldest,
        "oldest_unsent_age_ms": oldest.map(|ts| now_ms.saturating_sub(ts).max(0)),
        "acked_seq": acked,
        "cursor": cursor,
        "records_sent": ctx.uplinks.records_sent.get_or_create(&label).get(),
        "send_rate": ctx.uplinks.send_rate.get_or_create(&label).get(),
        "drain_eta_s": drain_eta_s,
        "link_bytes_per_second": (link > 0.0).then_some(link),
        "batch_target_bytes": ctx.uplinks.batch_target.get_or_create(&label).get(),
    }))
}

fn uplinks_json(ctx: &ApiContext) -> Result<Vec<Json_>, ApiError> {
    let names = ctx.uplink_names.borrow().clone();
    let now = now();
    names.iter().map(|n| uplink_state(ctx, n, now)).collect()
}

/// `GET /api/v1/uplinks`.
pub async fn uplinks(State(ctx): Ctx, Params(params): Params) -> Reply<Json<Json_>> {
    known(&params, &[]).map_err(reply)?;
    let c = ctx.clone();
    let uplinks = blocking(&c, move |_| uplinks_json(&ctx)).await?;
    Ok(Json(json!({ "uplinks": uplinks })))
}

/// `GET /api/v1/status`: the gateway, its sources' health, its uplinks.
pub async fn status(State(ctx): Ctx, Params(params): Params) -> Reply<Json<Json_>> {
    known(&params, &[]).map_err(reply)?;
    let c = ctx.clone();
    blocking(&c, move |_| {
        let store = ctx.engine.store();
        let heads = store.heads();
        let now = now();
        let seen = ctx.engine.index().sources_seen();
        let by_name: BTreeMap<Arc<str>, _> = seen
            .iter()
            .filter_map(|(id, s)| Some((ctx.engine.name(*id)?, *s)))
            .collect();
        let sources: Vec<Json_> = ctx
            .sources
            .iter()
            .map(|(name, kind)| {
                let received = ctx
                    .ingest
                    .records_received
                    .get_or_create(&crate::metrics::SourceLabel {
                        source: name.clone(),
                    })
                    .get();
                let last = by_name.get(name.as_str());
                let age = last.map(|s| now.saturating_sub(s.ts).max(0));
                let health = match age {
                    None => "no records since start",
                    Some(a) if a <= 60_000 => "ok",
                    Some(_) => "quiet (no record in the last minute)",
                };
                json!({
                    "name": name, "type": kind, "records_received": received,
                    "last_ts": last.map(|s| s.ts), "last_seq": last.map(|s| s.seq),
                    "last_age_ms": age, "health": health,
                })
            })
            .collect();
        let index = ctx.engine.index();
        let (through, applied) = index.progress();
        let lag = heads.records.saturating_sub(applied);
        let registry = store.names().devices();
        let series: u64 = registry.values().map(|d| u64::from(d.fields)).sum();
        Ok(Json(json!({
            "devices": registry.len(),
            "series": series,
            "gateway": ctx.gateway,
            "version": env!("CARGO_PKG_VERSION"),
            "now": now,
            "records_head": heads.records,
            "dead_head": heads.dead,
            "index": {
                "persisted_through": through, "applied": applied,
                "lag_records": lag, "complete": lag == 0, "replaying": index.replaying(),
            },
            "sources": sources,
            "uplinks": uplinks_json(&ctx)?,
        })))
    })
    .await
}

/// `GET /api/v1/dead?after=&limit=`: dead letters with their reasons; the
/// newest `limit` without `after`.
pub async fn dead(State(ctx): Ctx, Params(params): Params) -> Reply<Json<Json_>> {
    let (limit, after) = (|| {
        known(&params, &["after", "limit"])?;
        let limit = parse_count("limit", one(&params, "limit")?, 100, MAX_RECORDS)?;
        Ok::<_, ApiError>((limit, seq_param(&params, "after")?))
    })()
    .map_err(reply)?;
    let c = ctx.clone();
    blocking(&c, move |_| {
        let store = ctx.engine.store();
        let after = after.unwrap_or_else(|| store.heads().dead.saturating_sub(limit as u64));
        let letters = store.read_dead(after, limit)?;
        let next = letters.last().map_or(after, |d| d.seq);
        let dead: Vec<Json_> = letters
            .iter()
            .map(|d| {
                json!({
                    "seq": d.seq, "ts": d.dead.ts, "source": &*d.dead.source,
                    "origin": &*d.dead.origin, "kind": d.dead.kind, "reason": &*d.dead.reason,
                    "payload": String::from_utf8_lossy(&d.dead.payload),
                    "payload_len": d.dead.payload_len,
                })
            })
            .collect();
        Ok(Json(json!({ "dead": dead, "next": next })))
    })
    .await
}

fn seq_param(params: &[(String, String)], name: &str) -> Result<Option<u64>, ApiError> {
    one(params, name)?
        .map(|s| {
            s.trim()
                .parse::<u64>()
                .map_err(|_| ApiError::bad(format!("`{name}={s}`: not a sequence number")))
        })
        .transpose()
}

/// `GET /api/v1/records?after=&limit=&device=&wait=`: stored records in
/// order (the newest `limit` without `after`); with `device`, only that
/// device's records, and `limit` counts those (looking through at most
/// `MAX_SCAN` stored records per request; `next` says how far it looked).
/// With `wait`, waits up to that long for a record after `after` (what
/// `ferry tail` follows).
pub async fn records(State(ctx): Ctx, Params(params): Params) -> Reply<Json<Json_>> {
    let (limit, after, device, wait) = (|| {
        known(&params, &["after", "limit", "device", "wait"])?;
        let limit = parse_count("limit", one(&params, "limit")?, 100, MAX_RECORDS)?;
        let after = seq_param(&params, "after")?;
        let device = one(&params, "device")?.map(str::to_owned);
        let wait = one(&params, "wait")?
            .map(|w| parse_duration_ms("wait", w))
            .transpose()?
            .map(|ms| Duration::from_millis(ms.unsigned_abs()).min(MAX_WAIT));
        Ok::<_, ApiError>((limit, after, device, wait))
    })()
    .map_err(reply)?;
    let store = ctx.engine.store().clone();
    if let (Some(wait), Some(after)) = (wait, after) {
        let mut heads = store.watch_heads();
        let _ = tokio::time::timeout(wait, heads.wait_for(|h| h.records > after)).await;
    }
    let c = ctx.clone();
    blocking(&c, move |cancel| {
        let (out, next) = match &device {
            Some(d) => store.read_device(d, after, limit, MAX_SCAN, cancel)?,
            None => {
                let after =
                    after.unwrap_or_else(|| store.heads().records.saturating_sub(limit as u64));
                let mut out = Vec::new();
                let stats = store.read_records(after, limit, &mut out)?;
                (out, stats.last_seq)
            }
        };
        let records: Vec<Json_> = out
            .iter()
            .map(|r| {
                let fields: Map<String, Json_> = r
                    .record
                    .fields
                    .iter()
                    .map(|(k, v)| (k.to_string(), value_json(v)))
                    .collect();
                json!({
                    "seq": r.seq, "ts": r.record.ts, "source": &*r.record.source,
                    "device": &*r.record.device, "fields": fields,
                })
            })
            .collect();
        Ok(Json(json!({ "records": records, "next": next })))
    })
    .await
}
