//! One series' readings in one minute: the rollup and the points, and their
//! encoding as an index block (format version 2).
//!
//! ```text
//! block  := version:u8 header point{count}
//! header := count:varint numeric:varint min_seq:varint (max_seq-min_seq):varint
//!           first_ts:zvarint (last_ts-first_ts):zvarint
//!           (first_seq-min_seq):varint (last_seq-min_seq):varint
//!           [min:f64 max:f64 sum:f64]       (little-endian; only if numeric > 0)
//!           first:value last:value
//! point  := (seq - previous seq):varint (ts - previous ts):zvarint value
//! ```
//!
//! `value` is the record codec's encoding, so every value is kept as it was
//! stored: integers exactly (also above 2^53), floats in their narrowest
//! exact form (a small integral reading takes 2–3 bytes), booleans, strings.
//! `min`, `max` and `sum` are over the numeric points only (numbers and
//! booleans as 0/1; not strings, NaN or infinities) and are `f64`: an integer
//! above 2^53 is rounded in them, never in the points, `first` or `last`.
//! Points are in sequence order (the order they were stored); `first`/`last`
//! are the values with the earliest/latest timestamp (ties: the lower/higher
//! sequence number).

use crate::store::codec::{self, DecodeError, Reader};
use ferry_core::record::{Millis, Value};

/// The index's block format version (1: numbers only, as `f64`).
pub const BLOCK_VERSION: u8 = 2;

/// One indexed reading.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub seq: u64,
    pub ts: Millis,
    pub value: Value,
}

/// Count, min, max, sum, first and last of some points.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollup {
    pub count: u64,
    /// How many of the points are numeric (what `min`, `max`, `sum` are of).
    pub numeric: u64,
    /// +inf, -inf and 0 when no point is numeric.
    pub min: f64,
    pub max: f64,
    pub sum: f64,
    pub first_ts: Millis,
    pub first_seq: u64,
    pub first: Value,
    pub last_ts: Millis,
    pub last_seq: u64,
    pub last: Value,
}

/// The number a value counts as in `min`, `max` and `sum`, if any.
pub fn numeric(v: &Value) -> Option<f64> {
    match v {
        Value::Int(i) => Some(*i as f64),
        Value::Float(x) if x.is_finite() => Some(*x),
        Value::Bool(b) => Some(f64::from(u8::from(*b))),
        _ => None,
    }
}

impl Rollup {
    pub fn of(p: &Point) -> Rollup {
        let x = numeric(&p.value);
        Rollup {
            count: 1,
            numeric: u64::from(x.is_some()),
            min: x.unwrap_or(f64::INFINITY),
            max: x.unwrap_or(f64::NEG_INFINITY),
            sum: x.unwrap_or(0.0),
            first_ts: p.ts,
            first_seq: p.seq,
            first: p.value.clone(),
            last_ts: p.ts,
            last_seq: p.seq,
            last: p.value.clone(),
        }
    }

    /// Adds another rollup (of other points) to this one.
    pub fn merge(&mut self, o: &Rollup) {
        self.count += o.count;
        self.numeric += o.numeric;
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
        self.sum += o.sum;
        if (o.first_ts, o.first_seq) < (self.first_ts, self.first_seq) {
            (self.first_ts, self.first_seq) = (o.first_ts, o.first_seq);
            self.first = o.first.clone();
        }
        if (o.last_ts, o.last_seq) > (self.last_ts, self.last_seq) {
            (self.last_ts, self.last_seq) = (o.last_ts, o.last_seq);
            self.last = o.last.clone();
        }
    }

    /// Adds one point.
    pub fn add(&mut self, p: &Point) {
        self.count += 1;
        if let Some(x) = numeric(&p.value) {
            self.numeric += 1;
            self.min = self.min.min(x);
            self.max = self.max.max(x);
            self.sum += x;
        }
        if (p.ts, p.seq) < (self.first_ts, self.first_seq) {
            (self.first_ts, self.first_seq) = (p.ts, p.seq);
            self.first = p.value.clone();
        }
        if (p.ts, p.seq) > (self.last_ts, self.last_seq) {
            (self.last_ts, self.last_seq) = (p.ts, p.seq);
            self.last = p.value.clone();
        }
    }

    /// `min`, `max`, `mean`, `sum` when some point is numeric.
    pub fn stats(&self) -> Option<(f64, f64, f64, f64)> {
        (self.numeric > 0).then(|| (self.min, self.max, self.sum / self.numeric as f64, self.sum))
    }
}

