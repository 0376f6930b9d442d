//! [`StoreError`]: what failed in the store layer, and which failures a
//! reopen, the operator or a new file would cure.

use std::path::PathBuf;

use thiserror::Error;

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
    /// A read's cancel token was cancelled (its request is gone).
    #[error("cancelled: the request is gone")]
    Cancelled,
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
