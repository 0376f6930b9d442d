//! What the query index reports (`ferry_query_*`).

use prometheus_client::metrics::gauge::Gauge;

metric_set! {
    /// What the query index reports.
    pub struct QueryMetrics {
        "query" {
            index_lag_records: Gauge
                => "index_lag_records",
                "Stored records the query index has not taken in yet (queries do not see them); nonzero while it catches up with the log";
            index_unpersisted_records: Gauge
                => "index_unpersisted_records",
                "Records the query index holds in memory only: what a restart replays from the log";
            /// The memory the index's open minutes take (estimated).
            index_memory_bytes: Gauge
                => "index_memory_bytes",
                "Memory the query index's open minutes take, estimated (bounded by store.index_memory)";
            /// Series with an open minute in memory.
            index_series_in_memory: Gauge
                => "index_series_in_memory",
                "Series with points in the query index's memory, not yet written";
        }
    }
}
