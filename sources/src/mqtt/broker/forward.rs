//! Forwarding what rumqttd routes to ingest: the local link's
//! notifications matched, decoded and batched, gaps in its offsets turned
//! into `overrun` dead letters, and failed commits of what was submitted
//! reported. (Only for devices connected to rumqttd directly: the front
//! stores what its devices send itself.)

use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use rumqttd::local::LinkRx;
use rumqttd::Notification;
use tokio::sync::{mpsc, oneshot};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error};

use ferry_core::record::DeadLetter;
use ferry_core::sink::{Item, Receipt, Sink, SubmitError};

use crate::mqtt::decode::MessageDecoder;
use crate::mqtt::front::{observe_dead, BrokerObserver};
use crate::mqtt::log::DeadLetterLog;
use crate::mqtt::payload::Reject;
use crate::mqtt::SourceError;

use super::*;

/// Ferry's end of the link: pulls forwarded messages, decodes and submits
/// them.
pub(super) struct Forwarder {
    pub(super) addr: SocketAddr,
    pub(super) decoder: MessageDecoder,
    /// Longer topics become `topic_too_long` dead letters.
    pub(super) max_topic_length: usize,
    pub(super) link_rx: LinkRx,
    pub(super) sink: Sink,
    pub(super) receipts: mpsc::Sender<Submitted>,
    pub(super) batch: Vec<Item>,
    /// The broker log offset expected next; a jump means lost messages. The
    /// log starts at 0 with Ferry's subscription, before any device connects.
    pub(super) next_offset: u64,
    /// Messages the broker dropped before Ferry could read them.
    pub(super) lost: u64,
    pub(super) dead: DeadLetterLog,
    pub(super) observer: Arc<dyn BrokerObserver>,
}

impl Forwarder {
    pub(super) fn source(&self) -> &str {
        self.decoder.source()
    }

