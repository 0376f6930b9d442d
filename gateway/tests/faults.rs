//! Fault injection on the uplink's link and on the daemon while it is
//! offline: a link throttled to 10 KB/s, and the CPU the daemon spends (and
//! the reconnects it attempts) while the cloud is unreachable.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use ferry_adapters::record::{Record, Value};
use ferry_adapters::sink::Item;
use ferry_gateway::metrics::{IngestMetrics, UplinkMetrics};
use ferry_gateway::store::{spawn_ingest, IngestConfig, IngestHandle, Store, StoreOptions};
use ferry_gateway::uplink::batch::{Encoding, Topic};
use ferry_gateway::uplink::{self, tls, Settings};
use ferry_testkit::{free_port, json_record_seqs, CloudSubscriber, Mosquitto, Pki, Proxy};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(120);

fn reading(i: u64) -> Record {
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

/// The gateway library's store, ingest writer and one uplink, in process.
struct Gateway {
    _dir: tempfile::TempDir,
    store: Store,
    ingest: IngestHandle,
    metrics: UplinkMetrics,
}

impl Gateway {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&Store::file_in(dir.path()), &StoreOptions::default()).unwrap();
        let ingest = spawn_ingest(store.clone(), IngestConfig::default(), IngestMetrics::new());
        Gateway {
            _dir: dir,
            store,
            ingest,
            metrics: UplinkMetrics::new(),
        }
    }

    async fn store(&self, range: std::ops::Range<u64>) {
        for chunk in range.collect::<Vec<_>>().chunks(500) {
            let items = chunk.iter().map(|&i| Item::Record(reading(i))).collect();
            self.ingest.sink.submit_and_wait(items).await.unwrap();
        }
    }

    fn start(&self, s: Settings) -> (CancellationToken, tokio::task::JoinHandle<()>) {
        let cancel = CancellationToken::new();
        let task = tokio::spawn(uplink::run(
            s,
            self.store.clone(),
            self.ingest.cursors.clone(),
            self.metrics.clone(),
            cancel.clone(),
        ));
        (cancel, task)
    }
}

fn settings(pki: &Pki, addr: SocketAddr) -> Settings {
    Settings {
        name: "cloud".into(),
        gateway: pki.client_id.clone(),
        client_id: pki.client_id.clone(),
        host: addr.ip().to_string(),
        port: addr.port(),
        tls: Some(tls::client_config(&pki.ca, &pki.client.cert, &pki.client.key, &[]).unwrap()),
        topic: Topic::parse("dt/ferry/{gateway}/telemetry", &pki.client_id).unwrap(),
        encoding: Encoding::Json,
        max_batch_bytes: 128 * 1024,
        max_batch_age: Duration::from_millis(50),
        max_inflight: 100,
        publishes_per_second: 100,
        bytes_per_second: 512 * 1024,
        keep_alive: Duration::from_secs(30),
        connect_timeout: Duration::from_secs(10),
        puback_timeout: Duration::from_secs(30),
        reconnect_min: Duration::from_millis(100),
        reconnect_max: Duration::from_secs(1),
        drain_timeout: Duration::from_secs(5),
        sources: vec![],
        window_records: 2048,
        stream: ferry_gateway::store::Stream::Raw,
    }
}

