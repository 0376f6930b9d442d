//! The index and engine against a brute-force reading of the log.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ferry_core::record::{Millis, Record, Value};
use ferry_core::sink::Item;
use redb::{ReadableDatabase, ReadableTable};

use super::layout::{Directory, BLOCKS, HOURS, META_THROUGH, META_VERSION};
use super::*;
use crate::metrics::IngestMetrics;
use crate::store::{Retention, Store, StoreOptions, WhenFull, Writer, WriterSettings, META};

const T0: Millis = 1_764_000_000_000;

fn open(dir: &tempfile::TempDir) -> (Store, Arc<Index>) {
    let store = Store::open(&Store::file_in(dir.path()), &StoreOptions::default()).unwrap();
    let index = Index::open(&store, IndexOptions::default()).unwrap();
    (store, index)
}

fn start(store: &Store, index: &Arc<Index>, cfg: WriterSettings) -> Writer {
    let cfg = WriterSettings {
        index: Some(index.clone()),
        commit_interval: std::time::Duration::from_millis(1),
        ..cfg
    };
    Writer::spawn(store.clone(), cfg, IngestMetrics::new())
}

async fn stop(ingest: Writer) {
    drop(ingest.sink);
    drop(ingest.cursors);
    ingest.task.await.unwrap();
}

/// Two devices, readings every 7 seconds (so hours pass) with some out of
/// order, an integer, an integer above 2^53, a float, a boolean and a
/// string field.
fn records(n: i64) -> Vec<Record> {
    (0..n)
        .map(|i| {
            // Every 50th reading arrives 90 s late (into a closed minute),
            // every 97th two hours late (into an hour already sealed).
            let ts = if i % 97 == 96 {
                T0 + i * 7000 - 7_200_000
            } else if i % 50 == 49 {
                T0 + i * 7000 - 90_000
            } else {
                T0 + i * 7000
            };
            Record {
                ts,
                source: Arc::from("local"),
                device: if i % 3 == 0 { "b".into() } else { "a".into() },
                fields: vec![
                    ("v".into(), Value::Int(i)),
                    ("t".into(), Value::Float(20.0 + (i % 17) as f64 * 0.25)),
                    ("ok".into(), Value::Bool(i % 2 == 0)),
                    ("state".into(), Value::Str(format!("s{}", i % 5).into())),
                    ("big".into(), Value::Int((1 << 53) + i)),
                ],
            }
        })
        .collect()
}

async fn write(ingest: &Writer, recs: Vec<Record>) {
    let mut receipts = Vec::new();
    for chunk in recs.chunks(37) {
        let items = chunk.iter().cloned().map(Item::Record).collect();
        receipts.push(ingest.sink.submit(items).await.unwrap());
    }
    for r in receipts {
        r.committed().await.unwrap();
    }
}

/// Every point of every series, read from the log itself.
fn reference(store: &Store) -> BTreeMap<(String, String), Vec<Point>> {
    let mut out: BTreeMap<(String, String), Vec<Point>> = BTreeMap::new();
    let mut recs = Vec::new();
    store.read_records(0, usize::MAX, &mut recs).unwrap();
    for r in recs {
        for (name, value) in &r.record.fields {
            out.entry((r.record.device.to_string(), name.to_string()))
                .or_default()
                .push(Point {
                    seq: r.seq,
                    ts: r.record.ts,
                    value: value.clone(),
                });
        }
    }
    for points in out.values_mut() {
        points.sort_by_key(|p| (p.ts, p.seq));
    }
    out
}

fn expected(points: &[Point], from: Millis, to: Millis, step: Option<i64>) -> Series {
    let inside: Vec<Point> = points
        .iter()
        .filter(|p| p.ts >= from && p.ts < to)
        .cloned()
        .collect();
    match step {
        None => Series::Raw(inside),
        Some(step) => {
            let mut buckets: Vec<Bucket> = Vec::new();
            for p in &inside {
                let ts = p.ts.div_euclid(step) * step;
                match buckets.last_mut() {
                    Some(b) if b.ts == ts => b.rollup.add(p),
                    _ => buckets.push(Bucket {
                        ts,
                        rollup: Rollup::of(p),
                    }),
                }
            }
            Series::Buckets(buckets)
        }
    }
}

