//! Runs the gateway: opens the store, starts ingest, the pipeline, the
//! sources, the routes and the uplinks ([`Gateway::start`]), serves until
//! SIGTERM/SIGINT ([`Gateway::run`]), then drains them in order
//! ([`Gateway::drain`]).
//!
//! Shutdown order, each step bounded in time:
//! 1. sources stop taking messages (a subscriber acknowledges what is
//!    committed), within 5 s or aborted; the pipeline forwards what it holds
//!    and ends;
//! 2. routes stop between commits (their output, state and cursor are
//!    committed together);
//! 3. uplinks stop publishing and wait for the PUBACKs in flight
//!    (`uplink::DRAIN_TIMEOUT`), handing their last cursor moves to ingest;
//! 4. the query index's background replay stops after its chunk under way;
//! 5. ingest makes its final commit (records and the last cursor moves) and
//!    ends once the last sink and cursor handle are gone;
//! 6. the listeners (`/metrics`, the API) close, every tracked task has
//!    ended, and the process exits 0.
//!
//! Under systemd (`Type=notify`, see `notify.rs`): `READY=1` once the store is
//! open, the sources are started and the uplinks run (the query index
//! replays the log in the background, `query/replay.rs`: readiness does not
//! wait for it); `WATCHDOG=1` while the
//! ingest writer is alive and `STATUS=` as it changes (`watchdog.rs`);
//! `STOPPING=1` when shutdown begins. SIGHUP reloads the config file
//! (`reload.rs`) between `RELOADING=1` and `READY=1`.
//!
//! | file | holds |
//! | --- | --- |
//! | `gateway.rs` | [`Gateway`]: start, run, drain |
//! | `sources.rs`, `uplinks.rs` | starting the sources; the running uplinks |
//! | `families.rs` | every metric family, registered |
//! | `reload.rs` | SIGHUP: what a new config changes, and applying it |
//! | `notify.rs`, `watchdog.rs`, `status.rs` | systemd's notify protocol, the watchdog, the status line |
//! | `journal.rs` | log lines for the journal |

mod families;
mod gateway;
pub(crate) mod journal;
pub mod notify;
pub mod reload;
mod sources;
pub(crate) mod status;
pub(crate) mod uplinks;
pub mod watchdog;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use gateway::Gateway;
use reload::ReloadContext;

use crate::config::Config;

/// Runs until SIGTERM or SIGINT, then shuts down gracefully; SIGHUP
/// reloads the config.
pub async fn run(config: Config, reload: ReloadContext) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    // Installed first: SIGHUP's default action would end the process.
    let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(1);
    match signal(SignalKind::hangup()) {
        Ok(mut hup) => {
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    // One pending reload is enough: it reads the latest file.
                    let _ = reload_tx.try_send(());
                }
            });
        }
        Err(e) => warn!(error = %e, "cannot handle SIGHUP; reloading is not possible"),
    }
    let shutdown = CancellationToken::new();
    let signals = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        info!("shutting down");
        signals.cancel();
    });
    run_until(config, reload, reload_rx, shutdown).await
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            // No signal handlers (unusual): only Ctrl-C through tokio's fallback.
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Runs until `shutdown` is cancelled; each message on `reloads` reloads
/// the config.
pub async fn run_until(
    config: Config,
    reload: ReloadContext,
    reloads: tokio::sync::mpsc::Receiver<()>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut gateway = Gateway::start(config, reload).await?;
    let c = gateway.config();
    info!(gateway = %c.gateway.id, sources = c.sources.len(), uplinks = c.uplinks.len(), "ferry running");
    gateway.run(shutdown, reloads).await;
    gateway.drain().await
}
