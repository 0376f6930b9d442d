//! The salvage itself ([`salvage`]): names first, the small tables whole,
//! then the streams ([`stream`](super::stream)), then cursors, route states
//! and the floors of the fresh store's heads.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use redb::{
    Database, ReadOnlyDatabase, ReadableDatabase, ReadableTable, TableDefinition, TableHandle,
};

use super::damaged::open_damaged;
use super::stream::copy_stream;
use super::{SalvageReport, FLOOR_DEAD, FLOOR_RECORDS};
use crate::contain::contained_quietly as contained;
use crate::store::{codec, route_retention, StoreError, CURSORS, META, NAMES, ROUTE_STATE};

/// How long the probes of one salvage may take in all, over every table,
/// however slow each is (a damaged page header can make redb read a page of
/// many megabytes per probe): a salvage delays the daemon's start, which
/// systemd times.
const PROBE_TIME: std::time::Duration = std::time::Duration::from_secs(3);

/// Reads what it can of the damaged file `from` into the empty database
/// `to`. Reads are contained; an error is returned only for a failed write.
pub fn salvage(from: &Path, to: &Database) -> Result<SalvageReport, StoreError> {
    let mut report = SalvageReport::default();
    let db = match open_damaged(from) {
        Ok(db) => db,
        Err(why) => {
            report.unreadable.push(format!("the whole file ({why})"));
            write_floors(to, 0, 0, &[])?;
            return Ok(report);
        }
    };
    let db = Arc::new(db);

    // Names first: records are only as good as the names they refer to.
    let lookup = copy_names(&db, to, &mut report)?;
    let is_lost = |s: &str| s.starts_with(LOST_PREFIX);
    let record_ok = |bytes: &[u8]| match codec::decode_record(bytes, &lookup) {
        Ok(r) => {
            !is_lost(&r.source) && !is_lost(&r.device) && !r.fields.iter().any(|(f, _)| is_lost(f))
        }
        Err(_) => false,
    };
    let dead_ok = |bytes: &[u8]| match codec::decode_dead_letter(bytes, &lookup) {
        Ok(d) => !is_lost(&d.source),
        Err(_) => false,
    };

    // Cursors, meta and route states: small tables, read whole.
    let small = Small::read(&db, &mut report);
    let (known_record_head, known_dead_head) = small.known_heads();

    // One deadline for all probing past damage in this salvage; records
    // are copied first, so they have the most of it.
    let probe_deadline = std::time::Instant::now() + PROBE_TIME;
    let records = copy_stream(
        &db,
        to,
        "records",
        &record_ok,
        known_record_head,
        &mut report,
        probe_deadline,
    )?;
    report.records = records.kept;
    report.records_lost = records.lost;
    let dead = copy_stream(
        &db,
        to,
        "dead",
        &dead_ok,
        known_dead_head,
        &mut report,
        probe_deadline,
    )?;
    report.dead_letters = dead.kept;
    report.dead_letters_lost = dead.lost;
    let route_heads = copy_routes(
        &db,
        to,
        &record_ok,
        &small.meta,
        &mut report,
        probe_deadline,
    )?;

    small.write(to)?;
    write_floors(
        to,
        records.head.max(known_record_head),
        dead.head.max(known_dead_head),
        &route_heads,
    )?;
    drop(db);
    Ok(report)
}

/// Copies the names (by id, a lost one as a placeholder that no salvaged
/// entry may use); returns them, by id.
fn copy_names(
    db: &Arc<ReadOnlyDatabase>,
    to: &Database,
    report: &mut SalvageReport,
) -> Result<Vec<Arc<str>>, StoreError> {
    let mut names: Vec<Option<String>> = Vec::new();
    let name_entries = read_table::<u32, &str, _>(db, "names", report, |k: u32, v: &str| {
        Some((u64::from(k), v.to_owned()))
    });
    // Ids are handed out one by one from 0, so a table holds ids up to
    // about as many as its entries (more where damaged pages lost some).
    // An id far past that is a damaged key: taking it would fill the fresh
    // table with that many placeholder names (16 M for one flipped bit).
    let max_id = name_entries.len().saturating_mul(2).saturating_add(1024);
    for (id, name) in name_entries {
        let Ok(id) = usize::try_from(id) else {
            continue;
        };
        if id >= max_id {
            continue;
        }
        if names.len() <= id {
            names.resize(id + 1, None);
        }
        names[id] = Some(name);
    }
    report.names = names.iter().filter(|n| n.is_some()).count() as u64;
    report.names_lost = names.len() as u64 - report.names;
    let lookup: Vec<Arc<str>> = names
        .iter()
        .enumerate()
        .map(|(id, n)| match n {
            Some(n) => Arc::from(n.as_str()),
            None => Arc::from(lost_name(id)),
        })
        .collect();
    let tx = to.begin_write()?;
    {
        let mut t = tx.open_table(NAMES)?;
        for (id, name) in lookup.iter().enumerate() {
            t.insert(id as u32, &**name)?;
        }
    }
    tx.commit()?;
    Ok(lookup)
}

/// The small tables, read whole: cursors, meta, route states.
struct Small {
    cursors: Vec<(String, u64)>,
    meta: BTreeMap<String, u64>,
    states: Vec<(String, Vec<u8>)>,
}