/// Sums may differ in the last bits with the order of addition.
fn assert_same(got: &Series, want: &Series, what: &str) {
    match (got, want) {
        (Series::Raw(g), Series::Raw(w)) => assert_eq!(g, w, "{what}"),
        (Series::Buckets(g), Series::Buckets(w)) => {
            assert_eq!(g.len(), w.len(), "{what}");
            for (g, w) in g.iter().zip(w) {
                let mut g2 = g.clone();
                assert!(
                    (g.rollup.sum - w.rollup.sum).abs() <= 1e-9 * w.rollup.sum.abs().max(1.0),
                    "{what}: {g:?} vs {w:?}"
                );
                g2.rollup.sum = w.rollup.sum;
                assert_eq!(&g2, w, "{what}");
            }
        }
        _ => panic!("{what}: {got:?} vs {want:?}"),
    }
}

fn check_against_log(store: &Store, engine: &Engine, seed: u64) {
    let reference = reference(store);
    assert!(!reference.is_empty());
    let mut rng = fastrand::Rng::with_seed(seed);
    for ((device, field), points) in &reference {
        let key = engine.series_key(device, field).unwrap();
        let (lo, hi) = (points[0].ts - 5000, points.last().unwrap().ts + 5000);
        let mut cases = vec![
            (lo, hi, None),
            (lo, hi, Some(60_000)),
            (lo, hi, Some(1)),
            (T0 + 2000, T0 + 4000, None), // from inclusive, to exclusive
            (T0 + 60_000, T0 + 180_000, Some(60_000)), // whole minutes
            (T0 + 1, T0 + 1, None),       // empty
            (hi + 1, hi + 100_000, Some(1000)), // after the data
        ];
        for _ in 0..40 {
            let from = rng.i64(lo..hi);
            let to = rng.i64(from..=hi);
            let step = [
                None,
                Some(1000),
                Some(7_000),
                Some(60_000),
                Some(90_000),
                Some(3_600_000),
            ][rng.usize(0..6)];
            cases.push((from, to, step));
        }
        for (from, to, step) in cases {
            let got = engine.range(&[key], from, to, step, usize::MAX).unwrap();
            let want = expected(points, from, to, step);
            assert_same(
                &got[0],
                &want,
                &format!("{device}/{field} {from}..{to} step {step:?}"),
            );
        }
    }
    // Listing and latest agree with the log.
    let listed = engine.list(None).unwrap();
    assert_eq!(listed.len(), reference.len());
    for info in &listed {
        let points = &reference[&(info.device.to_string(), info.field.to_string())];
        assert_eq!(info.first_ts, points[0].ts);
        assert_eq!(info.last, *points.last().unwrap());
    }
}

/// Every hour directory lists exactly the blocks of its series and hour,
/// with their headers (but for blocks wholly evicted).
fn check_directories(store: &Store) -> usize {
    let blocks = dump_blocks(store);
    let db = store.db().unwrap();
    let tx = db.begin_read().unwrap();
    let first = tx
        .open_table(crate::store::RECORDS)
        .unwrap()
        .first()
        .unwrap()
        .map_or(0, |(k, _)| k.value());
    let hours = tx.open_table(HOURS).unwrap();
    let mut n = 0;
    for e in hours.iter().unwrap() {
        let (k, v) = e.unwrap();
        let (s, h) = k.value();
        let dir = Directory::decode(h, v.value()).unwrap();
        let listed: Vec<_> = dir
            .0
            .iter()
            .filter(|(_, hd)| hd.max_seq >= first)
            .map(|(b, hd)| (*b, hd.clone()))
            .collect();
        let stored: Vec<_> = blocks
            .iter()
            .filter(|((b, bs), _)| *bs == s && (h..h + 3_600_000).contains(b))
            .map(|((b, _), bytes)| (*b, block::Block::decode_header(bytes).unwrap()))
            .filter(|(_, hd)| hd.max_seq >= first)
            .collect();
        assert_eq!(listed, stored, "series {s} hour {h}");
        n += 1;
    }
    n
}

fn dump_blocks(store: &Store) -> Vec<((i64, u64), Vec<u8>)> {
    let db = store.db().unwrap();
    let tx = db.begin_read().unwrap();
    let t = tx.open_table(BLOCKS).unwrap();
    t.iter()
        .unwrap()
        .map(|e| {
            let (k, v) = e.unwrap();
            (k.value(), v.value().to_vec())
        })
        .collect()
}

