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
//!
//! # Files
//! | file | job |
//! | --- | --- |
//! | `mod.rs` | [`Store`], the tables, the types read back |
//! | `open.rs` | opening (trusted or assessed), reopening, closing |
//! | `read.rs` | reads: streams, a device's records, dead letters, cursors, route state |
//! | `error.rs` | [`StoreError`] |
//! | `clean_record.rs` | `ferry.redb.clean`, the clean-close record |
//! | `codec.rs`, `names.rs`, `limits.rs` | the encoding, the interned names, the name limits |
//! | `writer/` | the ingest writer (group commits) |
//! | `retention.rs`, `route_retention.rs` | budgets and accounts of what retention evicts |
//! | `salvage/`, `fsck.rs` | the soundness verdict, salvage, `ferry fsck` |
//! | `hook.rs` | [`IndexHook`], the query index written in the writer's transactions |
//! | `config.rs` | the store's settings from its config section |

mod cancel;
pub(crate) mod clean_record;
pub mod codec;
pub mod config;
mod error;
pub mod fsck;
mod hook;
pub mod limits;
mod names;
mod open;
mod read;
pub mod retention;
mod route_retention;
pub mod salvage;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ferry_core::record::{DeadLetter, Record};
use redb::{Database, ReadableTable, TableDefinition};
use tokio::sync::watch;

pub use cancel::{Cancel, CancelOnDrop};
pub use error::StoreError;
pub use hook::IndexHook;
pub use names::{DeviceEntry, Names};
pub use open::Opened;
pub use retention::{Retention, WhenFull};
pub use writer::{Cursors, RouteCommit, RouteCommits, Writer, WriterSettings};

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

fn last_key(table: &impl ReadableTable<u64, &'static [u8]>) -> Result<u64, StoreError> {
    Ok(table.last()?.map(|(k, _)| k.value()).unwrap_or(0))
}

#[cfg(test)]
mod tests;
