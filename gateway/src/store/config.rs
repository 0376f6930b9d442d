//! `[store]`: the durable log's group commit and cache, its budgets, and
//! the bounds on names from outside (devices, series, fields per device):
//! those are kept here because the store enforces them, on every record
//! of every source, against its own registry of what it holds, so they
//! hold through restarts (`store::limits`).
//!
//! And from the table to the settings the store runs with: the options it
//! is opened with, the ingest writer's group commit, retention and the
//! bounds on names. What the writer must also know of the rest of the
//! config (whose cursors retention protects, the query index) the daemon
//! adds.

use std::num::NonZeroUsize;
use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;

use ferry_core::report::{KeyPath, Report};

use super::limits::Limits;
use super::{Retention, StoreOptions, WhenFull, WriterSettings};

/// The largest `store.max_disk`: 1 PiB.
pub const MAX_DISK: u64 = 1 << 50;
/// The largest `store.cache_size`: 16 GiB.
pub const MAX_CACHE_SIZE: u64 = 16 << 30;

/// `[store]`: how ingest commits to the redb log.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Group commit: records wait at most this long for the commit (one fsync)
    /// that makes them durable; sources are acknowledged after it. Shorter is
    /// lower latency (and a shorter loss window for the embedded broker),
    /// longer is fewer writes to the SD card: each commit writes about 32 KB
    /// however few records it holds, so a steady trickle of readings costs up
    /// to 86,400 s / interval x 32 KB a day (10ms: ~275 GB, 250ms: ~11 GB,
    /// 1s: ~2.8 GB). A subscriber source commits sooner when its broker
    /// would otherwise wait (`broker_inflight`). 1ms to 10s.
    /// Default: `"250ms"`.
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// Commit at once when a batch holds this many records. 1 to 1,000,000.
    /// Default: `4096`.
    pub commit_max_records: NonZeroUsize,
    /// How often consumer cursors are written when no commit carries them.
    /// 1ms to 10m. Default: `"1s"`.
    #[serde(with = "humantime_serde")]
    pub cursor_flush_interval: Duration,
    /// The redb page cache (the log is read once, in order, by each
    /// consumer; the OS page cache holds the file as well). At most 16GiB.
    /// Default: `"1MiB"`.
    pub cache_size: ByteSize,
    /// Submissions queued for ingest before sources wait (back-pressure).
    /// 1 to 1,000,000. Default: `1024`.
    pub queue: NonZeroUsize,
    /// The disk budget of the store file. Eviction starts at 90% of it.
    /// 16MiB to 1PiB (a size too large for 64 bits is an error, not 16EiB).
    /// Default: `"2GiB"`.
    pub max_disk: ByteSize,
    /// Records older than this (by their timestamp) are evicted, delivered
    /// or not. Default: none (kept until the budget needs the room).
    #[serde(with = "humantime_serde")]
    pub max_age: Option<Duration>,
    /// When the budget is reached and every delivered record is already
    /// evicted: `"drop_oldest"` (evict undelivered records too),
    /// `"drop_newest"` (store no new records until there is room) or
    /// `"block"` (stop acknowledging sources). Default: `"drop_oldest"`.
    pub when_full: WhenFull,
    /// The most devices with stored records. A record of a new device
    /// beyond it is stored as a dead letter `too_many_devices` (counted in
    /// `ferry_ingest_records_rejected_total`), whatever its source: names
    /// come from outside (a topic level, a payload field), and each device
    /// costs memory (its name, its series in the query index, its entry in
    /// `/api/v1/devices`). Kept in the store, so it holds through restarts.
    /// 1 to 1,000,000. Default: `10000`.
    pub max_devices: NonZeroUsize,
    /// The most series (device + field) with stored records, over all
    /// devices; a record that would add one more is a dead letter
    /// `too_many_series`. 1 to 10,000,000. Default: `100000`.
    pub max_series: NonZeroUsize,
    /// The most fields one device may have over all its records (the
    /// sources' `max_fields` bounds one message); a record that would add
    /// one more is a dead letter `too_many_device_fields`. 1 to 100,000.
    /// Default: `1000`.
    pub max_fields_per_device: NonZeroUsize,
    /// The memory the query index may hold in open minutes (the points of
    /// each series' current minute not yet written): past it, they are
    /// written at the next commit and dropped from memory. 64KiB to 1GiB.
    /// Default: `"8MiB"`.
    pub index_memory: ByteSize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            commit_interval: Duration::from_millis(250),
            commit_max_records: NonZeroUsize::new(4096).expect("nonzero"),
            cursor_flush_interval: Duration::from_secs(1),
            cache_size: ByteSize::mib(1),
            queue: NonZeroUsize::new(1024).expect("nonzero"),
            max_disk: ByteSize::gib(2),
            max_age: None,
            when_full: WhenFull::DropOldest,
            max_devices: NonZeroUsize::new(10_000).expect("nonzero"),
            max_series: NonZeroUsize::new(100_000).expect("nonzero"),
            max_fields_per_device: NonZeroUsize::new(1_000).expect("nonzero"),
            index_memory: ByteSize::mib(8),
        }
    }
}

