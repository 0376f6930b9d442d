//! SIGHUP with the real daemon: a bad config changes nothing; a good one
//! replaces the pipeline and the device registry together and a route's
//! deadband in place, while a window added to the route is logged as
//! needing a restart and not applied. Exact stored records and route output
//! are read back from the store file after the daemon stopped.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::{http_get, loopback, Ferry, Publisher};
use ferry_core::record::Value;
use ferry_gateway::store::{Store, StoreOptions, Stream};
use ferry_testkit::free_ports;

const WAIT: Duration = Duration::from_secs(30);

fn config(data: &Path, broker: SocketAddr, metrics: SocketAddr, rest: &str) -> String {
    format!(
        r#"
[gateway]
data_dir = "{data}"

[sources.local]
type = "mqtt_broker"
listen = "{broker}"
topics = ["sensors/{{device}}/telemetry"]

[metrics]
listen = "{metrics}"
{rest}"#,
        data = data.display()
    )
}

const V1: &str = r#"
[devices.7]
site = "a"

[[pipeline]]
name = "hot"
filter = "temperature > 100"

[[pipeline]]
enrich = ["site"]

[routes.r]
fields = ["temperature"]
deadband = { absolute = 10 }
"#;

fn hup(ferry: &Ferry) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(ferry.pid() as i32, libc::SIGHUP) };
}

/// Waits until the route has processed the raw stream through `seq`.
fn route_through(metrics: SocketAddr, seq: u64) {
    let want = format!("ferry_route_seq{{route=\"r\"}} {seq}\n");
    ferry_testkit::wait_until_blocking(WAIT, &want.clone(), || {
        http_get(metrics, "/metrics").contains(&want)
    })
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_pipeline_devices_and_route_thresholds_and_rejects_a_bad_config() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let ports = free_ports(2).unwrap();
    let (broker, metrics) = (loopback(ports[0]), loopback(ports[1]));
    let mut ferry = Ferry::start(dir.path(), &config(&data, broker, metrics, V1));
    let mut publisher = Publisher::connect(broker, "device-7").await.unwrap();
    let mut n = 0;
    let mut send = |t: i64| {
        let payload = format!(r#"{{"temperature": {t}, "n": {n}}}"#);
        n += 1;
        payload.into_bytes()
    };
    for t in [150, 50, 155] {
        publisher
            .publish("sensors/7/telemetry", send(t))
            .await
            .unwrap();
    }
    tokio::task::block_in_place(|| route_through(metrics, 2));

    // A config with a bad filter (and a new site): rejected whole.
    let bad = V1
        .replace("temperature > 100", "temperature >")
        .replace("site = \"a\"", "site = \"b\"");
    std::fs::write(&ferry.config, config(&data, broker, metrics, &bad)).unwrap();
    hup(&ferry);
    ferry.wait_log("still running with the previous one", WAIT);
    assert!(ferry.log().iter().any(|l| l.contains("pipeline[0].filter")));
    for t in [60, 165] {
        publisher
            .publish("sensors/7/telemetry", send(t))
            .await
            .unwrap();
    }
    tokio::task::block_in_place(|| route_through(metrics, 3));

    // A good one: the new filter and site apply together, the deadband
    // threshold in place; the window added to the route needs a restart.
    let good = V1
        .replace("temperature > 100", "temperature > 0")
        .replace("site = \"a\"", "site = \"b\"")
        .replace(
            "deadband = { absolute = 10 }",
            "deadband = { absolute = 1 }\nwindow = { size = \"1m\" }",
        );
    std::fs::write(&ferry.config, config(&data, broker, metrics, &good)).unwrap();
    hup(&ferry);
    ferry.wait_log("config reloaded", WAIT);
    let log = ferry.log().join("\n");
    assert!(
        log.contains("reload: pipeline and device registry replaced"),
        "{log}"
    );
    assert!(
        log.contains("reload: routes.r.window (added) changed, which needs a restart"),
        "{log}"
    );
    assert!(log.contains("routes_changed=[\"r\"]"), "{log}");
    for t in [60, 62] {
        publisher
            .publish("sensors/7/telemetry", send(t))
            .await
            .unwrap();
    }
    tokio::task::block_in_place(|| route_through(metrics, 5));
    let text = http_get(metrics, "/metrics");
    assert!(
        text.contains("ferry_pipeline_records_dropped_total{step=\"hot\",reason=\"filtered\"} 2\n"),
        "{text}"
    );
    assert!(ferry.terminate().success());

    let store = Store::open(&Store::file_in(&data), &StoreOptions::default()).unwrap();
    let mut raw = Vec::new();
    store.read_records(0, 100, &mut raw).unwrap();
    let rows: Vec<(Value, Value, Value)> = raw
        .iter()
        .map(|s| {
            let f = |k: &str| s.record.field(k).cloned().unwrap_or(Value::Bool(false));
            (f("n"), f("temperature"), f("site"))
        })
        .collect();
    let row = |n: i64, t: i64, site: &str| (Value::Int(n), Value::Int(t), Value::Str(site.into()));
    assert_eq!(
        rows,
        vec![
            row(0, 150, "a"),
            row(2, 155, "a"),
            row(4, 165, "a"),
            row(5, 60, "b"),
            row(6, 62, "b"),
        ]
    );
    // Deadband 10: 150, 165 (155 moved 5); then 1: 60, 62 (moved 2). No window.
    let mut out = Vec::new();
    store
        .read_stream(&Stream::Route("r".into()), 0, 100, &mut out)
        .unwrap();
    let temps: Vec<&Value> = out
        .iter()
        .map(|s| s.record.field("temperature").unwrap())
        .collect();
    assert_eq!(
        temps,
        [
            &Value::Int(150),
            &Value::Int(165),
            &Value::Int(60),
            &Value::Int(62)
        ]
    );
    assert!(out.iter().all(|s| s.record.fields.len() == 1));
}