#[tokio::test]
async fn queries_match_the_log_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (store, index) = open(&dir);
    let ingest = start(
        &store,
        &index,
        WriterSettings::default().with_commit_interval(Duration::from_millis(10)),
    );
    write(&ingest, records(1500)).await;
    let engine = Engine::new(store.clone(), index.clone());
    // Part of the data is only in memory now (each series' current minute).
    check_against_log(&store, &engine, 1);
    // Every field is indexed, strings too.
    assert!(engine.series_key("a", "state").is_some());
    let fields: Vec<String> = engine
        .list(Some("a"))
        .unwrap()
        .iter()
        .map(|i| i.field.to_string())
        .collect();
    assert_eq!(fields, ["big", "ok", "state", "t", "v"]);
    // Integers above 2^53 come back exactly.
    let key = engine.series_key("a", "big").unwrap();
    let got = engine.range(&[key], T0, T0 + 7001, None, 10).unwrap();
    assert_eq!(
        got[0],
        Series::Raw(vec![Point {
            seq: 2,
            ts: T0 + 7000,
            value: Value::Int((1 << 53) + 1)
        }])
    );
    // Hours the series left are sealed, and their directories are right.
    assert!(check_directories(&store) > 0);
    assert!(engine.list(Some("nope")).unwrap().is_empty());
    stop(ingest).await;
}

#[tokio::test]
async fn a_points_limit_is_an_error_not_a_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let (store, index) = open(&dir);
    let ingest = start(
        &store,
        &index,
        WriterSettings::default().with_commit_interval(Duration::from_millis(10)),
    );
    write(&ingest, records(300)).await;
    let engine = Engine::new(store.clone(), index.clone());
    let key = engine.series_key("a", "v").unwrap();
    let all = engine
        .range(&[key], T0 - 10_000_000, T0 + 3_000_000, None, 200)
        .unwrap();
    assert_eq!(all[0].len(), 200);
    assert!(matches!(
        engine.range(&[key], T0 - 10_000_000, T0 + 3_000_000, None, 199),
        Err(QueryError::TooManyPoints { limit: 199 })
    ));
    assert!(matches!(
        engine.range(&[key], T0 - 10_000_000, T0 + 3_000_000, Some(1000), 10),
        Err(QueryError::TooManyPoints { limit: 10 })
    ));
    stop(ingest).await;
}

/// The engine takes any `i64` times and step: clamped to the query range,
/// never a panic (an inverted `BTreeMap` range, an overflowing bucket), and
/// the right answer, also with the points in memory and on disk.
#[tokio::test]
async fn times_and_steps_at_the_ends_of_i64_answer_right_or_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let (store, index) = open(&dir);
    let ingest = start(
        &store,
        &index,
        WriterSettings::default().with_commit_interval(Duration::from_millis(10)),
    );
    write(&ingest, records(300)).await;
    let engine = Engine::new(store.clone(), index.clone());
    let key = engine.series_key("a", "v").unwrap();
    let all = engine
        .range(&[key], T0 - 10_000_000, T0 + 3_000_000, None, 1000)
        .unwrap();
    let n = all[0].len();
    assert_eq!(n, 200);
    let (min, max) = (Millis::MIN, Millis::MAX);
    for (from, to) in [(min, max), (min, T0 + 3_000_000), (T0 - 10_000_000, max)] {
        assert_eq!(
            engine.range(&[key], from, to, None, 1000).unwrap(),
            all,
            "{from}..{to}"
        );
        for step in [
            i64::MAX,
            i64::MAX - 1,
            bounds::MAX_TIME,
            2 * bounds::MAX_TIME,
        ] {
            let got = engine.range(&[key], from, to, Some(step), 1000).unwrap();
            let Series::Buckets(b) = &got[0] else {
                panic!("buckets")
            };
            assert_eq!(b.len(), 1, "step {step}");
            assert_eq!((b[0].ts, b[0].rollup.count), (0, n as u64), "step {step}");
        }
    }
    for (from, to) in [
        (min, min),
        (max, max),
        (max, min),
        (min, min + 1),
        (max - 1, max),
    ] {
        let got = engine.range(&[key], from, to, Some(60_000), 10).unwrap();
        assert_eq!(got, [Series::Buckets(Vec::new())], "{from}..{to}");
        let got = engine.range(&[key], from, to, None, 10).unwrap();
        assert_eq!(got, [Series::Raw(Vec::new())], "{from}..{to}");
    }
    for step in [0, -1, i64::MIN] {
        assert!(matches!(
            engine.range(&[key], min, max, Some(step), 10),
            Err(QueryError::Step { step: s }) if s == step
        ));
    }
    stop(ingest).await;
}

