//! The route task: read after the cursor, process, commit output + state +
//! cursor together, repeat; when caught up, wait for new records, a new
//! config, or the clock to close a window.

use std::sync::Arc;
use std::time::Duration;

use ferry_core::record::{now_millis, Millis};
use ferry_core::sink::SubmitError;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::config::RouteConfig;
use super::{Dropped, Route, State};
use crate::metrics::{PipelineMetrics, RouteLabel, RouteReasonLabels};
use crate::store::{RouteCommit, RouteCommits, Store, StoredRecord};

/// The cursor of the route `name` on the raw stream.
pub fn cursor_name(route: &str) -> String {
    format!("route.{route}")
}

/// How long a route waits after a failed commit before it starts again
/// from its committed state.
const RETRY: Duration = Duration::from_secs(1);

/// Wall time for closing windows: the wall time when it was made plus the
/// monotonic time since (tokio's, so tests can pause it), so a wall clock
/// set forward after boot (NTP on a Pi without an RTC) closes no window
/// early. Share one between the routes of a process.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    wall: Millis,
    at: Instant,
}

impl Clock {
    /// Wall time now, as the system tells it.
    pub fn new() -> Clock {
        Clock::starting_at(now_millis())
    }

    /// A clock that reads `wall` now.
    pub fn starting_at(wall: Millis) -> Clock {
        Clock {
            wall,
            at: Instant::now(),
        }
    }

    /// Wall time, in milliseconds since the Unix epoch.
    pub fn now(&self) -> Millis {
        self.wall + self.at.elapsed().as_millis() as Millis
    }

    /// When this clock reads `wall` (now, if it already has).
    fn instant_at(&self, wall: Millis) -> Instant {
        self.at + Duration::from_millis((wall - self.wall).max(0) as u64)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// Starts the route `name` with a fixed config and the system clock; it
/// runs until `cancel` fires or ingest shuts down.
pub fn spawn_route(
    name: &str,
    config: RouteConfig,
    store: Store,
    commits: RouteCommits,
    metrics: PipelineMetrics,
    cancel: CancellationToken,
) -> JoinHandle<()> {
    let (_, config) = watch::channel(config);
    spawn_route_with(name, config, Clock::new(), store, commits, metrics, cancel)
}

/// Starts the route `name`, following `config` (a new value applies from
/// the next batch) and closing windows by `clock`.
pub fn spawn_route_with(
    name: &str,
    config: watch::Receiver<RouteConfig>,
    clock: Clock,
    store: Store,
    commits: RouteCommits,
    metrics: PipelineMetrics,
    cancel: CancellationToken,
) -> JoinHandle<()> {
    let name: Arc<str> = name.into();
    let mut config = config;
    tokio::spawn(async move {
        let ctx = Ctx {
            name: &name,
            clock,
            store: &store,
            commits: &commits,
            metrics: &metrics,
            cancel: &cancel,
        };
        loop {
            match run(&ctx, &mut config).await {
                Ok(()) => return,
                Err(e) => {
                    warn!(route = %name, error = %e, "route commit failed; resuming from the committed state");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(RETRY) => {}
                    }
                }
            }
        }
    })
}

/// What a route task works with.
struct Ctx<'a> {
    name: &'a Arc<str>,
    clock: Clock,
    store: &'a Store,
    commits: &'a RouteCommits,
    metrics: &'a PipelineMetrics,
    cancel: &'a CancellationToken,
}

/// What one step of the task produced, to commit.
struct Work {
    read: usize,
    outputs: Vec<ferry_core::record::Record>,
    dropped: Dropped,
    undecodable: u64,
    state: Vec<u8>,
    through: u64,
}

