//! Modbus value decoding: a register map entry (any table, type, count,
//! order, bit, scale, offset) goes through the config check; an entry the
//! check accepts is resolved and decodes registers as the poller does, and
//! `raw` decodes them in every type and order as `ferry modbus probe` does.
//!
//! Beyond "no panic", the decoded value is checked against an independent
//! reading of the registers (big-endian bytes `A B C D` put back in order,
//! then read as the type), scaled floats are finite, and an unscaled `u64`
//! beyond `i64` is refused, never wrapped.
#![no_main]

use arbitrary::Arbitrary;
use ferry_core::record::Value;
use ferry_core::report::{problem_lines, KeyPath};
use ferry_sources::modbus::{raw, DataType, Order, Raw, RegisterConfig, Table, ValueError};
use libfuzzer_sys::fuzz_target;

const TABLES: [Table; 4] = Table::ALL;
const TYPES: [DataType; 10] = [
    DataType::Bool,
    DataType::U16,
    DataType::I16,
    DataType::U32,
    DataType::I32,
    DataType::U64,
    DataType::I64,
    DataType::F32,
    DataType::F64,
    DataType::String,
];

#[derive(Arbitrary, Debug)]
struct Input {
    table: u8,
    address: u16,
    kind: Option<u8>,
    count: Option<u16>,
    order: Option<u8>,
    device_order: u8,
    bit: Option<u8>,
    scale: Option<f64>,
    offset: Option<f64>,
    words: Vec<u16>,
}

/// The value's big-endian bytes, read back from registers written in `order`.
fn bytes_of(words: &[u16], order: Order) -> Vec<u8> {
    let mut w: Vec<u16> = words.to_vec();
    if matches!(order, Order::CDAB | Order::DCBA) {
        w.reverse();
    }
    w.iter()
        .flat_map(|x| {
            let [a, b] = x.to_be_bytes();
            if matches!(order, Order::BADC | Order::DCBA) {
                [b, a]
            } else {
                [a, b]
            }
        })
        .collect()
}

/// An independent reading of `words` as `kind` (numbers only).
fn reference(kind: DataType, order: Order, words: &[u16]) -> Option<Raw> {
    let b = bytes_of(words, order);
    Some(match kind {
        DataType::U16 => Raw::Unsigned(u16::from_be_bytes(b[..2].try_into().ok()?).into()),
        DataType::I16 => Raw::Signed(i16::from_be_bytes(b[..2].try_into().ok()?).into()),
        DataType::U32 => Raw::Unsigned(u32::from_be_bytes(b[..4].try_into().ok()?).into()),
        DataType::I32 => Raw::Signed(i32::from_be_bytes(b[..4].try_into().ok()?).into()),
        DataType::F32 => Raw::Float(f32::from_be_bytes(b[..4].try_into().ok()?).into()),
        DataType::U64 => Raw::Unsigned(u64::from_be_bytes(b[..8].try_into().ok()?)),
        DataType::I64 => Raw::Signed(i64::from_be_bytes(b[..8].try_into().ok()?)),
        DataType::F64 => Raw::Float(f64::from_be_bytes(b[..8].try_into().ok()?)),
        DataType::Bool | DataType::String => return None,
    })
}

fn same_raw(a: &Raw, b: &Raw) -> bool {
    match (a, b) {
        (Raw::Float(x), Raw::Float(y)) => x.to_bits() == y.to_bits(),
        _ => a == b,
    }
}

