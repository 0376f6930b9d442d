//! Hostile requests to the query API of the running daemon (the real
//! `ferry` binary): time parameters at the ends of i64, overflowing and
//! non-positive steps, huge series lists and query strings, sequence numbers
//! at the ends of u64, bad percent-encoding; a panic in a request handler
//! (provoked through the debug build's test hooks), and one outside a
//! contained scope. Each request gets its exact status and error, and the
//! daemon must still answer a query with the stored reading afterwards.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{loopback, Ferry};
use ferry_testkit::{free_ports, wait_until_blocking};
use serde_json::{json, Value as J};

const WAIT: Duration = Duration::from_secs(20);
/// The documented range of query times: ±253402300800000 ms (the start of
/// the year 10000, and as far before 1970).
const MAX_TIME: i64 = 253_402_300_800_000;

struct Daemon {
    ferry: Ferry,
    broker: SocketAddr,
    api: SocketAddr,
    metrics: SocketAddr,
    /// The timestamp of the stored reading `D/F = 42`.
    ts: i64,
    _dir: tempfile::TempDir,
}

/// A daemon with an embedded broker and the API, `extra` added to `[api]`
/// (with `hooks`, the debug build's test hooks on), and one reading stored:
/// device `D`, field `F`, value 42.
fn start(extra: &str, hooks: bool) -> Daemon {
    start_with("", extra, hooks)
}

/// [`start`], `source` added to the broker source's table.
fn start_with(source: &str, extra: &str, hooks: bool) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let p = free_ports(3).unwrap();
    let (broker, api, metrics) = (loopback(p[0]), loopback(p[1]), loopback(p[2]));
    let config = format!(
        r#"
[gateway]
id = "gw"
data_dir = "{data}"

[sources.local]
type = "mqtt_broker"
listen = "{broker}"
topics = ["sensors/{{device}}/telemetry"]
{source}

[api]
listen = "{api}"
{extra}

[metrics]
listen = "{metrics}"
"#,
        data = dir.path().join("data").display(),
    );
    let path = dir.path().join("ferry.toml");
    std::fs::write(&path, config).unwrap();
    let env: &[(&str, &str)] = if hooks {
        &[("FERRY_TEST_HOOKS", "1")]
    } else {
        &[]
    };
    let ferry = Ferry::start_file_env(&path, env);
    publish(broker, &[("D", r#"{"F": 42}"#)]);
    let mut ts = 0;
    wait_until_blocking(WAIT, "the reading D/F is stored", || {
        let (status, _, body) = get(api, "/api/v1/devices/D/latest");
        if status == 200 {
            ts = body["fields"]["F"]["ts"].as_i64().unwrap();
        }
        status == 200
    })
    .unwrap();
    Daemon {
        ferry,
        broker,
        api,
        metrics,
        ts,
        _dir: dir,
    }
}

/// Publishes each `(device, payload)` to the embedded broker at `broker`,
/// in order, waiting for each PUBACK.
fn publish(broker: SocketAddr, readings: &[(&str, &str)]) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut p = common::Publisher::connect(broker, "hostile-api")
            .await
            .unwrap();
        for (device, payload) in readings {
            p.publish(&format!("sensors/{device}/telemetry"), payload.as_bytes())
                .await
                .unwrap();
        }
    });
}

/// GET `path` from the API: status, head (lowercase), body as JSON (a
/// string if it is not JSON).
fn get(api: SocketAddr, path: &str) -> (u16, String, J) {
    let (status, head, text) = common::get_closed(api, path, WAIT);
    assert!(!head.is_empty(), "no HTTP answer to {path}");
    let head = head.to_ascii_lowercase();
    assert_ne!(status, 0, "no status in {head:?}");
    let body = serde_json::from_str(&text).unwrap_or(J::String(text));
    (status, head, body)
}

/// Asserts `path` is answered `status` with exactly `{"error", "code"}`.
fn refused(d: &Daemon, path: &str, status: u16, code: &str, error: &str) {
    let (got, _, body) = get(d.api, path);
    let shown: String = path.chars().take(200).collect();
    let body = if body.to_string().len() > 2000 {
        J::String(format!("{}...", &body.to_string()[..2000]))
    } else {
        body
    };
    assert_eq!(
        (got, body),
        (status, json!({ "error": error, "code": code })),
        "{shown}"
    );
}