/// Runs from the committed state until cancelled (`Ok`) or a commit fails.
async fn run(ctx: &Ctx<'_>, config: &mut watch::Receiver<RouteConfig>) -> Result<(), String> {
    let Ctx {
        name,
        clock,
        store,
        cancel,
        ..
    } = *ctx;
    let (mut cursor, state) = {
        let (store, name) = (store.clone(), name.clone());
        tokio::task::spawn_blocking(move || -> Result<(u64, State), String> {
            let cursor = store.cursor(&cursor_name(&name)).map_err(|e| e.to_string())?;
            let state = match store.route_state(&name).map_err(|e| e.to_string())? {
                None => State::default(),
                Some(bytes) => Route::decode_state(&bytes).unwrap_or_else(|e| {
                    error!(route = %name, error = %e, "the stored route state does not decode; starting with an empty state");
                    State::default()
                }),
            };
            Ok((cursor, state))
        })
        .await
        .map_err(|e| e.to_string())??
    };
    info!(route = %name, cursor, "route running");
    let mut route = Some(Route::new(name, config.borrow_and_update().clone(), state));
    let mut config_open = true;
    let mut heads = store.watch_heads();
    loop {
        if cancel.is_cancelled() {
            return Ok(());
        }
        if config_open && config.has_changed().unwrap_or(false) {
            adopt(name, route.as_mut().expect("route"), config);
        }
        if store.heads().records <= cursor {
            // Caught up: close what the clock has made due, else wait.
            let due = route.as_ref().expect("route").next_due();
            if due.is_some_and(|d| d <= clock.now()) {
                let mut r = route.take().expect("route");
                let mut outputs = Vec::new();
                r.tick(clock.now(), &mut outputs);
                let work = Work {
                    read: 0,
                    outputs,
                    dropped: Dropped::default(),
                    undecodable: 0,
                    state: r.encode_state(),
                    through: cursor,
                };
                route = Some(r);
                if !commit(ctx, work).await? {
                    return Ok(());
                }
                continue;
            }
            let wake = due.map(|d| clock.instant_at(d));
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                changed = heads.changed() => if changed.is_err() { return Ok(()) },
                changed = config.changed(), if config_open => match changed {
                    Ok(()) => adopt(name, route.as_mut().expect("route"), config),
                    Err(_) => config_open = false,
                },
                _ = tokio::time::sleep_until(wake.unwrap_or_else(Instant::now)), if wake.is_some() => {}
            }
            continue;
        }
        let head = store.heads().records;
        let (mut r, st) = (route.take().expect("route"), store.clone());
        let from = cursor;
        let batch = r.config.batch_records.get();
        let (back, work) = tokio::task::spawn_blocking(move || {
            let mut buf: Vec<StoredRecord> = Vec::with_capacity(batch);
            let read = st.read_records(from, batch, &mut buf);
            let mut out = Vec::new();
            let mut dropped = Dropped::default();
            for s in &buf {
                r.push(&s.record, &mut out, &mut dropped);
            }
            r.anchor(clock.now());
            let state = r.encode_state();
            (r, read.map(|stats| (stats, buf.len(), out, dropped, state)))
        })
        .await
        .map_err(|e| e.to_string())?;
        let (stats, read, outputs, dropped, state) = work.map_err(|e| e.to_string())?;
        route = Some(back);
        if stats.last_seq <= cursor {
            // Nothing left after the cursor (retention removed it).
            cursor = cursor.max(head);
            continue;
        }
        let work = Work {
            read,
            outputs,
            dropped,
            undecodable: stats.undecodable,
            state,
            through: stats.last_seq,
        };
        if !commit(ctx, work).await? {
            return Ok(());
        }
        cursor = stats.last_seq;
    }
}

/// Takes the route's new config (a reload); its state stays.
fn adopt(name: &str, route: &mut Route, config: &mut watch::Receiver<RouteConfig>) {
    route.config = config.borrow_and_update().clone();
    info!(route = %name, "route config changed; applies from the next batch");
}

/// Commits `work` and counts it; false if ingest has shut down.
async fn commit(ctx: &Ctx<'_>, work: Work) -> Result<bool, String> {
    let (name, metrics) = (ctx.name, ctx.metrics);
    let label = RouteLabel {
        route: name.to_string(),
    };
    let emitted = work.outputs.len() as u64;
    let through = work.through;
    let commit = RouteCommit {
        route: name.clone(),
        outputs: work.outputs,
        state: work.state,
        through,
    };
    match ctx.commits.commit(commit).await {
        Ok(_) => {}
        Err(SubmitError::Closed) => return Ok(false),
        Err(e) => return Err(e.to_string()),
    }
    metrics
        .route_records_in
        .get_or_create(&label)
        .inc_by(work.read as u64);
    metrics
        .route_records_out
        .get_or_create(&label)
        .inc_by(emitted);
    metrics.route_commits.get_or_create(&label).inc();
    metrics.route_seq.get_or_create(&label).set(through);
    for (reason, n) in [
        ("too_late", work.dropped.too_late),
        ("not_finite", work.dropped.not_finite),
        ("bad_time", work.dropped.bad_time),
        ("undecodable", work.undecodable),
    ] {
        if n > 0 {
            metrics
                .route_dropped
                .get_or_create(&RouteReasonLabels {
                    route: name.to_string(),
                    reason: reason.to_owned(),
                })
                .inc_by(n);
        }
    }
    Ok(true)
}
