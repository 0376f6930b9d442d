//! Hostile names against the running daemon: a client that publishes to
//! more distinct devices, series or fields per device than the store
//! takes (`store.max_devices`, `store.max_series`,
//! `store.max_fields_per_device`), and the lists and the status page at
//! those limits. Each test is bounded in time.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{loopback, metric_sample, Ferry};
use ferry_testkit::{free_ports, wait_until_blocking};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);

struct Ports {
    broker: SocketAddr,
    api: SocketAddr,
    metrics: SocketAddr,
}

fn ports() -> Ports {
    let p = free_ports(3).unwrap();
    Ports {
        broker: loopback(p[0]),
        api: loopback(p[1]),
        metrics: loopback(p[2]),
    }
}

fn config(data: &Path, p: &Ports, store: &str, source: &str) -> String {
    format!(
        r#"
[gateway]
id = "names-test"
data_dir = "{data}"

[store]
commit_interval = "10ms"
{store}

[sources.local]
type = "mqtt_broker"
listen = "{broker}"
topics = ["sensors/{{device}}/telemetry"]
{source}

[api]
listen = "{api}"

[metrics]
listen = "{metrics}"
"#,
        data = data.display(),
        broker = p.broker,
        api = p.api,
        metrics = p.metrics,
    )
}

/// Publishes every message at QoS 1, up to 100 unacknowledged, and returns
/// once all are acknowledged.
async fn publish_all(broker: SocketAddr, client_id: &str, messages: Vec<(String, Vec<u8>)>) {
    let n = messages.len() as u64;
    let mut opts = MqttOptions::new(client_id, "127.0.0.1", broker.port());
    opts.set_keep_alive(Duration::from_secs(30))
        .set_inflight(100)
        .set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut events) = AsyncClient::new(opts, 100);
    let acked = Arc::new(AtomicU64::new(0));
    let counter = acked.clone();
    let poll = tokio::spawn(async move {
        while counter.load(Ordering::Relaxed) < n {
            match events.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(e) => panic!("publisher connection failed: {e}"),
            }
        }
    });
    for (topic, payload) in messages {
        client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }
    tokio::time::timeout(WAIT, poll)
        .await
        .expect("every publish acknowledged in time")
        .unwrap();
    let _ = client.disconnect().await;
}

fn device_messages(range: std::ops::Range<u32>) -> Vec<(String, Vec<u8>)> {
    range
        .map(|i| {
            (
                format!("sensors/d{i:05}/telemetry"),
                format!(r#"{{"v": {i}}}"#).into_bytes(),
            )
        })
        .collect()
}

fn m(metrics: SocketAddr, sample: &str) -> f64 {
    metric_sample(metrics, sample).unwrap_or(0.0)
}

fn rejected(metrics: SocketAddr, reason: &str) -> f64 {
    m(
        metrics,
        &format!("ferry_ingest_records_rejected_total{{source=\"local\",reason=\"{reason}\"}}"),
    )
}

/// Waits until `stored` records are stored and `refused` rejected as `reason`.
fn wait_counts(metrics: SocketAddr, stored: f64, reason: &str, refused: f64) {
    wait_until_blocking(WAIT, "every message stored or refused", || {
        m(metrics, "ferry_ingest_records_stored_total") >= stored
            && rejected(metrics, reason) >= refused
    })
    .unwrap();
    assert_eq!(m(metrics, "ferry_ingest_records_stored_total"), stored);
    assert_eq!(rejected(metrics, reason), refused);
}

fn api_json(api: SocketAddr, path: &str) -> (u16, Value) {
    let (status, _, body) = common::get_closed(api, path, WAIT);
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

fn vm_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Every device name of `/api/v1/devices`, page by page (`limit`), and
/// the size of each page.
fn all_pages(api: SocketAddr, limit: usize, extra: &str) -> (Vec<String>, Vec<usize>) {
    let (mut names, mut sizes) = (Vec::new(), Vec::new());
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            Some(a) => format!("/api/v1/devices?limit={limit}{extra}&after={a}"),
            None => format!("/api/v1/devices?limit={limit}{extra}"),
        };
        let (status, page) = api_json(api, &path);
        assert_eq!(status, 200, "{path}: {page}");
        let devices = page["devices"].as_array().unwrap();
        sizes.push(devices.len());
        names.extend(
            devices
                .iter()
                .map(|d| d["device"].as_str().unwrap().to_owned()),
        );
        match page["next"].as_str() {
            Some(next) => {
                assert_eq!(Some(next), names.last().map(String::as_str));
                after = Some(next.to_owned());
            }
            None => break,
        }
        assert!(sizes.len() <= 10_000, "pages never end");
    }
    (names, sizes)
}

