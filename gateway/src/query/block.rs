//! One series' readings in one time bucket: the rollup and the points, and
//! their encoding as an index block (format version 1).
//!
//! ```text
//! block  := version:u8 n:varint min_seq:varint (max_seq-min_seq):varint
//!           first_ts:zvarint (last_ts-first_ts):zvarint
//!           min:f64 max:f64 sum:f64 first:f64 last:f64      (little-endian)
//!           point{n}
//! point  := (seq - previous seq):varint (ts - previous ts):zvarint value
//! ```
//!
//! Points are in sequence order (the order they were stored); `value` uses the
//! record codec's narrowest float form, so a small integral reading takes
//! 2–3 bytes. `first`/`last` are the values with the earliest/latest
//! timestamp (ties: the lower/higher sequence number).

use crate::store::codec::{self, DecodeError, Reader};
use ferry_adapters::record::{Millis, Value};

/// The index's block format version.
pub const BLOCK_VERSION: u8 = 1;

/// One indexed reading.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub seq: u64,
    pub ts: Millis,
    pub value: f64,
}

/// Count, min, max, sum, first and last of some points.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rollup {
    pub count: u64,
    pub min: f64,
    pub max: f64,
    pub sum: f64,
    pub first_ts: Millis,
    pub first_seq: u64,
    pub first: f64,
    pub last_ts: Millis,
    pub last_seq: u64,
    pub last: f64,
}

impl Rollup {
    pub fn of(p: &Point) -> Rollup {
        Rollup {
            count: 1,
            min: p.value,
            max: p.value,
            sum: p.value,
            first_ts: p.ts,
            first_seq: p.seq,
            first: p.value,
            last_ts: p.ts,
            last_seq: p.seq,
            last: p.value,
        }
    }

    /// Adds another rollup (of other points) to this one.
    pub fn merge(&mut self, o: &Rollup) {
        self.count += o.count;
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
        self.sum += o.sum;
        if (o.first_ts, o.first_seq) < (self.first_ts, self.first_seq) {
            (self.first_ts, self.first_seq, self.first) = (o.first_ts, o.first_seq, o.first);
        }
        if (o.last_ts, o.last_seq) > (self.last_ts, self.last_seq) {
            (self.last_ts, self.last_seq, self.last) = (o.last_ts, o.last_seq, o.last);
        }
    }

    pub fn add(&mut self, p: &Point) {
        self.merge(&Rollup::of(p));
    }

    pub fn mean(&self) -> f64 {
        self.sum / self.count as f64
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
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Header {
    pub min_seq: u64,
    pub max_seq: u64,
    pub rollup: Rollup,
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
            rollup: self.rollup,
        }
    }

    pub fn encode(&self, buf: &mut Vec<u8>) {
        let r = &self.rollup;
        buf.clear();
        buf.push(BLOCK_VERSION);
        codec::put_varint(buf, r.count);
        codec::put_varint(buf, self.min_seq);
        codec::put_varint(buf, self.max_seq - self.min_seq);
        codec::put_zvarint(buf, r.first_ts);
        codec::put_zvarint(buf, r.last_ts.wrapping_sub(r.first_ts));
        codec::put_varint(buf, r.first_seq - self.min_seq);
        codec::put_varint(buf, r.last_seq - self.min_seq);
        for x in [r.min, r.max, r.sum, r.first, r.last] {
            buf.extend_from_slice(&x.to_le_bytes());
        }
        let (mut seq, mut ts) = (self.min_seq, r.first_ts);
        for p in &self.points {
            codec::put_varint(buf, p.seq - seq);
            codec::put_zvarint(buf, p.ts.wrapping_sub(ts));
            codec::put_value(buf, &Value::Float(p.value));
            (seq, ts) = (p.seq, p.ts);
        }
    }

    /// Decodes the header only; the reader is left at the first point.
    fn read_header(r: &mut Reader<'_>) -> Result<(Header, usize), DecodeError> {
        match r.u8()? {
            BLOCK_VERSION => {}
            v => return Err(DecodeError::Version(v)),
        }
        let count = r.varint()?;
        let min_seq = r.varint()?;
        let max_seq = min_seq.saturating_add(r.varint()?);
        let first_ts = r.zvarint()?;
        let last_ts = first_ts.wrapping_add(r.zvarint()?);
        let first_seq = min_seq.saturating_add(r.varint()?);
        let last_seq = min_seq.saturating_add(r.varint()?);
        let mut f = [0f64; 5];
        for x in &mut f {
            *x = f64::from_le_bytes(r.take(8)?.try_into().expect("8 bytes"));
        }
        let header = Header {
            min_seq,
            max_seq,
            rollup: Rollup {
                count,
                min: f[0],
                max: f[1],
                sum: f[2],
                first_ts,
                first_seq,
                first: f[3],
                last_ts,
                last_seq,
                last: f[4],
            },
        };
        Ok((
            header,
            usize::try_from(count).map_err(|_| DecodeError::Varint)?,
        ))
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
            let value = match r.value()? {
                Value::Float(x) => x,
                _ => return Err(DecodeError::Tag(0xff)),
            };
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

/// Merges two seq-sorted point lists, keeping one of each seq.
pub fn union_by_seq(a: &[Point], b: &[Point]) -> Vec<Point> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].seq.cmp(&b[j].seq) {
            std::cmp::Ordering::Less => {
                out.push(a[i]);
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push(b[j]);
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out
}

/// The number a stored value is indexed as: numbers as they are, booleans as
/// 0/1; strings and non-finite numbers are not indexed.
pub fn indexed_value(v: &Value) -> Option<f64> {
    match v {
        Value::Int(i) => Some(*i as f64),
        Value::Float(x) if x.is_finite() => Some(*x),
        Value::Bool(b) => Some(f64::from(u8::from(*b))),
        _ => None,
    }
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
                value: (i % 7) as f64,
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
    fn first_and_last_go_by_timestamp() {
        let p = |seq, ts, value| Point { seq, ts, value };
        let b = Block::from_points(vec![
            p(1, 50, 1.0),
            p(2, 10, 2.0),
            p(3, 90, 3.0),
            p(4, 90, 4.0),
        ])
        .unwrap();
        assert_eq!((b.rollup.first, b.rollup.last), (2.0, 4.0));
        assert_eq!((b.rollup.min, b.rollup.max, b.rollup.sum), (1.0, 4.0, 10.0));
    }
}
