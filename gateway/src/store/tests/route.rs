//! Retention of route output streams on real store files: bounded through a
//! soak of many budgets, raw records before route aggregates, delivered
//! before undelivered, `max_age`, and heads kept when a stream is emptied.

use std::sync::Arc;
use std::time::Duration;

use ferry_core::record::{now_millis, Record, Value};
use ferry_core::sink::Item;

use crate::metrics::{IngestMetrics, ReasonLabel, RouteReasonLabels};
use crate::store::*;

const MIB: u64 = 1 << 20;
const BLOB: usize = 4000;

fn big(i: i64, ts: i64) -> Record {
    Record {
        ts,
        source: Arc::from("r"),
        device: "d".into(),
        fields: vec![
            ("i".into(), Value::Int(i)),
            ("blob".into(), Value::Str("x".repeat(BLOB).into())),
        ],
    }
}

fn open(dir: &tempfile::TempDir) -> Store {
    Store::open(&Store::file_in(dir.path()), &StoreOptions::default()).unwrap()
}

fn cfg(max_disk: u64, max_age: Option<std::time::Duration>) -> WriterSettings {
    WriterSettings {
        retention: Retention {
            max_disk,
            max_age,
            when_full: WhenFull::DropOldest,
        },
        route_consumers: vec![(Arc::from("r"), Arc::from("uplink.cloud"))],
        ..WriterSettings::default().with_commit_interval(Duration::from_millis(10))
    }
}

/// Commits route `r`'s outputs `range` (100 per commit); the last head.
async fn emit(ingest: &Writer, range: std::ops::Range<i64>, ts: i64) -> u64 {
    emit_to(ingest, "r", range, ts).await
}

async fn emit_to(ingest: &Writer, route: &str, range: std::ops::Range<i64>, ts: i64) -> u64 {
    let mut head = 0;
    for chunk in range.collect::<Vec<_>>().chunks(100) {
        head = ingest
            .routes
            .commit(RouteCommit {
                route: Arc::from(route),
                outputs: chunk.iter().map(|&i| big(i, ts)).collect(),
                state: b"{}".to_vec(),
                through: 0,
            })
            .await
            .unwrap();
    }
    head
}

async fn raw(ingest: &Writer, range: std::ops::Range<i64>) {
    for chunk in range.collect::<Vec<_>>().chunks(200) {
        let items = chunk
            .iter()
            .map(|&i| Item::Record(big(i, now_millis())))
            .collect();
        ingest.sink.submit_and_wait(items).await.unwrap();
    }
}

async fn close(ingest: Writer) {
    drop(ingest.sink);
    drop(ingest.cursors);
    drop(ingest.routes);
    ingest.task.await.unwrap();
}

fn route_evicted(m: &IngestMetrics, reason: &str) -> u64 {
    m.route_records_evicted
        .get_or_create(&RouteReasonLabels {
            route: "r".into(),
            reason: reason.into(),
        })
        .get()
}

fn raw_evicted(m: &IngestMetrics, reason: &str) -> u64 {
    m.records_evicted
        .get_or_create(&ReasonLabel {
            reason: reason.into(),
        })
        .get()
}

fn route_seqs(store: &Store) -> Vec<u64> {
    let mut out = Vec::new();
    store
        .read_stream(&Stream::Route("r".into()), 0, usize::MAX, &mut out)
        .unwrap();
    out.iter().map(|r| r.seq).collect()
}

/// A route whose output alone is ten times the budget: the file stays
/// within it, the newest output is kept, sequence numbers go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_output_of_ten_budgets_stays_within_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let metrics = IngestMetrics::new();
    let mut c = cfg(16 * MIB, None);
    c.route_consumers.clear(); // sent by no uplink: all delivered
    let ingest = Writer::spawn(store.clone(), c, metrics.clone());
    let n = 40_000;
    let mut max_file = 0;
    for part in 0..10 {
        emit(&ingest, part * n / 10..(part + 1) * n / 10, now_millis()).await;
        max_file = max_file.max(std::fs::metadata(store.path()).unwrap().len());
    }
    close(ingest).await;
    let evicted = route_evicted(&metrics, "disk_budget");
    eprintln!(
        "largest file: {max_file} bytes for a 16 MiB budget; route entries evicted {evicted}"
    );
    assert!(max_file <= 18 * MIB, "file grew to {max_file}");
    assert!(evicted > 30_000, "{evicted}");
    let seqs = route_seqs(&store);
    assert_eq!(seqs.len() as u64 + evicted, n as u64);
    assert_eq!(*seqs.last().unwrap(), n as u64);
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1));
    assert!(metrics.store_estimated_bytes.get() <= 16 * MIB);
}

