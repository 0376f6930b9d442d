//! The durable store: one redb file holding append-only streams and cursors.
//!
//! # Guarantees
//! - A record is in the `records` stream once the write transaction that
//!   appended it has committed; commits use redb's `Durability::Immediate`
//!   (fsync before `commit` returns). Sources are acknowledged only after that.
//! - Sequence numbers start at 1, increase by one per record and are never
//!   reused; a gap appears only where retention removed records, or where
//!   a damaged file's records could not be salvaged.
//! - A cursor is a consumer's durable position: the highest sequence number it
//!   has finished with (0 = nothing yet). It only moves forward.
//!
//! # On-disk layout (tables)
//! | table     | key            | value                                   |
//! |-----------|----------------|-----------------------------------------|
//! | `records` | seq `u64`      | an encoded record ([`codec`])           |
//! | `dead`    | seq `u64`      | an encoded dead letter                  |
//! | `names`   | id `u32`       | an interned device, source or field name |
//! | `known_series` | device id << 32 \| field id | `()`: the series with stored records ([`names`]) |
//! | `cursors` | consumer name  | `u64`, the last sequence consumed        |
//! | `meta`    | key            | `u64` (`format_version`, byte accounts, route stream heads, `floor.*` after a salvage) |
//! | `route.NAME` | seq `u64`   | a route's output record (same encoding) |
//! | `route_state` | route name | a route's state (see `route/`)          |
//!
//! Beside the file: `ferry.redb.clean` while it is closed cleanly (see
//! below), and `ferry.redb.corrupt-<unix time>` for each damaged file set
//! aside.
//!
//! # Opening: is the file sound?
//! [`Store::open_or_salvage`] (the daemon's start) and `ferry fsck` decide
//! by one path ([`salvage::assess`]) before anything else reads the file:
//! redb's integrity check when the file is not known to be as Ferry last
//! closed it (after a crash, `kill -9`, power cut or panic-abort, or a
//! change by anything else; measured costs and the reasoning are in
//! [`salvage`]), then Ferry's checks, each in a contained scope. A damaged
//! file (corrupt, truncated, empty, garbage) is moved aside, kept, and a
//! fresh store gets what reads from it, with the original sequence numbers
//! ([`salvage::set_aside_and_salvage`]); every decision is logged and
//! counted (`ferry_store_files_set_aside_total`,
//! `ferry_store_salvaged_total`, `ferry_store_salvage_lost_total`,
//! `ferry_store_salvage_unreadable_total`,
//! `ferry_store_integrity_checks_total`). After a salvage the heads start
//! at the highest sequence number the damaged file is known to have used
//! (`floor.*` in `meta`), so none is used twice.
//!
//! # When data is deleted
//! Only by retention ([`retention`]): records older than `max_age`, and the
//! oldest records when the store reaches its disk budget (delivered ones
//! first; undelivered ones only under `when_full = "drop_oldest"`). Route
//! output streams are trimmed by the same rules, after raw records of the
//! same kind (`route_retention`). Every deletion is counted by reason.

pub mod codec;
pub mod config;
pub mod fsck;
mod hook;
pub mod limits;
mod names;
pub mod retention;
mod route_retention;
pub mod salvage;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ferry_core::record::{DeadLetter, Millis, Record};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use thiserror::Error;
use tokio::sync::watch;
use tracing::warn;

pub use hook::IndexHook;
pub use names::{DeviceEntry, Names};
pub use retention::{Retention, WhenFull};
pub use writer::{Cursors, RouteCommit, RouteCommits, Writer, WriterSettings};

use codec::DecodeError;

pub(crate) const RECORDS: TableDefinition<u64, &[u8]> = TableDefinition::new("records");
pub(crate) const DEAD: TableDefinition<u64, &[u8]> = TableDefinition::new("dead");
pub(crate) const NAMES: TableDefinition<u32, &str> = TableDefinition::new("names");
pub(crate) const CURSORS: TableDefinition<&str, u64> = TableDefinition::new("cursors");
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Each route's state, committed with its output and cursor (`route/`).
pub(crate) const ROUTE_STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("route_state");

/// A stream of records: the stored raw records, or a route's output (table
/// `route.NAME`, seq → record in the same encoding as `records`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Stream {
    Raw,
    Route(Arc<str>),
}

impl Stream {
    /// The name of the stream's table.
    pub fn table(&self) -> String {
        match self {
            Stream::Raw => "records".to_owned(),
            Stream::Route(name) => format!("route.{name}"),
        }
    }
}

