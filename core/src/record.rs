//! The record: one timestamped observation from one device.
//!
//! Every source turns what it receives into [`Record`]s; the store, the
//! pipeline and the uplinks only ever see this shape. Field values are typed
//! (bool, integer, float, string): a reading's type survives storage and
//! reaches the cloud unchanged.

use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (UTC).
pub type Millis = i64;

/// The wall clock now, in [`Millis`].
pub fn now_millis() -> Millis {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_millis() as Millis,
        // A clock before 1970 (a Pi without RTC before NTP): negative, still ordered.
        Err(e) => -(e.duration().as_millis() as Millis),
    }
}

/// One field value of a reading.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Box<str>),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x}"),
            Value::Str(s) => write!(f, "{s:?}"),
        }
    }
}

/// One timestamped observation from one device: `{ts, source, device, fields}`.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// When the reading was taken (device time if the payload carries one,
    /// otherwise the time Ferry received it).
    pub ts: Millis,
    /// The configured name of the source it came through.
    pub source: Arc<str>,
    /// The device it describes.
    pub device: Box<str>,
    /// Field name and value, in the order the device sent them.
    pub fields: Vec<(Box<str>, Value)>,
}

impl Record {
    /// The value of the field `name`, if present.
    pub fn field(&self, name: &str) -> Option<&Value> {
        self.fields
            .iter()
            .find(|(n, _)| &**n == name)
            .map(|(_, v)| v)
    }
}

/// A message that could not be turned into a record, kept with the reason.
#[derive(Clone, Debug, PartialEq)]
pub struct DeadLetter {
    /// When Ferry received it.
    pub ts: Millis,
    /// The configured name of the source it came through.
    pub source: Arc<str>,
    /// Where it came from: the MQTT topic, or a device/register description.
    pub origin: Box<str>,
    /// The kind of rejection, a short fixed label (`not_json`, `oversize`, ...)
    /// used as a metric label.
    pub kind: &'static str,
    /// Why it was rejected, naming the field where there is one.
    pub reason: Box<str>,
    /// The first bytes of the payload (at most [`DeadLetter::MAX_KEPT_PAYLOAD`]).
    pub payload: Vec<u8>,
    /// The full payload length (it may have been cut).
    pub payload_len: u32,
}

impl DeadLetter {
    /// How much of a rejected payload is kept for diagnosis.
    pub const MAX_KEPT_PAYLOAD: usize = 1024;

    pub fn new(
        source: Arc<str>,
        origin: impl Into<Box<str>>,
        kind: &'static str,
        reason: impl Into<Box<str>>,
        payload: &[u8],
    ) -> Self {
        let kept = payload.len().min(Self::MAX_KEPT_PAYLOAD);
        DeadLetter {
            ts: now_millis(),
            source,
            origin: origin.into(),
            kind,
            reason: reason.into(),
            payload: payload[..kept].to_vec(),
            payload_len: payload.len().min(u32::MAX as usize) as u32,
        }
    }
}
