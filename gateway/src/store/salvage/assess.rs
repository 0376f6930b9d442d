//! The verdict on a store file before anything reads it ([`assess`]):
//! sound (here is the database) or damaged (why).

use std::path::Path;

use redb::{Builder, Database, DatabaseError, ReadableDatabase, ReadableTable, StorageError};
use tracing::warn;

use crate::contain::contained_quietly as contained;
use crate::store::{codec, StoreError, CURSORS, DEAD, META, NAMES, RECORDS};

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
