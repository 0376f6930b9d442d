//! The query API over HTTP, and the CLI commands that read it, against a
//! store with known data.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use ferry_core::record::{DeadLetter, Record, Value};
use ferry_core::sink::Item;
use ferry_gateway::api::client::{Client, Response};
use ferry_gateway::api::{serve, ApiContext, RequestLimits};
use ferry_gateway::config::Config;
use ferry_gateway::metrics::{ApiMetrics, IngestMetrics, PipelineMetrics, UplinkMetrics};
use ferry_gateway::query::{Engine, Index, IndexOptions};
use ferry_gateway::route::spawn_route;
use ferry_gateway::store::{Store, StoreOptions, Stream, Writer, WriterSettings};
use serde_json::{json, Value as J};
use tokio_util::sync::CancellationToken;

const T0: i64 = 1_764_000_000_000;
const TOKEN: &str = "s3cret";

struct Api {
    _dir: tempfile::TempDir,
    store: Store,
    ingest: Writer,
    addr: String,
    cancel: CancellationToken,
    /// The uplinks' metrics the API reads (no uplink runs: a test sets them).
    uplinks: UplinkMetrics,
}

fn reading(i: i64) -> Record {
    Record {
        ts: T0 + i * 1000,
        source: Arc::from("local"),
        device: "7".into(),
        fields: vec![
            ("voltage".into(), Value::Int(i)),
            ("temperature".into(), Value::Float(20.0 + i as f64 / 4.0)),
            (
                "state".into(),
                Value::Str(if i < 90 { "idle" } else { "run" }.into()),
            ),
            ("count".into(), Value::Int(BIG + i)),
        ],
    }
}

/// 2^53 + 1: the first integer an `f64` cannot hold.
const BIG: i64 = 9_007_199_254_740_993;

fn other(i: i64) -> Record {
    Record {
        ts: T0 + 200_000 + i * 1000,
        source: Arc::from("local"),
        device: "8".into(),
        fields: vec![("flow".into(), Value::Int(i))],
    }
}

/// 120 readings of device 7 (T0, T0+1s, ...), one dead letter, an uplink
/// `cloud` that has delivered nothing; the API on a free port.
async fn start() -> Api {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&Store::file_in(dir.path()), &StoreOptions::default()).unwrap();
    let index = Index::open(&store, IndexOptions::default()).unwrap();
    let ingest = Writer::spawn(
        store.clone(),
        WriterSettings {
            index: Some(index.clone()),
            ..WriterSettings::default().with_commit_interval(Duration::from_millis(10))
        },
        IngestMetrics::new(),
    );
    let mut items: Vec<Item> = (0..120).map(|i| Item::Record(reading(i))).collect();
    items.push(Item::Dead(DeadLetter::new(
        Arc::from("local"),
        "sensors/7/telemetry",
        "not_json",
        "not JSON: expected value at line 1 column 1",
        b"oops",
    )));
    ingest.sink.submit_and_wait(items).await.unwrap();
    // A route of one-minute sums, and an uplink `summary` that sends it.
    let cancel = CancellationToken::new();
    let text = "[sources.local]\ntype = \"mqtt_broker\"\n[routes.sums]\n\
                window = { size = \"1m\", aggregates = [\"sum\"] }\n";
    let mut config = Config::from_toml(text, Path::new("t.toml")).unwrap();
    spawn_route(
        "sums",
        config.routes.remove("sums").unwrap(),
        store.clone(),
        ingest.routes.clone(),
        PipelineMetrics::new(),
        cancel.clone(),
    );
    let route = Stream::Route("sums".into());
    let mut heads = store.watch_heads();
    tokio::time::timeout(Duration::from_secs(30), async {
        while store.stream_head(&route).unwrap() == 0 {
            heads.changed().await.unwrap();
        }
    })
    .await
    .expect("the route emits the first minute's sums");
    let (_names_tx, names) =
        tokio::sync::watch::channel(vec![Arc::from("cloud"), Arc::from("summary")]);
    std::mem::forget(_names_tx);
    let store_for_test = store.clone();
    let uplinks = UplinkMetrics::new();
    let ctx = ApiContext {
        engine: Engine::new(store, index),
        gateway: "test-gw".into(),
        token: Some(TOKEN.into()),
        max_points: 1000,
        sources: vec![("local".into(), "mqtt_broker")],
        ingest: IngestMetrics::new(),
        uplinks: uplinks.clone(),
        uplink_names: names,
        uplink_streams: HashMap::from([("summary".to_owned(), route)]),
        limits: RequestLimits::new(256, 32 * 1024, 4),
        metrics: ApiMetrics::new(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(serve(listener, Arc::new(ctx), cancel.clone()));
    Api {
        _dir: dir,
        store: store_for_test,
        ingest,
        addr,
        cancel,
        uplinks,
    }
}

/// The drain gauges of a sending uplink `cloud` (123.5 records/s, 42 s to
/// go, a 19.5 kB/s link) and a stalled `summary` (an infinite estimate).
fn set_drain(api: &Api) {
    let (cloud, summary) = (
        UplinkMetrics::label("cloud"),
        UplinkMetrics::label("summary"),
    );
    let m = &api.uplinks;
    m.send_rate.get_or_create(&cloud).set(123.5);
    m.drain_eta.get_or_create(&cloud).set(42.0);
    m.link_rate.get_or_create(&cloud).set(19_512.0);
    m.batch_target.get_or_create(&cloud).set(39_024);
    m.drain_eta.get_or_create(&summary).set(f64::INFINITY);
}

async fn get_with(addr: &str, token: Option<&str>, path: &str) -> Response {
    let client = Client::new(addr, token.map(str::to_owned)).unwrap();
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || client.get(&path).unwrap())
        .await
        .unwrap()
}

