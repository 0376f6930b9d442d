//! From registers and bits to typed values: pure functions, used by the
//! pollers and by `ferry modbus probe`.
//!
//! A value that cannot be represented honestly (a NaN or infinite float, a
//! `u64` beyond the signed 64-bit range the record holds, text that is not
//! UTF-8) is a [`ValueError`], never a substitute value.

use std::fmt;

use thiserror::Error;

use ferry_core::record::Value;

use super::types::{DataType, Order, Table};

/// One register map entry, resolved: where it is and how it is decoded.
#[derive(Clone, Debug, PartialEq)]
pub struct Field {
    /// The field name in the record.
    pub name: Box<str>,
    pub table: Table,
    /// Protocol (0-based) address of the first register or bit.
    pub address: u16,
    /// How many registers (or bits) it takes.
    pub count: u16,
    pub kind: DataType,
    pub order: Order,
    /// For a `bool` in a register table: the bit (0 = least significant).
    pub bit: Option<u8>,
    /// `value = raw × scale + offset` (as a float) when either is set.
    pub scale: Option<f64>,
    pub offset: Option<f64>,
    /// The unit label, for people (it is not stored in records).
    pub unit: Option<Box<str>>,
}

impl Field {
    /// The address just past the field.
    pub fn end(&self) -> u32 {
        u32::from(self.address) + u32::from(self.count)
    }

    /// Decodes the field from exactly its registers.
    pub fn decode_words(&self, words: &[u16]) -> Result<Value, ValueError> {
        if words.len() != usize::from(self.count) {
            return Err(ValueError::Length {
                expected: self.count,
                got: words.len(),
            });
        }
        let raw = match (self.kind, self.bit) {
            (DataType::Bool, Some(bit)) => {
                Raw::Bool(ordered_u16(words[0], self.order) >> bit & 1 == 1)
            }
            (kind, _) => raw(kind, self.order, words)?,
        };
        finish(raw, self.scale, self.offset)
    }

    /// Decodes a field of a bit table.
    pub fn decode_bit(&self, bit: bool) -> Value {
        Value::Bool(bit)
    }
}

/// Why a value was not stored.
#[derive(Clone, Debug, Error, PartialEq)]
pub enum ValueError {
    #[error("value is {0} (not a number)")]
    NotFinite(f64),
    #[error("value {0} is beyond the signed 64-bit range of a record; set `scale` to store it as a float")]
    TooLarge(u64),
    #[error("text is not UTF-8")]
    NotText,
    #[error("expected {expected} registers, got {got}")]
    Length { expected: u16, got: usize },
}

/// A decoded value before scaling.
#[derive(Clone, Debug, PartialEq)]
pub enum Raw {
    Bool(bool),
    Unsigned(u64),
    Signed(i64),
    Float(f64),
    Text(String),
}

impl fmt::Display for Raw {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Raw::Bool(b) => write!(f, "{b}"),
            Raw::Unsigned(u) => write!(f, "{u}"),
            Raw::Signed(i) => write!(f, "{i}"),
            Raw::Float(x) => write!(f, "{x}"),
            Raw::Text(s) => write!(f, "{s:?}"),
        }
    }
}

/// One register as read, in the given order (only the byte swap applies to
/// a single register).
pub fn ordered_u16(word: u16, order: Order) -> u16 {
    if order.byte_swap() {
        word.swap_bytes()
    } else {
        word
    }
}

/// The bytes of the value held by `words` (at most 4), most significant
/// first, undoing `order`.
pub fn value_bytes(words: &[u16], order: Order) -> ([u8; 8], usize) {
    let mut out = [0u8; 8];
    let n = words.len().min(4);
    for i in 0..n {
        let word = if order.word_swap() {
            words[n - 1 - i]
        } else {
            words[i]
        };
        let [hi, lo] = ordered_u16(word, order).to_be_bytes();
        out[2 * i] = hi;
        out[2 * i + 1] = lo;
    }
    (out, 2 * n)
}

