//! Prometheus metrics: one registry, built in `main` and handed to each
//! component, which registers its own metrics under its own prefix.
//!
//! Every metric Ferry exports is declared in this file, so the mapping from
//! events to metric names is in one place. Names follow Prometheus
//! conventions: `ferry_` prefix, counters end in `_total`, base units.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// A fresh registry with Ferry's prefix.
pub fn registry() -> Registry {
    Registry::with_prefix("ferry")
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: String,
    pub arch: String,
}

/// `ferry_build_info{version, arch} 1`: which build is running (a constant
/// gauge, the Prometheus convention for build information).
pub fn register_build_info(registry: &mut Registry) {
    let info: Family<BuildLabels, Gauge> = Family::default();
    info.get_or_create(&BuildLabels {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        arch: std::env::consts::ARCH.to_owned(),
    })
    .set(1);
    registry.register("build_info", "The running build of Ferry (always 1)", info);
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    pub source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabels {
    pub source: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

/// What kind of stored data (`records`, `dead_letters`, ...).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DataLabel {
    pub data: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UplinkLabel {
    pub uplink: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// What the ingest writer counts.
#[derive(Clone, Debug)]
pub struct IngestMetrics {
    /// Records handed to ingest, by source.
    pub records_received: Family<SourceLabel, Counter>,
    /// Messages rejected (dead-lettered), by source and reason.
    pub records_rejected: Family<RejectLabels, Counter>,
    /// Records committed to the store.
    pub records_stored: Counter,
    /// Dead letters committed to the store.
    pub dead_letters_stored: Counter,
    /// Records a failed commit could not store (their sources were told).
    pub records_failed: Counter,
    /// Write transactions committed.
    pub commits: Counter,
    /// Write transactions that failed.
    pub commit_errors: Counter,
    /// Time to write and fsync one group commit.
    pub commit_duration: Histogram,
    /// The highest committed record sequence number.
    pub head_seq: Gauge<u64, AtomicU64>,
    /// Records removed by retention, by reason (`max_age`, `disk_budget`,
    /// `disk_budget_undelivered`).
    pub records_evicted: Family<ReasonLabel, Counter>,
    /// Route output entries removed by retention, by route and reason (the
    /// same reasons as `records_evicted`).
    pub route_records_evicted: Family<RouteReasonLabels, Counter>,
    /// Records not stored by policy, by reason (`disk_full`).
    pub records_dropped: Family<ReasonLabel, Counter>,
    /// Dead letters removed to keep them within their share of the budget.
    pub dead_letters_evicted: Counter,
    /// Records in the store.
    pub store_records: Gauge<u64, AtomicU64>,
    /// The store file's size.
    pub store_file_bytes: Gauge<u64, AtomicU64>,
    /// The file size the stored data needs, by the writer's account.
    pub store_estimated_bytes: Gauge<u64, AtomicU64>,
    /// 1 while ingest refuses submissions (`when_full = "block"`).
    pub ingest_blocked: Gauge,
    /// Corrupt store files moved aside at start (a fresh store was begun).
    pub store_files_set_aside: Counter,
    /// Entries salvaged from a store file set aside, by `data` (`records`,
    /// `dead_letters`, `route_records`, `names`, `cursors`, `route_states`).
    pub store_salvaged: Family<DataLabel, Counter>,
    /// Entries of a store file set aside known to be lost (sequence numbers
    /// missing between and after the salvaged ones; names), by `data`.
    pub store_salvage_lost: Family<DataLabel, Counter>,
    /// Parts of a store file set aside that could not be read (the whole
    /// file, a table, a range of keys past damaged pages).
    pub store_salvage_unreadable: Counter,
    /// Full integrity checks of the store file at start (it was not closed
    /// cleanly by Ferry, or changed since).
    pub store_integrity_checks: Counter,
    /// 1 while commits succeed; 0 from a failed commit (a read-only or
    /// full file system, a failing card) until one succeeds again.
    pub store_writable: Gauge,
    /// Devices with stored records (bounded by `store.max_devices`).
    pub devices: Gauge,
    /// Series (device + field) with stored records (bounded by `store.max_series`).
    pub series: Gauge,
}

impl Default for IngestMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl IngestMetrics {
    /// Counts what opening the store decided.
    pub fn count_store_open(&self, opened: &crate::store::Opened) {
        use crate::store::{salvage::Check, Opened};
        match opened {
            Opened::New | Opened::Sound(Check::Trusted) => {}
            Opened::Sound(Check::Full) => {
                self.store_integrity_checks.inc();
            }
            Opened::Salvaged { report, .. } => {
                // The full check ran, or the cheap checks failed first.
                self.store_integrity_checks.inc();
                self.store_files_set_aside.inc();
                let data = |d: &str| DataLabel { data: d.to_owned() };
                for (d, n) in [
                    ("records", report.records),
                    ("dead_letters", report.dead_letters),
                    ("route_records", report.route_records),
                    ("names", report.names),
                    ("cursors", report.cursors),
                    ("route_states", report.route_states),
                ] {
                    self.store_salvaged.get_or_create(&data(d)).inc_by(n);
                }
                for (d, n) in [
                    ("records", report.records_lost),
                    ("dead_letters", report.dead_letters_lost),
                    ("route_records", report.route_records_lost),
                    ("names", report.names_lost),
                ] {
                    self.store_salvage_lost.get_or_create(&data(d)).inc_by(n);
                }
                self.store_salvage_unreadable
                    .inc_by(report.unreadable.len() as u64);
            }
        }
    }

    pub fn new() -> Self {
        IngestMetrics {
            records_received: Default::default(),
            records_rejected: Default::default(),
            records_stored: Default::default(),
            dead_letters_stored: Default::default(),
            records_failed: Default::default(),
            commits: Default::default(),
            commit_errors: Default::default(),
            commit_duration: Histogram::new(exponential_buckets(0.000_25, 2.0, 14)),
            head_seq: Default::default(),
            records_evicted: Default::default(),
            route_records_evicted: Default::default(),
            records_dropped: Default::default(),
            dead_letters_evicted: Default::default(),
            store_records: Default::default(),
            store_file_bytes: Default::default(),
            store_estimated_bytes: Default::default(),
            ingest_blocked: Default::default(),
            store_files_set_aside: Default::default(),
            store_salvaged: Default::default(),
            store_salvage_lost: Default::default(),
            store_salvage_unreadable: Default::default(),
            store_integrity_checks: Default::default(),
            store_writable: Default::default(),
            devices: Default::default(),
            series: Default::default(),
        }
    }

    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("ingest");
        r.register(
            "records_received",
            "Records handed to ingest by a source",
            self.records_received.clone(),
        );
        r.register(
            "records_rejected",
            "Messages rejected and dead-lettered, by reason",
            self.records_rejected.clone(),
        );
        r.register(
            "records_stored",
            "Records committed to the store",
            self.records_stored.clone(),
        );
        r.register(
            "dead_letters_stored",
            "Dead letters committed to the store",
            self.dead_letters_stored.clone(),
        );
        r.register(
            "records_failed",
            "Records not stored because their commit failed",
            self.records_failed.clone(),
        );
        r.register("commits", "Group commits", self.commits.clone());
        r.register(
            "commit_errors",
            "Group commits that failed",
            self.commit_errors.clone(),
        );
        r.register_with_unit(
            "commit_duration",
            "Time to write and fsync one group commit",
            prometheus_client::registry::Unit::Seconds,
            self.commit_duration.clone(),
        );
        r.register(
            "head_seq",
            "Highest committed record sequence number",
            self.head_seq.clone(),
        );
        r.register(
            "records_evicted",
            "Records removed by retention, by reason",
            self.records_evicted.clone(),
        );
        r.register(
            "route_records_evicted",
            "Route output entries removed by retention, by route and reason",
            self.route_records_evicted.clone(),
        );
        r.register(
            "records_dropped",
            "Records not stored because the store was full, by reason",
            self.records_dropped.clone(),
        );
        r.register(
            "dead_letters_evicted",
            "Dead letters removed to keep within their share of the budget",
            self.dead_letters_evicted.clone(),
        );
        r.register(
            "blocked",
            "1 while ingest refuses submissions because the store is full",
            self.ingest_blocked.clone(),
        );
        let s = registry.sub_registry_with_prefix("store");
        s.register(
            "devices",
            "Devices with stored records (at most store.max_devices; more are dead letters too_many_devices)",
            self.devices.clone(),
        );
        s.register(
            "series",
            "Series (device and field) with stored records (at most store.max_series)",
            self.series.clone(),
        );
        s.register(
            "records",
            "Records in the store",
            self.store_records.clone(),
        );
        s.register_with_unit(
            "file",
            "Size of the store file",
            prometheus_client::registry::Unit::Bytes,
            self.store_file_bytes.clone(),
        );
        s.register(
            "files_set_aside",
            "Corrupt store files moved aside at start, a fresh store begun",
            self.store_files_set_aside.clone(),
        );
        s.register(
            "salvaged",
            "Entries salvaged from a store file set aside, by data",
            self.store_salvaged.clone(),
        );
        s.register(
            "salvage_lost",
            "Entries of a store file set aside known to be lost, by data",
            self.store_salvage_lost.clone(),
        );
        s.register(
            "salvage_unreadable",
            "Parts of a store file set aside that could not be read",
            self.store_salvage_unreadable.clone(),
        );
        s.register(
            "integrity_checks",
            "Full integrity checks of the store file at start",
            self.store_integrity_checks.clone(),
        );
        s.register(
            "writable",
            "1 while store commits succeed, 0 from a failed commit until one succeeds",
            self.store_writable.clone(),
        );
        s.register_with_unit(
            "estimated",
            "File size the stored data needs, by the writer's account",
            prometheus_client::registry::Unit::Bytes,
            self.store_estimated_bytes.clone(),
        );
    }
}

/// What an uplink counts; one set shared by all uplinks, labelled by uplink.
#[derive(Clone, Debug)]
pub struct UplinkMetrics {
    pub connected: Family<UplinkLabel, Gauge>,
    pub connects: Family<UplinkLabel, Counter>,
    pub connect_errors: Family<UplinkLabel, Counter>,
    pub publishes: Family<UplinkLabel, Counter>,
    pub publish_bytes: Family<UplinkLabel, Counter>,
    pub records_sent: Family<UplinkLabel, Counter>,
    pub records_acked: Family<UplinkLabel, Counter>,
    pub records_skipped: Family<UplinkLabel, Counter>,
    pub puback_latency: HistogramFamily<UplinkLabel>,
    pub backlog_records: Family<UplinkLabel, Gauge<u64, AtomicU64>>,
    pub oldest_unsent_age: Family<UplinkLabel, Gauge<f64, AtomicU64>>,
    pub acked_seq: Family<UplinkLabel, Gauge<u64, AtomicU64>>,
}

impl Default for UplinkMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl UplinkMetrics {
    pub fn new() -> Self {
        UplinkMetrics {
            connected: Default::default(),
            connects: Default::default(),
            connect_errors: Default::default(),
            publishes: Default::default(),
            publish_bytes: Default::default(),
            records_sent: Default::default(),
            records_acked: Default::default(),
            records_skipped: Default::default(),
            puback_latency: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 14))
            }),
            backlog_records: Default::default(),
            oldest_unsent_age: Default::default(),
            acked_seq: Default::default(),
        }
    }

    pub fn register(&self, registry: &mut Registry) {
        use prometheus_client::registry::Unit;
        let r = registry.sub_registry_with_prefix("uplink");
        r.register(
            "connected",
            "1 while the uplink's MQTT session is up",
            self.connected.clone(),
        );
        r.register(
            "connects",
            "Successful connections (CONNACK accepted)",
            self.connects.clone(),
        );
        r.register(
            "connect_errors",
            "Connection attempts or sessions that failed",
            self.connect_errors.clone(),
        );
        r.register("publishes", "Batches published", self.publishes.clone());
        r.register_with_unit(
            "publish",
            "Payload bytes published",
            Unit::Bytes,
            self.publish_bytes.clone(),
        );
        r.register(
            "records_sent",
            "Records published (resends included)",
            self.records_sent.clone(),
        );
        r.register(
            "records_acked",
            "Records whose batch the broker acknowledged",
            self.records_acked.clone(),
        );
        r.register(
            "records_skipped",
            "Records skipped because they cannot be sent (undecodable, larger than a batch)",
            self.records_skipped.clone(),
        );
        r.register_with_unit(
            "puback_latency",
            "Time from publishing a batch to its PUBACK",
            Unit::Seconds,
            self.puback_latency.clone(),
        );
        r.register(
            "backlog_records",
            "Stored records this uplink has not had acknowledged yet",
            self.backlog_records.clone(),
        );
        r.register_with_unit(
            "oldest_unsent_age",
            "Age of the oldest record not yet acknowledged",
            Unit::Seconds,
            self.oldest_unsent_age.clone(),
        );
        r.register(
            "acked_seq",
            "Highest record sequence number acknowledged by the cloud",
            self.acked_seq.clone(),
        );
    }

    pub fn label(uplink: &str) -> UplinkLabel {
        UplinkLabel {
            uplink: uplink.to_owned(),
        }
    }
}

