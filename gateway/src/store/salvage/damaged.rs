//! Reading a damaged file without trusting it: a read-only storage backend
//! that reads zeros past the file's end and needs no recovery.

use std::ops::Bound;
use std::path::Path;

use redb::{Builder, ConcurrencyMode, ReadOnlyDatabase, StorageBackend};

use crate::contain::contained_quietly as contained;

/// Opens a damaged file for reading only, without redb's recovery (which
/// would refuse it or need to write).
pub(super) fn open_damaged(path: &Path) -> Result<ReadOnlyDatabase, String> {
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
