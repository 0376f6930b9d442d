//! `[metrics]`: the Prometheus endpoint.

use std::net::SocketAddr;

use serde::Deserialize;

/// `[metrics]`: where Prometheus scrapes `/metrics`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// The address the metrics endpoint listens on, e.g. `"127.0.0.1:9108"`.
    /// Without it (no `listen` key, or no `[metrics]` section) there is no
    /// metrics endpoint. Default: none (the shipped default config sets
    /// `"127.0.0.1:9108"`).
    pub listen: Option<SocketAddr>,
}
