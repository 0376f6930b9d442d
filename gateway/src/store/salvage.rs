//! Deciding whether a store file is sound before anything reads it, and
//! salvaging what reads from one that is not.
//!
//! # The verdict ([`assess`])
//! One path, shared by the daemon's start ([`Store::open_or_salvage`]) and
//! `ferry fsck`:
//! 1. an empty (0-byte) file is damage, never silently initialised;
//! 2. redb opens the file, with its integrity check
//!    (`Builder::set_check_integrity_on_open`: the checksum of every page of
//!    the committed trees, and the allocator state rebuilt) when the check
//!    is due (below); a file redb reports `Corrupted`, not a redb file, or
//!    short, is damaged; one in use, not permitted or of a newer format is
//!    an error for the operator;
//! 3. Ferry's own checks: the format version (an unknown older one is
//!    damage; a newer one is refused by [`Store::open`](super::Store::open)
//!    as before), the streams' first and last keys readable and in order,
//!    the names dense (id = position, as the codec needs), every `meta`
//!    account readable. These read a few pages and run at every open.
//!
//! Every step runs in a [`contained`](crate::contain::contained) scope: redb
//! may panic on a damaged page it trusts, and such a panic is a verdict
//! ("damaged"), not the end of the daemon.
//!
//! # When the full check runs
//! The integrity check reads the whole file. Measured (release, 2-core Xeon
//! VM, SSD): 78 MB store (1.46 M records) 0.22–0.27 s; 1.1 GB store 2.2 s
//! with the file in the page cache, 10.1 s cold. An SD card reads several
//! times slower than that disk, so a store at the default 2 GiB budget
//! would add the better part of a minute to every start, systemd restart
//! and upgrade. A plain open of a cleanly closed file takes 6–10 ms.
//!
//! So the full check runs when the file is not known to be as redb last left
//! it: when Ferry closed it cleanly it writes `ferry.redb.clean` beside it
//! (the file's length, modification time and inode); every open removes
//! that record first (durably) and trusts the file without the full check
//! only if the record was there and still matches. So the check runs after
//! a crash, `kill -9`, power cut or a panic-abort (no record), after the file
//! was written by anything else (truncated, edited: length or mtime differ),
//! on the first start of this version, and always in `ferry fsck`. After an
//! unclean stop redb repairs the file at open anyway, which reads all of it
//! (measured: plain open 0.20 s on the 78 MB store and 3.2 s cold on the
//! 1.1 GB one, against 0.21 s and 10.1 s with the check), so the check costs
//! little extra where it runs most. Damage that keeps length and mtime (bit
//! rot on a card) is found when it is read: a read in a contained scope
//! fails that request; a panic elsewhere aborts the daemon, whose next
//! start, finding no clean record, runs the check and sets the file aside:
//! one restart, never a crash loop.
//!
//! # Salvage ([`salvage`])
//! A damaged file is renamed `ferry.redb.corrupt-<unix time>` (kept, never
//! changed) and a fresh store is written at the old path with what reads
//! from it: names (by id), records, dead letters and route output streams
//! (with their original sequence numbers, so uplink cursors stay
//! meaningful), cursors, route states and route heads. The damaged file is
//! read without trusting it: through a read-only backend that reads zeros
//! past its end (a truncated file reads as far as it goes) and does not need
//! redb's recovery, each table in chunks in contained scopes. Where a read
//! panics or fails, the rest of the table is found again by probing further
//! keys (doubling, then bisecting back to the first key that reads), so one
//! damaged page costs the records on it, not the ones after it. Entries are
//! kept only if they decode (with their names: a record naming a lost name
//! is lost) and their keys increase. The fresh store's heads are at least
//! the highest sequence number known to have existed (the damaged file's
//! last keys, cursors, accounts), so no sequence number is used twice.
//! What was lost is counted as the sequence numbers missing between and
//! after the salvaged ones; a page whose bytes were changed yet still decode
//! is kept as read (redb's checksums say that the file is damaged, not
//! which entry).

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{
    Builder, ConcurrencyMode, Database, DatabaseError, ReadOnlyDatabase, ReadableDatabase,
    ReadableTable, StorageBackend, StorageError, TableDefinition, TableHandle,
};
use tracing::{error, warn};

use super::{codec, route_retention, StoreError, CURSORS, DEAD, META, NAMES, RECORDS, ROUTE_STATE};
use crate::contain::contained_quietly as contained;