/// The one series `D/F` of a query's answer.
fn one_series(d: &Daemon, path: &str) -> J {
    let (status, _, body) = get(d.api, path);
    assert_eq!(status, 200, "{path}: {body}");
    assert_eq!(body["series"].as_array().map(Vec::len), Some(1), "{body}");
    body
}

/// The daemon is up and answers a query with the stored reading.
fn assert_serving(d: &mut Daemon) {
    let body = one_series(d, "/api/v1/query?series=D/F&from=0");
    assert_eq!(body["series"][0]["points"], json!([[d.ts, 42]]), "{body}");
    assert!(
        d.ferry.try_status().is_none(),
        "the daemon exited; its log:\n{}",
        d.ferry.log().join("\n")
    );
}

fn metric(d: &Daemon, sample: &str) -> f64 {
    common::metric_sample(d.metrics, sample).unwrap_or(0.0)
}

const MIN: &str = "-9223372036854775808";
const MAX: &str = "9223372036854775807";

#[test]
fn the_minimum_i64_as_from_answers_the_stored_reading() {
    let mut d = start("", false);
    let body = one_series(&d, &format!("/api/v1/query?series=D/F&from={MIN}"));
    assert_eq!(body["from"], json!(-MAX_TIME));
    assert_eq!(body["series"][0]["points"], json!([[d.ts, 42]]));
    assert_serving(&mut d);
}

#[test]
fn a_huge_step_over_the_whole_time_range_answers_the_reading_in_its_bucket() {
    let mut d = start("", false);
    for step in [
        MAX,
        "9223372036854775806",
        "253402300800000",
        "1000000000000000",
    ] {
        let body = one_series(
            &d,
            &format!("/api/v1/query?series=D/F&from={MIN}&to={MAX}&step={step}"),
        );
        assert_eq!(
            (&body["from"], &body["to"]),
            (&json!(-MAX_TIME), &json!(MAX_TIME))
        );
        let buckets = &body["series"][0]["buckets"];
        assert_eq!(
            buckets.as_array().map(Vec::len),
            Some(1),
            "step={step}: {body}"
        );
        assert_eq!(
            (&buckets[0]["ts"], &buckets[0]["count"], &buckets[0]["last"]),
            (&json!(0), &json!(1), &json!(42)),
            "step={step}: {body}"
        );
    }
    assert_serving(&mut d);
}

#[test]
fn i64_extremes_in_every_time_parameter_are_clamped_to_the_documented_range() {
    let mut d = start("", false);
    let ts = d.ts;
    // (from, to, the answer's from and to, whether the reading is in range)
    let cases: Vec<(&str, &str, i64, i64, bool)> = vec![
        (MIN, MAX, -MAX_TIME, MAX_TIME, true),
        (MIN, MIN, -MAX_TIME, -MAX_TIME, false),
        (MAX, MAX, MAX_TIME, MAX_TIME, false),
        ("0", MAX, 0, MAX_TIME, true),
        ("now-9223372036854775807", MAX, -MAX_TIME, MAX_TIME, true),
        ("now-300000y", MAX, -MAX_TIME, MAX_TIME, true),
        // Past the ends of i64 itself: past the ends of the range too.
        (
            "-9223372036854775809",
            "99999999999999999999",
            -MAX_TIME,
            MAX_TIME,
            true,
        ),
        ("-300000y", "0", -MAX_TIME, 0, false),
    ];
    for (from, to, f, t, found) in cases {
        let path = format!("/api/v1/query?series=D/F&from={from}&to={to}");
        let body = one_series(&d, &path);
        assert_eq!(
            (&body["from"], &body["to"]),
            (&json!(f), &json!(t)),
            "{path}"
        );
        let points = if found { json!([[ts, 42]]) } else { json!([]) };
        assert_eq!(body["series"][0]["points"], points, "{path}");
        // The same in buckets of 10,000 days (at most 587 over the whole
        // range): the reading's bucket, or none.
        let body = one_series(&d, &format!("{path}&step=10000d"));
        let n = body["series"][0]["buckets"].as_array().map(Vec::len);
        assert_eq!(n, Some(usize::from(found)), "{path}&step=10000d: {body}");
    }
    // `to` alone at the ends: the default `from` is an hour before it.
    let body = one_series(&d, &format!("/api/v1/query?series=D/F&to={MIN}"));
    assert_eq!(
        (&body["from"], &body["to"]),
        (&json!(-MAX_TIME), &json!(-MAX_TIME))
    );
    let body = one_series(&d, &format!("/api/v1/query?series=D/F&to={MAX}"));
    assert_eq!(
        (&body["from"], &body["to"]),
        (&json!(MAX_TIME - 3_600_000), &json!(MAX_TIME))
    );
    // `from` at the maximum, `to` now: a range that ends before it starts.
    let (status, _, body) = get(d.api, &format!("/api/v1/query?series=D/F&from={MAX}"));
    assert_eq!(
        (status, &body["code"]),
        (400, &json!("bad_parameter")),
        "{body}"
    );
    let error = body["error"].as_str().unwrap();
    assert!(
        error.starts_with(&format!("`from` ({MAX_TIME}) is after `to` (")),
        "{error}"
    );
    refused(
        &d,
        "/api/v1/query?series=D/F&from=now-99999999999999999999",
        400,
        "bad_parameter",
        "`from=now-99999999999999999999`: too long; at most 9223372036854775807ms",
    );
    refused(
        &d,
        "/api/v1/query?series=D/F&from=now-600000000000y",
        400,
        "bad_parameter",
        "`from=now-600000000000y`: too long; at most 9223372036854775807ms",
    );
    assert_serving(&mut d);
}

