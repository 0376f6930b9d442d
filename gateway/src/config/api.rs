//! `[api]`: the local query API and status page.

use std::net::SocketAddr;
use std::num::NonZeroUsize;

use serde::Deserialize;

/// `[api]`: where the query API and the status page listen.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// The address the API listens on, e.g. `"127.0.0.1:9109"`. Without it
    /// (no `listen` key, or no `[api]` section) there is no API. Default:
    /// none (the shipped default config sets `"127.0.0.1:9109"`).
    pub listen: Option<SocketAddr>,
    /// A bearer token every `/api/v1` request must carry
    /// (`Authorization: Bearer TOKEN`). Default: none (no authentication:
    /// keep `listen` on 127.0.0.1 then).
    pub token: Option<String>,
    /// The most points or buckets one query response may hold; a query that
    /// would return more is refused with a clear error. Default: 100000.
    #[serde(default = "default_max_points")]
    pub max_points: NonZeroUsize,
}

fn default_max_points() -> NonZeroUsize {
    NonZeroUsize::new(100_000).expect("non-zero")
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: None,
            token: None,
            max_points: default_max_points(),
        }
    }
}
