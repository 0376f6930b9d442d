//! Query benchmark (issue 6): 24 hours of 1 Hz readings for 100 series
//! (10 devices × 10 fields), stored through the ingest writer with the query
//! index; then one series over 24 h in 1-minute buckets and over 1 hour raw,
//! in-process and through the HTTP API, beside SQLite (rusqlite, bundled)
//! holding the same readings with an index on (series, ts), in the same run.
//! Also the index's extra bytes written per reading (`/proc/self/io`
//! `write_bytes`, ingest with and without the index).
//!
//! `FERRY_BENCH_SCALE=0.05` shortens the day (to 72 minutes); run as
//! `cargo bench -p ferry-gateway --bench query`. Prints `name: value unit`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_adapters::record::{Record, Value};
use ferry_adapters::sink::Item;
use ferry_gateway::api::client::Client;
use ferry_gateway::api::{serve, ApiContext};
use ferry_gateway::metrics::{IngestMetrics, UplinkMetrics};
use ferry_gateway::query::{Engine, Index, IndexOptions, Series};
use ferry_gateway::store::{spawn_ingest, IngestConfig, Store, StoreOptions};
use tokio_util::sync::CancellationToken;

const DEVICES: i64 = 10;
const FIELDS: i64 = 10;
const T0: i64 = 1_764_000_000_000;
const QUERIES: usize = 300;

fn scale() -> f64 {
    let args: Vec<String> = std::env::args().collect();
    let benching = args.iter().any(|a| a == "--bench");
    std::env::var("FERRY_BENCH_SCALE")
        .ok()
        .map(|s| s.parse().expect("FERRY_BENCH_SCALE is a number"))
        .unwrap_or(if benching { 1.0 } else { 0.01 })
}

fn fig(name: &str, value: impl std::fmt::Display, unit: &str) {
    println!("{name}: {value} {unit}");
}

fn write_bytes() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn value(d: i64, f: i64, s: i64) -> Value {
    // Half the fields integral (counters, raw registers), half f32-exact
    // quarter steps (a scaled sensor reading).
    if f % 2 == 0 {
        Value::Int((s * (f + 1) + d) % 5000)
    } else {
        Value::Float(20.0 + ((s + d * 7 + f) % 400) as f64 * 0.25)
    }
}

fn record(d: i64, s: i64) -> Record {
    Record {
        ts: T0 + s * 1000,
        source: Arc::from("bench"),
        device: format!("dev{d}").into(),
        fields: (0..FIELDS)
            .map(|f| (format!("f{f}").into(), value(d, f, s)))
            .collect(),
    }
}

/// Ingests `seconds` of data; returns the bytes written and the time taken.
async fn ingest(store: &Store, index: Option<Arc<Index>>, seconds: i64) -> (u64, Duration) {
    let before = write_bytes();
    let started = Instant::now();
    let ingest = spawn_ingest(
        store.clone(),
        IngestConfig {
            index: index.map(|i| i as _),
            ..IngestConfig::default()
        },
        IngestMetrics::new(),
    );
    let mut pending = std::collections::VecDeque::new();
    // One submission per second of data: what 10 devices sending each second
    // look like to the writer (it groups them into commits).
    for s in 0..seconds {
        let items = (0..DEVICES).map(|d| Item::Record(record(d, s))).collect();
        pending.push_back(ingest.sink.submit(items).await.expect("submit"));
        if pending.len() > 256 {
            pending
                .pop_front()
                .unwrap()
                .committed()
                .await
                .expect("commit");
        }
    }
    for r in pending {
        r.committed().await.expect("commit");
    }
    drop(ingest.sink);
    drop(ingest.cursors);
    ingest.task.await.expect("writer");
    (write_bytes() - before, started.elapsed())
}

fn quantiles(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1000.0;
    (q(0.5), q(0.99))
}

fn report(name: &str, v: Vec<Duration>) -> f64 {
    let (p50, p99) = quantiles(v);
    fig(&format!("{name}_p50"), format!("{p50:.3}"), "ms");
    fig(&format!("{name}_p99"), format!("{p99:.3}"), "ms");
    p99
}

