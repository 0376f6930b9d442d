//! After a commit: each submitter's receipt (with its records' sequence
//! numbers), each route's new head, the counters, and what goes back into
//! the next batch (a held batch, failed cursor moves).

use std::sync::Arc;

use ferry_core::sink::{Committed, SubmitError};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use super::batch::Batch;
use super::handles::{RouteCommit, RouteDone};
use super::state::{Disposition, WriterState, Written, BLOCKED_RETRY};
use super::WriterSettings;
use crate::metrics::{ReasonLabel, RejectLabels};
use crate::store::{Heads, StoreError};

impl WriterState {
    /// Tells every submitter the outcome. On failure, cursor moves go back
    /// into `next` to be tried again; a held batch goes back whole.
    pub(super) fn finish(
        &mut self,
        mut batch: Batch,
        result: Result<Written, StoreError>,
        next: &mut Batch,
        cfg: &WriterSettings,
    ) {
        self.metrics.store_writable.set(i64::from(result.is_ok()));
        self.answer_routes(std::mem::take(&mut batch.routes), &result);
        match result {
            Ok(Written {
                heads,
                records: Disposition::Held,
                ..
            }) => self.held(batch, heads, next, cfg),
            Ok(written) => self.stored(batch, written),
            Err(e) => self.failed(batch, e, next),
        }
    }

    /// Tells each route commit its stream's new head, or the error.
    fn answer_routes(
        &mut self,
        routes: Vec<(RouteCommit, RouteDone)>,
        result: &Result<Written, StoreError>,
    ) {
        let route_heads = std::mem::take(&mut self.route_heads);
        for (i, (_, done)) in routes.into_iter().enumerate() {
            let outcome = match (result, route_heads.get(i)) {
                (Ok(_), Some((route, head))) => {
                    self.store.set_route_head(route, *head);
                    Ok(*head)
                }
                (Err(e), _) => Err(SubmitError::Store(e.to_string().into())),
                (Ok(_), None) => Err(SubmitError::Store("route commit not written".into())),
            };
            // A route that stopped waiting re-reads its state when it starts.
            let _ = done.send(outcome);
        }
    }

    /// The budget is reached and nothing may be evicted (`block`): the
    /// batch's items go back into `next`, to be tried again.
    fn held(&mut self, batch: Batch, heads: Heads, next: &mut Batch, cfg: &WriterSettings) {
        if !self.blocked {
            warn!(
                max_disk = self.retention.max_disk,
                "store budget reached and nothing delivered to evict: ingest blocks until uplinks catch up"
            );
        }
        self.blocked = true;
        self.metrics.commits.inc();
        self.update_gauges(heads);
        self.store.heads_sender().send_replace(heads);
        let Batch {
            records,
            dead,
            acks,
            items_due,
            ..
        } = batch;
        next.hold(
            Batch {
                records,
                dead,
                acks,
                items_due,
                ..Batch::default()
            },
            Instant::now() + BLOCKED_RETRY.min(cfg.cursor_flush_interval.max(cfg.commit_interval)),
        );
    }

    /// The batch is committed (its records stored, or dropped by
    /// `drop_newest`): counts, heads, then each submitter's receipt.
    fn stored(&mut self, batch: Batch, written: Written) {
        let Written {
            heads,
            records: disposition,
            refused,
        } = written;
        if self.blocked {
            info!("store has room again: ingest resumes");
            self.blocked = false;
        }
        let Batch {
            records,
            dead,
            acks,
            ..
        } = batch;
        let stored = matches!(disposition, Disposition::Stored);
        for (_, d) in &refused {
            self.metrics
                .records_rejected
                .get_or_create(&RejectLabels {
                    source: d.source.to_string(),
                    reason: d.kind.to_owned(),
                })
                .inc();
        }
        let stored_records = records.len() - refused.len();
        if stored {
            self.metrics.records_stored.inc_by(stored_records as u64);
        } else {
            self.count_episode("disk_full", records.len() as u64);
            self.metrics
                .records_dropped
                .get_or_create(&ReasonLabel {
                    reason: "disk_full".to_owned(),
                })
                .inc_by(records.len() as u64);
        }
        self.metrics.commits.inc();
        self.metrics
            .dead_letters_stored
            .inc_by((dead.len() + refused.len()) as u64);
        self.metrics.head_seq.set(heads.records);
        self.update_gauges(heads);
        // Heads first: a submitter that reads them after its receipt sees its records.
        self.store.heads_sender().send_replace(heads);
        let mut seq = heads.records - if stored { stored_records as u64 } else { 0 };
        // Records refused by the name limits have no sequence number.
        let mut refused = refused.iter().map(|(i, _)| *i).peekable();
        let mut at = 0usize;
        for (done, n) in acks {
            let end = at + n;
            let mut kept = n;
            while refused.next_if(|&i| i < end).is_some() {
                kept -= 1;
            }
            at = end;
            let last_seq = if stored && kept > 0 {
                seq += kept as u64;
                Some(seq)
            } else {
                None
            };
            if let Some(done) = done {
                // A submitter that stopped waiting is no loss: the data is stored.
                let _ = done.send(Ok(Committed { last_seq }));
            }
        }
        debug!(
            records = records.len(),
            dead = dead.len(),
            head = heads.records,
            "committed"
        );
    }

    /// The commit failed: submitters are told; cursor moves go back into
    /// `next`.
    fn failed(&mut self, batch: Batch, e: StoreError, next: &mut Batch) {
        self.metrics.commit_errors.inc();
        self.metrics
            .records_failed
            .inc_by(batch.records.len() as u64);
        error!(error = %e, records = batch.records.len(), "commit failed; sources are told and keep their data");
        let msg: Arc<str> = e.to_string().into();
        for (done, _) in batch.acks {
            if let Some(done) = done {
                let _ = done.send(Err(SubmitError::Store(msg.clone())));
            }
        }
        let now = Instant::now();
        for (name, seq) in batch.cursors {
            next.move_cursor(name, seq, now);
        }
    }
}
