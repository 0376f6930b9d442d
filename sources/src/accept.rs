//! What an accept loop does when `accept` fails: mostly the process is out of
//! file descriptors (`EMFILE`, or `ENFILE` for the whole system), and the
//! connection waiting in the backlog makes the listener readable again at
//! once, so a loop that simply retries spins a core until a descriptor
//! frees. Every accept loop of Ferry (the query API, the metrics endpoint,
//! the embedded broker's device front) waits instead, with a back-off that
//! doubles from [`FIRST_DELAY`] to [`MAX_DELAY`], logs the first failure of
//! an episode at `warn` and its end at `info` (never one line per failure),
//! and has its caller count every failure.

use ferry_core::backoff::Backoff;
use std::io;
use std::time::{Duration, Instant};

use tracing::{info, warn};

/// The wait after the first failed accept of an episode.
pub const FIRST_DELAY: Duration = Duration::from_millis(5);

/// The longest wait between two accepts while they fail: also the longest a
/// listener stays deaf once descriptors are free again.
pub const MAX_DELAY: Duration = Duration::from_millis(500);

/// Why an accept failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcceptFailure {
    /// `EMFILE`, `ENFILE`, `ENOBUFS` or `ENOMEM`: no descriptor (or no
    /// memory) for the new socket; the connection stays in the backlog.
    OutOfDescriptors,
    /// Anything else (a connection aborted before it was accepted, ...).
    Other,
}

impl AcceptFailure {
    /// What `e` is.
    pub fn of(e: &io::Error) -> AcceptFailure {
        match e.raw_os_error() {
            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
                AcceptFailure::OutOfDescriptors
            }
            _ => AcceptFailure::Other,
        }
    }

    /// The label value it is counted under: `out_of_descriptors` or
    /// `accept_error`.
    pub fn as_str(self) -> &'static str {
        match self {
            AcceptFailure::OutOfDescriptors => "out_of_descriptors",
            AcceptFailure::Other => "accept_error",
        }
    }
}

/// The back-off state of one accept loop.
#[derive(Debug)]
pub struct AcceptBackoff {
    /// Names the listener in log lines, e.g. `"query API"`.
    listener: String,
    /// The waits: no jitter (the listener is local, nobody else is waiting
    /// on the same thing), doubling from [`FIRST_DELAY`] to [`MAX_DELAY`].
    backoff: Backoff,
    /// Failures in this episode, and when it began.
    failures: u64,
    since: Option<Instant>,
}

impl AcceptBackoff {
    pub fn new(listener: impl Into<String>) -> AcceptBackoff {
        AcceptBackoff {
            listener: listener.into(),
            backoff: Backoff::new(FIRST_DELAY, MAX_DELAY),
            failures: 0,
            since: None,
        }
    }

    /// After a failed accept: what failed, and how long to wait before the
    /// next one. The first failure of an episode is logged.
    pub fn failed(&mut self, e: &io::Error) -> (AcceptFailure, Duration) {
        let failure = AcceptFailure::of(e);
        self.failures = self.failures.saturating_add(1);
        if self.since.is_none() {
            self.since = Some(Instant::now());
            match failure {
                AcceptFailure::OutOfDescriptors => warn!(
                    listener = %self.listener,
                    "cannot accept connections: {e}; retrying every {MAX_DELAY:?} at most \
                     until descriptors free up (counted; raise LimitNOFILE or lower the \
                     listeners' max_connections)"
                ),
                AcceptFailure::Other => {
                    warn!(listener = %self.listener, "cannot accept a connection: {e}; retrying")
                }
            }
        }
        (failure, self.backoff.next_with(1.0))
    }

    /// After a successful accept: ends an episode of failures (logged).
    pub fn accepted(&mut self) {
        if let Some(since) = self.since.take() {
            info!(
                listener = %self.listener,
                failures = self.failures,
                "accepting connections again after {:?}",
                since.elapsed()
            );
            self.failures = 0;
            self.backoff.reset();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_doubles_to_its_cap_and_a_success_resets_it() {
        let mut b = AcceptBackoff::new("test");
        let emfile = io::Error::from_raw_os_error(libc::EMFILE);
        let waits: Vec<_> = (0..10).map(|_| b.failed(&emfile).1).collect();
        let ms = |n| Duration::from_millis(n);
        assert_eq!(
            waits,
            [
                ms(5),
                ms(10),
                ms(20),
                ms(40),
                ms(80),
                ms(160),
                ms(320),
                ms(500),
                ms(500),
                ms(500)
            ]
        );
        b.accepted();
        assert_eq!(b.failed(&emfile), (AcceptFailure::OutOfDescriptors, ms(5)));
        let aborted = io::Error::from_raw_os_error(libc::ECONNABORTED);
        assert_eq!(b.failed(&aborted).0, AcceptFailure::Other);
        let enfile = io::Error::from_raw_os_error(libc::ENFILE);
        assert_eq!(AcceptFailure::of(&enfile), AcceptFailure::OutOfDescriptors);
    }
}
