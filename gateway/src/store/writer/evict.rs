//! Eviction: dead letters beyond their share, records past `max_age`, and
//! room for a commit within the disk budget as `when_full` allows; the
//! episode of eviction or dropping, logged once.

use redb::ReadableTable;
use tracing::{info, warn};

use super::state::{WriterState, AGE_CHECK_INTERVAL};
use crate::metrics::ReasonLabel;
use crate::store::retention::{entry_bytes, WhenFull, MAX_EVICT_PER_COMMIT};
use crate::store::{codec, StoreError};

impl WriterState {
    /// The highest sequence number every protected consumer has delivered.
    fn delivered(&self) -> u64 {
        self.consumers.values().copied().min().unwrap_or(u64::MAX)
    }

    /// Evicts dead letters beyond their share of the budget.
    pub(super) fn evict_dead(
        &mut self,
        dead: &mut redb::Table<u64, &'static [u8]>,
    ) -> Result<bool, StoreError> {
        let mut need = self.usage.dead_to_free(&self.retention);
        let mut n = 0u64;
        while need > 0 && n < MAX_EVICT_PER_COMMIT as u64 {
            let Some((k, v)) = dead.pop_first()? else {
                break;
            };
            let bytes = entry_bytes(v.value().len());
            self.usage.first_dead = k.value() + 1;
            drop((k, v));
            self.usage.dead_bytes -= bytes.min(self.usage.dead_bytes);
            need = need.saturating_sub(bytes);
            n += 1;
        }
        if n > 0 {
            self.metrics.dead_letters_evicted.inc_by(n);
        }
        Ok(n > 0)
    }

    /// Evicts records older than `max_age` from the front of the log and
    /// of the route streams.
    pub(super) fn evict_aged(
        &mut self,
        tx: &redb::WriteTransaction,
        records: &mut redb::Table<u64, &'static [u8]>,
    ) -> Result<bool, StoreError> {
        let Some(max_age) = self.retention.max_age else {
            return Ok(false);
        };
        if self.age_checked.elapsed() < AGE_CHECK_INTERVAL {
            return Ok(false);
        }
        self.age_checked = std::time::Instant::now();
        let cutoff = ferry_core::record::now_millis() - max_age.as_millis() as i64;
        let mut n = 0;
        while n < MAX_EVICT_PER_COMMIT {
            let old = match records.first()? {
                Some((_, v)) => match codec::record_ts(v.value()) {
                    Ok(ts) => ts < cutoff,
                    Err(_) => true, // undecodable: nothing to keep
                },
                None => false,
            };
            if !old {
                break;
            }
            self.pop_record(records, "max_age")?;
            n += 1;
        }
        let before = self.routes.total();
        let routed = self
            .routes
            .evict_aged(tx, cutoff, MAX_EVICT_PER_COMMIT - n, &self.metrics)?;
        self.usage.route_bytes -= (before - self.routes.total()).min(self.usage.route_bytes);
        Ok(n + routed > 0)
    }

    /// Frees room for `incoming` more bytes within the budget, as the policy
    /// allows: delivered raw records, then delivered route entries, then
    /// (`drop_oldest`) undelivered raw records, then undelivered route
    /// entries (see `route_retention`). Returns whether anything was evicted
    /// and whether there is room.
    pub(super) fn evict_for_budget(
        &mut self,
        tx: &redb::WriteTransaction,
        records: &mut redb::Table<u64, &'static [u8]>,
        incoming: u64,
    ) -> Result<(bool, bool), StoreError> {
        let mut planned = self.usage;
        planned.record_bytes += incoming;
        let mut need = planned.records_to_free(&self.retention);
        if need == 0 {
            self.end_episode();
            return Ok((false, true));
        }
        let drop_oldest = self.retention.when_full == WhenFull::DropOldest;
        let mut n = 0;
        for undelivered in [false, true] {
            if undelivered && !drop_oldest {
                break;
            }
            let (reason, upto) = if undelivered {
                ("disk_budget_undelivered", u64::MAX)
            } else {
                ("disk_budget", self.delivered())
            };
            while need > 0 && n < MAX_EVICT_PER_COMMIT && self.usage.first_record <= upto {
                let Some(bytes) = self.pop_record(records, reason)? else {
                    break;
                };
                need = need.saturating_sub(bytes);
                n += 1;
            }
            if need > 0 && n < MAX_EVICT_PER_COMMIT {
                let (freed, routed) = self.routes.evict_for_budget(
                    tx,
                    need,
                    undelivered,
                    MAX_EVICT_PER_COMMIT - n,
                    &self.metrics,
                )?;
                self.usage.route_bytes -= freed.min(self.usage.route_bytes);
                need = need.saturating_sub(freed);
                n += routed;
                if routed > 0 {
                    self.count_episode(reason, routed as u64);
                }
            }
        }
        let mut after = self.usage;
        after.record_bytes += incoming;
        let room = after.file_bytes() <= self.retention.max_disk;
        Ok((n > 0, room))
    }

    /// Evicts the first record; its accounted bytes, or None if empty.
    fn pop_record(
        &mut self,
        records: &mut redb::Table<u64, &'static [u8]>,
        reason: &'static str,
    ) -> Result<Option<u64>, StoreError> {
        let Some((k, v)) = records.pop_first()? else {
            return Ok(None);
        };
        let bytes = entry_bytes(v.value().len());
        self.usage.first_record = k.value() + 1;
        drop((k, v));
        self.usage.record_bytes -= bytes.min(self.usage.record_bytes);
        self.count_episode(reason, 1);
        self.metrics
            .records_evicted
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
        Ok(Some(bytes))
    }

    pub(super) fn count_episode(&mut self, reason: &'static str, n: u64) {
        match &mut self.episode {
            Some((_, count)) => *count += n,
            None => {
                warn!(
                    reason,
                    max_disk = self.retention.max_disk,
                    policy = ?self.retention.when_full,
                    "store budget reached: evicting or dropping records (counted in ferry_ingest_records_evicted_total / _dropped_total)"
                );
                self.episode = Some((reason, n));
            }
        }
    }

    fn end_episode(&mut self) {
        if let Some((reason, n)) = self.episode.take() {
            info!(reason, records = n, "store back within its budget");
        }
    }
}
