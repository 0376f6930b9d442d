//! The ingest writer: the one task that writes to the store.
//!
//! Sources submit items through a [`Sink`]; uplinks move their cursors through
//! [`Cursors`]. The writer gathers both into group commits:
//!
//! - a batch opens when its first item arrives and is committed
//!   `commit_interval` later, or at once when it holds `commit_max_records`;
//! - cursor moves alone open a batch that commits `cursor_flush_interval`
//!   later (a cursor that lags only causes resends after a crash, so it is
//!   not worth a write of its own each time);
//! - each commit is one redb write transaction with `Durability::Immediate`;
//!   only after it returns are the submissions' receipts resolved.
//!
//! So at most one fsync per `commit_interval` under any load, which bounds
//! the wear on an SD card, and under load each commit carries many records.
//!
//! The writer stops when every [`Sink`] and every [`Cursors`] handle is
//! dropped, after committing what it holds.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use ferry_adapters::record::Record;
use ferry_adapters::sink::{Committed, Item, Sink, Submission, SubmitError};
use redb::ReadableTable;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, error, info};

use super::{codec, Heads, Store, StoreError, CURSORS, DEAD, NAMES, RECORDS};
use crate::metrics::{IngestMetrics, RejectLabels, SourceLabel};

/// Group-commit settings.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    pub commit_interval: Duration,
    pub commit_max_records: usize,
    pub cursor_flush_interval: Duration,
    /// Submissions queued before sources wait.
    pub queue: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            commit_interval: Duration::from_millis(10),
            commit_max_records: 4096,
            cursor_flush_interval: Duration::from_secs(1),
            queue: 1024,
        }
    }
}

/// Moves consumers' cursors; the writer commits them with its next batch.
#[derive(Debug, Clone)]
pub struct Cursors {
    tx: mpsc::Sender<(Arc<str>, u64)>,
}

impl Cursors {
    /// Records that the consumer `name` has finished with every sequence
    /// number up to `seq`. Durable after the writer's next commit.
    pub async fn advance(&self, name: &Arc<str>, seq: u64) -> Result<(), SubmitError> {
        self.tx
            .send((name.clone(), seq))
            .await
            .map_err(|_| SubmitError::Closed)
    }
}

/// What [`spawn_ingest`] hands back.
pub struct IngestHandle {
    pub sink: Sink,
    pub cursors: Cursors,
    /// Ends after the last sink and cursor handle are dropped and the final
    /// commit is done.
    pub task: JoinHandle<()>,
}

/// Starts the ingest writer on `store`.
pub fn spawn_ingest(store: Store, cfg: IngestConfig, metrics: IngestMetrics) -> IngestHandle {
    let (sink, rx) = Sink::channel(cfg.queue);
    let (ctx, crx) = mpsc::channel(64);
    let state = WriterState::new(store, metrics);
    let task = tokio::spawn(run(state, cfg, rx, crx));
    IngestHandle {
        sink,
        cursors: Cursors { tx: ctx },
        task,
    }
}

/// Where a submission's outcome is sent.
type Done = oneshot::Sender<Result<Committed, SubmitError>>;

/// Items and cursor moves waiting for the next commit.
#[derive(Default)]
struct Batch {
    records: Vec<Record>,
    dead: Vec<ferry_adapters::record::DeadLetter>,
    /// Each submission's receipt and how many records it brought.
    acks: Vec<(Option<Done>, usize)>,
    cursors: BTreeMap<Arc<str>, u64>,
    items_since: Option<Instant>,
    cursors_since: Option<Instant>,
}

