//! The route task: read after the cursor, process, commit output + state +
//! cursor together, repeat; wait for new records when caught up.

use std::sync::Arc;
use std::time::Duration;

use ferry_adapters::sink::SubmitError;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::{Dropped, Route, State};
use crate::config::RouteConfig;
use crate::metrics::{PipelineMetrics, RouteLabel, RouteReasonLabels};
use crate::store::{RouteCommit, RouteCommits, Store, StoredRecord};

/// The cursor of the route `name` on the raw stream.
pub fn cursor_name(route: &str) -> String {
    format!("route.{route}")
}

/// How long a route waits after a failed commit before it starts again
/// from its committed state.
const RETRY: Duration = Duration::from_secs(1);

/// Starts the route `name`; it runs until `cancel` fires or ingest shuts down.
pub fn spawn_route(
    name: &str,
    config: RouteConfig,
    store: Store,
    commits: RouteCommits,
    metrics: PipelineMetrics,
    cancel: CancellationToken,
) -> JoinHandle<()> {
    let name: Arc<str> = name.into();
    tokio::spawn(async move {
        loop {
            match run(&name, &config, &store, &commits, &metrics, &cancel).await {
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

/// Runs from the committed state until cancelled (`Ok`) or a commit fails.
async fn run(
    name: &Arc<str>,
    config: &RouteConfig,
    store: &Store,
    commits: &RouteCommits,
    metrics: &PipelineMetrics,
    cancel: &CancellationToken,
) -> Result<(), String> {
    let label = RouteLabel {
        route: name.to_string(),
    };
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
    let mut route = Some(Route::new(name, config.clone(), state));
    let mut heads = store.watch_heads();
    let batch = config.batch_records.get();
    loop {
        if cancel.is_cancelled() {
            return Ok(());
        }
        if store.heads().records <= cursor {
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                changed = heads.changed() => if changed.is_err() { return Ok(()) },
            }
            continue;
        }
        let head = store.heads().records;
        let (mut r, st) = (route.take().expect("route"), store.clone());
        let from = cursor;
        let (back, work) = tokio::task::spawn_blocking(move || {
            let mut buf: Vec<StoredRecord> = Vec::with_capacity(batch);
            let read = st.read_records(from, batch, &mut buf);
            let mut out = Vec::new();
            let mut dropped = Dropped::default();
            for s in &buf {
                r.push(&s.record, &mut out, &mut dropped);
            }
            let state = r.encode_state();
            (r, read.map(|stats| (stats, buf.len(), out, dropped, state)))
        })
        .await
        .map_err(|e| e.to_string())?;
        let (stats, read, outputs, dropped, state) = work.map_err(|e| e.to_string())?;
        if stats.last_seq <= cursor {
            // Nothing left after the cursor (retention removed it).
            cursor = cursor.max(head);
            route = Some(back);
            continue;
        }
        let emitted = outputs.len() as u64;
        let commit = RouteCommit {
            route: name.clone(),
            outputs,
            state,
            through: stats.last_seq,
        };
        match commits.commit(commit).await {
            Ok(_) => {}
            Err(SubmitError::Closed) => return Ok(()),
            Err(e) => return Err(e.to_string()),
        }
        cursor = stats.last_seq;
        route = Some(back);
        metrics
            .route_records_in
            .get_or_create(&label)
            .inc_by(read as u64);
        metrics
            .route_records_out
            .get_or_create(&label)
            .inc_by(emitted);
        metrics.route_commits.get_or_create(&label).inc();
        metrics.route_seq.get_or_create(&label).set(cursor);
        for (reason, n) in [
            ("too_late", dropped.too_late),
            ("not_finite", dropped.not_finite),
            ("undecodable", stats.undecodable),
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
    }
}
