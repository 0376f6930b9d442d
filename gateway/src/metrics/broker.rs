//! What the embedded broker sources count about their clients
//! (`ferry_source_*`), and the broker's observer
//! ([`ferry_sources::mqtt::BrokerObserver`]) that maps its events to them.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use super::SourceLabel;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    pub source: String,
    /// `connections`, `topic_length`, `payload`, `fields`, `backlog`,
    /// `descriptors` or `accept_error`.
    pub limit: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LoginLabels {
    pub source: String,
    /// `bad_password`, `unknown_user` or `no_credentials`.
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeniedLabels {
    pub source: String,
    /// `publish`, `subscribe` or `will`.
    pub action: String,
}

metric_set! {
    /// What the embedded broker sources count about their clients
    /// (`ferry_source_*`); labelled by source, never by client (client ids are
    /// unbounded).
    pub struct BrokerMetrics {
        "source" {
            /// Clients connected now.
            connections: Family<SourceLabel, Gauge>
                => "connections", "Clients connected to an embedded broker";
            /// Times a limit was hit, by limit.
            limits_hit: Family<LimitLabels, Counter>
                => "limits_hit",
                "Times a client hit a limit (connections, topic_length, payload, fields; backlog: a device through the front waited for ingest; descriptors, accept_error: the front's accept failed and waited)";
            /// Logins refused, by reason.
            logins_refused: Family<LoginLabels, Counter>
                => "logins_refused", "Logins refused by an embedded broker, by reason";
            /// What the ACL refused, by action.
            acl_denied: Family<DeniedLabels, Counter>
                => "acl_denied", "Publishes, subscriptions and will topics the ACL refused";
            /// TLS handshakes that failed.
            tls_failures: Family<SourceLabel, Counter>
                => "tls_failures", "TLS handshakes with devices that failed";
        }
    }
}

#[cfg(feature = "embedded-broker")]
impl ferry_sources::mqtt::BrokerObserver for BrokerMetrics {
    fn event(&self, source: &str, event: ferry_sources::mqtt::BrokerEvent) {
        use ferry_sources::mqtt::BrokerEvent;
        let source = source.to_owned();
        match event {
            BrokerEvent::Connected => {
                self.connections
                    .get_or_create(&SourceLabel { source })
                    .inc();
            }
            BrokerEvent::Disconnected => {
                self.connections
                    .get_or_create(&SourceLabel { source })
                    .dec();
            }
            BrokerEvent::LoginRefused(why) => {
                let reason = why.as_str().to_owned();
                self.logins_refused
                    .get_or_create(&LoginLabels { source, reason })
                    .inc();
            }
            BrokerEvent::TlsFailed => {
                self.tls_failures
                    .get_or_create(&SourceLabel { source })
                    .inc();
            }
            BrokerEvent::Denied(what) => {
                let action = what.as_str().to_owned();
                self.acl_denied
                    .get_or_create(&DeniedLabels { source, action })
                    .inc();
            }
            BrokerEvent::Limit(limit) => {
                let limit = limit.as_str().to_owned();
                self.limits_hit
                    .get_or_create(&LimitLabels { source, limit })
                    .inc();
            }
        }
    }
}
