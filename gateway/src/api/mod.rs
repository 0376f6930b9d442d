//! The local HTTP API (JSON) and the status page, on their own listener
//! (`[api] listen`, 127.0.0.1:9109 in the default config), apart from the
//! metrics endpoint.
//!
//! Every `/api/v1/*` route requires `Authorization: Bearer TOKEN` when
//! `[api] token` is set; the status page itself holds no data and is served
//! to anyone (its script sends the token given in the page's URL fragment,
//! `#token=...`). Parameters are checked, and a bad one is a 400 with a
//! JSON `{"error": "..."}` naming it; a result larger than `max_points` is a
//! 400 with `"code": "too_many_points"`, never a silent truncation.
//! `docs/openapi.yaml` describes every route.
//!
//! # Bounds
//! Every request is bounded before it does any work ([`params`]): the
//! query string's length (`[api] max_query_bytes`), the number of series
//! (`max_series`), times clamped to the query range
//! ([`crate::query::bounds`]), steps of 1 ms to `i64::MAX` ms, and a
//! bucketed query's series × buckets within `limit`. At most
//! `max_concurrent_queries` requests read the store at once (on the
//! blocking pool); one more is a 503 `busy` with `Retry-After`. A request
//! that is gone (timed out after `request_timeout`, or its connection
//! closed) cancels its reads: each runs with a flag the engine and the
//! store ask before every series, hour and block, so its slot frees soon
//! after, counted in `ferry_api_queries_cancelled_total`.
//!
//! # Panics
//! A bug in one request's handling costs that request only: the whole
//! service runs as a contained scope ([`crate::contain::Contained`]), and
//! so does each closure a handler runs on the blocking pool. A panic there
//! is answered 500 `{"code": "internal"}`, counted
//! (`ferry_api_requests_failed_total{reason="panic"}`) and logged; the
//! daemon runs on. Handlers share no lock or state that a panic could leave
//! half-changed (the index's lock is only read under, and recovers from
//! poisoning). Every error answer is counted by its code in the same
//! family, and logged once a minute per code at most.
//!
//! Debug builds started with `FERRY_TEST_HOOKS=1` serve `/api/v1/test/*`
//! routes that panic or hold a query slot on demand (the tests of the
//! above, `gateway/tests/hostile_api.rs`); release builds have no such code.

pub mod client;
pub mod config;
mod handlers;
mod json;
mod params;
#[cfg(debug_assertions)]
mod test_hooks;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::contain::Contained;
use crate::listen::ListenerLimits;
use crate::metrics::{ApiMetrics, IngestMetrics, ListenerMetrics, UplinkMetrics};
use crate::query::Engine;
use crate::store::Stream;

pub use params::{
    parse_duration_ms, parse_pairs, parse_query, parse_time, QueryLimits, QueryRequest,
};

/// The status page: one self-contained HTML file (inline CSS and JS).
pub const STATUS_PAGE: &str = include_str!("status.html");

/// What the API reads from.
pub struct ApiContext {
    pub engine: Engine,
    /// `[gateway] id`.
    pub gateway: String,
    /// The bearer token every `/api` request must carry, if any.
    pub token: Option<String>,
    /// The most points (or buckets) one response may hold.
    pub max_points: usize,
    /// Configured sources: name and type.
    pub sources: Vec<(String, &'static str)>,
    pub ingest: IngestMetrics,
    pub uplinks: UplinkMetrics,
    /// The names of the running uplinks.
    pub uplink_names: watch::Receiver<Vec<Arc<str>>>,
    /// The stream each uplink sends (a route's output, or the raw records
    /// when absent): what its backlog is counted in.
    pub uplink_streams: HashMap<String, Stream>,
    /// The bounds on requests besides `max_points`.
    pub limits: RequestLimits,
    pub metrics: ApiMetrics,
}

/// `[api]`'s bounds on requests (besides `max_points`), and the slots of
/// the concurrent queries.
pub struct RequestLimits {
    /// The most `series=` parameters of a query.
    pub max_series: usize,
    /// The longest query string, in bytes.
    pub max_query_bytes: usize,
    /// The most requests reading the store at once.
    pub max_concurrent_queries: usize,
    slots: Arc<Semaphore>,
    /// When each kind of error answer was last logged, and how many went
    /// unlogged since.
    logged: Mutex<HashMap<&'static str, (Instant, u64)>>,
}

impl RequestLimits {
    pub fn new(
        max_series: usize,
        max_query_bytes: usize,
        max_concurrent_queries: usize,
    ) -> RequestLimits {
        RequestLimits {
            max_series,
            max_query_bytes,
            max_concurrent_queries,
            slots: Arc::new(Semaphore::new(max_concurrent_queries)),
            logged: Mutex::new(HashMap::new()),
        }
    }