#[tokio::test]
async fn the_index_rebuilt_from_the_log_equals_the_original() {
    let dir = tempfile::tempdir().unwrap();
    let (store, index) = open(&dir);
    let ingest = start(
        &store,
        &index,
        WriterSettings::default().with_commit_interval(Duration::from_millis(10)),
    );
    write(&ingest, records(2000)).await;
    // Stopped without a last flush: like a crash, the open minutes are only in the log.
    stop(ingest).await;
    drop((store, index));

    // Reopening replays the log after `index.through`.
    let (store, index) = open(&dir);
    let original = dump_blocks(&store);
    let (through, applied) = index.progress();
    assert_eq!(
        (through, applied),
        (store.heads().records, store.heads().records)
    );
    check_against_log(&store, &Engine::new(store.clone(), index.clone()), 2);
    check_directories(&store);
    drop(index);

    // Delete the index: its tables and its position.
    {
        let db = store.db().unwrap();
        let tx = db.begin_write().unwrap();
        tx.delete_table(BLOCKS).unwrap();
        tx.open_table(META).unwrap().remove(META_THROUGH).unwrap();
        tx.commit().unwrap();
    }
    let index = Index::open(&store, IndexOptions::default()).unwrap();
    assert_eq!(dump_blocks(&store), original);
    check_against_log(&store, &Engine::new(store.clone(), index), 3);
}

#[tokio::test]
async fn catching_up_in_chunks_while_ingest_runs_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (store, index) = open(&dir);
    let ingest = start(
        &store,
        &index,
        WriterSettings::default().with_commit_interval(Duration::from_millis(10)),
    );
    write(&ingest, records(1000)).await;
    stop(ingest).await;
    {
        let db = store.db().unwrap();
        let tx = db.begin_write().unwrap();
        tx.delete_table(BLOCKS).unwrap();
        tx.open_table(META).unwrap().remove(META_THROUGH).unwrap();
        tx.commit().unwrap();
    }
    drop(index);
    // An index that has not caught up is fed by the writer's transactions,
    // 100 log records at a time, while new records arrive.
    let index = Arc::new(
        Index::open_without_catch_up(
            &store,
            IndexOptions {
                catch_up_chunk: 100,
                ..IndexOptions::default()
            },
        )
        .unwrap(),
    );
    let ingest = start(
        &store,
        &index,
        WriterSettings::default().with_commit_interval(Duration::from_millis(10)),
    );
    let more: Vec<Record> = records(1400).split_off(1000);
    write(&ingest, more).await;
    while index.progress().1 < store.heads().records {
        write(&ingest, records(1)).await;
    }
    check_against_log(&store, &Engine::new(store.clone(), index.clone()), 4);
    stop(ingest).await;
}

#[tokio::test]
async fn evicted_records_are_never_in_results_and_their_blocks_go() {
    let dir = tempfile::tempdir().unwrap();
    let (store, index) = open(&dir);
    let cfg = WriterSettings {
        retention: Retention {
            max_disk: 3 << 20,
            max_age: None,
            when_full: WhenFull::DropOldest,
        },
        ..WriterSettings::default().with_commit_interval(Duration::from_millis(10))
    };
    let ingest = start(&store, &index, cfg);
    write(&ingest, records(40_000)).await;
    let first = {
        let db = store.db().unwrap();
        let tx = db.begin_read().unwrap();
        let t = tx.open_table(crate::store::RECORDS).unwrap();
        let first = t.first().unwrap().unwrap().0.value();
        first
    };
    assert!(
        first > 1000,
        "retention evicted the oldest records (first {first})"
    );
    let engine = Engine::new(store.clone(), index.clone());
    check_against_log(&store, &engine, 5);
    // No block is wholly before the first stored record.
    for (_, bytes) in dump_blocks(&store) {
        assert!(block::Block::decode(&bytes).unwrap().max_seq >= first);
    }
    check_directories(&store);
    stop(ingest).await;
}

