//! The MQTT message decoder (topic template + payload) with a realistic
//! source config: device and time from payload fields, the topic's
//! `{device}` level as the fallback, tight size and field limits.
//!
//! Input: the payload; when it holds a NUL byte, the bytes before the first
//! one are the topic instead of `sensors/pump-1/telemetry`.
//!
//! Beyond "no panic", checked against serde_json's own reading of the payload:
//! what serde_json refuses is refused; what is accepted carries exactly the
//! object's fields (last value wins) minus the device and time fields, within
//! the limits, with a usable device and an in-range time.
#![no_main]

use std::collections::BTreeMap;

use ferry_core::record::Value;
use ferry_sources::mqtt::{MessageDecoder, PayloadOptions, Reject, TopicTemplate};
use libfuzzer_sys::fuzz_target;

const MAX_PAYLOAD: usize = 4096;
const MAX_FIELDS: usize = 16;
/// 9999-12-31T23:59:59.999Z.
const MAX_TS: i64 = 253_402_300_799_999;

fn decoder() -> MessageDecoder {
    MessageDecoder::new(
        "local".into(),
        ["sensors/{device}/telemetry", "site/+/{device}/#", "bulk/#"]
            .iter()
            .map(|t| TopicTemplate::parse(t).expect("template"))
            .collect(),
        PayloadOptions {
            device_field: Some("device_id".into()),
            timestamp_field: Some("ts".into()),
            max_payload: MAX_PAYLOAD,
            max_fields: MAX_FIELDS,
        },
    )
}

/// serde_json's reading of a field value, as the decoder should type it.
fn expected(v: &serde_json::Value) -> Option<Value> {
    Some(match v {
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => Value::Int(i),
            (None, Some(u), _) => Value::Float(u as f64),
            (_, _, Some(f)) => Value::Float(f),
            _ => return None,
        },
        serde_json::Value::String(s) => Value::Str(s.as_str().into()),
        _ => return None,
    })
}

fn usable_device(d: &str) -> bool {
    !d.is_empty()
        && d.len() <= 256
        && !d
            .chars()
            .any(|c| c.is_control() || matches!(c, '/' | '+' | '#'))
}

fuzz_target!(|data: &[u8]| {
    let (topic, payload) = match data.iter().position(|&b| b == 0) {
        Some(i) => match std::str::from_utf8(&data[..i]) {
            Ok(t) => (t, &data[i + 1..]),
            Err(_) => return,
        },
        None => ("sensors/pump-1/telemetry", data),
    };
    let decoder = decoder();
    let result = decoder.try_decode(topic, payload);
    // The reference: serde_json's own parse of the whole payload.
    let reference = serde_json::from_slice::<serde_json::Value>(payload);
    let record = match result {
        Ok(record) => record,
        Err(reject) => {
            assert!(Reject::KINDS.contains(&reject.kind), "{reject:?}");
            assert!(!reject.reason.is_empty());
            if reference.is_err() {
                return;
            }
            // serde_json accepted it: the refusal must be one of the checks
            // on top of JSON syntax.
            assert_ne!(reject.kind, Reject::NOT_JSON, "{reject:?}");
            return;
        }
    };
    assert!(payload.len() <= MAX_PAYLOAD);
    let Ok(serde_json::Value::Object(object)) = reference else {
        panic!("accepted what serde_json reads as {reference:?}: {record:?}");
    };
    assert!(!record.fields.is_empty() && record.fields.len() <= MAX_FIELDS);
    assert!(usable_device(&record.device), "{:?}", record.device);
    assert!((0..=MAX_TS).contains(&record.ts) || !object.contains_key("ts"));
    // serde_json's map keeps the last of duplicate keys, as the decoder does.
    let want: BTreeMap<&str, Value> = object
        .iter()
        .filter(|(k, _)| *k != "device_id" && *k != "ts")
        .map(|(k, v)| (k.as_str(), expected(v).expect("accepted a nested value")))
        .collect();
    let got: BTreeMap<&str, Value> = record
        .fields
        .iter()
        .map(|(k, v)| (&**k, v.clone()))
        .collect();
    assert_eq!(got.len(), record.fields.len(), "a field name twice");
    assert_eq!(got, want);
    if let Some(v) = object.get("device_id") {
        let d = match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        assert_eq!(&*record.device, d);
    }
});
