//! Interned names: every device, source and field name is stored once in the
//! `names` table and referred to by a small integer in records; and the
//! registry of the series (device + field) that have stored records, which
//! the ingest writer bounds (`store.max_devices`, `store.max_series`,
//! `store.max_fields_per_device`).
//!
//! The registry is the `known_series` table: one key per series, `device
//! name id << 32 | field name id`, added in the commit that stores the
//! series' first record. So the limits hold through restarts, and the
//! memory every per-device or per-series structure takes (these names, the
//! query index's open minutes, `/api/v1/devices`) is bounded by them. A
//! store written before the table existed gets it from its records, once,
//! when it is opened.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::{Arc, RwLock};

use redb::{ReadableTable, TableDefinition, WriteTransaction};
use tracing::{info, warn};

use super::codec::{DecodeError, Reader};
use super::{StoreError, META, NAMES, RECORDS};

/// Every series with a stored record: `device id << 32 | field id` → `()`.
pub(crate) const KNOWN_SERIES: TableDefinition<u64, ()> = TableDefinition::new("known_series");
/// `meta` key: `known_series` holds every series of the log (set once it
/// has been built from the records of a store older than the table).
const META_KNOWN_SERIES: &str = "known_series.complete";

/// A device of the registry, as readers see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceEntry {
    /// The device's name id.
    pub id: u32,
    /// How many fields (series) of it have stored records.
    pub fields: u32,
}

/// The id → name table and the device registry, shared by the writer
/// (which appends) and readers.
///
/// Readers only meet ids of committed records, and the writer publishes a
/// name before the record that uses it commits, so a reader always finds it.
#[derive(Debug, Default)]
pub struct Names {
    all: RwLock<Arc<Vec<Arc<str>>>>,
    devices: RwLock<Arc<BTreeMap<Arc<str>, DeviceEntry>>>,
}

impl Names {
    pub fn new(all: Vec<Arc<str>>) -> Self {
        Names {
            all: RwLock::new(Arc::new(all)),
            devices: RwLock::default(),
        }
    }

    /// The names as they are now: a cheap, consistent snapshot.
    pub fn snapshot(&self) -> Arc<Vec<Arc<str>>> {
        self.all.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The devices with stored records, by name: a cheap snapshot.
    pub fn devices(&self) -> Arc<BTreeMap<Arc<str>, DeviceEntry>> {
        self.devices
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Publishes the names a writer has added (their ids are their indices).
    pub(crate) fn publish(&self, all: Arc<Vec<Arc<str>>>) {
        *self.all.write().unwrap_or_else(|e| e.into_inner()) = all;
    }

    /// Publishes the device registry (after the commit that stored it).
    pub(crate) fn publish_devices(&self, devices: Arc<BTreeMap<Arc<str>, DeviceEntry>>) {
        *self.devices.write().unwrap_or_else(|e| e.into_inner()) = devices;
    }
}

/// Reads the names and the series registry in the store's opening
/// transaction, building `known_series` from the records if the store
/// predates it.
pub(crate) fn load(tx: &WriteTransaction, path: &Path) -> Result<Names, StoreError> {
    let mut all = Vec::new();
    {
        let table = tx.open_table(NAMES)?;
        for entry in table.iter()? {
            let (id, name) = entry?;
            if id.value() as usize != all.len() {
                warn!(store = %path.display(), id = id.value(), "name table has a gap");
            }
            all.push(Arc::<str>::from(name.value()));
        }
    }
    let complete = tx.open_table(META)?.get(META_KNOWN_SERIES)?.is_some();
    let mut known = tx.open_table(KNOWN_SERIES)?;
    if !complete {
        let records = tx.open_table(RECORDS)?;
        let mut found = HashSet::new();
        let mut n = 0u64;
        for entry in records.iter()? {
            let (seq, bytes) = entry?;
            n += 1;
            if let Err(e) = record_series(bytes.value(), |s| {
                found.insert(s);
            }) {
                warn!(seq = seq.value(), error = %e, "a stored record does not decode: its series are not registered");
            }
        }
        for s in &found {
            known.insert(*s, ())?;
        }
        tx.open_table(META)?.insert(META_KNOWN_SERIES, 1)?;
        if n > 0 {
            info!(
                records = n,
                series = found.len(),
                "registered the series of the stored records"
            );
        }
    }
    let mut series = Vec::new();
    for entry in known.iter()? {
        series.push(entry?.0.value());
    }
    let names = Names::new(all);
    names.publish_devices(Arc::new(registry(&series, &names.snapshot())));
    Ok(names)
}

/// The device registry of a set of series keys.
pub(crate) fn registry(series: &[u64], names: &[Arc<str>]) -> BTreeMap<Arc<str>, DeviceEntry> {
    let mut out: BTreeMap<Arc<str>, DeviceEntry> = BTreeMap::new();
    for &s in series {
        let id = (s >> 32) as u32;
        let Some(name) = names.get(id as usize) else {
            continue;
        };
        out.entry(name.clone())
            .or_insert(DeviceEntry { id, fields: 0 })
            .fields += 1;
    }
    out
}

/// Calls `f` with the series key of each field of an encoded record.
pub(crate) fn record_series(bytes: &[u8], mut f: impl FnMut(u64)) -> Result<(), DecodeError> {
    let mut r = Reader::new(bytes);
    r.version()?;
    r.zvarint()?;
    r.id()?;
    let device = u64::from(r.id()?) << 32;
    let n = r.varint()?;
    for _ in 0..n {
        let field = r.id()?;
        r.value()?;
        f(device | u64::from(field));
    }
    Ok(())
}

/// All registered series keys (read by the writer when it starts).
pub(crate) fn known_series(tx: &redb::ReadTransaction) -> Result<Vec<u64>, StoreError> {
    let table = tx.open_table(KNOWN_SERIES)?;
    let mut out = Vec::new();
    for entry in table.iter()? {
        out.push(entry?.0.value());
    }
    Ok(out)
}
