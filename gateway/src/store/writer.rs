//! The ingest writer: the one task that writes to the store.
//!
//! Sources submit items through a [`Sink`]; uplinks move their cursors through
//! [`Cursors`]. The writer gathers both into group commits:
//!
//! - a batch opens when its first item arrives and is committed
//!   `commit_interval` later, or at once when it holds `commit_max_records`;
//! - cursor moves alone open a batch that commits `cursor_flush_interval`
//!   later (a cursor that lags only causes resends after a crash, so it is
//!   not worth a write of its own each time), or within `commit_interval`
//!   when moved with [`Cursors::advance_promptly`] (an uplink after a
//!   PUBACK: what a crash resends is then bounded by the inflight window
//!   and the acknowledgements of one commit interval);
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

use ferry_core::record::Record;
use ferry_core::sink::{Committed, Item, Sink, Submission, SubmitError};
use redb::{ReadableDatabase, ReadableTable};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use super::limits::{self, Limits, Registry};
use super::names::KNOWN_SERIES;
use super::retention::{entry_bytes, Retention, Usage, WhenFull, MAX_EVICT_PER_COMMIT};
use super::route_retention::{self, RouteStreams};
use super::{codec, Heads, IndexHook, Store, StoreError, CURSORS, DEAD, META, NAMES, RECORDS};
use crate::metrics::{IngestMetrics, ReasonLabel, RejectLabels, SourceLabel};

/// Group-commit settings.
#[derive(Debug, Clone)]
pub struct WriterSettings {
    pub commit_interval: Duration,
    pub commit_max_records: usize,
    pub cursor_flush_interval: Duration,
    /// Submissions queued before sources wait.
    pub queue: usize,
    /// Disk budget, maximum age and the policy when full.
    pub retention: Retention,
    /// The cursors of the consumers whose undelivered records retention
    /// protects (per `when_full`): one per configured uplink.
    pub consumers: Vec<Arc<str>>,
    /// The cursors of the uplinks sending a route's stream, as (route,
    /// cursor): what retention counts as delivered on route streams.
    pub route_consumers: Vec<(Arc<str>, Arc<str>)>,
    /// A secondary index written in the writer's transactions (the query
    /// index), if any.
    pub index: Option<Arc<dyn IndexHook>>,
    /// How many devices, series and fields per device are stored.
    pub limits: Limits,
}

impl Default for WriterSettings {
    fn default() -> Self {
        WriterSettings {
            commit_interval: Duration::from_millis(10),
            commit_max_records: 4096,
            cursor_flush_interval: Duration::from_secs(1),
            queue: 1024,
            retention: Retention::default(),
            consumers: Vec::new(),
            route_consumers: Vec::new(),
            index: None,
            limits: Limits::default(),
        }
    }
}

/// Moves consumers' cursors; the writer commits them with its next batch.
#[derive(Debug, Clone)]
pub struct Cursors {
    tx: mpsc::Sender<CursorMove>,
}

/// A consumer has finished with every sequence number up to `seq`.
#[derive(Debug)]
struct CursorMove {
    name: Arc<str>,
    seq: u64,
    /// Commit within `commit_interval` rather than `cursor_flush_interval`.
    prompt: bool,
}

impl Cursors {
    /// Records that the consumer `name` has finished with every sequence
    /// number up to `seq`. Durable after the writer's next commit, at the
    /// latest `cursor_flush_interval` from now.
    pub async fn advance(&self, name: &Arc<str>, seq: u64) -> Result<(), SubmitError> {
        self.send(name, seq, false).await
    }

    /// [`Cursors::advance`], durable within `commit_interval` (riding the
    /// next record commit when there is one).
    pub async fn advance_promptly(&self, name: &Arc<str>, seq: u64) -> Result<(), SubmitError> {
        self.send(name, seq, true).await
    }

    async fn send(&self, name: &Arc<str>, seq: u64, prompt: bool) -> Result<(), SubmitError> {
        let name = name.clone();
        self.tx
            .send(CursorMove { name, seq, prompt })
            .await
            .map_err(|_| SubmitError::Closed)
    }
}

/// The ingest writer, the store's one writer: what [`Writer::spawn`] hands
/// back to whoever submits to it.
pub struct Writer {
    pub sink: Sink,
    pub cursors: Cursors,
    /// Commits routes' output, state and cursor together. The writer does
    /// not wait for these handles to be dropped before it stops.
    pub routes: RouteCommits,
    /// Ends after the last sink and cursor handle are dropped and the final
    /// commit is done.
    pub task: JoinHandle<()>,
    /// When the writer's loop last turned: at least once a second while it
    /// is alive, idle or not. The systemd watchdog stops pinging when it
    /// goes stale.
    pub heartbeat: watch::Receiver<Instant>,
}