#[test]
fn zero_negative_and_overflowing_steps_are_refused_naming_step() {
    let mut d = start("", false);
    for step in ["0", "-1", MIN, "0ms", "0s"] {
        refused(
            &d,
            &format!("/api/v1/query?series=D/F&step={step}"),
            400,
            "bad_parameter",
            &format!("`step={step}`: must be at least 1ms"),
        );
    }
    for step in [
        "9223372036854775808",
        "99999999999999999999",
        "600000000000y",
    ] {
        refused(
            &d,
            &format!("/api/v1/query?series=D/F&step={step}"),
            400,
            "bad_parameter",
            &format!("`step={step}`: too long; at most 9223372036854775807ms"),
        );
    }
    // The smallest step over the documented range: refused before any work
    // by the bound on buckets, not after scanning.
    refused(
        &d,
        &format!("/api/v1/query?series=D/F&from={MIN}&to={MAX}&step=1"),
        400,
        "too_many_points",
        "the query could return up to 506804601600000 buckets (1 series × 506804601600000 \
         buckets of `step=1ms` from `from` to `to`), more than `limit` (100000): narrow the \
         range, ask for fewer series or a larger `step`",
    );
    assert_serving(&mut d);
}

#[test]
fn huge_series_lists_and_query_strings_are_refused_before_any_work() {
    let mut d = start("", false);
    // 5,900 repeated series in buckets of 1 ms over the last hour.
    let many = |n: usize| "series=D/F&".repeat(n);
    let start = Instant::now();
    refused(
        &d,
        &format!("/api/v1/query?{}step=1ms", many(5900)),
        400,
        "query_too_long",
        "the query string is 64908 bytes long; at most 32768 ([api] max_query_bytes)",
    );
    refused(
        &d,
        &format!("/api/v1/query?{}step=1ms", many(257)),
        400,
        "too_many_series",
        "more than 256 `series` parameters; at most 256 ([api] max_series)",
    );
    refused(
        &d,
        &format!("/api/v1/query?{}step=1ms", many(256)),
        400,
        "too_many_points",
        "the query could return up to 921600000 buckets (256 series × 3600000 buckets of \
         `step=1ms` from `from` to `to`), more than `limit` (100000): narrow the range, ask \
         for fewer series or a larger `step`",
    );
    refused(
        &d,
        &format!("/api/v1/query?{}step=1ms&limit=10", many(2)),
        400,
        "too_many_points",
        "the query could return up to 7200000 buckets (2 series × 3600000 buckets of \
         `step=1ms` from `from` to `to`), more than `limit` (10): narrow the range, ask for \
         fewer series or a larger `step`",
    );
    let took = start.elapsed();
    assert!(took < Duration::from_secs(3), "took {took:?}");
    // Every other route bounds its query string too.
    refused(
        &d,
        &format!("/api/v1/records?{}", "x".repeat(40_000)),
        400,
        "query_too_long",
        "the query string is 40000 bytes long; at most 32768 ([api] max_query_bytes)",
    );
    // Within the caps, 256 series of one minute buckets are answered.
    let (status, _, body) = get(d.api, &format!("/api/v1/query?{}step=1m", many(256)));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["series"].as_array().map(Vec::len), Some(256));
    assert_eq!(
        metric(
            &d,
            "ferry_api_requests_failed_total{reason=\"query_too_long\"}"
        ),
        2.0
    );
    assert_eq!(
        metric(
            &d,
            "ferry_api_requests_failed_total{reason=\"too_many_series\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &d,
            "ferry_api_requests_failed_total{reason=\"too_many_points\"}"
        ),
        2.0
    );
    assert_serving(&mut d);
}

