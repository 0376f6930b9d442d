use std::sync::Arc;

use ferry_core::record::{Record, Value};

use super::*;

fn rec(seq: u64, device: &str, ts: i64, fields: Vec<(&str, Value)>) -> StoredRecord {
    StoredRecord {
        seq,
        record: Record {
            ts,
            source: Arc::from("local"),
            device: device.into(),
            fields: fields.into_iter().map(|(n, v)| (n.into(), v)).collect(),
        },
    }
}

fn seed(seq: u64) -> StoredRecord {
    rec(
        seq,
        &format!("{}", seq % 10),
        1_764_000_000_000 + seq as i64 * 10,
        vec![
            ("client_id", Value::Int(1)),
            ("voltage", Value::Int(600 + (seq % 50) as i64)),
            ("temperature", Value::Int(100 + (seq % 20) as i64)),
            ("sequence", Value::Int(seq as i64)),
        ],
    )
}

#[test]
fn json_records_are_flat_and_exact() {
    let mut e = JsonEncoder::new("pi-7", 128 * 1024);
    assert!(e.push(&rec(
        42,
        "7",
        1000,
        vec![
            ("voltage", Value::Int(647)),
            ("t", Value::Float(21.5)),
            ("ok", Value::Bool(true)),
            ("s", Value::Str("a\"b".into())),
            ("ts", Value::Float(f64::NAN)),
        ],
    )));
    assert!(e.push(&rec(43, "8", 1001, vec![("x", Value::Float(110.0))])));
    let payload = String::from_utf8(e.finish()).unwrap();
    assert_eq!(
        payload,
        r#"[{"gateway":"pi-7","source":"local","device":"7","ts":1000,"seq":42,"voltage":647,"t":21.5,"ok":true,"s":"a\"b","_ts":null},{"gateway":"pi-7","source":"local","device":"8","ts":1001,"seq":43,"x":110.0}]"#
    );
    assert!(e.is_empty());
}

#[test]
fn columnar_batches_are_exact_and_compact() {
    let mut e = ColumnarEncoder::new("pi-7", 128 * 1024);
    assert!(e.push(&rec(10, "7", 1000, vec![("v", Value::Int(1))])));
    assert!(e.push(&rec(11, "8", 1500, vec![("w", Value::Bool(false))])));
    assert!(e.push(&rec(
        13,
        "7",
        1400,
        vec![("v", Value::Float(2.5)), ("w", Value::Str("x".into()))]
    )));
    let payload = String::from_utf8(e.finish()).unwrap();
    assert_eq!(
        payload,
        r#"{"gateway":"pi-7","seq":[10,1,2],"ts":[1000,500,-100],"source":"local","devices":["7","8"],"device":[0,1,0],"fields":{"v":[1,null,2.5],"w":[null,false,"x"]}}"#
    );
    serde_json::from_str::<serde_json::Value>(&payload).unwrap();
}

