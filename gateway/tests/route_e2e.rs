//! Routes through the `ferry` binary: seed-format messages in, a deadband +
//! 1-minute window route out to the TLS mosquitto stand-in for IoT Core;
//! and `kill -9` during aggregation, after which the emitted aggregates equal
//! those of an uninterrupted run exactly.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use ferry_core::record::{Record, Value};
use ferry_core::sink::Item;
use ferry_gateway::config::Config;
use ferry_gateway::metrics::IngestMetrics;
use ferry_gateway::route::{Dropped, Route};
use ferry_gateway::store::{Store, StoreOptions, Stream, Writer, WriterSettings};
use ferry_testkit::free_ports;

const WAIT: Duration = Duration::from_secs(90);
/// A minute boundary (1,700,000,040,000 ms = 28,333,334 minutes).
const T0: i64 = 1_700_000_040_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadband_and_minute_windows_reach_the_cloud_with_exact_values() {
    let Cloud {
        pki,
        mosquitto: cloud,
        sub,
    } = Cloud::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(2).unwrap();
    let (broker, metrics) = (loopback(ports[0]), loopback(ports[1]));
    let config = format!(
        r#"{base}
[routes.minute]
fields = ["voltage"]
deadband = {{ absolute = 2 }}
window = {{ size = "1m", aggregates = ["count", "min", "max", "mean"] }}
"#,
        base = broker_config(
            &dir.path().join("data"),
            broker,
            cloud.tls_addr(),
            &pki,
            metrics
        )
        .replace(
            "topics = [\"sensors/{device}/telemetry\"]",
            "topics = [\"sensors/{device}/telemetry\"]\ntimestamp_field = \"time\""
        )
        .replace("[uplinks.cloud]", "[uplinks.cloud]\nroute = \"minute\""),
    );
    let _ferry = Ferry::start(dir.path(), &config);
    let mut publisher = Publisher::connect(broker, "device-pub").await.unwrap();
    // Device 1, every 10 s: minute 0 reports 600, 605, 610, 600 (moves > 2);
    // minute 1 reports only 603; the reading at minute 2 closes minute 1.
    let volts = [
        600, 601, 605, 606, 610, 600, 600, 600, 603, 603, 603, 603, 650,
    ];
    for (i, v) in volts.iter().enumerate() {
        let payload = format!(
            r#"{{"client_id": 1, "device_id": 1, "voltage": {v}, "temperature": 110, "sequence": {i}, "time": {}}}"#,
            T0 + i as i64 * 10_000
        );
        publisher
            .publish("sensors/1/telemetry", payload.into_bytes())
            .await
            .unwrap();
    }
    let mut got: Vec<serde_json::Value> = Vec::new();
    sub.wait_for(WAIT, "two aggregates", |m| {
        got.extend(serde_json::from_slice::<Vec<serde_json::Value>>(&m.payload).unwrap());
        got.len() >= 2
    })
    .await
    .unwrap();
    let row = |r: &serde_json::Value| {
        (
            r["ts"].as_i64().unwrap(),
            r["device"].as_str().unwrap().to_owned(),
            r["source"].as_str().unwrap().to_owned(),
            r["seq"].as_u64().unwrap(),
            r["voltage_count"].as_i64().unwrap(),
            r["voltage_min"].as_f64().unwrap(),
            r["voltage_max"].as_f64().unwrap(),
            r["voltage_mean"].as_f64().unwrap(),
        )
    };
    let rows: Vec<_> = got.iter().map(row).collect();
    let s = |x: &str| x.to_owned();
    assert_eq!(
        rows,
        vec![
            (T0, s("1"), s("minute"), 1, 4, 600.0, 610.0, 603.75),
            (T0 + 60_000, s("1"), s("minute"), 2, 1, 603.0, 603.0, 603.0),
        ]
    );
    assert!(
        got[0].get("temperature_mean").is_none(),
        "fields = [\"voltage\"] only"
    );
    let text = http_get(metrics, "/metrics");
    assert!(
        text.contains("ferry_route_records_in_total{route=\"minute\"} 13"),
        "{text}"
    );
}

