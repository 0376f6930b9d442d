//! The uplink batch encoders (`json` and `columnar`) as the uplink drives
//! them: records in sequence order, a batch closed when the next record does
//! not fit, a record alone over the limit skipped.
//!
//! Beyond "no panic": every payload is at most `max_batch_bytes` (IoT Core
//! refuses larger publishes), is JSON, and decodes back to exactly the
//! records pushed into it (non-finite floats as `null`, reserved field names
//! with a leading `_`), in order; only a record too large on its own is left
//! out.
#![no_main]

use std::sync::Arc;

use arbitrary::{Arbitrary, Unstructured};
use ferry_core::record::{Record, Value};
use ferry_gateway::store::StoredRecord;
use ferry_gateway::uplink::batch::{encoder, Encoding};
use libfuzzer_sys::fuzz_target;
use serde_json::Value as Json;

const RESERVED: [&str; 5] = ["gateway", "source", "device", "ts", "seq"];

#[derive(Arbitrary, Debug)]
enum ArbValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

struct Input {
    columnar: bool,
    max_bytes: usize,
    gateway: String,
    records: Vec<StoredRecord>,
}

/// A name as a device, source or field may have one: non-empty, no control
/// characters (any other character, quotes and backslashes included).
/// Sometimes one character repeated: long names, or names that JSON escapes
/// (`"`, `\\`) at twice their length.
fn name(u: &mut Unstructured) -> arbitrary::Result<String> {
    let s: String = u.arbitrary()?;
    let s: String = s.chars().filter(|c| !c.is_control()).take(40).collect();
    let s = match s.chars().next() {
        None => "x".into(),
        Some(c) if u.ratio(1, 8)? => c.to_string().repeat(u.int_in_range(2..=64)?),
        Some(_) => s,
    };
    Ok(s)
}

fn input(u: &mut Unstructured) -> arbitrary::Result<Input> {
    let columnar = u.arbitrary()?;
    // From the config's minimum (1 KiB) to IoT Core's limit (128 KiB).
    let max_bytes = u.int_in_range(1024..=128 * 1024)?;
    // A gateway id: 1 to 128 bytes, no whitespace, control characters, / + # { }.
    let gateway: String = u
        .arbitrary::<String>()?
        .chars()
        .filter(|c| {
            !(c.is_whitespace() || c.is_control() || matches!(c, '/' | '+' | '#' | '{' | '}'))
        })
        .collect();
    let mut gateway = if gateway.is_empty() {
        "gw".into()
    } else {
        gateway
    };
    if u.ratio(1, 4)? {
        gateway = gateway.repeat(128);
    }
    while gateway.len() > 128 {
        gateway.pop();
    }
    let sources: Vec<Arc<str>> = (0..u.int_in_range(1..=3)?)
        .map(|_| name(u).map(Arc::from))
        .collect::<Result<_, _>>()?;
    let mut seq: u64 = u.arbitrary::<u32>()?.into();
    let mut ts: i64 = u.arbitrary()?;
    let mut records = Vec::new();
    while records.len() < 400 && !u.is_empty() {
        seq += u64::from(u.int_in_range(1u8..=3)?);
        ts = ts.wrapping_add(u.arbitrary::<i16>()?.into());
        let mut fields: Vec<(Box<str>, Value)> = Vec::new();
        for _ in 0..u.int_in_range(1u8..=6)? {
            let n: Box<str> = if u.ratio(1, 4)? {
                RESERVED[usize::from(u.arbitrary::<u8>()?) % 5].into()
            } else {
                name(u)?.into()
            };
            let v = match u.arbitrary()? {
                ArbValue::Bool(b) => Value::Bool(b),
                ArbValue::Int(i) => Value::Int(i),
                ArbValue::Float(x) => Value::Float(x),
                ArbValue::Str(s) => Value::Str(s.into()),
            };
            // Decoded records never name a field twice.
            if !fields.iter().any(|(m, _)| *m == n) {
                fields.push((n, v));
            }
        }
        records.push(StoredRecord {
            seq,
            record: Record {
                ts,
                source: sources[usize::from(u.arbitrary::<u8>()?) % sources.len()].clone(),
                device: name(u)?.into(),
                fields,
            },
        });
    }
    Ok(Input {
        columnar,
        max_bytes,
        gateway,
        records,
    })
}

/// What a field value must read back as.
fn json_of(v: &Value) -> Json {
    match v {
        Value::Bool(b) => Json::Bool(*b),
        Value::Int(i) => Json::from(*i),
        Value::Float(x) if x.is_finite() => Json::from(*x),
        Value::Float(_) => Json::Null,
        Value::Str(s) => Json::from(&**s),
    }
}