/// Decodes `words` as `kind` in `order`, without scaling. `words` holds the
/// type's width (or, for a string, its length).
pub fn raw(kind: DataType, order: Order, words: &[u16]) -> Result<Raw, ValueError> {
    if let Some(width) = kind.width() {
        if words.len() != usize::from(width) {
            return Err(ValueError::Length {
                expected: width,
                got: words.len(),
            });
        }
    }
    let (b, _) = value_bytes(words, order);
    Ok(match kind {
        DataType::Bool => Raw::Bool(words[0] != 0),
        DataType::U16 => Raw::Unsigned(u64::from(u16::from_be_bytes([b[0], b[1]]))),
        DataType::I16 => Raw::Signed(i64::from(i16::from_be_bytes([b[0], b[1]]))),
        DataType::U32 => Raw::Unsigned(u64::from(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))),
        DataType::I32 => Raw::Signed(i64::from(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))),
        DataType::F32 => Raw::Float(f64::from(f32::from_be_bytes([b[0], b[1], b[2], b[3]]))),
        DataType::U64 => Raw::Unsigned(u64::from_be_bytes(b)),
        DataType::I64 => Raw::Signed(i64::from_be_bytes(b)),
        DataType::F64 => Raw::Float(f64::from_be_bytes(b)),
        DataType::String => Raw::Text(text(words, order)?),
    })
}

/// Two characters per register, the first in the high byte (swapped for the
/// byte-swapping orders); trailing NULs and spaces removed.
fn text(words: &[u16], order: Order) -> Result<String, ValueError> {
    let bytes: Vec<u8> = words
        .iter()
        .flat_map(|w| ordered_u16(*w, order).to_be_bytes())
        .collect();
    let s = String::from_utf8(bytes).map_err(|_| ValueError::NotText)?;
    Ok(s.trim_end_matches(['\0', ' ']).to_owned())
}

