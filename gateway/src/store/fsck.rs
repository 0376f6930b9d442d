//! `ferry fsck`: checks a store file (the daemon must not be running: redb
//! opens a file in one process at a time) and, with `--repair`, fixes what
//! can be fixed without losing anything that is readable.
//!
//! First the verdict the daemon's open reaches, by the same path
//! ([`salvage::assess`] with the full check): a damaged file (corrupt,
//! truncated, empty, garbage) is reported with the same reason the daemon
//! logs; `--repair` then does what the daemon's start does: moves it aside
//! and salvages what reads into a fresh store
//! ([`salvage::set_aside_and_salvage`]).
//!
//! Then, on a sound file: redb's own integrity check (page checksums, tree
//! structure; whether it had to repair); the format version; each stream's continuity (retention only ever removes
//! from the front, so a gap inside a stream is damage); that every record
//! and dead letter decodes; that no cursor is beyond its stream's head.
//! Repairs: removes what does not decode (it could never be sent), moves
//! cursors beyond the head back to it, and compacts the file.

use std::fmt;
use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable};

use super::salvage::{self, Check, Verdict};
use super::{Store, StoreError, StoreOptions, CURSORS, DEAD, RECORDS};

/// What a check found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FsckReport {
    /// redb's integrity check passed (false: it repaired the file on open).
    pub integrity_ok: bool,
    pub records: u64,
    pub first_record: u64,
    pub head: u64,
    pub dead_letters: u64,
    /// Inner gaps in the record stream: (after, before).
    pub gaps: Vec<(u64, u64)>,
    /// Records that do not decode.
    pub undecodable: Vec<u64>,
    /// Dead letters that do not decode.
    pub undecodable_dead: Vec<u64>,
    /// Cursors beyond the head: (name, position).
    pub cursors_ahead: Vec<(String, u64)>,
    /// The file is damaged (why): the daemon's open sets it aside.
    pub damaged: Option<String>,
    /// What `--repair` did.
    pub repaired: Vec<String>,
}

impl FsckReport {
    /// Problems found (repaired or not).
    pub fn problems(&self) -> usize {
        usize::from(!self.integrity_ok || self.damaged.is_some())
            + self.gaps.len()
            + self.undecodable.len()
            + self.undecodable_dead.len()
            + self.cursors_ahead.len()
    }
}

impl fmt::Display for FsckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(why) = &self.damaged {
            writeln!(
                f,
                "problem: the store is damaged: {why} (the daemon sets such a file aside at its \
                 next start and salvages what reads into a fresh store; --repair does it now)"
            )?;
        }
        writeln!(
            f,
            "records: {} (seq {}..={}), dead letters: {}",
            self.records, self.first_record, self.head, self.dead_letters
        )?;
        if !self.integrity_ok && self.damaged.is_none() {
            writeln!(
                f,
                "problem: redb's integrity check failed (the file was repaired on open)"
            )?;
        }
        for (a, b) in &self.gaps {
            writeln!(f, "problem: records missing between seq {a} and {b}")?;
        }
        if !self.undecodable.is_empty() {
            writeln!(
                f,
                "problem: {} records do not decode (first: seq {})",
                self.undecodable.len(),
                self.undecodable[0]
            )?;
        }
        if !self.undecodable_dead.is_empty() {
            writeln!(
                f,
                "problem: {} dead letters do not decode",
                self.undecodable_dead.len()
            )?;
        }
        for (name, pos) in &self.cursors_ahead {
            writeln!(
                f,
                "problem: cursor {name} at {pos} is beyond the head {}",
                self.head
            )?;
        }
        for r in &self.repaired {
            writeln!(f, "repaired: {r}")?;
        }
        match (self.problems(), self.repaired.is_empty()) {
            (0, _) => write!(f, "store OK"),
            (n, true) => write!(f, "{n} problems; run with --repair to fix them"),
            (n, false) => write!(f, "{n} problems found and repaired"),
        }
    }
}