#[test]
fn configured_caps_on_series_and_query_strings_apply() {
    let mut d = start("max_series = 2\nmax_query_bytes = \"1 KiB\"", false);
    refused(
        &d,
        "/api/v1/query?series=D/F&series=D/F&series=D/F",
        400,
        "too_many_series",
        "more than 2 `series` parameters; at most 2 ([api] max_series)",
    );
    refused(
        &d,
        &format!("/api/v1/query?series=D/F&from={}", "1".repeat(1009)),
        400,
        "query_too_long",
        "the query string is 1025 bytes long; at most 1024 ([api] max_query_bytes)",
    );
    assert_serving(&mut d);
}

#[test]
fn sequence_numbers_and_counts_at_the_ends_of_their_types() {
    let mut d = start("", false);
    let u64_max = u64::MAX;
    for path in [
        format!("/api/v1/records?after={u64_max}"),
        format!("/api/v1/records?after={u64_max}&device=D"),
        format!("/api/v1/records?after={u64_max}&device=nobody"),
    ] {
        let (status, _, body) = get(d.api, &path);
        assert_eq!(
            (status, body),
            (200, json!({ "records": [], "next": u64_max })),
            "{path}"
        );
    }
    let (status, _, body) = get(d.api, &format!("/api/v1/dead?after={u64_max}"));
    assert_eq!(
        (status, body),
        (200, json!({ "dead": [], "next": u64_max }))
    );
    // The stored reading is seq 1: `after` 0 finds it, with and without device.
    for path in [
        "/api/v1/records?after=0",
        "/api/v1/records?after=0&device=D",
    ] {
        let (status, _, body) = get(d.api, path);
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(body["records"][0]["fields"], json!({ "F": 42 }), "{path}");
    }
    for (path, error) in [
        (
            "/api/v1/records?after=18446744073709551616",
            "`after=18446744073709551616`: not a sequence number",
        ),
        ("/api/v1/dead?after=-1", "`after=-1`: not a sequence number"),
        (
            "/api/v1/records?limit=18446744073709551616",
            "`limit=18446744073709551616`: must be a whole number from 1 to 1000",
        ),
        (
            "/api/v1/dead?limit=0",
            "`limit=0`: must be a whole number from 1 to 1000",
        ),
        (
            "/api/v1/query?series=D/F&limit=-1",
            "`limit=-1`: must be a whole number from 1 to 100000",
        ),
        (
            "/api/v1/records?after=0&wait=0",
            "`wait=0`: must be at least 1ms",
        ),
        (
            "/api/v1/records?after=0&wait=99999999999999999999",
            "`wait=99999999999999999999`: too long; at most 9223372036854775807ms",
        ),
    ] {
        refused(&d, path, 400, "bad_parameter", error);
    }
    assert_serving(&mut d);
}

#[test]
fn bad_percent_encoding_is_a_json_error_naming_what_is_wrong() {
    let mut d = start("", false);
    refused(
        &d,
        "/api/v1/query?series=D%FF/F",
        400,
        "bad_parameter",
        "the query string is not valid UTF-8 once percent-decoded",
    );
    refused(
        &d,
        "/api/v1/devices?%FF=1",
        400,
        "bad_parameter",
        "the query string is not valid UTF-8 once percent-decoded",
    );
    refused(
        &d,
        "/api/v1/devices/%FF/latest",
        400,
        "bad_parameter",
        "the device in the path is not valid UTF-8 once percent-decoded",
    );
    refused(
        &d,
        "/api/v1/devices/D/latest?x=1",
        400,
        "bad_parameter",
        "unknown parameter `x`; this route takes no parameters",
    );
    assert_serving(&mut d);
}