impl Small {
    fn read(db: &Arc<ReadOnlyDatabase>, report: &mut SalvageReport) -> Small {
        let cursors = read_table::<&str, u64, _>(db, "cursors", report, |k: &str, v: u64| {
            Some((k.to_owned(), v))
        });
        let meta = read_table::<&str, u64, _>(db, "meta", report, |k: &str, v: u64| {
            Some((k.to_owned(), v))
        });
        let states =
            read_table::<&str, &[u8], _>(db, "route_state", report, |k: &str, v: &[u8]| {
                Some((k.to_owned(), v.to_vec()))
            });
        report.cursors = cursors.len() as u64;
        report.route_states = states.len() as u64;
        Small {
            cursors,
            meta: meta.into_iter().collect(),
            states,
        }
    }

    /// The highest sequence numbers of the records and the dead letters
    /// the damaged file is known to have used.
    fn known_heads(&self) -> (u64, u64) {
        let meta = &self.meta;
        let known_record_head = ["usage.as_of_record", "index.through", FLOOR_RECORDS]
            .iter()
            .filter_map(|k| meta.get(*k).copied())
            // Every cursor, though an uplink of a route stream counts that
            // stream's seqs: a floor too high only leaves a gap, one too low
            // would let new records take seqs a cursor has passed already.
            .chain(self.cursors.iter().map(|(_, v)| *v))
            .max()
            .unwrap_or(0);
        let known_dead_head = ["usage.as_of_dead", FLOOR_DEAD]
            .iter()
            .filter_map(|k| meta.get(*k).copied())
            .max()
            .unwrap_or(0);
        (known_record_head, known_dead_head)
    }

    /// Writes the cursors and route states into the fresh store.
    fn write(&self, to: &Database) -> Result<(), StoreError> {
        let tx = to.begin_write()?;
        {
            let mut t = tx.open_table(CURSORS)?;
            for (k, v) in &self.cursors {
                t.insert(k.as_str(), *v)?;
            }
            let mut t = tx.open_table(ROUTE_STATE)?;
            for (k, v) in &self.states {
                t.insert(k.as_str(), v.as_slice())?;
            }
        }
        tx.commit()?;
        Ok(())
    }
}

/// Copies every route output stream; returns each one's head key in `meta`
/// and the head to keep there.
fn copy_routes(
    db: &Arc<ReadOnlyDatabase>,
    to: &Database,
    record_ok: &dyn Fn(&[u8]) -> bool,
    meta: &BTreeMap<String, u64>,
    report: &mut SalvageReport,
    probe_deadline: std::time::Instant,
) -> Result<Vec<(String, u64)>, StoreError> {
    let route_tables: Vec<String> = match contained(|| -> Result<Vec<String>, String> {
        let tx = db.begin_read().map_err(|e| e.to_string())?;
        let tables = tx.list_tables().map_err(|e| e.to_string())?;
        Ok(tables
            .map(|t| t.name().to_owned())
            .filter(|n| n.starts_with("route."))
            .collect())
    }) {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            report
                .unreadable
                .push(format!("the list of route streams ({e})"));
            Vec::new()
        }
        Err(p) => {
            report
                .unreadable
                .push(format!("the list of route streams ({p})"));
            Vec::new()
        }
    };
    let mut route_heads = Vec::new();
    for table in route_tables {
        let route = table.trim_start_matches("route.");
        let known = meta
            .get(&route_retention::head_key(route))
            .copied()
            .unwrap_or(0);
        let copied = copy_stream(db, to, &table, record_ok, known, report, probe_deadline)?;
        report.route_records += copied.kept;
        report.route_records_lost += copied.lost;
        route_heads.push((route_retention::head_key(route), copied.head.max(known)));
    }
    Ok(route_heads)
}

const LOST_PREFIX: &str = "\u{0}lost name ";

fn lost_name(id: usize) -> String {
    format!("{LOST_PREFIX}{id}")
}

fn write_floors(
    to: &Database,
    records: u64,
    dead: u64,
    route_heads: &[(String, u64)],
) -> Result<(), StoreError> {
    let tx = to.begin_write()?;
    {
        let mut meta = tx.open_table(META)?;
        meta.insert("format_version", u64::from(codec::FORMAT_VERSION))?;
        meta.insert(FLOOR_RECORDS, records)?;
        meta.insert(FLOOR_DEAD, dead)?;
        for (k, v) in route_heads {
            meta.insert(k.as_str(), *v)?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// Reads a whole small table, as far as it reads.
fn read_table<K, V, T>(
    db: &Arc<ReadOnlyDatabase>,
    name: &str,
    report: &mut SalvageReport,
    keep: impl Fn(K::SelfType<'_>, V::SelfType<'_>) -> Option<T>,
) -> Vec<T>
where
    K: redb::Key + 'static,
    V: redb::Value + 'static,
{
    let mut out = Vec::new();
    let result = contained(|| -> Result<(), String> {
        let tx = db.begin_read().map_err(|e| e.to_string())?;
        let table = match tx.open_table(TableDefinition::<K, V>::new(name)) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
            Err(e) => return Err(e.to_string()),
        };
        for entry in table.iter().map_err(|e| e.to_string())? {
            let (k, v) = entry.map_err(|e| e.to_string())?;
            if let Some(t) = keep(k.value(), v.value()) {
                out.push(t);
            }
        }
        Ok(())
    });
    let failed = match result {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e),
        Err(p) => Some(p.to_string()),
    };
    if let Some(e) = failed {
        report
            .unreadable
            .push(format!("table {name} after {} entries ({e})", out.len()));
    }
    out
}
