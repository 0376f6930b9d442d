//! Retention of the route output streams (`route.NAME`), beside the raw one.
//!
//! Each route stream has its own byte account (same per-entry measure as
//! the raw stream), saved in `meta` with the raw account and brought up to
//! date at open by reading only what was appended since. The accounts count
//! in the store's disk budget like raw records, and:
//! - entries older than `max_age` (by their timestamp: a window's start) are
//!   evicted, delivered or not (reason `max_age`);
//! - when the budget must be freed, route entries go after raw records of
//!   the same kind: delivered raw records, then delivered route entries,
//!   then (under `drop_oldest`) undelivered raw records, then undelivered
//!   route entries. So the aggregates that summarise raw data outlive it
//!   unless the budget is still exceeded, and nothing an uplink has not
//!   sent goes while something it has sent can. Across routes, the oldest
//!   entry (by timestamp) goes first.
//!
//! An entry is delivered when every uplink sending the route (`route =
//! "NAME"`) has its cursor at or past it; a route no uplink sends is
//! delivered as soon as it is written (it is kept for local queries only).
//! Evictions are counted in `ferry_ingest_route_records_evicted_total{route,
//! reason}`. A stream's head is saved in `meta` (`route_head.NAME`), so
//! sequence numbers are never reused when eviction empties it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use ferry_core::record::Millis;
use redb::{ReadableTable, TableDefinition, TableHandle};

use super::retention::entry_bytes;
use super::{codec, StoreError, CURSORS, META};
use crate::metrics::{IngestMetrics, RouteReasonLabels};

type StreamTable<'t> = redb::Table<'t, u64, &'static [u8]>;

/// The table prefix of route streams.
const PREFIX: &str = "route.";

fn table_def(route: &str) -> String {
    format!("{PREFIX}{route}")
}

/// The `meta` key holding a route stream's head.
pub(crate) fn head_key(route: &str) -> String {
    format!("route_head.{route}")
}

fn bytes_key(route: &str) -> String {
    format!("usage.route_bytes.{route}")
}

fn as_of_key(route: &str) -> String {
    format!("usage.route_as_of.{route}")
}

/// The byte accounts of the route streams and what their uplinks delivered.
#[derive(Clone, Debug, Default)]
pub(crate) struct RouteStreams {
    /// Route → accounted bytes of its stream.
    bytes: BTreeMap<Arc<str>, u64>,
    /// Route → the cursors of the uplinks sending it.
    consumers: BTreeMap<Arc<str>, Vec<Arc<str>>>,
    /// Cursor → its committed position on its route's stream.
    positions: HashMap<Arc<str>, u64>,
}

impl RouteStreams {
    /// Reads the accounts of every route stream in the store (configured or
    /// not: a removed route's stream still takes room) and the positions of
    /// `consumers` ((route, uplink cursor) pairs).
    pub fn load(
        tx: &redb::ReadTransaction,
        consumers: &[(Arc<str>, Arc<str>)],
    ) -> Result<RouteStreams, StoreError> {
        let meta = tx.open_table(META)?;
        let get =
            |k: &str| -> Result<Option<u64>, StoreError> { Ok(meta.get(k)?.map(|v| v.value())) };
        let mut streams = RouteStreams::default();
        let names: Vec<String> = tx
            .list_tables()?
            .filter_map(|t| t.name().strip_prefix(PREFIX).map(str::to_owned))
            .collect();
        for route in names {
            let table = tx.open_table(TableDefinition::<u64, &[u8]>::new(&table_def(&route)))?;
            let (mut bytes, as_of) = match (get(&bytes_key(&route))?, get(&as_of_key(&route))?) {
                (Some(b), Some(a)) => (b, a),
                _ => (0, 0),
            };
            for entry in table.range(as_of.saturating_add(1)..)? {
                bytes += entry_bytes(entry?.1.value().len());
            }
            streams.bytes.insert(route.into(), bytes);
        }
        let cursors = tx.open_table(CURSORS)?;
        for (route, cursor) in consumers {
            let pos = cursors.get(&**cursor)?.map_or(0, |v| v.value());
            streams.positions.insert(cursor.clone(), pos);
            streams
                .consumers
                .entry(route.clone())
                .or_default()
                .push(cursor.clone());
        }
        Ok(streams)
    }

    /// Accounted bytes of every route stream together.
    pub fn total(&self) -> u64 {
        self.bytes.values().sum()
    }

    /// Counts an entry of `bytes` appended to `route`'s stream.
    pub fn added(&mut self, route: &Arc<str>, bytes: u64) {
        match self.bytes.get_mut(route) {
            Some(b) => *b += bytes,
            None => {
                self.bytes.insert(route.clone(), bytes);
            }
        }
    }