/// The longest the writer's loop waits before turning (and beating) again.
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);

impl Writer {
    /// Starts the ingest writer on `store`.
    pub fn spawn(store: Store, cfg: WriterSettings, metrics: IngestMetrics) -> Writer {
        let (sink, rx) = Sink::channel(cfg.queue);
        let (ctx, crx) = mpsc::channel(64);
        let (rtx, rrx) = mpsc::channel(16);
        let (beat, heartbeat) = watch::channel(Instant::now());
        let task = tokio::spawn(run(store, metrics, cfg, rx, crx, rrx, beat));
        Writer {
            sink,
            cursors: Cursors { tx: ctx },
            routes: RouteCommits { tx: rtx },
            task,
            heartbeat,
        }
    }
}

/// Where a submission's outcome is sent.
type Done = oneshot::Sender<Result<Committed, SubmitError>>;

/// A route's output records, new state and cursor (the last raw sequence
/// number it has processed), committed in one transaction with the next
/// group commit: exactly-once through a crash (see `route/`).
#[derive(Debug)]
pub struct RouteCommit {
    pub route: Arc<str>,
    /// Appended to the stream `route.NAME`.
    pub outputs: Vec<Record>,
    /// Replaces the route's entry in `route_state`.
    pub state: Vec<u8>,
    /// The route's cursor `route.NAME` moves here.
    pub through: u64,
}

/// Where a route commit's outcome (its stream's new head) is sent.
type RouteDone = oneshot::Sender<Result<u64, SubmitError>>;

/// Hands route commits to the writer.
#[derive(Debug, Clone)]
pub struct RouteCommits {
    tx: mpsc::Sender<(RouteCommit, RouteDone)>,
}

impl RouteCommits {
    /// Commits and waits; returns the head of the route's stream after it.
    pub async fn commit(&self, commit: RouteCommit) -> Result<u64, SubmitError> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send((commit, done))
            .await
            .map_err(|_| SubmitError::Closed)?;
        rx.await.unwrap_or(Err(SubmitError::Closed))
    }
}

/// Items and cursor moves waiting for the next commit.
#[derive(Default)]
struct Batch {
    records: Vec<Record>,
    dead: Vec<ferry_core::record::DeadLetter>,
    /// Each submission's receipt and how many records it brought.
    acks: Vec<(Option<Done>, usize)>,
    cursors: BTreeMap<Arc<str>, u64>,
    routes: Vec<(RouteCommit, RouteDone)>,
    /// When the items gathered so far must be committed: the earliest of
    /// their submission's time plus its `max_delay` (default: the commit
    /// interval).
    items_due: Option<Instant>,
    cursors_since: Option<Instant>,
    /// When prompt cursor moves must be committed.
    cursors_due: Option<Instant>,
    /// While ingest is blocked (`when_full = "block"`): when to look again.
    retry_at: Option<Instant>,
}

