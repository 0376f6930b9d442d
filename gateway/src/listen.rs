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

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use ferry_sources::accept::AcceptBackoff;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::{ListenerLimits, HTTP_REFUSING};
use crate::metrics::ListenerMetrics;

use axum::response::Response;
use hyper::service::{service_fn, Service as _};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio_util::task::TaskTracker;

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

/// The most one connection's read buffer holds (hyper's default: ~400 KB):
/// a request line and headers larger than this are refused (431).
const MAX_HEAD: usize = 64 * 1024;

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

/// How often one listener logs connections closed for one timeout, at most:
/// an episode of slow or idle clients is one line, not one per connection.
const TIMEOUT_LOG_EVERY: Duration = Duration::from_secs(60);

/// Counts a listener's timeouts from a connection's task, and logs them.
#[derive(Clone)]
pub struct Counts {
    name: &'static str,
    limits: ListenerLimits,
    metrics: ListenerMetrics,
    warned: Arc<Mutex<Vec<(&'static str, Instant)>>>,
}

impl Counts {
    /// Counts a connection closed for `reason` (`header_timeout`,
    /// `idle_timeout`, `request_timeout`); the first of an episode (none in
    /// the last minute) is logged with the key that set the limit.
    pub fn count(&self, reason: &'static str) {
        self.metrics.refused(self.name, reason).inc();
        let now = Instant::now();
        let first = {
            let mut warned = self.warned.lock().unwrap_or_else(|e| e.into_inner());
            match warned.iter_mut().find(|(r, _)| *r == reason) {
                Some((_, at)) if now.duration_since(*at) < TIMEOUT_LOG_EVERY => false,
                Some((_, at)) => {
                    *at = now;
                    true
                }
                None => {
                    warned.push((reason, now));
                    true
                }
            }
        };
        let limit = match reason {
            "header_timeout" => self.limits.header_timeout,
            "idle_timeout" => self.limits.idle_timeout,
            _ => self.limits.request_timeout,
        };
        if first {
            warn!(
                listener = self.name,
                "{}.{reason} ({}) reached: the connection is closed (an API request \
                 is answered 503); counted in ferry_http_connections_refused_total, \
                 logged once a minute at most",
                self.name,
                humantime::format_duration(limit)
            );
        } else {
            debug!(listener = self.name, reason, "connection closed");
        }
    }
}

/// Why a connection was closed by its watchdog.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expired {
    /// No request in progress and no byte for `idle_timeout`.
    Idle,
    /// A request's head took longer than `header_timeout`.
    Header,
}

impl Expired {
    pub fn as_str(self) -> &'static str {
        match self {
            Expired::Idle => "idle_timeout",
            Expired::Header => "header_timeout",
        }
    }
}

/// What a connection did last: shared by its I/O ([`Watched`]), its
/// requests ([`Activity::busy`]) and its watchdog ([`Activity::expired`]).
#[derive(Debug)]
pub struct Activity {
    phase: Mutex<Phase>,
    /// Wakes the watchdog when a request head begins (its deadline moves
    /// closer).
    head_begun: Notify,
    header_timeout: Duration,
    idle_timeout: Duration,
}

#[derive(Debug)]
struct Phase {
    /// The last byte read or written, or request begun or answered.
    last: Instant,
    /// The first byte of a request head not yet complete.
    head_since: Option<Instant>,
    /// Requests being answered.
    in_flight: u32,
}

impl Activity {
    pub fn new(limits: &ListenerLimits) -> Arc<Activity> {
        Arc::new(Activity {
            phase: Mutex::new(Phase {
                last: Instant::now(),
                head_since: None,
                in_flight: 0,
            }),
            head_begun: Notify::new(),
            header_timeout: limits.header_timeout,
            idle_timeout: limits.idle_timeout,
        })
    }

