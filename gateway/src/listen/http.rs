//! An axum router served over HTTP/1.1 with keep-alive, within a listener's
//! limits: the header, idle and request timeouts, each counted.

use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::metrics::ListenerMetrics;

use axum::response::Response;
use hyper::service::{service_fn, Service as _};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio_util::task::TaskTracker;

use super::*;

/// The most one connection's read buffer holds (hyper's default: ~400 KB):
/// a request line and headers larger than this are refused (431).
pub(super) const MAX_HEAD: usize = 64 * 1024;

/// An axum router served over HTTP/1.1 with keep-alive, within `limits`.
pub struct Http {
    /// `api`: the label of its metrics, and what keys are named after.
    pub name: &'static str,
    pub limits: ListenerLimits,
    /// The whole response over the cap.
    pub busy: &'static [u8],
    /// The answer to a request not answered within `request_timeout`.
    pub timed_out: fn(Duration) -> Response,
}

impl Http {
    /// Serves `app` until `cancel`; once cancelled, open connections finish
    /// the request they are answering (for `request_timeout` at most).
    pub async fn serve(
        self,
        listener: TcpListener,
        app: axum::Router,
        metrics: &ListenerMetrics,
        cancel: CancellationToken,
    ) {
        let limits = self.limits;
        let timed_out = self.timed_out;
        let app = TowerToHyperService::new(app);
        let mut acceptor = Acceptor::new(self.name, limits, metrics, self.busy);
        let mut http = hyper::server::conn::http1::Builder::new();
        // The header timeout is `Activity`'s, counted; hyper's needs a timer.
        http.keep_alive(true)
            .header_read_timeout(None)
            .max_buf_size(MAX_HEAD);
        let connections = TaskTracker::new();
        while let Some(accepted) = acceptor.accept(&listener, &cancel).await {
            let activity = Activity::new(&limits);
            let io = TokioIo::new(Watched::new(accepted.stream, activity.clone()));
            let counts = acceptor.counter();
            let service = {
                let app = app.clone();
                let activity = activity.clone();
                let counts = counts.clone();
                service_fn(move |req| {
                    let busy = activity.busy();
                    let answer = app.call(req);
                    let counts = counts.clone();
                    async move {
                        let _busy = busy;
                        match tokio::time::timeout(limits.request_timeout, answer).await {
                            Ok(answer) => answer,
                            Err(_) => {
                                counts.count("request_timeout");
                                Ok(timed_out(limits.request_timeout))
                            }
                        }
                    }
                })
            };
            let conn = http.serve_connection(io, service);
            let cancel = cancel.clone();
            let peer = accepted.peer;
            let slot = accepted.slot;
            let name = self.name;
            connections.spawn(async move {
                let _slot = slot;
                tokio::pin!(conn);
                tokio::select! {
                    served = conn.as_mut() => if let Err(e) = served {
                        debug!(listener = name, %peer, error = %e, "connection failed");
                    },
                    why = activity.expired() => counts.count(why.as_str()),
                    _ = cancel.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        let _ = tokio::time::timeout(limits.request_timeout, conn).await;
                    }
                }
            });
        }
        connections.close();
        connections.wait().await;
    }
}