/// Checks the store at `path`; with `repair`, fixes what it found.
pub fn fsck(path: &Path, repair: bool) -> Result<FsckReport, StoreError> {
    let mut report = FsckReport::default();
    let cache = StoreOptions::default().cache_bytes;
    match salvage::assess(path, Check::Full, cache)? {
        Verdict::Sound(db) => drop(db),
        Verdict::Damaged(why) => {
            report.integrity_ok = false;
            report.damaged = Some(why.clone());
            if !repair {
                return Ok(report);
            }
            let (aside, salvaged) = salvage::set_aside_and_salvage(path, &why, cache)?;
            report.repaired.push(format!(
                "moved the damaged file to {} and started a fresh store: {salvaged}",
                aside.display()
            ));
            let store = Store::open(path, &StoreOptions::default())?;
            scan(&store, &mut report)?;
            return Ok(report);
        }
    }
    {
        let mut db = Database::open(path).map_err(|source| StoreError::Open {
            path: path.to_owned(),
            source,
        })?;
        report.integrity_ok = db.check_integrity().map_err(|source| StoreError::Open {
            path: path.to_owned(),
            source,
        })?;
    }
    // Open as a store: checks the format version and loads the names.
    let store = Store::open(path, &StoreOptions::default())?;
    scan(&store, &mut report)?;
    if repair && report.problems() > 0 {
        fix(&store, &mut report)?;
        drop(store);
        let mut db = Database::open(path).map_err(|source| StoreError::Open {
            path: path.to_owned(),
            source,
        })?;
        if db.compact().map_err(|e| StoreError::Redb(e.into()))? {
            report.repaired.push("compacted the file".into());
        }
    }
    Ok(report)
}

fn scan(store: &Store, report: &mut FsckReport) -> Result<(), StoreError> {
    let db = store.db()?;
    let tx = db.begin_read()?;
    let records = tx.open_table(RECORDS)?;
    let mut prev: Option<u64> = None;
    for entry in records.iter()? {
        let (k, v) = entry?;
        let seq = k.value();
        report.records += 1;
        if let Some(p) = prev {
            if seq != p + 1 {
                report.gaps.push((p, seq));
            }
        } else {
            report.first_record = seq;
        }
        prev = Some(seq);
        if store.decode_record(v.value()).is_err() {
            report.undecodable.push(seq);
        }
    }
    report.head = store.heads().records;
    let dead = tx.open_table(DEAD)?;
    for entry in dead.iter()? {
        let (k, v) = entry?;
        report.dead_letters += 1;
        if store.decode_dead(v.value()).is_err() {
            report.undecodable_dead.push(k.value());
        }
    }
    let cursors = tx.open_table(CURSORS)?;
    for entry in cursors.iter()? {
        let (k, v) = entry?;
        if v.value() > report.head {
            report.cursors_ahead.push((k.value().to_owned(), v.value()));
        }
    }
    Ok(())
}

fn fix(store: &Store, report: &mut FsckReport) -> Result<(), StoreError> {
    let db = store.db()?;
    let tx = db.begin_write()?;
    {
        let mut records = tx.open_table(RECORDS)?;
        for seq in &report.undecodable {
            records.remove(seq)?;
        }
        let mut dead = tx.open_table(DEAD)?;
        for seq in &report.undecodable_dead {
            dead.remove(seq)?;
        }
        let mut cursors = tx.open_table(CURSORS)?;
        for (name, _) in &report.cursors_ahead {
            cursors.insert(name.as_str(), report.head)?;
        }
    }
    tx.commit()?;
    if !report.undecodable.is_empty() {
        report.repaired.push(format!(
            "removed {} undecodable records",
            report.undecodable.len()
        ));
    }
    if !report.undecodable_dead.is_empty() {
        report.repaired.push(format!(
            "removed {} undecodable dead letters",
            report.undecodable_dead.len()
        ));
    }
    for (name, pos) in &report.cursors_ahead {
        report.repaired.push(format!(
            "moved cursor {name} from {pos} back to {}",
            report.head
        ));
    }
    if !report.gaps.is_empty() {
        report
            .repaired
            .push("gaps cannot be filled (the records are gone); uplinks skip them".into());
    }
    Ok(())
}