/// What the query index reports.
#[derive(Clone, Debug, Default)]
pub struct QueryMetrics {
    pub index_lag_records: Gauge,
    pub index_unpersisted_records: Gauge,
    /// The memory the index's open minutes take (estimated).
    pub index_memory_bytes: Gauge,
    /// Series with an open minute in memory.
    pub index_series_in_memory: Gauge,
}

impl QueryMetrics {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("query");
        r.register(
            "index_lag_records",
            "Stored records the query index has not taken in yet (queries do not see them); nonzero while it catches up with the log",
            self.index_lag_records.clone(),
        );
        r.register(
            "index_unpersisted_records",
            "Records the query index holds in memory only: what a restart replays from the log",
            self.index_unpersisted_records.clone(),
        );
        r.register(
            "index_memory_bytes",
            "Memory the query index's open minutes take, estimated (bounded by store.index_memory)",
            self.index_memory_bytes.clone(),
        );
        r.register(
            "index_series_in_memory",
            "Series with points in the query index's memory, not yet written",
            self.index_series_in_memory.clone(),
        );
    }
}

/// What reloading the config (SIGHUP) counts.
#[derive(Clone, Debug, Default)]
pub struct ConfigMetrics {
    /// Reloads, by result: `applied` (what can change in place did; what
    /// needs a restart is logged), `refused` (the file or an uplink in it
    /// has a problem: nothing changed), `no_file` (running on the embedded
    /// default, there is nothing to read again).
    pub reloads: Family<ResultLabel, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

impl ConfigMetrics {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn register(&self, registry: &mut Registry) {
        registry.sub_registry_with_prefix("config").register(
            "reloads",
            "Config reloads (SIGHUP) by result: applied, refused (nothing changed), no_file",
            self.reloads.clone(),
        );
    }

