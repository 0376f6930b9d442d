//! What the ingest writer counts (`ferry_ingest_*`) and what it knows of the
//! store (`ferry_store_*`), including what opening the store decided.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use std::sync::atomic::AtomicU64;

use super::{ReasonLabel, RouteReasonLabels, SourceLabel};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabels {
    pub source: String,
    pub reason: String,
}

/// What kind of stored data (`records`, `dead_letters`, ...).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DataLabel {
    pub data: String,
}

metric_set! {
    /// What the ingest writer counts.
    pub struct IngestMetrics {
        "ingest" {
            /// Records handed to ingest, by source.
            records_received: Family<SourceLabel, Counter>
                => "records_received", "Records handed to ingest by a source";
            /// Messages rejected (dead-lettered), by source and reason.
            records_rejected: Family<RejectLabels, Counter>
                => "records_rejected", "Messages rejected and dead-lettered, by reason";
            /// Records committed to the store.
            records_stored: Counter
                => "records_stored", "Records committed to the store";
            /// Dead letters committed to the store.
            dead_letters_stored: Counter
                => "dead_letters_stored", "Dead letters committed to the store";
            /// Records a failed commit could not store (their sources were told).
            records_failed: Counter
                => "records_failed", "Records not stored because their commit failed";
            /// Write transactions committed.
            commits: Counter
                => "commits", "Group commits";
            /// Write transactions that failed.
            commit_errors: Counter
                => "commit_errors", "Group commits that failed";
            /// Time to write and fsync one group commit.
            commit_duration: Histogram = Histogram::new(exponential_buckets(0.000_25, 2.0, 14))
                => "commit_duration" in Seconds, "Time to write and fsync one group commit";
            /// The highest committed record sequence number.
            head_seq: Gauge<u64, AtomicU64>
                => "head_seq", "Highest committed record sequence number";
            /// Records removed by retention, by reason (`max_age`, `disk_budget`,
            /// `disk_budget_undelivered`).
            records_evicted: Family<ReasonLabel, Counter>
                => "records_evicted", "Records removed by retention, by reason";
            /// Route output entries removed by retention, by route and reason (the
            /// same reasons as `records_evicted`).
            route_records_evicted: Family<RouteReasonLabels, Counter>
                => "route_records_evicted",
                "Route output entries removed by retention, by route and reason";
            /// Records not stored by policy, by reason (`disk_full`).
            records_dropped: Family<ReasonLabel, Counter>
                => "records_dropped", "Records not stored because the store was full, by reason";
            /// Dead letters removed to keep them within their share of the budget.
            dead_letters_evicted: Counter
                => "dead_letters_evicted",
                "Dead letters removed to keep within their share of the budget";
            /// 1 while ingest refuses submissions (`when_full = "block"`).
            ingest_blocked: Gauge
                => "blocked", "1 while ingest refuses submissions because the store is full";
        }
        "store" {
            /// Devices with stored records (bounded by `store.max_devices`).
            devices: Gauge
                => "devices",
                "Devices with stored records (at most store.max_devices; more are dead letters too_many_devices)";
            /// Series (device + field) with stored records (bounded by `store.max_series`).
            series: Gauge
                => "series",
                "Series (device and field) with stored records (at most store.max_series)";
            /// Series the store's name limits forgot once retention had evicted
            /// every record of them (see `store::limits`).
            series_forgotten: Counter
                => "series_forgotten",
                "Series forgotten by the name limits once retention had evicted all their records";
            /// Devices forgotten with their last series.
            devices_forgotten: Counter
                => "devices_forgotten",
                "Devices forgotten by the name limits once retention had evicted all their records";
            /// Records in the store.
            store_records: Gauge<u64, AtomicU64>
                => "records", "Records in the store";
            /// The store file's size.
            store_file_bytes: Gauge<u64, AtomicU64>
                => "file" in Bytes, "Size of the store file";
            /// Corrupt store files moved aside at start (a fresh store was begun).
            store_files_set_aside: Counter
                => "files_set_aside", "Corrupt store files moved aside at start, a fresh store begun";
            /// Entries salvaged from a store file set aside, by `data` (`records`,
            /// `dead_letters`, `route_records`, `names`, `cursors`, `route_states`).
            store_salvaged: Family<DataLabel, Counter>
                => "salvaged", "Entries salvaged from a store file set aside, by data";
            /// Entries of a store file set aside known to be lost (sequence numbers
            /// missing between and after the salvaged ones; names), by `data`.
            store_salvage_lost: Family<DataLabel, Counter>
                => "salvage_lost", "Entries of a store file set aside known to be lost, by data";
            /// Parts of a store file set aside that could not be read (the whole
            /// file, a table, a range of keys past damaged pages).
            store_salvage_unreadable: Counter
                => "salvage_unreadable", "Parts of a store file set aside that could not be read";
            /// Full integrity checks of the store file at start (it was not closed
            /// cleanly by Ferry, or changed since).
            store_integrity_checks: Counter
                => "integrity_checks", "Full integrity checks of the store file at start";
            /// 1 while commits succeed; 0 from a failed commit (a read-only or
            /// full file system, a failing card) until one succeeds again.
            store_writable: Gauge
                => "writable",
                "1 while store commits succeed, 0 from a failed commit until one succeeds";
            /// The file size the stored data needs, by the writer's account.
            store_estimated_bytes: Gauge<u64, AtomicU64>
                => "estimated" in Bytes, "File size the stored data needs, by the writer's account";
        }
    }
}
