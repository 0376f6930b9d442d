//! The route handlers. Reads of the store run on the blocking pool.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::Json;
use ferry_adapters::record::Value;
use serde_json::{json, Map, Value as Json_};

use super::params::{now, parse_count, parse_duration_ms, parse_range};
use super::{ApiContext, ApiError};
use crate::metrics::UplinkMetrics;
use crate::query::{QueryError, Series};
use crate::store::StoreError;
use crate::uplink::cursor_name;

type Ctx = State<Arc<ApiContext>>;
type Params = Query<Vec<(String, String)>>;
type Answer = Result<Json<Json_>, ApiError>;

/// The longest `wait` a `/records` request may ask for.
const MAX_WAIT: Duration = Duration::from_secs(60);
/// The most records or dead letters in one response.
const MAX_RECORDS: usize = 1000;

fn one<'a>(params: &'a [(String, String)], name: &str) -> Result<Option<&'a str>, ApiError> {
    let mut it = params.iter().filter(|(k, _)| k == name);
    let first = it.next().map(|(_, v)| v.as_str());
    if it.next().is_some() {
        return Err(ApiError::bad(format!("`{name}` is given more than once")));
    }
    Ok(first)
}

fn known(params: &[(String, String)], allowed: &[&str]) -> Result<(), ApiError> {
    for (k, _) in params {
        if !allowed.contains(&k.as_str()) {
            return Err(ApiError::bad(format!(
                "unknown parameter `{k}`; this route takes {}",
                allowed
                    .iter()
                    .map(|a| format!("`{a}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    Ok(())
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::internal(e)
    }
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> Self {
        match e {
            QueryError::TooManyPoints { .. } => ApiError {
                status: axum::http::StatusCode::BAD_REQUEST,
                code: "too_many_points",
                message: e.to_string(),
            },
            e => ApiError::internal(e),
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("query task failed: {e}")))?
}

fn value_json(v: &Value) -> Json_ {
    match v {
        Value::Bool(b) => json!(b),
        Value::Int(i) => json!(i),
        Value::Float(x) => serde_json::Number::from_f64(*x).map_or(Json_::Null, Json_::Number),
        Value::Str(s) => json!(&**s),
    }
}

/// `GET /api/v1/devices`: every device, its fields, their first and last
/// timestamp and last value.
pub async fn devices(State(ctx): Ctx, Query(params): Params) -> Answer {
    known(&params, &[])?;
    let list = blocking(move || Ok(ctx.engine.list(None)?)).await?;
    let mut devices: BTreeMap<&str, Vec<Json_>> = BTreeMap::new();
    for s in &list {
        devices.entry(&s.device).or_default().push(json!({
            "field": &*s.field,
            "first_ts": s.first_ts,
            "last_ts": s.last.ts,
            "last": s.last.value,
            "last_seq": s.last.seq,
        }));
    }
    let devices: Vec<Json_> = devices
        .into_iter()
        .map(|(d, fields)| {
            let last_ts = fields.iter().filter_map(|f| f["last_ts"].as_i64()).max();
            json!({ "device": d, "last_ts": last_ts, "fields": fields })
        })
        .collect();
    Ok(Json(json!({ "devices": devices })))
}

/// `GET /api/v1/devices/{device}/latest`: the last value of each field.
pub async fn latest(State(ctx): Ctx, Path(device): Path<String>, Query(params): Params) -> Answer {
    known(&params, &[])?;
    let d = device.clone();
    let list = blocking(move || Ok(ctx.engine.list(Some(&d))?)).await?;
    if list.is_empty() {
        return Err(ApiError::not_found(format!(
            "no readings of device `{device}`"
        )));
    }
    let mut fields = Map::new();
    for s in &list {
        fields.insert(
            s.field.to_string(),
            json!({ "ts": s.last.ts, "value": s.last.value, "seq": s.last.seq }),
        );
    }
    let ts = list.iter().map(|s| s.last.ts).max();
    Ok(Json(
        json!({ "device": device, "ts": ts, "fields": fields }),
    ))
}

/// `GET /api/v1/query?series=DEVICE/FIELD&from=&to=&step=&limit=`.
pub async fn query(State(ctx): Ctx, Query(params): Params) -> Answer {
    known(&params, &["series", "from", "to", "step", "limit"])?;
    let names: Vec<String> = params
        .iter()
        .filter(|(k, _)| k == "series")
        .map(|(_, v)| v.clone())
        .collect();
    if names.is_empty() {
        return Err(ApiError::bad(
            "`series` is required: one or more `series=DEVICE/FIELD`",
        ));
    }
    let now = now();
    let (from, to) = parse_range(one(&params, "from")?, one(&params, "to")?, now)?;
    let step = one(&params, "step")?
        .map(|s| parse_duration_ms("step", s))
        .transpose()?;
    let limit = parse_count(
        "limit",
        one(&params, "limit")?,
        ctx.max_points,
        ctx.max_points,
    )?;
    let mut keys = Vec::with_capacity(names.len());
    let mut pairs = Vec::with_capacity(names.len());
    for name in &names {
        let Some((device, field)) = name.split_once('/') else {
            return Err(ApiError::bad(format!(
                "`series={name}`: expected DEVICE/FIELD, e.g. `7/voltage`"
            )));
        };
        let key = ctx.engine.series_key(device, field).ok_or_else(|| {
            ApiError::not_found(format!("no series `{name}`: device or field never stored"))
        })?;
        keys.push(key);
        pairs.push((device.to_owned(), field.to_owned()));
    }
    let engine = ctx.engine.clone();
    let result = blocking(move || Ok(engine.range(&keys, from, to, step, limit)?)).await?;
    let series: Vec<Json_> = pairs
        .iter()
        .zip(&result)
        .map(|((device, field), s)| match s {
            Series::Raw(points) => json!({
                "device": device,
                "field": field,
                "points": points.iter().map(|p| json!([p.ts, p.value])).collect::<Vec<_>>(),
            }),
            Series::Buckets(buckets) => json!({
                "device": device,
                "field": field,
                "buckets": buckets.iter().map(|b| {
                    let r = &b.rollup;
                    json!({
                        "ts": b.ts, "count": r.count, "min": r.min, "max": r.max,
                        "mean": r.mean(), "sum": r.sum, "first": r.first, "last": r.last,
                    })
                }).collect::<Vec<_>>(),
            }),
        })
        .collect();
    Ok(Json(
        json!({ "from": from, "to": to, "step": step, "series": series }),
    ))
}

/// One uplink's state, from the store (durable cursor, what is stored after
/// it) and the uplink's metrics (connection, acknowledged sequence).
fn uplink_state(ctx: &ApiContext, name: &str, now_ms: i64) -> Result<Json_, ApiError> {
    let store = ctx.engine.store();
    let label = UplinkMetrics::label(name);
    let cursor = store.cursor(&cursor_name(name))?;
    let acked = ctx
        .uplinks
        .acked_seq
        .get_or_create(&label)
        .get()
        .max(cursor);
    let head = store.heads().records;
    let backlog = head.saturating_sub(acked);
    let oldest = if backlog > 0 {
        store.first_ts_after(acked)?
    } else {
        None
    };
    let backlog = match oldest {
        // Records evicted before delivery are not backlog any more.
        Some(_) => {
            let mut first = Vec::with_capacity(1);
            store.read_records(acked, 1, &mut first)?;
            first.first().map_or(0, |r| head + 1 - r.seq)
        }
        None => 0,
    };
    Ok(json!({
        "name": name,
        "connected": ctx.uplinks.connected.get_or_create(&label).get() > 0,
        "backlog": backlog,
        "oldest_unsent_ts": oldest,
        "oldest_unsent_age_ms": oldest.map(|ts| (now_ms - ts).max(0)),
        "acked_seq": acked,
        "cursor": cursor,
        "records_sent": ctx.uplinks.records_sent.get_or_create(&label).get(),
    }))
}

fn uplinks_json(ctx: &ApiContext) -> Result<Vec<Json_>, ApiError> {
    let names = ctx.uplink_names.borrow().clone();
    let now = now();
    names.iter().map(|n| uplink_state(ctx, n, now)).collect()
}

/// `GET /api/v1/uplinks`.
pub async fn uplinks(State(ctx): Ctx, Query(params): Params) -> Answer {
    known(&params, &[])?;
    let uplinks = blocking(move || uplinks_json(&ctx)).await?;
    Ok(Json(json!({ "uplinks": uplinks })))
}

/// `GET /api/v1/status`: the gateway, its sources' health, its uplinks.
pub async fn status(State(ctx): Ctx, Query(params): Params) -> Answer {
    known(&params, &[])?;
    blocking(move || {
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
                let age = last.map(|s| (now - s.ts).max(0));
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
        let (through, applied) = ctx.engine.index().progress();
        Ok(Json(json!({
            "gateway": ctx.gateway,
            "version": env!("CARGO_PKG_VERSION"),
            "now": now,
            "records_head": heads.records,
            "dead_head": heads.dead,
            "index": { "persisted_through": through, "applied": applied },
            "sources": sources,
            "uplinks": uplinks_json(&ctx)?,
        })))
    })
    .await
}

/// `GET /api/v1/dead?after=&limit=`: dead letters with their reasons; the
/// newest `limit` without `after`.
pub async fn dead(State(ctx): Ctx, Query(params): Params) -> Answer {
    known(&params, &["after", "limit"])?;
    let limit = parse_count("limit", one(&params, "limit")?, 100, MAX_RECORDS)?;
    let after = seq_param(&params, "after")?;
    blocking(move || {
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
/// order (the newest `limit` without `after`); with `wait`, waits up to that
/// long for a record after `after` (what `ferry tail` follows).
pub async fn records(State(ctx): Ctx, Query(params): Params) -> Answer {
    known(&params, &["after", "limit", "device", "wait"])?;
    let limit = parse_count("limit", one(&params, "limit")?, 100, MAX_RECORDS)?;
    let after = seq_param(&params, "after")?;
    let device = one(&params, "device")?.map(str::to_owned);
    let wait = one(&params, "wait")?
        .map(|w| parse_duration_ms("wait", w))
        .transpose()?
        .map(|ms| Duration::from_millis(ms as u64).min(MAX_WAIT));
    let store = ctx.engine.store().clone();
    let after = after.unwrap_or_else(|| store.heads().records.saturating_sub(limit as u64));
    if let Some(wait) = wait {
        let mut heads = store.watch_heads();
        let _ = tokio::time::timeout(wait, heads.wait_for(|h| h.records > after)).await;
    }
    blocking(move || {
        let mut out = Vec::new();
        let stats = store.read_records(after, limit, &mut out)?;
        let records: Vec<Json_> = out
            .iter()
            .filter(|r| device.as_deref().is_none_or(|d| *r.record.device == *d))
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
        Ok(Json(json!({ "records": records, "next": stats.last_seq })))
    })
    .await
}