/// A client publishing to 1,000 distinct devices, and then to 40,000 more,
/// with `max_devices = 200`: exactly 200 devices are stored, every other
/// message is a `too_many_devices` dead letter, counted exactly, logged
/// once; the daemon's memory does not grow with the refused devices; the
/// devices list comes in exact pages; and after a restart the limit still
/// holds while the 200 devices are still taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_devices_than_max_devices_are_dead_letters_and_the_limit_holds_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let p = ports();
    let text = config(&dir.path().join("data"), &p, "max_devices = 200", "");
    let mut ferry = Ferry::start(dir.path(), &text);

    publish_all(p.broker, "many", device_messages(0..1000)).await;
    wait_counts(p.metrics, 200.0, "too_many_devices", 800.0);
    assert_eq!(m(p.metrics, "ferry_store_devices"), 200.0);
    assert_eq!(m(p.metrics, "ferry_store_series"), 200.0);
    // The first 200 devices that came are the ones stored.
    let expected: Vec<String> = (0..200).map(|i| format!("d{i:05}")).collect();
    let (names, sizes) = all_pages(p.api, 64, "");
    assert_eq!(names, expected);
    assert_eq!(sizes, [64, 64, 64, 8]);
    let (names, sizes) = all_pages(p.api, 1000, "&fields=false");
    assert_eq!(names, expected);
    assert_eq!(sizes, [200]);
    let (_, page) = api_json(p.api, "/api/v1/devices?limit=1&after=d00041");
    assert_eq!(
        page["devices"][0]["fields"][0]["last"],
        serde_json::json!(42),
        "{page}"
    );
    assert_eq!(page["next"], "d00042");
    for bad in ["limit=0", "limit=1001", "fields=yes", "sort=name"] {
        let (status, body) = api_json(p.api, &format!("/api/v1/devices?{bad}"));
        assert_eq!(status, 400, "{bad}: {body}");
    }
    // The dead letters say why, naming the device.
    let (_, dead) = api_json(p.api, "/api/v1/dead?limit=1");
    let last = &dead["dead"][0];
    assert_eq!(last["kind"], "too_many_devices", "{dead}");
    assert_eq!(last["origin"], "device d00999", "{dead}");
    assert_eq!(
        last["reason"],
        "device `d00999` is new and 200 devices have records (store.max_devices)"
    );
    assert_eq!(last["payload"], r#"{"v":999}"#);
    let warned = ferry
        .log()
        .iter()
        .filter(|l| l.contains("store.max_devices"))
        .count();
    assert_eq!(
        warned,
        1,
        "logged once per episode:\n{}",
        ferry.log().join("\n")
    );

    // 40,000 more distinct devices: refused, and they cost no memory of
    // Ferry's kept (the embedded broker, rumqttd, keeps each topic it has
    // routed: ~150 bytes each). Measured over the second 20,000, after the
    // allocator has warmed up.
    publish_all(p.broker, "more", device_messages(1000..21_000)).await;
    wait_counts(p.metrics, 200.0, "too_many_devices", 20_800.0);
    let before = vm_rss_kib(ferry.pid());
    publish_all(p.broker, "more2", device_messages(21_000..41_000)).await;
    wait_counts(p.metrics, 200.0, "too_many_devices", 40_800.0);
    let after = vm_rss_kib(ferry.pid());
    // Stored, 20,000 devices cost the old daemon ~1.7 KB each (34 MB).
    assert!(
        after < before + 14 * 1024,
        "VmRSS grew from {before} to {after} KiB over 20,000 refused devices"
    );
    assert!(m(p.metrics, "ferry_query_index_series_in_memory") <= 200.0);

    // After a restart: the same 200 devices, a new one still refused, a
    // known one still stored.
    assert!(ferry.terminate().success());
    drop(ferry);
    let ferry = Ferry::start(dir.path(), &text);
    wait_until_blocking(WAIT, "the registry loaded", || {
        m(p.metrics, "ferry_store_devices") == 200.0
    })
    .unwrap();
    let mut again = device_messages(50_000..50_010);
    again.push((
        "sensors/d00007/telemetry".into(),
        br#"{"v": 7000}"#.to_vec(),
    ));
    publish_all(p.broker, "again", again).await;
    wait_counts(p.metrics, 1.0, "too_many_devices", 10.0);
    let (names, _) = all_pages(p.api, 1000, "&fields=false");
    assert_eq!(names, expected);
    let (_, latest) = api_json(p.api, "/api/v1/devices/d00007/latest");
    assert_eq!(latest["fields"]["v"]["value"], 7000, "{latest}");
    drop(ferry);
}

