//! `ferry.redb.clean`: written after Ferry closed the store cleanly, with
//! the file's length, modification time and inode; removed when the store
//! is opened. Its presence, matching the file, is what lets an open skip
//! the full integrity check.

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