/// A 10 KB/s link (each way) carrying batches that each take longer to
/// cross than a fifth of `puback_timeout`, and all of them together far
/// longer than it: the uplink keeps one session, sends every record exactly
/// once, and keeps each batch within its limits. The PUBACK timeout counts
/// from the last sign of progress, so a slow link is never mistaken for a
/// dead one (which would resend the whole window again and again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_throttled_to_10_kb_per_s_delivers_each_record_once_without_resend_storms() {
    const RECORDS: u64 = 1_000;
    const RATE: u64 = 10_000;
    const MAX_BATCH: usize = 16 * 1024;
    let pki = Pki::generate("pi-line-7").unwrap();
    let cloud = Mosquitto::tls(&pki).unwrap();
    let link = Proxy::start(cloud.tls_addr()).await.unwrap();
    link.throttle(RATE);
    let sub = CloudSubscriber::connect(&pki, cloud.tls_addr(), "dt/ferry/#")
        .await
        .unwrap();
    let gw = Gateway::new();
    gw.store(0..RECORDS).await;
    let mut s = settings(&pki, link.addr());
    s.max_batch_bytes = MAX_BATCH;
    // One batch crosses in ~1.6 s; all of them take ~12 s.
    s.puback_timeout = Duration::from_secs(4);
    let started = Instant::now();
    let (cancel, task) = gw.start(s);
    let seen = sub
        .wait_for_seqs(1..RECORDS + 1, WAIT, |m| json_record_seqs(&m.payload))
        .await
        .unwrap();
    let took = started.elapsed();
    assert!(seen.is_complete(), "{seen}");
    assert_eq!(seen.duplicates(), 0, "exactly once on a slow link: {seen}");
    assert_eq!(seen.outside(), 0);
    let payload: usize = sub.messages().iter().map(|m| m.payload.len()).sum();
    for m in sub.messages() {
        assert!(m.payload.len() <= MAX_BATCH, "{} bytes", m.payload.len());
    }
    let label = UplinkMetrics::label("cloud");
    let m = &gw.metrics;
    assert_eq!(m.connect_errors.get_or_create(&label).get(), 0);
    assert_eq!(m.connects.get_or_create(&label).get(), 1);
    assert_eq!(link.accepted(), 1, "one connection, never given up");
    // What crossed the link: the payloads once, plus TLS and MQTT framing.
    let up = link.bytes_up();
    assert!(
        up <= payload as u64 * 11 / 10 + 16 * 1024,
        "{up} bytes on the wire for {payload} bytes of payload: something was resent"
    );
    // And the link really was slow.
    assert!(
        took >= Duration::from_secs_f64(payload as f64 / RATE as f64 * 0.9),
        "{payload} bytes crossed 10 KB/s in {took:?}"
    );
    eprintln!(
        "{RECORDS} records in {} publishes ({payload} payload bytes, {up} on the wire) in {took:?}",
        sub.len()
    );
    cancel.cancel();
    task.await.unwrap();
}

/// CPU time (user + system) of process `pid` so far, from /proc/PID/stat.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces), which ends at the last ')'.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_secs_f64(ticks as f64 / hz as f64)
}

/// A sample's value on the daemon's /metrics page (the sum over its labels).
fn metric(addr: SocketAddr, name: &str) -> f64 {
    http_get(addr, "/metrics")
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with(' ') || r.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// How long the CPU is measured while offline, and the bound: 2% of one core.
const OFFLINE_WINDOW: Duration = Duration::from_secs(6);
const OFFLINE_CPU_SHARE: f64 = 0.02;

/// The daemon with its embedded broker, a backlog of readings and an uplink
/// to `cloud` (fast timeouts, so that reconnects happen within the window).
fn offline_daemon(dir: &std::path::Path, cloud: SocketAddr, pki: &Pki) -> (Ferry, SocketAddr) {
    let broker = SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
    let config = broker_config(&dir.join("data"), broker, cloud, pki, metrics).replace(
        "[metrics]",
        "connect_timeout = \"1s\"\npuback_timeout = \"1s\"\nkeep_alive = \"5s\"\n\n[metrics]",
    );
    let ferry = Ferry::start(dir, &config);
    (ferry, broker)
}

async fn publish_backlog(broker: SocketAddr, n: u64) {
    let mut p = Publisher::connect(broker, "device-pub").await.unwrap();
    for i in 0..n {
        p.publish(&seed_topic(i), seed_payload(i)).await.unwrap();
    }
}

/// Measures CPU time and reconnect attempts over [`OFFLINE_WINDOW`];
/// `attempts` counts them however the case can.
async fn measure_offline(ferry: &Ferry, attempts: impl Fn() -> u64) -> (Duration, u64, Duration) {
    let (cpu0, n0, t0) = (cpu_time(ferry.pid()), attempts(), Instant::now());
    // A measuring interval, not a wait for something to happen.
    tokio::time::sleep(OFFLINE_WINDOW).await;
    let (cpu1, n1, t1) = (cpu_time(ferry.pid()), attempts(), Instant::now());
    (cpu1 - cpu0, n1 - n0, t1 - t0)
}

fn assert_low_cpu(what: &str, cpu: Duration, wall: Duration) {
    let share = cpu.as_secs_f64() / wall.as_secs_f64();
    eprintln!(
        "{what}: {cpu:?} CPU in {wall:?} = {:.2}% of one core",
        share * 100.0
    );
    assert!(
        share < OFFLINE_CPU_SHARE,
        "{what}: the daemon used {cpu:?} of CPU in {wall:?} ({:.2}% of a core; bound {}%)",
        share * 100.0,
        OFFLINE_CPU_SHARE * 100.0
    );
}

/// The cloud refuses connections (nothing listens): reconnects follow the
/// backoff (`reconnect_min` 100 ms doubling to `reconnect_max` 1 s, full
/// jitter: about 2 attempts a second once at the cap, never a busy loop) and
/// the daemon's CPU stays under 2% of a core.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_with_the_cloud_refusing_connections_cpu_stays_low_and_reconnects_back_off() {
    let pki = Pki::generate("pi-line-7").unwrap();
    let down = SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
    let dir = tempfile::tempdir().unwrap();
    let (ferry, broker) = offline_daemon(dir.path(), down, &pki);
    let metrics = metrics_addr(&ferry);
    publish_backlog(broker, 500).await;
    let errors = || metric(metrics, "ferry_uplink_connect_errors_total") as u64;
    // Past the first doublings: at the 1 s cap.
    ferry_testkit::wait_until(WAIT, "five failed connects", || errors() >= 5)
        .await
        .unwrap();
    let (cpu, attempts, wall) = measure_offline(&ferry, errors).await;
    eprintln!("{attempts} connection attempts in {wall:?}");
    // Uniform delays in [0.01 s, 1 s], mean ~0.5 s: ~12 in 6 s. A busy loop
    // would make thousands; no retrying at all would make none.
    assert!(
        (2..=40).contains(&attempts),
        "{attempts} attempts in {wall:?}"
    );
    assert_low_cpu("cloud refusing connections", cpu, wall);
    assert_eq!(metric(metrics, "ferry_ingest_head_seq"), 500.0);
}

