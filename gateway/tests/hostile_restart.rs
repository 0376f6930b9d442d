//! A restart with the query index far behind the log (after a flood, a
//! deleted or an older index), against the real `ferry` binary: the daemon
//! is ready and stores new readings while the index replays the log in the
//! background, queries say they are behind until it has caught up, a
//! `kill -9` mid-replay keeps its progress, the systemd watchdog is pinged
//! all through it, and in the end every record is counted exactly once.

mod common;

use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{http_get, metric_sample, Ferry, Publisher};
use ferry_core::record::{now_millis, Record, Value};
use ferry_core::sink::Item;
use ferry_gateway::api::client::Client;
use ferry_gateway::metrics::IngestMetrics;
use ferry_gateway::store::{Store, StoreOptions, Writer, WriterSettings};
use ferry_testkit::free_port;
use serde_json::Value as J;

/// Records in the store before the daemon starts: enough that a debug
/// build replays them for seconds.
const STORED: u64 = 200_000;
/// Devices the stored records are spread over (`d0`..`d3`, field `v`).
const DEVICES: u64 = 4;

/// When the stored records begin: an hour ago, ten records a second.
fn t0() -> i64 {
    now_millis() - 3_600_000
}

/// Fills `data` with `STORED` records through the library's ingest writer
/// without a query index: the daemon's index is as far behind as it gets
/// (what a deleted index or one of an older format leaves).
async fn fill(data: &Path, t0: i64) {
    std::fs::create_dir_all(data).unwrap();
    {
        let store = Store::open(&Store::file_in(data), &StoreOptions::default()).unwrap();
        let ingest = Writer::spawn(
            store.clone(),
            WriterSettings {
                commit_max_records: 20_000,
                ..WriterSettings::default().with_commit_interval(Duration::from_millis(10))
            },
            IngestMetrics::new(),
        );
        let source: Arc<str> = "local".into();
        let mut i = 0;
        while i < STORED {
            let items: Vec<Item> = (i..(i + 10_000).min(STORED))
                .map(|n| {
                    Item::Record(Record {
                        ts: t0 + (n * 100) as i64 / DEVICES as i64,
                        source: source.clone(),
                        device: format!("d{}", n % DEVICES).into(),
                        fields: vec![("v".into(), Value::Int(n as i64))],
                    })
                })
                .collect();
            i = (i + 10_000).min(STORED);
            ingest.sink.submit_and_wait(items).await.unwrap();
        }
        drop(ingest.sink);
        drop(ingest.cursors);
        ingest.task.await.unwrap();
        assert_eq!(store.heads().records, STORED);
    }
}

struct Ports {
    broker: SocketAddr,
    metrics: SocketAddr,
    api: SocketAddr,
}

impl Ports {
    fn new() -> Ports {
        let p = || SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
        Ports {
            broker: p(),
            metrics: p(),
            api: p(),
        }
    }
}

fn config(data: &Path, ports: &Ports) -> String {
    format!(
        r#"
[gateway]
id = "pi-line-7"
data_dir = "{data}"

[sources.local]
type = "mqtt_broker"
listen = "{broker}"
topics = ["sensors/{{device}}/telemetry"]

[metrics]
listen = "{metrics}"

[api]
listen = "{api}"
"#,
        data = data.display(),
        broker = ports.broker,
        metrics = ports.metrics,
        api = ports.api,
    )
}

