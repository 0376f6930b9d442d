//! Retention: the store's disk budget and maximum age, and what happens when
//! the budget is reached.
//!
//! The writer keeps an account of the bytes each stream holds (key, value and
//! a fixed per-entry overhead), persisted in the `meta` table now and then and
//! brought up to date at open by reading only the records written since. The
//! store file needs about [`FILE_FACTOR`] times that (page fill, B-tree
//! branches, redb's own tables), measured on real files; freed pages are
//! reused by redb, so the file stops growing once eviction keeps pace.
//!
//! When the estimate passes [`HIGH_WATER`] of `max_disk`, the writer frees
//! space down to [`LOW_WATER`], oldest records first, a bounded number per
//! commit so no commit stalls:
//! 1. records every uplink has already delivered (always allowed);
//! 2. then, per `when_full`: `drop_oldest` evicts undelivered records too;
//!    `drop_newest` stores no new records until there is room (they are
//!    counted and acknowledged, so devices do not resend them forever);
//!    `block` stops taking submissions (back-pressure to the sources) until
//!    uplinks deliver enough to make room.
//!
//! Route output streams (`route.NAME`) count in the same budget and are
//! trimmed by the same rules, after raw records of the same kind (see
//! `route_retention`): the aggregates outlive the raw data they summarise.
//!
//! Records older than `max_age` are evicted whatever the budget. Dead letters
//! are kept within [`DEAD_SHARE`] of the budget, oldest evicted first. Every
//! evicted or dropped record is counted by reason; each episode is logged
//! once when it starts and once when it ends.

use std::time::Duration;

use serde::Deserialize;

/// What to do when the disk budget is reached and nothing delivered is left
/// to evict.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Evict the oldest records even if no uplink has delivered them.
    #[default]
    DropOldest,
    /// Keep what is stored; count and drop new records.
    DropNewest,
    /// Keep everything; stop acknowledging sources until there is room.
    Block,
}

/// The retention settings of a store.
#[derive(Clone, Debug)]
pub struct Retention {
    /// The budget for the store file, in bytes.
    pub max_disk: u64,
    /// Records older than this (by their timestamp) are evicted.
    pub max_age: Option<Duration>,
    pub when_full: WhenFull,
}

/// Bytes of file per accounted byte (measured: 1.11 for appended records;
/// the rest is room for branch pages and fragmentation).
pub const FILE_FACTOR: f64 = 1.25;
/// Fixed file overhead: redb's header and system tables, names, cursors.
pub const FILE_BASE: u64 = 1 << 20;
/// Eviction starts above this share of `max_disk`...
pub const HIGH_WATER: f64 = 0.90;
/// ... and frees down to this share.
pub const LOW_WATER: f64 = 0.80;
/// The share of the budget dead letters may hold.
pub const DEAD_SHARE: f64 = 0.05;
/// Per-entry overhead beyond key and value in a redb leaf.
pub const ENTRY_OVERHEAD: u64 = 8;
/// The most entries evicted in one commit.
pub const MAX_EVICT_PER_COMMIT: usize = 20_000;

/// Accounted bytes of one stored entry with a `u64` key.
pub fn entry_bytes(value_len: usize) -> u64 {
    8 + value_len as u64 + ENTRY_OVERHEAD
}

/// What the streams hold, by the writer's account.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub record_bytes: u64,
    pub dead_bytes: u64,
    /// Every route output stream together (`route_retention`).
    pub route_bytes: u64,
    /// The first sequence number still stored (head + 1 when empty).
    pub first_record: u64,
    pub first_dead: u64,
}

impl Usage {
    /// The store file size these streams need, estimated.
    pub fn file_bytes(&self) -> u64 {
        ((self.record_bytes + self.dead_bytes + self.route_bytes) as f64 * FILE_FACTOR) as u64
            + FILE_BASE
    }

    /// Accounted bytes to free from the record and route streams now (0 = none).
    pub fn records_to_free(&self, r: &Retention) -> u64 {
        let budget = r.max_disk as f64;
        if (self.file_bytes() as f64) < budget * HIGH_WATER {
            return 0;
        }
        let target = ((budget * LOW_WATER - FILE_BASE as f64) / FILE_FACTOR).max(0.0) as u64;
        (self.record_bytes + self.dead_bytes + self.route_bytes).saturating_sub(target)
    }

    /// Accounted bytes to free from the dead-letter stream now (0 = none).
    pub fn dead_to_free(&self, r: &Retention) -> u64 {
        let share = (r.max_disk as f64 * DEAD_SHARE / FILE_FACTOR) as u64;
        if self.dead_bytes <= share {
            0
        } else {
            self.dead_bytes - share * 9 / 10
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(max_disk: u64) -> Retention {
        Retention {
            max_disk,
            ..Retention::default()
        }
    }

    #[test]
    fn nothing_is_freed_below_the_high_water_mark() {
        let u = Usage {
            record_bytes: 10 << 20,
            ..Usage::default()
        };
        // 10 MiB * 1.25 + 1 MiB = 13.5 MiB < 90% of 16 MiB.
        assert_eq!(u.records_to_free(&r(16 << 20)), 0);
    }

    #[test]
    fn above_the_high_water_mark_frees_down_to_the_low_one() {
        let u = Usage {
            record_bytes: 12 << 20,
            ..Usage::default()
        };
        // 12 MiB * 1.25 + 1 MiB = 16 MiB >= 14.4 MiB: free down to
        // (12.8 MiB - 1 MiB) / 1.25 = 9.44 MiB accounted.
        let free = u.records_to_free(&r(16 << 20));
        let target = ((16u64 << 20) as f64 * 0.8 - (1 << 20) as f64) / 1.25;
        assert_eq!(free, (12u64 << 20) - target as u64);
        let after = Usage {
            record_bytes: u.record_bytes - free,
            ..u
        };
        assert!((after.file_bytes() as f64) <= (16u64 << 20) as f64 * 0.8 + 1.0);
    }

    #[test]
    fn dead_letters_keep_to_their_share() {
        let budget = 100 << 20;
        let share = ((100u64 << 20) as f64 * DEAD_SHARE / FILE_FACTOR) as u64;
        let mut u = Usage {
            dead_bytes: share,
            ..Usage::default()
        };
        assert_eq!(u.dead_to_free(&r(budget)), 0);
        u.dead_bytes = share + 1;
        assert_eq!(u.dead_to_free(&r(budget)), share + 1 - share * 9 / 10);
    }
}
