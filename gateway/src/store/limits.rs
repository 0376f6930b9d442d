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
/// transaction under way), fields per device, and the refusal episodes.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    pub limits: Limits,
    series: HashSet<u64>,
    fields: HashMap<u32, u32>,
    /// Added by the transaction under way (undone if it fails).
    pending: Vec<u64>,
    /// Per kind: the refusal episode under way (records refused so far).
    episodes: HashMap<&'static str, u64>,
}

impl Registry {
    pub fn new(limits: Limits, series: &[u64]) -> Registry {
        let mut r = Registry {
            limits,
            ..Registry::default()
        };
        for &s in series {
            if r.series.insert(s) {
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
    /// its fields' ids. The refusal's kind and reason if not.
    pub fn check(
        &mut self,
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
                (Some(d), Some(f)) => !self.series.contains(&(u64::from(d) << 32 | u64::from(f))),
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
        let refusal = if have.is_none() && self.devices() >= l.max_devices.get() {
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
        };
        if let Some((kind, reason)) = &refusal {
            let n = self.episodes.entry(kind).or_insert(0);
            if *n == 0 {
                warn!(
                    kind,
                    device = %r.device,
                    field,
                    "{reason}: its records are refused (dead letters `{kind}`, counted in ferry_ingest_records_rejected_total) until the limit is raised; logged once per episode"
                );
            }
            *n += 1;
        }
        refusal
    }

    /// Registers the series of a record that is stored.
    pub fn add(&mut self, device: u32, field: u32) {
        let s = u64::from(device) << 32 | u64::from(field);
        if self.series.insert(s) {
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

    /// The transaction committed.
    pub fn committed(&mut self, stored_any: bool, refused: &[(usize, DeadLetter)]) {
        self.pending.clear();
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
    }

    /// The transaction failed: forget what it added.
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
