//! What the HTTP listeners (the query API, the metrics endpoint) share: a
//! connection cap, timeouts, and an accept loop that neither spins nor
//! starves the others when the process is out of descriptors.
//!
//! - **Cap** (`max_connections`): a connection over it is answered a fixed
//!   `503` at once and closed; it never holds a slot. While it is answered
//!   (the request it may have sent is drained, so that the close does not
//!   reset the answer away) it holds a descriptor, at most
//!   [`HTTP_REFUSING`] of them at once; past those it is closed unanswered.
//! - **Timeouts**: `idle_timeout` (no request in progress and no byte either
//!   way: a keep-alive between requests, a peer that stopped reading),
//!   `header_timeout` (from a request's first byte to the end of its
//!   headers: slowloris), `request_timeout` (one request's answer).
//! - **Accept errors** (`EMFILE`, `ENFILE`, ...): a back-off from 5 ms to
//!   500 ms ([`ferry_sources::accept`]), logged once per episode.
//!
//! Each refusal, timeout and failed accept is counted in
//! `ferry_http_connections_refused_total{listener,reason}`; the connections
//! open in `ferry_http_connections{listener}`.
//!
//! | file | holds |
//! | --- | --- |
//! | `mod.rs` | [`Acceptor`]: the cap, the 503 over it, the accept loop |
//! | `http.rs` | [`Http`]: a router served with the timeouts |
//! | `activity.rs` | what a connection is doing, its timeouts, and their counts |
//! | `limits.rs` | [`ListenerLimits`], the `[api]`/`[metrics]` keys that bound a listener |

mod activity;
mod http;
mod limits;

pub use activity::{Activity, Counts, Watched};
pub use http::Http;
pub use limits::{ListenerLimits, HTTP_REFUSING};

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_sources::accept::AcceptBackoff;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::metrics::ListenerMetrics;

/// How long a refused connection is read from (its request drained) after
/// its 503, at most.
const REFUSAL_LINGER: Duration = Duration::from_millis(200);

/// One HTTP listener's accept side.
pub struct Acceptor {
    /// `api` or `metrics`: the label of its metrics.
    name: &'static str,
    limits: ListenerLimits,
    slots: Arc<Semaphore>,
    refusing: Arc<Semaphore>,
    metrics: ListenerMetrics,
    open: Gauge,
    backoff: AcceptBackoff,
    /// Whether connections are being refused for the cap (logged once).
    over_cap: bool,
    /// The answer over the cap: a whole HTTP/1.1 503 response.
    busy: &'static [u8],
    /// When each timeout was last logged (see [`Counts`]).
    warned: Arc<Mutex<Vec<(&'static str, Instant)>>>,
}

/// An accepted connection within the cap: its slot is given back, and the
/// open-connections gauge lowered, when this is dropped.
pub struct Accepted {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    pub slot: Slot,
}

/// A connection's place under the cap.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    open: Gauge,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.dec();
    }
}

impl Acceptor {
    /// `busy` is the whole response sent to a connection over the cap.
    pub fn new(
        name: &'static str,
        limits: ListenerLimits,
        metrics: &ListenerMetrics,
        busy: &'static [u8],
    ) -> Acceptor {
        let open = metrics.open(name);
        open.set(0);
        Acceptor {
            name,
            limits,
            slots: Arc::new(Semaphore::new(limits.max_connections.get())),
            refusing: Arc::new(Semaphore::new(HTTP_REFUSING as usize)),
            metrics: metrics.clone(),
            open,
            backoff: AcceptBackoff::new(name),
            over_cap: false,
            busy,
            warned: Arc::default(),
        }
    }

    /// Counts one connection refused or closed for `reason`.
    pub fn count(&self, reason: &str) {
        self.metrics.refused(self.name, reason).inc();
    }

    /// A handle to count with from a connection's task.
    pub fn counter(&self) -> Counts {
        Counts {
            name: self.name,
            limits: self.limits,
            metrics: self.metrics.clone(),
            warned: self.warned.clone(),
        }
    }

    /// The next connection within the cap; `None` once `cancel` fires.
    /// Connections over the cap are answered and closed here.
    pub async fn accept(
        &mut self,
        listener: &TcpListener,
        cancel: &CancellationToken,
    ) -> Option<Accepted> {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = cancel.cancelled() => return None,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    let (failure, wait) = self.backoff.failed(&e);
                    self.count(failure.as_str());
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => continue,
                        _ = cancel.cancelled() => return None,
                    }
                }
            };
            self.backoff.accepted();
            match self.slots.clone().try_acquire_owned() {
                Ok(permit) => {
                    if self.over_cap {
                        self.over_cap = false;
                        info!(
                            listener = self.name,
                            "connections below max_connections again"
                        );
                    }
                    self.open.inc();
                    return Some(Accepted {
                        stream,
                        peer,
                        slot: Slot {
                            _permit: permit,
                            open: self.open.clone(),
                        },
                    });
                }
                Err(_) => {
                    self.count("max_connections");
                    if !self.over_cap {
                        self.over_cap = true;
                        warn!(
                            listener = self.name, %peer,
                            "refusing connections with 503: max_connections ({}) are open \
                             (counted in ferry_http_connections_refused_total)",
                            self.limits.max_connections
                        );
                    }
                    self.refuse(stream);
                }
            }
        }
    }

    /// Answers `stream` 503 and closes it, or closes it at once when
    /// [`HTTP_REFUSING`] are being answered already.
    fn refuse(&self, stream: TcpStream) {
        let Ok(permit) = self.refusing.clone().try_acquire_owned() else {
            return;
        };
        let busy = self.busy;
        tokio::spawn(async move {
            let _permit = permit;
            let mut stream = stream;
            // A fresh socket's send buffer takes the whole answer at once.
            if stream.try_write(busy).is_err() {
                return;
            }
            let _ = stream.shutdown().await;
            // Drain what the client sent until it closes, for a short while.
            let mut sink = [0u8; 1024];
            let _ = tokio::time::timeout(REFUSAL_LINGER, async {
                while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
            })
            .await;
        });
    }
}

#[cfg(test)]
mod tests;
