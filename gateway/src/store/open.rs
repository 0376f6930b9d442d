//! Opening the store: the file as it is ([`Store::open`]) or after deciding
//! whether it is sound ([`Store::open_or_salvage`]), reopening after an I/O
//! error, and closing (recording a clean close).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, ReadableTable};
use tokio::sync::watch;
use tracing::warn;

use super::{
    clean_record, codec, last_key, names, salvage, Heads, Inner, Store, StoreError, StoreOptions,
    CURSORS, DEAD, META, RECORDS,
};

impl Store {
    /// The store file inside `data_dir`.
    pub fn file_in(data_dir: &Path) -> PathBuf {
        data_dir.join("ferry.redb")
    }

    /// Opens (or creates) the store file at `path`, trusting it (no
    /// integrity check, no salvage: see [`Store::open_or_salvage`]).
    pub fn open(path: &Path, opts: &StoreOptions) -> Result<Store, StoreError> {
        let db = Database::builder()
            .set_cache_size(opts.cache_bytes)
            .create(path)
            .map_err(|source| StoreError::Open {
                path: path.to_owned(),
                source,
            })?;
        Store::from_db(db, path, opts)
    }

    /// The store on an open database: checks the format version, creates
    /// the tables, loads the names and heads. The file will change from
    /// here, so its clean-close record goes first.
    fn from_db(db: Database, path: &Path, opts: &StoreOptions) -> Result<Store, StoreError> {
        clean_record::remove(path);
        let tx = db.begin_write()?;
        let (version, floors) = {
            let mut meta = tx.open_table(META)?;
            let found = meta.get("format_version")?.map(|v| v.value());
            let floors = (
                meta.get(salvage::FLOOR_RECORDS)?.map_or(0, |v| v.value()),
                meta.get(salvage::FLOOR_DEAD)?.map_or(0, |v| v.value()),
            );
            let version = match found {
                Some(v) => v,
                None => {
                    meta.insert("format_version", u64::from(codec::FORMAT_VERSION))?;
                    u64::from(codec::FORMAT_VERSION)
                }
            };
            (version, floors)
        };
        if version != u64::from(codec::FORMAT_VERSION) {
            return Err(StoreError::Version {
                path: path.to_owned(),
                found: version,
                expected: codec::FORMAT_VERSION.into(),
            });
        }
        // Create every table so readers never meet a missing one.
        tx.open_table(RECORDS)?;
        tx.open_table(DEAD)?;
        tx.open_table(CURSORS)?;
        let names = names::load(&tx, path)?;
        // A salvaged store continues after the highest sequence number the
        // damaged one is known to have used, even where its tail was lost.
        let heads = Heads {
            records: last_key(&tx.open_table(RECORDS)?)?.max(floors.0),
            dead: last_key(&tx.open_table(DEAD)?)?.max(floors.1),
        };
        tx.commit()?;
        Ok(Store {
            inner: Arc::new(Inner {
                db: std::sync::RwLock::new(Some(Arc::new(db))),
                opts: opts.clone(),
                path: path.to_owned(),
                names,
                heads: watch::Sender::new(heads),
                route_heads: Default::default(),
            }),
        })
    }

    /// Opens the store at `path` after deciding whether it is sound
    /// ([`salvage::assess`]; the full integrity check runs unless Ferry
    /// closed the file cleanly and it is unchanged since). A damaged file
    /// (corrupt, truncated, empty, garbage) is moved aside (kept, named
    /// `ferry.redb.corrupt-<unix time>`) and a fresh store is started with
    /// what reads from it ([`salvage::set_aside_and_salvage`]), so a bad
    /// file never needs a person at the gateway. Errors that a new file
    /// would not cure (the store is in use, permission denied, a newer
    /// format) are returned.
    pub fn open_or_salvage(
        path: &Path,
        opts: &StoreOptions,
    ) -> Result<(Store, Opened), StoreError> {
        if !path.exists() {
            clean_record::remove(path);
            return Ok((Store::open(path, opts)?, Opened::New));
        }
        let check = if clean_record::matches(path) {
            salvage::Check::Trusted
        } else {
            salvage::Check::Full
        };
        let started = std::time::Instant::now();
        let verdict = salvage::assess(path, check, opts.cache_bytes)?;
        let took = started.elapsed();
        match verdict {
            salvage::Verdict::Sound(db) => {
                if check == salvage::Check::Full {
                    tracing::info!(store = %path.display(), took_ms = took.as_millis() as u64,
                        "store passed the integrity check (it was not closed cleanly by Ferry, \
                         or changed since)");
                }
                let store = Store::from_db(db, path, opts)?;
                Ok((store, Opened::Sound(check)))
            }
            salvage::Verdict::Damaged(why) => {
                let (aside, report) = salvage::set_aside_and_salvage(path, &why, opts.cache_bytes)?;
                let store = Store::open(path, opts)?;
                Ok((store, Opened::Salvaged { aside, why, report }))
            }
        }
    }

    /// Closes and reopens the database file: what redb requires after an I/O
    /// error (a full disk, a failing card) before it does any more work.
    /// Waits (bounded) for readers to finish their transactions.
    pub(crate) fn reopen(&self) -> Result<(), StoreError> {
        let mut slot = self.inner.db.write().unwrap_or_else(|e| e.into_inner());
        if let Some(db) = slot.take() {
            let mut db = db;
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            loop {
                match Arc::try_unwrap(db) {
                    Ok(db) => {
                        drop(db);
                        break;
                    }
                    Err(shared) if std::time::Instant::now() < deadline => {
                        db = shared;
                        std::thread::sleep(std::time::Duration::from_millis(5));
                    }
                    Err(shared) => {
                        *slot = Some(shared);
                        return Err(StoreError::Reopening);
                    }
                }
            }
        }
        let db = Database::builder()
            .set_cache_size(self.inner.opts.cache_bytes)
            .open(&self.inner.path)
            .map_err(|source| StoreError::Open {
                path: self.inner.path.clone(),
                source,
            })?;
        *slot = Some(Arc::new(db));
        tracing::info!(store = %self.inner.path.display(), "store reopened after an I/O error");
        Ok(())
    }
}

/// What [`Store::open_or_salvage`] found.
#[derive(Debug)]
pub enum Opened {
    /// There was no store file: a new one.
    New,
    /// The file is sound (after the check named).
    Sound(salvage::Check),
    /// The file was damaged: moved to `aside`, and what read was salvaged.
    Salvaged {
        aside: PathBuf,
        why: String,
        report: salvage::SalvageReport,
    },
}

impl Drop for Inner {
    /// The last handle closes the database; a clean close is recorded so the
    /// next open may trust the file ([`salvage`], "When the full check runs").
    fn drop(&mut self) {
        let slot = self.db.get_mut().unwrap_or_else(|e| e.into_inner()).take();
        let Some(db) = slot.and_then(|db| Arc::try_unwrap(db).ok()) else {
            return;
        };
        match db.close() {
            Ok(()) => clean_record::write(&self.path),
            Err(e) => warn!(store = %self.path.display(), error = %e, "closing the store failed"),
        }
    }
}