impl Batch {
    fn add(
        &mut self,
        sub: Submission,
        now: Instant,
        cfg: &WriterSettings,
        metrics: &IngestMetrics,
    ) {
        self.due_by(sub.submitted.min(now) + sub.max_delay.unwrap_or(cfg.commit_interval));
        let mut n = 0;
        // Counted per run of one source (a submission is usually one run):
        // a label lookup per record costs more than the rest of `add`.
        let mut run: Option<(Arc<str>, u64)> = None;
        let count = |run: (Arc<str>, u64)| {
            metrics
                .records_received
                .get_or_create(&SourceLabel {
                    source: run.0.to_string(),
                })
                .inc_by(run.1);
        };
        for item in sub.items {
            match item {
                Item::Record(r) => {
                    match &mut run {
                        Some((source, k)) if **source == *r.source => *k += 1,
                        _ => {
                            if let Some(done) = run.replace((r.source.clone(), 1)) {
                                count(done);
                            }
                        }
                    }
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
        if let Some(done) = run {
            count(done);
        }
        self.acks.push((sub.done, n));
    }

    fn due_by(&mut self, at: Instant) {
        self.items_due = Some(self.items_due.map_or(at, |due| due.min(at)));
    }

    fn move_cursor(&mut self, name: Arc<str>, seq: u64, now: Instant) {
        let pos = self.cursors.entry(name).or_insert(seq);
        *pos = (*pos).max(seq);
        self.cursors_since.get_or_insert(now);
    }

    fn cursors_due_by(&mut self, at: Instant) {
        self.cursors_due = Some(self.cursors_due.map_or(at, |due| due.min(at)));
    }

    fn is_empty(&self) -> bool {
        self.acks.is_empty() && self.cursors.is_empty() && self.routes.is_empty()
    }

    fn deadline(&self, cfg: &WriterSettings) -> Option<Instant> {
        let items = match self.retry_at {
            Some(retry) => Some(retry),
            None => self.items_due,
        };
        let cursors = self.cursors_since.map(|t| t + cfg.cursor_flush_interval);
        [items, cursors, self.cursors_due]
            .into_iter()
            .flatten()
            .min()
    }

    /// Puts a held batch's items back in front of what came since.
    fn hold(&mut self, held: Batch, retry_at: Instant) {
        let mut records = held.records;
        records.append(&mut self.records);
        self.records = records;
        let mut dead = held.dead;
        dead.append(&mut self.dead);
        self.dead = dead;
        let mut acks = held.acks;
        acks.append(&mut self.acks);
        self.acks = acks;
        if let Some(due) = held.items_due {
            self.due_by(due);
        }
        self.retry_at = Some(retry_at);
    }

    fn full(&self, cfg: &WriterSettings) -> bool {
        self.records.len() + self.dead.len() >= cfg.commit_max_records
    }
}

/// The batch's deadline, but no later than one heartbeat from now.
fn next_turn(deadline: Option<Instant>) -> Instant {
    let beat = Instant::now() + HEARTBEAT_INTERVAL;
    deadline.map_or(beat, |d| d.min(beat))
}

async fn run(
    store: Store,
    metrics: IngestMetrics,
    cfg: WriterSettings,
    mut rx: mpsc::Receiver<Submission>,
    mut crx: mpsc::Receiver<CursorMove>,
    mut rrx: mpsc::Receiver<(RouteCommit, RouteDone)>,
    beat: watch::Sender<Instant>,
) {
    let init = {
        let cfg = cfg.clone();
        tokio::task::spawn_blocking(move || WriterState::new(store, metrics, &cfg))
    };
    let mut state = match init.await.expect("the ingest start task panicked") {
        Ok(state) => state,
        Err(e) => {
            error!(error = %e, "ingest cannot read the store; it accepts nothing");
            return;
        }
    };
    let mut batch = Batch::default();
    let (mut items_open, mut cursors_open, mut routes_open) = (true, true, true);
    loop {
        beat.send_replace(Instant::now());
        let closed = !items_open && !cursors_open;
        if closed && batch.is_empty() {
            break;
        }
        let deadline = batch.deadline(&cfg);
        let due = closed || batch.full(&cfg) || deadline.is_some_and(|d| d <= Instant::now());
        if !due {
            tokio::select! {
                sub = rx.recv(), if items_open && !state.blocked => match sub {
                    Some(sub) => {
                        let now = Instant::now();
                        batch.add(sub, now, &cfg, &state.metrics);
                        // Take what else is already queued, up to a full batch.
                        while !batch.full(&cfg) {
                            match rx.try_recv() {
                                Ok(sub) => batch.add(sub, now, &cfg, &state.metrics),
                                Err(_) => break,
                            }
                        }
                    }
                    None => items_open = false,
                },
                mv = crx.recv(), if cursors_open => match mv {
                    Some(mv) => {
                        let now = Instant::now();
                        if mv.prompt {
                            batch.cursors_due_by(now + cfg.commit_interval);
                        }
                        batch.move_cursor(mv.name, mv.seq, now);
                    }
                    None => cursors_open = false,
                },
                rc = rrx.recv(), if routes_open => match rc {
                    Some(rc) => {
                        // A route behind the log commits at once: it reads at
                        // most `batch_records` per commit, so waiting for the
                        // interval would cap it at that many per interval.
                        let behind = rc.0.through < state.store.heads().records;
                        batch.routes.push(rc);
                        let wait = if behind { Duration::ZERO } else { cfg.commit_interval };
                        batch.due_by(Instant::now() + wait);
                    }
                    None => routes_open = false,
                },
                _ = tokio::time::sleep_until(next_turn(deadline)) => {}
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
        state.finish(full, result, &mut batch, &cfg);
        if state.blocked && !items_open && !cursors_open {
            // Shutting down with no room: the held submissions are refused,
            // so their sources keep them (a subscriber does not acknowledge).
            for (done, _) in std::mem::take(&mut batch.acks) {
                if let Some(done) = done {
                    let _ = done.send(Err(SubmitError::Store(
                        "shut down while the store was full".into(),
                    )));
                }
            }
            batch = Batch::default();
        }
    }
    info!("ingest writer stopped");
}

/// What became of a batch's records.
enum Disposition {
    Stored,
    /// `drop_newest` with the budget reached: counted and acknowledged.
    Dropped,
    /// `block` with the budget reached: kept in memory, sources wait.
    Held,
}

struct Written {
    heads: Heads,
    records: Disposition,
    /// Records refused by the name limits (by their index in the batch),
    /// stored as these dead letters.
    refused: Vec<(usize, ferry_core::record::DeadLetter)>,
}

/// How often the front of the log is checked against `max_age`.
const AGE_CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// How often the byte account is saved when nothing is evicted.
const USAGE_SAVE_INTERVAL: Duration = Duration::from_secs(60);
/// How often a blocked ingest looks for room when no cursor moves.
const BLOCKED_RETRY: Duration = Duration::from_secs(1);

struct WriterState {
    store: Store,
    metrics: IngestMetrics,
    ids: foldhash::HashMap<Arc<str>, u32>,
    names: Vec<Arc<str>>,
    buf: Vec<u8>,
    retention: Retention,
    /// Committed positions of the protected consumers.
    consumers: HashMap<Arc<str>, u64>,
    usage: Usage,
    usage_saved: std::time::Instant,
    age_checked: std::time::Instant,
    /// An eviction or drop episode is under way: (reason, records so far).
    episode: Option<(&'static str, u64)>,
    blocked: bool,
    /// The heads of the route streams the current commit writes.
    route_heads: Vec<(Arc<str>, u64)>,
    /// The route output streams' accounts.
    routes: RouteStreams,
    index: Option<Arc<dyn IndexHook>>,
    /// The known series and the name limits.
    registry: Registry,
}

impl WriterState {
    /// Loads names, cursors and the byte account (reading only what was
    /// written since the account was last saved).
    fn new(store: Store, metrics: IngestMetrics, cfg: &WriterSettings) -> Result<Self, StoreError> {
        let names: Vec<Arc<str>> = store.names().snapshot().to_vec();
        let ids = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i as u32))
            .collect();
        let heads = store.heads();
        metrics.head_seq.set(heads.records);
        let tx = store.db()?.begin_read()?;
        let cursors = tx.open_table(CURSORS)?;
        let mut consumers = HashMap::new();
        for name in &cfg.consumers {
            let pos = cursors.get(&**name)?.map(|v| v.value()).unwrap_or(0);
            consumers.insert(name.clone(), pos);
        }
        let meta = tx.open_table(META)?;
        let get =
            |k: &str| -> Result<Option<u64>, StoreError> { Ok(meta.get(k)?.map(|v| v.value())) };
        let (mut usage, as_of_record, as_of_dead) = match (
            get("usage.record_bytes")?,
            get("usage.dead_bytes")?,
            get("usage.as_of_record")?,
            get("usage.as_of_dead")?,
        ) {
            (Some(r), Some(d), Some(ar), Some(ad)) => (
                Usage {
                    record_bytes: r,
                    dead_bytes: d,
                    ..Usage::default()
                },
                ar,
                ad,
            ),
            _ => (Usage::default(), 0, 0),
        };
        let records = tx.open_table(RECORDS)?;
        for entry in records.range(as_of_record.saturating_add(1)..)? {
            usage.record_bytes += entry_bytes(entry?.1.value().len());
        }
        usage.first_record = records
            .first()?
            .map_or(heads.records + 1, |(k, _)| k.value());
        let dead = tx.open_table(DEAD)?;
        for entry in dead.range(as_of_dead.saturating_add(1)..)? {
            usage.dead_bytes += entry_bytes(entry?.1.value().len());
        }
        usage.first_dead = dead.first()?.map_or(heads.dead + 1, |(k, _)| k.value());
        let routes = RouteStreams::load(&tx, &cfg.route_consumers)?;
        let registry = Registry::new(cfg.limits, &super::names::known_series(&tx)?);
        usage.route_bytes = routes.total();
        let now = std::time::Instant::now();
        let state = WriterState {
            store,
            metrics,
            ids,
            names,
            buf: Vec::with_capacity(256),
            retention: cfg.retention.clone(),
            consumers,
            usage,
            usage_saved: now,
            age_checked: now - AGE_CHECK_INTERVAL,
            episode: None,
            blocked: false,
            route_heads: Vec::new(),
            routes,
            index: cfg.index.clone(),
            registry,
        };
        state.update_gauges(heads);
        state.metrics.store_writable.set(1);
        state.metrics.devices.set(state.registry.devices() as i64);
        state.metrics.series.set(state.registry.series() as i64);
        Ok(state)
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
    fn commit(&mut self, batch: &mut Batch) -> Result<Written, StoreError> {
        let started = std::time::Instant::now();
        let known = self.names.len();
        let (usage, consumers, episode) = (self.usage, self.consumers.clone(), self.episode);
        let routes = self.routes.clone();
        let result = self.write(batch, known);
        match &result {
            Ok(w) => {
                self.metrics
                    .commit_duration
                    .observe(started.elapsed().as_secs_f64());
                let added = !self.registry.pending().is_empty();
                let stored_any = matches!(w.records, Disposition::Stored)
                    && w.refused.len() < batch.records.len();
                self.registry.committed(stored_any, &w.refused);
                if added {
                    self.store
                        .names()
                        .publish_devices(Arc::new(self.registry.devices_map(&self.names)));
                }
                self.metrics.devices.set(self.registry.devices() as i64);
                self.metrics.series.set(self.registry.series() as i64);
            }
            Err(e) => {
                if e.needs_reopen() {
                    // redb refuses all work after an I/O error until reopened;
                    // the next commit tries again either way.
                    if let Err(e) = self.store.reopen() {
                        warn!(error = %e, "cannot reopen the store yet");
                    }
                }
                // Undo what the failed transaction would have done.
                if let Some(index) = &self.index {
                    index.abort();
                }
                for name in self.names.drain(known..) {
                    self.ids.remove(&name);
                }
                self.registry.aborted();
                self.usage = usage;
                self.consumers = consumers;
                self.routes = routes;
                self.episode = episode;
            }
        }
        result
    }

    fn write(&mut self, batch: &Batch, known: usize) -> Result<Written, StoreError> {
        let mut heads = self.store.heads();
        if let Some(index) = &self.index {
            index.wants_write(true);
        }
        let tx = self.store.db().and_then(|db| Ok(db.begin_write()?));
        if let Some(index) = &self.index {
            index.wants_write(false);
        }
        let tx = tx?;
        if let Some(index) = &self.index {
            index.begin(&tx, heads)?;
        }
        let mut evicted_any = false;
        let mut refused = Vec::new();
        let disposition;
        {
            let mut cursors = tx.open_table(CURSORS)?;
            for (name, &seq) in &batch.cursors {
                let old = cursors.get(&**name)?.map(|v| v.value()).unwrap_or(0);
                if seq > old {
                    cursors.insert(&**name, seq)?;
                }
                if let Some(pos) = self.consumers.get_mut(name) {
                    *pos = (*pos).max(seq);
                }
                self.routes.move_cursor(name, seq);
            }
            for (rc, _) in &batch.routes {
                let head = self.write_route(&tx, rc)?;
                let name: Arc<str> = format!("route.{}", rc.route).into();
                let old = cursors.get(&*name)?.map(|v| v.value()).unwrap_or(0);
                if rc.through > old {
                    cursors.insert(&*name, rc.through)?;
                }
                if let Some(pos) = self.consumers.get_mut(&name) {
                    *pos = (*pos).max(rc.through);
                }
                self.route_heads.push((rc.route.clone(), head));
            }
            let mut records = tx.open_table(RECORDS)?;
            let mut dead = tx.open_table(DEAD)?;
            evicted_any |= self.evict_dead(&mut dead)?;
            evicted_any |= self.evict_aged(&tx, &mut records)?;
            let avg = if heads.records >= self.usage.first_record {
                self.usage.record_bytes / (heads.records - self.usage.first_record + 1)
            } else {
                64
            };
            let incoming = avg * batch.records.len() as u64;
            let (evicted, room) = self.evict_for_budget(&tx, &mut records, incoming)?;
            evicted_any |= evicted;
            disposition = if batch.records.is_empty() || room {
                Disposition::Stored
            } else {
                match self.retention.when_full {
                    WhenFull::DropNewest => Disposition::Dropped,
                    _ => Disposition::Held,
                }
            };
            if matches!(disposition, Disposition::Held) {
                // Nothing of the batch is written; its cursor moves and evictions are.
            } else {
                if matches!(disposition, Disposition::Stored) {
                    for (i, r) in batch.records.iter().enumerate() {
                        let device = self.ids.get(&*r.device).copied();
                        let ids = &self.ids;
                        let field_ids = r.fields.iter().map(|(n, _)| ids.get(&**n).copied());
                        if let Some((kind, reason)) = self.registry.check(r, device, field_ids) {
                            refused.push((i, limits::dead_letter(r, kind, reason)));
                            continue;
                        }
                        let source = self.intern(&r.source);
                        let device = self.intern(&r.device);
                        let mut buf = std::mem::take(&mut self.buf);
                        buf.clear();
                        codec::put_record_header(&mut buf, r.ts, source, device, r.fields.len());
                        for (name, value) in &r.fields {
                            let id = self.intern(name);
                            self.registry.add(device, id);
                            codec::put_field(&mut buf, id, value);
                        }
                        heads.records += 1;
                        records.insert(heads.records, buf.as_slice())?;
                        if let Some(index) = &self.index {
                            index.record(heads.records, &buf);
                        }
                        self.usage.record_bytes += entry_bytes(buf.len());
                        self.buf = buf;
                    }
                }
                for d in batch.dead.iter().chain(refused.iter().map(|(_, d)| d)) {
                    let source = self.intern(&d.source);
                    let mut buf = std::mem::take(&mut self.buf);
                    buf.clear();
                    codec::put_dead_letter(&mut buf, d, source);
                    heads.dead += 1;
                    dead.insert(heads.dead, buf.as_slice())?;
                    self.usage.dead_bytes += entry_bytes(buf.len());
                    self.buf = buf;
                }
            }
            if !self.registry.pending().is_empty() {
                let mut known = tx.open_table(KNOWN_SERIES)?;
                for &s in self.registry.pending() {
                    known.insert(s, ())?;
                }
            }
            if self.names.len() > known {
                let mut names = tx.open_table(NAMES)?;
                for (id, name) in self.names.iter().enumerate().skip(known) {
                    names.insert(id as u32, &**name)?;
                }
                // Readers must know the names before the records that use them commit.
                self.store.names().publish(Arc::new(self.names.clone()));
            }
            if self.usage.first_record == 0 {
                self.usage.first_record = 1;
            }
            if evicted_any || self.usage_saved.elapsed() >= USAGE_SAVE_INTERVAL {
                let mut meta = tx.open_table(META)?;
                meta.insert("usage.record_bytes", self.usage.record_bytes)?;
                meta.insert("usage.dead_bytes", self.usage.dead_bytes)?;
                meta.insert("usage.as_of_record", heads.records)?;
                meta.insert("usage.as_of_dead", heads.dead)?;
                drop(meta);
                self.routes.save(&tx)?;
                self.usage_saved = std::time::Instant::now();
            }
        }
        let index_wrote = match &self.index {
            Some(index) => index.finish(&tx, self.usage.first_record)?,
            None => false,
        };
        if batch.is_empty() && !evicted_any && !index_wrote {
            tx.abort()?;
        } else {
            tx.commit()?;
        }
        Ok(Written {
            heads,
            records: disposition,
            refused,
        })
    }

    /// Appends a route's outputs to its stream and replaces its state;
    /// returns the stream's new head.
    fn write_route(
        &mut self,
        tx: &redb::WriteTransaction,
        rc: &RouteCommit,
    ) -> Result<u64, StoreError> {
        let name = super::Stream::Route(rc.route.clone()).table();
        let mut table = tx.open_table(redb::TableDefinition::<u64, &[u8]>::new(&name))?;
        let mut meta = tx.open_table(META)?;
        let head_key = route_retention::head_key(&rc.route);
        // The saved head too: eviction may have emptied the stream.
        let mut head = table
            .last()?
            .map_or(0, |(k, _)| k.value())
            .max(meta.get(&*head_key)?.map_or(0, |v| v.value()));
        for r in &rc.outputs {
            let source = self.intern(&r.source);
            let device = self.intern(&r.device);
            let mut buf = std::mem::take(&mut self.buf);
            buf.clear();
            codec::put_record_header(&mut buf, r.ts, source, device, r.fields.len());
            for (field, value) in &r.fields {
                let id = self.intern(field);
                codec::put_field(&mut buf, id, value);
            }
            head += 1;
            table.insert(head, buf.as_slice())?;
            let bytes = entry_bytes(buf.len());
            self.routes.added(&rc.route, bytes);
            self.usage.route_bytes += bytes;
            self.buf = buf;
        }
        if !rc.outputs.is_empty() {
            meta.insert(&*head_key, head)?;
        }
        tx.open_table(super::ROUTE_STATE)?
            .insert(&*rc.route, rc.state.as_slice())?;
        Ok(head)
    }

    /// The highest sequence number every protected consumer has delivered.
    fn delivered(&self) -> u64 {
        self.consumers.values().copied().min().unwrap_or(u64::MAX)
    }

    /// Evicts dead letters beyond their share of the budget.
    fn evict_dead(
        &mut self,
        dead: &mut redb::Table<u64, &'static [u8]>,
    ) -> Result<bool, StoreError> {
        let mut need = self.usage.dead_to_free(&self.retention);
        let mut n = 0u64;
        while need > 0 && n < MAX_EVICT_PER_COMMIT as u64 {
            let Some((k, v)) = dead.pop_first()? else {
                break;
            };
            let bytes = entry_bytes(v.value().len());
            self.usage.first_dead = k.value() + 1;
            drop((k, v));
            self.usage.dead_bytes -= bytes.min(self.usage.dead_bytes);
            need = need.saturating_sub(bytes);
            n += 1;
        }
        if n > 0 {
            self.metrics.dead_letters_evicted.inc_by(n);
        }
        Ok(n > 0)
    }

    /// Evicts records older than `max_age` from the front of the log and
    /// of the route streams.
    fn evict_aged(
        &mut self,
        tx: &redb::WriteTransaction,
        records: &mut redb::Table<u64, &'static [u8]>,
    ) -> Result<bool, StoreError> {
        let Some(max_age) = self.retention.max_age else {
            return Ok(false);
        };
        if self.age_checked.elapsed() < AGE_CHECK_INTERVAL {
            return Ok(false);
        }
        self.age_checked = std::time::Instant::now();
        let cutoff = ferry_core::record::now_millis() - max_age.as_millis() as i64;
        let mut n = 0;
        while n < MAX_EVICT_PER_COMMIT {
            let old = match records.first()? {
                Some((_, v)) => match codec::record_ts(v.value()) {
                    Ok(ts) => ts < cutoff,
                    Err(_) => true, // undecodable: nothing to keep
                },
                None => false,
            };
            if !old {
                break;
            }
            self.pop_record(records, "max_age")?;
            n += 1;
        }
        let before = self.routes.total();
        let routed = self
            .routes
            .evict_aged(tx, cutoff, MAX_EVICT_PER_COMMIT - n, &self.metrics)?;
        self.usage.route_bytes -= (before - self.routes.total()).min(self.usage.route_bytes);
        Ok(n + routed > 0)
    }

    /// Frees room for `incoming` more bytes within the budget, as the policy
    /// allows: delivered raw records, then delivered route entries, then
    /// (`drop_oldest`) undelivered raw records, then undelivered route
    /// entries (see `route_retention`). Returns whether anything was evicted
    /// and whether there is room.
    fn evict_for_budget(
        &mut self,
        tx: &redb::WriteTransaction,
        records: &mut redb::Table<u64, &'static [u8]>,
        incoming: u64,
    ) -> Result<(bool, bool), StoreError> {
        let mut planned = self.usage;
        planned.record_bytes += incoming;
        let mut need = planned.records_to_free(&self.retention);
        if need == 0 {
            self.end_episode();
            return Ok((false, true));
        }
        let drop_oldest = self.retention.when_full == WhenFull::DropOldest;
        let mut n = 0;
        for undelivered in [false, true] {
            if undelivered && !drop_oldest {
                break;
            }
            let (reason, upto) = if undelivered {
                ("disk_budget_undelivered", u64::MAX)
            } else {
                ("disk_budget", self.delivered())
            };
            while need > 0 && n < MAX_EVICT_PER_COMMIT && self.usage.first_record <= upto {
                let Some(bytes) = self.pop_record(records, reason)? else {
                    break;
                };
                need = need.saturating_sub(bytes);
                n += 1;
            }
            if need > 0 && n < MAX_EVICT_PER_COMMIT {
                let (freed, routed) = self.routes.evict_for_budget(
                    tx,
                    need,
                    undelivered,
                    MAX_EVICT_PER_COMMIT - n,
                    &self.metrics,
                )?;
                self.usage.route_bytes -= freed.min(self.usage.route_bytes);
                need = need.saturating_sub(freed);
                n += routed;
                if routed > 0 {
                    self.count_episode(reason, routed as u64);
                }
            }
        }
        let mut after = self.usage;
        after.record_bytes += incoming;
        let room = after.file_bytes() <= self.retention.max_disk;
        Ok((n > 0, room))
    }

    /// Evicts the first record; its accounted bytes, or None if empty.
    fn pop_record(
        &mut self,
        records: &mut redb::Table<u64, &'static [u8]>,
        reason: &'static str,
    ) -> Result<Option<u64>, StoreError> {
        let Some((k, v)) = records.pop_first()? else {
            return Ok(None);
        };
        let bytes = entry_bytes(v.value().len());
        self.usage.first_record = k.value() + 1;
        drop((k, v));
        self.usage.record_bytes -= bytes.min(self.usage.record_bytes);
        self.count_episode(reason, 1);
        self.metrics
            .records_evicted
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
        Ok(Some(bytes))
    }

    fn count_episode(&mut self, reason: &'static str, n: u64) {
        match &mut self.episode {
            Some((_, count)) => *count += n,
            None => {
                warn!(
                    reason,
                    max_disk = self.retention.max_disk,
                    policy = ?self.retention.when_full,
                    "store budget reached: evicting or dropping records (counted in ferry_ingest_records_evicted_total / _dropped_total)"
                );
                self.episode = Some((reason, n));
            }
        }
    }

    fn end_episode(&mut self) {
        if let Some((reason, n)) = self.episode.take() {
            info!(reason, records = n, "store back within its budget");
        }
    }

    fn update_gauges(&self, heads: Heads) {
        self.metrics
            .store_estimated_bytes
            .set(self.usage.file_bytes());
        self.metrics
            .store_records
            .set((heads.records + 1).saturating_sub(self.usage.first_record));
        self.metrics.ingest_blocked.set(i64::from(self.blocked));
        if let Ok(m) = std::fs::metadata(self.store.path()) {
            self.metrics.store_file_bytes.set(m.len());
        }
    }

    /// Tells every submitter the outcome. On failure, cursor moves go back
    /// into `next` to be tried again; a held batch goes back whole.
    fn finish(
        &mut self,
        mut batch: Batch,
        result: Result<Written, StoreError>,
        next: &mut Batch,
        cfg: &WriterSettings,
    ) {
        self.metrics.store_writable.set(i64::from(result.is_ok()));
        let route_heads = std::mem::take(&mut self.route_heads);
        for (i, (_, done)) in std::mem::take(&mut batch.routes).into_iter().enumerate() {
            let outcome = match (&result, route_heads.get(i)) {
                (Ok(_), Some((route, head))) => {
                    self.store.set_route_head(route, *head);
                    Ok(*head)
                }
                (Err(e), _) => Err(SubmitError::Store(e.to_string().into())),
                (Ok(_), None) => Err(SubmitError::Store("route commit not written".into())),
            };
            // A route that stopped waiting re-reads its state when it starts.
            let _ = done.send(outcome);
        }
        match result {
            Ok(Written {
                heads,
                records: Disposition::Held,
                ..
            }) => {
                if !self.blocked {
                    warn!(
                        max_disk = self.retention.max_disk,
                        "store budget reached and nothing delivered to evict: ingest blocks until uplinks catch up"
                    );
                }
                self.blocked = true;
                self.metrics.commits.inc();
                self.update_gauges(heads);
                self.store.heads_sender().send_replace(heads);
                let Batch {
                    records,
                    dead,
                    acks,
                    items_due,
                    ..
                } = batch;
                next.hold(
                    Batch {
                        records,
                        dead,
                        acks,
                        items_due,
                        ..Batch::default()
                    },
                    Instant::now()
                        + BLOCKED_RETRY.min(cfg.cursor_flush_interval.max(cfg.commit_interval)),
                );
            }
            Ok(Written {
                heads,
                records: disposition,
                refused,
            }) => {
                if self.blocked {
                    info!("store has room again: ingest resumes");
                    self.blocked = false;
                }
                let Batch {
                    records,
                    dead,
                    acks,
                    ..
                } = batch;
                let stored = matches!(disposition, Disposition::Stored);
                for (_, d) in &refused {
                    self.metrics
                        .records_rejected
                        .get_or_create(&RejectLabels {
                            source: d.source.to_string(),
                            reason: d.kind.to_owned(),
                        })
                        .inc();
                }
                let stored_records = records.len() - refused.len();
                if stored {
                    self.metrics.records_stored.inc_by(stored_records as u64);
                } else {
                    self.count_episode("disk_full", records.len() as u64);
                    self.metrics
                        .records_dropped
                        .get_or_create(&ReasonLabel {
                            reason: "disk_full".to_owned(),
                        })
                        .inc_by(records.len() as u64);
                }
                self.metrics.commits.inc();
                self.metrics
                    .dead_letters_stored
                    .inc_by((dead.len() + refused.len()) as u64);
                self.metrics.head_seq.set(heads.records);
                self.update_gauges(heads);
                // Heads first: a submitter that reads them after its receipt sees its records.
                self.store.heads_sender().send_replace(heads);
                let mut seq = heads.records - if stored { stored_records as u64 } else { 0 };
                // Records refused by the name limits have no sequence number.
                let mut refused = refused.iter().map(|(i, _)| *i).peekable();
                let mut at = 0usize;
                for (done, n) in acks {
                    let end = at + n;
                    let mut kept = n;
                    while refused.next_if(|&i| i < end).is_some() {
                        kept -= 1;
                    }
                    at = end;
                    let last_seq = if stored && kept > 0 {
                        seq += kept as u64;
                        Some(seq)
                    } else {
                        None
                    };
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
