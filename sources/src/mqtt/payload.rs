//! Payload decoding: a flat JSON object of fields → typed field values.
//!
//! A payload is one JSON object; each member is a field:
//!
//! | JSON | [`Value`] |
//! | --- | --- |
//! | `true` / `false` | `Bool` |
//! | an integer that fits `i64` | `Int` |
//! | any other number (`1.5`, `1e3`, `2**64`) | `Float` |
//! | a string | `Str` |
//! | `null`, an array, an object | rejected (`unsupported_type`) |
//!
//! The device and the timestamp may come from named fields
//! ([`PayloadOptions`]); those fields are taken out of the record's fields.
//! A field named twice keeps its last value (as JavaScript's `JSON.parse`
//! does) at the position of its first occurrence.
//!
//! Decoding runs straight from the bytes into the record's field vector with
//! a serde visitor: no intermediate `serde_json::Value`.

use std::borrow::Cow;
use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use ferry_core::record::{Millis, Value};

/// How payloads are decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayloadOptions {
    /// The field that names the device; `None`: the topic names it.
    pub device_field: Option<String>,
    /// The field that holds the reading's time; `None`: the time of receipt.
    pub timestamp_field: Option<String>,
    /// Larger payloads are rejected (`oversize`) before parsing.
    pub max_payload: usize,
    /// A payload with more fields is rejected (`too_many_fields`).
    pub max_fields: usize,
}

impl Default for PayloadOptions {
    fn default() -> Self {
        PayloadOptions {
            device_field: None,
            timestamp_field: None,
            max_payload: 64 * 1024,
            max_fields: 256,
        }
    }
}

/// A decoded payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// The device named by `device_field`, if configured and present.
    pub device: Option<Box<str>>,
    /// The time from `timestamp_field`, if configured and present.
    pub ts: Option<Millis>,
    /// The remaining fields in the order they were sent; never empty.
    pub fields: Vec<(Box<str>, Value)>,
}

/// Why a message was turned into a dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    /// One of the `Reject::*` kind constants: a short, fixed metric label.
    pub kind: &'static str,
    /// What is wrong, naming the field where there is one.
    pub reason: String,
}

impl Reject {
    /// The payload is larger than `max_payload`.
    pub const OVERSIZE: &'static str = "oversize";
    /// The payload is not JSON (or not UTF-8, or empty).
    pub const NOT_JSON: &'static str = "not_json";
    /// The payload is JSON but not an object.
    pub const NOT_OBJECT: &'static str = "not_object";
    /// A field is null, an array or a nested object.
    pub const UNSUPPORTED_TYPE: &'static str = "unsupported_type";
    /// More than `max_fields` fields.
    pub const TOO_MANY_FIELDS: &'static str = "too_many_fields";
    /// No fields left besides the device and timestamp fields.
    pub const NO_FIELDS: &'static str = "no_fields";
    /// The device is missing or not a usable name.
    pub const BAD_DEVICE: &'static str = "bad_device";
    /// The timestamp field is not a valid time.
    pub const BAD_TIMESTAMP: &'static str = "bad_timestamp";
    /// The topic matches none of the source's templates.
    pub const UNKNOWN_TOPIC: &'static str = "unknown_topic";
    /// Not a message: the embedded broker dropped messages it had already
    /// acknowledged, because Ferry fell behind by more than its buffer. One
    /// dead letter per gap; the reason says how many were lost.
    pub const OVERRUN: &'static str = "overrun";
    /// The topic is longer than the embedded broker's `max_topic_length`.
    pub const TOPIC_TOO_LONG: &'static str = "topic_too_long";

    /// Every kind, e.g. to pre-register metric labels.
    pub const KINDS: [&'static str; 11] = [
        Self::OVERSIZE,
        Self::NOT_JSON,
        Self::NOT_OBJECT,
        Self::UNSUPPORTED_TYPE,
        Self::TOO_MANY_FIELDS,
        Self::NO_FIELDS,
        Self::BAD_DEVICE,
        Self::BAD_TIMESTAMP,
        Self::UNKNOWN_TOPIC,
        Self::OVERRUN,
        Self::TOPIC_TOO_LONG,
    ];

    pub fn new(kind: &'static str, reason: impl Into<String>) -> Reject {
        Reject {
            kind,
            reason: reason.into(),
        }
    }
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.reason)
    }
}

/// The longest device name accepted, in bytes.
pub(crate) const MAX_DEVICE_LEN: usize = 256;

/// Latest accepted timestamp: 9999-12-31T23:59:59.999Z.
const MAX_TS: Millis = 253_402_300_799_999;

/// Numbers at or above this are milliseconds, below it seconds (1e11 s is
/// the year 5138; 1e11 ms is 1973).
const MILLIS_THRESHOLD: i64 = 100_000_000_000;

