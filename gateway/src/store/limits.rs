//! The bounds on names from outside: how many devices, series (device +
//! field) and fields per device the store takes. Enforced by the ingest
//! writer on every record it is about to store, whatever its source
//! (embedded broker, subscriber, Modbus, after the pipeline), against the
//! persisted registry of known series ([`super::names`]), so they hold
//! through restarts. A record that would pass a limit is stored as a dead
//! letter instead (`too_many_devices`, `too_many_series`,
//! `too_many_device_fields`), counted in
//! `ferry_ingest_records_rejected_total{source,reason}`, and each episode
//! is logged once, naming the device.
//!
//! # When a name is forgotten
//! A series is forgotten — its slot under `max_series` and its device's
//! `max_fields_per_device` freed, and the device's under `max_devices`
//! with its last series — when a record would be refused for want of room
//! and retention (disk budget or `max_age`) has evicted every record
//! that holds the series. The writer keeps, per series, an upper bound on
//! the sequence number of its last record: exact for records stored since
//! the daemon started, and the log's head at the start for the others (the
//! store keeps no per-series position, which would cost a write per series
//! per commit). So a series not written since the last start is forgotten
//! once every record stored before that start is evicted. Never earlier
//! than its last record: a forgotten device has nothing to show (the
//! index drops the blocks of evicted records, and `/api/v1/devices` lists
//! the registry, which no longer holds it). Forgetting removes the series
//! from `known_series` in the transaction that stores the record it made
//! room for, so a restart sees the same registry; counted in
//! `ferry_store_series_forgotten_total` and `_devices_forgotten_total`.
//! The device's and fields' names stay interned (the `names` table; ids are
//! never reused): a name that comes back keeps its id.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::num::NonZeroUsize;
use std::sync::Arc;

use ferry_core::record::{DeadLetter, Record, Value};
use tracing::{info, warn};

use super::names::DeviceEntry;

/// A new device while `max_devices` devices have records.
pub const TOO_MANY_DEVICES: &str = "too_many_devices";
/// A new series while `max_series` series have records.
pub const TOO_MANY_SERIES: &str = "too_many_series";
/// A new field of a device that has `max_fields_per_device` fields.
pub const TOO_MANY_DEVICE_FIELDS: &str = "too_many_device_fields";
/// The dead-letter kinds the limits make.
pub const KINDS: [&str; 3] = [TOO_MANY_DEVICES, TOO_MANY_SERIES, TOO_MANY_DEVICE_FIELDS];

/// How many names the store takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_devices: NonZeroUsize,
    pub max_series: NonZeroUsize,
    pub max_fields_per_device: NonZeroUsize,
}

/// The writer's registry: the known series (committed, and added by the
/// transaction under way) with an upper bound on the sequence number of
/// each one's last record, fields per device, and the refusal episodes.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    pub limits: Limits,
    series: HashMap<u64, u64>,
    fields: HashMap<u32, u32>,
    /// Added by the transaction under way (undone if it fails).
    pending: Vec<u64>,
    /// Forgotten by the transaction under way, with their bounds (restored
    /// if it fails).
    forgotten: Vec<(u64, u64)>,
    /// Devices forgotten by the transaction under way.
    devices_forgotten: u64,
    /// The first stored record when the registry was last swept for
    /// series without records (and before the transaction under way).
    swept: (u64, u64),
    /// Per kind: the refusal episode under way (records refused so far).
    episodes: HashMap<&'static str, u64>,
}

impl Registry {
    /// The registry of the committed `series`, whose records are all at
    /// or below `head`.
    pub fn new(limits: Limits, series: &[u64], head: u64) -> Registry {
        let mut r = Registry {
            limits,
            ..Registry::default()
        };
        for &s in series {
            if r.series.insert(s, head).is_none() {
                *r.fields.entry((s >> 32) as u32).or_default() += 1;
            }
        }
        r
    }

    pub fn devices(&self) -> usize {
        self.fields.len()
    }

    pub fn series(&self) -> usize {
        self.series.len()
    }

    /// Whether `r` may be stored: its device id (`None`: not interned) and
    /// its fields' ids. The refusal's kind and reason if not. Before a
    /// refusal, the series without a record left (every one before
    /// `first_record` evicted) are forgotten, once per value of it.
    pub fn check(
        &mut self,
        r: &Record,
        device: Option<u32>,
        field_ids: impl Iterator<Item = Option<u32>> + Clone,
        first_record: u64,
    ) -> Option<(&'static str, String)> {
        let mut refusal = self.refusal(r, device, field_ids.clone());
        if refusal.is_some() && self.sweep(first_record) {
            refusal = self.refusal(r, device, field_ids);
        }
        if let Some((kind, reason)) = &refusal {
            let n = self.episodes.entry(kind).or_insert(0);
            if *n == 0 {
                warn!(
                    kind,
                    device = %r.device,
                    "{reason}: its records are refused (dead letters `{kind}`, counted in ferry_ingest_records_rejected_total) until the limit is raised or retention evicts every record of some series; logged once per episode"
                );
            }
            *n += 1;
        }
        refusal
    }

    /// Forgets the series whose every record is evicted (their bound is
    /// below `first_record`), unless the registry was swept at this
    /// `first_record` already. Whether any was forgotten.
    fn sweep(&mut self, first_record: u64) -> bool {
        if first_record <= self.swept.1 {
            return false;
        }
        self.swept.1 = first_record;
        let before = self.forgotten.len();
        let (series, fields) = (&mut self.series, &mut self.fields);
        let mut devices = 0;
        series.retain(|&s, &mut last| {
            if last >= first_record {
                return true;
            }
            self.forgotten.push((s, last));
            let d = (s >> 32) as u32;
            if let Some(n) = fields.get_mut(&d) {
                *n -= 1;
                if *n == 0 {
                    fields.remove(&d);
                    devices += 1;
                }
            }
            false
        });
        self.devices_forgotten += devices;
        let n = self.forgotten.len() - before;
        if n > 0 {
            info!(
                series = n,
                devices,
                first_record,
                "forgot the series (and devices) whose every record retention has evicted: their slots under the store's name limits are free"
            );
        }
        n > 0
    }