/// The points of one series in one bucket, in sequence order, with what a
/// reader needs without decoding them.
#[derive(Debug, Clone, PartialEq)]
pub struct Block {
    pub min_seq: u64,
    pub max_seq: u64,
    pub rollup: Rollup,
    pub points: Vec<Point>,
}

/// What is known from a block's header alone.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    pub min_seq: u64,
    pub max_seq: u64,
    pub rollup: Rollup,
}

impl Header {
    /// Appends the header's encoding (no version byte).
    pub fn encode(&self, buf: &mut Vec<u8>) {
        let r = &self.rollup;
        codec::put_varint(buf, r.count);
        codec::put_varint(buf, r.numeric);
        codec::put_varint(buf, self.min_seq);
        codec::put_varint(buf, self.max_seq - self.min_seq);
        codec::put_zvarint(buf, r.first_ts);
        codec::put_zvarint(buf, r.last_ts.wrapping_sub(r.first_ts));
        codec::put_varint(buf, r.first_seq - self.min_seq);
        codec::put_varint(buf, r.last_seq - self.min_seq);
        if r.numeric > 0 {
            for x in [r.min, r.max, r.sum] {
                buf.extend_from_slice(&x.to_le_bytes());
            }
        }
        codec::put_value(buf, &r.first);
        codec::put_value(buf, &r.last);
    }

    /// Reads a header written by [`Header::encode`].
    pub fn read(r: &mut Reader<'_>) -> Result<Header, DecodeError> {
        let count = r.varint()?;
        let numeric = r.varint()?;
        let min_seq = r.varint()?;
        let max_seq = min_seq.saturating_add(r.varint()?);
        let first_ts = r.zvarint()?;
        let last_ts = first_ts.wrapping_add(r.zvarint()?);
        let first_seq = min_seq.saturating_add(r.varint()?);
        let last_seq = min_seq.saturating_add(r.varint()?);
        let mut f = [f64::INFINITY, f64::NEG_INFINITY, 0.0];
        if numeric > 0 {
            for x in &mut f {
                *x = f64::from_le_bytes(r.take(8)?.try_into().expect("8 bytes"));
            }
        }
        let first = r.value()?;
        let last = r.value()?;
        Ok(Header {
            min_seq,
            max_seq,
            rollup: Rollup {
                count,
                numeric,
                min: f[0],
                max: f[1],
                sum: f[2],
                first_ts,
                first_seq,
                first,
                last_ts,
                last_seq,
                last,
            },
        })
    }
}

impl Block {
    /// A block of `points` (sorted by seq, not empty).
    pub fn from_points(points: Vec<Point>) -> Option<Block> {
        let first = points.first()?;
        let mut rollup = Rollup::of(first);
        for p in &points[1..] {
            rollup.add(p);
        }
        Some(Block {
            min_seq: first.seq,
            max_seq: points.last().map_or(first.seq, |p| p.seq),
            rollup,
            points,
        })
    }

    pub fn header(&self) -> Header {
        Header {
            min_seq: self.min_seq,
            max_seq: self.max_seq,
            rollup: self.rollup.clone(),
        }
    }

    pub fn encode(&self, buf: &mut Vec<u8>) {
        buf.clear();
        buf.push(BLOCK_VERSION);
        self.header().encode(buf);
        let (mut seq, mut ts) = (self.min_seq, self.rollup.first_ts);
        for p in &self.points {
            codec::put_varint(buf, p.seq - seq);
            codec::put_zvarint(buf, p.ts.wrapping_sub(ts));
            codec::put_value(buf, &p.value);
            (seq, ts) = (p.seq, p.ts);
        }
    }

    /// Decodes the header only; the reader is left at the first point.
    fn read_header(r: &mut Reader<'_>) -> Result<(Header, usize), DecodeError> {
        match r.u8()? {
            BLOCK_VERSION => {}
            v => return Err(DecodeError::Version(v)),
        }
        let header = Header::read(r)?;
        let n = usize::try_from(header.rollup.count).map_err(|_| DecodeError::Varint)?;
        Ok((header, n))
    }

    pub fn decode_header(bytes: &[u8]) -> Result<Header, DecodeError> {
        Ok(Block::read_header(&mut Reader::new(bytes))?.0)
    }

