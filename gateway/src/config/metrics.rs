//! `[metrics]`: the Prometheus endpoint.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::time::Duration;

use serde::Deserialize;

use crate::listen::ListenerLimits;
use ferry_core::report::{KeyPath, Report};

/// `[metrics]`: where Prometheus scrapes `/metrics`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// The address the metrics endpoint listens on, e.g. `"127.0.0.1:9108"`.
    /// Without it (no `listen` key, or no `[metrics]` section) there is no
    /// metrics endpoint. Default: none (the shipped default config sets
    /// `"127.0.0.1:9108"`).
    pub listen: Option<SocketAddr>,
    /// The most connections open at once (each one descriptor); one more is
    /// answered `503` at once and closed. 1 to 65536. Default: 16.
    #[serde(default = "default_metrics_max_connections")]
    pub max_connections: NonZeroUsize,
    /// The longest a client may take to send its request's line and headers,
    /// from its first byte; a slower one is closed. 1ms to 10m. Default: 5s.
    #[serde(default = "default_metrics_header_timeout", with = "humantime_serde")]
    pub header_timeout: Duration,
    /// The longest a connection may stay open before its first byte (the
    /// endpoint answers one request per connection); it is closed then.
    /// 1ms to 1h. Default: 10s.
    #[serde(default = "default_metrics_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// The longest the answer may take to be written once the request is
    /// read; the connection is closed then. 1ms to 1h. Default: 5s.
    #[serde(default = "default_metrics_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
}

fn default_metrics_max_connections() -> NonZeroUsize {
    NonZeroUsize::new(16).expect("non-zero")
}

fn default_metrics_header_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_metrics_idle_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_metrics_request_timeout() -> Duration {
    Duration::from_secs(5)
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: None,
            max_connections: default_metrics_max_connections(),
            header_timeout: default_metrics_header_timeout(),
            idle_timeout: default_metrics_idle_timeout(),
            request_timeout: default_metrics_request_timeout(),
        }
    }
}

impl MetricsConfig {
    /// The listener's limits.
    pub fn limits(&self) -> ListenerLimits {
        ListenerLimits {
            max_connections: self.max_connections,
            header_timeout: self.header_timeout,
            idle_timeout: self.idle_timeout,
            request_timeout: self.request_timeout,
        }
    }

    pub(crate) fn check(&self, at: &KeyPath, report: &mut Report) {
        self.limits().check(at, report);
    }
}
