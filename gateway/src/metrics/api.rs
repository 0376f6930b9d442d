//! What the query API counts (`ferry_api_*`).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use super::ReasonLabel;

metric_set! {
    /// What the query API counts.
    pub struct ApiMetrics {
        "api" {
            /// API requests answered with an error, by reason: the error's code
            /// (`bad_parameter`, `not_found`, `too_many_points`, `too_many_series`,
            /// `query_too_long`, `unauthorized`, `busy`, `internal`), or `panic`
            /// for a request whose handler panicked (answered 500 `internal`).
            requests_failed: Family<ReasonLabel, Counter>
                => "requests_failed",
                "API requests answered with an error, by reason (the error code, or panic)";
            /// API requests reading the store now, on the blocking pool (at most
            /// `[api] max_concurrent_queries`).
            queries_running: Gauge
                => "queries_running",
                "API requests reading the store now (at most [api] max_concurrent_queries)";
            /// API requests whose reads of the store were stopped early because
            /// the request was gone (answered 503 `request_timeout`, or its
            /// connection closed): their query slot freed then, not when the
            /// whole read would have ended.
            queries_cancelled: Counter
                => "queries_cancelled",
                "API requests whose store reads stopped early because the request was gone (timed out or closed)";
        }
    }
}

impl ApiMetrics {
    pub fn failed(&self, reason: &str) {
        self.requests_failed
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }
}
