//! The handles the writer hands out besides the [`Sink`](ferry_core::sink::Sink):
//! [`Cursors`] (consumers' cursor moves) and [`RouteCommits`] (a route's
//! output, state and cursor in one commit).

use std::sync::Arc;

use ferry_core::record::Record;
use ferry_core::sink::SubmitError;
use tokio::sync::{mpsc, oneshot};

/// Moves consumers' cursors; the writer commits them with its next batch.
#[derive(Debug, Clone)]
pub struct Cursors {
    pub(super) tx: mpsc::Sender<CursorMove>,
}

/// A consumer has finished with every sequence number up to `seq`.
#[derive(Debug)]
pub(super) struct CursorMove {
    pub(super) name: Arc<str>,
    pub(super) seq: u64,
    /// Commit within `commit_interval` rather than `cursor_flush_interval`.
    pub(super) prompt: bool,
}

impl Cursors {
    /// Records that the consumer `name` has finished with every sequence
    /// number up to `seq`. Durable after the writer's next commit, at the
    /// latest `cursor_flush_interval` from now.
    pub async fn advance(&self, name: &Arc<str>, seq: u64) -> Result<(), SubmitError> {
        self.send(name, seq, false).await
    }

    /// [`Cursors::advance`], durable within `commit_interval` (riding the
    /// next record commit when there is one).
    pub async fn advance_promptly(&self, name: &Arc<str>, seq: u64) -> Result<(), SubmitError> {
        self.send(name, seq, true).await
    }

    async fn send(&self, name: &Arc<str>, seq: u64, prompt: bool) -> Result<(), SubmitError> {
        let name = name.clone();
        self.tx
            .send(CursorMove { name, seq, prompt })
            .await
            .map_err(|_| SubmitError::Closed)
    }
}

/// A route's output records, new state and cursor (the last raw sequence
/// number it has processed), committed in one transaction with the next
/// group commit: exactly-once through a crash (see `route/`).
#[derive(Debug)]
pub struct RouteCommit {
    pub route: Arc<str>,
    /// Appended to the stream `route.NAME`.
    pub outputs: Vec<Record>,
    /// Replaces the route's entry in `route_state`.
    pub state: Vec<u8>,
    /// The route's cursor `route.NAME` moves here.
    pub through: u64,
}

/// Where a route commit's outcome (its stream's new head) is sent.
pub(super) type RouteDone = oneshot::Sender<Result<u64, SubmitError>>;

/// Hands route commits to the writer.
#[derive(Debug, Clone)]
pub struct RouteCommits {
    pub(super) tx: mpsc::Sender<(RouteCommit, RouteDone)>,
}

impl RouteCommits {
    /// Commits and waits; returns the head of the route's stream after it.
    pub async fn commit(&self, commit: RouteCommit) -> Result<u64, SubmitError> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send((commit, done))
            .await
            .map_err(|_| SubmitError::Closed)?;
        rx.await.unwrap_or(Err(SubmitError::Closed))
    }
}
