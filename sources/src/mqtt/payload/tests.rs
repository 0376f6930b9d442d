use super::*;

const EXAMPLE: &str =
    r#"{"client_id": 1, "device_id": 7, "voltage": 647, "temperature": 110, "sequence": 400}"#;

fn opts() -> PayloadOptions {
    PayloadOptions::default()
}

fn with_device(field: &str) -> PayloadOptions {
    PayloadOptions {
        device_field: Some(field.into()),
        ..opts()
    }
}

fn with_ts(field: &str) -> PayloadOptions {
    PayloadOptions {
        timestamp_field: Some(field.into()),
        ..opts()
    }
}

fn fields(pairs: &[(&str, Value)]) -> Vec<(Box<str>, Value)> {
    pairs
        .iter()
        .map(|(n, v)| (Box::from(*n), v.clone()))
        .collect()
}

fn rejected(payload: &str, opts: &PayloadOptions) -> Reject {
    decode_payload(payload.as_bytes(), opts).expect_err(payload)
}

#[test]
fn example_payload_keeps_every_field_in_order() {
    let d = decode_payload(EXAMPLE.as_bytes(), &opts()).unwrap();
    assert_eq!(d.device, None);
    assert_eq!(d.ts, None);
    assert_eq!(
        d.fields,
        fields(&[
            ("client_id", Value::Int(1)),
            ("device_id", Value::Int(7)),
            ("voltage", Value::Int(647)),
            ("temperature", Value::Int(110)),
            ("sequence", Value::Int(400)),
        ])
    );
}

#[test]
fn example_payload_with_device_field() {
    let d = decode_payload(EXAMPLE.as_bytes(), &with_device("device_id")).unwrap();
    assert_eq!(d.device.as_deref(), Some("7"));
    assert_eq!(
        d.fields,
        fields(&[
            ("client_id", Value::Int(1)),
            ("voltage", Value::Int(647)),
            ("temperature", Value::Int(110)),
            ("sequence", Value::Int(400)),
        ])
    );
}

#[test]
fn value_types() {
    let p = r#"{"on": true, "off": false, "neg": -5, "max": 9223372036854775807,
        "big": 9223372036854775808, "f": 1.5, "one": 1.0, "exp": 1e3,
        "s": "hi \"there\" \u00e9", "empty": ""}"#;
    let d = decode_payload(p.as_bytes(), &opts()).unwrap();
    assert_eq!(
        d.fields,
        fields(&[
            ("on", Value::Bool(true)),
            ("off", Value::Bool(false)),
            ("neg", Value::Int(-5)),
            ("max", Value::Int(i64::MAX)),
            ("big", Value::Float(9_223_372_036_854_775_808.0)),
            ("f", Value::Float(1.5)),
            ("one", Value::Float(1.0)),
            ("exp", Value::Float(1000.0)),
            ("s", Value::Str("hi \"there\" é".into())),
            ("empty", Value::Str("".into())),
        ])
    );
}

