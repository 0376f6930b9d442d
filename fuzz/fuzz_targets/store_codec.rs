//! The store's record and dead-letter codec (`gateway/src/store/codec.rs`).
//!
//! 1. Arbitrary bytes as a stored record and as a stored dead letter: an
//!    error or a value, never a panic; what decodes re-encodes to bytes that
//!    decode to the same value (bit-exact floats), and re-encoding that
//!    gives the same bytes again (the encoder is canonical).
//! 2. A record built from the input: encode → decode gives it back exactly.
#![no_main]

use std::sync::Arc;

use arbitrary::{Arbitrary, Unstructured};
use ferry_core::record::{DeadLetter, Record, Value};
use ferry_gateway::store::codec;
use libfuzzer_sys::fuzz_target;

/// The interned names a stored value may refer to (an id is its index).
const NAMES: [&str; 8] = [
    "local",
    "modbus",
    "7",
    "pump-1",
    "voltage",
    "temperature",
    "status",
    "",
];

fn names() -> Vec<Arc<str>> {
    NAMES.iter().map(|n| Arc::from(*n)).collect()
}

fn id(name: &str) -> u32 {
    NAMES
        .iter()
        .position(|n| *n == name)
        .expect("an interned name") as u32
}

fn encode_record(r: &Record) -> Vec<u8> {
    let mut buf = Vec::new();
    codec::put_record_header(&mut buf, r.ts, id(&r.source), id(&r.device), r.fields.len());
    for (name, value) in &r.fields {
        codec::put_field(&mut buf, id(name), value);
    }
    buf
}

fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        // A NaN stored as f32 keeps being a NaN; its payload bits may change.
        (Value::Float(x), Value::Float(y)) => {
            x.to_bits() == y.to_bits() || x.is_nan() && y.is_nan()
        }
        _ => a == b,
    }
}

fn same_record(a: &Record, b: &Record) -> bool {
    a.ts == b.ts
        && a.source == b.source
        && a.device == b.device
        && a.fields.len() == b.fields.len()
        && a.fields
            .iter()
            .zip(&b.fields)
            .all(|((n, x), (m, y))| n == m && same_value(x, y))
}

fn decode_bytes(data: &[u8], names: &[Arc<str>]) {
    if let Ok(record) = codec::decode_record(data, names) {
        let bytes = encode_record(&record);
        let back = codec::decode_record(&bytes, names).expect("a re-encoded record decodes");
        assert!(same_record(&record, &back), "{record:?} != {back:?}");
        assert_eq!(encode_record(&back), bytes, "not canonical: {back:?}");
        assert_eq!(codec::record_ts(data), Ok(record.ts));
    }
    if let Ok(dead) = codec::decode_dead_letter(data, names) {
        let mut bytes = Vec::new();
        codec::put_dead_letter(&mut bytes, &dead, id(&dead.source));
        let back = codec::decode_dead_letter(&bytes, names).expect("a re-encoded dead letter");
        assert_eq!(back, dead);
    }
}

#[derive(Arbitrary, Debug)]
enum ArbValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    /// A float from its bits: NaNs with payloads, subnormals, -0.0.
    Bits(u64),
    /// An f32-exact float.
    Single(f32),
    /// An integral float.
    Whole(i32),
    Str(String),
}

impl From<ArbValue> for Value {
    fn from(v: ArbValue) -> Value {
        match v {
            ArbValue::Bool(b) => Value::Bool(b),
            ArbValue::Int(i) => Value::Int(i),
            ArbValue::Float(x) => Value::Float(x),
            ArbValue::Bits(b) => Value::Float(f64::from_bits(b)),
            ArbValue::Single(x) => Value::Float(x.into()),
            ArbValue::Whole(i) => Value::Float(i.into()),
            ArbValue::Str(s) => Value::Str(s.into()),
        }
    }
}

fn round_trip(u: &mut Unstructured, names: &[Arc<str>]) -> arbitrary::Result<()> {
    let pick = |u: &mut Unstructured| -> arbitrary::Result<&'static str> {
        Ok(NAMES[usize::from(u.arbitrary::<u8>()?) % NAMES.len()])
    };
    let mut record = Record {
        ts: u.arbitrary()?,
        source: Arc::from(pick(u)?),
        device: pick(u)?.into(),
        fields: Vec::new(),
    };
    for _ in 0..u.arbitrary_len::<(u8, ArbValue)>()?.min(64) {
        let name = pick(u)?;
        record
            .fields
            .push((name.into(), u.arbitrary::<ArbValue>()?.into()));
    }
    let bytes = encode_record(&record);
    let back = codec::decode_record(&bytes, names).expect("an encoded record decodes");
    assert!(same_record(&record, &back), "{record:?} != {back:?}");
    for (_, v) in &record.fields {
        // Each value in its narrowest form: never wider than tag + f64.
        let mut one = Vec::new();
        codec::put_value(&mut one, v);
        let limit = match v {
            Value::Str(s) => 1 + 10 + s.len(),
            Value::Int(_) => 11,
            _ => 9,
        };
        assert!(one.len() <= limit, "{v:?}: {} bytes", one.len());
    }

    let dead = DeadLetter {
        ts: u.arbitrary()?,
        source: Arc::from(pick(u)?),
        origin: u.arbitrary::<String>()?.into(),
        kind: "not_json",
        reason: u.arbitrary::<String>()?.into(),
        payload: u.arbitrary()?,
        payload_len: u.arbitrary()?,
    };
    let mut bytes = Vec::new();
    codec::put_dead_letter(&mut bytes, &dead, id(&dead.source));
    assert_eq!(codec::decode_dead_letter(&bytes, names), Ok(dead));
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let names = names();
    decode_bytes(data, &names);
    let _ = round_trip(&mut Unstructured::new(data), &names);
});
