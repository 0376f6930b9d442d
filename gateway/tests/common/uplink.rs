//! The uplink in process, without the daemon: the gateway library's store,
//! ingest writer and one uplink task ([`Gateway`]), with settings for a TLS
//! mosquitto ([`uplink_settings`]).

use std::sync::Arc;
use std::time::Duration;

use ferry_core::record::{Record, Value};
use ferry_core::sink::Item;
use ferry_gateway::metrics::{IngestMetrics, UplinkMetrics};
use ferry_gateway::store::{Store, StoreOptions, Writer, WriterSettings};
use ferry_gateway::uplink::batch::{Encoding, Topic};
use ferry_gateway::uplink::{self, tls, Settings};
use ferry_testkit::{Identity, Pki};
use tokio_util::sync::CancellationToken;

/// The gateway library's store, ingest writer and uplink metrics, in a
/// temporary directory; [`Gateway::start`] runs an uplink on them.
pub struct Gateway {
    _dir: tempfile::TempDir,
    pub store: Store,
    /// `None` once a test has closed ingest (to commit the cursors).
    pub ingest: Option<Writer>,
    pub metrics: UplinkMetrics,
    reading: fn(u64) -> Record,
    chunk: usize,
}

impl Gateway {
    /// [`Gateway::store`] stores `reading(i)`, `chunk` records a submission.
    pub fn new(reading: fn(u64) -> Record, chunk: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&Store::file_in(dir.path()), &StoreOptions::default()).unwrap();
        Gateway {
            _dir: dir,
            ingest: Some(new_writer(&store)),
            store,
            metrics: UplinkMetrics::new(),
            reading,
            chunk,
        }
    }

    /// A new ingest writer on the same store (after [`Gateway::ingest`] was
    /// taken and closed).
    pub fn reopen_ingest(&mut self) {
        self.ingest = Some(new_writer(&self.store));
    }

    /// Stores readings `range` and waits until they are committed.
    pub async fn store(&self, range: std::ops::Range<u64>) {
        let ingest = self.ingest.as_ref().unwrap();
        for chunk in range.collect::<Vec<_>>().chunks(self.chunk) {
            let items = chunk
                .iter()
                .map(|&i| Item::Record((self.reading)(i)))
                .collect();
            ingest.sink.submit_and_wait(items).await.unwrap();
        }
    }

    /// Runs an uplink with `s` until the token is cancelled.
    pub fn start(&self, s: Settings) -> (CancellationToken, tokio::task::JoinHandle<()>) {
        let cancel = CancellationToken::new();
        let ingest = self.ingest.as_ref().unwrap();
        let task = tokio::spawn(uplink::run(
            s,
            self.store.clone(),
            ingest.cursors.clone(),
            self.metrics.clone(),
            cancel.clone(),
        ));
        (cancel, task)
    }

    pub fn metric(&self, get: impl Fn(&UplinkMetrics) -> u64) -> u64 {
        get(&self.metrics)
    }
}

fn new_writer(store: &Store) -> Writer {
    Writer::spawn(
        store.clone(),
        WriterSettings::default().with_commit_interval(Duration::from_millis(10)),
        IngestMetrics::new(),
    )
}

/// Reading `i` in the seed format: device `i % 10`, five fields.
pub fn seed_reading(i: u64) -> Record {
    Record {
        ts: 1_764_000_000_000 + i as i64,
        source: Arc::from("local"),
        device: format!("{}", i % 10).into(),
        fields: vec![
            ("client_id".into(), Value::Int(1)),
            ("device_id".into(), Value::Int((i % 10) as i64)),
            ("voltage".into(), Value::Int(600 + (i % 50) as i64)),
            (
                "temperature".into(),
                Value::Float(20.0 + (i % 7) as f64 * 0.5),
            ),
            ("sequence".into(), Value::Int(i as i64)),
        ],
    }
}

/// Reading `i` with two fields only: device `i % 10`, a voltage and the
/// sequence.
pub fn small_reading(i: u64) -> Record {
    Record {
        ts: 1_764_000_000_000 + i as i64,
        source: Arc::from("local"),
        device: format!("{}", i % 10).into(),
        fields: vec![
            ("voltage".into(), Value::Int(600 + (i % 50) as i64)),
            ("sequence".into(), Value::Int(i as i64)),
        ],
    }
}

/// An uplink named `cloud` to `addr` over TLS (trusting `ca`, presenting
/// `id`), JSON batches of at most 128 KiB on `dt/ferry/{gateway}/telemetry`,
/// quick timeouts and reconnects.
pub fn uplink_settings(
    pki: &Pki,
    addr: std::net::SocketAddr,
    ca: &std::path::Path,
    id: &Identity,
) -> Settings {
    Settings {
        name: "cloud".into(),
        gateway: pki.client_id.clone(),
        client_id: pki.client_id.clone(),
        host: addr.ip().to_string(),
        port: addr.port(),
        tls: Some(tls::client_config(ca, &id.cert, &id.key, &[]).unwrap()),
        topic: Topic::parse("dt/ferry/{gateway}/telemetry", &pki.client_id).unwrap(),
        encoding: Encoding::Json,
        max_batch_bytes: 128 * 1024,
        max_batch_age: Duration::from_millis(50),
        max_inflight: 100,
        publishes_per_second: 100,
        bytes_per_second: 512 * 1024,
        keep_alive: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(5),
        puback_timeout: Duration::from_secs(10),
        reconnect_min: Duration::from_millis(50),
        reconnect_max: Duration::from_millis(500),
        probe_interval: Duration::from_secs(1),
        max_send_age: None,
        drain_timeout: Duration::from_secs(5),
        sources: vec![],
        window_records: 2048,
        max_batch_records: usize::MAX,
        stream: ferry_gateway::store::Stream::Raw,
        control: None,
    }
}
