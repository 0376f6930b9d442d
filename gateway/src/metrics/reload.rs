//! What reloading the config (SIGHUP) counts (`ferry_config_*`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

metric_set! {
    /// What reloading the config (SIGHUP) counts.
    pub struct ConfigMetrics {
        "config" {
            /// Reloads, by result: `applied` (what can change in place did; what
            /// needs a restart is logged), `refused` (the file or an uplink in it
            /// has a problem: nothing changed), `no_file` (running on the embedded
            /// default, there is nothing to read again).
            reloads: Family<ResultLabel, Counter>
                => "reloads",
                "Config reloads (SIGHUP) by result: applied, refused (nothing changed), no_file";
        }
    }
}

impl ConfigMetrics {
    pub fn reloaded(&self, result: &'static str) {
        self.reloads.get_or_create(&ResultLabel { result }).inc();
    }
}