/// An error of the store layer, with what was being done.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("cannot open store {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: redb::DatabaseError,
    },
    #[error("store {path} has format version {found}, this Ferry reads version {expected}")]
    Version {
        path: PathBuf,
        found: u64,
        expected: u64,
    },
    #[error("store I/O: {0}")]
    Redb(#[from] redb::Error),
    #[error("the store is being reopened after an I/O error")]
    Reopening,
    #[error("store {path} is corrupt ({error}) and cannot be moved aside: {source}")]
    SetAside {
        path: PathBuf,
        error: String,
        #[source]
        source: std::io::Error,
    },
}

impl StoreError {
    /// True after an I/O error: redb does no more work until the database is
    /// closed and reopened.
    pub fn needs_reopen(&self) -> bool {
        use redb::{DatabaseError as D, StorageError as S};
        matches!(
            self,
            StoreError::Redb(redb::Error::Io(_) | redb::Error::PreviousIo)
                | StoreError::Reopening
                | StoreError::Open {
                    source: D::Storage(S::Io(_) | S::PreviousIo),
                    ..
                }
        )
    }

    /// True when the file system refuses to write the store (read-only, or
    /// not permitted): a new file would not help, the operator must.
    pub fn is_unwritable(&self) -> bool {
        use redb::{DatabaseError as D, StorageError as S};
        let io = match self {
            StoreError::Open {
                source: D::Storage(S::Io(e)),
                ..
            } => e,
            StoreError::Redb(redb::Error::Io(e)) => e,
            _ => return false,
        };
        matches!(
            io.kind(),
            std::io::ErrorKind::ReadOnlyFilesystem | std::io::ErrorKind::PermissionDenied
        )
    }

    /// True when the file itself is bad (a new file would cure it), not
    /// when it is in use, not permitted, or of a newer format.
    pub fn is_corruption(&self) -> bool {
        use redb::{DatabaseError as D, StorageError as S};
        match self {
            StoreError::Open { source, .. } => match source {
                D::Storage(S::Corrupted(_)) => true,
                // A short file, or one that is not a redb file at all.
                D::Storage(S::Io(e)) => matches!(
                    e.kind(),
                    std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::InvalidData
                ),
                D::UpgradeRequired(_) => true,
                _ => false,
            },
            StoreError::Redb(redb::Error::Corrupted(_)) => true,
            _ => false,
        }
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Redb(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// The highest committed sequence number of each stream (0 = empty).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Heads {
    pub records: u64,
    pub dead: u64,
}

/// A record read back with its sequence number.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRecord {
    pub seq: u64,
    pub record: Record,
}

/// A dead letter read back with its sequence number.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredDeadLetter {
    pub seq: u64,
    pub dead: DeadLetter,
}

/// Options for opening a store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// redb's page cache, in bytes. Small on purpose: the log is read once,
    /// in order, by each consumer.
    pub cache_bytes: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            cache_bytes: 1 << 20,
        }
    }
}

/// The outcome of reading a range of a stream.
#[derive(Debug, Default)]
pub struct ReadStats {
    /// The last sequence number looked at (decodable or not).
    pub last_seq: u64,
    /// Values that failed to decode and were skipped.
    pub undecodable: u64,
}