/// Applies scale and offset and checks the result fits a record's value.
pub fn finish(raw: Raw, scale: Option<f64>, offset: Option<f64>) -> Result<Value, ValueError> {
    let scaled = scale.is_some() || offset.is_some();
    let float = |x: f64| {
        let x = x * scale.unwrap_or(1.0) + offset.unwrap_or(0.0);
        if x.is_finite() {
            Ok(Value::Float(x))
        } else {
            Err(ValueError::NotFinite(x))
        }
    };
    match raw {
        Raw::Bool(b) => Ok(Value::Bool(b)),
        Raw::Text(s) => Ok(Value::Str(s.into())),
        Raw::Float(x) if !x.is_finite() => Err(ValueError::NotFinite(x)),
        Raw::Float(x) => float(x),
        Raw::Unsigned(u) if scaled => float(u as f64),
        Raw::Signed(i) if scaled => float(i as f64),
        Raw::Unsigned(u) => i64::try_from(u)
            .map(Value::Int)
            .map_err(|_| ValueError::TooLarge(u)),
        Raw::Signed(i) => Ok(Value::Int(i)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The registers of the big-endian bytes `b`, written in `order`.
    fn encode(b: &[u8], order: Order) -> Vec<u16> {
        let mut words: Vec<u16> = b
            .chunks(2)
            .map(|c| {
                let w = u16::from_be_bytes([c[0], c[1]]);
                if order.byte_swap() {
                    w.swap_bytes()
                } else {
                    w
                }
            })
            .collect();
        if order.word_swap() {
            words.reverse();
        }
        words
    }

    #[test]
    fn f32_in_each_order() {
        // 21.5 = 0x41AC0000.
        assert_eq!(
            encode(&21.5f32.to_be_bytes(), Order::ABCD),
            [0x41AC, 0x0000]
        );
        assert_eq!(
            raw(DataType::F32, Order::ABCD, &[0x41AC, 0]),
            Ok(Raw::Float(21.5))
        );
        assert_eq!(
            raw(DataType::F32, Order::CDAB, &[0, 0x41AC]),
            Ok(Raw::Float(21.5))
        );
        assert_eq!(
            raw(DataType::F32, Order::BADC, &[0xAC41, 0]),
            Ok(Raw::Float(21.5))
        );
        assert_eq!(
            raw(DataType::F32, Order::DCBA, &[0, 0xAC41]),
            Ok(Raw::Float(21.5))
        );
    }

    #[test]
    fn every_type_round_trips_in_every_order() {
        for order in Order::ALL {
            let w = encode(&0xBEEF_u16.to_be_bytes(), order);
            assert_eq!(raw(DataType::U16, order, &w), Ok(Raw::Unsigned(0xBEEF)));
            let w = encode(&(-1234i16).to_be_bytes(), order);
            assert_eq!(raw(DataType::I16, order, &w), Ok(Raw::Signed(-1234)));
            let w = encode(&3_000_000_000u32.to_be_bytes(), order);
            assert_eq!(
                raw(DataType::U32, order, &w),
                Ok(Raw::Unsigned(3_000_000_000))
            );
            let w = encode(&(-70_000i32).to_be_bytes(), order);
            assert_eq!(raw(DataType::I32, order, &w), Ok(Raw::Signed(-70_000)));
            let w = encode(&0x0102_0304_0506_0708u64.to_be_bytes(), order);
            assert_eq!(
                raw(DataType::U64, order, &w),
                Ok(Raw::Unsigned(0x0102_0304_0506_0708))
            );
            let w = encode(&(-5_000_000_000i64).to_be_bytes(), order);
            assert_eq!(
                raw(DataType::I64, order, &w),
                Ok(Raw::Signed(-5_000_000_000))
            );
            let w = encode(&(-0.1f64).to_be_bytes(), order);
            assert_eq!(raw(DataType::F64, order, &w), Ok(Raw::Float(-0.1)));
        }
    }

    #[test]
    fn strings_trim_and_swap_characters() {
        let words = [
            u16::from_be_bytes(*b"SD"),
            u16::from_be_bytes(*b"M6"),
            0x3330,
            0,
        ];
        assert_eq!(
            raw(DataType::String, Order::ABCD, &words),
            Ok(Raw::Text("SDM630".into()))
        );
        let swapped: Vec<u16> = words.iter().map(|w| w.swap_bytes()).collect();
        assert_eq!(
            raw(DataType::String, Order::BADC, &swapped),
            Ok(Raw::Text("SDM630".into()))
        );
        assert_eq!(
            raw(DataType::String, Order::ABCD, &[0xFFFE]),
            Err(ValueError::NotText)
        );
    }

    #[test]
    fn scale_offset_and_limits() {
        assert_eq!(
            finish(Raw::Unsigned(215), Some(0.1), None),
            Ok(Value::Float(21.5))
        );
        assert_eq!(
            finish(Raw::Signed(-40), None, Some(273.15)),
            Ok(Value::Float(233.14999999999998))
        );
        assert_eq!(finish(Raw::Unsigned(7), None, None), Ok(Value::Int(7)));
        assert_eq!(
            finish(Raw::Unsigned(u64::MAX), None, None),
            Err(ValueError::TooLarge(u64::MAX))
        );
        assert!(matches!(
            finish(Raw::Float(f64::NAN), None, None),
            Err(ValueError::NotFinite(_))
        ));
        assert!(matches!(
            finish(Raw::Float(f64::MAX), Some(10.0), None),
            Err(ValueError::NotFinite(_))
        ));
    }

    #[test]
    fn bits_of_a_register() {
        let field = Field {
            name: "alarm".into(),
            table: Table::Holding,
            address: 0,
            count: 1,
            kind: DataType::Bool,
            order: Order::ABCD,
            bit: Some(9),
            scale: None,
            offset: None,
            unit: None,
        };
        assert_eq!(field.decode_words(&[0x0200]), Ok(Value::Bool(true)));
        assert_eq!(field.decode_words(&[0x0100]), Ok(Value::Bool(false)));
        assert_eq!(
            field.decode_words(&[1, 2]),
            Err(ValueError::Length {
                expected: 1,
                got: 2
            })
        );
    }
}
