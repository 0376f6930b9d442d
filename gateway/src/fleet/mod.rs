//! Fleet management through the AWS IoT device shadow: the fleet sets a
//! config in a named shadow (`state.desired.config`, TOML text), the gateway
//! validates it as `ferry validate` would, applies it through the reload
//! path, watches it for a probation, returns to the last good config if it
//! breaks the gateway, and reports what runs (`state.reported`).
//!
//! | file | holds |
//! | --- | --- |
//! | `config.rs` | `[fleet]`: the uplink carrying the shadow, names, probation, reporting |
//! | `merge.rs` | the fleet's config merged with the keys that stay local |
//! | `state.rs` | versions, hashes and what to do with a desired config (no I/O) |
//! | `files.rs` | `DATA_DIR/fleet/`: atomic writes, recovery at start |
//! | `agent.rs` | the task: shadow messages in, applies, probation, reports out |
//! | `mod.rs` | the effective config (local + fleet) and applying on the daemon's side |
//!
//! The connection is the fleet uplink's own ([`crate::uplink::control`]):
//! one MQTT session carries batches and the shadow.

mod agent;
mod config;
mod files;
mod merge;
pub mod state;

use std::path::Path;

use tokio::sync::oneshot;
use tracing::{error, info, warn};

pub use agent::{filters, get_on_connect, prefix, shadow_message, spawn, Agent};
pub use config::FleetConfig;
pub use config::MAX_MESSAGE_BYTES;
pub use files::StateDir;
pub use merge::{merge, Refusal};
use state::{ApplyState, Desired, Status};

use crate::config::{Config, ConfigWarnings, LoadError};
use crate::daemon::reload::{apply_config, Live, ReloadContext};
use crate::metrics::FleetMetrics;

/// What the agent asks of the daemon (which owns the running config).
#[derive(Debug)]
pub enum Request {
    /// Validate and apply `desired`; the reply is `pending` (in probation)
    /// or `rejected`.
    Apply {
        desired: Desired,
        reply: oneshot::Sender<Status>,
    },
    /// The probation passed: make it the good config.
    Commit {
        status: Status,
        config: String,
        reply: oneshot::Sender<Status>,
    },
    /// The probation failed (`status` says why): back to the last good config.
    RollBack {
        status: Status,
        reply: oneshot::Sender<Status>,
    },
}

/// What the daemon keeps to serve the agent's requests.
pub struct Fleet {
    pub dir: StateDir,
    pub metrics: FleetMetrics,
}

