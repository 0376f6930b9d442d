//! From the `[store]` table to the settings the store runs with: the
//! options it is opened with, the ingest writer's group commit, retention
//! and the bounds on names. What the writer must also know of the rest of
//! the config (whose cursors retention protects, the query index) the
//! daemon adds.

use crate::config::StoreConfig;

use super::limits::Limits;
use super::{Retention, StoreOptions, WriterSettings};

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
