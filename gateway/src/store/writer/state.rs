//! What the writer holds between commits ([`WriterState`]), loaded from the
//! store at start, and what a commit reports back ([`Written`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use redb::{ReadableDatabase, ReadableTable};

use super::WriterSettings;
use crate::metrics::IngestMetrics;
use crate::store::limits::Registry;
use crate::store::retention::{entry_bytes, Retention, Usage};
use crate::store::route_retention::RouteStreams;
use crate::store::{Heads, IndexHook, Store, StoreError, CURSORS, DEAD, META, RECORDS};

/// What became of a batch's records.
pub(super) enum Disposition {
    Stored,
    /// `drop_newest` with the budget reached: counted and acknowledged.
    Dropped,
    /// `block` with the budget reached: kept in memory, sources wait.
    Held,
}

pub(super) struct Written {
    pub(super) heads: Heads,
    pub(super) records: Disposition,
    /// Records refused by the name limits (by their index in the batch),
    /// stored as these dead letters.
    pub(super) refused: Vec<(usize, ferry_core::record::DeadLetter)>,
}

/// How often the front of the log is checked against `max_age`.
pub(super) const AGE_CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// How often the byte account is saved when nothing is evicted.
pub(super) const USAGE_SAVE_INTERVAL: Duration = Duration::from_secs(60);
/// How often a blocked ingest looks for room when no cursor moves.
pub(super) const BLOCKED_RETRY: Duration = Duration::from_secs(1);

pub(super) struct WriterState {
    pub(super) store: Store,
    pub(super) metrics: IngestMetrics,
    pub(super) ids: foldhash::HashMap<Arc<str>, u32>,
    pub(super) names: Vec<Arc<str>>,
    pub(super) buf: Vec<u8>,
    pub(super) retention: Retention,
    /// Committed positions of the protected consumers.
    pub(super) consumers: HashMap<Arc<str>, u64>,
    pub(super) usage: Usage,
    pub(super) usage_saved: std::time::Instant,
    pub(super) age_checked: std::time::Instant,
    /// An eviction or drop episode is under way: (reason, records so far).
    pub(super) episode: Option<(&'static str, u64)>,
    pub(super) blocked: bool,
    /// The heads of the route streams the current commit writes.
    pub(super) route_heads: Vec<(Arc<str>, u64)>,
    /// The route output streams' accounts.
    pub(super) routes: RouteStreams,
    pub(super) index: Option<Arc<dyn IndexHook>>,
    /// The known series and the name limits.
    pub(super) registry: Registry,
}

impl WriterState {
    /// Loads names, cursors and the byte account (reading only what was
    /// written since the account was last saved).
    pub(super) fn new(
        store: Store,
        metrics: IngestMetrics,
        cfg: &WriterSettings,
    ) -> Result<Self, StoreError> {
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
        let known = crate::store::names::known_series(&tx)?;
        let registry = Registry::new(cfg.limits, &known, heads.records);
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
    pub(super) fn intern(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        let id = self.names.len() as u32;
        let name: Arc<str> = name.into();
        self.names.push(name.clone());
        self.ids.insert(name, id);
        id
    }

    pub(super) fn update_gauges(&self, heads: Heads) {
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
}
