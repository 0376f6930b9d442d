//! Every metric family the daemon exposes on `/metrics`, made and
//! registered in one place (the families themselves: `metrics`).

use std::sync::Arc;

use prometheus_client::registry::Registry;

use crate::store::{salvage::Check, Opened};

use crate::metrics::{
    self, ApiMetrics, BrokerMetrics, ConfigMetrics, DataLabel, FleetMetrics, IngestMetrics,
    ListenerMetrics, ModbusMetrics, PipelineMetrics, QueryMetrics, UplinkMetrics,
};

/// One handle per component; each is cheap to clone and shares its
/// counters. [`Families::new`] registers them all in the registry it returns.
pub struct Families {
    pub ingest: IngestMetrics,
    pub uplink: UplinkMetrics,
    pub modbus: Arc<ModbusMetrics>,
    pub broker: Arc<BrokerMetrics>,
    pub pipeline: PipelineMetrics,
    pub api: ApiMetrics,
    pub listener: ListenerMetrics,
    pub config: ConfigMetrics,
    pub fleet: FleetMetrics,
}

impl Families {
    /// Every family, registered; the query index's (`query`) are made before
    /// the index opens, which is before the rest.
    pub fn new(query: QueryMetrics) -> (Registry, Families) {
        let mut registry = metrics::registry();
        metrics::register_build_info(&mut registry);
        let ingest = IngestMetrics::new();
        ingest.register(&mut registry);
        let uplink = UplinkMetrics::new();
        uplink.register(&mut registry);
        let modbus = Arc::new(ModbusMetrics::new());
        modbus.register(&mut registry);
        let broker = Arc::new(BrokerMetrics::new());
        broker.register(&mut registry);
        let pipeline = PipelineMetrics::new();
        pipeline.register(&mut registry);
        query.register(&mut registry);
        let api = ApiMetrics::new();
        api.register(&mut registry);
        let listener = ListenerMetrics::new();
        listener.register(&mut registry);
        let config = ConfigMetrics::new();
        config.register(&mut registry);
        let fleet = FleetMetrics::new();
        fleet.register(&mut registry);
        let families = Families {
            ingest,
            uplink,
            modbus,
            broker,
            pipeline,
            api,
            listener,
            config,
            fleet,
        };
        (registry, families)
    }
}

/// Counts what opening the store decided.
pub fn count_store_open(m: &IngestMetrics, opened: &Opened) {
    match opened {
        Opened::New | Opened::Sound(Check::Trusted) => {}
        Opened::Sound(Check::Full) => {
            m.store_integrity_checks.inc();
        }
        Opened::Salvaged { report, .. } => {
            // The full check ran, or the cheap checks failed first.
            m.store_integrity_checks.inc();
            m.store_files_set_aside.inc();
            let data = |d: &str| DataLabel { data: d.to_owned() };
            for (d, n) in [
                ("records", report.records),
                ("dead_letters", report.dead_letters),
                ("route_records", report.route_records),
                ("names", report.names),
                ("cursors", report.cursors),
                ("route_states", report.route_states),
            ] {
                m.store_salvaged.get_or_create(&data(d)).inc_by(n);
            }
            for (d, n) in [
                ("records", report.records_lost),
                ("dead_letters", report.dead_letters_lost),
                ("route_records", report.route_records_lost),
                ("names", report.names_lost),
            ] {
                m.store_salvage_lost.get_or_create(&data(d)).inc_by(n);
            }
            m.store_salvage_unreadable
                .inc_by(report.unreadable.len() as u64);
        }
    }
}