    /// Follows a committed cursor move (ignored unless it is a route's uplink).
    pub fn move_cursor(&mut self, cursor: &Arc<str>, seq: u64) {
        if let Some(pos) = self.positions.get_mut(cursor) {
            *pos = (*pos).max(seq);
        }
    }

    /// The highest entry of `route`'s stream every uplink sending it has
    /// delivered.
    fn delivered(&self, route: &str) -> u64 {
        self.consumers.get(route).map_or(u64::MAX, |cursors| {
            cursors
                .iter()
                .map(|c| self.positions.get(c).copied().unwrap_or(0))
                .min()
                .unwrap_or(u64::MAX)
        })
    }

    /// Saves the accounts in `meta` (with the raw stream's).
    pub fn save(&self, tx: &redb::WriteTransaction) -> Result<(), StoreError> {
        let mut meta = tx.open_table(META)?;
        for (route, bytes) in &self.bytes {
            let table = tx.open_table(TableDefinition::<u64, &[u8]>::new(&table_def(route)))?;
            let head = table.last()?.map_or(0, |(k, _)| k.value());
            meta.insert(&*bytes_key(route), *bytes)?;
            meta.insert(&*as_of_key(route), head)?;
        }
        Ok(())
    }

    /// Evicts the entries older than `cutoff` from every stream, at most
    /// `max`; returns how many.
    pub fn evict_aged(
        &mut self,
        tx: &redb::WriteTransaction,
        cutoff: Millis,
        max: usize,
        metrics: &IngestMetrics,
    ) -> Result<usize, StoreError> {
        let mut n = 0;
        let routes: Vec<Arc<str>> = self.bytes.keys().cloned().collect();
        for route in routes {
            let mut table =
                tx.open_table(TableDefinition::<u64, &[u8]>::new(&table_def(&route)))?;
            let mut evicted = 0;
            while n < max {
                let old = match table.first()? {
                    Some((_, v)) => codec::record_ts(v.value()).map_or(true, |ts| ts < cutoff),
                    None => false,
                };
                if !old {
                    break;
                }
                self.pop(&route, &mut table)?;
                evicted += 1;
                n += 1;
            }
            count(metrics, &route, "max_age", evicted);
        }
        Ok(n)
    }

    /// Evicts the oldest entries across streams until `need` accounted bytes
    /// are freed or `max` entries are evicted: delivered ones only, or any
    /// when `undelivered`. Returns (bytes freed, entries evicted).
    pub fn evict_for_budget(
        &mut self,
        tx: &redb::WriteTransaction,
        need: u64,
        undelivered: bool,
        max: usize,
        metrics: &IngestMetrics,
    ) -> Result<(u64, usize), StoreError> {
        let reason = if undelivered {
            "disk_budget_undelivered"
        } else {
            "disk_budget"
        };
        let mut open: Vec<(Arc<str>, u64, StreamTable<'_>, u64)> = Vec::new();
        for route in self.bytes.keys() {
            let table = tx.open_table(TableDefinition::<u64, &[u8]>::new(&table_def(route)))?;
            let limit = if undelivered {
                u64::MAX
            } else {
                self.delivered(route)
            };
            open.push((route.clone(), limit, table, 0));
        }
        let (mut freed, mut n) = (0, 0);
        while freed < need && n < max {
            // The stream whose first evictable entry is the oldest.
            let mut oldest: Option<(usize, Millis)> = None;
            for (i, (_, limit, table, _)) in open.iter().enumerate() {
                if let Some((k, v)) = table.first()? {
                    if k.value() <= *limit {
                        let ts = codec::record_ts(v.value()).unwrap_or(Millis::MIN);
                        if oldest.is_none_or(|(_, t)| ts < t) {
                            oldest = Some((i, ts));
                        }
                    }
                }
            }
            let Some((i, _)) = oldest else {
                break;
            };
            let (route, _, table, evicted) = &mut open[i];
            let route = route.clone();
            freed += self.pop(&route, table)?;
            *evicted += 1;
            n += 1;
        }
        for (route, _, _, evicted) in &open {
            count(metrics, route, reason, *evicted);
        }
        Ok((freed, n))
    }

    /// Removes the first entry of `route`'s stream; its accounted bytes.
    fn pop(&mut self, route: &Arc<str>, table: &mut StreamTable<'_>) -> Result<u64, StoreError> {
        let Some((_, v)) = table.pop_first()? else {
            return Ok(0);
        };
        let bytes = entry_bytes(v.value().len());
        if let Some(b) = self.bytes.get_mut(route) {
            *b -= bytes.min(*b);
        }
        Ok(bytes)
    }
}

fn count(metrics: &IngestMetrics, route: &str, reason: &str, n: u64) {
    if n > 0 {
        metrics
            .route_records_evicted
            .get_or_create(&RouteReasonLabels {
                route: route.to_owned(),
                reason: reason.to_owned(),
            })
            .inc_by(n);
    }
}
