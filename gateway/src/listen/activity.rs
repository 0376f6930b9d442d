//! What a connection is doing (reading a request's head, answering, idle),
//! when each of its timeouts falls due, and the counts and log lines of the
//! connections closed for them.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::metrics::ListenerMetrics;

use super::*;

/// How often one listener logs connections closed for one timeout, at most:
/// an episode of slow or idle clients is one line, not one per connection.
pub(super) const TIMEOUT_LOG_EVERY: Duration = Duration::from_secs(60);

/// Counts a listener's timeouts from a connection's task, and logs them.
#[derive(Clone)]
pub struct Counts {
    pub(super) name: &'static str,
    pub(super) limits: ListenerLimits,
    pub(super) metrics: ListenerMetrics,
    pub(super) warned: Arc<Mutex<Vec<(&'static str, Instant)>>>,
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
    pub(super) phase: Mutex<Phase>,
    /// Wakes the watchdog when a request head begins (its deadline moves
    /// closer).
    pub(super) head_begun: Notify,
    pub(super) header_timeout: Duration,
    pub(super) idle_timeout: Duration,
}

#[derive(Debug)]
pub(super) struct Phase {
    /// The last byte read or written, or request begun or answered.
    pub(super) last: Instant,
    /// The first byte of a request head not yet complete.
    pub(super) head_since: Option<Instant>,
    /// Requests being answered.
    pub(super) in_flight: u32,
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

    pub(super) fn phase(&self) -> std::sync::MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn read(&self) {
        let now = Instant::now();
        let mut p = self.phase();
        p.last = now;
        if p.in_flight == 0 && p.head_since.is_none() {
            p.head_since = Some(now);
            drop(p);
            self.head_begun.notify_one();
        }
    }

    pub(super) fn wrote(&self) {
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
    pub(super) inner: S,
    pub(super) activity: Arc<Activity>,
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
