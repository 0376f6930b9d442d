//! What the fleet asked and what runs: the versions seen, the config applied,
//! and what to do with the next desired config. Plain state, no I/O.
//!
//! The shadow's version grows with every update of the document (the fleet's
//! and this gateway's reports alike), so it orders what arrives: a desired
//! config at a version at most the highest seen is a duplicate or out of
//! order (a delta overtaken by a `/get` answer) and is ignored. A config is
//! known by its sha256: the one running is not applied again, and one that
//! was refused or rolled back is not tried again until the fleet sends a
//! different one.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Where a config from the fleet stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApplyState {
    /// Applied and through its probation.
    Applied,
    /// Refused: it does not validate (nothing changed).
    Rejected,
    /// Applied, failed its probation, and the last good config is back.
    RolledBack,
    /// Applied and in its probation.
    Pending,
}

impl ApplyState {
    pub fn as_str(self) -> &'static str {
        match self {
            ApplyState::Applied => "applied",
            ApplyState::Rejected => "rejected",
            ApplyState::RolledBack => "rolled_back",
            ApplyState::Pending => "pending",
        }
    }
}

/// The last config from the fleet and what became of it (kept in the state
/// directory, reported to the shadow).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The shadow version that asked for it.
    pub version: u64,
    /// Its sha256, hex.
    pub sha256: String,
    pub state: ApplyState,
    /// Why it was refused or rolled back (key paths first), or what of it
    /// needs a restart to take effect.
    #[serde(default)]
    pub errors: Vec<String>,
    /// The sha256 of the last good config from the fleet (what runs outside
    /// a probation); `None`: the local file alone.
    #[serde(default)]
    pub good_sha256: Option<String>,
    /// Applied in part: the daemon restarts itself to apply the rest, and
    /// the probation starts again after the restart.
    #[serde(default)]
    pub restart: bool,
}

/// A desired config, as the shadow sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    pub version: u64,
    pub config: String,
    pub sha256: String,
}

impl Desired {
    pub fn new(version: u64, config: String) -> Desired {
        let sha256 = sha256_hex(config.as_bytes());
        Desired {
            version,
            config,
            sha256,
        }
    }
}

/// The sha256 of `bytes`, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    Sha256::digest(bytes)
        .iter()
        .fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// What to do with a desired config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nothing: why.
    Ignore(&'static str),
    /// Apply it (validate, write, reload, probation).
    Apply(Desired),
    /// It is what runs already; the status now carries this version.
    AlreadyRuns,
    /// An apply is under way; this one follows it.
    Queued,
}

/// The versions seen and the config applied.
#[derive(Debug, Default)]
pub struct Machine {
    seen: u64,
    status: Option<Status>,
    busy: bool,
    next: Option<Desired>,
}

impl Machine {
    /// Resumes from the stored status (its version is the highest seen that
    /// mattered: reports since then only raised the version).
    pub fn new(status: Option<Status>) -> Machine {
        Machine {
            seen: status.as_ref().map_or(0, |s| s.version),
            status,
            busy: false,
            next: None,
        }
    }

    pub fn status(&self) -> Option<&Status> {
        self.status.as_ref()
    }

    /// The shadow at `version` desires `config` (`None`: no config desired).
    pub fn on_desired(&mut self, version: u64, config: Option<String>) -> Decision {
        if version <= self.seen {
            return Decision::Ignore("a duplicate or out-of-order version");
        }
        self.seen = version;
        let Some(config) = config else {
            return Decision::Ignore("no config desired");
        };
        let desired = Desired::new(version, config);
        if self.busy {
            self.next = Some(desired);
            return Decision::Queued;
        }
        self.decide(desired)
    }

    fn decide(&mut self, d: Desired) -> Decision {
        if let Some(s) = &mut self.status {
            if s.sha256 == d.sha256 {
                return match s.state {
                    ApplyState::Applied | ApplyState::Pending => {
                        s.version = d.version;
                        Decision::AlreadyRuns
                    }
                    ApplyState::Rejected | ApplyState::RolledBack => {
                        Decision::Ignore("this config was refused or rolled back already")
                    }
                };
            }
        }
        self.busy = true;
        Decision::Apply(d)
    }