    fn phase(&self) -> std::sync::MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self) {
        let now = Instant::now();
        let mut p = self.phase();
        p.last = now;
        if p.in_flight == 0 && p.head_since.is_none() {
            p.head_since = Some(now);
            drop(p);
            self.head_begun.notify_one();
        }
    }

    fn wrote(&self) {
        self.phase().last = Instant::now();
    }

    /// A request's head is complete and it is being answered until the
    /// guard is dropped: neither timeout runs meanwhile.
    pub fn busy(self: &Arc<Self>) -> Busy {
        let mut p = self.phase();
        p.in_flight = p.in_flight.saturating_add(1);
        p.head_since = None;
        p.last = Instant::now();
        Busy(self.clone())
    }

    /// Resolves when the connection has been idle for `idle_timeout`, or a
    /// request head has taken `header_timeout`.
    pub async fn expired(&self) -> Expired {
        loop {
            let (deadline, why) = {
                let p = self.phase();
                if p.in_flight > 0 {
                    (Instant::now() + self.idle_timeout, None)
                } else {
                    let idle = p.last + self.idle_timeout;
                    match p.head_since.map(|t| t + self.header_timeout) {
                        Some(head) if head <= idle => (head, Some(Expired::Header)),
                        _ => (idle, Some(Expired::Idle)),
                    }
                }
            };
            if let Some(why) = why {
                if deadline <= Instant::now() {
                    return why;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {}
                _ = self.head_begun.notified() => {}
            }
        }
    }
}

/// A request being answered (see [`Activity::busy`]).
pub struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        let mut p = self.0.phase();
        p.in_flight = p.in_flight.saturating_sub(1);
        p.last = Instant::now();
    }
}

/// A stream whose reads and writes are recorded in its [`Activity`].
pub struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> Watched<S> {
    pub fn new(inner: S, activity: Arc<Activity>) -> Watched<S> {
        Watched { inner, activity }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(poll, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.read();
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.wrote();
        }
        poll
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.wrote();
        }
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroUsize;

    fn limits() -> ListenerLimits {
        ListenerLimits {
            max_connections: NonZeroUsize::new(1).unwrap(),
            header_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
        }
    }

    #[tokio::test]
    async fn a_slow_request_gets_the_timeout_answer_and_is_not_cut_as_idle_meanwhile() {
        let limits = ListenerLimits {
            max_connections: NonZeroUsize::new(4).unwrap(),
            header_timeout: Duration::from_secs(2),
            // Shorter than the request: a request in progress is not idle.
            idle_timeout: Duration::from_millis(100),
            request_timeout: Duration::from_millis(400),
        };
        let app = axum::Router::new().route(
            "/slow",
            axum::routing::get(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "late"
            }),
        );
        let http = Http {
            name: "api",
            limits,
            busy: b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
            timed_out: |_| {
                axum::response::IntoResponse::into_response((
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    "timed out",
                ))
            },
        };
        let metrics = ListenerMetrics::new();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cancel = CancellationToken::new();
        let server = tokio::spawn({
            let (metrics, cancel) = (metrics.clone(), cancel.clone());
            async move { http.serve(listener, app, &metrics, cancel).await }
        });

        let start = Instant::now();
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut answer));
        read.await.unwrap().unwrap();
        let took = start.elapsed();
        assert!(
            answer.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{answer}"
        );
        assert!(answer.ends_with("\r\n\r\ntimed out"), "{answer}");
        assert!(
            took >= Duration::from_millis(400) && took < Duration::from_secs(3),
            "{took:?}"
        );
        assert_eq!(metrics.refused("api", "request_timeout").get(), 1);
        assert_eq!(metrics.refused("api", "idle_timeout").get(), 0);
        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(metrics.open("api").get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_expires_after_the_idle_timeout() {
        let a = Activity::new(&limits());
        let start = Instant::now();
        assert_eq!(a.expired().await, Expired::Idle);
        assert_eq!(start.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_begun_while_the_watchdog_waits_expires_after_the_header_timeout() {
        let a = Activity::new(&limits());
        let start = Instant::now();
        let watchdog = a.expired();
        tokio::pin!(watchdog);
        assert!(
            tokio::time::timeout(Duration::from_secs(1), watchdog.as_mut())
                .await
                .is_err()
        );
        a.read();
        assert_eq!(watchdog.await, Expired::Header);
        assert_eq!(start.elapsed(), Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_started_head_expires_after_the_header_timeout_and_a_request_stops_both() {
        let a = Activity::new(&limits());
        tokio::time::advance(Duration::from_secs(1)).await;
        a.read();
        let start = Instant::now();
        assert_eq!(a.expired().await, Expired::Header);
        assert_eq!(start.elapsed(), Duration::from_secs(2));

        // While a request is answered neither runs; after it, idle does.
        let busy = a.busy();
        let waited = tokio::time::timeout(Duration::from_secs(60), a.expired()).await;
        assert!(waited.is_err(), "expired while busy");
        drop(busy);
        let start = Instant::now();
        assert_eq!(a.expired().await, Expired::Idle);
        assert_eq!(start.elapsed(), Duration::from_secs(10));
    }
}