/// `meta` keys: the highest sequence number known to have been used in each
/// stream, written by a salvage (the fresh store's heads are at least these).
pub(crate) const FLOOR_RECORDS: &str = "floor.records";
pub(crate) const FLOOR_DEAD: &str = "floor.dead";

/// What [`assess`] found.
pub enum Verdict {
    /// The file opened and passed the checks that ran; here is the database.
    Sound(Database),
    /// The file is damaged: why.
    Damaged(String),
}

/// Whether the full integrity check runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// The file was closed cleanly by Ferry and is unchanged since: trusted.
    Trusted,
    /// redb's integrity check over the whole file.
    Full,
}

/// Decides whether the existing store file at `path` is sound (see the
/// module docs). `Err` only for what a new file would not cure.
pub fn assess(path: &Path, check: Check, cache_bytes: usize) -> Result<Verdict, StoreError> {
    let open_err = |source| StoreError::Open {
        path: path.to_owned(),
        source,
    };
    let len = std::fs::metadata(path)
        .map_err(|e| open_err(DatabaseError::Storage(StorageError::Io(e))))?
        .len();
    if len == 0 {
        return Ok(Verdict::Damaged("the file is empty (0 bytes)".to_owned()));
    }
    let opened = contained(|| {
        Builder::new()
            .set_cache_size(cache_bytes)
            .set_check_integrity_on_open(check == Check::Full)
            .open(path)
    });
    let db = match opened {
        Ok(Ok(db)) => db,
        Ok(Err(source)) => {
            let e = open_err(source);
            if e.is_corruption() {
                return Ok(Verdict::Damaged(e.to_string()));
            }
            return Err(e);
        }
        Err(p) => {
            return Ok(Verdict::Damaged(format!(
                "redb panicked opening it: {}",
                p.message
            )))
        }
    };
    match contained(|| ferry_checks(&db)) {
        Ok(Ok(())) => Ok(Verdict::Sound(db)),
        Ok(Err(why)) => {
            drop_contained(db);
            Ok(Verdict::Damaged(why))
        }
        Err(p) => {
            drop_contained(db);
            Ok(Verdict::Damaged(format!(
                "reading it panicked: {}",
                p.message
            )))
        }
    }
}

/// Drops a database that may be damaged (its close writes and may panic).
fn drop_contained(db: Database) {
    if let Err(p) = contained(move || drop(db)) {
        warn!(error = %p, "closing a damaged store file panicked");
    }
}