/// Raw records go before the aggregates that summarise them; then the route
/// entries its uplink delivered; undelivered ones last (`drop_oldest`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_goes_first_then_delivered_route_entries_then_undelivered_ones() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let metrics = IngestMetrics::new();
    let ingest = Writer::spawn(store.clone(), cfg(16 * MIB, None), metrics.clone());
    // ~4 MiB of route output, delivered up to 500.
    emit(&ingest, 0..1_000, now_millis() - 60_000).await;
    ingest
        .cursors
        .advance(&Arc::from("uplink.cloud"), 500)
        .await
        .unwrap();
    // Raw records past the budget: only raw ones are evicted.
    raw(&ingest, 0..3_000).await;
    assert!(raw_evicted(&metrics, "disk_budget") > 1_000);
    assert_eq!(route_evicted(&metrics, "disk_budget"), 0);
    assert_eq!(route_seqs(&store).len(), 1_000, "every aggregate kept");
    // Route output past the budget: raw goes whole, then the delivered
    // entries, then undelivered ones.
    let head = emit(&ingest, 1_000..4_000, now_millis()).await;
    assert_eq!(head, 4_000);
    let mut rest = Vec::new();
    store.read_records(0, usize::MAX, &mut rest).unwrap();
    assert!(rest.is_empty(), "{} raw records left", rest.len());
    assert_eq!(route_evicted(&metrics, "disk_budget"), 500);
    let undelivered = route_evicted(&metrics, "disk_budget_undelivered");
    assert!(undelivered > 0);
    let seqs = route_seqs(&store);
    assert_eq!(seqs[0], 501 + undelivered);
    assert_eq!(*seqs.last().unwrap(), 4_000);
    close(ingest).await;
}

/// `max_age` trims route output; a stream emptied by it keeps its head,
/// through a reopen, and the byte account is the same after one.
#[tokio::test]
async fn max_age_trims_route_output_and_the_head_survives_an_empty_stream() {
    let dir = tempfile::tempdir().unwrap();
    let hour = std::time::Duration::from_secs(3600);
    let old = now_millis() - 2 * 3600 * 1000;
    let store = open(&dir);
    let metrics = IngestMetrics::new();
    let ingest = Writer::spawn(store.clone(), cfg(64 * MIB, Some(hour)), metrics.clone());
    // The first commit checks ages: the old outputs go in the same one.
    let head = ingest
        .routes
        .commit(RouteCommit {
            route: Arc::from("r"),
            outputs: (0..10)
                .map(|i| big(i, old))
                .chain((10..15).map(|i| big(i, now_millis())))
                .collect(),
            state: b"{}".to_vec(),
            through: 0,
        })
        .await
        .unwrap();
    assert_eq!(head, 15);
    assert_eq!(route_seqs(&store), (11..=15).collect::<Vec<_>>());
    assert_eq!(route_evicted(&metrics, "max_age"), 10);
    let estimated = metrics.store_estimated_bytes.get();
    close(ingest).await;
    drop(store);

    // Reopened: the same account, read back from `meta` and the stream.
    let store = open(&dir);
    let metrics = IngestMetrics::new();
    let ingest = Writer::spawn(store.clone(), cfg(64 * MIB, Some(hour)), metrics.clone());
    // All old: route q's stream is emptied in the commit that wrote it...
    assert_eq!(emit_to(&ingest, "q", 0..5, old).await, 5);
    // (an empty submission's receipt comes after the gauges are updated)
    ingest.sink.submit_and_wait(Vec::new()).await.unwrap();
    assert_eq!(metrics.store_estimated_bytes.get(), estimated);
    let q_aged = metrics
        .route_records_evicted
        .get_or_create(&RouteReasonLabels {
            route: "q".into(),
            reason: "max_age".into(),
        })
        .get();
    assert_eq!(q_aged, 5);
    let mut q = Vec::new();
    let q_stream = Stream::Route("q".into());
    store.read_stream(&q_stream, 0, 100, &mut q).unwrap();
    assert!(q.is_empty());
    assert_eq!(route_seqs(&store), (11..=15).collect::<Vec<_>>());
    close(ingest).await;
    drop(store);
    let store = open(&dir);
    let ingest = Writer::spawn(
        store.clone(),
        cfg(64 * MIB, Some(hour)),
        IngestMetrics::new(),
    );
    // ... and its numbering goes on after a reopen.
    assert_eq!(store.stream_head(&q_stream).unwrap(), 5);
    assert_eq!(emit_to(&ingest, "q", 5..6, now_millis()).await, 6);
    close(ingest).await;
}