/// Fields over `max_fields_per_device` (one new field per message, so no
/// message is over the source's `max_fields`) and series over
/// `max_series`: dead letters with their reasons, counted exactly; known
/// fields are still stored; the limits hold after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fields_and_series_over_their_limits_are_dead_letters_through_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let p = ports();
    let text = config(
        &dir.path().join("data"),
        &p,
        "max_fields_per_device = 20\nmax_series = 30",
        "",
    );
    let mut ferry = Ferry::start(dir.path(), &text);
    // Device `wide`: 50 messages, each with one new field.
    let wide: Vec<_> = (0..50)
        .map(|i| {
            (
                "sensors/wide/telemetry".to_owned(),
                format!(r#"{{"f{i:02}": {i}}}"#).into_bytes(),
            )
        })
        .collect();
    publish_all(p.broker, "wide", wide).await;
    wait_counts(p.metrics, 20.0, "too_many_device_fields", 30.0);
    let (_, page) = api_json(p.api, "/api/v1/devices");
    assert_eq!(page["devices"][0]["field_count"], 20, "{page}");
    assert_eq!(page["devices"][0]["fields"].as_array().unwrap().len(), 20);
    let (_, dead) = api_json(p.api, "/api/v1/dead?limit=1");
    assert_eq!(
        dead["dead"][0]["reason"],
        "device `wide` has 20 fields and field `f49` would be one more than store.max_fields_per_device (20)"
    );
    // A known field is still stored; a record mixing a known and a new one is refused whole.
    publish_all(
        p.broker,
        "wide2",
        vec![
            ("sensors/wide/telemetry".into(), br#"{"f03": 1}"#.to_vec()),
            (
                "sensors/wide/telemetry".into(),
                br#"{"f03": 2, "new": 1}"#.to_vec(),
            ),
        ],
    )
    .await;
    wait_counts(p.metrics, 21.0, "too_many_device_fields", 31.0);

    // Series: 20 taken; device `b` takes 10 more (30), then one more is refused.
    let b = (0..11)
        .map(|i| {
            (
                "sensors/b/telemetry".to_owned(),
                format!(r#"{{"g{i:02}": {i}}}"#).into_bytes(),
            )
        })
        .collect();
    publish_all(p.broker, "b", b).await;
    wait_counts(p.metrics, 31.0, "too_many_series", 1.0);
    assert_eq!(m(p.metrics, "ferry_store_series"), 30.0);

    assert!(ferry.terminate().success());
    drop(ferry);
    let ferry = Ferry::start(dir.path(), &text);
    wait_until_blocking(WAIT, "the registry loaded", || {
        m(p.metrics, "ferry_store_series") == 30.0
    })
    .unwrap();
    publish_all(
        p.broker,
        "after",
        vec![
            ("sensors/wide/telemetry".into(), br#"{"zz": 1}"#.to_vec()),
            ("sensors/c/telemetry".into(), br#"{"x": 1}"#.to_vec()),
            ("sensors/b/telemetry".into(), br#"{"g00": 5}"#.to_vec()),
        ],
    )
    .await;
    wait_until_blocking(WAIT, "the three handled", || {
        m(p.metrics, "ferry_ingest_records_stored_total") >= 1.0
            && rejected(p.metrics, "too_many_device_fields")
                + rejected(p.metrics, "too_many_series")
                >= 2.0
    })
    .unwrap();
    assert_eq!(m(p.metrics, "ferry_ingest_records_stored_total"), 1.0);
    assert_eq!(rejected(p.metrics, "too_many_device_fields"), 1.0);
    assert_eq!(rejected(p.metrics, "too_many_series"), 1.0);
    drop(ferry);
}

/// The status page in headless Chromium at the limits: 10,000 devices and
/// one with 10,000 fields. It renders (no stack overflow from spreading
/// 10,000 names, no 290 KB query URL): the device picker holds every
/// device, the big device shows its first page of 50 fields with their
/// trends. Skipped without Chromium unless `FERRY_REQUIRE_CHROMIUM` is set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_renders_at_the_limits() {
    let Some(chromium) = common::chromium() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let p = ports();
    let text = config(
        &dir.path().join("data"),
        &p,
        "max_devices = 10001\nmax_fields_per_device = 10000\nmax_series = 20001",
        "max_fields = 5000\nmax_payload = \"256KiB\"",
    );
    let ferry = Ferry::start(dir.path(), &text);
    let mut messages = device_messages(0..10_000);
    for half in 0..2 {
        let fields: Vec<String> = (half * 5000..(half + 1) * 5000)
            .map(|i| format!(r#""field{i:05}": {i}"#))
            .collect();
        messages.push((
            "sensors/big/telemetry".into(),
            format!("{{{}}}", fields.join(",")).into_bytes(),
        ));
    }
    publish_all(p.broker, "limits", messages).await;
    wait_until_blocking(WAIT, "all stored", || {
        m(p.metrics, "ferry_ingest_records_stored_total") >= 10_002.0
    })
    .unwrap();
    assert_eq!(m(p.metrics, "ferry_store_devices"), 10_001.0);
    assert_eq!(m(p.metrics, "ferry_store_series"), 20_000.0);

    let url = format!("http://{}/#device=big&interval=60000", p.api);
    let dom = tokio::task::spawn_blocking(move || common::dump_dom(chromium, &url, 20000))
        .await
        .unwrap();
    let excerpt: String = dom
        .split("<div id=\"error\">")
        .nth(1)
        .unwrap_or(&dom)
        .chars()
        .take(2000)
        .collect();
    assert!(
        dom.contains(r#"<div id="error"></div>"#),
        "no error: {excerpt}"
    );
    assert_eq!(dom.matches("<option ").count(), 10_001, "{excerpt}");
    assert!(
        dom.contains("<span id=\"devices\">10001</span>"),
        "{excerpt}"
    );
    assert!(
        dom.contains("<span id=\"range\">1–50 of 10000</span>"),
        "{excerpt}"
    );
    assert!(
        dom.contains("<td>field00000</td><td class=\"n\">0</td>"),
        "{excerpt}"
    );
    assert!(
        dom.contains("<td>field00049</td><td class=\"n\">49</td>"),
        "{excerpt}"
    );
    assert!(!dom.contains("<td>field00050</td>"), "one page of fields");
    assert_eq!(dom.matches("<polyline points=").count(), 50, "{excerpt}");
    drop(ferry);
}

/// `ferry validate` reports every bad limit with its key path and line.
#[test]
fn bad_limits_are_config_errors_with_their_key_paths() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[store]\nmax_devices = 0\nmax_series = 20000000\nmax_fields_per_device = -3\n\
         index_memory = \"1KiB\"\n[sources.local]\ntype = \"mqtt_broker\"\n",
    )
    .unwrap();
    let out = Command::new(common::ferry_bin())
        .args(["validate", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let f = path.display();
    let expected = [
        format!("ferry: config error: {f}:2: store.max_devices: invalid value: integer `0`, expected an integer of at least 1"),
        format!("ferry: config error: {f}:3: store.max_series: must be between 1 and 10000000, got 20000000"),
        format!("ferry: config error: {f}:4: store.max_fields_per_device: invalid value: integer `-3`, expected an integer of at least 1"),
        format!("ferry: config error: {f}:5: store.index_memory: must be from 64KiB to 1GiB, got 1.0 KiB"),
    ];
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().collect::<Vec<_>>(), expected);
}