#[test]
fn escaped_field_names_are_decoded() {
    let d = decode_payload(br#"{"temp\u00e9rature": 1}"#, &opts()).unwrap();
    assert_eq!(d.fields, fields(&[("température", Value::Int(1))]));
}

#[test]
fn duplicate_field_last_value_wins_at_first_position() {
    let d = decode_payload(br#"{"a": 1, "b": 2, "a": 3}"#, &opts()).unwrap();
    assert_eq!(
        d.fields,
        fields(&[("a", Value::Int(3)), ("b", Value::Int(2))])
    );
    let d = decode_payload(br#"{"id": "x", "v": 1, "id": "y"}"#, &with_device("id")).unwrap();
    assert_eq!(d.device.as_deref(), Some("y"));
    // Duplicates do not count twice towards max_fields.
    let o = PayloadOptions {
        max_fields: 1,
        ..opts()
    };
    assert!(decode_payload(br#"{"a": 1, "a": 2}"#, &o).is_ok());
}

#[test]
fn oversize_is_rejected_before_parsing() {
    let o = PayloadOptions {
        max_payload: 10,
        ..opts()
    };
    assert!(decode_payload(br#"{"a": 12345}"#[..10].as_ref(), &o).is_err()); // cut JSON, not oversize
    assert_eq!(
        decode_payload(br#"{"a":12345}"#, &o).unwrap_err(),
        Reject::new(
            Reject::OVERSIZE,
            "payload is 11 bytes, over the limit of 10 bytes"
        )
    );
    // Exactly at the limit is fine.
    assert!(decode_payload(br#"{"a":1234}"#, &o).is_ok());
    // Not even JSON: still oversize, not not_json.
    assert_eq!(
        decode_payload(&[0xff; 11], &o).unwrap_err().kind,
        Reject::OVERSIZE
    );
}

#[test]
fn not_json() {
    assert_eq!(
        rejected("", &opts()),
        Reject::new(Reject::NOT_JSON, "payload is empty")
    );
    assert_eq!(
        rejected("hello", &opts()),
        Reject::new(
            Reject::NOT_JSON,
            "not JSON: expected value at line 1 column 1"
        )
    );
    assert_eq!(
        rejected(r#"{"a": 1"#, &opts()),
        Reject::new(
            Reject::NOT_JSON,
            "not JSON: EOF while parsing an object at line 1 column 7"
        )
    );
    assert_eq!(
        rejected(r#"{"a": 1} x"#, &opts()),
        Reject::new(
            Reject::NOT_JSON,
            "not JSON: trailing characters at line 1 column 10"
        )
    );
    let bad_utf8 = decode_payload(b"{\"a\": \"\xff\"}", &opts()).unwrap_err();
    assert_eq!(bad_utf8.kind, Reject::NOT_JSON);
}

#[test]
fn not_object() {
    for (payload, what) in [
        ("[1, 2]", "a JSON array"),
        ("\"x\"", "a JSON string"),
        ("42", "a JSON number"),
        ("-1.5", "a JSON number"),
        ("true", "a JSON boolean"),
        ("null", "JSON null"),
    ] {
        assert_eq!(
            rejected(payload, &opts()),
            Reject::new(
                Reject::NOT_OBJECT,
                format!("payload is {what}, not an object of fields")
            ),
            "{payload}"
        );
    }
}

#[test]
fn unsupported_types_name_the_field() {
    assert_eq!(
        rejected(r#"{"voltage": 1, "temperature": {"c": 20}}"#, &opts()),
        Reject::new(
            Reject::UNSUPPORTED_TYPE,
            "field `temperature`: nested object is not supported"
        )
    );
    assert_eq!(
        rejected(r#"{"samples": [1, 2]}"#, &opts()),
        Reject::new(
            Reject::UNSUPPORTED_TYPE,
            "field `samples`: an array is not supported"
        )
    );
    assert_eq!(
        rejected(r#"{"a": 1, "b": null}"#, &opts()),
        Reject::new(Reject::UNSUPPORTED_TYPE, "field `b`: null is not supported")
    );
}

#[test]
fn too_many_fields() {
    let o = PayloadOptions {
        max_fields: 2,
        ..opts()
    };
    assert!(decode_payload(br#"{"a": 1, "b": 2}"#, &o).is_ok());
    assert_eq!(
        rejected(r#"{"a": 1, "b": 2, "c": 3}"#, &o),
        Reject::new(
            Reject::TOO_MANY_FIELDS,
            "payload has more than 2 fields (field `c` is one too many)"
        )
    );
    // The device and timestamp fields do not count.
    let o = PayloadOptions {
        max_fields: 1,
        device_field: Some("id".into()),
        timestamp_field: Some("ts".into()),
        ..opts()
    };
    assert!(decode_payload(br#"{"id": "x", "ts": 1700000000, "a": 1}"#, &o).is_ok());
}

#[test]
fn no_fields() {
    assert_eq!(
        rejected("{}", &opts()),
        Reject::new(Reject::NO_FIELDS, "payload has no fields")
    );
    let o = PayloadOptions {
        device_field: Some("id".into()),
        timestamp_field: Some("ts".into()),
        ..opts()
    };
    assert_eq!(
        rejected(r#"{"id": "x", "ts": 1700000000}"#, &o),
        Reject::new(
            Reject::NO_FIELDS,
            "payload has no fields besides `id` and `ts`"
        )
    );
}

#[test]
fn device_field() {
    let o = with_device("dev");
    let d = decode_payload(br#"{"dev": "pump-1", "v": 1}"#, &o).unwrap();
    assert_eq!(d.device.as_deref(), Some("pump-1"));
    assert_eq!(d.fields, fields(&[("v", Value::Int(1))]));
    let d = decode_payload(br#"{"v": 1, "dev": -3}"#, &o).unwrap();
    assert_eq!(d.device.as_deref(), Some("-3"));
    // Missing: no device from the payload (the decoder falls back to the topic).
    assert_eq!(decode_payload(br#"{"v": 1}"#, &o).unwrap().device, None);

    for (payload, reason) in [
        (
            r#"{"dev": 7.5, "v": 1}"#,
            "device field `dev`: expected a string or an integer, found the number 7.5",
        ),
        (
            r#"{"dev": null, "v": 1}"#,
            "device field `dev`: expected a string or an integer, found null",
        ),
        (
            r#"{"dev": true, "v": 1}"#,
            "device field `dev`: expected a string or an integer, found true",
        ),
        (
            r#"{"dev": {"a": 1}, "v": 1}"#,
            "device field `dev`: expected a string or an integer, found an object",
        ),
        (
            r#"{"dev": "", "v": 1}"#,
            "device field `dev`: the name is empty",
        ),
        (
            r#"{"dev": "a/b", "v": 1}"#,
            "device field `dev`: the name \"a/b\" contains '/'",
        ),
        (
            r#"{"dev": "a\nb", "v": 1}"#,
            "device field `dev`: the name \"a\\nb\" contains '\\n'",
        ),
    ] {
        assert_eq!(
            rejected(payload, &o),
            Reject::new(Reject::BAD_DEVICE, reason),
            "{payload}"
        );
    }
    let long = format!(r#"{{"dev": "{}", "v": 1}}"#, "x".repeat(257));
    assert_eq!(
        rejected(&long, &o).reason,
        "device field `dev`: the name is 257 bytes long, over the limit of 256"
    );
}

#[test]
fn timestamp_field_numbers() {
    let o = with_ts("ts");
    let ts = |p: &str| decode_payload(p.as_bytes(), &o).unwrap().ts;
    // Seconds below 1e11, milliseconds from 1e11 on.
    assert_eq!(ts(r#"{"ts": 1714564800, "v": 1}"#), Some(1_714_564_800_000));
    assert_eq!(
        ts(r#"{"ts": 1714564800123, "v": 1}"#),
        Some(1_714_564_800_123)
    );
    assert_eq!(
        ts(r#"{"ts": 1714564800.5, "v": 1}"#),
        Some(1_714_564_800_500)
    );
    assert_eq!(
        ts(r#"{"ts": 99999999999, "v": 1}"#),
        Some(99_999_999_999_000)
    );
    assert_eq!(ts(r#"{"ts": 100000000000, "v": 1}"#), Some(100_000_000_000));
    assert_eq!(ts(r#"{"ts": 0, "v": 1}"#), Some(0));
    assert_eq!(
        ts(r#"{"ts": "2024-05-01T14:00:00.250+02:00", "v": 1}"#),
        Some(1_714_564_800_250)
    );
    // Absent: the decoder uses the time of receipt.
    assert_eq!(ts(r#"{"v": 1}"#), None);
    // Taken out of the fields.
    assert_eq!(
        decode_payload(br#"{"ts": 1, "v": 1}"#, &o).unwrap().fields,
        fields(&[("v", Value::Int(1))])
    );
}

#[test]
fn bad_timestamps() {
    let o = with_ts("ts");
    let tail = "is not a time (expected seconds or milliseconds since 1970, or an RFC 3339 \
                string with a time zone)";
    for (value, what) in [
        ("\"yesterday\"", "\"yesterday\"".to_owned()),
        (
            "\"2024-05-01T12:00:00\"",
            "\"2024-05-01T12:00:00\"".to_owned(),
        ),
        ("true", "true".to_owned()),
        ("null", "null".to_owned()),
        ("[1]", "an array".to_owned()),
        (
            "-5",
            "-5 (out of range: before 1970 or after 9999)".to_owned(),
        ),
        (
            "1e300",
            "1e300 (out of range: before 1970 or after 9999)".to_owned(),
        ),
        (
            "18446744073709551615",
            "9223372036854775807 (out of range: before 1970 or after 9999)".to_owned(),
        ),
    ] {
        let payload = format!(r#"{{"ts": {value}, "v": 1}}"#);
        assert_eq!(
            rejected(&payload, &o),
            Reject::new(
                Reject::BAD_TIMESTAMP,
                format!("timestamp field `ts`: {what} {tail}")
            ),
            "{payload}"
        );
    }
}

/// Whatever the bytes, decoding returns (and never panics), and a rejection
/// always carries one of the documented kinds.
#[test]
fn arbitrary_bytes_never_panic() {
    let mut rng = fastrand::Rng::with_seed(0x5eed_f00d);
    let o = PayloadOptions {
        device_field: Some("device_id".into()),
        timestamp_field: Some("ts".into()),
        max_payload: 512,
        max_fields: 4,
    };
    let seeds: [&[u8]; 4] = [
        EXAMPLE.as_bytes(),
        br#"{"ts": "2024-05-01T14:00:00.250+02:00", "device_id": "a", "x": [1, {"y": null}]}"#,
        br#"{"a": true, "b": -1.5e-7, "c": "\u00e9\ud83d\ude00", "d": 18446744073709551616}"#,
        b"[{}, [], \"\", 0]",
    ];
    let alphabet = b"{}[]\":,-+.0123456789eEtruefalsnl \\u\xff\x00";
    let check = |bytes: &[u8]| match decode_payload(bytes, &o) {
        Ok(d) => {
            assert!(!d.fields.is_empty());
            assert!(d.fields.len() <= o.max_fields);
        }
        Err(r) => assert!(Reject::KINDS.contains(&r.kind), "{r}"),
    };
    for _ in 0..20_000 {
        // Random bytes drawn mostly from JSON's own alphabet.
        let len = rng.usize(0..64);
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                if rng.u8(..) < 200 {
                    alphabet[rng.usize(..alphabet.len())]
                } else {
                    rng.u8(..)
                }
            })
            .collect();
        check(&bytes);
        // Mutations of valid payloads: flip, insert, delete, truncate.
        let mut m = seeds[rng.usize(..seeds.len())].to_vec();
        for _ in 0..rng.usize(1..4) {
            let i = rng.usize(..m.len().max(1));
            match rng.u8(0..4) {
                0 if !m.is_empty() => m[i] = rng.u8(..),
                1 => m.insert(i.min(m.len()), alphabet[rng.usize(..alphabet.len())]),
                2 if !m.is_empty() => {
                    m.remove(i);
                }
                _ => m.truncate(i),
            }
        }
        check(&m);
    }
}
