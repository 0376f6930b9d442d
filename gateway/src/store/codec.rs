//! The on-disk encoding of records and dead letters (format version 1).
//!
//! A stored record is a few dozen bytes, not a JSON document: device, source
//! and field names are interned in the `names` table and stored as small
//! integers, integers as zig-zag varints, and floats in the narrowest exact
//! form (a varint when integral, four bytes when `f32` holds them exactly).
//!
//! ```text
//! record      := version:u8 ts:zvarint source:varint device:varint nfields:varint field*
//! field       := name:varint tag:u8 value
//! value       := (tag 0 false | 1 true) | 2 zvarint | 3 f64-le | 4 f32-le
//!              | 5 zvarint (an integral float) | 6 len:varint utf8
//! dead letter := version:u8 ts:zvarint source:varint payload_len:varint
//!                kind:str origin:str reason:str payload:bytes
//! ```
//!
//! Decoding never panics on bad bytes: it returns [`DecodeError`].

use std::sync::Arc;

use ferry_core::record::{DeadLetter, Millis, Record, Value};
use thiserror::Error;

/// The format version written as the first byte of every stored value.
pub const FORMAT_VERSION: u8 = 1;

const TAG_FALSE: u8 = 0;
const TAG_TRUE: u8 = 1;
const TAG_INT: u8 = 2;
const TAG_F64: u8 = 3;
const TAG_F32: u8 = 4;
const TAG_FLOAT_INT: u8 = 5;
const TAG_STR: u8 = 6;

/// A stored value that cannot be decoded.
#[derive(Debug, Error, PartialEq, Eq, Clone)]
pub enum DecodeError {
    #[error("unsupported format version {0}")]
    Version(u8),
    #[error("truncated value")]
    Truncated,
    #[error("varint too long")]
    Varint,
    #[error("unknown value tag {0}")]
    Tag(u8),
    #[error("string is not UTF-8")]
    Utf8,
    #[error("unknown name id {0}")]
    Name(u32),
    #[error("{0} trailing bytes")]
    Trailing(usize),
    /// A timestamp outside the times the query index covers (only a
    /// damaged record has one: sources stamp 1970 to 9999).
    #[error("timestamp {0} ms is outside the indexed range (±253402300800000 ms)")]
    Timestamp(i64),
}

/// Appends the unsigned LEB128 encoding of `v`.
pub fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

/// Appends the zig-zag varint encoding of `v`.
pub fn put_zvarint(buf: &mut Vec<u8>, v: i64) {
    put_varint(buf, ((v << 1) ^ (v >> 63)) as u64);
}

fn put_bytes(buf: &mut Vec<u8>, b: &[u8]) {
    put_varint(buf, b.len() as u64);
    buf.extend_from_slice(b);
}

/// Appends one field value.
pub fn put_value(buf: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Bool(false) => buf.push(TAG_FALSE),
        Value::Bool(true) => buf.push(TAG_TRUE),
        Value::Int(i) => {
            buf.push(TAG_INT);
            put_zvarint(buf, *i);
        }
        Value::Float(x) => {
            let x = *x;
            // Integral and small enough that the varint is shorter than 4 bytes
            // and the round trip exact (-0.0 keeps its own encoding).
            if x.fract() == 0.0
                && x.abs() < (1u64 << 20) as f64
                && !(x == 0.0 && x.is_sign_negative())
            {
                buf.push(TAG_FLOAT_INT);
                put_zvarint(buf, x as i64);
            } else if (x as f32) as f64 == x || x.is_nan() {
                buf.push(TAG_F32);
                buf.extend_from_slice(&(x as f32).to_le_bytes());
            } else {
                buf.push(TAG_F64);
                buf.extend_from_slice(&x.to_le_bytes());
            }
        }
        Value::Str(s) => {
            buf.push(TAG_STR);
            put_bytes(buf, s.as_bytes());
        }
    }
}

