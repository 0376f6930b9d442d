//! Reading a damaged file without trusting it: a read-only storage backend
//! that reads zeros past the file's end and needs no recovery.
//!
//! A file whose first 64 bytes are lost (redb's magic number, page size and
//! region layout) is read through a header rebuilt from what every store
//! this Ferry writes has there: the constants of redb 4.x at 4 KiB pages
//! (checked against a file redb makes, in the tests) and the region sizes
//! from the file's length. Its commit slots (the next 256 bytes) are its
//! own: each carries a checksum redb verifies, and the root of each tree
//! its own, so a rebuilt header gives the committed trees or nothing.
//! Lost commit slots lose the roots: then nothing is read (a raw scan of
//! pages for the record encoding is not done; see `mod.rs`).

use std::ops::Bound;
use std::path::Path;

use redb::{Builder, ConcurrencyMode, ReadOnlyDatabase, StorageBackend};

use crate::contain::contained_quietly as contained;

/// Opens a damaged file for reading only, without redb's recovery (which
/// would refuse it or need to write).
pub(super) fn open_damaged(path: &Path) -> Result<ReadOnlyDatabase, String> {
    let open = |head| {
        let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
        let len = file.metadata().map_err(|e| e.to_string())?.len();
        if len == 0 {
            return Err("it is empty".to_owned());
        }
        open_backend(DamagedFile {
            file,
            len: len.div_ceil(PAGE) * PAGE,
            head,
        })
    };
    let why = match open(None) {
        Ok(db) => return Ok(db),
        Err(why) => why,
    };
    // The header may be what is lost: read through a rebuilt one, the
    // newer commit slot first.
    let Ok(Some((newer, older))) = rebuilt_headers(path) else {
        return Err(why);
    };
    match open(Some(newer)).or_else(|_| open(Some(older))) {
        Ok(db) => {
            tracing::warn!(store = %path.display(), error = %why,
                "the store's header does not read: reading it through one rebuilt from redb's constants and the file's length (its commit slots verify)");
            Ok(db)
        }
        Err(_) => Err(why),
    }
}

/// The first [`HEAD`] bytes of a redb 4.x file at 4 KiB pages: magic
/// number, god byte (0), padding, page size, region header pages (0) and
/// region max data pages; the region counts are filled in per file.
const HEAD_CONSTANTS: [u8; 24] = [
    b'r', b'e', b'd', b'b', 0x1A, 0x0A, 0xA9, 0x0D, 0x0A, // magic
    0, 0, 0, // god byte, padding
    0, 16, 0, 0, // page size 4096
    0, 0, 0, 0, // region header pages
    0, 0, 16, 0, // region max data pages 1,048,576
];
/// The header's length before the commit slots.
const HEAD: usize = 64;
/// The god byte's flags: slot 1 is the primary; two-phase commit.
const PRIMARY_BIT: u8 = 1;
const TWO_PHASE_COMMIT: u8 = 4;
/// Where each commit slot begins, and its transaction id within it.
const SLOTS: [usize; 2] = [64, 192];
const SLOT_TRANSACTION: usize = 56;

/// The two rebuilt headers of the file at `path` (the newer commit slot
/// primary, then the older), or `None` when the file is shorter than the
/// header.
fn rebuilt_headers(path: &Path) -> std::io::Result<Option<([u8; HEAD], [u8; HEAD])>> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    let mut slots = [0u8; 320];
    if len < slots.len() as u64 {
        return Ok(None);
    }
    file.read_exact_at(&mut slots, 0)?;
    let mut head = [0u8; HEAD];
    head[..HEAD_CONSTANTS.len()].copy_from_slice(&HEAD_CONSTANTS);
    // The super-header is one page; the data pages follow in regions.
    let data_pages = (len / PAGE).saturating_sub(1);
    let region = u64::from(u32::from_le_bytes([0, 0, 16, 0]));
    let full = u32::try_from(data_pages / region).unwrap_or(u32::MAX);
    let trailing = (data_pages % region) as u32;
    head[24..28].copy_from_slice(&full.to_le_bytes());
    head[28..32].copy_from_slice(&trailing.to_le_bytes());
    let transaction = |slot: usize| {
        let at = SLOTS[slot] + SLOT_TRANSACTION;
        u64::from_le_bytes(slots[at..at + 8].try_into().expect("8 bytes"))
    };
    let with = |primary: usize| {
        let mut h = head;
        h[9] = TWO_PHASE_COMMIT | if primary == 1 { PRIMARY_BIT } else { 0 };
        h
    };
    let newer = usize::from(transaction(1) > transaction(0));
    Ok(Some((with(newer), with(1 - newer))))
}

fn open_backend(backend: DamagedFile) -> Result<ReadOnlyDatabase, String> {
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
    /// A rebuilt header read in place of the file's first bytes.
    head: Option<[u8; HEAD]>,
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
        if let Some(head) = &self.head {
            if offset < HEAD as u64 {
                let from = offset as usize;
                let n = (HEAD - from).min(out.len());
                out[..n].copy_from_slice(&head[from..from + n]);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The rebuilt header is what redb writes: a file redb makes has the
    /// same constants (all but the god byte, which the rebuilt header sets
    /// per commit slot) and the region counts its length gives.
    #[test]
    fn the_rebuilt_header_matches_a_file_redb_makes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.redb");
        let db = redb::Database::create(&path).unwrap();
        let tx = db.begin_write().unwrap();
        tx.open_table(redb::TableDefinition::<u64, u64>::new("t"))
            .unwrap()
            .insert(1, 2)
            .unwrap();
        tx.commit().unwrap();
        drop(db);
        let bytes = std::fs::read(&path).unwrap();
        let (newer, older) = rebuilt_headers(&path).unwrap().unwrap();
        let mut theirs = bytes[..HEAD].to_vec();
        let mut ours = newer.to_vec();
        (theirs[9], ours[9]) = (0, 0);
        assert_eq!(ours, theirs);
        assert_eq!(newer[9] ^ older[9], PRIMARY_BIT);
        // Read through it, a file whose header is lost reads as before.
        let mut lost = bytes.clone();
        lost[..HEAD].fill(0xAB);
        std::fs::write(&path, &lost).unwrap();
        let db = open_damaged(&path).unwrap();
        let tx = redb::ReadableDatabase::begin_read(&db).unwrap();
        let t = tx
            .open_table(redb::TableDefinition::<u64, u64>::new("t"))
            .unwrap();
        assert_eq!(t.get(1).unwrap().unwrap().value(), 2);
    }
}