#[tokio::test]
async fn an_index_of_the_old_format_is_rebuilt_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let (store, index) = open(&dir);
    let ingest = start(
        &store,
        &index,
        WriterSettings::default().with_commit_interval(Duration::from_millis(10)),
    );
    write(&ingest, records(800)).await;
    stop(ingest).await;
    drop(index);
    // Reopened: the open minutes are written too.
    drop(Index::open(&store, IndexOptions::default()).unwrap());
    let original = dump_blocks(&store);
    // What a version 1 index left: its own table (series first), version 1.
    const V1: redb::TableDefinition<(u64, i64), &[u8]> = redb::TableDefinition::new("index_blocks");
    {
        let db = store.db().unwrap();
        let tx = db.begin_write().unwrap();
        tx.open_table(V1)
            .unwrap()
            .insert((1, 0), &[1u8, 2, 3][..])
            .unwrap();
        tx.delete_table(BLOCKS).unwrap();
        tx.delete_table(HOURS).unwrap();
        let mut meta = tx.open_table(META).unwrap();
        meta.insert(META_VERSION, 1).unwrap();
        meta.insert(META_THROUGH, 800).unwrap();
        drop(meta);
        tx.commit().unwrap();
    }
    let index = Index::open(&store, IndexOptions::default()).unwrap();
    assert_eq!(index.progress(), (800, 800));
    assert_eq!(dump_blocks(&store), original);
    {
        let db = store.db().unwrap();
        let tx = db.begin_read().unwrap();
        assert!(tx.open_table(V1).is_err(), "the old table is gone");
        let meta = tx.open_table(META).unwrap();
        assert_eq!(
            meta.get(META_VERSION).unwrap().unwrap().value(),
            u64::from(block::BLOCK_VERSION)
        );
    }
    check_against_log(&store, &Engine::new(store.clone(), index), 6);
    check_directories(&store);
}

#[tokio::test]
async fn strings_are_counted_not_summed() {
    let dir = tempfile::tempdir().unwrap();
    let (store, index) = open(&dir);
    let ingest = start(
        &store,
        &index,
        WriterSettings::default().with_commit_interval(Duration::from_millis(10)),
    );
    write(&ingest, records(30)).await;
    let engine = Engine::new(store.clone(), index.clone());
    let key = engine.series_key("a", "state").unwrap();
    let got = engine
        .range(&[key], T0, T0 + 60_000, Some(60_000), 10)
        .unwrap();
    let Series::Buckets(b) = &got[0] else {
        panic!("{got:?}")
    };
    // Device a: i = 1, 2, 4, 5, 7, 8 in the first minute (ts < T0 + 60 s).
    let r = &b[0].rollup;
    assert_eq!((r.count, r.numeric, r.stats()), (6, 0, None));
    assert_eq!(
        (&r.first, &r.last),
        (&Value::Str("s1".into()), &Value::Str("s3".into()))
    );
    stop(ingest).await;
}

/// A flood: `n` records from `from`, ten per millisecond, so a minute
/// holds tens of thousands of points per series.
fn flood(from: i64, n: i64) -> Vec<Record> {
    (from..from + n)
        .map(|i| Record {
            ts: T0 + i / 10,
            source: Arc::from("local"),
            device: if i % 2 == 0 { "a".into() } else { "b".into() },
            fields: vec![("v".into(), Value::Int(i))],
        })
        .collect()
}

#[tokio::test]
async fn a_flood_replayed_in_the_background_beside_ingest_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&Store::file_in(dir.path()), &StoreOptions::default()).unwrap();
    // Stored with no index: the replay has all of it to do.
    let ingest = Writer::spawn(
        store.clone(),
        WriterSettings::default().with_commit_interval(Duration::from_millis(10)),
        IngestMetrics::new(),
    );
    write(&ingest, flood(0, 6000)).await;
    stop(ingest).await;
    let index = Arc::new(
        Index::open_without_catch_up(
            &store,
            IndexOptions {
                catch_up_chunk: 100,
                ..IndexOptions::default()
            },
        )
        .unwrap(),
    );
    let replay = index.replay_in_background(&store).expect("a replay");
    assert!(index.replaying());
    // New records arrive while it runs (the same minutes, and later ones).
    let ingest = start(
        &store,
        &index,
        WriterSettings::default().with_commit_interval(Duration::from_millis(10)),
    );
    write(&ingest, flood(6000, 3000)).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while index.replaying() || index.lag(&store) > 0 {
        assert!(std::time::Instant::now() < deadline, "the replay ends");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    replay.stop();
    assert_eq!(index.progress().1, 9000, "every record applied");
    check_against_log(&store, &Engine::new(store.clone(), index.clone()), 7);
    check_directories(&store);
    stop(ingest).await;
}

