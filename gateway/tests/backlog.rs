//! A large backlog drains after the link returns, with the daemon's memory
//! flat: the uplink streams the store one window at a time, never loading
//! the backlog.
//!
//! The backlog is written through the gateway library (`Writer::spawn` with
//! the query index, as the daemon writes it), then the real `ferry` daemon
//! starts on that store with its uplink behind a cut link; the link is
//! restored and the daemon's RSS is sampled until every `seq` has arrived at
//! the TLS mosquitto standing in for IoT Core.
//!
//! `FERRY_BACKLOG_RECORDS` sets the size: 10,000,000 in release builds (CI
//! runs `cargo test --release -p ferry-gateway --test backlog` as its own
//! step: 48 s to write, 21 s to drain here), 200,000 in debug builds (the same
//! checks within `cargo test --workspace`).

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use ferry_core::record::{Record, Value};
use ferry_core::sink::Item;
use ferry_gateway::metrics::IngestMetrics;
use ferry_gateway::query::{Index, IndexOptions};
use ferry_gateway::store::{Store, StoreOptions, Writer, WriterSettings};
use ferry_testkit::{free_port, Proxy};

/// How much the daemon's RSS may grow while it drains the backlog: the redb
/// page cache (4 MiB), up to 100 publishes in flight held by the MQTT client
/// for resending (~50 KB each in columnar), the window being encoded, and
/// allocator slack.
const RSS_GROWTH_BOUND_KIB: u64 = 24 * 1024;

fn records() -> u64 {
    std::env::var("FERRY_BACKLOG_RECORDS")
        .ok()
        .map(|v| v.parse().expect("FERRY_BACKLOG_RECORDS is a number"))
        .unwrap_or(if cfg!(debug_assertions) {
            200_000
        } else {
            10_000_000
        })
}

fn reading(i: u64) -> Record {
    Record {
        ts: 1_764_000_000_000 + i as i64,
        source: Arc::from("local"),
        device: (i % 10).to_string().into(),
        fields: vec![
            ("voltage".into(), Value::Int(640 + (i * 7 % 15) as i64)),
            ("temperature".into(), Value::Int(105 + (i % 11) as i64)),
            ("sequence".into(), Value::Int((i / 10) as i64)),
        ],
    }
}

/// Writes `n` records to the store in `data`, as the daemon would.
async fn write_backlog(data: &std::path::Path, n: u64) {
    std::fs::create_dir_all(data).unwrap();
    let store = Store::open(&Store::file_in(data), &StoreOptions::default()).unwrap();
    let index = Index::open(&store, IndexOptions::default()).unwrap();
    let ingest = Writer::spawn(
        store.clone(),
        WriterSettings {
            index: Some(index),
            ..WriterSettings::default().with_commit_interval(Duration::from_millis(10))
        },
        IngestMetrics::new(),
    );
    const SUBMISSION: u64 = 4096;
    let next = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..2)
        .map(|_| {
            let sink = ingest.sink.clone();
            let next = next.clone();
            tokio::spawn(async move {
                loop {
                    let from = next.fetch_add(SUBMISSION, Ordering::Relaxed);
                    if from >= n {
                        break;
                    }
                    let items = (from..(from + SUBMISSION).min(n))
                        .map(|i| Item::Record(reading(i)))
                        .collect();
                    sink.submit_and_wait(items).await.unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    drop(ingest.sink);
    drop(ingest.cursors);
    ingest.task.await.unwrap();
    assert_eq!(store.heads().records, n);
}

/// The sequence numbers of a columnar batch (the first absolute, then deltas).
fn columnar_seqs(m: &ferry_testkit::Message) -> anyhow::Result<Vec<u64>> {
    let v: serde_json::Value = serde_json::from_slice(&m.payload)?;
    let mut seq = 0u64;
    let deltas = v["seq"]
        .as_array()
        .ok_or_else(|| anyhow::anyhow!("no seq column"))?;
    Ok(deltas
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let d = d.as_u64().unwrap_or(0);
            seq = if i == 0 { d } else { seq + d };
            seq
        })
        .collect())
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_backlog_drains_after_reconnect_with_rss_flat() {
    let n = records();
    let Cloud {
        pki,
        mosquitto: cloud,
        sub,
    } = Cloud::start().await;
    let link = Proxy::start(cloud.tls_addr()).await.unwrap();
    link.cut().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let started = Instant::now();
    write_backlog(&data, n).await;
    let built = started.elapsed();
    let store_bytes = std::fs::metadata(Store::file_in(&data)).unwrap().len();
    eprintln!(
        "backlog: {n} records written in {built:?} ({:.0} records/s), store {:.1} MiB",
        n as f64 / built.as_secs_f64(),
        store_bytes as f64 / (1 << 20) as f64
    );

    let broker = SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
    // No IoT Core limits here: the local broker takes as much as it can.
    let config = broker_config(&data, broker, link.addr(), &pki, metrics).replace(
        "[metrics]",
        "encoding = \"columnar\"\nmax_publishes_per_second = 100000\n\
         max_bytes_per_second = \"1GiB\"\n\n[metrics]",
    );
    let ferry = Ferry::start(dir.path(), &config);
    let pid = ferry.pid();

    // Sample the daemon's RSS every 20 ms from the moment the link returns.
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        std::thread::spawn(move || {
            let at_start = rss_kib(pid).unwrap();
            let mut peak = at_start;
            let mut samples = 0u64;
            while !done.load(Ordering::Relaxed) {
                if let Some(kib) = rss_kib(pid) {
                    peak = peak.max(kib);
                    samples += 1;
                }
                // A sampling period, not synchronisation.
                std::thread::sleep(Duration::from_millis(20));
            }
            (at_start, peak, samples)
        })
    };
    let drain = Instant::now();
    link.restore();
    let seen = sub
        .wait_for_seqs(1..n + 1, Duration::from_secs(600), columnar_seqs)
        .await
        .unwrap();
    let drained = drain.elapsed();
    done.store(true, Ordering::Relaxed);
    let (at_start, peak, samples) = sampler.join().unwrap();
    assert!(seen.is_complete(), "{seen}");
    assert_eq!(seen.outside(), 0);
    let end = rss_kib(pid).unwrap();
    eprintln!(
        "drain: {n} records in {drained:?} ({:.0} records/s, {} publishes, {} duplicates); \
         RSS {at_start} KiB at the start, peak {peak} KiB (+{} KiB), {end} KiB at the end; \
         {samples} samples",
        n as f64 / drained.as_secs_f64(),
        sub.len(),
        seen.duplicates(),
        peak - at_start,
    );
    assert!(
        peak - at_start <= RSS_GROWTH_BOUND_KIB,
        "RSS grew by {} KiB while draining {n} records (bound {RSS_GROWTH_BOUND_KIB} KiB)",
        peak - at_start
    );
    drop(ferry);
}
