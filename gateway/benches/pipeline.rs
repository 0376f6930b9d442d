//! The pipeline and a window route: what they cost per record.
//!
//! 1. `steps`: `Pipeline::apply` of 5 steps (filter, math, rename, enrich,
//!    remove) and `Route::push` of a 1-minute window, single-threaded: ns
//!    per record.
//! 2. `paced`: records submitted at a steady 100,000/s (chunks of 1,000
//!    every 10 ms) for a few seconds, once straight to ingest and once
//!    through the pipeline with a window route reading the stored stream:
//!    the process CPU per record (user + system, getrusage) and the rate
//!    committed.
//! 3. `max`: the same set-ups fed as fast as ingest takes them.
//!
//! A third set-up, `empty_pipeline`, is the pipeline task with no steps and
//! no route: what the daemon runs when none are configured (the task is
//! always there so that a reload can add steps).
//!
//! `cargo bench -p ferry-gateway --bench pipeline`; `FERRY_BENCH_SCALE=0.1`
//! for a quick run.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_core::record::{Record, Value};
use ferry_core::sink::{Item, Sink};
use ferry_gateway::config::Config;
use ferry_gateway::metrics::{IngestMetrics, PipelineMetrics};
use ferry_gateway::pipeline::{spawn_pipeline, spawn_pipeline_with, Pipeline};
use ferry_gateway::route::{spawn_route, Dropped, Route};
use ferry_gateway::store::{Store, StoreOptions, Writer, WriterSettings};
use tokio_util::sync::CancellationToken;

const CONFIG: &str = r#"
[sources.local]
type = "mqtt_broker"

[devices.3]
site = "plant-a"
line = 7

[[pipeline]]
filter = "temperature > -40 && temperature < 150"
[[pipeline]]
math = { power = "voltage * current / 1000" }
[[pipeline]]
rename = { temperature = "temp_c" }
[[pipeline]]
enrich = []
[[pipeline]]
remove = ["client_id"]

[routes.minute]
window = { size = "1m", aggregates = ["count", "min", "max", "mean"] }
"#;

