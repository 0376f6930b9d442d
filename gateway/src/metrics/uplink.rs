//! What the uplinks count (`ferry_uplink_*`): one set shared by all of them,
//! labelled by uplink.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use std::sync::atomic::AtomicU64;

use super::HistogramFamily;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UplinkLabel {
    pub uplink: String,
}

metric_set! {
    /// What an uplink counts; one set shared by all uplinks, labelled by uplink.
    pub struct UplinkMetrics {
        "uplink" {
            connected: Family<UplinkLabel, Gauge>
                => "connected", "1 while the uplink's MQTT session is up";
            connects: Family<UplinkLabel, Counter>
                => "connects", "Successful connections (CONNACK accepted)";
            connect_errors: Family<UplinkLabel, Counter>
                => "connect_errors", "Connection attempts or sessions that failed";
            connect_attempts: Family<UplinkLabel, Counter>
                => "connect_attempts", "Connects started (TCP, TLS and MQTT CONNECT)";
            probes: Family<UplinkLabel, Counter>
                => "probes", "Reachability probes of the endpoint (a TCP connect, closed at once)";
            probe_failures: Family<UplinkLabel, Counter>
                => "probe_failures", "Probes refused, unreachable or unanswered";
            publishes: Family<UplinkLabel, Counter>
                => "publishes", "Batches published";
            publish_bytes: Family<UplinkLabel, Counter>
                => "publish" in Bytes, "Payload bytes published";
            records_sent: Family<UplinkLabel, Counter>
                => "records_sent", "Records published (resends included)";
            records_acked: Family<UplinkLabel, Counter>
                => "records_acked", "Records whose batch the broker acknowledged";
            records_skipped: Family<UplinkLabel, Counter>
                => "records_skipped",
                "Records skipped because they cannot be sent (undecodable, larger than a batch)";
            records_expired: Family<UplinkLabel, Counter>
                => "records_expired",
                "Records not sent because they were older than max_send_age when their turn came (kept in the store)";
            puback_latency: HistogramFamily<UplinkLabel> = Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 14))
            })
                => "puback_latency" in Seconds, "Time from publishing a batch to its PUBACK";
            backlog_records: Family<UplinkLabel, Gauge<u64, AtomicU64>>
                => "backlog_records", "Stored records this uplink has not had acknowledged yet";
            oldest_unsent_age: Family<UplinkLabel, Gauge<f64, AtomicU64>>
                => "oldest_unsent_age" in Seconds, "Age of the oldest record not yet acknowledged";
            acked_seq: Family<UplinkLabel, Gauge<u64, AtomicU64>>
                => "acked_seq", "Highest record sequence number acknowledged by the cloud";
            send_rate: Family<UplinkLabel, Gauge<f64, AtomicU64>>
                => "send_rate",
                "Records per second the cloud acknowledged (the cursor's pace) over the last 10 s";
            drain_eta: Family<UplinkLabel, Gauge<f64, AtomicU64>>
                => "drain_eta" in Seconds,
                "Estimated time until the backlog is sent at the last 10 s's rates (+Inf: not shrinking)";
            link_rate: Family<UplinkLabel, Gauge<f64, AtomicU64>>
                => "link_bytes_per_second",
                "The link's throughput measured from recent PUBACKs (0: not measured yet)";
            batch_target: Family<UplinkLabel, Gauge<u64, AtomicU64>>
                => "batch_target" in Bytes, "The batch size the link's throughput calls for";
        }
    }
}

impl UplinkMetrics {
    pub fn label(uplink: &str) -> UplinkLabel {
        UplinkLabel {
            uplink: uplink.to_owned(),
        }
    }
}