    pub fn reloaded(&self, result: &'static str) {
        self.reloads.get_or_create(&ResultLabel { result }).inc();
    }
}

/// What the query API counts.
#[derive(Clone, Debug, Default)]
pub struct ApiMetrics {
    /// API requests answered with an error, by reason: the error's code
    /// (`bad_parameter`, `not_found`, `too_many_points`, `too_many_series`,
    /// `query_too_long`, `unauthorized`, `busy`, `internal`), or `panic`
    /// for a request whose handler panicked (answered 500 `internal`).
    pub requests_failed: Family<ReasonLabel, Counter>,
    /// API requests reading the store now, on the blocking pool (at most
    /// `[api] max_concurrent_queries`).
    pub queries_running: Gauge,
}

impl ApiMetrics {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("api");
        r.register(
            "requests_failed",
            "API requests answered with an error, by reason (the error code, or panic)",
            self.requests_failed.clone(),
        );
        r.register(
            "queries_running",
            "API requests reading the store now (at most [api] max_concurrent_queries)",
            self.queries_running.clone(),
        );
    }

    pub fn failed(&self, reason: &str) {
        self.requests_failed
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeviceLabels {
    pub source: String,
    pub device: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeviceErrorLabels {
    pub source: String,
    pub device: String,
    /// `timeout`, `bad_response`, `link` or `bad_value`.
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeviceExceptionLabels {
    pub source: String,
    pub device: String,
    /// The exception code, `0x02`.
    pub code: String,
}

/// What the Modbus sources count; one set shared by all, labelled by source
/// and device (device names are unique within a source).
#[derive(Clone, Debug)]
pub struct ModbusMetrics {
    /// Requests sent, whatever came back.
    pub requests: Family<DeviceLabels, Counter>,
    /// Requests without a usable answer, and values that could not be stored,
    /// by kind.
    pub errors: Family<DeviceErrorLabels, Counter>,
    /// Exception answers, by code.
    pub exceptions: Family<DeviceExceptionLabels, Counter>,
    /// Time from request to answer (data or exception).
    pub round_trip: HistogramFamily<DeviceLabels>,
    /// Polls done (each with at least one field read is one record).
    pub polls: Family<DeviceLabels, Counter>,
    /// Polls skipped because the link was busy past their time.
    pub polls_missed: Family<DeviceLabels, Counter>,
    /// 1 while the device answers, 0 while it is backed off.
    pub device_up: Family<DeviceLabels, Gauge>,
}

impl Default for ModbusMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ModbusMetrics {
    pub fn new() -> Self {
        ModbusMetrics {
            requests: Default::default(),
            errors: Default::default(),
            exceptions: Default::default(),
            round_trip: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.000_5, 2.0, 14))
            }),
            polls: Default::default(),
            polls_missed: Default::default(),
            device_up: Default::default(),
        }
    }

    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("modbus");
        r.register(
            "requests",
            "Requests sent to devices",
            self.requests.clone(),
        );
        r.register(
            "errors",
            "Requests without a usable answer, and values that could not be stored, by kind",
            self.errors.clone(),
        );
        r.register(
            "exceptions",
            "Exception answers from devices, by code",
            self.exceptions.clone(),
        );
        r.register_with_unit(
            "round_trip",
            "Time from request to answer",
            prometheus_client::registry::Unit::Seconds,
            self.round_trip.clone(),
        );
        r.register("polls", "Polls of a device", self.polls.clone());
        r.register(
            "polls_missed",
            "Polls skipped because the link was busy past their time",
            self.polls_missed.clone(),
        );
        r.register(
            "device_up",
            "1 while the device answers, 0 while it is backed off",
            self.device_up.clone(),
        );
    }
}