async fn get(api: &Api, path: &str) -> (u16, J) {
    let r = get_with(&api.addr, Some(TOKEN), path).await;
    (r.status, serde_json::from_str(&r.body).unwrap())
}

async fn bad(api: &Api, path: &str) -> String {
    let (status, body) = get(api, path).await;
    assert!(status == 400 || status == 404, "{path}: {status} {body}");
    body["error"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_answers_exactly_on_known_data() {
    let api = start().await;
    // Without the token: 401; the page itself is public.
    let r = get_with(&api.addr, None, "/api/v1/devices").await;
    assert_eq!(r.status, 401);
    let r = get_with(&api.addr, Some("wrong"), "/api/v1/devices").await;
    assert_eq!(r.status, 401);
    let page = get_with(&api.addr, None, "/").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("<title>Ferry status</title>"));

    let (status, body) = get(&api, "/api/v1/devices").await;
    assert_eq!(status, 200);
    assert_eq!(
        body["devices"],
        json!([{ "device": "7", "field_count": 4, "last_ts": T0 + 119_000, "fields": [
            { "field": "count", "first_ts": T0, "last_ts": T0 + 119_000, "last": BIG + 119, "last_seq": 120 },
            { "field": "state", "first_ts": T0, "last_ts": T0 + 119_000, "last": "run", "last_seq": 120 },
            { "field": "temperature", "first_ts": T0, "last_ts": T0 + 119_000, "last": 49.75, "last_seq": 120 },
            { "field": "voltage", "first_ts": T0, "last_ts": T0 + 119_000, "last": 119, "last_seq": 120 },
        ]}])
    );
    assert_eq!(body["next"], J::Null);
    assert_eq!(
        (&body["complete"], &body["index_lag_records"]),
        (&json!(true), &json!(0))
    );
    let (_, body) = get(&api, "/api/v1/devices/7/latest").await;
    assert_eq!(
        (&body["complete"], &body["index_lag_records"]),
        (&json!(true), &json!(0))
    );
    assert_eq!(
        body["fields"]["voltage"],
        json!({ "ts": T0 + 119_000, "value": 119, "seq": 120 })
    );
    assert_eq!(body["fields"]["state"]["value"], "run");
    // Integers above 2^53 exactly, in points and in first/last.
    let (_, body) = get(
        &api,
        &format!(
            "/api/v1/query?series=7/count&from={}&to={}",
            T0 + 1000,
            T0 + 2000
        ),
    )
    .await;
    assert_eq!(body["series"][0]["points"], json!([[T0 + 1000, BIG + 1]]));
    assert_eq!(body["series"][0]["points"][0][1].as_i64(), Some(BIG + 1));
    // Strings: raw points, and buckets of count/first/last (no numbers).
    let q = format!(
        "/api/v1/query?series=7/state&from={T0}&to={}&step=1m",
        T0 + 120_000
    );
    let (_, body) = get(&api, &q).await;
    assert_eq!(
        body["series"][0]["buckets"],
        json!([
            { "ts": T0, "count": 60, "min": null, "max": null, "mean": null, "sum": null, "first": "idle", "last": "idle" },
            { "ts": T0 + 60_000, "count": 60, "min": null, "max": null, "mean": null, "sum": null, "first": "idle", "last": "run" },
        ])
    );
    let q = format!(
        "/api/v1/query?series=7/state&from={}&to={}",
        T0 + 89_000,
        T0 + 91_000
    );
    let (_, body) = get(&api, &q).await;
    assert_eq!(
        body["series"][0]["points"],
        json!([[T0 + 89_000, "idle"], [T0 + 90_000, "run"]])
    );

    // Raw: from inclusive, to exclusive.
    let q = format!(
        "/api/v1/query?series=7/voltage&from={}&to={}",
        T0 + 1000,
        T0 + 4000
    );
    let (_, body) = get(&api, &q).await;
    assert_eq!(
        body["series"][0]["points"],
        json!([[T0 + 1000, 1], [T0 + 2000, 2], [T0 + 3000, 3]])
    );
    // Buckets of a minute, two series.
    let q = format!(
        "/api/v1/query?series=7/voltage&series=7/temperature&from={T0}&to={}&step=1m",
        T0 + 120_000
    );
    let (_, body) = get(&api, &q).await;
    assert_eq!(body["step"], json!(60_000));
    assert_eq!(
        body["series"][0]["buckets"],
        json!([
            { "ts": T0, "count": 60, "min": 0.0, "max": 59.0, "mean": 29.5, "sum": 1770.0, "first": 0, "last": 59 },
            { "ts": T0 + 60_000, "count": 60, "min": 60.0, "max": 119.0, "mean": 89.5, "sum": 5370.0, "first": 60, "last": 119 },
        ])
    );
    assert_eq!(body["series"][1]["field"], "temperature");
    assert_eq!(body["series"][1]["buckets"][1]["last"], 49.75);
    // A series asked for twice is answered twice, in the order asked, the
    // same both times (and read once).
    let q = format!(
        "/api/v1/query?series=7/voltage&series=7/temperature&series=7/voltage&from={T0}&to={}&step=1m",
        T0 + 120_000
    );
    let (_, twice) = get(&api, &q).await;
    let fields: Vec<&J> = (0..3).map(|i| &twice["series"][i]["field"]).collect();
    assert_eq!(
        fields,
        [&json!("voltage"), &json!("temperature"), &json!("voltage")]
    );
    assert_eq!(twice["series"][0], twice["series"][2]);
    assert_eq!(twice["series"][0], body["series"][0]);
    // An empty range and a range with no data.
    let (_, body) = get(
        &api,
        &format!("/api/v1/query?series=7/voltage&from={T0}&to={T0}"),
    )
    .await;
    assert_eq!(body["series"][0]["points"], json!([]));
    let (_, body) = get(
        &api,
        "/api/v1/query?series=7/voltage&from=0&to=1000&step=1s",
    )
    .await;
    assert_eq!(body["series"][0]["buckets"], json!([]));

    // Bad parameters: each a clear 400 (or 404 for what does not exist).
    let range = format!("from={T0}&to={}", T0 + 120_000);
    assert!(bad(&api, "/api/v1/query")
        .await
        .contains("`series` is required"));
    assert!(bad(&api, "/api/v1/query?series=7")
        .await
        .contains("DEVICE/FIELD"));
    assert!(bad(&api, "/api/v1/query?series=7/nope")
        .await
        .contains("no series `7/nope`"));
    assert!(bad(&api, "/api/v1/query?series=7/voltage&step=0")
        .await
        .contains("at least 1ms"));
    assert!(bad(&api, "/api/v1/query?series=7/voltage&step=soon")
        .await
        .contains("not a duration"));
    assert!(bad(&api, "/api/v1/query?series=7/voltage&from=yesterday")
        .await
        .contains("`from=yesterday`"));
    assert!(bad(&api, "/api/v1/query?series=7/voltage&from=10&to=5")
        .await
        .contains("after `to`"));
    assert!(bad(&api, "/api/v1/query?series=7/voltage&limit=5000")
        .await
        .contains("from 1 to 1000"));
    assert!(bad(&api, "/api/v1/query?series=7/voltage&colour=red")
        .await
        .contains("unknown parameter `colour`"));
    assert!(bad(&api, "/api/v1/devices/8/latest")
        .await
        .contains("no readings of device `8`"));
    let (status, body) = get(
        &api,
        &format!("/api/v1/query?series=7/voltage&{range}&limit=100"),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("too_many_points")),
        "{body}"
    );
    let (status, _) = get(
        &api,
        &format!("/api/v1/query?series=7/voltage&{range}&limit=120"),
    )
    .await;
    assert_eq!(status, 200);

    // Uplink state: nothing delivered, everything is backlog.
    let (_, body) = get(&api, "/api/v1/uplinks").await;
    let u = &body["uplinks"][0];
    assert_eq!(
        (
            u["name"].as_str(),
            u["backlog"].as_u64(),
            u["acked_seq"].as_u64()
        ),
        (Some("cloud"), Some(120), Some(0))
    );
    assert_eq!(u["oldest_unsent_ts"], json!(T0));
    // The drain as the uplink's gauges last had it: nothing sampled yet.
    assert_eq!(
        (
            &u["send_rate"],
            &u["drain_eta_s"],
            &u["link_bytes_per_second"]
        ),
        (&json!(0.0), &J::Null, &J::Null)
    );
    set_drain(&api);
    let (_, body) = get(&api, "/api/v1/uplinks").await;
    let u = &body["uplinks"][0];
    assert_eq!(
        (
            &u["send_rate"],
            &u["drain_eta_s"],
            &u["link_bytes_per_second"],
            &u["batch_target_bytes"]
        ),
        (
            &json!(123.5),
            &json!(42.0),
            &json!(19_512.0),
            &json!(39_024)
        )
    );
    // Not shrinking: no estimate.
    assert_eq!(body["uplinks"][1]["drain_eta_s"], J::Null);
    // An uplink fed by a route: its backlog is the route's output, not the
    // raw records.
    let u = &body["uplinks"][1];
    let mut sums = Vec::new();
    api.store
        .read_stream(&Stream::Route("sums".into()), 0, 100, &mut sums)
        .unwrap();
    assert!(!sums.is_empty() && sums.len() < 120, "{sums:?}");
    assert_eq!(
        (
            u["name"].as_str(),
            u["stream"].as_str(),
            u["backlog"].as_u64()
        ),
        (Some("summary"), Some("sums"), Some(sums.len() as u64))
    );
    assert_eq!(u["oldest_unsent_ts"], json!(sums[0].record.ts));
    assert_eq!(body["uplinks"][0]["stream"], J::Null);

    // Dead letters with their reasons.
    let (_, body) = get(&api, "/api/v1/dead").await;
    let d = &body["dead"][0];
    assert_eq!(d["reason"], "not JSON: expected value at line 1 column 1");
    assert_eq!(
        (d["kind"].as_str(), d["payload"].as_str()),
        (Some("not_json"), Some("oops"))
    );

    let (_, body) = get(&api, "/api/v1/status").await;
    assert_eq!(body["records_head"], 120);
    assert_eq!(body["sources"][0]["name"], "local");

    // Records after a sequence number, and waiting for the next one.
    let (_, body) = get(&api, "/api/v1/records?after=119").await;
    assert_eq!(
        body["records"][0]["fields"],
        json!({ "voltage": 119, "temperature": 49.75, "state": "run", "count": BIG + 119 })
    );
    let waiting = {
        let addr = api.addr.clone();
        tokio::spawn(async move {
            get_with(&addr, Some(TOKEN), "/api/v1/records?after=120&wait=30s").await
        })
    };
    api.ingest
        .sink
        .submit_and_wait(vec![Item::Record(reading(120))])
        .await
        .unwrap();
    let r = waiting.await.unwrap();
    let body: J = serde_json::from_str(&r.body).unwrap();
    assert_eq!(body["records"][0]["seq"], 121);

    // `device`: `limit` counts that device's records, filtered in the store.
    let items = (0..5).map(|i| Item::Record(other(i))).collect();
    api.ingest.sink.submit_and_wait(items).await.unwrap();
    let seqs = |body: &J| -> Vec<u64> {
        body["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["seq"].as_u64().unwrap())
            .collect()
    };
    let (_, body) = get(&api, "/api/v1/records?limit=3").await;
    assert_eq!(seqs(&body), [124, 125, 126]);
    let (_, body) = get(&api, "/api/v1/records?device=7&limit=3").await;
    assert_eq!(seqs(&body), [119, 120, 121]);
    assert_eq!(body["next"], 126);
    let (_, body) = get(&api, "/api/v1/records?device=8&after=0&limit=2").await;
    assert_eq!(seqs(&body), [122, 123]);
    assert_eq!(body["records"][0]["device"], "8");
    assert_eq!(body["next"], 123);
    let (_, body) = get(&api, "/api/v1/records?device=7&after=121").await;
    assert_eq!((seqs(&body), &body["next"]), (vec![], &json!(126)));
    let (_, body) = get(&api, "/api/v1/records?device=nope").await;
    assert_eq!(seqs(&body), Vec::<u64>::new());
    api.cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_reads_the_api() {
    let api = start().await;
    let ferry = env!("CARGO_BIN_EXE_ferry");
    let url = format!("http://{}", api.addr);
    let run = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || Command::new(ferry).args(args).output().unwrap())
    };
    let args = |a: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = a.iter().map(|s| s.to_string()).collect();
        v.extend(["--api".into(), url.clone(), "--token".into(), TOKEN.into()]);
        v
    };
    let out = run(args(&[
        "query",
        "7/voltage",
        "--from",
        &T0.to_string(),
        "--to",
        &(T0 + 120_000).to_string(),
        "--step",
        "1m",
    ]))
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[0].starts_with("series"));
    assert!(
        lines[1].contains("7/voltage  2025-11-24T16:00:00.000Z  60"),
        "{text}"
    );

    let out = run(args(&[
        "query",
        "7/voltage",
        "--from",
        &(T0 + 1000).to_string(),
        "--to",
        &(T0 + 3000).to_string(),
        "--json",
    ]))
    .await
    .unwrap();
    let body: J = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        body["series"][0]["points"],
        json!([[T0 + 1000, 1], [T0 + 2000, 2]])
    );

    set_drain(&api);
    let out = run(args(&["status"])).await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("gateway test-gw"), "{text}");
    assert!(text.contains("cloud") && text.contains("120"), "{text}");
    // Each uplink's drain: its send rate and the time to go.
    let row = |name: &str| -> Vec<String> {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no row for {name}: {text}"));
        line.split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let header = row("uplink");
    assert_eq!(
        header[header.len() - 2..],
        ["send rate".to_owned(), "drains in".to_owned()],
        "{text}"
    );
    let cloud = row("cloud");
    assert_eq!(cloud[cloud.len() - 2..], ["123.5/s", "42s"], "{text}");
    let summary = row("summary");
    assert_eq!(summary[summary.len() - 2..], ["0.0/s", "-"], "{text}");

    let out = run(args(&["tail", "-n", "2", "--no-follow"]))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(
        text.lines()
            .last()
            .unwrap()
            .starts_with("120 2025-11-24T16:01:59.000Z local/7"),
        "{text}"
    );

    // `--device`: the last N records of that device, however many others
    // came after them.
    let items = (0..3).map(|i| Item::Record(other(i))).collect();
    api.ingest.sink.submit_and_wait(items).await.unwrap();
    let out = run(args(&["tail", "--device", "7", "-n", "2", "--no-follow"]))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].starts_with("119 "), "{text}");
    assert!(lines[1].starts_with("120 "), "{text}");
    assert!(lines.iter().all(|l| l.contains(" local/7 ")), "{text}");

    // A bad parameter: the API's message, exit code 1.
    let out = run(args(&["query", "7/voltage", "--step", "0"]))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 1ms"));
    // No token: refused.
    let out = run(vec!["status".into(), "--api".into(), url.clone()])
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
    api.cancel.cancel();
}