/// Every type in every order on the same registers, as the probe shows them.
fn probe_all(words: &[u16]) {
    for order in Order::ALL {
        for kind in TYPES {
            let r = raw(kind, order, words);
            match (kind.width(), &r) {
                (Some(w), Err(ValueError::Length { expected, got })) => {
                    assert_eq!((*expected, *got), (w, words.len()));
                    continue;
                }
                (Some(w), _) => assert_eq!(usize::from(w), words.len(), "{kind} {r:?}"),
                (None, _) => {}
            }
            let r = match r {
                Ok(r) => r,
                Err(ValueError::NotText) => {
                    assert_eq!(kind, DataType::String);
                    assert!(String::from_utf8(bytes_of_chars(words, order)).is_err());
                    continue;
                }
                Err(e) => panic!("{kind} {order}: {e:?}"),
            };
            if let Some(want) = reference(kind, order, words) {
                assert!(
                    same_raw(&r, &want),
                    "{kind} {order} {words:04x?}: {r:?} != {want:?}"
                );
            }
            if let Raw::Text(s) = &r {
                assert!(s.len() <= 2 * words.len());
                assert!(!s.ends_with(['\0', ' ']), "{s:?}");
            }
        }
    }
}

/// A string's bytes: two characters per register, in register order.
fn bytes_of_chars(words: &[u16], order: Order) -> Vec<u8> {
    words
        .iter()
        .flat_map(|w| {
            let [a, b] = w.to_be_bytes();
            if matches!(order, Order::BADC | Order::DCBA) {
                [b, a]
            } else {
                [a, b]
            }
        })
        .collect()
}

fuzz_target!(|input: Input| {
    let pick = |i: u8| Order::ALL[usize::from(i) % 4];
    let entry = RegisterConfig {
        name: "value".into(),
        table: TABLES[usize::from(input.table) % 4],
        address: input.address,
        kind: input.kind.map(|k| TYPES[usize::from(k) % TYPES.len()]),
        count: input.count,
        order: input.order.map(pick),
        bit: input.bit,
        scale: input.scale,
        offset: input.offset,
        unit: None,
    };
    let words = &input.words[..input.words.len().min(130)];
    probe_all(words);

    let at = KeyPath::root("registers").index(0);
    let problems = problem_lines(|_, report| entry.check(&at, report));
    for p in &problems {
        assert!(p.starts_with("registers[0]."), "{p}");
    }
    if !problems.is_empty() {
        return;
    }
    let field = entry.field(pick(input.device_order));
    assert!(field.count >= 1 && field.end() <= 65_536, "{field:?}");
    if field.table.is_bits() {
        assert_eq!(field.kind, DataType::Bool);
        return;
    }
    let result = field.decode_words(words);
    if words.len() != usize::from(field.count) {
        assert!(
            matches!(result, Err(ValueError::Length { .. })),
            "{result:?}"
        );
        return;
    }
    let scaled = field.scale.is_some() || field.offset.is_some();
    match (field.kind, &result) {
        (DataType::Bool, Ok(Value::Bool(b))) => {
            let word = bytes_of(&words[..1], field.order);
            let word = u16::from_be_bytes([word[0], word[1]]);
            let want = match field.bit {
                Some(bit) => word >> bit & 1 == 1,
                None => word != 0,
            };
            assert_eq!(*b, want, "{field:?} {words:04x?}");
        }
        (DataType::String, Ok(Value::Str(_))) | (DataType::String, Err(ValueError::NotText)) => {}
        (_, Ok(Value::Float(x))) => {
            assert!(x.is_finite(), "{x}");
            assert!(scaled || matches!(field.kind, DataType::F32 | DataType::F64));
        }
        (_, Ok(Value::Int(i))) => {
            assert!(!scaled);
            let want = reference(field.kind, field.order, words).expect("a number");
            match want {
                Raw::Unsigned(u) => assert_eq!(u64::try_from(*i).ok(), Some(u)),
                Raw::Signed(s) => assert_eq!(*i, s),
                other => panic!("an integer from {other:?}"),
            }
        }
        (_, Err(ValueError::NotFinite(_))) => {
            assert!(field.kind.width().is_some() && field.kind != DataType::Bool);
        }
        (DataType::U64, Err(ValueError::TooLarge(u))) => {
            assert!(!scaled && *u > i64::MAX as u64);
        }
        (kind, other) => panic!("{kind}: {other:?} from {field:?} {words:04x?}"),
    }
});