fn sent_name(n: &str) -> String {
    if RESERVED.contains(&n) {
        format!("_{n}")
    } else {
        n.to_owned()
    }
}

/// The records a `json` payload carries, as flat objects.
fn check_json(payload: &Json, gateway: &str, records: &[StoredRecord]) {
    let items = payload.as_array().expect("an array");
    assert_eq!(items.len(), records.len());
    for (item, r) in items.iter().zip(records) {
        let o = item.as_object().expect("an object");
        assert_eq!(o["gateway"], gateway);
        assert_eq!(o["source"], &*r.record.source);
        assert_eq!(o["device"], &*r.record.device);
        assert_eq!(o["ts"], r.record.ts);
        assert_eq!(o["seq"], r.seq);
        let sent: Vec<String> = r.record.fields.iter().map(|(n, _)| sent_name(n)).collect();
        let distinct = sent
            .iter()
            .all(|n| sent.iter().filter(|m| *m == n).count() == 1);
        if distinct {
            assert_eq!(o.len(), 5 + r.record.fields.len(), "{o:?}");
        }
        for ((_, v), n) in r.record.fields.iter().zip(&sent) {
            if distinct {
                assert_eq!(o[n], json_of(v), "field {n}");
            }
        }
    }
}

/// The records a `columnar` payload carries, column by column.
fn check_columnar(payload: &Json, gateway: &str, records: &[StoredRecord]) {
    let o = payload.as_object().expect("an object");
    assert_eq!(o["gateway"], gateway);
    let column = |key: &str| -> &Vec<Json> { o[key].as_array().expect(key) };
    let (seqs, tss) = (column("seq"), column("ts"));
    assert_eq!(seqs.len(), records.len());
    assert_eq!(tss.len(), records.len());
    let (mut seq, mut ts) = (0u64, 0i64);
    let devices = column("devices");
    let device = column("device");
    let sources: Vec<Json> = match &o["source"] {
        Json::String(s) => vec![Json::from(s.as_str()); records.len()],
        Json::Array(idx) => idx
            .iter()
            .map(|i| column("sources")[i.as_u64().unwrap() as usize].clone())
            .collect(),
        other => panic!("source: {other:?}"),
    };
    let fields = o["fields"].as_object().expect("fields");
    for (i, r) in records.iter().enumerate() {
        seq = seq.wrapping_add(seqs[i].as_u64().expect("a seq delta"));
        ts = ts.wrapping_add(tss[i].as_i64().expect("a ts delta"));
        assert_eq!((seq, ts), (r.seq, r.record.ts), "record {i}");
        assert_eq!(sources[i], &*r.record.source);
        let d = device[i].as_u64().expect("a device index") as usize;
        assert_eq!(devices[d], &*r.record.device);
        for (name, col) in fields {
            let col = col.as_array().expect("a column");
            assert_eq!(col.len(), records.len(), "column {name}");
            let want = r
                .record
                .fields
                .iter()
                .find(|(n, _)| **n == **name)
                .map_or(Json::Null, |(_, v)| json_of(v));
            assert_eq!(col[i], want, "record {i} field {name}");
        }
        for (n, _) in &r.record.fields {
            assert!(fields.contains_key(&**n), "field {n} has no column");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(input) = input(&mut Unstructured::new(data)) else {
        return;
    };
    let kind = if input.columnar {
        Encoding::Columnar
    } else {
        Encoding::Json
    };
    let mut e = encoder(kind, &input.gateway, input.max_bytes);
    let mut held: Vec<StoredRecord> = Vec::new();
    let flush = |payload: Vec<u8>, held: &mut Vec<StoredRecord>| {
        assert!(
            payload.len() <= input.max_bytes,
            "{kind:?} payload of {} bytes over the limit of {}",
            payload.len(),
            input.max_bytes
        );
        let json: Json = serde_json::from_slice(&payload).expect("a payload is JSON");
        match kind {
            Encoding::Json => check_json(&json, &input.gateway, held),
            Encoding::Columnar => check_columnar(&json, &input.gateway, held),
        }
        held.clear();
    };
    for r in &input.records {
        if e.push(r) {
            held.push(r.clone());
            continue;
        }
        if !e.is_empty() {
            assert_eq!(e.len(), held.len());
            flush(e.finish(), &mut held);
        }
        if e.push(r) {
            held.push(r.clone());
        }
        // Otherwise it is too large on its own: skipped, as the uplink does.
    }
    if !e.is_empty() {
        flush(e.finish(), &mut held);
    }
});