/// The status page in headless Chromium (Debian's `chromium`): it loads,
/// shows the stored values and a sparkline per field, polls, and shows new
/// values. Skipped when Chromium is missing unless `FERRY_REQUIRE_CHROMIUM`
/// is set (`.ci/run` installs it and sets it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_stored_values_and_updates() {
    let Some(chromium) = common::chromium() else {
        return;
    };
    let api = start().await;
    let now = ferry_core::record::now_millis();
    let live = |i: i64, v: i64| Record {
        ts: now - 60_000 + i * 1000,
        source: Arc::from("local"),
        device: "9".into(),
        fields: vec![
            ("flow".into(), Value::Int(v)),
            ("level".into(), Value::Float(2.5)),
        ],
    };
    let items = (0..60).map(|i| Item::Record(live(i, 100 + i))).collect();
    api.ingest.sink.submit_and_wait(items).await.unwrap();
    let url = format!("http://{}/#token={TOKEN}&device=9&interval=250", api.addr);
    let dump =
        |url: String| tokio::task::spawn_blocking(move || common::dump_dom(chromium, &url, 3000));
    let dom = dump(url.clone()).await.unwrap();
    assert!(
        dom.contains("<td>flow</td><td class=\"n\">159</td>"),
        "{dom}"
    );
    assert!(
        dom.contains("<td>level</td><td class=\"n\">2.5</td>"),
        "{dom}"
    );
    assert!(
        dom.contains("<polyline points="),
        "a sparkline is drawn: {dom}"
    );
    assert!(dom.contains("<td>local</td><td>mqtt_broker</td>"), "{dom}");
    assert!(
        dom.contains("<td>cloud</td><td class=\"bad\">disconnected</td><td class=\"n\">180</td>"),
        "{dom}"
    );
    // The drain: nothing sampled yet, then as the gauges say.
    assert!(
        dom.contains("<td class=\"n\">0.0/s</td><td class=\"n\">not draining</td></tr>"),
        "{dom}"
    );
    let refreshes: u32 = dom
        .split("data-refreshes=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    assert!(refreshes >= 3, "the page polls: {refreshes} refreshes");
    // A new reading is on the page at its next load.
    api.ingest
        .sink
        .submit_and_wait(vec![Item::Record(live(60, 777))])
        .await
        .unwrap();
    set_drain(&api);
    let dom = dump(url).await.unwrap();
    assert!(
        dom.contains("<td>flow</td><td class=\"n\">777</td>"),
        "{dom}"
    );
    assert!(
        dom.contains("<td class=\"n\">123.5/s</td><td class=\"n\">42 s</td></tr>"),
        "{dom}"
    );
    api.cancel.cancel();
}