/// The known input of the crash test: 3 devices, one reading a second,
/// every 11th 40 s late, every 17th 5 minutes late (dropped).
fn crash_input() -> Vec<Record> {
    (0..3_000i64)
        .map(|i| {
            let mut ts = T0 + i * 1_000;
            if i % 11 == 4 {
                ts -= 40_000;
            }
            if i % 17 == 9 {
                ts -= 300_000;
            }
            Record {
                ts,
                source: "local".into(),
                device: format!("{}", i % 3).into(),
                fields: vec![
                    ("t".into(), Value::Float(((i * 37) % 101) as f64 / 4.0)),
                    ("n".into(), Value::Int(i % 7)),
                ],
            }
        })
        .collect()
}

const CRASH_ROUTE: &str = r#"
[routes.agg]
batch_records = 10
deadband = { absolute = 1.0, heartbeat = "30s" }
window = { size = "1m", aggregates = ["count", "min", "max", "mean", "sum", "first", "last", "stddev"], grace = "30s" }
"#;

fn route_seq(metrics: std::net::SocketAddr) -> u64 {
    let text = http_get(metrics, "/metrics");
    text.lines()
        .find_map(|l| l.strip_prefix("ferry_route_seq{route=\"agg\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_aggregation_then_restart_emits_exactly_the_uninterrupted_output() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let input = crash_input();
    let n = input.len() as u64;
    // The raw stream, written before the daemon starts.
    {
        let store = Store::open(&Store::file_in(&data), &StoreOptions::default()).unwrap();
        let ingest = Writer::spawn(
            store,
            WriterSettings::default().with_commit_interval(Duration::from_millis(10)),
            IngestMetrics::new(),
        );
        for chunk in input.chunks(500) {
            ingest
                .sink
                .submit_and_wait(chunk.iter().cloned().map(Item::Record).collect())
                .await
                .unwrap();
        }
        drop(ingest.sink);
        drop(ingest.cursors);
        ingest.task.await.unwrap();
    }
    let ports = free_ports(2).unwrap();
    let (broker, metrics) = (loopback(ports[0]), loopback(ports[1]));
    // Route commits ride group commits: a short interval lets the 300
    // commits of 10 records each finish in seconds.
    let config = format!(
        "[gateway]\ndata_dir = \"{}\"\n[store]\ncommit_interval = \"10ms\"\n\
         [sources.local]\ntype = \"mqtt_broker\"\nlisten = \"{broker}\"\n\
         [metrics]\nlisten = \"{metrics}\"\n{CRASH_ROUTE}",
        data.display()
    );
    let mut ferry = Ferry::start(dir.path(), &config);
    tokio::task::block_in_place(|| {
        ferry_testkit::wait_until_blocking(WAIT, "the route past 600", || {
            route_seq(metrics) >= 600
        })
        .unwrap();
        ferry.kill9();
    });
    let Ok(at_kill) = Store::open(&Store::file_in(&data), &StoreOptions::default()) else {
        panic!("the store does not open after kill -9");
    };
    let cursor = at_kill.cursor("route.agg").unwrap();
    assert!(
        cursor > 0 && cursor < n,
        "killed mid-aggregation (cursor {cursor} of {n})"
    );
    drop(at_kill);

    let mut ferry = Ferry::start(dir.path(), &config);
    tokio::task::block_in_place(|| {
        ferry_testkit::wait_until_blocking(WAIT, "the route through", || route_seq(metrics) >= n)
            .unwrap();
        assert!(ferry.terminate().success());
    });
    let store = Store::open(&Store::file_in(&data), &StoreOptions::default()).unwrap();
    let mut out = Vec::new();
    store
        .read_stream(&Stream::Route("agg".into()), 0, 100_000, &mut out)
        .unwrap();
    let emitted: Vec<Record> = out.into_iter().map(|s| s.record).collect();

    let text = format!("[sources.local]\ntype = \"mqtt_broker\"\n{CRASH_ROUTE}");
    let mut cfg = Config::from_toml(&text, Path::new("t.toml")).unwrap();
    let mut reference = Route::new("agg", cfg.routes.remove("agg").unwrap(), Default::default());
    let (mut expected, mut dropped) = (Vec::new(), Dropped::default());
    for r in &input {
        reference.push(r, &mut expected, &mut dropped);
    }
    assert!(dropped.too_late > 0 && expected.iter().any(|r| r.field("late").is_some()));
    assert_eq!(emitted.len(), expected.len());
    if let Some(i) = (0..expected.len()).find(|&i| emitted[i] != expected[i]) {
        panic!("output {i} differs:\n{:?}\n{:?}", emitted[i], expected[i]);
    }
}
