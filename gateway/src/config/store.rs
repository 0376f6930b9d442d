//! `[store]`: the durable log's group commit and cache.

use std::num::NonZeroUsize;
use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;

use super::report::{KeyPath, Report};

/// `[store]`: how ingest commits to the redb log.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Group commit: records wait at most this long for the commit (one fsync)
    /// that makes them durable; sources are acknowledged after it. Shorter is
    /// lower latency, longer is fewer writes to the SD card. 1ms to 10s.
    /// Default: `"10ms"`.
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// Commit at once when a batch holds this many records. 1 to 1,000,000.
    /// Default: `4096`.
    pub commit_max_records: NonZeroUsize,
    /// How often consumer cursors are written when no commit carries them.
    /// 1ms to 10m. Default: `"1s"`.
    #[serde(with = "humantime_serde")]
    pub cursor_flush_interval: Duration,
    /// The redb page cache. Default: `"4MiB"`.
    pub cache_size: ByteSize,
    /// Submissions queued for ingest before sources wait (back-pressure).
    /// 1 to 1,000,000. Default: `1024`.
    pub queue: NonZeroUsize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            commit_interval: Duration::from_millis(10),
            commit_max_records: NonZeroUsize::new(4096).expect("nonzero"),
            cursor_flush_interval: Duration::from_secs(1),
            cache_size: ByteSize::mib(4),
            queue: NonZeroUsize::new(1024).expect("nonzero"),
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
    }
}
