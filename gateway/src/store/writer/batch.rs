//! Gathering submissions, cursor moves and route commits into the next
//! group commit, and when it is due.

use std::collections::BTreeMap;
use std::sync::Arc;

use ferry_core::record::Record;
use ferry_core::sink::{Item, Submission};
use tokio::time::Instant;

use super::handles::{RouteCommit, RouteDone};
use super::{Done, WriterSettings};
use crate::metrics::{IngestMetrics, RejectLabels, SourceLabel};

/// Items and cursor moves waiting for the next commit.
#[derive(Default)]
pub(super) struct Batch {
    pub(super) records: Vec<Record>,
    pub(super) dead: Vec<ferry_core::record::DeadLetter>,
    /// Each submission's receipt and how many records it brought.
    pub(super) acks: Vec<(Option<Done>, usize)>,
    pub(super) cursors: BTreeMap<Arc<str>, u64>,
    pub(super) routes: Vec<(RouteCommit, RouteDone)>,
    /// When the items gathered so far must be committed: the earliest of
    /// their submission's time plus its `max_delay` (default: the commit
    /// interval).
    pub(super) items_due: Option<Instant>,
    pub(super) cursors_since: Option<Instant>,
    /// When prompt cursor moves must be committed.
    pub(super) cursors_due: Option<Instant>,
    /// While ingest is blocked (`when_full = "block"`): when to look again.
    pub(super) retry_at: Option<Instant>,
}

impl Batch {
    pub(super) fn add(
        &mut self,
        sub: Submission,
        now: Instant,
        cfg: &WriterSettings,
        metrics: &IngestMetrics,
    ) {
        self.due_by(sub.submitted.min(now) + sub.max_delay.unwrap_or(cfg.commit_interval));
        let mut n = 0;
        // Counted per run of one source (a submission is usually one run):
        // a label lookup per record costs more than the rest of `add`.
        let mut run: Option<(Arc<str>, u64)> = None;
        let count = |run: (Arc<str>, u64)| {
            metrics
                .records_received
                .get_or_create(&SourceLabel {
                    source: run.0.to_string(),
                })
                .inc_by(run.1);
        };
        for item in sub.items {
            match item {
                Item::Record(r) => {
                    match &mut run {
                        Some((source, k)) if **source == *r.source => *k += 1,
                        _ => {
                            if let Some(done) = run.replace((r.source.clone(), 1)) {
                                count(done);
                            }
                        }
                    }
                    self.records.push(r);
                    n += 1;
                }
                Item::Dead(d) => {
                    metrics
                        .records_rejected
                        .get_or_create(&RejectLabels {
                            source: d.source.to_string(),
                            reason: d.kind.to_owned(),
                        })
                        .inc();
                    self.dead.push(d);
                }
            }
        }
        if let Some(done) = run {
            count(done);
        }
        self.acks.push((sub.done, n));
    }

    pub(super) fn due_by(&mut self, at: Instant) {
        self.items_due = Some(self.items_due.map_or(at, |due| due.min(at)));
    }

    pub(super) fn move_cursor(&mut self, name: Arc<str>, seq: u64, now: Instant) {
        let pos = self.cursors.entry(name).or_insert(seq);
        *pos = (*pos).max(seq);
        self.cursors_since.get_or_insert(now);
    }

    pub(super) fn cursors_due_by(&mut self, at: Instant) {
        self.cursors_due = Some(self.cursors_due.map_or(at, |due| due.min(at)));
    }

    pub(super) fn is_empty(&self) -> bool {
        self.acks.is_empty() && self.cursors.is_empty() && self.routes.is_empty()
    }

    /// Only empty submissions (a source asking for a commit of what it
    /// submitted before, already committed): their receipts need no
    /// transaction.
    pub(super) fn writes_nothing(&self) -> bool {
        self.records.is_empty()
            && self.dead.is_empty()
            && self.cursors.is_empty()
            && self.routes.is_empty()
    }

    pub(super) fn deadline(&self, cfg: &WriterSettings) -> Option<Instant> {
        let items = match self.retry_at {
            Some(retry) => Some(retry),
            None => self.items_due,
        };
        let cursors = self.cursors_since.map(|t| t + cfg.cursor_flush_interval);
        [items, cursors, self.cursors_due]
            .into_iter()
            .flatten()
            .min()
    }

    /// Puts a held batch's items back in front of what came since.
    pub(super) fn hold(&mut self, held: Batch, retry_at: Instant) {
        let mut records = held.records;
        records.append(&mut self.records);
        self.records = records;
        let mut dead = held.dead;
        dead.append(&mut self.dead);
        self.dead = dead;
        let mut acks = held.acks;
        acks.append(&mut self.acks);
        self.acks = acks;
        if let Some(due) = held.items_due {
            self.due_by(due);
        }
        self.retry_at = Some(retry_at);
    }

    pub(super) fn full(&self, cfg: &WriterSettings) -> bool {
        self.records.len() + self.dead.len() >= cfg.commit_max_records
    }
}
