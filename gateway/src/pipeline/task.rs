//! The pipeline task: receives the sources' submissions, applies the steps,
//! forwards them to ingest.

use std::sync::Arc;

use ferry_core::sink::{Item, Sink, Submission};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::step::{Outcome, Pipeline};

/// Starts the pipeline in front of `ingest`: returns the sink the sources
/// submit to, and the task, which ends once every clone of that sink is
/// dropped and what it holds is forwarded (dropping its `ingest` sink, so
/// the writer can end in turn).
pub fn spawn_pipeline(
    pipeline: Arc<Pipeline>,
    ingest: Sink,
    queue: usize,
) -> (Sink, JoinHandle<()>) {
    let (_, pipeline) = watch::channel(pipeline);
    spawn_pipeline_with(pipeline, ingest, queue)
}

/// [`spawn_pipeline`] following `pipeline`: a new value (a reload) applies
/// whole from the next submission on, steps and device registry together.
pub fn spawn_pipeline_with(
    pipeline: watch::Receiver<Arc<Pipeline>>,
    ingest: Sink,
    queue: usize,
) -> (Sink, JoinHandle<()>) {
    let (sink, rx) = Sink::channel(queue);
    let task = tokio::spawn(run(pipeline, ingest, rx));
    (sink, task)
}

async fn run(
    pipeline: watch::Receiver<Arc<Pipeline>>,
    ingest: Sink,
    mut rx: mpsc::Receiver<Submission>,
) {
    while let Some(mut sub) = rx.recv().await {
        let pipeline = pipeline.borrow().clone();
        if !pipeline.is_empty() {
            sub.items.retain_mut(|item| match item {
                Item::Record(r) => pipeline.apply(r) == Outcome::Keep,
                Item::Dead(_) => true,
            });
        }
        if ingest.forward(sub).await.is_err() {
            warn!("ingest is shut down; the pipeline stops");
            return;
        }
    }
    info!("pipeline stopped");
}