    pub(super) async fn run(
        &mut self,
        cancel: &CancellationToken,
        stopped: &mut oneshot::Receiver<String>,
    ) -> Result<(), SourceError> {
        loop {
            let first = tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                reason = &mut *stopped => return Err(SourceError::Broker {
                    addr: self.addr,
                    reason: reason.unwrap_or_else(|_| "its thread died".to_owned()),
                }),
                n = self.link_rx.next() => n.map_err(|e| self.link_failed(e))?,
            };
            let mut unscheduled = first.is_some_and(|n| self.take(n));
            unscheduled |= self.drain_ready()?;
            self.submit(cancel).await?;
            if unscheduled {
                // The router paused forwarding to this link while its buffer
                // was full; ask for more now that it is drained.
                self.link_rx.wake().await.map_err(|e| self.link_failed(e))?;
            }
        }
        // Cancelled: forward what the link holds already, then stop.
        self.drain_ready()?;
        self.submit(cancel).await
    }

    pub(super) fn link_failed(&self, e: rumqttd::local::LinkError) -> SourceError {
        SourceError::Broker {
            addr: self.addr,
            reason: format!("its router link failed: {e}"),
        }
    }

    /// Takes what the link has ready without waiting, up to a full batch.
    /// Returns whether the router paused forwarding.
    pub(super) fn drain_ready(&mut self) -> Result<bool, SourceError> {
        let mut unscheduled = false;
        while self.batch.len() < MAX_BATCH {
            match now_or_never(self.link_rx.next()) {
                Some(Ok(Some(n))) => unscheduled |= self.take(n),
                Some(Ok(None)) | None => break,
                Some(Err(e)) => return Err(self.link_failed(e)),
            }
        }
        Ok(unscheduled)
    }

    /// Decodes one notification into the batch. Returns true for the
    /// router's "paused" notice.
    pub(super) fn take(&mut self, n: Notification) -> bool {
        let forward = match n {
            Notification::Forward(f) => f,
            Notification::Unschedule => return true,
            other => {
                debug!(source = %self.source(), "broker link: {other:?}");
                return false;
            }
        };
        if let Some((_, offset)) = forward.cursor {
            self.check_offset(offset);
        }
        let publish = forward.publish;
        let topic = String::from_utf8_lossy(&publish.topic);
        let max = self.max_topic_length;
        let item = if publish.topic.len() > max {
            Item::Dead(DeadLetter::new(
                self.decoder.source().clone(),
                &*topic,
                Reject::TOPIC_TOO_LONG,
                format!(
                    "topic of {} bytes: longer than max_topic_length ({max})",
                    publish.topic.len()
                ),
                &publish.payload,
            ))
        } else {
            self.decoder.decode(&topic, &publish.payload)
        };
        if let Item::Dead(d) = &item {
            observe_dead(&self.dead, &*self.observer, d);
        }
        self.batch.push(item);
        false
    }

    /// Checks that no message was skipped; a gap becomes an `overrun` dead
    /// letter (and an error in the log), so that the loss is stored too.
    pub(super) fn check_offset(&mut self, offset: u64) {
        let expected = self.next_offset;
        self.next_offset = offset + 1;
        if offset <= expected {
            return;
        }
        let lost = offset - expected;
        self.lost += lost;
        let reason = format!(
            "the embedded broker dropped {lost} acknowledged messages (log offsets \
             {expected}..{offset}) before Ferry read them: ingest fell more than `buffer` \
             behind"
        );
        error!(
            source = %self.source(),
            lost,
            lost_total = self.lost,
            "{reason}"
        );
        self.batch.push(Item::Dead(DeadLetter::new(
            self.decoder.source().clone(),
            "embedded broker",
            Reject::OVERRUN,
            reason,
            &[],
        )));
    }

    /// Hands the batch to ingest, waiting while ingest is full (and so not
    /// pulling from the broker). Does not wait for the commit: the broker has
    /// acknowledged these messages already.
    pub(super) async fn submit(&mut self, cancel: &CancellationToken) -> Result<(), SourceError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        // A vector of just these items: the submission waits in ingest for
        // its commit (up to `commit_interval`), and one with room for a full
        // batch held ~50 KB per message at a trickle (heaptrack: 1.7 MB of
        // the daemon's heap at 1,000 records/s). `batch` keeps its room.
        let items: Vec<Item> = self.batch.drain(..).collect();
        let count = items.len();
        let mut submit = pin!(self.sink.submit(items));
        let submitted = tokio::select! {
            r = &mut submit => r,
            _ = cancel.cancelled() => match timeout(SHUTDOWN_GRACE, &mut submit).await {
                Ok(r) => r,
                Err(_) => {
                    error!(
                        source = %self.source(),
                        count,
                        "shutting down: ingest did not accept the last messages in time; \
                         they are lost"
                    );
                    return Ok(());
                }
            },
        };
        let receipt = submitted.map_err(|_| SourceError::SinkClosed)?;
        if let Err(mpsc::error::TrySendError::Full(s)) =
            self.receipts.try_send(Submitted { count, receipt })
        {
            debug!(
                source = %self.source(),
                count = s.count, "receipt watcher is behind; not watching this commit"
            );
        }
        Ok(())
    }
}

/// A submission to ingest, whose commit the receipt watcher waits for.
pub(super) struct Submitted {
    pub(super) count: usize,
    pub(super) receipt: Receipt,
}

/// Watches commit receipts in order, to report store failures (the broker
/// has acknowledged these messages, so a failed commit loses them).
pub(super) fn spawn_receipt_watcher(name: Arc<str>) -> mpsc::Sender<Submitted> {
    let (tx, mut rx) = mpsc::channel::<Submitted>(1024);
    tokio::spawn(async move {
        while let Some(Submitted { count, receipt }) = rx.recv().await {
            match receipt.committed().await {
                Ok(_) => {}
                Err(SubmitError::Closed) => break,
                Err(e @ SubmitError::Store(_)) => error!(
                    source = %name,
                    count,
                    "messages acknowledged by the embedded broker were not stored: {e}"
                ),
            }
        }
    });
    tx
}

/// Polls a future once: its output if it is ready now.
pub(super) fn now_or_never<F: Future>(fut: F) -> Option<F::Output> {
    let mut fut = pin!(fut);
    match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}
