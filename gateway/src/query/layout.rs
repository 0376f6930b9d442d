//! The index's layout: its tables and `meta` keys, the hour directories'
//! encoding, and how series, minutes and hours are keyed.

use ferry_core::record::Millis;
use redb::TableDefinition;

use super::block::Header;
use crate::store::codec::{self, DecodeError, Reader};

/// `(minute start, series)` → an encoded [`Block`]. Minute first, so the
/// blocks a minute closes are neighbours: writing them touches few pages.
pub(crate) const BLOCKS: TableDefinition<(i64, u64), &[u8]> = TableDefinition::new("index_minutes");
/// `(series, hour start)` → the headers of the series' blocks in that hour
/// (a [`Directory`]), written once the series has moved on to a later hour,
/// so a long query reads one entry per hour instead of one per minute.
pub(crate) const HOURS: TableDefinition<(u64, i64), &[u8]> = TableDefinition::new("index_hours");
/// `series` → (first, last) minute start with a block: where to look.
pub(crate) const SERIES: TableDefinition<u64, (i64, i64)> = TableDefinition::new("index_series");
/// `(max seq, series, minute start)` of every block: what retention drops
/// once the first stored record passes `max seq`.
pub(crate) const EXPIRY: TableDefinition<(u64, u64, i64), ()> =
    TableDefinition::new("index_expiry");
/// The blocks of format version 1 (series first): dropped at open.
pub(super) const BLOCKS_V1: TableDefinition<(u64, i64), &[u8]> =
    TableDefinition::new("index_blocks");
/// `meta` key: every record with a sequence number up to this is in the
/// persisted blocks.
pub(crate) const META_THROUGH: &str = "index.through";
/// `meta` key: the block format version of the persisted index.
pub(crate) const META_VERSION: &str = "index.version";

/// An hour, the span of one [`HOURS`] entry.
pub const HOUR_MS: i64 = 3_600_000;

/// The start of the hour holding `ts`.
pub fn hour_of(ts: Millis) -> Millis {
    ts.div_euclid(HOUR_MS) * HOUR_MS
}

/// The headers of one series' blocks in one hour, by minute.
///
/// ```text
/// directory := n:varint (minute of the hour:u8 header)*n
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Directory(pub Vec<(Millis, Header)>);

impl Directory {
    pub fn encode(&self, hour: Millis, buf: &mut Vec<u8>) {
        buf.clear();
        codec::put_varint(buf, self.0.len() as u64);
        for (b, h) in &self.0 {
            buf.push(((b - hour) / BUCKET_MS) as u8);
            h.encode(buf);
        }
    }

    pub fn decode(hour: Millis, bytes: &[u8]) -> Result<Directory, DecodeError> {
        let mut r = Reader::new(bytes);
        let n = r.varint()?;
        let mut out = Vec::with_capacity((n as usize).min(60));
        for _ in 0..n {
            let m = r.u8()?;
            if m >= 60 {
                return Err(DecodeError::Varint);
            }
            out.push((hour + i64::from(m) * BUCKET_MS, Header::read(&mut r)?));
        }
        r.finish()?;
        Ok(Directory(out))
    }

    /// Sets the header of the block of minute `b`.
    pub(super) fn put(&mut self, b: Millis, h: Header) {
        match self.0.binary_search_by_key(&b, |(m, _)| *m) {
            Ok(i) => self.0[i].1 = h,
            Err(i) => self.0.insert(i, (b, h)),
        }
    }
}

/// The width of an index bucket: one block per series per minute.
pub const BUCKET_MS: i64 = 60_000;

/// A series: a device's field, as the pair of their interned name ids.
pub type SeriesKey = u64;

pub fn series_key(device: u32, field: u32) -> SeriesKey {
    (u64::from(device) << 32) | u64::from(field)
}

pub fn series_ids(key: SeriesKey) -> (u32, u32) {
    ((key >> 32) as u32, key as u32)
}

/// The start of the bucket holding `ts`.
pub fn bucket_of(ts: Millis) -> Millis {
    ts.div_euclid(BUCKET_MS) * BUCKET_MS
}