/// Checks a device name from a topic level or a payload field: non-empty, at
/// most [`MAX_DEVICE_LEN`] bytes, no control characters and none of `/ + #`
/// (the name is used in uplink topics).
pub(crate) fn check_device(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty".into());
    }
    if name.len() > MAX_DEVICE_LEN {
        return Err(format!(
            "is {} bytes long, over the limit of {MAX_DEVICE_LEN}",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| c.is_control() || matches!(c, '/' | '+' | '#'))
    {
        return Err(format!("{name:?} contains {c:?}"));
    }
    Ok(())
}

/// Decodes one payload.
pub fn decode_payload(payload: &[u8], opts: &PayloadOptions) -> Result<Decoded, Reject> {
    if payload.len() > opts.max_payload {
        return Err(Reject::new(
            Reject::OVERSIZE,
            format!(
                "payload is {} bytes, over the limit of {} bytes",
                payload.len(),
                opts.max_payload
            ),
        ));
    }
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Err(Reject::new(Reject::NOT_JSON, "payload is empty"));
    }
    let slot = Cell::new(None);
    let mut de = serde_json::Deserializer::from_slice(payload);
    let result = PayloadSeed { opts, slot: &slot }
        .deserialize(&mut de)
        .and_then(|decoded| de.end().map(|()| decoded));
    let decoded = match result {
        Ok(d) => d,
        Err(e) => {
            return Err(slot
                .take()
                .unwrap_or_else(|| Reject::new(Reject::NOT_JSON, format!("not JSON: {e}"))))
        }
    };
    if decoded.fields.is_empty() {
        let mut reason = String::from("payload has no fields");
        let named: Vec<&str> = [&opts.device_field, &opts.timestamp_field]
            .into_iter()
            .flatten()
            .map(String::as_str)
            .collect();
        if !named.is_empty() {
            reason.push_str(" besides `");
            reason.push_str(&named.join("` and `"));
            reason.push('`');
        }
        return Err(Reject::new(Reject::NO_FIELDS, reason));
    }
    Ok(decoded)
}

/// Records the rejection and returns the (opaque) serde error that unwinds
/// the parse; [`decode_payload`] reports the recorded rejection.
fn reject<E: de::Error>(slot: &Cell<Option<Reject>>, kind: &'static str, reason: String) -> E {
    slot.set(Some(Reject::new(kind, reason)));
    E::custom(kind)
}

struct PayloadSeed<'a> {
    opts: &'a PayloadOptions,
    slot: &'a Cell<Option<Reject>>,
}

impl<'de> DeserializeSeed<'de> for PayloadSeed<'_> {
    type Value = Decoded;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Decoded, D::Error> {
        d.deserialize_any(self)
    }
}

impl PayloadSeed<'_> {
    fn not_object<E: de::Error>(&self, what: &str) -> E {
        reject(
            self.slot,
            Reject::NOT_OBJECT,
            format!("payload is {what}, not an object of fields"),
        )
    }
}

impl<'de> Visitor<'de> for PayloadSeed<'_> {
    type Value = Decoded;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object of fields")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Decoded, A::Error> {
        let opts = self.opts;
        let slot = self.slot;
        let mut out = Decoded {
            device: None,
            ts: None,
            fields: Vec::with_capacity(map.size_hint().unwrap_or(8).min(opts.max_fields)),
        };
        while let Some(key) = map.next_key_seed(KeySeed)? {
            let name: &str = &key;
            if opts.device_field.as_deref() == Some(name) {
                out.device = Some(map.next_value_seed(DeviceSeed { name, slot })?);
                continue;
            }
            if opts.timestamp_field.as_deref() == Some(name) {
                out.ts = Some(map.next_value_seed(TimestampSeed { name, slot })?);
                continue;
            }
            let value = map.next_value_seed(FieldSeed { name, slot })?;
            // Last value wins, at the first position.
            if let Some(existing) = out.fields.iter_mut().find(|(n, _)| **n == *name) {
                existing.1 = value;
                continue;
            }
            if out.fields.len() >= opts.max_fields {
                return Err(reject(
                    slot,
                    Reject::TOO_MANY_FIELDS,
                    format!(
                        "payload has more than {} fields (field `{name}` is one too many)",
                        opts.max_fields
                    ),
                ));
            }
            out.fields.push((Box::from(name), value));
        }
        Ok(out)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<Decoded, A::Error> {
        Err(self.not_object("a JSON array"))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Decoded, E> {
        Err(self.not_object("a JSON string"))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Decoded, E> {
        Err(self.not_object("a JSON boolean"))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Decoded, E> {
        Err(self.not_object("a JSON number"))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Decoded, E> {
        Err(self.not_object("a JSON number"))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Decoded, E> {
        Err(self.not_object("a JSON number"))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Decoded, E> {
        Err(self.not_object("JSON null"))
    }
}

/// A member name, borrowed from the payload when it has no escapes.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Cow<'de, str>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a field name")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

/// One field's value.
struct FieldSeed<'a> {
    name: &'a str,
    slot: &'a Cell<Option<Reject>>,
}

impl FieldSeed<'_> {
    fn unsupported<E: de::Error>(&self, what: &str) -> E {
        reject(
            self.slot,
            Reject::UNSUPPORTED_TYPE,
            format!("field `{}`: {what} is not supported", self.name),
        )
    }
}

impl<'de> DeserializeSeed<'de> for FieldSeed<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for FieldSeed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a boolean, a number or a string")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(match i64::try_from(v) {
            Ok(i) => Value::Int(i),
            Err(_) => Value::Float(v as f64),
        })
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.into()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v.into_boxed_str()))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Err(self.unsupported("null"))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<Value, A::Error> {
        Err(self.unsupported("an array"))
    }
    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<Value, A::Error> {
        Err(self.unsupported("nested object"))
    }
}