    /// Those of `config`.
    pub fn of(config: &config::ApiConfig) -> RequestLimits {
        RequestLimits::new(
            config.max_series.get(),
            usize::try_from(config.max_query_bytes.as_u64()).unwrap_or(usize::MAX),
            config.max_concurrent_queries.get(),
        )
    }

    /// Whether an error answer of kind `reason` is to be logged now: the
    /// first of an episode, then at most once a minute; with how many went
    /// unlogged before it.
    fn log_now(&self, reason: &'static str) -> Option<u64> {
        const EPISODE: Duration = Duration::from_secs(60);
        let mut logged = self.logged.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match logged.get_mut(reason) {
            Some((at, skipped)) if now.duration_since(*at) < EPISODE => {
                *skipped = skipped.saturating_add(1);
                None
            }
            Some((at, skipped)) => {
                let n = *skipped;
                (*at, *skipped) = (now, 0);
                Some(n)
            }
            None => {
                logged.insert(reason, (now, 0));
                Some(0)
            }
        }
    }
}

impl ApiContext {
    /// The bounds a query is checked against.
    pub fn query_limits(&self) -> QueryLimits {
        QueryLimits {
            max_points: self.max_points,
            max_series: self.limits.max_series,
            max_query_bytes: self.limits.max_query_bytes,
        }
    }
}

/// The code of [`ApiError::cancelled`].
const CANCELLED: &str = "cancelled";

/// An error answer: status and message, as `{"error": ..., "code": ...}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

/// What an error answer was, for the layer that counts and logs them: its
/// reason (its code, or `panic`) and message.
#[derive(Debug, Clone)]
struct Failure {
    reason: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_parameter", message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn internal(message: impl std::fmt::Display) -> ApiError {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            message.to_string(),
        )
    }

    /// The query string is longer than `[api] max_query_bytes`.
    pub fn query_too_long(len: usize, max: usize) -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "query_too_long",
            format!("the query string is {len} bytes long; at most {max} ([api] max_query_bytes)"),
        )
    }

    /// More `series=` parameters than `[api] max_series`.
    pub fn too_many_series(max: usize) -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "too_many_series",
            format!("more than {max} `series` parameters; at most {max} ([api] max_series)"),
        )
    }

    /// A bucketed query whose series × buckets (`None`: past any count)
    /// exceed `limit`.
    pub fn too_many_buckets(
        series: usize,
        per_series: Option<u64>,
        total: Option<u128>,
        step: i64,
        limit: usize,
    ) -> ApiError {
        let (total, per) = match (total, per_series) {
            (Some(t), Some(p)) => (format!("up to {t}"), p.to_string()),
            _ => ("more than 2^64".to_owned(), "more than 2^64".to_owned()),
        };
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "too_many_points",
            format!(
                "the query could return {total} buckets ({series} series × {per} buckets of \
                 `step={step}ms` from `from` to `to`), more than `limit` ({limit}): narrow \
                 the range, ask for fewer series or a larger `step`"
            ),
        )
    }

    /// Every query slot is taken.
    pub fn busy(max: usize) -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            format!(
                "{max} queries are running already ([api] max_concurrent_queries); retry in a \
                 second"
            ),
        )
    }

    /// The request is gone (timed out, or its connection closed) and its
    /// reads stopped: an answer no one reads, counted apart
    /// (`ferry_api_queries_cancelled_total`).
    pub fn cancelled() -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            CANCELLED,
            "the request is gone (api.request_timeout, or its connection closed): its reads stopped",
        )
    }

    /// The handling of the request panicked (a bug).
    pub fn panicked(p: &crate::contain::Panicked) -> ApiError {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!(
                "the request failed on a bug in its handling (panicked: {}); the gateway runs on",
                p.message
            ),
        )
    }

    fn response(self, reason: &'static str) -> Response {
        let body = serde_json::json!({ "error": self.message, "code": self.code });
        let failure = Failure {
            reason,
            message: self.message,
        };
        let mut resp = (self.status, Json(body)).into_response();
        if reason == "busy" {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        resp.extensions_mut().insert(failure);
        resp
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = self.code;
        self.response(code)
    }
}

/// An [`ApiError`] answered for a panic: counted as `panic`.
struct PanicAnswer(ApiError);