#[test]
fn a_panic_in_a_request_handler_is_a_500_counted_and_the_daemon_runs_on() {
    let mut d = start("", true);
    let sample = "ferry_api_requests_failed_total{reason=\"panic\"}";
    for (place, message) in [
        ("handler", "test hook: a panic in a request handler"),
        ("blocking", "test hook: a panic on the blocking pool"),
        ("handler", "test hook: a panic in a request handler"),
    ] {
        refused(
            &d,
            &format!("/api/v1/test/panic?in={place}"),
            500,
            "internal",
            &format!(
                "the request failed on a bug in its handling (panicked: {message}); the \
                 gateway runs on"
            ),
        );
        assert_serving(&mut d);
    }
    assert_eq!(metric(&d, sample), 3.0);
    // The slot the panicking closure held is free again.
    assert_eq!(metric(&d, "ferry_api_queries_running"), 0.0);
    let log = d.ferry.log();
    let logged = log
        .iter()
        .filter(|l| l.contains("an API request's handling panicked; answered 500"))
        .count();
    assert_eq!(logged, 3, "{}", log.join("\n"));
}

#[test]
fn a_panic_outside_a_contained_scope_still_aborts_the_daemon() {
    let mut d = start("", true);
    let (status, _, body) = get(d.api, "/api/v1/test/panic?in=detached");
    assert_eq!((status, body), (200, json!({ "spawned": true })));
    let exit = d.ferry.wait_exit(WAIT).expect("the daemon aborts");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(exit.signal(), Some(libc::SIGABRT), "{exit:?}");
    let log = d.ferry.log();
    assert!(
        log.iter()
            .any(|l| l.contains("test hook: a panic outside a contained scope")),
        "{}",
        log.join("\n")
    );
}

#[test]
fn queries_beyond_the_concurrent_cap_are_503_with_retry_after_and_counted() {
    let mut d = start("max_concurrent_queries = 2", true);
    let api = d.api;
    let holders: Vec<_> = (0..2)
        .map(|_| std::thread::spawn(move || get(api, "/api/v1/test/hold")))
        .collect();
    wait_until_blocking(WAIT, "both query slots are held", || {
        metric(&d, "ferry_api_queries_running") == 2.0
    })
    .unwrap();
    for path in [
        "/api/v1/query?series=D/F&from=0",
        "/api/v1/devices",
        "/api/v1/status",
        "/api/v1/records",
    ] {
        let (status, head, body) = get(d.api, path);
        assert_eq!(
            (status, body),
            (
                503,
                json!({
                    "error": "2 queries are running already ([api] max_concurrent_queries); \
                              retry in a second",
                    "code": "busy"
                })
            ),
            "{path}"
        );
        assert!(head.contains("\r\nretry-after: 1\r\n"), "{path}: {head}");
    }
    assert_eq!(
        metric(&d, "ferry_api_requests_failed_total{reason=\"busy\"}"),
        4.0
    );
    // Parameters are checked before a slot is asked for.
    refused(
        &d,
        "/api/v1/query?series=D/F&step=0",
        400,
        "bad_parameter",
        "`step=0`: must be at least 1ms",
    );
    let (status, _, body) = get(d.api, "/api/v1/test/release");
    assert_eq!((status, body), (200, json!({ "released": true })));
    for h in holders {
        let (status, _, body) = h.join().unwrap();
        assert_eq!((status, body), (200, json!({ "released": true })));
    }
    assert_eq!(metric(&d, "ferry_api_queries_running"), 0.0);
    assert_serving(&mut d);
}

