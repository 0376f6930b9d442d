//! The index's in-memory part: each series' open minutes, what they cost,
//! and how a record is added to them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;

use ferry_core::record::Millis;

use super::block::{Point, PointBuf};
use super::layout::{bucket_of, hour_of, series_key, SeriesKey};
use crate::store::codec::{DecodeError, Reader};

/// A bucket held in memory: the current one of each series, and those
/// written in the transaction under way (kept until it has committed).
#[derive(Debug, Clone, Default)]
pub(crate) struct OpenBucket {
    /// Sorted by seq, encoded compactly.
    pub points: PointBuf,
    /// The first seq not yet in the persisted block.
    pub(super) dirty_since: Option<u64>,
    /// The series has moved on to another bucket: write and forget it.
    pub(super) closed: bool,
    /// The persisted block has been merged into `points`.
    pub loaded: bool,
    /// Points added since the persisted block was last written.
    pub(super) dirty_points: usize,
    /// The `max seq` of the persisted block (its expiry key), once known.
    pub(super) persisted_max: Option<u64>,
}

/// The memory a series in [`State::series`] costs besides its points: its
/// map entry and the B-tree leaf holding its buckets (11 slots).
const SERIES_OVERHEAD: usize = std::mem::size_of::<(SeriesKey, BTreeMap<Millis, OpenBucket>)>()
    + 11 * std::mem::size_of::<(Millis, OpenBucket)>()
    + 16;

/// What the open minutes in memory take, estimated: (bytes, series).
pub(super) fn memory_use(
    series: &HashMap<SeriesKey, BTreeMap<Millis, OpenBucket>>,
) -> (usize, usize) {
    let points: usize = series
        .values()
        .flat_map(|m| m.values())
        .map(|ob| ob.points.heap_bytes())
        .sum();
    let map =
        series.capacity() * (std::mem::size_of::<(SeriesKey, BTreeMap<Millis, OpenBucket>)>() + 1);
    (points + map + series.len() * SERIES_OVERHEAD, series.len())
}

/// When a source's records were last indexed.
#[derive(Debug, Clone, Copy)]
pub struct SourceSeen {
    /// The record's own timestamp.
    pub ts: Millis,
    pub seq: u64,
}

/// The index's mutable state, behind its lock.
#[derive(Debug)]
pub(super) struct State {
    /// The highest seq looked at (in memory or persisted).
    pub(super) applied: u64,
    /// `index.through` as last committed.
    pub(super) persisted: u64,
    /// `index.through` written in the transaction under way.
    pub(super) pending: Option<u64>,
    /// Caught up with the log: records the writer appends are applied.
    pub(super) live: bool,
    /// A background replay ([`super::replay`]) is catching up: the writer's
    /// transactions leave the log to it.
    pub(super) replaying: bool,
    pub(super) series: HashMap<SeriesKey, BTreeMap<Millis, OpenBucket>>,
    /// Hours of series that have moved on to a later hour: their
    /// directories are written (from the blocks) at the next flush.
    pub(super) seals: HashSet<(SeriesKey, Millis)>,
    pub(super) last_flush: Instant,
    pub(super) sources: HashMap<u32, SourceSeen>,
    pub(super) buf: Vec<u8>,
}

impl State {
    /// The state of an index persisted through `through`, nothing in memory.
    pub(super) fn new(through: u64) -> State {
        State {
            applied: through,
            persisted: through,
            pending: None,
            live: false,
            replaying: false,
            series: HashMap::new(),
            seals: HashSet::new(),
            last_flush: Instant::now(),
            sources: HashMap::new(),
            buf: Vec::new(),
        }
    }

    /// Adds the record `seq` to the open buckets.
    pub(super) fn apply(&mut self, seq: u64, bytes: &[u8], live: bool) -> Result<(), DecodeError> {
        let mut r = Reader::new(bytes);
        r.version()?;
        let ts = r.zvarint()?;
        // Within the query range every bucket and hour computation below
        // fits an i64; a record outside it is damage, skipped like one that
        // does not decode (it stays in the log).
        if !(super::bounds::MIN_TIME..=super::bounds::MAX_TIME).contains(&ts) {
            return Err(DecodeError::Timestamp(ts));
        }
        let source = r.id()?;
        let device = r.id()?;
        let n = r.varint()?;
        if live {
            self.sources.insert(source, SourceSeen { ts, seq });
        }
        let b = bucket_of(ts);
        for _ in 0..n {
            let field = r.id()?;
            let value = r.value()?;
            let s = series_key(device, field);
            let buckets = self.series.entry(s).or_default();
            if buckets.len() > 1 || !buckets.contains_key(&b) {
                for (&k, ob) in buckets.iter_mut().filter(|(&k, _)| k != b) {
                    ob.closed = true;
                    if hour_of(k) != hour_of(b) {
                        self.seals.insert((s, hour_of(k)));
                    }
                }
            }
            let ob = buckets.entry(b).or_default();
            ob.closed = false;
            ob.points.push(&Point { seq, ts, value });
            ob.dirty_since.get_or_insert(seq);
            ob.dirty_points = ob.dirty_points.saturating_add(1);
        }
        Ok(())
    }
}