/// The link is blackholed (packets vanish, connections stay open): each
/// attempt waits out `connect_timeout` (1 s) before the backoff, and the
/// daemon's CPU stays under 2% of a core.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_behind_a_blackholed_link_cpu_stays_low_and_reconnects_back_off() {
    let pki = Pki::generate("pi-line-7").unwrap();
    let cloud = Mosquitto::tls(&pki).unwrap();
    let link = Proxy::start(cloud.tls_addr()).await.unwrap();
    let sub = CloudSubscriber::connect(&pki, cloud.tls_addr(), "dt/ferry/#")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (ferry, broker) = offline_daemon(dir.path(), link.addr(), &pki);
    let metrics = metrics_addr(&ferry);
    publish_backlog(broker, 100).await;
    sub.wait_for_seqs(1..101, WAIT, |m| json_record_seqs(&m.payload))
        .await
        .unwrap();
    link.blackhole().await;
    publish_backlog(broker, 500).await;
    let errors = || metric(metrics, "ferry_uplink_connect_errors_total") as u64;
    ferry_testkit::wait_until(WAIT, "the session given up, twice", || errors() >= 2)
        .await
        .unwrap();
    let (cpu, attempts, wall) = measure_offline(&ferry, || link.accepted()).await;
    eprintln!("{attempts} connections accepted by the blackhole in {wall:?}");
    // Each attempt: 1 s unanswered, then up to 1 s of backoff.
    let most = (wall.as_secs_f64() / 1.0).ceil() as u64 + 1;
    assert!(
        (1..=most).contains(&attempts),
        "{attempts} attempts in {wall:?} (at most {most})"
    );
    assert_low_cpu("blackholed link", cpu, wall);
    // And when the link returns, the backlog goes out.
    link.restore();
    let seen = sub
        .wait_for_seqs(1..601, WAIT, |m| json_record_seqs(&m.payload))
        .await
        .unwrap();
    assert!(seen.is_complete(), "{seen}");
}

/// The metrics address from the daemon's config file.
fn metrics_addr(ferry: &Ferry) -> SocketAddr {
    let config = std::fs::read_to_string(&ferry.config).unwrap();
    let section = &config[config.find("[metrics]").unwrap()..];
    let line = section.lines().find(|l| l.starts_with("listen")).unwrap();
    line.split('"').nth(1).unwrap().parse().unwrap()
}