    /// The apply under way reached `status` (rejected, or pending in its
    /// probation).
    pub fn applying(&mut self, status: Status) {
        let done = status.state != ApplyState::Pending;
        self.status = Some(status);
        if done {
            self.busy = false;
        }
    }

    /// The apply under way ended with `status` (applied, rejected or rolled
    /// back); returns what to do with a config that arrived meanwhile.
    pub fn finished(&mut self, status: Status) -> Option<Decision> {
        self.status = Some(status);
        self.busy = false;
        let next = self.next.take()?;
        Some(self.decide(next))
    }

    /// A restart in the probation of `status` (the daemon restarted itself
    /// to apply it whole): the apply is under way again.
    pub fn resume(&mut self) {
        self.busy = self
            .status
            .as_ref()
            .is_some_and(|s| s.state == ApplyState::Pending);
    }

    /// Whether an apply is under way.
    pub fn busy(&self) -> bool {
        self.busy
    }

    /// Takes a config that arrived during an apply that was refused at once.
    pub fn take_next(&mut self) -> Option<Decision> {
        if self.busy {
            return None;
        }
        let next = self.next.take()?;
        Some(self.decide(next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(d: &Desired, state: ApplyState) -> Status {
        Status {
            version: d.version,
            sha256: d.sha256.clone(),
            state,
            errors: vec![],
            good_sha256: None,
            restart: false,
        }
    }

    fn apply(m: &mut Machine, version: u64, config: &str) -> Desired {
        match m.on_desired(version, Some(config.to_owned())) {
            Decision::Apply(d) => d,
            other => panic!("expected an apply, got {other:?}"),
        }
    }

    #[test]
    fn duplicates_and_out_of_order_versions_are_ignored() {
        let mut m = Machine::new(None);
        let d = apply(&mut m, 5, "a");
        m.applying(status(&d, ApplyState::Pending));
        assert!(m.finished(status(&d, ApplyState::Applied)).is_none());
        let dup = Decision::Ignore("a duplicate or out-of-order version");
        assert_eq!(m.on_desired(5, Some("a".into())), dup);
        assert_eq!(m.on_desired(4, Some("b".into())), dup);
        // A later version with the same config: it runs already.
        assert_eq!(m.on_desired(9, Some("a".into())), Decision::AlreadyRuns);
        assert_eq!(m.status().unwrap().version, 9);
        assert_eq!(
            m.on_desired(10, None),
            Decision::Ignore("no config desired")
        );
    }

    #[test]
    fn a_refused_config_is_not_retried_until_it_changes() {
        let mut m = Machine::new(None);
        let d = apply(&mut m, 1, "bad");
        m.applying(status(&d, ApplyState::Rejected));
        assert!(!m.busy());
        assert_eq!(
            m.on_desired(2, Some("bad".into())),
            Decision::Ignore("this config was refused or rolled back already")
        );
        let d = apply(&mut m, 3, "breaks");
        m.applying(status(&d, ApplyState::Pending));
        m.finished(status(&d, ApplyState::RolledBack));
        assert!(matches!(
            m.on_desired(4, Some("breaks".into())),
            Decision::Ignore(_)
        ));
        apply(&mut m, 5, "fixed");
    }

    #[test]
    fn a_config_arriving_during_probation_follows_it_newest_first() {
        let mut m = Machine::new(None);
        let d = apply(&mut m, 1, "a");
        m.applying(status(&d, ApplyState::Pending));
        assert_eq!(m.on_desired(2, Some("b".into())), Decision::Queued);
        assert_eq!(m.on_desired(3, Some("c".into())), Decision::Queued);
        match m.finished(status(&d, ApplyState::Applied)) {
            Some(Decision::Apply(next)) => {
                assert_eq!((next.version, next.config.as_str()), (3, "c"))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_restart_resumes_from_the_stored_version() {
        let d = Desired::new(7, "a".into());
        let mut m = Machine::new(Some(status(&d, ApplyState::Applied)));
        assert!(matches!(
            m.on_desired(7, Some("a".into())),
            Decision::Ignore(_)
        ));
        assert_eq!(m.on_desired(8, Some("a".into())), Decision::AlreadyRuns);
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
