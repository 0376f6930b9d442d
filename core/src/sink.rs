//! How a source hands records to the durable ingest and learns when they are
//! committed.
//!
//! A source calls [`Sink::submit`] with a batch of items. The call waits while
//! the ingest queue is full (back-pressure reaches the device instead of
//! memory growing) and returns a [`Receipt`]. The receipt resolves once the
//! items are committed and fsynced: only then may the source acknowledge them
//! to the device (an MQTT PUBACK, for instance).

use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::record::{DeadLetter, Record};

/// Something a source hands to ingest.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    Record(Record),
    Dead(DeadLetter),
}

/// Where the items of one submission ended up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    /// The sequence number of the last record of this submission in the
    /// record stream, or `None` if it held no records.
    pub last_seq: Option<u64>,
}

/// Why a submission was not committed.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum SubmitError {
    /// Ingest has shut down; nothing more is accepted.
    #[error("ingest is shut down")]
    Closed,
    /// The store refused the write (disk full, I/O error); the items are not stored.
    #[error("store write failed: {0}")]
    Store(Arc<str>),
}

/// One submission as ingest receives it.
#[derive(Debug)]
pub struct Submission {
    pub items: Vec<Item>,
    /// Told the outcome once the items are committed (or refused).
    pub done: Option<oneshot::Sender<Result<Committed, SubmitError>>>,
    /// How long the items may wait for their commit: `None` is the store's
    /// `commit_interval`. A source whose devices wait for the commit (an MQTT
    /// PUBACK) wants it short; one that acknowledges nobody (a Modbus poll)
    /// can let its records ride a later commit, which writes far less to
    /// the disk per record.
    pub max_delay: Option<Duration>,
    /// When the source handed the items over. `max_delay` counts from here,
    /// not from when the writer takes them: items that queued while the
    /// previous commit was being written are not made to wait a whole
    /// interval more.
    pub submitted: Instant,
}

/// The commit outcome of one submission.
#[derive(Debug)]
pub struct Receipt(oneshot::Receiver<Result<Committed, SubmitError>>);

impl Receipt {
    /// Waits until the items are committed and fsynced.
    pub async fn committed(self) -> Result<Committed, SubmitError> {
        self.0.await.unwrap_or(Err(SubmitError::Closed))
    }

    /// The outcome if it is known already, without waiting.
    pub fn try_committed(&mut self) -> Option<Result<Committed, SubmitError>> {
        match self.0.try_recv() {
            Ok(outcome) => Some(outcome),
            Err(oneshot::error::TryRecvError::Empty) => None,
            Err(oneshot::error::TryRecvError::Closed) => Some(Err(SubmitError::Closed)),
        }
    }
}

/// The sending side of ingest; cheap to clone, one per source.
#[derive(Debug, Clone)]
pub struct Sink {
    tx: mpsc::Sender<Submission>,
}

impl Sink {
    /// A sink and the receiver that ingest reads, with room for `capacity`
    /// submissions before senders wait.
    pub fn channel(capacity: usize) -> (Sink, mpsc::Receiver<Submission>) {
        let (tx, rx) = mpsc::channel(capacity);
        (Sink { tx }, rx)
    }

    /// Hands `items` to ingest, waiting while its queue is full.
    pub async fn submit(&self, items: Vec<Item>) -> Result<Receipt, SubmitError> {
        self.submit_within(items, None).await
    }

    /// Like [`Sink::submit`], with the longest the items may wait for their
    /// commit (see [`Submission::max_delay`]).
    pub async fn submit_within(
        &self,
        items: Vec<Item>,
        max_delay: Option<Duration>,
    ) -> Result<Receipt, SubmitError> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Submission {
                items,
                done: Some(done),
                max_delay,
                submitted: Instant::now(),
            })
            .await
            .map_err(|_| SubmitError::Closed)?;
        Ok(Receipt(rx))
    }

    /// Passes on a submission received from another sink (the pipeline sits
    /// between the sources and ingest), receipt and all, waiting while the
    /// queue is full. If ingest is shut down the submission is dropped, and
    /// its submitter's receipt resolves to [`SubmitError::Closed`].
    pub async fn forward(&self, submission: Submission) -> Result<(), SubmitError> {
        self.tx
            .send(submission)
            .await
            .map_err(|_| SubmitError::Closed)
    }

    /// Hands `items` to ingest and waits until they are committed.
    pub async fn submit_and_wait(&self, items: Vec<Item>) -> Result<Committed, SubmitError> {
        self.submit(items).await?.committed().await
    }
}