/// Reads the local file; `None` (logged) if it cannot be read.
fn local_table(path: &Path) -> Result<toml::Table, String> {
    let text = ferry_core::files::read_text(path, crate::config::MAX_CONFIG_BYTES)
        .map_err(|e| format!("cannot read the local config {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("the local config {}: {e}", path.display()))
}

/// The local config with the fleet's over it, checked whole.
fn merged(
    path: &Path,
    fleet_text: &str,
    name: &str,
) -> Result<(Config, ConfigWarnings), Vec<String>> {
    let local = local_table(path).map_err(|e| vec![e])?;
    let text = merge(&local, fleet_text).map_err(|refused| {
        refused
            .into_iter()
            .map(|r| key_message(&r.key, &r.message))
            .collect::<Vec<_>>()
    })?;
    Config::from_toml_with_warnings(&text, Path::new(name)).map_err(|e| {
        e.errors
            .into_iter()
            .map(|e| key_message(&e.key, &e.message))
            .collect()
    })
}

fn key_message(key: &str, message: &str) -> String {
    if key.is_empty() {
        message.to_owned()
    } else {
        format!("{key}: {message}")
    }
}

/// What a start and a reload run: the local file, and over it the fleet's
/// config from the state directory when `[fleet]` is set and one is there.
/// A fleet config that no longer validates with the local file (the file
/// changed under it) is logged and the local file alone runs.
pub fn load_effective(path: &Path) -> Result<(Config, ConfigWarnings), LoadError> {
    let (local, warnings) = Config::load_with_warnings(path)?;
    let Some(_) = &local.fleet else {
        return Ok((local, warnings));
    };
    let dir = StateDir::new(&local.gateway.data_dir);
    match dir.config() {
        Ok(None) => Ok((local, warnings)),
        Ok(Some(text)) => match merged(path, &text, &fleet_name(&dir)) {
            Ok(c) => Ok(c),
            Err(errors) => {
                for e in errors {
                    error!("fleet config {}: {e}", dir.path().display());
                }
                warn!("the fleet config does not validate with the local file; running on the local file alone");
                Ok((local, warnings))
            }
        },
        Err(e) => {
            error!(dir = %dir.path().display(), error = %e, "cannot read the fleet config; running on the local file alone");
            Ok((local, warnings))
        }
    }
}

fn fleet_name(dir: &StateDir) -> String {
    dir.path().join("config.toml").display().to_string()
}

/// What `ferry run` runs: with `[fleet]`, first what an interrupted apply
/// left is finished ([`StateDir::recover`]), then the fleet's config goes
/// over the local file ([`load_effective`]).
pub fn at_start(local: Config, path: Option<&Path>) -> Config {
    let Some(path) = path.filter(|_| local.fleet.is_some()) else {
        return local;
    };
    recover(&local);
    match load_effective(path) {
        Ok((config, _)) => {
            if config != local {
                info!(config = %StateDir::new(&local.gateway.data_dir).path().join("config.toml").display(),
                      "running the config from the fleet over the local file");
            }
            config
        }
        Err(e) => {
            error!("{e}");
            local
        }
    }
}

/// Finishes what an apply interrupted left (see [`StateDir::recover`]).
pub fn recover(local: &Config) -> Option<Status> {
    local.fleet.as_ref()?;
    let dir = StateDir::new(&local.gateway.data_dir);
    match dir.recover() {
        Ok(s) => {
            if let Some(s) = s.as_ref().filter(|s| s.state == ApplyState::RolledBack) {
                warn!(version = s.version, errors = ?s.errors, "fleet: the last config from the fleet was rolled back");
            }
            s
        }
        Err(e) => {
            error!(dir = %dir.path().display(), error = %e, "fleet: cannot read or repair the state directory");
            None
        }
    }
}

/// `ferry fleet status`: what the fleet asked last, what runs, and why
/// they differ, from the state directory of `local`.
pub fn status_text(local: &Config) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let Some(f) = &local.fleet else {
        return "fleet: not managed from a fleet (no [fleet] table in the config)\n".to_owned();
    };
    let dir = StateDir::new(&local.gateway.data_dir);
    let _ = writeln!(
        out,
        "fleet: thing {}, shadow {}, over uplink {}",
        f.thing(&local.uplinks, &local.gateway.id),
        f.shadow,
        f.uplink
    );
    match dir.status() {
        None => {
            let _ = writeln!(out, "asked: nothing yet");
        }
        Some(s) => {
            let _ = writeln!(
                out,
                "asked: shadow version {}, sha256 {}: {}",
                s.version,
                s.sha256,
                s.state.as_str()
            );
            for e in &s.errors {
                let _ = writeln!(out, "  {e}");
            }
        }
    }
    let runs = match dir.config() {
        Ok(Some(c)) => format!(
            "the local file with the fleet's config over it (sha256 {}, {})",
            state::sha256_hex(c.as_bytes()),
            dir.path().join("config.toml").display()
        ),
        Ok(None) => "the local file alone".to_owned(),
        Err(e) => format!("the local file alone ({}: {e})", dir.path().display()),
    };
    let _ = writeln!(out, "runs: {runs}");
    out
}

/// The daemon stops to start again: a config from the fleet changed what
/// cannot change in place. `ferry run` exits with [`EXIT_RESTART`] and
/// systemd starts it again (`Restart=on-failure`).
#[derive(Debug, thiserror::Error)]
#[error("restarting to apply the fleet's config (what changed cannot change in place)")]
pub struct RestartRequested;

/// The exit code of a restart the daemon asks for (`EX_TEMPFAIL`).
pub const EXIT_RESTART: u8 = 75;

/// Serves one of the agent's requests on the daemon's side. Returns whether
/// the daemon must restart to apply what it was asked.
pub async fn serve(
    request: Request,
    fleet: &Fleet,
    ctx: &ReloadContext,
    running: &mut Config,
    live: &mut Live,
) -> bool {
    match request {
        Request::Apply { desired, reply } => {
            let status = apply(desired, fleet, ctx, running, live).await;
            let restart = status.restart;
            let _ = reply.send(status);
            return restart;
        }
        Request::Commit {
            status,
            config,
            reply,
        } => {
            if let Err(e) = fleet.dir.commit(&status, &config) {
                error!(error = %e, "fleet: cannot record the config as good; it runs, and a restart returns to the previous one");
            }
            fleet.metrics.applied("applied");
            info!(version = status.version, sha256 = %status.sha256, "fleet: config passed its probation");
            let _ = reply.send(status);
        }
        Request::RollBack { mut status, reply } => {
            match fleet.dir.roll_back(&status) {
                Ok(good) => status.good_sha256 = good,
                Err(e) => {
                    error!(error = %e, "fleet: cannot write the state directory during a rollback")
                }
            }
            if let Some(path) = &ctx.path {
                match load_effective(path) {
                    Ok((config, _)) => {
                        if let Err(e) = apply_config(ctx, running, live, config).await {
                            error!(error = %e, "fleet: the rollback could not be applied in place");
                            status.errors.push(format!("rollback: {e}"));
                        }
                    }
                    Err(e) => {
                        error!("fleet: the local config no longer loads during a rollback: {e}");
                        status
                            .errors
                            .push(format!("rollback: the local config no longer loads: {e}"));
                    }
                }
            }
            fleet.metrics.applied("rolled_back");
            warn!(version = status.version, errors = ?status.errors, "fleet: config rolled back");
            let _ = fleet.dir.set_status(&status);
            let _ = reply.send(status);
        }
    }
    false
}

async fn apply(
    desired: Desired,
    fleet: &Fleet,
    ctx: &ReloadContext,
    running: &mut Config,
    live: &mut Live,
) -> Status {
    let good = fleet.dir.status().and_then(|s| s.good_sha256);
    let mut status = Status {
        version: desired.version,
        sha256: desired.sha256.clone(),
        state: ApplyState::Rejected,
        errors: Vec::new(),
        good_sha256: good,
        restart: false,
    };
    let reject = |mut status: Status, errors: Vec<String>| {
        for e in &errors {
            error!(version = status.version, "fleet: config refused: {e}");
        }
        status.errors = errors;
        fleet.metrics.applied("rejected");
        if let Err(e) = fleet.dir.set_status(&status) {
            error!(error = %e, "fleet: cannot record the refusal");
        }
        status
    };
    let Some(path) = &ctx.path else {
        return reject(
            status,
            vec!["the gateway runs on the embedded default config".into()],
        );
    };
    let name = format!("<fleet config, shadow version {}>", desired.version);
    let new = match merged(path, &desired.config, &name) {
        Ok((new, _)) => new,
        Err(errors) => return reject(status, errors),
    };
    // Every uplink's TLS files must load before anything is written.
    if let Err(e) = crate::daemon::uplinks::settings(&new) {
        return reject(status, vec![format!("{e:#}")]);
    }
    status.state = ApplyState::Pending;
    if let Err(e) = fleet.dir.begin(&status, &desired.config) {
        status.state = ApplyState::Rejected;
        return reject(
            status,
            vec![format!("cannot write the state directory: {e}")],
        );
    }
    match apply_config(ctx, running, live, new).await {
        Ok(kept) => {
            if !kept.is_empty() {
                // The rest after a restart, with the probation again.
                status.restart = true;
                status.errors = kept
                    .into_iter()
                    .map(|k| format!("{k}: changed, applied by a restart of Ferry"))
                    .collect();
                if let Err(e) = fleet.dir.set_status(&status) {
                    error!(error = %e, "fleet: cannot record the restart; not restarting");
                    status.restart = false;
                }
                warn!(version = status.version, needs_restart = ?status.errors, "fleet: config applied in part; restarting to apply the rest");
                return status;
            }
            info!(version = status.version, sha256 = %status.sha256, "fleet: config applied; in probation");
            fleet.metrics.probation.set(1);
            status
        }
        Err(e) => {
            let _ = fleet.dir.roll_back(&status);
            status.state = ApplyState::Rejected;
            reject(status, vec![e])
        }
    }
}