    /// Why `r` would be refused, if it would.
    fn refusal(
        &self,
        r: &Record,
        device: Option<u32>,
        field_ids: impl Iterator<Item = Option<u32>>,
    ) -> Option<(&'static str, String)> {
        let have = device.and_then(|d| self.fields.get(&d).copied());
        let mut new = 0usize;
        let mut first_new: Option<usize> = None;
        let mut seen = HashSet::new();
        for (i, id) in field_ids.enumerate() {
            let is_new = match (device, id) {
                (Some(d), Some(f)) => !self
                    .series
                    .contains_key(&(u64::from(d) << 32 | u64::from(f))),
                _ => true,
            };
            if is_new && r.fields.get(i).is_some_and(|(n, _)| seen.insert(&**n)) {
                new += 1;
                first_new.get_or_insert(i);
            }
        }
        if new == 0 {
            return None;
        }
        let field = first_new
            .and_then(|i| r.fields.get(i))
            .map_or("", |(n, _)| &**n);
        let l = self.limits;
        if have.is_none() && self.devices() >= l.max_devices.get() {
            Some((
                TOO_MANY_DEVICES,
                format!(
                    "device `{}` is new and {} devices have records (store.max_devices)",
                    r.device, l.max_devices
                ),
            ))
        } else if have.unwrap_or(0) as usize + new > l.max_fields_per_device.get() {
            Some((
                TOO_MANY_DEVICE_FIELDS,
                format!(
                    "device `{}` has {} fields and field `{field}` would be one more than store.max_fields_per_device ({})",
                    r.device,
                    have.unwrap_or(0),
                    l.max_fields_per_device
                ),
            ))
        } else if self.series() + new > l.max_series.get() {
            Some((
                TOO_MANY_SERIES,
                format!(
                    "field `{field}` of device `{}` would be a new series and {} series have records (store.max_series)",
                    r.device,
                    self.series()
                ),
            ))
        } else {
            None
        }
    }

    /// Registers the series of a record stored as `seq`.
    pub fn add(&mut self, device: u32, field: u32, seq: u64) {
        let s = u64::from(device) << 32 | u64::from(field);
        if self.series.insert(s, seq).is_none() {
            *self.fields.entry(device).or_default() += 1;
            self.pending.push(s);
        }
    }

    /// The devices by name, for readers.
    pub fn devices_map(&self, names: &[Arc<str>]) -> BTreeMap<Arc<str>, DeviceEntry> {
        self.fields
            .iter()
            .filter_map(|(&id, &fields)| {
                Some((names.get(id as usize)?.clone(), DeviceEntry { id, fields }))
            })
            .collect()
    }

    /// The series the transaction under way adds.
    pub fn pending(&self) -> &[u64] {
        &self.pending
    }

    /// The series the transaction under way forgets (some it may add again).
    pub fn forgotten(&self) -> impl Iterator<Item = u64> + '_ {
        self.forgotten.iter().map(|(s, _)| *s)
    }

    /// The transaction committed; how many series and devices it forgot.
    pub fn committed(&mut self, stored_any: bool, refused: &[(usize, DeadLetter)]) -> (u64, u64) {
        self.pending.clear();
        let forgot = (
            std::mem::take(&mut self.forgotten).len() as u64,
            std::mem::take(&mut self.devices_forgotten),
        );
        self.swept.0 = self.swept.1;
        if stored_any {
            // An episode ends with a commit that stores records and refuses none of its kind.
            self.episodes.retain(|kind, n| {
                let again = refused.iter().any(|(_, d)| d.kind == *kind);
                if !again {
                    info!(kind, records = *n, "names within the store's limits again");
                }
                again
            });
        }
        forgot
    }

    /// The transaction failed: forget what it added, remember what it forgot.
    pub fn aborted(&mut self) {
        for s in std::mem::take(&mut self.pending) {
            self.series.remove(&s);
            let d = (s >> 32) as u32;
            if let Some(n) = self.fields.get_mut(&d) {
                *n -= 1;
                if *n == 0 {
                    self.fields.remove(&d);
                }
            }
        }
        for (s, last) in std::mem::take(&mut self.forgotten) {
            if self.series.insert(s, last).is_none() {
                *self.fields.entry((s >> 32) as u32).or_default() += 1;
            }
        }
        self.devices_forgotten = 0;
        self.swept.1 = self.swept.0;
    }
}

/// The dead letter of a refused record: its fields as a JSON object.
pub(crate) fn dead_letter(r: &Record, kind: &'static str, reason: String) -> DeadLetter {
    let fields: serde_json::Map<String, serde_json::Value> = r
        .fields
        .iter()
        .map(|(k, v)| {
            let v = match v {
                Value::Bool(b) => serde_json::Value::from(*b),
                Value::Int(i) => serde_json::Value::from(*i),
                Value::Float(x) => serde_json::Value::from(*x),
                Value::Str(s) => serde_json::Value::from(&**s),
            };
            (k.to_string(), v)
        })
        .collect();
    let payload = serde_json::to_vec(&fields).unwrap_or_default();
    DeadLetter::new(
        Arc::clone(&r.source),
        format!("device {}", r.device),
        kind,
        reason,
        &payload,
    )
}