/// Ferry's checks of an open file: format version, every table readable,
/// names, the accounts in `meta`.
fn ferry_checks(db: &Database) -> Result<(), String> {
    let tx = db
        .begin_read()
        .map_err(|e| format!("cannot read it: {e}"))?;
    let meta = match tx.open_table(META) {
        Ok(t) => Some(t),
        Err(redb::TableError::TableDoesNotExist(_)) => None,
        Err(e) => return Err(format!("table meta: {e}")),
    };
    let get = |k: &str| -> Result<Option<u64>, String> {
        match &meta {
            Some(m) => m
                .get(k)
                .map(|v| v.map(|v| v.value()))
                .map_err(|e| format!("table meta, key {k}: {e}")),
            None => Ok(None),
        }
    };
    if let Some(v) = get("format_version")? {
        if v != u64::from(codec::FORMAT_VERSION) {
            // A newer Ferry's store is not damage: Store::open refuses it.
            if v > u64::from(codec::FORMAT_VERSION) {
                return Ok(());
            }
            return Err(format!("unknown format version {v}"));
        }
    }
    for def in [RECORDS, DEAD] {
        match tx.open_table(def) {
            Ok(t) => {
                let first = t.first().map_err(|e| format!("table {def}: {e}"))?;
                let last = t.last().map_err(|e| format!("table {def}: {e}"))?;
                if let (Some((a, _)), Some((b, _))) = (first, last) {
                    if a.value() > b.value() {
                        return Err(format!("table {def}: its first key is after its last"));
                    }
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(format!("table {def}: {e}")),
        }
    }
    match tx.open_table(NAMES) {
        Ok(t) => {
            for (n, entry) in t
                .iter()
                .map_err(|e| format!("table names: {e}"))?
                .enumerate()
            {
                let (id, _) = entry.map_err(|e| format!("table names: {e}"))?;
                if id.value() as usize != n {
                    return Err(format!("table names: id {} where {n} belongs", id.value()));
                }
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(format!("table names: {e}")),
    }
    for def in [CURSORS] {
        match tx.open_table(def) {
            Ok(t) => {
                t.first().map_err(|e| format!("table {def}: {e}"))?;
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(format!("table {def}: {e}")),
        }
    }
    // Every account reads. (They are not held against the heads: retention
    // may evict up to the last record, leaving the accounts ahead of it.)
    if let Some(m) = &meta {
        for entry in m.iter().map_err(|e| format!("table meta: {e}"))? {
            entry.map_err(|e| format!("table meta: {e}"))?;
        }
    }
    Ok(())
}

/// What a salvage read from a damaged file.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SalvageReport {
    pub names: u64,
    pub names_lost: u64,
    pub records: u64,
    /// Sequence numbers known to have existed that were not salvaged.
    pub records_lost: u64,
    pub dead_letters: u64,
    pub dead_letters_lost: u64,
    pub route_records: u64,
    pub route_records_lost: u64,
    pub cursors: u64,
    pub route_states: u64,
    /// What could not be read (a table, a range of keys, the whole file).
    pub unreadable: Vec<String>,
}

impl fmt::Display for SalvageReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "salvaged {} records ({} lost), {} dead letters ({} lost), {} route records ({} lost), \
             {} names ({} lost), {} cursors, {} route states",
            self.records,
            self.records_lost,
            self.dead_letters,
            self.dead_letters_lost,
            self.route_records,
            self.route_records_lost,
            self.names,
            self.names_lost,
            self.cursors,
            self.route_states
        )?;
        if !self.unreadable.is_empty() {
            write!(f, "; could not read: {}", self.unreadable.join("; "))?;
        }
        Ok(())
    }
}

/// Where a damaged file is moved: `PATH.corrupt-<unix time>` (a counter is
/// appended if that exists already).
pub fn aside_path(path: &Path) -> PathBuf {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut n = 0u32;
    loop {
        let mut aside = path.as_os_str().to_owned();
        aside.push(format!(".corrupt-{stamp}"));
        if n > 0 {
            aside.push(format!(".{n}"));
        }
        let aside = PathBuf::from(aside);
        if !aside.exists() || n == u32::MAX {
            return aside;
        }
        n += 1;
    }
}

/// Moves the damaged file at `path` aside and writes a fresh store there
/// with what reads from it. Returns where the file went and what was saved.
pub fn set_aside_and_salvage(
    path: &Path,
    why: &str,
    cache_bytes: usize,
) -> Result<(PathBuf, SalvageReport), StoreError> {
    let aside = aside_path(path);
    std::fs::rename(path, &aside).map_err(|e| StoreError::SetAside {
        path: path.to_owned(),
        error: why.to_owned(),
        source: e,
    })?;
    super::sync_dir(path);
    error!(store = %path.display(), moved_to = %aside.display(), error = %why,
        "the store file is damaged: moved it aside; salvaging what reads into a fresh store");
    // A fresh file: an old clean record must not vouch for it.
    super::clean_record::remove(path);
    let fresh = Builder::new()
        .set_cache_size(cache_bytes)
        .create(path)
        .map_err(|source| StoreError::Open {
            path: path.to_owned(),
            source,
        })?;
    let report = salvage(&aside, &fresh)?;
    drop(fresh);
    if report.records_lost + report.dead_letters_lost + report.route_records_lost > 0
        || !report.unreadable.is_empty()
    {
        error!(store = %path.display(), from = %aside.display(), "{report}");
    } else {
        warn!(store = %path.display(), from = %aside.display(), "{report}");
    }
    Ok((aside, report))
}

/// Chunk of entries read per contained scope (and written per transaction).
const CHUNK: usize = 10_000;
/// Probes spent finding the rest of one table past damaged pages.
const PROBE_BUDGET: u32 = 1_024;
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
    let mut names: Vec<Option<String>> = Vec::new();
    let name_entries = read_table::<u32, &str, _>(&db, "names", &mut report, |k: u32, v: &str| {
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
    {
        let tx = to.begin_write()?;
        {
            let mut t = tx.open_table(NAMES)?;
            for (id, name) in lookup.iter().enumerate() {
                t.insert(id as u32, &**name)?;
            }
        }
        tx.commit()?;
    }
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
    let cursors = read_table::<&str, u64, _>(&db, "cursors", &mut report, |k: &str, v: u64| {
        Some((k.to_owned(), v))
    });
    let meta = read_table::<&str, u64, _>(&db, "meta", &mut report, |k: &str, v: u64| {
        Some((k.to_owned(), v))
    });
    let states =
        read_table::<&str, &[u8], _>(&db, "route_state", &mut report, |k: &str, v: &[u8]| {
            Some((k.to_owned(), v.to_vec()))
        });
    report.cursors = cursors.len() as u64;
    report.route_states = states.len() as u64;
    let meta: BTreeMap<String, u64> = meta.into_iter().collect();
    let known_record_head = ["usage.as_of_record", "index.through", FLOOR_RECORDS]
        .iter()
        .filter_map(|k| meta.get(*k).copied())
        // Every cursor, though an uplink of a route stream counts that
        // stream's seqs: a floor too high only leaves a gap, one too low
        // would let new records take seqs a cursor has passed already.
        .chain(cursors.iter().map(|(_, v)| *v))
        .max()
        .unwrap_or(0);
    let known_dead_head = ["usage.as_of_dead", FLOOR_DEAD]
        .iter()
        .filter_map(|k| meta.get(*k).copied())
        .max()
        .unwrap_or(0);

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
        let copied = copy_stream(
            &db,
            to,
            &table,
            &record_ok,
            known,
            &mut report,
            probe_deadline,
        )?;
        report.route_records += copied.kept;
        report.route_records_lost += copied.lost;
        route_heads.push((route_retention::head_key(route), copied.head.max(known)));
    }

    let tx = to.begin_write()?;
    {
        let mut t = tx.open_table(CURSORS)?;
        for (k, v) in &cursors {
            t.insert(k.as_str(), *v)?;
        }
        let mut t = tx.open_table(ROUTE_STATE)?;
        for (k, v) in &states {
            t.insert(k.as_str(), v.as_slice())?;
        }
    }
    tx.commit()?;
    write_floors(
        to,
        records.head.max(known_record_head),
        dead.head.max(known_dead_head),
        &route_heads,
    )?;
    drop(db);
    Ok(report)
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

struct Copied {
    kept: u64,
    lost: u64,
    /// The last key kept (0 if none).
    head: u64,
}

/// One contained read of up to [`CHUNK`] entries of `table` from `start`.
enum Chunk {
    /// Entries read, and whether the table ended after them.
    Read(Vec<(u64, Vec<u8>)>, bool),
    /// The read failed (or panicked) after these entries.
    Failed(Vec<(u64, Vec<u8>)>, String),
}

fn read_chunk(db: &ReadOnlyDatabase, table: &str, start: u64, max: usize) -> Chunk {
    let mut out = Vec::new();
    let result = contained(|| -> Result<bool, String> {
        let tx = db.begin_read().map_err(|e| e.to_string())?;
        let t = match tx.open_table(TableDefinition::<u64, &[u8]>::new(table)) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(true),
            Err(e) => return Err(e.to_string()),
        };
        let mut iter = t.range(start..).map_err(|e| e.to_string())?;
        while out.len() < max {
            match iter.next() {
                None => return Ok(true),
                Some(entry) => {
                    let (k, v) = entry.map_err(|e| e.to_string())?;
                    out.push((k.value(), v.value().to_vec()));
                }
            }
        }
        Ok(false)
    });
    match result {
        Ok(Ok(ended)) => Chunk::Read(out, ended),
        Ok(Err(e)) => Chunk::Failed(out, e),
        Err(p) => Chunk::Failed(out, p.to_string()),
    }
}

/// Whether a read of `table` from `start` gets past damage: `Some(None)` the
/// table ends there, `Some(Some(k))` its first entry from there has key `k`,
/// `None` the read fails.
fn probe(db: &ReadOnlyDatabase, table: &str, start: u64) -> Option<Option<u64>> {
    match read_chunk(db, table, start, 1) {
        Chunk::Read(v, _) => Some(v.first().map(|(k, _)| *k)),
        Chunk::Failed(..) => None,
    }
}

/// Copies a seq-keyed stream, skipping past what does not read.
fn copy_stream(
    db: &ReadOnlyDatabase,
    to: &Database,
    table: &str,
    valid: &dyn Fn(&[u8]) -> bool,
    known_head: u64,
    report: &mut SalvageReport,
    probe_deadline: std::time::Instant,
) -> Result<Copied, StoreError> {
    let mut copied = Copied {
        kept: 0,
        lost: 0,
        head: 0,
    };
    // The first key read, while none was kept: what is lost before the
    // first kept one counts from there.
    let mut first_seen: Option<u64> = None;
    // The last key kept, and the last key read in order (kept or not):
    // reading resumes after the higher.
    let mut last: Option<u64> = None;
    let mut seen: Option<u64> = None;
    let mut start = 0u64;
    let mut probes = Probes {
        count: 0,
        deadline: probe_deadline,
    };
    loop {
        let (entries, outcome) = match read_chunk(db, table, start, CHUNK) {
            Chunk::Read(v, ended) => (v, Ok(ended)),
            Chunk::Failed(v, e) => (v, Err(e)),
        };
        // Keys must increase: an entry out of order among its neighbours is
        // a damaged key (a spike above the next one, or a dip below the last
        // kept). The last entry of a chunk that did not end is judged with
        // the next chunk.
        let judged = match outcome {
            Ok(false) if !entries.is_empty() => entries.len() - 1,
            _ => entries.len(),
        };
        let mut batch: Vec<(u64, &[u8])> = Vec::new();
        for i in 0..judged {
            let (k, v) = &entries[i];
            // An entry with no next neighbour (the table's end, or damage
            // after it) cannot be judged by one. A stream's keys run on by
            // one (retention takes the oldest, so gaps are rare: what a
            // repair or an earlier salvage removed), so such an entry that
            // jumps past the key before it is taken only when a head the
            // store recorded elsewhere reaches it; a bit flipped in the last
            // key would otherwise give a record a seq it never had.
            let unvouched_jump = entries.get(i + 1).is_none()
                && seen.is_some_and(|l| *k > l.saturating_add(1))
                && *k > known_head;
            // Sequence numbers start at 1.
            let in_order = *k > 0
                && !unvouched_jump
                && seen.is_none_or(|l| *k > l)
                && entries.get(i + 1).is_none_or(|(n, _)| k < n);
            if !in_order {
                continue;
            }
            seen = Some(*k);
            if valid(v) {
                if let Some(l) = last {
                    copied.lost = copied.lost.saturating_add(k - l - 1);
                } else if let Some(first) = first_seen {
                    copied.lost = copied.lost.saturating_add(k - first);
                }
                last = Some(*k);
                batch.push((*k, v.as_slice()));
            } else if first_seen.is_none() && last.is_none() {
                first_seen = Some(*k);
            }
        }
        if !batch.is_empty() {
            let tx = to.begin_write()?;
            {
                let mut t = tx.open_table(TableDefinition::<u64, &[u8]>::new(table))?;
                for (k, v) in &batch {
                    t.insert(*k, *v)?;
                }
            }
            tx.commit()?;
            copied.kept += batch.len() as u64;
        }
        let resume = seen.map_or(start, |l| l.saturating_add(1)).max(start);
        match outcome {
            Ok(true) => break,
            Ok(false) if resume > start => {
                start = resume;
                continue;
            }
            // No progress in a full chunk: keys out of order throughout.
            Ok(false) => {}
            Err(e) => {
                warn!(table, after = ?seen, error = %e,
                    "salvage: a read failed; looking for the rest of the table");
            }
        }
        match skip_damage(db, table, resume, &mut probes) {
            Some(Some(next)) => {
                report.unreadable.push(format!(
                    "table {table}: keys {resume}..{next} (damaged pages skipped)"
                ));
                start = next;
                // Keys before `next` are behind us now.
                seen = Some(next - 1);
            }
            Some(None) => {
                report.unreadable.push(format!(
                    "table {table}: keys from {resume} (damaged pages at its end)"
                ));
                break;
            }
            None => {
                report.unreadable.push(format!(
                    "table {table}: keys from {resume} (gave up after {} probes)",
                    probes.count
                ));
                break;
            }
        }
    }
    copied.head = last.unwrap_or(0);
    copied.lost = copied
        .lost
        .saturating_add(known_head.saturating_sub(copied.head));
    Ok(copied)
}

/// The probes one table's salvage may still make: [`PROBE_BUDGET`] of
/// them, until the salvage's deadline ([`PROBE_TIME`] after it began).
struct Probes {
    count: u32,
    deadline: std::time::Instant,
}

impl Probes {
    /// Whether one more probe may be made (and counts it).
    fn take(&mut self) -> bool {
        if self.count >= PROBE_BUDGET || std::time::Instant::now() >= self.deadline {
            return false;
        }
        self.count += 1;
        true
    }
}

/// Finds where `table` reads again after damage at `from`: the lowest start
/// key past it from which a read succeeds and finds an entry
/// (`Some(Some(start))`), the table's end (`Some(None)`), or `None` when the
/// probe budget is spent.
fn skip_damage(
    db: &ReadOnlyDatabase,
    table: &str,
    from: u64,
    probes: &mut Probes,
) -> Option<Option<u64>> {
    // Doubling steps past the damage to a start that reads.
    let mut bad = from;
    let mut step = 1u64;
    let (good, found) = loop {
        if !probes.take() {
            return None;
        }
        let at = from.saturating_add(step);
        match probe(db, table, at) {
            Some(found) => break (at, found),
            None if at == u64::MAX => return Some(None),
            None => {
                bad = at;
                step = step.saturating_mul(2);
            }
        }
    };
    // Bisect back to the lowest start that reads.
    let (mut lo, mut hi, mut first) = (bad, good, found);
    while hi - lo > 1 {
        if !probes.take() {
            break;
        }
        let mid = lo + (hi - lo) / 2;
        match probe(db, table, mid) {
            Some(f) => {
                hi = mid;
                first = f;
            }
            None => lo = mid,
        }
    }
    Some(first.map(|_| hi))
}

/// Opens a damaged file for reading only, without redb's recovery (which
/// would refuse it or need to write).
fn open_damaged(path: &Path) -> Result<ReadOnlyDatabase, String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    if len == 0 {
        return Err("it is empty".to_owned());
    }
    let backend = DamagedFile {
        file,
        len: len.div_ceil(PAGE) * PAGE,
    };
    match contained(|| {
        Builder::new()
            .set_cache_size(1 << 20)
            // A shared reader trusts no allocator state and needs no
            // recovery: it reads the committed trees as they are.
            .set_concurrency_mode(ConcurrencyMode::SingleWriter)
            .open_read_only_with_backend(backend)
    }) {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(e)) => Err(e.to_string()),
        Err(p) => Err(p.to_string()),
    }
}

