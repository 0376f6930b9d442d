//! The per-series index's face: its options, opening it (the tables, a
//! format check), the views queries read, its progress, and how the ingest
//! writer feeds it ([`IndexHook`]). The layout is in `layout.rs`, the open
//! minutes in `memory.rs`, writing in `flush.rs`, replaying the log in
//! `catch_up.rs` and (in the background) `replay.rs`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use ferry_core::record::Millis;
use redb::{ReadTransaction, ReadableDatabase, ReadableTable, WriteTransaction};
use tracing::{info, warn};

use super::block::BLOCK_VERSION;
use super::layout::{
    series_ids, SeriesKey, BLOCKS, BLOCKS_V1, EXPIRY, HOURS, META_THROUGH, META_VERSION, SERIES,
};
use super::memory::{memory_use, OpenBucket, SourceSeen, State};
use crate::metrics::QueryMetrics;
use crate::store::{Heads, IndexHook, Store, StoreError, META, RECORDS};

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
            state: Mutex::new(State::new(through)),
            opts,
            writers_waiting: Mutex::new(0),
            writer_done: Condvar::new(),
        };
        index.report(store.heads().records);
        Ok(index)
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