/// The metrics of one device, looked up once.
struct ModbusDeviceMetrics {
    labels: DeviceLabels,
    exceptions: Family<DeviceExceptionLabels, Counter>,
    requests: Counter,
    round_trip: Histogram,
    polls: Counter,
    polls_missed: Counter,
    up: Gauge,
    /// By `FailureKind`, then `bad_value`.
    errors: [Counter; 4],
}

impl ferry_sources::modbus::ModbusObserver for ModbusMetrics {
    fn device(
        &self,
        source: &str,
        device: &str,
    ) -> std::sync::Arc<dyn ferry_sources::modbus::DeviceObserver> {
        let labels = DeviceLabels {
            source: source.to_owned(),
            device: device.to_owned(),
        };
        let error = |kind: &str| {
            self.errors
                .get_or_create(&DeviceErrorLabels {
                    source: source.to_owned(),
                    device: device.to_owned(),
                    kind: kind.to_owned(),
                })
                .clone()
        };
        let up = self.device_up.get_or_create(&labels).clone();
        up.set(1);
        std::sync::Arc::new(ModbusDeviceMetrics {
            exceptions: self.exceptions.clone(),
            requests: self.requests.get_or_create(&labels).clone(),
            round_trip: self.round_trip.get_or_create(&labels).clone(),
            polls: self.polls.get_or_create(&labels).clone(),
            polls_missed: self.polls_missed.get_or_create(&labels).clone(),
            up,
            errors: [
                error("timeout"),
                error("bad_response"),
                error("link"),
                error("bad_value"),
            ],
            labels,
        })
    }
}