/// The JSON body of `GET path` from the query API.
fn get_json(addr: SocketAddr, path: &str) -> J {
    let client = Client::new(&format!("http://{addr}"), None).unwrap();
    let answer = client.get(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert_eq!(answer.status, 200, "{path}: {}", answer.body);
    serde_json::from_str(&answer.body).unwrap_or_else(|e| panic!("{path}: {e}: {}", answer.body))
}

fn status_index(api: SocketAddr) -> J {
    get_json(api, "/api/v1/status")["index"].clone()
}

/// The query answer for `d{device}/v` over the whole test's time, in
/// buckets of an hour, and the readings it counts.
fn count(api: SocketAddr, device: u64, t0: i64) -> (J, u64) {
    let to = now_millis() + 3_600_000;
    let answer = get_json(
        api,
        &format!(
            "/api/v1/query?series=d{device}/v&from={}&to={to}&step=1h",
            t0 - 3_600_000
        ),
    );
    let n = answer["series"][0]["buckets"]
        .as_array()
        .expect("buckets")
        .iter()
        .map(|b| b["count"].as_u64().expect("a count"))
        .sum();
    (answer, n)
}

/// Polls `f` until it returns `Some`, for at most `limit`.
fn until<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The daemon is ready (READY, `/readyz`) and stores new readings while the
/// index still replays the stored log; queries meanwhile say they are
/// behind; once caught up, each record (stored before and since) is counted
/// exactly once. (Before: the daemon replayed the whole log before it
/// started ingest and declared itself ready.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_runs_and_queries_say_they_are_behind_while_the_index_replays() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let t0 = t0();
    fill(&data, t0).await;
    let ports = Ports::new();
    let started = Instant::now();
    let ferry = Ferry::start(dir.path(), &config(&data, &ports));
    let ready_after = started.elapsed();

    // Ready while the index is far behind.
    assert!(http_get(ports.metrics, "/readyz").starts_with("HTTP/1.1 200"));
    let index = status_index(ports.api);
    let applied = index["applied"].as_u64().unwrap();
    assert!(
        applied < STORED,
        "ready before the index has replayed the log (applied {applied} of {STORED})"
    );
    assert_eq!(index["replaying"], J::Bool(true), "{index}");
    assert_eq!(index["complete"], J::Bool(false), "{index}");
    let lag = index["lag_records"].as_u64().expect("lag_records");
    assert!(lag > 0 && lag <= STORED, "{index}");
    let gauge = metric_sample(ports.metrics, "ferry_query_index_lag_records").unwrap();
    assert!(gauge > 0.0, "ferry_query_index_lag_records {gauge}");

    // New readings are acknowledged and stored meanwhile (and indexed, once
    // the replay has reached them).
    let mut publisher = Publisher::connect(ports.broker, "meter").await.unwrap();
    const NEW: u64 = 50;
    // Queued at once (not one by one: each PUBACK follows its commit, and
    // 50 commits in a row could outlast the replay).
    for i in 0..NEW {
        publisher
            .queue(
                "sensors/d1/telemetry",
                format!(r#"{{"v": {}}}"#, 1_000_000 + i).into_bytes(),
            )
            .await;
    }
    publisher
        .wait_acked(NEW as usize, Duration::from_secs(30))
        .await;
    until(Duration::from_secs(10), "the readings are stored", || {
        let head = get_json(ports.api, "/api/v1/status")["records_head"].as_u64();
        (head == Some(STORED + NEW)).then_some(())
    });
    // ... before the replay is done: a query says it is behind.
    let (answer, _) = count(ports.api, 1, t0);
    assert_eq!(answer["complete"], J::Bool(false), "{answer}");
    assert!(
        answer["index_lag_records"].as_u64().unwrap() > 0,
        "{answer}"
    );
    assert_eq!(
        status_index(ports.api)["replaying"],
        J::Bool(true),
        "the replay was still running when the readings were stored (ready after {ready_after:?})"
    );
    // So do the device list and a device's latest values: behind, with the
    // lag, or (should the replay have ended since) complete, and then the
    // status agrees.
    for path in ["/api/v1/devices", "/api/v1/devices/d1/latest"] {
        let answer = get_json(ports.api, path);
        let lag = answer["index_lag_records"].as_u64().unwrap();
        if answer["complete"] == J::Bool(false) {
            assert!(lag > 0, "{path}: {answer}");
        } else {
            assert_eq!(lag, 0, "{path}: {answer}");
            assert_eq!(status_index(ports.api)["replaying"], J::Bool(false));
        }
    }

    // Caught up: every record exactly once.
    until(Duration::from_secs(180), "the index catches up", || {
        let i = status_index(ports.api);
        (i["complete"] == J::Bool(true)).then_some(())
    });
    let mut total = 0;
    for d in 0..DEVICES {
        let (answer, n) = count(ports.api, d, t0);
        assert_eq!(answer["complete"], J::Bool(true), "{answer}");
        assert_eq!(answer["index_lag_records"], J::from(0u64), "{answer}");
        let want = STORED / DEVICES + if d == 1 { NEW } else { 0 };
        assert_eq!(n, want, "d{d}/v counted");
        total += n;
    }
    assert_eq!(total, STORED + NEW);
    for path in ["/api/v1/devices", "/api/v1/devices/d1/latest"] {
        let answer = get_json(ports.api, path);
        assert_eq!(answer["complete"], J::Bool(true), "{path}: {answer}");
        assert_eq!(
            answer["index_lag_records"],
            J::from(0u64),
            "{path}: {answer}"
        );
    }
    let index = status_index(ports.api);
    assert_eq!(index["replaying"], J::Bool(false), "{index}");
    assert_eq!(index["lag_records"], J::from(0u64), "{index}");
    assert_eq!(
        metric_sample(ports.metrics, "ferry_query_index_lag_records"),
        Some(0.0)
    );
    drop(ferry);
}

/// `kill -9` in the middle of the replay: the restarted daemon continues
/// from the progress the replay committed (not from the start), and the
/// final index is exact. (Before: the daemon was not ready, so it was
/// killed before it ever declared itself ready.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_mid_replay_keeps_its_progress_and_the_index_ends_exact() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let t0 = t0();
    fill(&data, t0).await;
    let ports = Ports::new();
    let mut ferry = Ferry::start(dir.path(), &config(&data, &ports));
    // Wait until the replay has committed some of its progress, and kill
    // it before it is done.
    let persisted = until(Duration::from_secs(120), "replay progress", || {
        let i = status_index(ports.api);
        let applied = i["applied"].as_u64().unwrap();
        assert!(
            applied < STORED,
            "ready before the index has replayed the log (applied {applied} of {STORED})"
        );
        assert_eq!(
            i["replaying"],
            J::Bool(true),
            "the replay ended before it was seen committing: {i}"
        );
        let p = i["persisted_through"].as_u64().unwrap();
        (p > 0).then_some(p)
    });
    ferry.kill9();
    assert!(persisted < STORED, "killed mid-replay ({persisted})");
    drop(ferry);

    let ports = Ports::new();
    let ferry = Ferry::start(dir.path(), &config(&data, &ports));
    let index = status_index(ports.api);
    let through = index["persisted_through"].as_u64().unwrap();
    assert!(
        through >= persisted,
        "the restart continues from the committed progress ({through} < {persisted}): {index}"
    );
    until(Duration::from_secs(180), "the index catches up", || {
        (status_index(ports.api)["complete"] == J::Bool(true)).then_some(())
    });
    for d in 0..DEVICES {
        let (answer, n) = count(ports.api, d, t0);
        assert_eq!(answer["complete"], J::Bool(true), "{answer}");
        assert_eq!(n, STORED / DEVICES, "d{d}/v counted exactly once");
    }
    drop(ferry);
}

