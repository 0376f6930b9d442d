//! The metrics a running `ferry` exports: Prometheus naming conventions
//! (checked by `promtool check metrics`), build info, and the shipped
//! Grafana dashboard (`packaging/grafana-dashboard.json`) asking only for
//! metrics that exist.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use common::{http_get, loopback, seed_payload, seed_topic, Ferry, Publisher};
use ferry_testkit::free_ports;

/// The body of a `/metrics` answer, from a daemon that stored a reading,
/// dead-lettered a message and has an uplink (whose broker is not there).
async fn scrape() -> String {
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(3).unwrap();
    let config = format!(
        r#"
[gateway]
data_dir = "{data}"

[sources.local]
type = "mqtt_broker"
listen = "127.0.0.1:{broker}"
topics = ["sensors/{{device}}/telemetry"]

[uplinks.cloud]
endpoint = "127.0.0.1:{nowhere}"
plaintext = true
reconnect_min = "100ms"
reconnect_max = "200ms"

[metrics]
listen = "127.0.0.1:{metrics}"
"#,
        data = dir.path().join("data").display(),
        broker = ports[0],
        nowhere = ports[1],
        metrics = ports[2],
    );
    let _ferry = Ferry::start(dir.path(), &config);
    let mut publisher = Publisher::connect(loopback(ports[0]), "dev").await.unwrap();
    publisher
        .publish(&seed_topic(1), seed_payload(1))
        .await
        .unwrap();
    publisher
        .publish(&seed_topic(2), b"not json".to_vec())
        .await
        .unwrap();
    // Both are committed, and the uplink has failed to connect since: its
    // backlog says so.
    let mut text = String::new();
    ferry_testkit::wait_until_blocking(
        std::time::Duration::from_secs(30),
        "both committed and the uplink's backlog counted",
        || {
            text = http_get(loopback(ports[2]), "/metrics");
            text.contains("ferry_ingest_records_stored_total 1")
                && text.contains("ferry_ingest_dead_letters_stored_total 1")
                && text.contains("ferry_uplink_backlog_records{uplink=\"cloud\"} 1")
        },
    )
    .unwrap_or_else(|e| panic!("{e}; last scrape:\n{text}"));
    let body = text.split_once("\r\n\r\n").unwrap().1;
    body.to_owned()
}

/// OpenMetrics text as the classic Prometheus text format, which is what
/// promtool 2.x lints: a counter family `x` is `x_total` there, and
/// `# UNIT` and `# EOF` do not exist. Prometheus ingests both as the same
/// series.
fn classic(openmetrics: &str) -> String {
    let counters: BTreeSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::new();
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{p}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// Every sample name in an exposition.
fn sample_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_owned())
        .chain(
            // Families without samples yet (no label set seen): their
            // names as samples would have them.
            text.lines()
                .filter_map(|l| l.strip_prefix("# TYPE "))
                .flat_map(|l| {
                    let (name, kind) = l.split_once(' ').unwrap();
                    match kind {
                        "counter" => vec![format!("{name}_total")],
                        "histogram" => ["_bucket", "_sum", "_count"]
                            .iter()
                            .map(|s| format!("{name}{s}"))
                            .collect(),
                        _ => vec![name.to_owned()],
                    }
                }),
        )
        .collect()
}

/// The `ferry_*` metric names in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("ferry_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    out
}

fn exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr" | "definition", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_the_conventions_and_the_dashboard_uses_only_them() {
    let text = scrape().await;

    // Build info, and the families the issue asks for.
    let version = env!("CARGO_PKG_VERSION");
    let arch = std::env::consts::ARCH;
    let info = format!("ferry_build_info{{version=\"{version}\",arch=\"{arch}\"}} 1");
    assert!(text.contains(&info), "no `{info}` in\n{text}");
    let names = sample_names(&text);
    for wanted in [
        "ferry_ingest_records_received_total",
        "ferry_ingest_records_stored_total",
        "ferry_ingest_records_rejected_total",
        "ferry_ingest_dead_letters_stored_total",
        "ferry_ingest_commit_duration_seconds_bucket",
        "ferry_store_file_bytes",
        "ferry_store_records",
        "ferry_ingest_records_dropped_total",
        "ferry_uplink_backlog_records",
        "ferry_uplink_oldest_unsent_age_seconds",
        "ferry_uplink_connected",
        "ferry_uplink_publishes_total",
        "ferry_uplink_publish_bytes_total",
        "ferry_uplink_puback_latency_seconds_bucket",
        "ferry_uplink_connects_total",
        "ferry_modbus_requests_total",
        "ferry_modbus_errors_total",
        "ferry_modbus_exceptions_total",
        "ferry_modbus_round_trip_seconds_bucket",
        "ferry_build_info",
    ] {
        assert!(names.contains(wanted), "{wanted} is not exported");
    }

    // promtool's lint: names, suffixes, units, help texts.
    let mut promtool = match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => panic!(
            "cannot run promtool ({e}): install it with `apt-get install prometheus` \
             (bash .ci/run does)"
        ),
    };
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(classic(&text).as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}\n--- input:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        classic(&text)
    );

    // The dashboard asks only for what exists.
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/grafana-dashboard.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut all = Vec::new();
    exprs(&dashboard, &mut all);
    assert!(all.len() > 20, "{all:?}");
    let used: BTreeSet<String> = all.iter().flat_map(|e| metric_names(e)).collect();
    let missing: Vec<&String> = used.iter().filter(|n| !names.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "the dashboard uses unknown metrics: {missing:?}"
    );
    assert!(used.len() >= 30, "{used:?}");
}

#[test]
fn classic_format_renames_counter_families_only() {
    let om = "# HELP a_b Things.\n# TYPE a_b counter\na_b_total 1\n# HELP c Bytes.\n\
              # TYPE c_bytes gauge\n# UNIT c_bytes bytes\nc_bytes 2\n# EOF\n";
    assert_eq!(
        classic(om),
        "# HELP a_b_total Things.\n# TYPE a_b_total counter\na_b_total 1\n# HELP c Bytes.\n\
         # TYPE c_bytes gauge\nc_bytes 2\n"
    );
    assert_eq!(
        metric_names("rate(ferry_a_total{x=\"ferry\"}[5m]) / ferry_b"),
        ["ferry_a_total", "ferry_b"]
    );
}