impl Batch {
    fn add(&mut self, sub: Submission, now: Instant, metrics: &IngestMetrics) {
        let mut n = 0;
        for item in sub.items {
            match item {
                Item::Record(r) => {
                    metrics
                        .records_received
                        .get_or_create(&SourceLabel {
                            source: r.source.to_string(),
                        })
                        .inc();
                    self.records.push(r);
                    n += 1;
                }
                Item::Dead(d) => {
                    metrics
                        .records_rejected
                        .get_or_create(&RejectLabels {
                            source: d.source.to_string(),
                            reason: d.kind.to_owned(),
                        })
                        .inc();
                    self.dead.push(d);
                }
            }
        }
        self.acks.push((sub.done, n));
        self.items_since.get_or_insert(now);
    }

    fn move_cursor(&mut self, name: Arc<str>, seq: u64, now: Instant) {
        let pos = self.cursors.entry(name).or_insert(seq);
        *pos = (*pos).max(seq);
        self.cursors_since.get_or_insert(now);
    }

    fn is_empty(&self) -> bool {
        self.acks.is_empty() && self.cursors.is_empty()
    }

    fn deadline(&self, cfg: &IngestConfig) -> Option<Instant> {
        let items = self.items_since.map(|t| t + cfg.commit_interval);
        let cursors = self.cursors_since.map(|t| t + cfg.cursor_flush_interval);
        match (items, cursors) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn full(&self, cfg: &IngestConfig) -> bool {
        self.records.len() + self.dead.len() >= cfg.commit_max_records
    }
}

async fn run(
    mut state: WriterState,
    cfg: IngestConfig,
    mut rx: mpsc::Receiver<Submission>,
    mut crx: mpsc::Receiver<(Arc<str>, u64)>,
) {
    let mut batch = Batch::default();
    let (mut items_open, mut cursors_open) = (true, true);
    loop {
        let closed = !items_open && !cursors_open;
        if closed && batch.is_empty() {
            break;
        }
        let deadline = batch.deadline(&cfg);
        let due = closed || batch.full(&cfg) || deadline.is_some_and(|d| d <= Instant::now());
        if !due {
            tokio::select! {
                sub = rx.recv(), if items_open => match sub {
                    Some(sub) => {
                        let now = Instant::now();
                        batch.add(sub, now, &state.metrics);
                        // Take what else is already queued, up to a full batch.
                        while !batch.full(&cfg) {
                            match rx.try_recv() {
                                Ok(sub) => batch.add(sub, now, &state.metrics),
                                Err(_) => break,
                            }
                        }
                    }
                    None => items_open = false,
                },
                mv = crx.recv(), if cursors_open => match mv {
                    Some((name, seq)) => batch.move_cursor(name, seq, Instant::now()),
                    None => cursors_open = false,
                },
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {}
            }
            continue;
        }
        let full = std::mem::take(&mut batch);
        let (back, full, result) = tokio::task::spawn_blocking(move || {
            let mut state = state;
            let mut full = full;
            let result = state.commit(&mut full);
            (state, full, result)
        })
        .await
        .expect("the ingest commit task panicked");
        state = back;
        state.finish(full, result, &mut batch);
    }
    info!("ingest writer stopped");
}

struct WriterState {
    store: Store,
    metrics: IngestMetrics,
    ids: HashMap<Arc<str>, u32>,
    names: Vec<Arc<str>>,
    buf: Vec<u8>,
}

impl WriterState {
    fn new(store: Store, metrics: IngestMetrics) -> Self {
        let names: Vec<Arc<str>> = store.names().snapshot().to_vec();
        let ids = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i as u32))
            .collect();
        metrics.head_seq.set(store.heads().records);
        WriterState {
            store,
            metrics,
            ids,
            names,
            buf: Vec::with_capacity(256),
        }
    }

    /// The id of `name`, interning it (in memory) if new.
    fn intern(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        let id = self.names.len() as u32;
        let name: Arc<str> = name.into();
        self.names.push(name.clone());
        self.ids.insert(name, id);
        id
    }

    /// Writes the batch in one durable transaction.
    fn commit(&mut self, batch: &mut Batch) -> Result<Heads, StoreError> {
        let started = std::time::Instant::now();
        let known = self.names.len();
        let result = self.write(batch, known);
        match &result {
            Ok(_) => {
                self.metrics
                    .commit_duration
                    .observe(started.elapsed().as_secs_f64());
            }
            Err(_) => {
                // Forget names that were never committed.
                for name in self.names.drain(known..) {
                    self.ids.remove(&name);
                }
            }
        }
        result
    }

    fn write(&mut self, batch: &Batch, known: usize) -> Result<Heads, StoreError> {
        let mut heads = self.store.heads();
        let tx = self.store.db().begin_write()?;
        {
            let mut records = tx.open_table(RECORDS)?;
            for r in &batch.records {
                let source = self.intern(&r.source);
                let device = self.intern(&r.device);
                let mut buf = std::mem::take(&mut self.buf);
                buf.clear();
                codec::put_record_header(&mut buf, r.ts, source, device, r.fields.len());
                for (name, value) in &r.fields {
                    let id = self.intern(name);
                    codec::put_field(&mut buf, id, value);
                }
                heads.records += 1;
                records.insert(heads.records, buf.as_slice())?;
                self.buf = buf;
            }
            let mut dead = tx.open_table(DEAD)?;
            for d in &batch.dead {
                let source = self.intern(&d.source);
                let mut buf = std::mem::take(&mut self.buf);
                buf.clear();
                codec::put_dead_letter(&mut buf, d, source);
                heads.dead += 1;
                dead.insert(heads.dead, buf.as_slice())?;
                self.buf = buf;
            }
            if self.names.len() > known {
                let mut names = tx.open_table(NAMES)?;
                for (id, name) in self.names.iter().enumerate().skip(known) {
                    names.insert(id as u32, &**name)?;
                }
                // Readers must know the names before the records that use them commit.
                self.store.names().publish(Arc::new(self.names.clone()));
            }
            let mut cursors = tx.open_table(CURSORS)?;
            for (name, &seq) in &batch.cursors {
                let old = cursors.get(&**name)?.map(|v| v.value()).unwrap_or(0);
                if seq > old {
                    cursors.insert(&**name, seq)?;
                }
            }
        }
        tx.commit()?;
        Ok(heads)
    }

    /// Tells every submitter the outcome. On failure, cursor moves go back
    /// into `next` to be tried again.
    fn finish(&mut self, batch: Batch, result: Result<Heads, StoreError>, next: &mut Batch) {
        match result {
            Ok(heads) => {
                let Batch {
                    records,
                    dead,
                    acks,
                    ..
                } = batch;
                self.metrics.commits.inc();
                self.metrics.records_stored.inc_by(records.len() as u64);
                self.metrics.dead_letters_stored.inc_by(dead.len() as u64);
                self.metrics.head_seq.set(heads.records);
                let mut seq = heads.records - records.len() as u64;
                for (done, n) in acks {
                    seq += n as u64;
                    let last_seq = (n > 0).then_some(seq);
                    if let Some(done) = done {
                        // A submitter that stopped waiting is no loss: the data is stored.
                        let _ = done.send(Ok(Committed { last_seq }));
                    }
                }
                debug!(
                    records = records.len(),
                    dead = dead.len(),
                    head = heads.records,
                    "committed"
                );
                self.store.heads_sender().send_replace(heads);
            }
            Err(e) => {
                self.metrics.commit_errors.inc();
                self.metrics
                    .records_failed
                    .inc_by(batch.records.len() as u64);
                error!(error = %e, records = batch.records.len(), "commit failed; sources are told and keep their data");
                let msg: Arc<str> = e.to_string().into();
                for (done, _) in batch.acks {
                    if let Some(done) = done {
                        let _ = done.send(Err(SubmitError::Store(msg.clone())));
                    }
                }
                let now = Instant::now();
                for (name, seq) in batch.cursors {
                    next.move_cursor(name, seq, now);
                }
            }
        }
    }
}