/// A cursor over an encoded value.
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        let (&b, rest) = self.buf.split_first().ok_or(DecodeError::Truncated)?;
        self.buf = rest;
        Ok(b)
    }

    pub fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(DecodeError::Varint)
    }

    pub fn zvarint(&mut self) -> Result<i64, DecodeError> {
        let u = self.varint()?;
        Ok(((u >> 1) as i64) ^ -((u & 1) as i64))
    }

    pub fn id(&mut self) -> Result<u32, DecodeError> {
        u32::try_from(self.varint()?).map_err(|_| DecodeError::Varint)
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    pub fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = usize::try_from(self.varint()?).map_err(|_| DecodeError::Truncated)?;
        self.take(n)
    }

    pub fn str(&mut self) -> Result<&'a str, DecodeError> {
        std::str::from_utf8(self.bytes()?).map_err(|_| DecodeError::Utf8)
    }

    pub fn value(&mut self) -> Result<Value, DecodeError> {
        Ok(match self.u8()? {
            TAG_FALSE => Value::Bool(false),
            TAG_TRUE => Value::Bool(true),
            TAG_INT => Value::Int(self.zvarint()?),
            TAG_F64 => Value::Float(f64::from_le_bytes(self.take(8)?.try_into().unwrap())),
            TAG_F32 => Value::Float(f32::from_le_bytes(self.take(4)?.try_into().unwrap()) as f64),
            TAG_FLOAT_INT => Value::Float(self.zvarint()? as f64),
            TAG_STR => Value::Str(self.str()?.into()),
            t => return Err(DecodeError::Tag(t)),
        })
    }

    pub fn version(&mut self) -> Result<(), DecodeError> {
        match self.u8()? {
            FORMAT_VERSION => Ok(()),
            v => Err(DecodeError::Version(v)),
        }
    }

    pub fn finish(self) -> Result<(), DecodeError> {
        match self.buf.len() {
            0 => Ok(()),
            n => Err(DecodeError::Trailing(n)),
        }
    }
}

/// The fixed header of an encoded record.
pub fn put_record_header(buf: &mut Vec<u8>, ts: Millis, source: u32, device: u32, nfields: usize) {
    buf.push(FORMAT_VERSION);
    put_zvarint(buf, ts);
    put_varint(buf, source.into());
    put_varint(buf, device.into());
    put_varint(buf, nfields as u64);
}

/// The timestamp of an encoded record, without decoding the rest.
pub fn record_ts(bytes: &[u8]) -> Result<Millis, DecodeError> {
    let mut r = Reader::new(bytes);
    r.version()?;
    r.zvarint()
}

/// Appends one field: its interned name and its value.
pub fn put_field(buf: &mut Vec<u8>, name: u32, value: &Value) {
    put_varint(buf, name.into());
    put_value(buf, value);
}

/// Appends an encoded dead letter.
pub fn put_dead_letter(buf: &mut Vec<u8>, d: &ferry_core::record::DeadLetter, source: u32) {
    buf.push(FORMAT_VERSION);
    put_zvarint(buf, d.ts);
    put_varint(buf, source.into());
    put_varint(buf, d.payload_len.into());
    put_bytes(buf, d.kind.as_bytes());
    put_bytes(buf, d.origin.as_bytes());
    put_bytes(buf, d.reason.as_bytes());
    put_bytes(buf, &d.payload);
}

/// Decodes one stored record; `names` is the interned name table (an id is
/// its index).
pub fn decode_record(bytes: &[u8], names: &[Arc<str>]) -> Result<Record, DecodeError> {
    let name = |id: u32| names.get(id as usize).ok_or(DecodeError::Name(id));
    let mut r = Reader::new(bytes);
    r.version()?;
    let ts = r.zvarint()?;
    let source = name(r.id()?)?.clone();
    let device = Box::from(&**name(r.id()?)?);
    let n = r.varint()?;
    let mut fields = Vec::with_capacity(n.min(256) as usize);
    for _ in 0..n {
        let field = Box::from(&**name(r.id()?)?);
        fields.push((field, r.value()?));
    }
    r.finish()?;
    Ok(Record {
        ts,
        source,
        device,
        fields,
    })
}

