//! What the HTTP listeners (the query API, the metrics endpoint) count about
//! their connections (`ferry_http_*`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabel {
    /// `api` or `metrics`.
    pub listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerReasonLabels {
    /// `api` or `metrics`.
    pub listener: String,
    /// `max_connections`, `header_timeout`, `idle_timeout`,
    /// `request_timeout`, `out_of_descriptors` or `accept_error`.
    pub reason: String,
}

metric_set! {
    /// What the HTTP listeners (the query API, the metrics endpoint) count about
    /// their connections (`ferry_http_*`). The embedded broker's device front
    /// counts its own in `ferry_source_limits_hit_total` (limits `connections`,
    /// `descriptors`, `accept_error`).
    pub struct ListenerMetrics {
        "http" {
            /// Connections open now, by listener.
            connections: Family<ListenerLabel, Gauge>
                => "connections", "Connections open now at an HTTP listener (api, metrics)";
            /// Connections refused or closed by a limit, and failed accepts, by
            /// listener and reason.
            refused: Family<ListenerReasonLabels, Counter>
                => "connections_refused",
                "HTTP connections refused or closed by a limit, and failed accepts, by listener and reason (max_connections: a fast 503; header_timeout, idle_timeout, request_timeout; out_of_descriptors, accept_error: accept failed, retried with a back-off)";
        }
    }
}

impl ListenerMetrics {
    /// The open-connections gauge of `listener`.
    pub fn open(&self, listener: &str) -> Gauge {
        self.connections
            .get_or_create(&ListenerLabel {
                listener: listener.to_owned(),
            })
            .clone()
    }

    /// The counter of `listener`'s refusals for `reason`.
    pub fn refused(&self, listener: &str, reason: &str) -> Counter {
        self.refused
            .get_or_create(&ListenerReasonLabels {
                listener: listener.to_owned(),
                reason: reason.to_owned(),
            })
            .clone()
    }
}