/// The device field's value: a string or an integer.
struct DeviceSeed<'a> {
    name: &'a str,
    slot: &'a Cell<Option<Reject>>,
}

impl DeviceSeed<'_> {
    fn wrong_type<E: de::Error>(&self, what: &str) -> E {
        reject(
            self.slot,
            Reject::BAD_DEVICE,
            format!(
                "device field `{}`: expected a string or an integer, found {what}",
                self.name
            ),
        )
    }

    fn name<E: de::Error>(&self, device: Box<str>) -> Result<Box<str>, E> {
        match check_device(&device) {
            Ok(()) => Ok(device),
            Err(why) => Err(reject(
                self.slot,
                Reject::BAD_DEVICE,
                format!("device field `{}`: the name {why}", self.name),
            )),
        }
    }
}

impl<'de> DeserializeSeed<'de> for DeviceSeed<'_> {
    type Value = Box<str>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Box<str>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for DeviceSeed<'_> {
    type Value = Box<str>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a device name (string or integer)")
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Box<str>, E> {
        Ok(v.to_string().into())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Box<str>, E> {
        Ok(v.to_string().into())
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Box<str>, E> {
        self.name(v.into())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Box<str>, E> {
        Err(self.wrong_type(&format!("the number {v:?}")))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Box<str>, E> {
        Err(self.wrong_type(&format!("{v}")))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Box<str>, E> {
        Err(self.wrong_type("null"))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<Box<str>, A::Error> {
        Err(self.wrong_type("an array"))
    }
    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<Box<str>, A::Error> {
        Err(self.wrong_type("an object"))
    }
}

/// The timestamp field's value: seconds or milliseconds since the epoch, or
/// an RFC 3339 string.
struct TimestampSeed<'a> {
    name: &'a str,
    slot: &'a Cell<Option<Reject>>,
}

impl TimestampSeed<'_> {
    fn bad<E: de::Error>(&self, what: &str) -> E {
        reject(
            self.slot,
            Reject::BAD_TIMESTAMP,
            format!(
                "timestamp field `{}`: {what} is not a time (expected seconds or \
                 milliseconds since 1970, or an RFC 3339 string with a time zone)",
                self.name
            ),
        )
    }

    fn in_range<E: de::Error>(&self, ms: Millis, shown: &dyn fmt::Display) -> Result<Millis, E> {
        if (0..=MAX_TS).contains(&ms) {
            Ok(ms)
        } else {
            Err(self.bad(&format!(
                "{shown} (out of range: before 1970 or after 9999)"
            )))
        }
    }
}

impl<'de> DeserializeSeed<'de> for TimestampSeed<'_> {
    type Value = Millis;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Millis, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for TimestampSeed<'_> {
    type Value = Millis;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a timestamp")
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Millis, E> {
        let ms = if v >= MILLIS_THRESHOLD {
            v
        } else {
            v.saturating_mul(1_000)
        };
        self.in_range(ms, &v)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Millis, E> {
        self.visit_i64(i64::try_from(v).unwrap_or(i64::MAX))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Millis, E> {
        let ms = if v >= MILLIS_THRESHOLD as f64 {
            v
        } else {
            v * 1_000.0
        };
        if !(0.0..=MAX_TS as f64).contains(&ms) {
            return Err(self.bad(&format!("{v:?} (out of range: before 1970 or after 9999)")));
        }
        Ok(ms.round() as Millis)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Millis, E> {
        match super::rfc3339::parse(v) {
            Some(ms) => self.in_range(ms, &format_args!("{v:?}")),
            None => Err(self.bad(&format!("{v:?}"))),
        }
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Millis, E> {
        Err(self.bad(&format!("{v}")))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Millis, E> {
        Err(self.bad("null"))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<Millis, A::Error> {
        Err(self.bad("an array"))
    }
    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<Millis, A::Error> {
        Err(self.bad("an object"))
    }
}

#[cfg(test)]
mod tests;
