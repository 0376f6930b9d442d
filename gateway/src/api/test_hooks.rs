//! Test hooks of debug builds only (this module is compiled out of release
//! builds): with `FERRY_TEST_HOOKS=1` in the daemon's environment at start,
//! `/api/v1/test/*` routes provoke what no well-formed request should, so
//! that tests of the running daemon (`gateway/tests/hostile_api.rs`) can
//! show how the API contains it:
//!
//! - `GET /api/v1/test/panic?in=handler`: the handler panics;
//! - `?in=blocking`: a closure the handler runs on the blocking pool panics;
//! - `?in=detached`: a task outside any contained scope panics (the daemon's
//!   panic hook aborts the process);
//! - `GET /api/v1/test/hold`: holds a query slot until
//!   `GET /api/v1/test/release` (or 30 s), so that a test can fill every
//!   slot without racing.
//!
//! They go through the same layers as every route (authentication, the
//! contained scope, the query slots), and are not there without the
//! variable.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::handlers::{blocking, Params};
use super::params::one;
use super::{ApiContext, ApiError};

/// The variable that turns the hooks on.
const VAR: &str = "FERRY_TEST_HOOKS";

/// `api` with the test routes when `FERRY_TEST_HOOKS=1`.
pub(super) fn add(api: Router<Arc<ApiContext>>) -> Router<Arc<ApiContext>> {
    if std::env::var(VAR).as_deref() != Ok("1") {
        return api;
    }
    tracing::warn!("test hooks on ({VAR}=1): /api/v1/test/* can panic the daemon");
    api.route("/test/panic", get(panic))
        .route("/test/hold", get(hold))
        .route("/test/release", get(release))
}

async fn panic(State(ctx): State<Arc<ApiContext>>, Params(params): Params) -> Response {
    match one(&params, "in") {
        Ok(Some("handler")) => panic!("test hook: a panic in a request handler"),
        Ok(Some("blocking")) => {
            let r: Result<(), _> =
                blocking(&ctx, |_| panic!("test hook: a panic on the blocking pool")).await;
            r.err()
                .unwrap_or_else(|| ApiError::internal("did not panic").into_response())
        }
        Ok(Some("detached")) => {
            tokio::spawn(async { panic!("test hook: a panic outside a contained scope") });
            Json(json!({ "spawned": true })).into_response()
        }
        _ => ApiError::bad("`in` is one of handler, blocking, detached").into_response(),
    }
}

/// Whether the held slots are released, and its signal.
static RELEASED: (Mutex<bool>, Condvar) = (Mutex::new(false), Condvar::new());

async fn hold(State(ctx): State<Arc<ApiContext>>) -> Response {
    let r = blocking(&ctx, |_| {
        let deadline = Instant::now() + Duration::from_secs(30);
        let (lock, signal) = &RELEASED;
        let mut released = lock.lock().unwrap_or_else(|e| e.into_inner());
        while !*released && Instant::now() < deadline {
            released = signal
                .wait_timeout(released, Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        Ok(*released)
    })
    .await;
    match r {
        Ok(released) => Json(json!({ "released": released })).into_response(),
        Err(resp) => resp,
    }
}

async fn release() -> Json<serde_json::Value> {
    let (lock, signal) = &RELEASED;
    *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
    signal.notify_all();
    Json(json!({ "released": true }))
}
