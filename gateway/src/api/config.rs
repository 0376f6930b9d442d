//! `[api]`: the local query API and status page.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;

use ferry_core::report::{KeyPath, Report};

use crate::listen::ListenerLimits;

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
    /// would return more is refused with a clear error (a bucketed query
    /// before any work, by the number of buckets its range and step can
    /// hold). Default: 100000.
    #[serde(default = "default_max_points")]
    pub max_points: NonZeroUsize,
    /// The most `series=` parameters one query may give; more is a 400
    /// (`too_many_series`). Default: 256.
    #[serde(default = "default_max_series")]
    pub max_series: NonZeroUsize,
    /// The longest query string (the part of the URL after `?`) any API
    /// request may have, 1 KiB to 1 MiB; longer is a 400
    /// (`query_too_long`), refused before it is parsed. Default: 32 KiB.
    #[serde(
        default = "default_max_query_bytes",
        deserialize_with = "deserialize_query_bytes"
    )]
    pub max_query_bytes: ByteSize,
    /// The most requests reading the store at once (each runs on a thread
    /// of the blocking pool); one more is answered 503 with `Retry-After`
    /// (`busy`), so that a burst of heavy queries cannot take every thread
    /// and all the memory. Default: 4.
    #[serde(default = "default_max_concurrent_queries")]
    pub max_concurrent_queries: NonZeroUsize,
    /// The most connections open at once (each one descriptor); one more is
    /// answered `503` at once and closed. 1 to 65536. Default: 64.
    #[serde(default = "default_api_max_connections")]
    pub max_connections: NonZeroUsize,
    /// The longest a client may take to send a request's line and headers,
    /// from its first byte; a slower one is closed. 1ms to 10m. Default: 10s.
    #[serde(default = "default_api_header_timeout", with = "humantime_serde")]
    pub header_timeout: Duration,
    /// The longest a connection may stay open with no request in progress
    /// and no byte sent or received (a keep-alive between requests, a peer
    /// that stopped reading); it is closed then. 1ms to 1h. Default: 60s.
    #[serde(default = "default_api_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// The longest one request may take to be answered; a slower one gets a
    /// `503` with `"code": "request_timeout"`. 1ms to 1h. Default: 30s.
    #[serde(default = "default_api_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
}

fn default_max_points() -> NonZeroUsize {
    NonZeroUsize::new(100_000).expect("non-zero")
}

fn default_max_series() -> NonZeroUsize {
    NonZeroUsize::new(256).expect("non-zero")
}

fn default_max_query_bytes() -> ByteSize {
    ByteSize::kib(32)
}

fn default_max_concurrent_queries() -> NonZeroUsize {
    NonZeroUsize::new(4).expect("non-zero")
}

/// The least and most `max_query_bytes` may be: below 1 KiB a query of a
/// few series no longer fits; above 1 MiB the cap bounds nothing the HTTP
/// layer does not already.
const QUERY_BYTES: (u64, u64) = (1024, 1024 * 1024);

fn deserialize_query_bytes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<ByteSize, D::Error> {
    let size = ByteSize::deserialize(d)?;
    if (QUERY_BYTES.0..=QUERY_BYTES.1).contains(&size.as_u64()) {
        Ok(size)
    } else {
        Err(serde::de::Error::custom(format!(
            "must be between 1 KiB and 1 MiB, got {} bytes",
            size.as_u64()
        )))
    }
}

fn default_api_max_connections() -> NonZeroUsize {
    NonZeroUsize::new(64).expect("non-zero")
}

fn default_api_header_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_api_idle_timeout() -> Duration {
    Duration::from_secs(60)
}

fn default_api_request_timeout() -> Duration {
    Duration::from_secs(30)
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: None,
            token: None,
            max_points: default_max_points(),
            max_series: default_max_series(),
            max_query_bytes: default_max_query_bytes(),
            max_concurrent_queries: default_max_concurrent_queries(),
            max_connections: default_api_max_connections(),
            header_timeout: default_api_header_timeout(),
            idle_timeout: default_api_idle_timeout(),
            request_timeout: default_api_request_timeout(),
        }
    }
}

impl ApiConfig {
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