#[test]
fn columnar_with_several_sources_indexes_them() {
    let mut e = ColumnarEncoder::new("g", 4096);
    let mut a = rec(1, "d", 0, vec![("v", Value::Int(1))]);
    e.push(&a);
    a.seq = 2;
    a.record.source = Arc::from("plc");
    e.push(&a);
    let payload = String::from_utf8(e.finish()).unwrap();
    assert!(
        payload.contains(r#""sources":["local","plc"],"source":[0,1]"#),
        "{payload}"
    );
}

/// Every payload stays within the limit, parses, and carries every record once.
#[test]
fn batches_respect_the_size_limit_and_lose_nothing() {
    for kind in [Encoding::Json, Encoding::Columnar] {
        for max in [1024usize, 5 * 1024, 128 * 1024] {
            let mut e = encoder(kind, "gw", max);
            let mut seen = Vec::new();
            let flush = |e: &mut Box<dyn Encoder + Send>, seen: &mut Vec<u64>| {
                let p = e.finish();
                assert!(p.len() <= max, "{kind:?} {} > {max}", p.len());
                let v: serde_json::Value = serde_json::from_slice(&p).unwrap();
                match kind {
                    Encoding::Json => {
                        for r in v.as_array().unwrap() {
                            seen.push(r["seq"].as_u64().unwrap());
                        }
                    }
                    Encoding::Columnar => {
                        let mut s = 0u64;
                        for (i, d) in v["seq"].as_array().unwrap().iter().enumerate() {
                            s = if i == 0 {
                                d.as_u64().unwrap()
                            } else {
                                s + d.as_u64().unwrap()
                            };
                            seen.push(s);
                        }
                        let n = seen.len();
                        let t = v["fields"]["temperature"].as_array().unwrap();
                        assert_eq!(t.len(), v["seq"].as_array().unwrap().len());
                        let _ = n;
                    }
                }
            };
            for seq in 1..=3000 {
                let r = seed(seq);
                if !e.push(&r) {
                    flush(&mut e, &mut seen);
                    assert!(e.push(&r));
                }
            }
            flush(&mut e, &mut seen);
            assert_eq!(seen, (1..=3000).collect::<Vec<_>>(), "{kind:?} {max}");
        }
    }
}

#[test]
fn a_record_larger_than_a_batch_is_refused_by_an_empty_encoder() {
    let big = rec(1, "d", 0, vec![("s", Value::Str("x".repeat(2000).into()))]);
    for kind in [Encoding::Json, Encoding::Columnar] {
        let mut e = encoder(kind, "g", 1024);
        assert!(!e.push(&big));
        assert!(e.is_empty());
    }
}

#[test]
fn columnar_fits_many_seed_records_in_a_billed_5kb_message() {
    let mut e = ColumnarEncoder::new("pi-line-7", 5 * 1024);
    let mut seq = 1;
    while e.push(&seed(seq)) {
        seq += 1;
    }
    let n = e.len();
    let p = e.finish();
    assert!(p.len() <= 5 * 1024);
    assert!(n >= 150, "only {n} records per 5 KB");
}

#[test]
fn topics_render_placeholders_safely() {
    let t = Topic::parse("dt/ferry/{gateway}/{source}/{device}", "pi-7").unwrap();
    assert!(!t.is_static());
    let r = rec(1, "a+b/c#", 0, vec![]);
    assert_eq!(t.render(&r.record), "dt/ferry/pi-7/local/a_b_c_");
    let t = Topic::parse("$aws/rules/ingest/ferry/{gateway}", "g").unwrap();
    assert!(t.is_static());
    assert_eq!(t.render(&r.record), "$aws/rules/ingest/ferry/g");
    assert_eq!(
        Topic::parse("a/{nope}", "g").unwrap_err(),
        "unknown placeholder `{nope}` in topic `a/{nope}`"
    );
}

/// Found by the `uplink_batch` fuzz target: a columnar batch went over its
/// limit when the gateway id was long (it was not counted) or names needed
/// JSON escapes (counted unescaped). The limit holds whatever the names.
#[test]
fn columnar_stays_within_the_limit_with_long_ids_and_escaped_names() {
    let gateways = ["g".repeat(128), "\"".repeat(128), "pi-7".into()];
    let names = [
        "\"".repeat(40),
        "\\".repeat(40),
        "\u{1}".repeat(40),
        "v".into(),
    ];
    for gateway in &gateways {
        for name in &names {
            for max in (1024..1400).step_by(7) {
                let mut e = ColumnarEncoder::new(gateway, max);
                let mut seq = 1;
                let mut pushed = 0;
                loop {
                    // A new device, source-like name and column on every record.
                    let r = StoredRecord {
                        seq,
                        record: Record {
                            ts: i64::MIN + seq as i64,
                            source: Arc::from(format!("{name}{}", seq % 3).as_str()),
                            device: format!("{name}{seq}").into(),
                            fields: vec![
                                (
                                    format!("{name}{seq}").into(),
                                    Value::Float(-2.2250738585072014e-308),
                                ),
                                ("s".into(), Value::Str(name.as_str().into())),
                            ],
                        },
                    };
                    if !e.push(&r) {
                        break;
                    }
                    pushed += 1;
                    seq += 1;
                }
                if name == "v" {
                    assert!(pushed > 3, "{pushed} records in {max} bytes");
                }
                let size = e.size();
                let p = e.finish();
                assert!(
                    p.len() <= max,
                    "{} > {max} ({gateway:?}, {name:?})",
                    p.len()
                );
                assert!(
                    p.len() <= size,
                    "size() {size} is not an upper bound of {}",
                    p.len()
                );
                serde_json::from_slice::<serde_json::Value>(&p).unwrap();
            }
        }
    }
}
