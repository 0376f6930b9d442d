//! The writer's loop: wait for items or a deadline, commit on a blocking
//! thread, tell the submitters, until every handle is dropped.

use std::time::Duration;

use ferry_core::sink::{Submission, SubmitError};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{error, info};

use super::batch::Batch;
use super::handles::{CursorMove, RouteCommit, RouteDone};
use super::state::WriterState;
use super::{WriterSettings, HEARTBEAT_INTERVAL};
use crate::metrics::IngestMetrics;
use crate::store::Store;

/// The batch's deadline, but no later than one heartbeat from now.
fn next_turn(deadline: Option<Instant>) -> Instant {
    let beat = Instant::now() + HEARTBEAT_INTERVAL;
    deadline.map_or(beat, |d| d.min(beat))
}

pub(super) async fn run(
    store: Store,
    metrics: IngestMetrics,
    cfg: WriterSettings,
    mut rx: mpsc::Receiver<Submission>,
    mut crx: mpsc::Receiver<CursorMove>,
    mut rrx: mpsc::Receiver<(RouteCommit, RouteDone)>,
    beat: watch::Sender<Instant>,
) {
    let init = {
        let cfg = cfg.clone();
        tokio::task::spawn_blocking(move || WriterState::new(store, metrics, &cfg))
    };
    let mut state = match init.await.expect("the ingest start task panicked") {
        Ok(state) => state,
        Err(e) => {
            error!(error = %e, "ingest cannot read the store; it accepts nothing");
            return;
        }
    };
    let mut batch = Batch::default();
    let (mut items_open, mut cursors_open, mut routes_open) = (true, true, true);
    loop {
        beat.send_replace(Instant::now());
        let closed = !items_open && !cursors_open;
        if closed && batch.is_empty() {
            break;
        }
        let deadline = batch.deadline(&cfg);
        let due = closed || batch.full(&cfg) || deadline.is_some_and(|d| d <= Instant::now());
        if !due {
            tokio::select! {
                sub = rx.recv(), if items_open && !state.blocked => match sub {
                    Some(sub) => {
                        let now = Instant::now();
                        batch.add(sub, now, &cfg, &state.metrics);
                        // Take what else is already queued, up to a full batch.
                        while !batch.full(&cfg) {
                            match rx.try_recv() {
                                Ok(sub) => batch.add(sub, now, &cfg, &state.metrics),
                                Err(_) => break,
                            }
                        }
                    }
                    None => items_open = false,
                },
                mv = crx.recv(), if cursors_open => match mv {
                    Some(mv) => {
                        let now = Instant::now();
                        if mv.prompt {
                            batch.cursors_due_by(now + cfg.commit_interval);
                        }
                        batch.move_cursor(mv.name, mv.seq, now);
                    }
                    None => cursors_open = false,
                },
                rc = rrx.recv(), if routes_open => match rc {
                    Some(rc) => {
                        // A route behind the log commits at once: it reads at
                        // most `batch_records` per commit, so waiting for the
                        // interval would cap it at that many per interval.
                        let behind = rc.0.through < state.store.heads().records;
                        batch.routes.push(rc);
                        let wait = if behind { Duration::ZERO } else { cfg.commit_interval };
                        batch.due_by(Instant::now() + wait);
                    }
                    None => routes_open = false,
                },
                _ = tokio::time::sleep_until(next_turn(deadline)) => {}
            }
            continue;
        }
        let full = std::mem::take(&mut batch);
        let (back, full, result) = tokio::task::spawn_blocking(move || {
            let mut state = state;
            let mut full = full;
            let result = state.commit(&mut full);
            (state, full, result)
        })
        .await
        .expect("the ingest commit task panicked");
        state = back;
        state.finish(full, result, &mut batch, &cfg);
        if state.blocked && !items_open && !cursors_open {
            // Shutting down with no room: the held submissions are refused,
            // so their sources keep them (a subscriber does not acknowledge).
            for (done, _) in std::mem::take(&mut batch.acks) {
                if let Some(done) = done {
                    let _ = done.send(Err(SubmitError::Store(
                        "shut down while the store was full".into(),
                    )));
                }
            }
            batch = Batch::default();
        }
    }
    info!("ingest writer stopped");
}
