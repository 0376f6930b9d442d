//! The fleet's files, in `DATA_DIR/fleet/` beside the store (the unit's
//! `ProtectSystem=strict` leaves `/etc` read-only, and `/etc/ferry/ferry.toml`
//! stays the operator's):
//!
//! | file | holds |
//! | --- | --- |
//! | `config.toml` | the fleet's config to run (its part only; merged with the local file at each start and reload) |
//! | `good.toml` | the last fleet config that passed its probation; absent: the local file alone |
//! | `status.json` | the last config from the fleet and what became of it ([`Status`]) |
//!
//! Every write is atomic: a temporary file in the same directory, fsynced,
//! renamed over the old one, then the directory fsynced; a crash leaves the
//! old file or the new one. An apply writes `status.json` as `pending` before
//! it writes `config.toml`, so a start that finds `pending` knows an apply
//! did not finish its probation (the process died during it, or the machine
//! lost power) and returns to `good.toml`: never a half-applied config, and
//! no crash loop on a config that kills the daemon.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::state::{sha256_hex, ApplyState, Status};

/// The largest fleet file read: the shadow holds at most 8 KB of state.
const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// `DATA_DIR/fleet`.
#[derive(Clone, Debug)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    pub fn new(data_dir: &Path) -> StateDir {
        StateDir {
            dir: data_dir.join("fleet"),
        }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn read(&self, name: &str) -> std::io::Result<Option<String>> {
        use ferry_core::files::{read_text, FileError};
        match read_text(&self.dir.join(name), MAX_FILE_BYTES) {
            Ok(t) => Ok(Some(t)),
            Err(FileError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(FileError::Io(e)) => Err(e),
            Err(other) => Err(std::io::Error::other(other.to_string())),
        }
    }

    /// Writes `name` atomically.
    fn write(&self, name: &str, bytes: &[u8]) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let tmp = self.dir.join(format!(".{name}.tmp"));
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, self.dir.join(name))?;
        std::fs::File::open(&self.dir)?.sync_all()
    }

    fn remove(&self, name: &str) -> std::io::Result<()> {
        match std::fs::remove_file(self.dir.join(name)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => std::fs::File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .or(Ok(())),
        }
    }

    /// The stored status; an unreadable or damaged file reads as none.
    pub fn status(&self) -> Option<Status> {
        let text = self.read("status.json").ok()??;
        serde_json::from_str(&text).ok()
    }

    pub fn set_status(&self, status: &Status) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(status).map_err(std::io::Error::other)?;
        self.write("status.json", &json)
    }

    /// The fleet config to run, if any.
    pub fn config(&self) -> std::io::Result<Option<String>> {
        self.read("config.toml")
    }

    /// Before an apply: `pending`, then the new config.
    pub fn begin(&self, status: &Status, config: &str) -> std::io::Result<()> {
        self.set_status(status)?;
        self.write("config.toml", config.as_bytes())
    }

    /// After a probation passed: the config is the good one.
    pub fn commit(&self, status: &Status, config: &str) -> std::io::Result<()> {
        self.write("good.toml", config.as_bytes())?;
        self.set_status(status)
    }

    /// Back to the last good config (none: the local file alone), with
    /// `status` saying why. Returns the sha256 of what runs now.
    pub fn roll_back(&self, status: &Status) -> std::io::Result<Option<String>> {
        let good = self.read("good.toml")?;
        match &good {
            Some(g) => self.write("config.toml", g.as_bytes())?,
            None => self.remove("config.toml")?,
        }
        self.set_status(status)?;
        Ok(good.map(|g| sha256_hex(g.as_bytes())))
    }

    /// At start: an apply that was still `pending` did not pass its
    /// probation in a process that lived through it (unless the daemon
    /// restarted itself to apply it whole: then its probation starts again). If its config became
    /// the good one (the process died between the two writes of
    /// [`StateDir::commit`]), it is applied; otherwise the last good config
    /// comes back and the status says `rolled_back`. Returns the status.
    pub fn recover(&self) -> std::io::Result<Option<Status>> {
        let Some(mut status) = self.status() else {
            return Ok(None);
        };
        if status.state != ApplyState::Pending {
            return Ok(Some(status));
        }
        if status.restart {
            // The daemon restarted itself to apply the config whole: it runs
            // now, and its probation starts again.
            status.restart = false;
            status.errors.clear();
            self.set_status(&status)?;
            return Ok(Some(status));
        }
        let good = self.read("good.toml")?.map(|g| sha256_hex(g.as_bytes()));
        if good.as_deref() == Some(status.sha256.as_str()) {
            status.state = ApplyState::Applied;
            status.good_sha256 = good;
            self.set_status(&status)?;
            return Ok(Some(status));
        }
        status.state = ApplyState::RolledBack;
        status.errors = vec![
            "the gateway stopped during the probation (crash, kill or power loss); the last good config runs".to_owned(),
        ];
        status.good_sha256 = self.roll_back(&status)?;
        self.set_status(&status)?;
        Ok(Some(status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(config: &str) -> Status {
        Status {
            version: 3,
            sha256: sha256_hex(config.as_bytes()),
            state: ApplyState::Pending,
            errors: vec![],
            good_sha256: None,
            restart: false,
        }
    }

    #[test]
    fn a_start_during_probation_returns_to_the_good_config() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path());
        assert_eq!(dir.recover().unwrap(), None);
        let mut s = pending("a");
        dir.begin(&s, "a").unwrap();
        s.state = ApplyState::Applied;
        dir.commit(&s, "a").unwrap();
        dir.begin(&pending("b"), "b").unwrap();
        assert_eq!(dir.config().unwrap().as_deref(), Some("b"));
        let after = dir.recover().unwrap().unwrap();
        assert_eq!(after.state, ApplyState::RolledBack);
        assert_eq!(after.good_sha256, Some(sha256_hex(b"a")));
        assert_eq!(dir.config().unwrap().as_deref(), Some("a"));
        assert_eq!(dir.status(), Some(after));
    }

    #[test]
    fn a_restart_the_daemon_asked_for_keeps_the_new_config_in_probation() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path());
        let mut s = pending("b");
        dir.begin(&s, "b").unwrap();
        s.restart = true;
        s.errors = vec!["sources.second (added): changed".into()];
        dir.set_status(&s).unwrap();
        let after = dir.recover().unwrap().unwrap();
        assert_eq!((after.state, after.restart), (ApplyState::Pending, false));
        assert!(after.errors.is_empty());
        assert_eq!(dir.config().unwrap().as_deref(), Some("b"));
        // Killed in that probation: back to the local file.
        let after = dir.recover().unwrap().unwrap();
        assert_eq!(after.state, ApplyState::RolledBack);
        assert_eq!(dir.config().unwrap(), None);
    }

    #[test]
    fn a_first_apply_interrupted_leaves_the_local_file_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path());
        dir.begin(&pending("a"), "a").unwrap();
        let after = dir.recover().unwrap().unwrap();
        assert_eq!(
            (after.state, after.good_sha256),
            (ApplyState::RolledBack, None)
        );
        assert_eq!(dir.config().unwrap(), None);
    }

    #[test]
    fn a_commit_interrupted_after_good_was_written_counts_as_applied() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path());
        dir.begin(&pending("a"), "a").unwrap();
        // commit's first write only.
        dir.write("good.toml", b"a").unwrap();
        let after = dir.recover().unwrap().unwrap();
        assert_eq!(after.state, ApplyState::Applied);
        assert_eq!(dir.config().unwrap().as_deref(), Some("a"));
    }
}
