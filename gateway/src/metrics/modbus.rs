//! What the Modbus sources count (`ferry_modbus_*`), and the sources'
//! observer ([`ferry_sources::modbus::ModbusObserver`]) that maps each poll
//! event to its counters.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

use super::HistogramFamily;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeviceLabels {
    pub source: String,
    pub device: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeviceErrorLabels {
    pub source: String,
    pub device: String,
    /// `timeout`, `bad_response`, `link` or `bad_value`.
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeviceExceptionLabels {
    pub source: String,
    pub device: String,
    /// The exception code, `0x02`.
    pub code: String,
}

metric_set! {
    /// What the Modbus sources count; one set shared by all, labelled by source
    /// and device (device names are unique within a source).
    pub struct ModbusMetrics {
        "modbus" {
            /// Requests sent, whatever came back.
            requests: Family<DeviceLabels, Counter>
                => "requests", "Requests sent to devices";
            /// Requests without a usable answer, and values that could not be stored,
            /// by kind.
            errors: Family<DeviceErrorLabels, Counter>
                => "errors",
                "Requests without a usable answer, and values that could not be stored, by kind";
            /// Exception answers, by code.
            exceptions: Family<DeviceExceptionLabels, Counter>
                => "exceptions", "Exception answers from devices, by code";
            /// Time from request to answer (data or exception).
            round_trip: HistogramFamily<DeviceLabels> = Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.000_5, 2.0, 14))
            })
                => "round_trip" in Seconds, "Time from request to answer";
            /// Polls done (each with at least one field read is one record).
            polls: Family<DeviceLabels, Counter>
                => "polls", "Polls of a device";
            /// Polls skipped because the link was busy past their time.
            polls_missed: Family<DeviceLabels, Counter>
                => "polls_missed", "Polls skipped because the link was busy past their time";
            /// 1 while the device answers, 0 while it is backed off.
            device_up: Family<DeviceLabels, Gauge>
                => "device_up", "1 while the device answers, 0 while it is backed off";
        }
    }
}

/// The metrics of one device, looked up once.
struct ModbusDeviceMetrics {
    labels: DeviceLabels,
    exceptions: Family<DeviceExceptionLabels, Counter>,
    requests: Counter,
    round_trip: Histogram,
    polls: Counter,
    polls_missed: Counter,
    up: Gauge,
    /// By `FailureKind`, then `bad_value`.
    errors: [Counter; 4],
}

impl ferry_sources::modbus::ModbusObserver for ModbusMetrics {
    fn device(
        &self,
        source: &str,
        device: &str,
    ) -> std::sync::Arc<dyn ferry_sources::modbus::DeviceObserver> {
        let labels = DeviceLabels {
            source: source.to_owned(),
            device: device.to_owned(),
        };
        let error = |kind: &str| {
            self.errors
                .get_or_create(&DeviceErrorLabels {
                    source: source.to_owned(),
                    device: device.to_owned(),
                    kind: kind.to_owned(),
                })
                .clone()
        };
        let up = self.device_up.get_or_create(&labels).clone();
        up.set(1);
        std::sync::Arc::new(ModbusDeviceMetrics {
            exceptions: self.exceptions.clone(),
            requests: self.requests.get_or_create(&labels).clone(),
            round_trip: self.round_trip.get_or_create(&labels).clone(),
            polls: self.polls.get_or_create(&labels).clone(),
            polls_missed: self.polls_missed.get_or_create(&labels).clone(),
            up,
            errors: [
                error("timeout"),
                error("bad_response"),
                error("link"),
                error("bad_value"),
            ],
            labels,
        })
    }
}

impl ferry_sources::modbus::DeviceObserver for ModbusDeviceMetrics {
    fn event(&self, event: ferry_sources::modbus::PollEvent) {
        use ferry_sources::modbus::{FailureKind, PollEvent};
        match event {
            PollEvent::Answered { round_trip } => {
                self.requests.inc();
                self.round_trip.observe(round_trip.as_secs_f64());
            }
            PollEvent::Exception { code, round_trip } => {
                self.requests.inc();
                self.round_trip.observe(round_trip.as_secs_f64());
                self.exceptions
                    .get_or_create(&DeviceExceptionLabels {
                        source: self.labels.source.clone(),
                        device: self.labels.device.clone(),
                        code: format!("{code:#04x}"),
                    })
                    .inc();
            }
            PollEvent::Failed(kind) => {
                self.requests.inc();
                let i = match kind {
                    FailureKind::Timeout => 0,
                    FailureKind::BadResponse => 1,
                    FailureKind::Link => 2,
                };
                self.errors[i].inc();
            }
            PollEvent::BadValue => {
                self.errors[3].inc();
            }
            PollEvent::Polled { .. } => {
                self.polls.inc();
            }
            PollEvent::Missed(n) => {
                self.polls_missed.inc_by(u64::from(n));
            }
            PollEvent::Up(up) => {
                self.up.set(i64::from(up));
            }
        }
    }
}