fn scale() -> f64 {
    std::env::var("FERRY_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0)
}

fn record(i: u64) -> Record {
    Record {
        ts: 1_700_000_000_000 + i as i64 * 10,
        source: "local".into(),
        device: format!("{}", i % 10).into(),
        fields: vec![
            ("client_id".into(), Value::Int(1)),
            ("voltage".into(), Value::Int(600 + (i % 50) as i64)),
            ("current".into(), Value::Float(1.5 + (i % 7) as f64 / 10.0)),
            ("temperature".into(), Value::Int(100 + (i % 20) as i64)),
            ("sequence".into(), Value::Int(i as i64)),
        ],
    }
}

/// User + system CPU of this process so far.
fn cpu() -> Duration {
    // SAFETY: getrusage fills the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid, writable rusage that outlives the call.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
}

fn config() -> Config {
    Config::from_toml(CONFIG, Path::new("bench.toml")).expect("the bench config is valid")
}

fn steps(n: u64) {
    let config = config();
    let p = Pipeline::new(&config.pipeline, PipelineMetrics::new());
    let input: Vec<Record> = (0..n).map(record).collect();
    let mut work = input.clone();
    let t = Instant::now();
    p.apply_all(&mut work);
    let ns = t.elapsed().as_nanos() as f64 / n as f64;
    println!("steps.pipeline_5_steps: {ns:.0} ns/record");
    let mut route = Route::new(
        "minute",
        config.routes["minute"].clone(),
        Default::default(),
    );
    let (mut out, mut dropped) = (Vec::new(), Dropped::default());
    let t = Instant::now();
    for r in &work {
        route.push(r, &mut out, &mut dropped);
    }
    let ns = t.elapsed().as_nanos() as f64 / work.len() as f64;
    println!(
        "steps.window_route: {ns:.0} ns/record ({} windows emitted)",
        out.len()
    );
}

/// Feeds `n` records at `rate`/s (0 = as fast as possible); returns the
/// committed rate and the CPU per record, and waits for the route (if any)
/// to catch up.
async fn run(n: u64, rate: u64, mode: Mode) -> (f64, f64) {
    let with_pipeline = mode == Mode::Full;
    let dir = tempfile::Builder::new()
        .prefix("ferry-bench-pipeline")
        .tempdir()
        .unwrap();
    let store = Store::open(&dir.path().join("ferry.redb"), &StoreOptions::default()).unwrap();
    let ingest = Writer::spawn(
        store.clone(),
        WriterSettings::default().with_commit_interval(Duration::from_millis(10)),
        IngestMetrics::new(),
    );
    let config = config();
    let cancel = CancellationToken::new();
    let (sink, pipeline_task, route_task): (Sink, _, _) = if with_pipeline {
        let p: Arc<Pipeline> = Pipeline::new(&config.pipeline, PipelineMetrics::new());
        let (sink, task) = spawn_pipeline(p, ingest.sink.clone(), 1024);
        let route = spawn_route(
            "minute",
            config.routes["minute"].clone(),
            store.clone(),
            ingest.routes.clone(),
            PipelineMetrics::new(),
            cancel.clone(),
        );
        (sink, Some(task), Some(route))
    } else if mode == Mode::Empty {
        let empty = Config::from_toml(
            "[sources.local]\ntype = \"mqtt_broker\"\n",
            Path::new("e.toml"),
        )
        .unwrap();
        let p: Arc<Pipeline> = Pipeline::new(&empty.pipeline, PipelineMetrics::new());
        // As the daemon runs it: following a watch channel, a queue of 16.
        let (_keep, rx) = tokio::sync::watch::channel(p);
        let (sink, task) = spawn_pipeline_with(rx, ingest.sink.clone(), 16);
        (sink, Some(task), None)
    } else {
        (ingest.sink.clone(), None, None)
    };
    let chunk = 1_000u64;
    let cpu0 = cpu();
    let t0 = Instant::now();
    let mut receipts = Vec::new();
    let mut i = 0;
    while i < n {
        if rate > 0 {
            let due = t0 + Duration::from_secs_f64(i as f64 / rate as f64);
            tokio::time::sleep_until(due.into()).await;
        }
        let items = (i..(i + chunk).min(n))
            .map(|j| Item::Record(record(j)))
            .collect();
        receipts.push(sink.submit(items).await.unwrap());
        i += chunk;
    }
    for r in receipts {
        r.committed().await.unwrap();
    }
    let elapsed = t0.elapsed().as_secs_f64();
    if with_pipeline {
        let mut heads = store.watch_heads();
        let head = store.heads().records;
        while store.cursor("route.minute").unwrap() < head {
            heads.changed().await.unwrap();
        }
    }
    let cpu_us = (cpu() - cpu0).as_secs_f64() * 1e6 / n as f64;
    cancel.cancel();
    drop(sink);
    if let Some(t) = pipeline_task {
        t.await.unwrap();
    }
    if let Some(t) = route_task {
        t.await.unwrap();
    }
    drop(ingest.sink);
    drop(ingest.cursors);
    ingest.task.await.unwrap();
    (n as f64 / elapsed, cpu_us)
}

/// What sits between the submitter and ingest.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    None,
    Empty,
    Full,
}

const MODES: [(&str, Mode); 3] = [
    ("no_pipeline", Mode::None),
    ("empty_pipeline", Mode::Empty),
    ("pipeline_5_steps_and_window_route", Mode::Full),
];

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let s = scale();
    println!("## pipeline (scale {s})");
    steps((200_000.0 * s).max(10_000.0) as u64);
    let n = ((300_000.0 * s) as u64).max(20_000);
    for (name, mode) in MODES {
        let (rate, cpu) = run(n, 100_000, mode).await;
        println!("paced_100k.{name}.committed: {rate:.0} records/s");
        println!("paced_100k.{name}.cpu: {cpu:.2} us/record");
    }
    for (name, mode) in MODES {
        let (rate, cpu) = run(n, 0, mode).await;
        println!("max.{name}.committed: {rate:.0} records/s");
        println!("max.{name}.cpu: {cpu:.2} us/record");
    }
}
