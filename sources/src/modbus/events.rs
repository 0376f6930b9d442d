//! What a Modbus source reports as it polls, for metrics.
//!
//! The sources crate has no metrics library: the gateway implements
//! [`ModbusObserver`] (in its `metrics/modbus.rs`, where the Modbus metrics
//! are declared) and maps each [`PollEvent`] to its counters. The source asks for one
//! [`DeviceObserver`] per device when it starts, so the per-event cost is a
//! method call, not a label lookup.

use std::sync::Arc;
use std::time::Duration;

/// Hands out the per-device observers of a source.
pub trait ModbusObserver: Send + Sync {
    fn device(&self, source: &str, device: &str) -> Arc<dyn DeviceObserver>;
}

/// Receives one device's events.
pub trait DeviceObserver: Send + Sync {
    fn event(&self, event: PollEvent);
}

/// Why a request got no answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// No answer within the device's timeout.
    Timeout,
    /// An answer that does not answer the request: garbage, a bad CRC, the
    /// wrong unit, function or length.
    BadResponse,
    /// The connection or serial port failed or could not be opened.
    Link,
}

impl FailureKind {
    /// A short fixed label, for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Timeout => "timeout",
            FailureKind::BadResponse => "bad_response",
            FailureKind::Link => "link",
        }
    }
}

/// Something that happened while polling one device.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PollEvent {
    /// A request was answered with data.
    Answered { round_trip: Duration },
    /// A request was answered with an exception code.
    Exception { code: u8, round_trip: Duration },
    /// A request got no usable answer.
    Failed(FailureKind),
    /// A value was read but cannot be stored (NaN, not UTF-8, too large).
    BadValue,
    /// A poll ended; `fields` were read, `missing` were not. A record is
    /// stored when `fields` > 0.
    Polled { fields: usize, missing: usize },
    /// Polls that did not happen because the link was busy past their time.
    Missed(u32),
    /// The device answers again (`true`) or is backed off (`false`).
    Up(bool),
}

/// An observer that ignores everything.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoObserver;

impl ModbusObserver for NoObserver {
    fn device(&self, _source: &str, _device: &str) -> Arc<dyn DeviceObserver> {
        Arc::new(NoObserver)
    }
}

impl DeviceObserver for NoObserver {
    fn event(&self, _event: PollEvent) {}
}
