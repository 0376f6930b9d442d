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

pub mod cli;
pub mod client;
mod handlers;
mod json;
mod params;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::ListenerLimits;
use crate::metrics::{IngestMetrics, ListenerMetrics, UplinkMetrics};
use crate::query::Engine;
use crate::store::Stream;

pub use params::{parse_duration_ms, parse_time};

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
}

impl ApiContext {
    /// The context of the API `config` describes.
    pub fn new(
        config: &crate::config::Config,
        engine: Engine,
        ingest: &IngestMetrics,
        uplinks: &UplinkMetrics,
        uplink_names: watch::Receiver<Vec<Arc<str>>>,
    ) -> ApiContext {
        ApiContext {
            engine,
            gateway: config.gateway.id.clone(),
            token: config.api.token.clone(),
            max_points: config.api.max_points.get(),
            sources: config
                .sources
                .iter()
                .map(|(name, s)| (name.clone(), s.type_name()))
                .collect(),
            ingest: ingest.clone(),
            uplinks: uplinks.clone(),
            uplink_names,
            uplink_streams: config
                .uplinks
                .iter()
                .map(|(name, u)| {
                    let stream = match &u.route {
                        Some(r) => Stream::Route(r.as_str().into()),
                        None => Stream::Raw,
                    };
                    (name.clone(), stream)
                })
                .collect(),
        }
    }
}

/// An error answer: status and message, as `{"error": ..., "code": ...}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn bad(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "bad_parameter",
            message: message.into(),
        }
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            code: "not_found",
            message: message.into(),
        }
    }

    pub fn internal(message: impl std::fmt::Display) -> ApiError {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal",
            message: message.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.message, "code": self.code });
        (self.status, Json(body)).into_response()
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
        .fallback(|| async { ApiError::not_found("no such API route") })
        .route_layer(middleware::from_fn_with_state(ctx.clone(), auth));
    Router::new()
        .route("/", get(|| async { Html(STATUS_PAGE) }))
        .nest("/api/v1", api)
        .with_state(ctx)
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
    let limits = crate::config::ApiConfig::default().limits();
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