impl ferry_sources::modbus::DeviceObserver for ModbusDeviceMetrics {
    fn event(&self, event: ferry_sources::modbus::PollEvent) {
        use ferry_sources::modbus::{FailureKind, PollEvent};
        match event {
            PollEvent::Answered { round_trip } => {
                self.requests.inc();
                self.round_trip.observe(round_trip.as_secs_f64());
            }
            PollEvent::Exception { code, round_trip } => {
                self.requests.inc();
                self.round_trip.observe(round_trip.as_secs_f64());
                self.exceptions
                    .get_or_create(&DeviceExceptionLabels {
                        source: self.labels.source.clone(),
                        device: self.labels.device.clone(),
                        code: format!("{code:#04x}"),
                    })
                    .inc();
            }
            PollEvent::Failed(kind) => {
                self.requests.inc();
                let i = match kind {
                    FailureKind::Timeout => 0,
                    FailureKind::BadResponse => 1,
                    FailureKind::Link => 2,
                };
                self.errors[i].inc();
            }
            PollEvent::BadValue => {
                self.errors[3].inc();
            }
            PollEvent::Polled { .. } => {
                self.polls.inc();
            }
            PollEvent::Missed(n) => {
                self.polls_missed.inc_by(u64::from(n));
            }
            PollEvent::Up(up) => {
                self.up.set(i64::from(up));
            }
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabel {
    /// `api` or `metrics`.
    pub listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerReasonLabels {
    /// `api` or `metrics`.
    pub listener: String,
    /// `max_connections`, `header_timeout`, `idle_timeout`,
    /// `request_timeout`, `out_of_descriptors` or `accept_error`.
    pub reason: String,
}

/// What the HTTP listeners (the query API, the metrics endpoint) count about
/// their connections (`ferry_http_*`). The embedded broker's device front
/// counts its own in `ferry_source_limits_hit_total` (limits `connections`,
/// `descriptors`, `accept_error`).
#[derive(Clone, Debug, Default)]
pub struct ListenerMetrics {
    /// Connections open now, by listener.
    pub connections: Family<ListenerLabel, Gauge>,
    /// Connections refused or closed by a limit, and failed accepts, by
    /// listener and reason.
    pub refused: Family<ListenerReasonLabels, Counter>,
}

impl ListenerMetrics {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("http");
        r.register(
            "connections",
            "Connections open now at an HTTP listener (api, metrics)",
            self.connections.clone(),
        );
        r.register(
            "connections_refused",
            "HTTP connections refused or closed by a limit, and failed accepts, by listener and reason (max_connections: a fast 503; header_timeout, idle_timeout, request_timeout; out_of_descriptors, accept_error: accept failed, retried with a back-off)",
            self.refused.clone(),
        );
    }

    /// The open-connections gauge of `listener`.
    pub fn open(&self, listener: &str) -> Gauge {
        self.connections
            .get_or_create(&ListenerLabel {
                listener: listener.to_owned(),
            })
            .clone()
    }

    /// The counter of `listener`'s refusals for `reason`.
    pub fn refused(&self, listener: &str, reason: &str) -> Counter {
        self.refused
            .get_or_create(&ListenerReasonLabels {
                listener: listener.to_owned(),
                reason: reason.to_owned(),
            })
            .clone()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    pub source: String,
    /// `connections`, `topic_length`, `payload`, `fields`, `backlog`,
    /// `descriptors` or `accept_error`.
    pub limit: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LoginLabels {
    pub source: String,
    /// `bad_password`, `unknown_user` or `no_credentials`.
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeniedLabels {
    pub source: String,
    /// `publish`, `subscribe` or `will`.
    pub action: String,
}

/// What the embedded broker sources count about their clients
/// (`ferry_source_*`); labelled by source, never by client (client ids are
/// unbounded).
#[derive(Clone, Debug, Default)]
pub struct BrokerMetrics {
    /// Clients connected now.
    pub connections: Family<SourceLabel, Gauge>,
    /// Times a limit was hit, by limit.
    pub limits_hit: Family<LimitLabels, Counter>,
    /// Logins refused, by reason.
    pub logins_refused: Family<LoginLabels, Counter>,
    /// What the ACL refused, by action.
    pub acl_denied: Family<DeniedLabels, Counter>,
    /// TLS handshakes that failed.
    pub tls_failures: Family<SourceLabel, Counter>,
}

impl BrokerMetrics {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("source");
        r.register(
            "connections",
            "Clients connected to an embedded broker",
            self.connections.clone(),
        );
        r.register(
            "limits_hit",
            "Times a client hit a limit (connections, topic_length, payload, fields; backlog: a device through the front waited for ingest; descriptors, accept_error: the front's accept failed and waited)",
            self.limits_hit.clone(),
        );
        r.register(
            "logins_refused",
            "Logins refused by an embedded broker, by reason",
            self.logins_refused.clone(),
        );
        r.register(
            "acl_denied",
            "Publishes, subscriptions and will topics the ACL refused",
            self.acl_denied.clone(),
        );
        r.register(
            "tls_failures",
            "TLS handshakes with devices that failed",
            self.tls_failures.clone(),
        );
    }
}

#[cfg(feature = "embedded-broker")]
impl ferry_sources::mqtt::BrokerObserver for BrokerMetrics {
    fn event(&self, source: &str, event: ferry_sources::mqtt::BrokerEvent) {
        use ferry_sources::mqtt::BrokerEvent;
        let source = source.to_owned();
        match event {
            BrokerEvent::Connected => {
                self.connections
                    .get_or_create(&SourceLabel { source })
                    .inc();
            }
            BrokerEvent::Disconnected => {
                self.connections
                    .get_or_create(&SourceLabel { source })
                    .dec();
            }
            BrokerEvent::LoginRefused(why) => {
                let reason = why.as_str().to_owned();
                self.logins_refused
                    .get_or_create(&LoginLabels { source, reason })
                    .inc();
            }
            BrokerEvent::TlsFailed => {
                self.tls_failures
                    .get_or_create(&SourceLabel { source })
                    .inc();
            }
            BrokerEvent::Denied(what) => {
                let action = what.as_str().to_owned();
                self.acl_denied
                    .get_or_create(&DeniedLabels { source, action })
                    .inc();
            }
            BrokerEvent::Limit(limit) => {
                let limit = limit.as_str().to_owned();
                self.limits_hit
                    .get_or_create(&LimitLabels { source, limit })
                    .inc();
            }
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabels {
    pub step: String,
    pub reason: String,
}

impl StepLabels {
    pub fn new(step: &str, reason: &str) -> Self {
        StepLabels {
            step: step.to_owned(),
            reason: reason.to_owned(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteReasonLabels {
    pub route: String,
    pub reason: String,
}

/// What the pipeline and the routes count (`ferry_pipeline_*`, `ferry_route_*`).
#[derive(Clone, Debug, Default)]
pub struct PipelineMetrics {
    /// Records that entered the pipeline.
    pub records_in: Counter,
    /// Records the pipeline dropped (any step).
    pub records_out_dropped: Counter,
    /// Records a step dropped, by step and reason (`filtered`, or why the
    /// filter could not be evaluated: `missing_field`, `wrong_type`, ...).
    pub records_dropped: Family<StepLabels, Counter>,
    /// Values a step could not compute, by step and reason.
    pub errors: Family<StepLabels, Counter>,
    /// Stored records a route has read, by route.
    pub route_records_in: Family<RouteLabel, Counter>,
    /// Records a route has emitted to its output stream, by route.
    pub route_records_out: Family<RouteLabel, Counter>,
    /// Values a route did not use, by route and reason (`too_late`,
    /// `not_finite`, `undecodable`).
    pub route_dropped: Family<RouteReasonLabels, Counter>,
    /// Route commits (output, state and cursor in one transaction).
    pub route_commits: Family<RouteLabel, Counter>,
    /// The last stored sequence number each route has processed.
    pub route_seq: Family<RouteLabel, Gauge<u64, AtomicU64>>,
}

impl PipelineMetrics {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("pipeline");
        r.register(
            "records_in",
            "Records that entered the pipeline",
            self.records_in.clone(),
        );
        r.register(
            "records_filtered",
            "Records the pipeline dropped, all steps",
            self.records_out_dropped.clone(),
        );
        r.register(
            "records_dropped",
            "Records a step dropped, by step and reason",
            self.records_dropped.clone(),
        );
        r.register(
            "errors",
            "Values a step could not compute, by step and reason",
            self.errors.clone(),
        );
        let r = registry.sub_registry_with_prefix("route");
        r.register(
            "records_in",
            "Stored records a route has read",
            self.route_records_in.clone(),
        );
        r.register(
            "records_out",
            "Records a route has emitted",
            self.route_records_out.clone(),
        );
        r.register(
            "values_dropped",
            "Values a route did not use, by reason",
            self.route_dropped.clone(),
        );
        r.register(
            "commits",
            "Route commits (output, state and cursor together)",
            self.route_commits.clone(),
        );
        r.register(
            "seq",
            "Last stored sequence number a route has processed",
            self.route_seq.clone(),
        );
    }
}