/// A handle to the open store; cheap to clone, shared by every component.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    /// The open database; `None` only while it is being reopened after an
    /// I/O error (redb refuses all work after one until it is reopened).
    db: std::sync::RwLock<Option<Arc<Database>>>,
    opts: StoreOptions,
    path: PathBuf,
    names: Names,
    heads: watch::Sender<Heads>,
    /// The head of each route's output stream, once known.
    route_heads: std::sync::RwLock<std::collections::HashMap<Arc<str>, u64>>,
}

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

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The database, to begin a transaction on. Hold it only for the
    /// transaction: a reopen waits for every holder.
    pub(crate) fn db(&self) -> Result<Arc<Database>, StoreError> {
        self.inner
            .db
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(StoreError::Reopening)
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

    pub(crate) fn names(&self) -> &Names {
        &self.inner.names
    }

    pub(crate) fn heads_sender(&self) -> &watch::Sender<Heads> {
        &self.inner.heads
    }

    /// The committed heads now.
    pub fn heads(&self) -> Heads {
        *self.inner.heads.borrow()
    }

    /// A receiver told of every commit.
    pub fn watch_heads(&self) -> watch::Receiver<Heads> {
        self.inner.heads.subscribe()
    }

    /// Reads up to `max` records with `seq > after` into `out`, in order.
    /// Records that fail to decode are skipped, logged and counted in the result.
    pub fn read_records(
        &self,
        after: u64,
        max: usize,
        out: &mut Vec<StoredRecord>,
    ) -> Result<ReadStats, StoreError> {
        self.read_stream(&Stream::Raw, after, max, out)
    }

    /// [`Store::read_records`] of any stream; a route's stream that has no
    /// output yet is empty.
    pub fn read_stream(
        &self,
        stream: &Stream,
        after: u64,
        max: usize,
        out: &mut Vec<StoredRecord>,
    ) -> Result<ReadStats, StoreError> {
        let tx = self.db()?.begin_read()?;
        let name = stream.table();
        let table = match tx.open_table(TableDefinition::<u64, &[u8]>::new(&name)) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => {
                return Ok(ReadStats {
                    last_seq: after,
                    undecodable: 0,
                })
            }
            Err(e) => return Err(e.into()),
        };
        let mut stats = ReadStats {
            last_seq: after,
            undecodable: 0,
        };
        for entry in table.range(after.saturating_add(1)..)?.take(max) {
            let (seq, bytes) = entry?;
            let seq = seq.value();
            stats.last_seq = seq;
            match self.decode_record(bytes.value()) {
                Ok(record) => out.push(StoredRecord { seq, record }),
                Err(e) => {
                    stats.undecodable += 1;
                    warn!(seq, error = %e, "skipping a stored record that does not decode");
                }
            }
        }
        Ok(stats)
    }

    /// The highest committed sequence number of `stream` (0 = empty).
    pub fn stream_head(&self, stream: &Stream) -> Result<u64, StoreError> {
        let Stream::Route(route) = stream else {
            return Ok(self.heads().records);
        };
        let known = self.route_heads_map().get(route).copied();
        if let Some(head) = known {
            return Ok(head);
        }
        let tx = self.db()?.begin_read()?;
        let name = stream.table();
        let head = match tx.open_table(TableDefinition::<u64, &[u8]>::new(&name)) {
            Ok(table) => last_key(&table)?,
            Err(redb::TableError::TableDoesNotExist(_)) => 0,
            Err(e) => return Err(e.into()),
        };
        // Retention may have emptied the stream; its head is kept in `meta`.
        let saved = tx
            .open_table(META)?
            .get(&*route_retention::head_key(route))?
            .map_or(0, |v| v.value());
        let head = head.max(saved);
        self.set_route_head(route, head);
        Ok(head)
    }

    fn route_heads_map(
        &self,
    ) -> std::sync::RwLockReadGuard<'_, std::collections::HashMap<Arc<str>, u64>> {
        self.inner
            .route_heads
            .read()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes a route stream's new head (by the writer, after its commit).
    pub(crate) fn set_route_head(&self, route: &Arc<str>, head: u64) {
        let mut map = self
            .inner
            .route_heads
            .write()
            .unwrap_or_else(|e| e.into_inner());
        let h = map.entry(route.clone()).or_insert(0);
        *h = (*h).max(head);
    }

    /// Up to `limit` records of `device`, looking through at most
    /// `max_scan` stored records: the first after `after`, or (no `after`)
    /// the newest; and the sequence number to continue after.
    pub fn read_device(
        &self,
        device: &str,
        after: Option<u64>,
        limit: usize,
        max_scan: usize,
    ) -> Result<(Vec<StoredRecord>, u64), StoreError> {
        let head = self.heads().records;
        let names = self.names().snapshot();
        let Some(id) = names.iter().position(|n| &**n == device) else {
            return Ok((Vec::new(), after.unwrap_or(head)));
        };
        let id = id as u32;
        // The device is in the record's header: no need to decode the others.
        let of_device = |bytes: &[u8]| {
            let mut r = codec::Reader::new(bytes);
            r.version().is_ok()
                && r.zvarint().is_ok()
                && r.id().is_ok()
                && r.id().is_ok_and(|d| d == id)
        };
        let tx = self.db()?.begin_read()?;
        let table = tx.open_table(RECORDS)?;
        let mut found: Vec<(u64, Vec<u8>)> = Vec::new();
        let next = match after {
            // Nothing after `after` yet (and `after + 1 ..= head` would be an
            // inverted range).
            Some(after) if after >= head => after,
            Some(after) => {
                let mut next = after;
                for e in table.range(after.saturating_add(1)..=head)?.take(max_scan) {
                    let (seq, bytes) = e?;
                    next = seq.value();
                    if of_device(bytes.value()) {
                        found.push((next, bytes.value().to_vec()));
                        if found.len() == limit {
                            break;
                        }
                    }
                }
                next
            }
            None => {
                for e in table.range(..=head)?.rev().take(max_scan) {
                    let (seq, bytes) = e?;
                    if of_device(bytes.value()) {
                        found.push((seq.value(), bytes.value().to_vec()));
                        if found.len() == limit {
                            break;
                        }
                    }
                }
                found.reverse();
                head
            }
        };
        let mut out = Vec::with_capacity(found.len());
        for (seq, bytes) in found {
            match self.decode_record(&bytes) {
                Ok(record) => out.push(StoredRecord { seq, record }),
                Err(e) => {
                    warn!(seq, error = %e, "skipping a stored record that does not decode")
                }
            }
        }
        Ok((out, next))
    }

    /// The committed state of the route `name`, if it has committed any.
    pub fn route_state(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = self.db()?.begin_read()?;
        match tx.open_table(ROUTE_STATE) {
            Ok(table) => Ok(table.get(name)?.map(|v| v.value().to_vec())),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads up to `max` dead letters with `seq > after`, in order.
    pub fn read_dead(&self, after: u64, max: usize) -> Result<Vec<StoredDeadLetter>, StoreError> {
        let tx = self.db()?.begin_read()?;
        let table = tx.open_table(DEAD)?;
        let mut out = Vec::new();
        for entry in table.range(after.saturating_add(1)..)?.take(max) {
            let (seq, bytes) = entry?;
            match self.decode_dead(bytes.value()) {
                Ok(dead) => out.push(StoredDeadLetter {
                    seq: seq.value(),
                    dead,
                }),
                Err(e) => {
                    warn!(seq = seq.value(), error = %e, "skipping an undecodable dead letter")
                }
            }
        }
        Ok(out)
    }

    /// The committed position of the cursor `name` (0 if it has none yet).
    pub fn cursor(&self, name: &str) -> Result<u64, StoreError> {
        let tx = self.db()?.begin_read()?;
        let table = tx.open_table(CURSORS)?;
        Ok(table.get(name)?.map(|v| v.value()).unwrap_or(0))
    }

    /// The timestamp of the first record with `seq > after`, if any.
    pub fn first_ts_after(&self, after: u64) -> Result<Option<Millis>, StoreError> {
        let mut out = Vec::with_capacity(1);
        self.read_records(after, 1, &mut out)?;
        Ok(out.first().map(|r| r.record.ts))
    }

    /// The timestamp of the first record of `stream` with `seq > after`, if any.
    pub fn first_ts_in(&self, stream: &Stream, after: u64) -> Result<Option<Millis>, StoreError> {
        let mut out = Vec::with_capacity(1);
        self.read_stream(stream, after, 1, &mut out)?;
        Ok(out.first().map(|r| r.record.ts))
    }

    /// Decodes one stored record.
    pub fn decode_record(&self, bytes: &[u8]) -> Result<Record, DecodeError> {
        codec::decode_record(bytes, &self.inner.names.snapshot())
    }

    pub(crate) fn decode_dead(&self, bytes: &[u8]) -> Result<DeadLetter, DecodeError> {
        codec::decode_dead_letter(bytes, &self.inner.names.snapshot())
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

/// Flushes a directory entry change (rename, unlink) of `file`'s directory.
pub(crate) fn sync_dir(file: &Path) {
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// `ferry.redb.clean`: written after Ferry closed the store cleanly, with
/// the file's length, modification time and inode; removed when the store
/// is opened. Its presence, matching the file, is what lets an open skip
/// the full integrity check.
pub(crate) mod clean_record {
    use std::os::unix::fs::MetadataExt;
    use std::path::{Path, PathBuf};

    fn record_path(store: &Path) -> PathBuf {
        let mut p = store.as_os_str().to_owned();
        p.push(".clean");
        PathBuf::from(p)
    }

    fn describe(store: &Path) -> Option<String> {
        let m = std::fs::metadata(store).ok()?;
        Some(format!(
            "ferry store closed cleanly\nlen {}\nmtime {}.{:09}\nino {}\n",
            m.len(),
            m.mtime(),
            m.mtime_nsec(),
            m.ino()
        ))
    }

    /// Whether the record exists and describes the file as it is now.
    pub fn matches(store: &Path) -> bool {
        match (std::fs::read_to_string(record_path(store)), describe(store)) {
            (Ok(recorded), Some(now)) => recorded == now,
            _ => false,
        }
    }

    /// Removes the record, durably (a crash from here on must leave none).
    pub fn remove(store: &Path) {
        let path = record_path(store);
        match std::fs::remove_file(&path) {
            Ok(()) => super::sync_dir(&path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(record = %path.display(), error = %e,
                    "cannot remove the store's clean-close record (the file's next change makes \
                     it stale, so a later start still checks a changed file)");
            }
        }
    }

    /// Records that the store was just closed cleanly.
    pub fn write(store: &Path) {
        let Some(text) = describe(store) else { return };
        let path = record_path(store);
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let written = (|| -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        })();
        match written {
            Ok(()) => {
                super::sync_dir(&path);
                tracing::info!(store = %store.display(), "store closed cleanly");
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                tracing::warn!(record = %path.display(), error = %e,
                    "cannot record the store's clean close; the next start runs the full integrity check");
            }
        }
    }
}

fn last_key(table: &impl ReadableTable<u64, &'static [u8]>) -> Result<u64, StoreError> {
    Ok(table.last()?.map(|(k, _)| k.value()).unwrap_or(0))
}

#[cfg(test)]
mod route_tests;
#[cfg(test)]
mod tests;