    pub fn decode(bytes: &[u8]) -> Result<Block, DecodeError> {
        let mut r = Reader::new(bytes);
        let (h, n) = Block::read_header(&mut r)?;
        let mut points = Vec::with_capacity(n.min(1 << 16));
        let (mut seq, mut ts) = (h.min_seq, h.rollup.first_ts);
        for _ in 0..n {
            seq = seq.saturating_add(r.varint()?);
            ts = ts.wrapping_add(r.zvarint()?);
            let value = r.value()?;
            points.push(Point { seq, ts, value });
        }
        r.finish()?;
        Ok(Block {
            min_seq: h.min_seq,
            max_seq: h.max_seq,
            rollup: h.rollup,
            points,
        })
    }
}

/// The points of an open bucket, kept in memory as a block keeps them on
/// disk (deltas of seq and timestamp, each value in the record codec's
/// narrowest form): 4–6 bytes a numeric reading instead of the 40 of a
/// [`Point`], so that a busy minute (a thousand records a second of six
/// fields is 360,000 points) costs the daemon a few MiB, not a dozen.
/// Points are in sequence order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PointBuf {
    bytes: Vec<u8>,
    len: usize,
    last_seq: u64,
    last_ts: Millis,
}

impl PointBuf {
    /// Points sorted by seq.
    pub fn from_points(points: &[Point]) -> PointBuf {
        let mut buf = PointBuf::default();
        for p in points {
            buf.push(p);
        }
        buf
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends `p`, which comes after every point held (by seq); a point
    /// out of order is merged in its place (rare: a replay).
    pub fn push(&mut self, p: &Point) {
        if self.len > 0 && p.seq <= self.last_seq {
            let merged = union_by_seq(&self.to_vec(), std::slice::from_ref(p));
            *self = PointBuf::from_points(&merged);
            return;
        }
        codec::put_varint(&mut self.bytes, p.seq - self.last_seq);
        codec::put_zvarint(&mut self.bytes, p.ts.wrapping_sub(self.last_ts));
        codec::put_value(&mut self.bytes, &p.value);
        (self.last_seq, self.last_ts) = (p.seq, p.ts);
        self.len += 1;
    }

    /// The points, decoded.
    pub fn to_vec(&self) -> Vec<Point> {
        let mut out = Vec::with_capacity(self.len);
        let mut r = Reader::new(&self.bytes);
        let (mut seq, mut ts) = (0u64, 0 as Millis);
        for _ in 0..self.len {
            // Written by `push` from valid points: it always decodes.
            let (Ok(ds), Ok(dt), Ok(value)) = (r.varint(), r.zvarint(), r.value()) else {
                debug_assert!(false, "an in-memory point buffer does not decode");
                break;
            };
            seq += ds;
            ts = ts.wrapping_add(dt);
            out.push(Point { seq, ts, value });
        }
        out
    }

    /// Keeps the points `keep` says to.
    pub fn retain(&mut self, keep: impl Fn(&Point) -> bool) {
        let points: Vec<Point> = self.to_vec().into_iter().filter(|p| keep(p)).collect();
        if points.len() != self.len {
            *self = PointBuf::from_points(&points);
        }
    }

    /// Bytes held (for the memory gauge).
    pub fn heap_bytes(&self) -> usize {
        self.bytes.capacity()
    }
}

/// Merges two seq-sorted point lists, keeping one of each seq.
pub fn union_by_seq(a: &[Point], b: &[Point]) -> Vec<Point> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].seq.cmp(&b[j].seq) {
            std::cmp::Ordering::Less => {
                out.push(a[i].clone());
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push(b[j].clone());
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                out.push(a[i].clone());
                i += 1;
                j += 1;
            }
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_round_trip_and_stay_small() {
        let points: Vec<Point> = (0..60)
            .map(|i| Point {
                seq: 1000 + i * 100,
                ts: 1_764_000_000_000 + i as i64 * 1000,
                value: Value::Float((i % 7) as f64),
            })
            .collect();
        let block = Block::from_points(points).unwrap();
        let mut buf = Vec::new();
        block.encode(&mut buf);
        assert_eq!(Block::decode(&buf).unwrap(), block);
        assert_eq!(Block::decode_header(&buf).unwrap(), block.header());
        // 2 bytes of seq delta, 2 of ts delta, 2 of value per point.
        assert!(buf.len() < 60 * 6 + 64, "{} bytes", buf.len());
        for i in 0..buf.len() {
            assert!(Block::decode(&buf[..i]).is_err());
        }
    }

    #[test]
    fn every_kind_of_value_is_kept_exactly() {
        let big = (1i64 << 53) + 1;
        let p = |seq, value| Point {
            seq,
            ts: 1000 + seq as i64,
            value,
        };
        let points = vec![
            p(1, Value::Int(big)),
            p(2, Value::Str("running".into())),
            p(3, Value::Bool(true)),
            p(4, Value::Float(f64::NAN)),
            p(5, Value::Int(-big)),
        ];
        let block = Block::from_points(points.clone()).unwrap();
        let mut buf = Vec::new();
        block.encode(&mut buf);
        let back = Block::decode(&buf).unwrap();
        assert_eq!(back.points[0].value, Value::Int(big));
        assert_eq!(back.points[1].value, Value::Str("running".into()));
        assert!(matches!(back.points[3].value, Value::Float(x) if x.is_nan()));
        let r = &back.rollup;
        assert_eq!((r.count, r.numeric), (5, 3));
        assert_eq!((&r.first, &r.last), (&Value::Int(big), &Value::Int(-big)));
        // min/max/sum are f64: the integer is rounded there.
        assert_eq!((r.min, r.max), (-big as f64, big as f64));
        // Strings alone: count, first and last, no numbers.
        let s = Block::from_points(vec![
            p(1, Value::Str("a".into())),
            p(2, Value::Str("b".into())),
        ])
        .unwrap();
        s.encode(&mut buf);
        let h = Block::decode_header(&buf).unwrap();
        assert_eq!(h.rollup.stats(), None);
        assert_eq!((h.rollup.count, h.rollup.last), (2, Value::Str("b".into())));
    }

    #[test]
    fn first_and_last_go_by_timestamp() {
        let p = |seq, ts, value| Point {
            seq,
            ts,
            value: Value::Float(value),
        };
        let b = Block::from_points(vec![
            p(1, 50, 1.0),
            p(2, 10, 2.0),
            p(3, 90, 3.0),
            p(4, 90, 4.0),
        ])
        .unwrap();
        assert_eq!(
            (b.rollup.first, b.rollup.last),
            (Value::Float(2.0), Value::Float(4.0))
        );
        assert_eq!((b.rollup.min, b.rollup.max, b.rollup.sum), (1.0, 4.0, 10.0));
    }

    #[test]
    fn point_buffers_keep_every_point_exactly_in_a_few_bytes() {
        let values = [
            Value::Int(647),
            Value::Int(i64::MAX),
            Value::Int(-3),
            Value::Float(21.5),
            Value::Float(f64::NAN),
            Value::Float(-0.0),
            Value::Bool(true),
            Value::Str("open".into()),
        ];
        let points: Vec<Point> = (0..800u64)
            .map(|i| Point {
                seq: 1_000_000 + 3 * i,
                ts: 1_764_000_000_000 + 1000 * i as i64,
                value: values[i as usize % values.len()].clone(),
            })
            .collect();
        let mut buf = PointBuf::default();
        for p in &points {
            buf.push(p);
        }
        assert_eq!(buf.len(), points.len());
        let back = buf.to_vec();
        assert_eq!(back.len(), points.len());
        for (a, b) in back.iter().zip(&points) {
            assert_eq!((a.seq, a.ts), (b.seq, b.ts));
            match (&a.value, &b.value) {
                (Value::Float(x), Value::Float(y)) => assert_eq!(x.to_bits(), y.to_bits()),
                (x, y) => assert_eq!(x, y),
            }
        }
        // A point (e.g. replayed) before the last one lands in its place.
        let late = Point {
            seq: 1_000_001,
            ts: 1_764_000_000_500,
            value: Value::Int(1),
        };
        buf.push(&late);
        let back = buf.to_vec();
        assert_eq!(back.len(), points.len() + 1);
        assert_eq!(back[1], late);
        assert!(back.windows(2).all(|w| w[0].seq < w[1].seq));
        buf.retain(|p| p.seq >= 1_000_300);
        let seqs = |v: Vec<Point>| v.into_iter().map(|p| p.seq).collect::<Vec<_>>();
        let kept: Vec<Point> = back.into_iter().filter(|p| p.seq >= 1_000_300).collect();
        assert_eq!(seqs(buf.to_vec()), seqs(kept));
        // Far smaller than the points themselves.
        // (Half the values here are 8-byte numbers or strings.)
        assert!(
            buf.bytes.len() < 10 * buf.len(),
            "{} bytes",
            buf.bytes.len()
        );
    }
}
