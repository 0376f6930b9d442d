//! Query benchmark (issue 6): 24 hours of 1 Hz readings for 100 series
//! (10 devices × 10 fields), stored through the ingest writer; the query
//! index built from that log (the rebuild time); then one series over 24 h
//! in 1-minute buckets and over 1 hour raw, in-process and through the HTTP
//! API (a new connection per request, and one kept-alive connection), beside
//! SQLite (rusqlite, bundled) holding the same readings with an index on
//! (series, ts), in the same run.
//!
//! Also the index's extra bytes written per reading (`/proc/self/io`
//! `write_bytes`, the log alone and log + index, fresh stores): at full
//! ingest speed (an hour of data as fast as the writer takes it), and in
//! real time at 1 Hz (each device's record submitted on its own every
//! 100 ms, the default commit interval) for `FERRY_BENCH_REALTIME_SECS`
//! seconds each (default 180 × scale).
//!
//! `FERRY_BENCH_SCALE=0.05` shortens the day (to 72 minutes); run as
//! `cargo bench -p ferry-gateway --bench query`. Prints `name: value unit`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_core::record::{Record, Value};
use ferry_core::sink::Item;
use ferry_gateway::api::client::Client;
use ferry_gateway::api::{serve, ApiContext, RequestLimits};
use ferry_gateway::metrics::{ApiMetrics, IngestMetrics, UplinkMetrics};
use ferry_gateway::query::{Engine, Index, IndexOptions, Series};
use ferry_gateway::store::{Cancel, Store, StoreOptions, Writer, WriterSettings};
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
    let ingest = Writer::spawn(
        store.clone(),
        WriterSettings {
            index: index.map(|i| i as _),
            ..WriterSettings::default().with_commit_interval(Duration::from_millis(10))
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

/// Ingests `seconds` of data in real time: each device's record on its own,
/// one every 100 ms (10 devices: each sends once a second); returns the
/// bytes written.
async fn ingest_realtime(store: &Store, index: Option<Arc<Index>>, seconds: i64) -> u64 {
    let before = write_bytes();
    let ingest = Writer::spawn(
        store.clone(),
        WriterSettings {
            index: index.map(|i| i as _),
            ..WriterSettings::default().with_commit_interval(Duration::from_millis(10))
        },
        IngestMetrics::new(),
    );
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut pending = Vec::new();
    for s in 0..seconds {
        for d in 0..DEVICES {
            tick.tick().await;
            let mut r = record(d, s);
            r.ts += d * 100;
            pending.push(
                ingest
                    .sink
                    .submit(vec![Item::Record(r)])
                    .await
                    .expect("submit"),
            );
        }
    }
    for r in pending {
        r.committed().await.expect("commit");
    }
    drop(ingest.sink);
    drop(ingest.cursors);
    ingest.task.await.expect("writer");
    write_bytes() - before
}

/// One HTTP/1.1 connection kept alive, as a dashboard holds it.
struct KeepAlive {
    reader: BufReader<TcpStream>,
    authority: String,
}

impl KeepAlive {
    fn connect(authority: &str) -> KeepAlive {
        let stream = TcpStream::connect(authority).expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        KeepAlive {
            reader: BufReader::new(stream),
            authority: authority.to_owned(),
        }
    }

    /// `GET path`: the status and the body's length.
    fn get(&mut self, path: &str) -> (u16, usize) {
        let req = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", self.authority);
        self.reader
            .get_mut()
            .write_all(req.as_bytes())
            .expect("send");
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("status");
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status code");
        let mut len = 0;
        loop {
            line.clear();
            self.reader.read_line(&mut line).expect("header");
            if line == "\r\n" {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().expect("length");
                }
            }
        }
        let mut body = vec![0; len];
        self.reader.read_exact(&mut body).expect("body");
        (status, len)
    }
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

    // 1. Bytes written per reading, the log alone and log + index (fresh
    //    stores): an hour of data at full speed, then in real time at 1 Hz.
    let hour = 3600.min(seconds);
    let fresh = || {
        let d = tempfile::tempdir_in(&base).expect("dir");
        let s = Store::open(&Store::file_in(d.path()), &StoreOptions::default()).expect("store");
        (d, s)
    };
    let per = |b: u64, secs: i64| b as f64 / (secs * DEVICES * FIELDS) as f64;
    let (plain, with) = rt.block_on(async {
        let (_d1, s1) = fresh();
        let (plain, t1) = ingest(&s1, None, hour).await;
        let (_d2, s2) = fresh();
        let index = Index::open(&s2, IndexOptions::default()).expect("index");
        let (with, t2) = ingest(&s2, Some(index), hour).await;
        let rate =
            |t: Duration| format!("{:.0}", (hour * DEVICES * FIELDS) as f64 / t.as_secs_f64());
        fig("ingest_readings_per_second_log_alone", rate(t1), "");
        fig("ingest_readings_per_second_with_index", rate(t2), "");
        (plain, with)
    });
    fig(
        "bytes_written_per_reading_without_index",
        format!("{:.1}", per(plain, hour)),
        "B",
    );
    fig(
        "bytes_written_per_reading_with_index",
        format!("{:.1}", per(with, hour)),
        "B",
    );
    fig(
        "index_extra_bytes_written_per_reading",
        format!("{:.1}", per(with, hour) - per(plain, hour)),
        "B",
    );
    let realtime: i64 = std::env::var("FERRY_BENCH_REALTIME_SECS")
        .ok()
        .map(|s| {
            s.parse()
                .expect("FERRY_BENCH_REALTIME_SECS is a number of seconds")
        })
        .unwrap_or(((180.0 * scale) as i64).max(3));
    if realtime > 0 {
        let (plain, with) = rt.block_on(async {
            let (_d1, s1) = fresh();
            let plain = ingest_realtime(&s1, None, realtime).await;
            let (_d2, s2) = fresh();
            let index = Index::open(&s2, IndexOptions::default()).expect("index");
            let with = ingest_realtime(&s2, Some(index), realtime).await;
            (plain, with)
        });
        fig("realtime_seconds", realtime, "s");
        fig(
            "realtime_bytes_written_per_reading_without_index",
            format!("{:.1}", per(plain, realtime)),
            "B",
        );
        fig(
            "realtime_bytes_written_per_reading_with_index",
            format!("{:.1}", per(with, realtime)),
            "B",
        );
        fig(
            "realtime_index_extra_bytes_written_per_reading",
            format!("{:.1}", per(with, realtime) - per(plain, realtime)),
            "B",
        );
    }

    // 2. The full data set, the log alone; then the index built from it.
    let dir = tempfile::tempdir_in(&base).expect("dir");
    let store = Store::open(&Store::file_in(dir.path()), &StoreOptions::default()).expect("store");
    let (_, took) = rt.block_on(ingest(&store, None, seconds));
    fig(
        "ingest_readings_per_second",
        format!("{:.0}", readings as f64 / took.as_secs_f64()),
        "",
    );
    let log_bytes = std::fs::metadata(store.path())
        .map(|m| m.len())
        .unwrap_or(0);
    let t = Instant::now();
    let index = Index::open(&store, IndexOptions::default()).expect("index");
    fig(
        "index_rebuild_seconds",
        format!("{:.2}", t.elapsed().as_secs_f64()),
        "s",
    );
    let file = std::fs::metadata(store.path())
        .map(|m| m.len())
        .unwrap_or(0);
    fig(
        "store_file_bytes_per_reading_log_alone",
        format!("{:.1}", log_bytes as f64 / readings as f64),
        "B",
    );
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

    // 3. In process; each query also through an engine with a cancel flag
    //    (what the API's requests use: one look at it per hour and block),
    //    alternating, so both see the same machine.
    let cancellable = engine.cancellable(Cancel::new());
    let (mut bucketed, mut raw) = (Vec::new(), Vec::new());
    let (mut bucketed_c, mut raw_c) = (Vec::new(), Vec::new());
    for i in 0..QUERIES {
        let key = keys[i % keys.len()];
        let (from, to) = raw_window(&mut rng);
        for (e, b, r) in [
            (&engine, &mut bucketed, &mut raw),
            (&cancellable, &mut bucketed_c, &mut raw_c),
        ] {
            let t = Instant::now();
            let got = e
                .range(&[key], T0, end, Some(60_000), 100_000)
                .expect("query");
            b.push(t.elapsed());
            assert_eq!(got[0].len() as i64, (seconds + 59) / 60);
            let t = Instant::now();
            let got = e.range(&[key], from, to, None, 100_000).expect("query");
            r.push(t.elapsed());
            assert!(matches!(&got[0], Series::Raw(p) if p.len() == 3600));
        }
    }
    let ours_bucketed = report("inprocess_24h_1m_buckets", bucketed);
    let ours_raw = report("inprocess_1h_raw", raw);
    report("inprocess_24h_1m_buckets_cancellable", bucketed_c);
    report("inprocess_1h_raw_cancellable", raw_c);

    // 4. Through the HTTP API: a new connection per request (as curl does),
    //    then one kept-alive connection (as a dashboard does).
    let (http_bucketed, http_raw, ka_bucketed, ka_raw) = rt.block_on(async {
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
            uplink_streams: Default::default(),
            limits: RequestLimits::new(256, 32 * 1024, 4),
            metrics: ApiMetrics::new(),
        };
        // What handing a query to the blocking pool costs (the handler does,
        // so a 2-5 ms query never holds a runtime thread).
        let mut handoff = Vec::new();
        for _ in 0..QUERIES {
            let t = Instant::now();
            tokio::task::spawn_blocking(|| ()).await.expect("noop");
            handoff.push(t.elapsed());
        }
        report("spawn_blocking_handoff", handoff);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let cancel = CancellationToken::new();
        tokio::spawn(serve(listener, Arc::new(ctx), cancel.clone()));
        let out = tokio::task::spawn_blocking(move || {
            let client = Client::new(&addr, None).expect("client");
            let mut keep = KeepAlive::connect(&addr);
            let mut rng = fastrand::Rng::with_seed(7);
            let (mut b, mut r, mut kb, mut kr) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
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
                let t = Instant::now();
                let (status, len) = keep.get(&format!(
                    "/api/v1/query?series={s}&from={T0}&to={end}&step=1m"
                ));
                kb.push(t.elapsed());
                assert_eq!((status, len as i64 > (seconds + 59) / 60 * 50), (200, true));
                let t = Instant::now();
                let (status, _) =
                    keep.get(&format!("/api/v1/query?series={s}&from={from}&to={to}"));
                kr.push(t.elapsed());
                assert_eq!(status, 200);
            }
            (b, r, kb, kr)
        })
        .await
        .expect("client task");
        cancel.cancel();
        out
    });
    report("http_24h_1m_buckets", http_bucketed);
    report("http_1h_raw", http_raw);
    report("http_keepalive_24h_1m_buckets", ka_bucketed);
    report("http_keepalive_1h_raw", ka_raw);
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
