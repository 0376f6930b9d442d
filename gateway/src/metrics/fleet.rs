//! What managing the gateway from the fleet counts (`ferry_fleet_*`).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use super::ResultLabel;

metric_set! {
    /// What the fleet agent counts.
    pub struct FleetMetrics {
        "fleet" {
            /// Configs from the fleet by result: `applied` (through its
            /// probation), `rejected` (did not validate: nothing changed),
            /// `rolled_back` (failed its probation: the last good config is back).
            applies: Family<ResultLabel, Counter>
                => "applies",
                "Configs from the fleet by result: applied, rejected (nothing changed), rolled_back";
            /// Shadow messages by what became of them: `taken`, `ignored`
            /// (a duplicate or out-of-order version, or a config already
            /// refused), `invalid` (not a shadow document), `rate_limited`
            /// (over `fleet.max_messages_per_second`), `too_large` (over
            /// 64 KiB), `flood` (the agent's queue was full).
            messages: Family<ResultLabel, Counter>
                => "messages",
                "Shadow messages received by result: taken, ignored, invalid, rate_limited, too_large, flood";
            reports: Counter
                => "reports", "Reports published to the shadow (state.reported)";
            /// 1 while a config from the fleet is in its probation.
            probation: Gauge
                => "probation", "1 while a config from the fleet is in its probation";
        }
    }
}

impl FleetMetrics {
    pub fn applied(&self, result: &'static str) {
        self.applies.get_or_create(&ResultLabel { result }).inc();
    }

    pub fn message(&self, result: &'static str) {
        self.messages.get_or_create(&ResultLabel { result }).inc();
    }
}