impl StoreConfig {
    pub(crate) fn check(&self, at: &KeyPath, report: &mut Report) {
        let ms = Duration::from_millis;
        report.duration_in(
            at.key("commit_interval"),
            self.commit_interval,
            ms(1),
            Duration::from_secs(10),
        );
        report.int_in(
            at.key("commit_max_records"),
            self.commit_max_records.get() as u64,
            1,
            1_000_000,
        );
        report.duration_in(
            at.key("cursor_flush_interval"),
            self.cursor_flush_interval,
            ms(1),
            Duration::from_secs(600),
        );
        report.int_in(at.key("queue"), self.queue.get() as u64, 1, 1_000_000);
        report.size_at_most(
            at.key("cache_size"),
            self.cache_size.as_u64(),
            MAX_CACHE_SIZE,
        );
        report.int_in(
            at.key("max_devices"),
            self.max_devices.get() as u64,
            1,
            1_000_000,
        );
        report.int_in(
            at.key("max_series"),
            self.max_series.get() as u64,
            1,
            10_000_000,
        );
        report.int_in(
            at.key("max_fields_per_device"),
            self.max_fields_per_device.get() as u64,
            1,
            100_000,
        );
        let mem = self.index_memory.as_u64();
        if !(64 << 10..=1 << 30).contains(&mem) {
            report.error(
                at.key("index_memory"),
                format!("must be from 64KiB to 1GiB, got {}", self.index_memory),
            );
        }
        let max_disk_ok = report.size_at_most(at.key("max_disk"), self.max_disk.as_u64(), MAX_DISK);
        if max_disk_ok && self.max_disk.as_u64() < 16 << 20 {
            report.error(
                at.key("max_disk"),
                format!("must be at least 16MiB, got {}", self.max_disk),
            );
        }
        if self
            .max_age
            .is_some_and(|age| age < Duration::from_secs(60))
        {
            report.error(at.key("max_age"), "must be at least 1m");
        }
    }
}

// One set of defaults: the store's types default to what `[store]` does.

impl Default for StoreOptions {
    fn default() -> Self {
        (&StoreConfig::default()).into()
    }
}

impl Default for Retention {
    fn default() -> Self {
        (&StoreConfig::default()).into()
    }
}

impl Default for Limits {
    fn default() -> Self {
        (&StoreConfig::default()).into()
    }
}

/// `[store]`'s defaults: commits every 250 ms at most. Tests that wait on
/// commits set a shorter interval ([`WriterSettings::with_commit_interval`]).
impl Default for WriterSettings {
    fn default() -> Self {
        (&StoreConfig::default()).into()
    }
}

impl WriterSettings {
    /// These settings, committing every `interval` at most.
    pub fn with_commit_interval(self, interval: Duration) -> WriterSettings {
        WriterSettings {
            commit_interval: interval,
            ..self
        }
    }
}

impl From<&StoreConfig> for StoreOptions {
    fn from(c: &StoreConfig) -> Self {
        StoreOptions {
            cache_bytes: usize::try_from(c.cache_size.as_u64()).unwrap_or(usize::MAX),
        }
    }
}

impl From<&StoreConfig> for Retention {
    fn from(c: &StoreConfig) -> Self {
        Retention {
            max_disk: c.max_disk.as_u64(),
            max_age: c.max_age,
            when_full: c.when_full,
        }
    }
}

impl From<&StoreConfig> for Limits {
    fn from(c: &StoreConfig) -> Self {
        Limits {
            max_devices: c.max_devices,
            max_series: c.max_series,
            max_fields_per_device: c.max_fields_per_device,
        }
    }
}

/// The writer's settings, with no consumers to protect and no index.
impl From<&StoreConfig> for WriterSettings {
    fn from(c: &StoreConfig) -> Self {
        WriterSettings {
            commit_interval: c.commit_interval,
            commit_max_records: c.commit_max_records.get(),
            cursor_flush_interval: c.cursor_flush_interval,
            queue: c.queue.get(),
            retention: c.into(),
            consumers: Vec::new(),
            route_consumers: Vec::new(),
            index: None,
            limits: c.into(),
        }
    }
}