/// Under systemd the watchdog is pinged all through the replay: the replay
/// runs beside the ingest writer, whose heartbeat the pings follow, so no gap
/// between two pings comes near `WATCHDOG_USEC` (after which systemd would
/// kill the daemon mid-replay, and a restart would replay again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watchdog_is_pinged_all_through_the_replay() {
    const WATCHDOG: Duration = Duration::from_secs(2);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    fill(&data, t0()).await;
    let ports = Ports::new();
    let socket = dir.path().join("notify.sock");
    let manager = UnixDatagram::bind(&socket).unwrap();
    manager.set_read_timeout(Some(WATCHDOG)).unwrap();
    let path = dir.path().join("ferry.toml");
    std::fs::write(&path, config(&data, &ports)).unwrap();
    let usec = WATCHDOG.as_micros().to_string();
    let socket_env = socket.to_str().unwrap();
    let _ferry = Ferry::start_file_env(
        &path,
        &[
            ("NOTIFY_SOCKET", socket_env),
            ("WATCHDOG_USEC", usec.as_str()),
        ],
    );
    let mut buf = [0u8; 4096];
    let mut next = || {
        let n = manager
            .recv(&mut buf)
            .expect("a notification within WATCHDOG_USEC");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert!(next().starts_with("READY=1"));
    assert_eq!(status_index(ports.api)["replaying"], J::Bool(true));
    // Until the replay is done: every gap between pings well within the
    // watchdog (each recv above fails past WATCHDOG_USEC).
    let (mut pings, mut last, mut longest) = (0, Instant::now(), Duration::ZERO);
    while status_index(ports.api)["replaying"] == J::Bool(true) {
        if next() == "WATCHDOG=1\n" {
            longest = longest.max(last.elapsed());
            last = Instant::now();
            pings += 1;
        }
    }
    assert!(pings >= 2, "only {pings} pings during the replay");
    assert!(longest < WATCHDOG, "a gap of {longest:?} between pings");
}
