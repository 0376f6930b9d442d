//! What bounds one HTTP listener: the `max_connections` and timeouts of
//! `[api]` and `[metrics]`, and the connections answered 503 over the cap.

use std::num::NonZeroUsize;
use std::time::Duration;

use ferry_core::report::{KeyPath, Report};

/// Connections over an HTTP listener's cap that may be open at once while
/// they are answered 503; more are closed without an answer.
pub const HTTP_REFUSING: u64 = 16;

/// What bounds one HTTP listener's connections (`[api]`, `[metrics]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenerLimits {
    pub max_connections: NonZeroUsize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub request_timeout: Duration,
}

/// The most `max_connections` one HTTP listener may have.
pub const MAX_LISTENER_CONNECTIONS: u64 = 65_536;

impl ListenerLimits {
    pub(crate) fn check(&self, at: &KeyPath, report: &mut Report) {
        let ms = Duration::from_millis(1);
        let hour = Duration::from_secs(3600);
        report.int_in(
            at.key("max_connections"),
            self.max_connections.get() as u64,
            1,
            MAX_LISTENER_CONNECTIONS,
        );
        report.duration_in(
            at.key("header_timeout"),
            self.header_timeout,
            ms,
            Duration::from_secs(600),
        );
        report.duration_in(at.key("idle_timeout"), self.idle_timeout, ms, hour);
        report.duration_in(at.key("request_timeout"), self.request_timeout, ms, hour);
    }
}