const PAGE: u64 = 4096;

/// A damaged file as redb's storage: read-only, zeros past its end, locks
/// that always succeed (nobody else has the set-aside file open).
#[derive(Debug)]
struct DamagedFile {
    file: std::fs::File,
    len: u64,
}

/// redb 4.x's lock byte that a live writer holds while the file is
/// consistent (`CONSISTENT_BYTE` = `1 << 62` + 4): a shared reader refuses
/// an unclean file unless it is held, so this backend says it is.
const CONSISTENT_BYTE: u64 = (1 << 62) + 4;

impl StorageBackend for DamagedFile {
    fn len(&self) -> Result<u64, std::io::Error> {
        Ok(self.len)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        use std::os::unix::fs::FileExt;
        out.fill(0);
        let mut done = 0usize;
        while done < out.len() {
            let at = offset.saturating_add(done as u64);
            match self.file.read_at(&mut out[done..], at) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn set_len(&self, _: u64) -> Result<(), std::io::Error> {
        Err(std::io::Error::other("a damaged store is read only"))
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        Ok(())
    }

    fn write(&self, _: u64, _: &[u8]) -> Result<(), std::io::Error> {
        Err(std::io::Error::other("a damaged store is read only"))
    }

    fn try_lock_range(&self, _: Bound<u64>, _: Bound<u64>) -> Result<bool, redb::BackendError> {
        Ok(true)
    }

    fn try_lock_shared_range(
        &self,
        _: Bound<u64>,
        _: Bound<u64>,
    ) -> Result<bool, redb::BackendError> {
        Ok(true)
    }

    fn lock_range(&self, _: Bound<u64>, _: Bound<u64>) -> Result<(), redb::BackendError> {
        Ok(())
    }

    fn lock_shared_range(&self, _: Bound<u64>, _: Bound<u64>) -> Result<(), redb::BackendError> {
        Ok(())
    }

    fn unlock_range(&self, _: Bound<u64>, _: Bound<u64>) -> Result<(), redb::BackendError> {
        Ok(())
    }

    fn query_lock_range(
        &self,
        start: Bound<u64>,
        _: Bound<u64>,
    ) -> Result<bool, redb::BackendError> {
        Ok(start == Bound::Included(CONSISTENT_BYTE))
    }
}