/// A daemon whose device `S` stamped its own times (`timestamp_field`):
/// one reading at 1970-01-01 and two in the last minutes of 9999, so a raw
/// query of `S/F` over the whole range of times looks in each of some 70
/// million hours (a lookup or sixty each: minutes of CPU) for three
/// points. `extra` is added to `[api]`.
fn start_with_a_millennium_series(extra: &str) -> Daemon {
    let d = start_with(r#"timestamp_field = "ts""#, extra, false);
    publish(
        d.broker,
        &[
            ("S", r#"{"ts": 0, "F": 1}"#),
            ("S", r#"{"ts": 253402300680000, "F": 2}"#),
            ("S", r#"{"ts": 253402300799000, "F": 3}"#),
        ],
    );
    // The transaction that stores a reading also writes the block its
    // series has moved on from: once the third is committed, the blocks of
    // the first two are (the series' extent spans the millennia).
    wait_until_blocking(WAIT, "S's third reading is stored", || {
        let (status, _, body) = get(d.api, "/api/v1/devices/S/latest");
        status == 200 && body["fields"]["F"]["value"] == json!(3)
    })
    .unwrap();
    d
}

/// The path of the slow query of [`start_with_a_millennium_series`].
fn millennium_query() -> String {
    format!("/api/v1/query?series=S/F&from=0&to={MAX_TIME}")
}

#[test]
fn a_query_past_request_timeout_stops_its_reads_and_frees_its_slot() {
    let mut d =
        start_with_a_millennium_series("max_concurrent_queries = 1\nrequest_timeout = \"300ms\"");
    let asked = Instant::now();
    let (status, _, body) = get(d.api, &millennium_query());
    assert_eq!(
        (status, body),
        (
            503,
            json!({
                "error": "the request was not answered within api.request_timeout (300ms)",
                "code": "request_timeout"
            })
        )
    );
    assert!(asked.elapsed() >= Duration::from_millis(300));
    // The only slot is free within a bounded time of the timeout (the read
    // ends within one hour's lookups of its cancel), not minutes later when
    // the read would have ended: a query that follows is answered.
    let timed_out = Instant::now();
    wait_until_blocking(
        Duration::from_secs(2),
        "the query slot is free again",
        || metric(&d, "ferry_api_queries_running") == 0.0,
    )
    .unwrap();
    let freed = timed_out.elapsed();
    let (status, _, body) = get(d.api, "/api/v1/devices/S/latest");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["fields"]["F"]["value"], json!(3), "{body}");
    assert_eq!(metric(&d, "ferry_api_queries_cancelled_total"), 1.0);
    assert_eq!(
        metric(&d, "ferry_api_requests_failed_total{reason=\"busy\"}"),
        0.0
    );
    // The hours are visited lazily: 70 million of them cost no memory.
    let peak = common::peak_rss_kib(d.ferry.pid());
    assert!(peak < 150 * 1024, "peak RSS {peak} KiB");
    eprintln!("slot free {freed:?} after the timeout; peak RSS {peak} KiB");
    assert_serving(&mut d);
}

#[test]
fn a_query_whose_client_goes_away_stops_its_reads_and_frees_its_slot() {
    use std::io::Write;
    let mut d = start_with_a_millennium_series("max_concurrent_queries = 1");
    let mut s = std::net::TcpStream::connect(d.api).unwrap();
    write!(s, "GET {} HTTP/1.1\r\nHost: x\r\n\r\n", millennium_query()).unwrap();
    wait_until_blocking(WAIT, "the query is running", || {
        metric(&d, "ferry_api_queries_running") == 1.0
    })
    .unwrap();
    drop(s);
    // Well before `request_timeout` (30 s by default).
    wait_until_blocking(
        Duration::from_secs(2),
        "the query slot is free again",
        || metric(&d, "ferry_api_queries_running") == 0.0,
    )
    .unwrap();
    assert_eq!(metric(&d, "ferry_api_queries_cancelled_total"), 1.0);
    assert_serving(&mut d);
}

#[test]
fn ferry_validate_names_each_bad_api_cap_by_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ferry.toml");
    let config = format!(
        "[gateway]\nid = \"gw\"\ndata_dir = \"{}\"\n\n[sources.local]\ntype = \"mqtt_broker\"\n\
         listen = \"127.0.0.1:1883\"\n\n[api]\nmax_series = 0\nmax_query_bytes = \"10 B\"\n\
         max_concurrent_queries = 0\nmax_points = 0\n",
        dir.path().display()
    );
    std::fs::write(&path, config).unwrap();
    let out = std::process::Command::new(common::ferry_bin())
        .args(["validate", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let p = path.display();
    assert_eq!(out.status.code(), Some(64));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "ferry: config error: {p}:10: api.max_series: invalid value: integer `0`, expected \
             an integer of at least 1\n\
             ferry: config error: {p}:11: api.max_query_bytes: must be between 1 KiB and 1 MiB, \
             got 10 bytes\n\
             ferry: config error: {p}:12: api.max_concurrent_queries: invalid value: integer \
             `0`, expected an integer of at least 1\n\
             ferry: config error: {p}:13: api.max_points: invalid value: integer `0`, expected \
             an integer of at least 1\n"
        )
    );
}
