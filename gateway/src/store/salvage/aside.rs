//! Moving a damaged file aside (kept, never changed) and salvaging it into
//! a fresh store at the old path.

use std::path::{Path, PathBuf};

use redb::Builder;
use tracing::{error, warn};

use super::{salvage, SalvageReport};
use crate::store::{clean_record, sync_dir, StoreError};

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
    sync_dir(path);
    error!(store = %path.display(), moved_to = %aside.display(), error = %why,
        "the store file is damaged: moved it aside; salvaging what reads into a fresh store");
    // A fresh file: an old clean record must not vouch for it.
    clean_record::remove(path);
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