/// A stored record stamped outside the query range (only damage makes
/// one: sources stamp 1970 to 9999) is skipped by the index, live and in a
/// replay, instead of overflowing its bucket arithmetic (a panic in a debug
/// build, a wrapped bucket in a release one), and the records around it
/// are indexed as usual.
#[tokio::test]
async fn a_record_stamped_outside_the_query_range_is_skipped_by_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let (store, index) = open(&dir);
    let ingest = start(
        &store,
        &index,
        WriterSettings::default().with_commit_interval(Duration::from_millis(10)),
    );
    let mut recs = records(3);
    recs[0].ts = i64::MIN;
    recs[2].ts = i64::MAX;
    let kept = recs[1].ts;
    write(&ingest, recs).await;
    stop(ingest).await;
    let engine = Engine::new(store.clone(), index.clone());
    let a = engine.series_key("a", "v").unwrap();
    let got = engine.range(&[a], i64::MIN, i64::MAX, None, 100).unwrap();
    assert_eq!(got[0].len(), 1, "only the record in range: {got:?}");
    drop((engine, index));

    // The same from a replay of the whole log.
    {
        let db = store.db().unwrap();
        let tx = db.begin_write().unwrap();
        tx.delete_table(BLOCKS).unwrap();
        tx.open_table(META).unwrap().remove(META_THROUGH).unwrap();
        tx.commit().unwrap();
    }
    let index = Index::open(&store, IndexOptions::default()).unwrap();
    assert_eq!(index.progress().1, store.heads().records);
    let engine = Engine::new(store.clone(), index);
    let got = engine.range(&[a], i64::MIN, i64::MAX, None, 100).unwrap();
    match &got[0] {
        Series::Raw(p) => assert_eq!(p.iter().map(|p| p.ts).collect::<Vec<_>>(), vec![kept]),
        other => panic!("{other:?}"),
    }
}

/// A cancelled engine stops every read with `Cancelled`, and a read
/// cancelled from another thread while it walks a series of millennia
/// (one reading in 1970, two in 9999: some 70 million hours to look in)
/// ends within a bounded time of the cancel, not when the walk would.
#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_read_ends_soon_with_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let (store, index) = open(&dir);
    let ingest = start(
        &store,
        &index,
        WriterSettings::default().with_commit_interval(Duration::from_millis(10)),
    );
    let mut recs = records(3);
    for (r, ts) in recs
        .iter_mut()
        .zip([0, 253_402_300_680_000, 253_402_300_799_000])
    {
        r.ts = ts;
        r.device = "a".into();
    }
    write(&ingest, recs).await;
    stop(ingest).await;
    let engine = Engine::new(store.clone(), index.clone());
    let a = engine.series_key("a", "v").unwrap();
    // Uncancelled, the edges are found at once (the hours are walked lazily).
    let (fields, _) = engine.device_fields("a").unwrap();
    assert_eq!(fields.len(), 5);
    assert_eq!(fields[0].first_ts, 0);

    let cancel = crate::store::Cancel::new();
    cancel.cancel();
    let cancelled = engine.cancellable(cancel.clone());
    let is_cancelled = |r: Result<_, QueryError>| matches!(r, Err(QueryError::Cancelled));
    assert!(is_cancelled(
        cancelled.range(&[a], 0, 1, None, 100).map(drop)
    ));
    assert!(is_cancelled(cancelled.list(None).map(drop)));
    assert!(is_cancelled(cancelled.device_fields("a").map(drop)));
    assert!(is_cancelled(
        cancelled.devices_page(None, 10, true, 100).map(drop)
    ));
    assert!(matches!(
        store.read_device("a", None, 10, 100, &cancel),
        Err(crate::store::StoreError::Cancelled)
    ));
    // Not cancelled, the same engine's reads answer.
    assert_eq!(engine.list(None).unwrap().len(), 5);

    let cancel = crate::store::Cancel::new();
    let walker = engine.cancellable(cancel.clone());
    let read = tokio::task::spawn_blocking(move || {
        walker.range(&[a], 0, bounds::MAX_TIME, None, 100).map(drop)
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !read.is_finished(),
        "the walk of 70 million hours ended in 200 ms"
    );
    let at = std::time::Instant::now();
    cancel.cancel();
    let r = read.await.unwrap();
    assert!(is_cancelled(r));
    assert!(
        at.elapsed() < Duration::from_millis(500),
        "{:?}",
        at.elapsed()
    );
}
