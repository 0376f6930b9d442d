//! The index's replay of the log in the background, beside the ingest
//! writer: the daemon starts ingest at once and the index catches up in
//! transactions of its own.
//!
//! Each chunk is one write transaction: it applies at most
//! `catch_up_chunk` log records after what the index has applied, writes
//! what is due (closed minutes, and open ones whose new points are as many
//! as those persisted: see [`Index::finish_inner`]) and `index.through`,
//! and commits, so memory stays bounded by the open minutes and a crash
//! keeps what the committed chunks wrote. The store's write lock orders the
//! chunks with the writer's transactions, and between chunks a waiting
//! writer goes first, so ingest waits at most one chunk.
//!
//! While the replay runs, the writer's transactions neither read the log
//! nor index the records they append (`live` is false): every record up to
//! the head the replay sees is read from the log by the replay, once. The
//! chunk that reaches the head makes the index live, and the writer's
//! transactions index from the next record on. A replay chunk that fails
//! drops the in-memory state (as a failed commit of the writer does) and
//! leaves the rest to the writer's transactions, which then catch up
//! `catch_up_chunk` records each.
//!
//! Queries meanwhile answer from what is indexed, and say how many stored
//! records are not (`View::lag`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use redb::ReadableTable;
use tracing::{info, warn};

use super::catch_up::first_record;
use super::index::Index;
use crate::store::{Heads, Store, StoreError, RECORDS};

/// The most a replay waits between two looks at a waiting writer or a stop.
const TURN_WAIT: Duration = Duration::from_millis(200);

/// A replay running on its own thread.
#[derive(Debug)]
pub struct Replay {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Replay {
    /// Stops the replay after the chunk under way; returns once it has
    /// stopped (what it committed stays: the next start continues from it).
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Whether the replay has ended (caught up, stopped or failed).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }
}

impl Drop for Replay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Index {
    /// Starts replaying the log after what the index holds on a thread of
    /// its own; `None` if the index is caught up already (or the thread
    /// cannot start: the writer's transactions then catch up instead).
    /// Call it before the writer's first transaction.
    pub fn replay_in_background(self: &Arc<Self>, store: &Store) -> Option<Replay> {
        {
            let mut state = self.lock();
            if state.applied >= store.heads().records {
                return None;
            }
            state.replaying = true;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let (index, store, flag) = (self.clone(), store.clone(), stop.clone());
        let spawned = std::thread::Builder::new()
            .name("ferry-index-replay".into())
            .spawn(move || index.replay(&store, &flag));
        match spawned {
            Ok(thread) => Some(Replay {
                stop,
                thread: Some(thread),
            }),
            Err(e) => {
                warn!(error = %e, "cannot start the query index's replay thread; the ingest writer's transactions catch up instead");
                self.lock().replaying = false;
                None
            }
        }
    }

    fn replay(&self, store: &Store, stop: &AtomicBool) {
        let started = Instant::now();
        let from = self.progress().1;
        info!(
            from,
            head = store.heads().records,
            "the query index replays the log in the background; queries say how far behind it is"
        );
        let result = loop {
            if stop.load(Ordering::Relaxed) {
                break Ok(false);
            }
            self.let_writers_go_first(stop);
            match self.replay_chunk(store) {
                Ok(true) => break Ok(true),
                Ok(false) => {}
                Err(e) => break Err(e),
            }
        };
        let mut state = self.lock();
        state.replaying = false;
        let to = state.applied;
        drop(state);
        match result {
            Ok(true) => {
                info!(from, to, elapsed = ?started.elapsed(), "query index caught up with the log")
            }
            Ok(false) => info!(from, to, "query index replay stopped"),
            Err(e) => {
                warn!(error = %e, applied = to, "the query index's replay failed; the ingest writer's transactions catch up instead")
            }
        }
        self.report(store.heads().records);
    }

    /// Waits while the writer waits for the write lock (bounded, so a stop
    /// is seen).
    fn let_writers_go_first(&self, stop: &AtomicBool) {
        let mut waiting = self
            .writers_waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        while *waiting > 0 && !stop.load(Ordering::Relaxed) {
            waiting = match self.writer_done.wait_timeout(waiting, TURN_WAIT) {
                Ok((w, _)) => w,
                Err(e) => e.into_inner().0,
            };
        }
    }

    /// One chunk in one transaction; whether the index is caught up.
    fn replay_chunk(&self, store: &Store) -> Result<bool, StoreError> {
        let db = store.db()?;
        let tx = db.begin_write()?;
        let result = (|| {
            // The head as committed, read in this transaction (no later
            // record can commit before it ends).
            let records = tx.open_table(RECORDS)?;
            let last = records.last()?.map_or(0, |(k, _)| k.value());
            let heads = store.heads();
            let committed = Heads {
                records: heads.records.max(last),
                ..heads
            };
            let first = first_record(&records, committed)?;
            drop(records);
            let lag = self.begin_tx(&tx, committed, true)?;
            self.finish_inner(&tx, first, false)?;
            Ok((lag, committed))
        })();
        match result {
            Ok((lag, committed)) => {
                if let Err(e) = tx.commit() {
                    self.abort_tx();
                    return Err(e.into());
                }
                self.committed();
                self.report(committed.records);
                Ok(lag == 0)
            }
            Err(e) => {
                drop(tx);
                self.abort_tx();
                Err(e)
            }
        }
    }
}