/// Decodes one stored dead letter. Its kind reads back through
/// [`ferry_core::kind::intern`]: as stored if it is a well-formed label,
/// otherwise `other`.
pub fn decode_dead_letter(bytes: &[u8], names: &[Arc<str>]) -> Result<DeadLetter, DecodeError> {
    let mut r = Reader::new(bytes);
    r.version()?;
    let ts = r.zvarint()?;
    let id = r.id()?;
    let source = names
        .get(id as usize)
        .cloned()
        .ok_or(DecodeError::Name(id))?;
    let payload_len = r.varint()? as u32;
    let kind = ferry_core::kind::intern(r.str()?);
    let origin = r.str()?.into();
    let reason = r.str()?.into();
    let payload = r.bytes()?.to_vec();
    r.finish()?;
    Ok(DeadLetter {
        ts,
        source,
        origin,
        kind,
        reason,
        payload,
        payload_len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(v: Value) -> (Value, usize) {
        let mut buf = Vec::new();
        put_value(&mut buf, &v);
        let mut r = Reader::new(&buf);
        let back = r.value().unwrap();
        r.finish().unwrap();
        (back, buf.len())
    }

    #[test]
    fn values_round_trip_exactly_in_the_narrowest_form() {
        let cases = [
            (Value::Bool(true), 1),
            (Value::Bool(false), 1),
            (Value::Int(0), 2),
            (Value::Int(-1), 2),
            (Value::Int(647), 3),
            (Value::Int(i64::MIN), 11),
            (Value::Int(i64::MAX), 11),
            (Value::Float(110.0), 3),
            (Value::Float(21.5), 5),
            (Value::Float(0.1), 9),
            (Value::Float(-0.0), 5),
            (Value::Float(1e300), 9),
            (Value::Float(f64::INFINITY), 5),
            (Value::Str("ok".into()), 4),
        ];
        for (v, len) in cases {
            let (back, n) = round_trip(v.clone());
            assert_eq!(back, v);
            assert_eq!(n, len, "{v:?}");
            if let (Value::Float(a), Value::Float(b)) = (&v, &back) {
                assert_eq!(a.to_bits(), b.to_bits(), "sign and bits survive");
            }
        }
        let (back, _) = round_trip(Value::Float(f64::NAN));
        assert!(matches!(back, Value::Float(x) if x.is_nan()));
    }

    #[test]
    fn varints_cover_the_whole_range() {
        for v in [0i64, 1, -1, 63, -64, 64, 1 << 40, i64::MIN, i64::MAX] {
            let mut buf = Vec::new();
            put_zvarint(&mut buf, v);
            assert_eq!(Reader::new(&buf).zvarint().unwrap(), v);
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert_eq!(Reader::new(&[]).value(), Err(DecodeError::Truncated));
        assert_eq!(Reader::new(&[9]).value(), Err(DecodeError::Tag(9)));
        assert_eq!(
            Reader::new(&[TAG_F64, 1, 2]).value(),
            Err(DecodeError::Truncated)
        );
        assert_eq!(Reader::new(&[0xff; 11]).varint(), Err(DecodeError::Varint));
        assert_eq!(
            Reader::new(&[TAG_STR, 2, 0xff, 0xfe]).value(),
            Err(DecodeError::Utf8)
        );
        assert_eq!(
            Reader::new(&[TAG_STR, 200]).value(),
            Err(DecodeError::Truncated)
        );
        let mut r = Reader::new(&[2]);
        assert_eq!(r.version(), Err(DecodeError::Version(2)));
        // Every prefix and every single-byte corruption of a real value decodes or errors.
        let mut buf = Vec::new();
        put_value(&mut buf, &Value::Str("temperature".into()));
        for i in 0..buf.len() {
            let _ = Reader::new(&buf[..i]).value();
            for b in [0u8, 0x7f, 0x80, 0xff] {
                let mut c = buf.clone();
                c[i] = b;
                let _ = Reader::new(&c).value();
            }
        }
    }
}
