//! Catching up with the log: the records after what the index has applied
//! are read from the log and applied, at open ([`Index::catch_up`]) and at
//! the start of each transaction that writes the index ([`Index::begin_tx`]).

use std::time::Instant;

use redb::{ReadableTable, WriteTransaction};
use tracing::{info, warn};

use super::index::Index;
use super::memory::memory_use;
use crate::store::{Heads, IndexHook, Store, StoreError, RECORDS};

impl Index {
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

pub(super) fn first_record(
    records: &impl ReadableTable<u64, &'static [u8]>,
    heads: Heads,
) -> Result<u64, StoreError> {
    Ok(records
        .first()?
        .map_or(heads.records + 1, |(k, _)| k.value()))
}