impl IntoResponse for PanicAnswer {
    fn into_response(self) -> Response {
        self.0.response("panic")
    }
}

/// The routes, with `ctx`.
pub fn router(ctx: Arc<ApiContext>) -> Router {
    let api = Router::new()
        .route("/status", get(handlers::status))
        .route("/devices", get(handlers::devices))
        .route("/devices/:device/latest", get(handlers::latest))
        .route("/query", get(handlers::query))
        .route("/uplinks", get(handlers::uplinks))
        .route("/dead", get(handlers::dead))
        .route("/records", get(handlers::records))
        .fallback(|| async { ApiError::not_found("no such API route") });
    #[cfg(debug_assertions)]
    let api = test_hooks::add(api);
    let api = api.route_layer(middleware::from_fn_with_state(ctx.clone(), auth));
    Router::new()
        .route("/", get(|| async { Html(STATUS_PAGE) }))
        .nest("/api/v1", api)
        .layer(middleware::from_fn_with_state(ctx.clone(), guard))
        .with_state(ctx)
}

/// Runs the handling of one request as a contained scope (a panic is a 500
/// `internal`, and the daemon runs on), and counts and logs every error
/// answer by its reason.
async fn guard(State(ctx): State<Arc<ApiContext>>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    let resp = match Contained::new(next.run(req)).await {
        Ok(resp) => resp,
        Err(p) => PanicAnswer(ApiError::panicked(&p)).into_response(),
    };
    if let Some(f) = resp.extensions().get::<Failure>() {
        ctx.metrics.failed(f.reason);
        if f.reason == "panic" {
            // A bug: every one is logged.
            error!(%path, error = %f.message, "an API request's handling panicked; answered 500");
        } else if let Some(unlogged) = ctx.limits.log_now(f.reason) {
            warn!(
                %path,
                reason = f.reason,
                error = %f.message,
                unlogged_since_last = unlogged,
                "API request refused (logged at most once a minute per reason; all are counted in ferry_api_requests_failed_total)"
            );
        }
    }
    resp
}

async fn auth(State(ctx): State<Arc<ApiContext>>, req: Request, next: Next) -> Response {
    if let Some(token) = &ctx.token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        // Compared without an early exit, so timing says nothing of the token.
        let ok = given.is_some_and(|g| {
            g.len() == token.len()
                && g.bytes()
                    .zip(token.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
        });
        if !ok {
            let mut resp = ApiError {
                status: StatusCode::UNAUTHORIZED,
                code: "unauthorized",
                message: "a valid `Authorization: Bearer TOKEN` header is required".into(),
            }
            .into_response();
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("header"));
            return resp;
        }
    }
    next.run(req).await
}

/// Binds the API's listener.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for the API on {addr}: {e}"))
}

/// The answer to a connection over `api.max_connections`.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n\
Content-Length: 91\r\nRetry-After: 1\r\nConnection: close\r\n\r\n\
{\"error\":\"too many connections (api.max_connections), retry\",\"code\":\"too_many_connections\"}";

/// Serves the API until `cancel` with the default `[api]` limits, counted
/// in metrics of its own (see [`serve_with`]).
pub async fn serve(listener: TcpListener, ctx: Arc<ApiContext>, cancel: CancellationToken) {
    let limits = config::ApiConfig::default().limits();
    serve_with(listener, ctx, limits, ListenerMetrics::new(), cancel).await
}

/// Serves the API until `cancel`, over HTTP/1.1 with keep-alive, within
/// `limits` (`crate::listen`: the cap, the idle and header timeouts, the
/// accept back-off); a request not answered within `request_timeout` gets
/// a 503 `request_timeout`. Once cancelled, open connections finish the
/// request they are answering (for `request_timeout` at most).
pub async fn serve_with(
    listener: TcpListener,
    ctx: Arc<ApiContext>,
    limits: ListenerLimits,
    metrics: ListenerMetrics,
    cancel: CancellationToken,
) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "query API listening");
    }
    let http = crate::listen::Http {
        name: "api",
        limits,
        busy: BUSY,
        timed_out: request_timed_out,
    };
    http.serve(listener, router(ctx), &metrics, cancel).await
}

fn request_timed_out(limit: std::time::Duration) -> Response {
    let mut resp = ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        code: "request_timeout",
        message: format!(
            "the request was not answered within api.request_timeout ({})",
            humantime::format_duration(limit)
        ),
    }
    .into_response();
    resp.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    resp
}
