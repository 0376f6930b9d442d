//! The ingest writer: the one task that writes to the store.
//!
//! Sources submit items through a [`Sink`]; uplinks move their cursors through
//! [`Cursors`]. The writer gathers both into group commits:
//!
//! - a batch opens when its first item arrives and is committed
//!   `commit_interval` later, or at once when it holds `commit_max_records`;
//! - cursor moves alone open a batch that commits `cursor_flush_interval`
//!   later (a cursor that lags only causes resends after a crash, so it is
//!   not worth a write of its own each time), or within `commit_interval`
//!   when moved with [`Cursors::advance_promptly`] (an uplink after a
//!   PUBACK: what a crash resends is then bounded by the inflight window
//!   and the acknowledgements of one commit interval);
//! - each commit is one redb write transaction with `Durability::Immediate`;
//!   only after it returns are the submissions' receipts resolved.
//!
//! So at most one fsync per `commit_interval` under any load, which bounds
//! the wear on an SD card, and under load each commit carries many records.
//!
//! The writer stops when every [`Sink`] and every [`Cursors`] handle is
//! dropped, after committing what it holds.
//!
//! | file | job |
//! | --- | --- |
//! | `mod.rs` | [`Writer`], [`WriterSettings`]: the public face |
//! | `handles.rs` | [`Cursors`], [`RouteCommits`]: cursor moves and route commits sent to the writer |
//! | `batch.rs` | gathering submissions into the next commit, and when it is due |
//! | `run.rs` | the loop: wait, commit on a blocking thread, tell the submitters |
//! | `state.rs` | what the writer holds between commits, loaded at start |
//! | `write.rs` | the transaction body of one commit, and its undo on failure |
//! | `evict.rs` | eviction by age, by budget, of dead letters |
//! | `outcome.rs` | receipts, route heads and counters after a commit |

mod batch;
mod evict;
mod handles;
mod outcome;
mod run;
mod state;
mod write;

use std::sync::Arc;
use std::time::Duration;

use ferry_core::sink::{Committed, Sink, SubmitError};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use handles::{Cursors, RouteCommit, RouteCommits};

use super::limits::Limits;
use super::retention::Retention;
use super::{IndexHook, Store};
use crate::metrics::IngestMetrics;

/// Group-commit settings.
#[derive(Debug, Clone)]
pub struct WriterSettings {
    pub commit_interval: Duration,
    pub commit_max_records: usize,
    pub cursor_flush_interval: Duration,
    /// Submissions queued before sources wait.
    pub queue: usize,
    /// Disk budget, maximum age and the policy when full.
    pub retention: Retention,
    /// The cursors of the consumers whose undelivered records retention
    /// protects (per `when_full`): one per configured uplink.
    pub consumers: Vec<Arc<str>>,
    /// The cursors of the uplinks sending a route's stream, as (route,
    /// cursor): what retention counts as delivered on route streams.
    pub route_consumers: Vec<(Arc<str>, Arc<str>)>,
    /// A secondary index written in the writer's transactions (the query
    /// index), if any.
    pub index: Option<Arc<dyn IndexHook>>,
    /// How many devices, series and fields per device are stored.
    pub limits: Limits,
}

/// The ingest writer, the store's one writer: what [`Writer::spawn`] hands
/// back to whoever submits to it.
pub struct Writer {
    pub sink: Sink,
    pub cursors: Cursors,
    /// Commits routes' output, state and cursor together. The writer does
    /// not wait for these handles to be dropped before it stops.
    pub routes: RouteCommits,
    /// Ends after the last sink and cursor handle are dropped and the final
    /// commit is done.
    pub task: JoinHandle<()>,
    /// When the writer's loop last turned: at least once a second while it
    /// is alive, idle or not. The systemd watchdog stops pinging when it
    /// goes stale.
    pub heartbeat: watch::Receiver<Instant>,
}

/// The longest the writer's loop waits before turning (and beating) again.
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);

impl Writer {
    /// Starts the ingest writer on `store`.
    pub fn spawn(store: Store, cfg: WriterSettings, metrics: IngestMetrics) -> Writer {
        let (sink, rx) = Sink::channel(cfg.queue);
        let (ctx, crx) = mpsc::channel(64);
        let (rtx, rrx) = mpsc::channel(16);
        let (beat, heartbeat) = watch::channel(Instant::now());
        let task = tokio::spawn(run::run(store, metrics, cfg, rx, crx, rrx, beat));
        Writer {
            sink,
            cursors: Cursors { tx: ctx },
            routes: RouteCommits { tx: rtx },
            task,
            heartbeat,
        }
    }
}

/// Where a submission's outcome is sent.
type Done = oneshot::Sender<Result<Committed, SubmitError>>;