fn main() {
    let scale = scale();
    let seconds = ((86_400.0 * scale) as i64).max(3600);
    let readings = seconds * DEVICES * FIELDS;
    fig("series", DEVICES * FIELDS, "");
    fig("seconds_of_data", seconds, "s");
    fig("readings", readings, "");
    let base = std::env::var_os("FERRY_BENCH_DIR").map_or(std::env::temp_dir(), Into::into);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");

    // 1. Bytes written per reading, without and with the index (one hour of
    //    data each, fresh stores).
    let hour = 3600.min(seconds);
    let (plain, with) = rt.block_on(async {
        let d1 = tempfile::tempdir_in(&base).expect("dir");
        let s1 = Store::open(&Store::file_in(d1.path()), &StoreOptions::default()).expect("store");
        let (plain, _) = ingest(&s1, None, hour).await;
        let d2 = tempfile::tempdir_in(&base).expect("dir");
        let s2 = Store::open(&Store::file_in(d2.path()), &StoreOptions::default()).expect("store");
        let index = Index::open(&s2, IndexOptions::default()).expect("index");
        let (with, _) = ingest(&s2, Some(index), hour).await;
        (plain, with)
    });
    let per = |b: u64| b as f64 / (hour * DEVICES * FIELDS) as f64;
    fig(
        "bytes_written_per_reading_without_index",
        format!("{:.1}", per(plain)),
        "B",
    );
    fig(
        "bytes_written_per_reading_with_index",
        format!("{:.1}", per(with)),
        "B",
    );
    fig(
        "index_extra_bytes_written_per_reading",
        format!("{:.1}", per(with) - per(plain)),
        "B",
    );

    // 2. The full data set, with the index.
    let dir = tempfile::tempdir_in(&base).expect("dir");
    let store = Store::open(&Store::file_in(dir.path()), &StoreOptions::default()).expect("store");
    let index = Index::open(&store, IndexOptions::default()).expect("index");
    let (_, took) = rt.block_on(ingest(&store, Some(index.clone()), seconds));
    fig(
        "ingest_readings_per_second",
        format!("{:.0}", readings as f64 / took.as_secs_f64()),
        "",
    );
    let file = std::fs::metadata(store.path())
        .map(|m| m.len())
        .unwrap_or(0);
    fig(
        "store_file_bytes_per_reading",
        format!("{:.1}", file as f64 / readings as f64),
        "B",
    );
    let engine = Engine::new(store.clone(), index.clone());
    let keys: Vec<_> = (0..DEVICES)
        .flat_map(|d| (0..FIELDS).map(move |f| (d, f)))
        .map(|(d, f)| {
            engine
                .series_key(&format!("dev{d}"), &format!("f{f}"))
                .expect("series")
        })
        .collect();
    let end = T0 + seconds * 1000;
    let mut rng = fastrand::Rng::with_seed(6);
    let raw_window = move |rng: &mut fastrand::Rng| {
        let from = T0 + rng.i64(0..=(seconds - 3600)) * 1000;
        (from, from + 3_600_000)
    };

    // 3. In process.
    let (mut bucketed, mut raw) = (Vec::new(), Vec::new());
    for i in 0..QUERIES {
        let key = keys[i % keys.len()];
        let t = Instant::now();
        let r = engine
            .range(&[key], T0, end, Some(60_000), 100_000)
            .expect("query");
        bucketed.push(t.elapsed());
        assert_eq!(r[0].len() as i64, (seconds + 59) / 60);
        let (from, to) = raw_window(&mut rng);
        let t = Instant::now();
        let r = engine
            .range(&[key], from, to, None, 100_000)
            .expect("query");
        raw.push(t.elapsed());
        assert!(matches!(&r[0], Series::Raw(p) if p.len() == 3600));
    }
    let ours_bucketed = report("inprocess_24h_1m_buckets", bucketed);
    let ours_raw = report("inprocess_1h_raw", raw);

    // 4. Through the HTTP API (a new connection per request, as curl does).
    let (http_bucketed, http_raw) = rt.block_on(async {
        let (_tx, names) = tokio::sync::watch::channel(Vec::new());
        let ctx = ApiContext {
            engine: engine.clone(),
            gateway: "bench".into(),
            token: None,
            max_points: 100_000,
            sources: Vec::new(),
            ingest: IngestMetrics::new(),
            uplinks: UplinkMetrics::new(),
            uplink_names: names,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let cancel = CancellationToken::new();
        tokio::spawn(serve(listener, Arc::new(ctx), cancel.clone()));
        let out = tokio::task::spawn_blocking(move || {
            let client = Client::new(&addr, None).expect("client");
            let mut rng = fastrand::Rng::with_seed(7);
            let (mut b, mut r) = (Vec::new(), Vec::new());
            for i in 0..QUERIES {
                let s = format!("dev{}/f{}", i % 10, (i / 10) % 10);
                let t = Instant::now();
                let resp = client
                    .get(&format!(
                        "/api/v1/query?series={s}&from={T0}&to={end}&step=1m"
                    ))
                    .expect("get");
                b.push(t.elapsed());
                assert_eq!(resp.status, 200);
                let (from, to) = raw_window(&mut rng);
                let t = Instant::now();
                let resp = client
                    .get(&format!("/api/v1/query?series={s}&from={from}&to={to}"))
                    .expect("get");
                r.push(t.elapsed());
                assert_eq!(resp.status, 200);
            }
            (b, r)
        })
        .await
        .expect("client task");
        cancel.cancel();
        out
    });
    report("http_24h_1m_buckets", http_bucketed);
    report("http_1h_raw", http_raw);
    drop((engine, index, store));

    // 5. SQLite with the same readings, an index on (series, ts).
    let sdir = tempfile::tempdir_in(&base).expect("dir");
    let db = rusqlite::Connection::open(sdir.path().join("bench.sqlite")).expect("sqlite");
    db.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;
         CREATE TABLE readings (series INTEGER NOT NULL, ts INTEGER NOT NULL, value REAL NOT NULL);
         CREATE INDEX readings_series_ts ON readings (series, ts);",
    )
    .expect("schema");
    let t = Instant::now();
    {
        let tx = db.unchecked_transaction().expect("tx");
        {
            let mut ins = tx
                .prepare("INSERT INTO readings (series, ts, value) VALUES (?1, ?2, ?3)")
                .expect("prepare");
            for s in 0..seconds {
                for d in 0..DEVICES {
                    for f in 0..FIELDS {
                        let v = match value(d, f, s) {
                            Value::Int(i) => i as f64,
                            Value::Float(x) => x,
                            _ => unreachable!(),
                        };
                        ins.execute(rusqlite::params![d * FIELDS + f, T0 + s * 1000, v])
                            .expect("insert");
                    }
                }
            }
        }
        tx.commit().expect("commit");
    }
    fig(
        "sqlite_load_seconds",
        format!("{:.1}", t.elapsed().as_secs_f64()),
        "s",
    );
    let mut bq = db
        .prepare(
            "SELECT ts / 60000 * 60000 AS b, count(*), min(value), max(value), avg(value), sum(value)
             FROM readings WHERE series = ?1 AND ts >= ?2 AND ts < ?3 GROUP BY b ORDER BY b",
        )
        .expect("prepare");
    let mut rq = db
        .prepare(
            "SELECT ts, value FROM readings WHERE series = ?1 AND ts >= ?2 AND ts < ?3 ORDER BY ts",
        )
        .expect("prepare");
    let (mut bucketed, mut raw) = (Vec::new(), Vec::new());
    let mut rng = fastrand::Rng::with_seed(6);
    for i in 0..QUERIES {
        let series = (i as i64) % (DEVICES * FIELDS);
        let t = Instant::now();
        let n = bq
            .query_map(rusqlite::params![series, T0, end], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, f64>(2)?,
                    r.get::<_, f64>(3)?,
                    r.get::<_, f64>(4)?,
                    r.get::<_, f64>(5)?,
                ))
            })
            .expect("query")
            .count();
        bucketed.push(t.elapsed());
        assert_eq!(n as i64, (seconds + 59) / 60);
        let (from, to) = raw_window(&mut rng);
        let t = Instant::now();
        let n = rq
            .query_map(rusqlite::params![series, from, to], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, f64>(1)?))
            })
            .expect("query")
            .count();
        raw.push(t.elapsed());
        assert_eq!(n, 3600);
    }
    let sqlite_bucketed = report("sqlite_24h_1m_buckets", bucketed);
    let sqlite_raw = report("sqlite_1h_raw", raw);
    fig(
        "speedup_p99_24h_1m_buckets",
        format!("{:.1}", sqlite_bucketed / ours_bucketed),
        "x",
    );
    fig(
        "speedup_p99_1h_raw",
        format!("{:.1}", sqlite_raw / ours_raw),
        "x",
    );
}
