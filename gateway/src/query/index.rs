//! The per-series index: its in-memory open buckets, how the ingest writer
//! feeds it ([`IndexHook`]), and how it repairs itself from the log.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ferry_core::record::Millis;
use redb::{
    ReadTransaction, ReadableDatabase, ReadableTable, Table, TableDefinition, WriteTransaction,
};
use tracing::{info, warn};

use super::block::{union_by_seq, Block, Header, Point, PointBuf, BLOCK_VERSION};
use crate::metrics::QueryMetrics;
use crate::store::codec::{self, DecodeError, Reader};
use crate::store::{Heads, IndexHook, Store, StoreError, META, RECORDS};

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
const BLOCKS_V1: TableDefinition<(u64, i64), &[u8]> = TableDefinition::new("index_blocks");
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
    fn put(&mut self, b: Millis, h: Header) {
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

/// How the index writes.
#[derive(Debug, Clone)]
pub struct IndexOptions {
    /// Open buckets that received points are written at least this often,
    /// so a restart replays at most this much of the log.
    pub flush_interval: Duration,
    /// The most log records replayed in one transaction while catching up.
    pub catch_up_chunk: usize,
    /// Where the index reports how far behind the log it is.
    pub metrics: QueryMetrics,
    /// The bytes the open minutes in memory may take (their points and
    /// the maps holding them, estimated): past it, every open minute is
    /// written at the next commit, and dropped from memory after it.
    pub memory_budget: usize,
    /// Catching up, write every open minute at every chunk (what the index
    /// did before: quadratic in the points of a minute). Only for the
    /// benchmark's baseline (`benches/lifecycle.rs`).
    #[doc(hidden)]
    pub rewrite_open_each_chunk: bool,
}

impl Default for IndexOptions {
    fn default() -> Self {
        IndexOptions {
            flush_interval: Duration::from_secs(60),
            catch_up_chunk: 50_000,
            metrics: QueryMetrics::new(),
            memory_budget: 8 << 20,
            rewrite_open_each_chunk: false,
        }
    }
}

/// A bucket held in memory: the current one of each series, and those
/// written in the transaction under way (kept until it has committed).
#[derive(Debug, Clone, Default)]
pub(crate) struct OpenBucket {
    /// Sorted by seq, encoded compactly.
    pub points: PointBuf,
    /// The first seq not yet in the persisted block.
    dirty_since: Option<u64>,
    /// The series has moved on to another bucket: write and forget it.
    closed: bool,
    /// The persisted block has been merged into `points`.
    pub loaded: bool,
    /// Points added since the persisted block was last written.
    dirty_points: usize,
    /// The `max seq` of the persisted block (its expiry key), once known.
    persisted_max: Option<u64>,
}

/// The memory a series in [`State::series`] costs besides its points: its
/// map entry and the B-tree leaf holding its buckets (11 slots).
const SERIES_OVERHEAD: usize = std::mem::size_of::<(SeriesKey, BTreeMap<Millis, OpenBucket>)>()
    + 11 * std::mem::size_of::<(Millis, OpenBucket)>()
    + 16;

/// What the open minutes in memory take, estimated: (bytes, series).
fn memory_use(series: &HashMap<SeriesKey, BTreeMap<Millis, OpenBucket>>) -> (usize, usize) {
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

#[derive(Debug)]
pub(super) struct State {
    /// The highest seq looked at (in memory or persisted).
    pub(super) applied: u64,
    /// `index.through` as last committed.
    persisted: u64,
    /// `index.through` written in the transaction under way.
    pending: Option<u64>,
    /// Caught up with the log: records the writer appends are applied.
    live: bool,
    /// A background replay ([`super::replay`]) is catching up: the writer's
    /// transactions leave the log to it.
    pub(super) replaying: bool,
    series: HashMap<SeriesKey, BTreeMap<Millis, OpenBucket>>,
    /// Hours of series that have moved on to a later hour: their
    /// directories are written (from the blocks) at the next flush.
    seals: HashSet<(SeriesKey, Millis)>,
    last_flush: Instant,
    sources: HashMap<u32, SourceSeen>,
    buf: Vec<u8>,
}

/// The query index, shared by the ingest writer (which feeds it) and the
/// query engine (which reads it).
#[derive(Debug)]
pub struct Index {
    state: Mutex<State>,
    pub(super) opts: IndexOptions,
    /// Writers waiting for the store's write lock: a background replay lets
    /// them go first between its chunks.
    pub(super) writers_waiting: Mutex<usize>,
    pub(super) writer_done: Condvar,
}

/// Everything a query needs, consistent at one moment: a read transaction,
/// the committed head, the first stored record, and copies of the
/// in-memory buckets of the series asked for.
pub struct View {
    pub(crate) tx: ReadTransaction,
    pub head: u64,
    pub first_record: u64,
    /// Stored records up to `head` the index had not taken in: 0 when the
    /// view is complete.
    pub lag: u64,
    pub(crate) memory: HashMap<SeriesKey, BTreeMap<Millis, OpenBucket>>,
}

impl Index {
    /// Opens the index of `store`: creates its tables, discards it if its
    /// format is not this version's, and replays the log after
    /// `index.through` (all of it for a new or discarded index) before
    /// returning, in transactions of `catch_up_chunk` records.
    pub fn open(store: &Store, opts: IndexOptions) -> Result<Arc<Index>, StoreError> {
        let index = Arc::new(Index::open_without_catch_up(store, opts)?);
        index.catch_up(store)?;
        Ok(index)
    }

    /// Opens the index without replaying the log: the writer's transactions
    /// then replay it, `catch_up_chunk` records each, before they index new
    /// records (queries meanwhile see only what was replayed).
    pub fn open_without_catch_up(store: &Store, opts: IndexOptions) -> Result<Index, StoreError> {
        let db = store.db()?;
        let tx = db.begin_write()?;
        let through = {
            let mut meta = tx.open_table(META)?;
            let version = meta.get(META_VERSION)?.map(|v| v.value());
            let through = meta.get(META_THROUGH)?.map(|v| v.value());
            match (version, through) {
                (Some(v), Some(t)) if v == u64::from(BLOCK_VERSION) => t,
                _ => {
                    if version.is_some() || through.is_some() {
                        info!(found = ?version, "the query index is of another format: rebuilding it from the log");
                    }
                    tx.delete_table(BLOCKS_V1)?;
                    tx.delete_table(BLOCKS)?;
                    tx.delete_table(HOURS)?;
                    tx.delete_table(SERIES)?;
                    tx.delete_table(EXPIRY)?;
                    meta.insert(META_VERSION, u64::from(BLOCK_VERSION))?;
                    meta.insert(META_THROUGH, 0)?;
                    0
                }
            }
        };
        tx.open_table(BLOCKS)?;
        tx.open_table(HOURS)?;
        tx.open_table(SERIES)?;
        tx.open_table(EXPIRY)?;
        tx.commit()?;
        drop(db);
        let index = Index {
            state: Mutex::new(State {
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
            }),
            opts,
            writers_waiting: Mutex::new(0),
            writer_done: Condvar::new(),
        };
        index.report(store.heads().records);
        Ok(index)
    }

    /// Replays the log after what the index holds, until it is caught up.
    pub fn catch_up(&self, store: &Store) -> Result<(), StoreError> {
        let started = Instant::now();
        let from = self.lock().applied;
        loop {
            let heads = store.heads();
            let db = store.db()?;
            let tx = db.begin_write()?;
            let result = (|| {
                self.begin_tx(&tx, heads, true)?;
                let first = first_record(&tx.open_table(RECORDS)?, heads)?;
                // The open minutes are written once, with the last chunk.
                let last = self.lock().live;
                self.finish_inner(&tx, first, last)
            })();
            match result {
                Ok(_) => {
                    tx.commit()?;
                    let mut state = self.lock();
                    if let Some(p) = state.pending.take() {
                        state.persisted = p;
                    }
                }
                Err(e) => {
                    self.abort();
                    return Err(e);
                }
            }
            self.report(heads.records);
            if self.lock().applied >= heads.records {
                break;
            }
        }
        let to = self.lock().applied;
        if to > from {
            info!(from, to, elapsed = ?started.elapsed(), "query index caught up with the log");
        }
        Ok(())
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the lag gauges against the log's head `head`.
    pub(super) fn report(&self, head: u64) {
        let (persisted, applied) = self.progress();
        let m = &self.opts.metrics;
        m.index_lag_records.set(head.saturating_sub(applied) as i64);
        m.index_unpersisted_records
            .set(applied.saturating_sub(persisted) as i64);
    }

    /// The seq the persisted index is complete through, and the highest
    /// seq it has looked at.
    pub fn progress(&self) -> (u64, u64) {
        let s = self.lock();
        (s.persisted, s.applied)
    }

    /// The transaction begun last has committed.
    pub(super) fn committed(&self) {
        let mut state = self.lock();
        if let Some(p) = state.pending.take() {
            state.persisted = p;
        }
    }

    /// The transaction begun last will not commit.
    pub(super) fn abort_tx(&self) {
        IndexHook::abort(self);
    }

    /// Stored records the index has not taken in (queries do not see them):
    /// nonzero while it catches up with the log.
    pub fn lag(&self, store: &Store) -> u64 {
        let applied = self.lock().applied;
        store.heads().records.saturating_sub(applied)
    }

    /// Whether a background replay is still catching up with the log.
    pub fn replaying(&self) -> bool {
        self.lock().replaying
    }

    /// When each source (by name id) was last seen since the daemon started.
    pub fn sources_seen(&self) -> HashMap<u32, SourceSeen> {
        self.lock().sources.clone()
    }

    /// A consistent view for reading the series of `devices` (name ids):
    /// only their in-memory buckets are copied.
    pub fn view_devices(&self, store: &Store, devices: &[u32]) -> Result<View, StoreError> {
        let wanted: HashSet<u32> = devices.iter().copied().collect();
        let keys: Vec<SeriesKey> = self
            .lock()
            .series
            .keys()
            .filter(|k| wanted.contains(&series_ids(**k).0))
            .copied()
            .collect();
        // A series that enters memory between the two locks is also in
        // the log the read transaction sees, through the index tables or
        // (not yet written) memory copied now: written blocks stay in
        // memory until their commit, so nothing is missed but points
        // stored after this call.
        self.view(store, Some(&keys))
    }

    /// A consistent view for reading `series` (all series when `None`).
    pub fn view(&self, store: &Store, series: Option<&[SeriesKey]>) -> Result<View, StoreError> {
        let state = self.lock();
        // Opened under the lock: the writer cannot change the memory
        // between the two, and buckets written by a transaction stay in
        // memory until it has committed, so nothing falls in between.
        let head = store.heads().records;
        let lag = head.saturating_sub(state.applied);
        let tx = store.db()?.begin_read()?;
        let memory = match series {
            None => state.series.clone(),
            Some(keys) => keys
                .iter()
                .filter_map(|k| state.series.get(k).map(|b| (*k, b.clone())))
                .collect(),
        };
        drop(state);
        let first_record = {
            let records = tx.open_table(RECORDS)?;
            let first = records.first()?.map(|(k, _)| k.value());
            first.unwrap_or(head + 1)
        };
        Ok(View {
            tx,
            head,
            first_record,
            lag,
            memory,
        })
    }

    /// Writes what is due of the in-memory buckets, retention's deletions
    /// and `index.through`. `force` writes every bucket with points not
    /// persisted yet.
    ///
    /// Catching up (not live), a still-open bucket is written once its new
    /// points are at least as many as those already persisted (and an
    /// eighth of `catch_up_chunk`): the block's size at least doubles
    /// between two writes, so each point is rewritten at most a few times
    /// however many share its minute, and a replay is linear in the log
    /// (writing every open block at every chunk, as before, rewrote a
    /// flood's minute once per chunk: quadratic), while `index.through`
    /// still moves on as chunks commit.
    pub(super) fn finish_inner(
        &self,
        tx: &WriteTransaction,
        first_record: u64,
        force: bool,
    ) -> Result<bool, StoreError> {
        let mut guard = self.lock();
        let state = &mut *guard;
        let mut t = Tables {
            blocks: tx.open_table(BLOCKS)?,
            hours: tx.open_table(HOURS)?,
            series: tx.open_table(SERIES)?,
            extent: HashMap::new(),
            dirs: HashMap::new(),
        };
        let mut wrote = false;
        let mut expiry = tx.open_table(EXPIRY)?;
        // Retention: blocks wholly before the first stored record go.
        let expired: Vec<(u64, u64, i64)> = expiry
            .range(..(first_record, 0, i64::MIN))?
            .map(|e| e.map(|(k, _)| k.value()))
            .collect::<Result<_, _>>()?;
        let mut emptied = HashSet::new();
        for (max, s, b) in expired {
            expiry.remove((max, s, b))?;
            t.remove_block(s, b)?;
            emptied.insert((s, hour_of(b)));
            if let Some(ob) = state.series.get_mut(&s).and_then(|m| m.get_mut(&b)) {
                ob.persisted_max = None;
            }
            wrote = true;
        }
        // A directory goes with the last of its blocks.
        for (s, h) in emptied {
            if let Some(dir) = t.dir(s, h)? {
                if dir.0.iter().all(|(_, hd)| hd.max_seq < first_record) {
                    t.dirs.insert((s, h), None);
                }
            }
        }
        // Over the memory budget: write every open minute now, so the next
        // transaction drops them from memory. Catching up, open minutes are
        // written as they grow (see `finish_inner`), not all at every chunk.
        let (bytes, _) = memory_use(&state.series);
        let flush_all = force
            || bytes > self.opts.memory_budget
            || (state.live && state.last_flush.elapsed() >= self.opts.flush_interval);
        if flush_all {
            state.last_flush = Instant::now();
        }
        let catching_up = !state.live;
        let min_new = (self.opts.catch_up_chunk / 8).max(1);
        for (&s, buckets) in &mut state.series {
            for (&b, ob) in buckets.iter_mut() {
                let grown = catching_up
                    && (self.opts.rewrite_open_each_chunk || {
                        let persisted = ob.points.len().saturating_sub(ob.dirty_points);
                        ob.dirty_points >= persisted.max(min_new)
                    });
                if ob.dirty_since.is_none() || !(ob.closed || flush_all || grown) {
                    continue;
                }
                if !ob.loaded {
                    if let Some(v) = t.blocks.get((b, s))? {
                        match Block::decode(v.value()) {
                            Ok(old) => {
                                ob.points = PointBuf::from_points(&union_by_seq(
                                    &old.points,
                                    &ob.points.to_vec(),
                                ));
                                ob.persisted_max = Some(old.max_seq);
                            }
                            Err(e) => warn!(series = s, bucket = b, error = %e,
                                "an index block does not decode: rewriting it from memory"),
                        }
                    }
                    ob.loaded = true;
                }
                ob.points.retain(|p| p.seq >= first_record);
                if let Some(old) = ob.persisted_max.take() {
                    expiry.remove((old, s, b))?;
                }
                match Block::from_points(ob.points.to_vec()) {
                    Some(block) => {
                        block.encode(&mut state.buf);
                        t.blocks.insert((b, s), state.buf.as_slice())?;
                        expiry.insert((block.max_seq, s, b), ())?;
                        ob.persisted_max = Some(block.max_seq);
                        // The series moved on to a later hour: seal the last one.
                        if let Some((_, last)) = t.extent(s)? {
                            if hour_of(last) < hour_of(b) {
                                state.seals.insert((s, hour_of(last)));
                            }
                        }
                        t.grow(s, b)?;
                        if let Some(dir) = t.dir(s, hour_of(b))? {
                            dir.put(b, block.header());
                        }
                    }
                    None => {
                        t.remove_block(s, b)?;
                        ob.closed = true;
                    }
                }
                ob.dirty_since = None;
                ob.dirty_points = 0;
                wrote = true;
            }
        }
        // Seal the hours series have left, unless they still hold data
        // not written yet (then at a later flush).
        let seals: Vec<_> = state.seals.iter().copied().collect();
        for (s, h) in seals {
            let unwritten = state.series.get(&s).is_some_and(|m| {
                m.range(h..h + HOUR_MS)
                    .any(|(_, ob)| ob.dirty_since.is_some())
            });
            if unwritten {
                continue;
            }
            state.seals.remove(&(s, h));
            if t.dir(s, h)?.is_none() {
                let mut dir = Directory::default();
                for m in (h..h + HOUR_MS).step_by(BUCKET_MS as usize) {
                    if let Some(v) = t.blocks.get((m, s))? {
                        match Block::decode_header(v.value()) {
                            Ok(hd) => dir.0.push((m, hd)),
                            Err(e) => {
                                warn!(series = s, bucket = m, error = %e, "an index block does not decode: its hour stays unsealed");
                                dir.0.clear();
                                break;
                            }
                        }
                    }
                }
                if !dir.0.is_empty() {
                    t.dirs.insert((s, h), Some(dir));
                }
            }
        }
        wrote |= t.write(&mut state.buf)?;
        let through = state
            .series
            .values()
            .flat_map(|m| m.values())
            .filter_map(|ob| ob.dirty_since)
            .min()
            .map_or(state.applied, |d| d - 1);
        if through != state.pending.unwrap_or(state.persisted) {
            tx.open_table(META)?.insert(META_THROUGH, through)?;
            wrote = true;
        }
        state.pending = Some(through);
        Ok(wrote)
    }
}

/// The index tables in a write transaction, with the directories and
/// series extents changed in it (written once, at the end).
struct Tables<'t> {
    blocks: Table<'t, (i64, u64), &'static [u8]>,
    hours: Table<'t, (u64, i64), &'static [u8]>,
    series: Table<'t, u64, (i64, i64)>,
    /// Series extents read or changed (`None`: no block).
    extent: HashMap<SeriesKey, (Option<(i64, i64)>, bool)>,
    /// Directories read or changed (`None`: to delete), and whether they exist.
    dirs: HashMap<(SeriesKey, Millis), Option<Directory>>,
}

impl Tables<'_> {
    fn extent(&mut self, s: SeriesKey) -> Result<Option<(i64, i64)>, StoreError> {
        if let Some((e, _)) = self.extent.get(&s) {
            return Ok(*e);
        }
        let e = self.series.get(s)?.map(|v| v.value());
        self.extent.insert(s, (e, false));
        Ok(e)
    }

    fn grow(&mut self, s: SeriesKey, b: Millis) -> Result<(), StoreError> {
        let e = self.extent(s)?;
        let new = e.map_or((b, b), |(f, l)| (f.min(b), l.max(b)));
        if Some(new) != e {
            self.extent.insert(s, (Some(new), true));
        }
        Ok(())
    }

    /// Removes the block of minute `b`; the extent's start moves past it.
    fn remove_block(&mut self, s: SeriesKey, b: Millis) -> Result<(), StoreError> {
        self.blocks.remove((b, s))?;
        if let Some((f, l)) = self.extent(s)? {
            if f == b {
                // A lower bound of the first block left: readers look on from it.
                let new = (f + BUCKET_MS <= l).then_some((f + BUCKET_MS, l));
                self.extent.insert(s, (new, true));
            }
        }
        Ok(())
    }

    /// The directory of `(s, h)`, if the hour is sealed.
    fn dir(&mut self, s: SeriesKey, h: Millis) -> Result<Option<&mut Directory>, StoreError> {
        if !self.dirs.contains_key(&(s, h)) {
            let dir = match self.hours.get((s, h))? {
                Some(v) => match Directory::decode(h, v.value()) {
                    Ok(d) => Some(d),
                    Err(e) => {
                        warn!(series = s, hour = h, error = %e, "an index directory does not decode: dropping it (the hour is read minute by minute)");
                        None
                    }
                },
                None => None,
            };
            match dir {
                Some(d) => self.dirs.insert((s, h), Some(d)),
                None => return Ok(None),
            };
        }
        Ok(self.dirs.get_mut(&(s, h)).and_then(Option::as_mut))
    }

    /// Writes what changed; whether anything did.
    fn write(mut self, buf: &mut Vec<u8>) -> Result<bool, StoreError> {
        let mut wrote = false;
        for ((s, h), dir) in std::mem::take(&mut self.dirs) {
            match dir {
                Some(dir) => {
                    dir.encode(h, buf);
                    self.hours.insert((s, h), buf.as_slice())?;
                }
                None => {
                    self.hours.remove((s, h))?;
                }
            }
            wrote = true;
        }
        for (s, (e, changed)) in std::mem::take(&mut self.extent) {
            if !changed {
                continue;
            }
            match e {
                Some(e) => self.series.insert(s, e)?,
                None => self.series.remove(s)?,
            };
            wrote = true;
        }
        Ok(wrote)
    }
}

impl State {
    /// Adds the record `seq` to the open buckets.
    fn apply(&mut self, seq: u64, bytes: &[u8], live: bool) -> Result<(), DecodeError> {
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

pub(super) fn first_record(
    records: &impl ReadableTable<u64, &'static [u8]>,
    heads: Heads,
) -> Result<u64, StoreError> {
    Ok(records
        .first()?
        .map_or(heads.records + 1, |(k, _)| k.value()))
}

impl Index {
    /// What begins every transaction that writes the index (the writer's
    /// and a replay's): the buckets the last commit wrote leave memory, and
    /// the log after `applied` up to `committed` is applied, at most
    /// `catch_up_chunk` records, unless a background replay does that and
    /// `replay` is false. Returns the lag left.
    pub(super) fn begin_tx(
        &self,
        tx: &WriteTransaction,
        committed: Heads,
        replay: bool,
    ) -> Result<u64, StoreError> {
        let mut guard = self.lock();
        let state = &mut *guard;
        if let Some(p) = state.pending.take() {
            state.persisted = p;
        }
        // Buckets written by the committed transaction are on disk now:
        // closed ones go, and, past the memory budget, every written one
        // (a point that comes later for a written minute starts a bucket
        // that merges with its block when written; queries merge the two
        // as well). So the memory is bounded by the budget plus what
        // arrives between writes, not by how many series there are.
        let over = memory_use(&state.series).0 > self.opts.memory_budget;
        for buckets in state.series.values_mut() {
            buckets.retain(|_, ob| ob.dirty_since.is_some() || !(ob.closed || over));
        }
        state.series.retain(|_, b| !b.is_empty());
        if state.series.capacity() > 4 * state.series.len().max(1024) {
            state.series.shrink_to_fit();
        }
        // A background replay reads the log in its own transactions.
        if state.applied < committed.records && (replay || !state.replaying) {
            let records = tx.open_table(RECORDS)?;
            let mut n = 0;
            for entry in records.range(state.applied + 1..=committed.records)? {
                let (seq, bytes) = entry?;
                let seq = seq.value();
                if let Err(e) = state.apply(seq, bytes.value(), false) {
                    warn!(seq, error = %e, "the query index skips a record that does not decode");
                }
                state.applied = seq;
                n += 1;
                if n >= self.opts.catch_up_chunk {
                    break;
                }
            }
            if n < self.opts.catch_up_chunk {
                // The rest was evicted.
                state.applied = committed.records;
            }
        }
        state.live = state.applied >= committed.records;
        let lag = committed.records.saturating_sub(state.applied);
        drop(guard);
        self.opts.metrics.index_lag_records.set(lag as i64);
        Ok(lag)
    }
}

impl IndexHook for Index {
    fn begin(&self, tx: &WriteTransaction, committed: Heads) -> Result<(), StoreError> {
        self.begin_tx(tx, committed, false).map(drop)
    }

    fn wants_write(&self, wants: bool) {
        let mut n = self
            .writers_waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if wants {
            *n = n.saturating_add(1);
        } else {
            *n = n.saturating_sub(1);
            self.writer_done.notify_all();
        }
    }

    fn record(&self, seq: u64, encoded: &[u8]) {
        let mut state = self.lock();
        if state.live && seq > state.applied {
            if let Err(e) = state.apply(seq, encoded, true) {
                warn!(seq, error = %e, "the query index skips a record that does not decode");
            }
            state.applied = seq;
        }
    }

    fn finish(&self, tx: &WriteTransaction, first_record: u64) -> Result<bool, StoreError> {
        let wrote = self.finish_inner(tx, first_record, false)?;
        let (persisted, applied, (bytes, series)) = {
            let s = self.lock();
            (
                s.pending.unwrap_or(s.persisted),
                s.applied,
                memory_use(&s.series),
            )
        };
        self.opts.metrics.index_memory_bytes.set(bytes as i64);
        self.opts.metrics.index_series_in_memory.set(series as i64);
        self.opts
            .metrics
            .index_unpersisted_records
            .set(applied.saturating_sub(persisted) as i64);
        Ok(wrote)
    }

    fn abort(&self) {
        // Forget what memory held; the next transaction replays it from the log.
        let mut state = self.lock();
        state.series.clear();
        state.seals.clear();
        state.applied = state.persisted;
        state.pending = None;
        state.live = false;
    }
}
