use std::sync::Arc;

use ferry_core::record::{DeadLetter, Record, Value};
use ferry_core::sink::{Committed, Item};
use redb::ReadableDatabase;
use std::time::Duration;

use super::*;
use crate::metrics::IngestMetrics;

fn record(device: &str, ts: i64, v: i64) -> Record {
    Record {
        ts,
        source: Arc::from("local"),
        device: device.into(),
        fields: vec![
            ("voltage".into(), Value::Int(v)),
            ("temperature".into(), Value::Float(21.5)),
            ("ok".into(), Value::Bool(true)),
            ("state".into(), Value::Str("run".into())),
        ],
    }
}

fn open(dir: &tempfile::TempDir) -> Store {
    Store::open(&Store::file_in(dir.path()), &StoreOptions::default()).unwrap()
}

#[tokio::test]
async fn records_are_stored_in_order_and_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let ingest = Writer::spawn(
        store.clone(),
        WriterSettings::default().with_commit_interval(Duration::from_millis(10)),
        IngestMetrics::new(),
    );
    let mut receipts = Vec::new();
    for i in 0..100 {
        let items = vec![Item::Record(record(&format!("d{}", i % 3), 1000 + i, i))];
        receipts.push(ingest.sink.submit(items).await.unwrap());
    }
    for (i, r) in receipts.into_iter().enumerate() {
        assert_eq!(
            r.committed().await.unwrap(),
            Committed {
                last_seq: Some(i as u64 + 1)
            }
        );
    }
    assert_eq!(store.heads().records, 100);
    drop(ingest.sink);
    drop(ingest.cursors);
    ingest.task.await.unwrap();
    drop(store);

    let store = open(&dir);
    assert_eq!(
        store.heads(),
        Heads {
            records: 100,
            dead: 0
        }
    );
    let mut out = Vec::new();
    let stats = store.read_records(10, 5, &mut out).unwrap();
    assert_eq!(stats.last_seq, 15);
    assert_eq!(out.len(), 5);
    assert_eq!(out[0].seq, 11);
    assert_eq!(out[0].record, record("d1", 1010, 10));
    assert_eq!(out[4].record, record("d2", 1014, 14));
}

#[tokio::test]
async fn dead_letters_and_cursors_are_durable() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let ingest = Writer::spawn(
        store.clone(),
        WriterSettings::default().with_commit_interval(Duration::from_millis(10)),
        IngestMetrics::new(),
    );
    let dead = DeadLetter::new(
        Arc::from("local"),
        "sensors/x/telemetry",
        "not_json",
        "payload is not JSON: expected value at line 1 column 1",
        b"hello",
    );
    let done = ingest
        .sink
        .submit_and_wait(vec![
            Item::Dead(dead.clone()),
            Item::Record(record("a", 1, 1)),
        ])
        .await
        .unwrap();
    assert_eq!(done.last_seq, Some(1));
    let name: Arc<str> = Arc::from("uplink.cloud");
    ingest.cursors.advance(&name, 1).await.unwrap();
    ingest.cursors.advance(&name, 0).await.unwrap(); // never moves back
    drop(ingest.sink);
    drop(ingest.cursors);
    ingest.task.await.unwrap();
    drop(store);

    let store = open(&dir);
    assert_eq!(store.cursor("uplink.cloud").unwrap(), 1);
    assert_eq!(store.cursor("other").unwrap(), 0);
    let back = store.read_dead(0, 10).unwrap();
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].seq, 1);
    assert_eq!(back[0].dead, dead);
}

#[tokio::test]
async fn a_prompt_cursor_move_is_durable_within_the_commit_interval() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let cfg = WriterSettings {
        commit_interval: std::time::Duration::from_millis(10),
        cursor_flush_interval: std::time::Duration::from_secs(3600),
        ..WriterSettings::default().with_commit_interval(Duration::from_millis(10))
    };
    let ingest = Writer::spawn(store.clone(), cfg, IngestMetrics::new());
    let name: Arc<str> = Arc::from("uplink.cloud");
    ingest.cursors.advance_promptly(&name, 7).await.unwrap();
    // Not an hour later: within a commit (a generous bound for a slow disk).
    ferry_testkit::wait_until(std::time::Duration::from_secs(5), "cursor at 7", || {
        store.cursor("uplink.cloud").unwrap() == 7
    })
    .await
    .unwrap();
    drop(ingest.sink);
    drop(ingest.cursors);
    ingest.task.await.unwrap();
}

#[tokio::test]
async fn the_commit_deadline_counts_from_the_submission_not_from_its_arrival() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let interval = std::time::Duration::from_secs(10);
    let cfg = WriterSettings {
        commit_interval: interval,
        ..WriterSettings::default().with_commit_interval(Duration::from_millis(10))
    };
    let ingest = Writer::spawn(store.clone(), cfg, IngestMetrics::new());
    // Handed over 9.9 s ago and queued since (behind a slow commit, or in
    // the pipeline): due in 0.1 s, not a whole interval after it arrives.
    let (done, committed) = tokio::sync::oneshot::channel();
    let submitted = tokio::time::Instant::now() - std::time::Duration::from_millis(9_900);
    ingest
        .sink
        .forward(ferry_core::sink::Submission {
            items: vec![Item::Record(record("a", 1, 1))],
            done: Some(done),
            max_delay: None,
            submitted,
        })
        .await
        .unwrap();
    tokio::time::timeout(interval / 2, committed)
        .await
        .expect("committed long before a whole interval")
        .unwrap()
        .unwrap();
    assert_eq!(store.heads().records, 1);
}

#[tokio::test]
async fn many_small_submissions_share_few_commits() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let metrics = IngestMetrics::new();
    let cfg = WriterSettings {
        commit_interval: std::time::Duration::from_millis(50),
        ..WriterSettings::default().with_commit_interval(Duration::from_millis(10))
    };
    let ingest = Writer::spawn(store.clone(), cfg, metrics.clone());
    let mut receipts = Vec::new();
    for i in 0..2000 {
        receipts.push(
            ingest
                .sink
                .submit(vec![Item::Record(record("a", i, i))])
                .await
                .unwrap(),
        );
    }
    for r in receipts {
        r.committed().await.unwrap();
    }
    assert_eq!(metrics.records_stored.get(), 2000);
    // Submitted far faster than 50 ms each: a handful of commits, not 2000.
    assert!(
        metrics.commits.get() < 20,
        "{} commits",
        metrics.commits.get()
    );
}

#[test]
fn an_undecodable_record_is_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let tx = store.db().unwrap().begin_write().unwrap();
    {
        let mut t = tx.open_table(RECORDS).unwrap();
        t.insert(1, [9u8, 1, 2].as_slice()).unwrap(); // unknown version
        t.insert(2, [codec::FORMAT_VERSION, 2].as_slice()).unwrap(); // truncated
    }
    tx.commit().unwrap();
    let mut out = Vec::new();
    let stats = store.read_records(0, 10, &mut out).unwrap();
    assert!(out.is_empty());
    assert_eq!(stats.undecodable, 2);
    assert_eq!(stats.last_seq, 2);
}

#[test]
fn a_newer_format_version_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = Store::file_in(dir.path());
    {
        let db = redb::Database::create(&path).unwrap();
        let tx = db.begin_write().unwrap();
        tx.open_table(META)
            .unwrap()
            .insert("format_version", 7)
            .unwrap();
        tx.commit().unwrap();
    }
    let err = Store::open(&path, &StoreOptions::default()).err().unwrap();
    assert_eq!(
        err.to_string(),
        format!(
            "store {} has format version 7, this Ferry reads version 1",
            path.display()
        )
    );
}

mod retention {
    use super::*;
    use crate::store::{Retention, WhenFull};

    const MIB: u64 = 1 << 20;
    /// Record size: about 4 KiB, so a soak of ten budgets is few records.
    const BLOB: usize = 4000;

    fn big(i: i64, ts: i64) -> Record {
        Record {
            ts,
            source: Arc::from("local"),
            device: "d".into(),
            fields: vec![
                ("i".into(), Value::Int(i)),
                ("blob".into(), Value::Str("x".repeat(BLOB).into())),
            ],
        }
    }

    fn cfg(max_disk: u64, when_full: WhenFull, consumers: &[&str]) -> WriterSettings {
        WriterSettings {
            retention: Retention {
                max_disk,
                max_age: None,
                when_full,
            },
            consumers: consumers.iter().map(|c| Arc::from(*c)).collect(),
            ..WriterSettings::default().with_commit_interval(Duration::from_millis(10))
        }
    }

    async fn write(ingest: &Writer, range: std::ops::Range<i64>) -> Vec<Committed> {
        let mut out = Vec::new();
        for chunk in range.collect::<Vec<_>>().chunks(200) {
            let items = chunk
                .iter()
                .map(|&i| Item::Record(big(i, ferry_core::record::now_millis())))
                .collect();
            out.push(ingest.sink.submit_and_wait(items).await.unwrap());
        }
        out
    }

    async fn close(ingest: Writer) {
        drop(ingest.sink);
        drop(ingest.cursors);
        ingest.task.await.unwrap();
    }

    /// A soak that writes ten times the budget: the file stays within it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_file_stays_within_the_budget_through_ten_times_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let metrics = IngestMetrics::new();
        let ingest = Writer::spawn(
            store.clone(),
            cfg(16 * MIB, WhenFull::DropOldest, &[]),
            metrics.clone(),
        );
        // ~4 KiB per record: 40,000 records are ten times 16 MiB.
        let n = 40_000;
        let mut max_file = 0;
        for part in 0..10 {
            write(&ingest, part * n / 10..(part + 1) * n / 10).await;
            max_file = max_file.max(std::fs::metadata(store.path()).unwrap().len());
        }
        let evicted = metrics
            .records_evicted
            .get_or_create(&crate::metrics::ReasonLabel {
                reason: "disk_budget".into(),
            })
            .get();
        close(ingest).await;
        eprintln!("largest file: {max_file} bytes for a 16 MiB budget; evicted {evicted}");
        assert!(max_file <= 16 * MIB + 2 * MIB, "file grew to {max_file}");
        assert!(evicted > 30_000, "{evicted}");
        // The newest records are all there, in order, after the evicted ones.
        let heads = store.heads();
        assert_eq!(heads.records, n as u64);
        let mut out = Vec::new();
        store
            .read_records(heads.records - 100, 1000, &mut out)
            .unwrap();
        assert_eq!(out.len(), 100);
        assert_eq!(out[99].record.field("i"), Some(&Value::Int(n - 1)));
        let first = store
            .db()
            .unwrap()
            .begin_read()
            .unwrap()
            .open_table(RECORDS)
            .unwrap()
            .first()
            .unwrap()
            .unwrap()
            .0
            .value();
        assert_eq!(
            store.heads().records - first + 1,
            metrics.store_records.get()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn delivered_records_go_first_and_drop_newest_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let metrics = IngestMetrics::new();
        let uplink: Arc<str> = Arc::from("uplink.cloud");
        let ingest = Writer::spawn(
            store.clone(),
            cfg(16 * MIB, WhenFull::DropNewest, &["uplink.cloud"]),
            metrics.clone(),
        );
        // The budget holds about 2,700 of these records at its high-water mark.
        write(&ingest, 0..2_000).await;
        // Delivered up to 1,000: those may go.
        ingest.cursors.advance(&uplink, 1_000).await.unwrap();
        let done = write(&ingest, 2_000..3_000).await;
        assert!(
            done.iter().all(|c| c.last_seq.is_some()),
            "room was made from delivered records"
        );
        let reason = |r: &str| {
            metrics
                .records_evicted
                .get_or_create(&crate::metrics::ReasonLabel { reason: r.into() })
                .get()
        };
        assert!(reason("disk_budget") > 0);
        // Nothing delivered is left: new records are dropped and counted, not stored.
        let done = write(&ingest, 3_000..6_000).await;
        assert_eq!(
            reason("disk_budget"),
            1_000,
            "every delivered record, and only those"
        );
        assert_eq!(reason("disk_budget_undelivered"), 0);
        let dropped = done.iter().filter(|c| c.last_seq.is_none()).count();
        assert!(dropped > 0);
        let head = store.heads().records;
        assert!(head < 6_000);
        assert_eq!(
            metrics
                .records_dropped
                .get_or_create(&crate::metrics::ReasonLabel {
                    reason: "disk_full".into()
                })
                .get(),
            6_000 - head
        );
        // Every undelivered record is still stored.
        let mut out = Vec::new();
        store.read_records(0, 100, &mut out).unwrap();
        assert_eq!(out[0].seq, 1_001);
        close(ingest).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn block_holds_sources_until_uplinks_deliver() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let metrics = IngestMetrics::new();
        let uplink: Arc<str> = Arc::from("uplink.cloud");
        let ingest = Writer::spawn(
            store.clone(),
            cfg(16 * MIB, WhenFull::Block, &["uplink.cloud"]),
            metrics.clone(),
        );
        // Fill to the budget.
        let mut i = 0;
        let blocked = loop {
            let items = (i..i + 200).map(|i| Item::Record(big(i, 0))).collect();
            let receipt = ingest.sink.submit(items).await.unwrap();
            match tokio::time::timeout(std::time::Duration::from_secs(3), receipt.committed()).await
            {
                Ok(done) => assert!(done.unwrap().last_seq.is_some()),
                Err(_) => break i,
            }
            i += 200;
        };
        assert_eq!(metrics.ingest_blocked.get(), 1);
        let head = store.heads().records;
        assert_eq!(head, blocked as u64);
        // The uplink delivers: the held records are stored, none lost.
        ingest.cursors.advance(&uplink, head).await.unwrap();
        let items = (blocked + 200..blocked + 400)
            .map(|i| Item::Record(big(i, 0)))
            .collect();
        let done = ingest.sink.submit_and_wait(items).await.unwrap();
        assert_eq!(done.last_seq, Some(head + 400));
        assert_eq!(metrics.ingest_blocked.get(), 0);
        assert_eq!(
            metrics
                .records_dropped
                .get_or_create(&crate::metrics::ReasonLabel {
                    reason: "disk_full".into()
                })
                .get(),
            0
        );
        close(ingest).await;
    }

    #[tokio::test]
    async fn records_older_than_max_age_are_evicted() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let metrics = IngestMetrics::new();
        let mut c = cfg(1 << 30, WhenFull::DropOldest, &[]);
        c.retention.max_age = Some(std::time::Duration::from_secs(3600));
        let now = ferry_core::record::now_millis();
        {
            let ingest = Writer::spawn(store.clone(), c.clone(), metrics.clone());
            let old = (0..10)
                .map(|i| Item::Record(big(i, now - 7_200_000)))
                .collect();
            ingest.sink.submit_and_wait(old).await.unwrap();
            close(ingest).await;
        }
        // The next start checks the age at its first commit.
        let ingest = Writer::spawn(store.clone(), c, metrics.clone());
        let new = (10..15).map(|i| Item::Record(big(i, now))).collect();
        ingest.sink.submit_and_wait(new).await.unwrap();
        close(ingest).await;
        let mut out = Vec::new();
        store.read_records(0, 100, &mut out).unwrap();
        assert_eq!(
            out.iter().map(|r| r.seq).collect::<Vec<_>>(),
            (11..=15).collect::<Vec<_>>()
        );
        assert_eq!(
            metrics
                .records_evicted
                .get_or_create(&crate::metrics::ReasonLabel {
                    reason: "max_age".into()
                })
                .get(),
            10
        );
    }

    #[tokio::test]
    async fn the_byte_account_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let first = IngestMetrics::new();
        let ingest = Writer::spawn(
            store.clone(),
            cfg(1 << 30, WhenFull::DropOldest, &[]),
            first.clone(),
        );
        write(&ingest, 0..1000).await;
        close(ingest).await;
        let second = IngestMetrics::new();
        let ingest = Writer::spawn(
            store.clone(),
            cfg(1 << 30, WhenFull::DropOldest, &[]),
            second.clone(),
        );
        ingest.sink.submit_and_wait(vec![]).await.unwrap();
        assert_eq!(
            second.store_estimated_bytes.get(),
            first.store_estimated_bytes.get()
        );
        assert_eq!(second.store_records.get(), 1000);
        close(ingest).await;
    }
}

mod repair {
    use super::*;

    async fn make_store(dir: &tempfile::TempDir) -> std::path::PathBuf {
        let store = open(dir);
        let ingest = Writer::spawn(
            store.clone(),
            WriterSettings::default().with_commit_interval(Duration::from_millis(10)),
            IngestMetrics::new(),
        );
        for i in 0..20 {
            let items = (0..500)
                .map(|j| Item::Record(record("d", i * 500 + j, j)))
                .collect();
            ingest.sink.submit_and_wait(items).await.unwrap();
        }
        drop(ingest.sink);
        drop(ingest.cursors);
        ingest.task.await.unwrap();
        store.path().to_owned()
    }

    /// Every kind of damage is found before anything reads the file: it is
    /// set aside (kept), what reads is salvaged with its sequence numbers,
    /// and the fresh store takes new records after the old head.
    #[tokio::test]
    async fn damaged_files_are_set_aside_and_salvaged() {
        type Damage = fn(&mut Vec<u8>);
        let damages: [(&str, Damage); 7] = [
            ("truncated to half", |b| b.truncate(b.len() / 2)),
            ("truncated by 1 byte", |b| b.truncate(b.len() - 1)),
            ("torn tail of 100 bytes", |b| b.truncate(b.len() - 100)),
            ("garbage header", |b| b[..64].fill(0xAB)),
            ("flipped bytes throughout", |b| {
                for i in (4096..b.len()).step_by(4099) {
                    b[i] ^= 0xFF;
                }
            }),
            ("all zeros", |b| b.fill(0)),
            ("empty", |b| b.clear()),
        ];
        for (what, damage) in damages {
            let dir = tempfile::tempdir().unwrap();
            let path = make_store(&dir).await;
            let mut bytes = std::fs::read(&path).unwrap();
            damage(&mut bytes);
            std::fs::write(&path, &bytes).unwrap();
            let (store, opened) = Store::open_or_salvage(&path, &StoreOptions::default())
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            let Opened::Salvaged { aside, why, report } = opened else {
                panic!("{what}: not set aside: {opened:?}");
            };
            assert!(aside.exists(), "{what}: the damaged file is kept");
            assert_eq!(
                std::fs::read(&aside).unwrap(),
                bytes,
                "{what}: kept unchanged"
            );
            let mut out = Vec::new();
            store.read_records(0, 100_000, &mut out).unwrap();
            assert_eq!(out.len() as u64, report.records, "{what}");
            assert!(out.windows(2).all(|w| w[0].seq < w[1].seq), "{what}");
            for r in &out {
                // The original sequence numbers: record i was written as seq i + 1.
                let i = r.seq - 1;
                assert_eq!(r.record, record("d", i as i64, (i % 500) as i64), "{what}");
            }
            assert!(
                store.heads().records >= out.last().map_or(0, |r| r.seq),
                "{what}"
            );
            eprintln!("{what}: {why}: {report}");
            // The store takes new records, after every salvaged one.
            let head = store.heads().records;
            let ingest = Writer::spawn(
                store.clone(),
                WriterSettings::default().with_commit_interval(Duration::from_millis(10)),
                IngestMetrics::new(),
            );
            let done = ingest
                .sink
                .submit_and_wait(vec![Item::Record(record("d", 1, 1))])
                .await
                .unwrap_or_else(|e| panic!("{what}: {e:?}"));
            assert_eq!(done.last_seq, Some(head + 1), "{what}");
        }
    }

    #[tokio::test]
    async fn a_clean_close_is_trusted_and_anything_else_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = make_store(&dir).await;
        let (store, opened) = Store::open_or_salvage(&path, &StoreOptions::default()).unwrap();
        assert!(
            matches!(opened, Opened::Sound(salvage::Check::Trusted)),
            "{opened:?}"
        );
        // Open: the record is gone, so a crash now leaves the next open to check.
        let (_, crashed) = (store.clone(), {
            let record = std::path::PathBuf::from(format!("{}.clean", path.display()));
            record.exists()
        });
        assert!(!crashed);
        drop(store);
        let (store, opened) = Store::open_or_salvage(&path, &StoreOptions::default()).unwrap();
        assert!(
            matches!(opened, Opened::Sound(salvage::Check::Trusted)),
            "{opened:?}"
        );
        drop(store);
        // Changed by something else (same bytes rewritten: a new mtime).
        let bytes = std::fs::read(&path).unwrap();
        let before = std::fs::metadata(&path).unwrap().modified().unwrap();
        ferry_testkit::wait_until_blocking(
            std::time::Duration::from_secs(5),
            "the clock moves",
            || std::time::SystemTime::now() > before + std::time::Duration::from_millis(20),
        )
        .unwrap();
        std::fs::write(&path, &bytes).unwrap();
        let (store, opened) = Store::open_or_salvage(&path, &StoreOptions::default()).unwrap();
        assert!(
            matches!(opened, Opened::Sound(salvage::Check::Full)),
            "{opened:?}"
        );
        assert_eq!(store.heads().records, 10_000);
    }

    #[test]
    fn a_store_in_use_is_not_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let err = Store::open_or_salvage(store.path(), &StoreOptions::default())
            .err()
            .unwrap();
        assert!(!err.is_corruption(), "{err}");
        assert!(store.path().exists());
    }
}

mod fsck {
    use super::*;
    use crate::store::fsck::fsck;

    #[tokio::test]
    async fn a_clean_store_passes_and_planted_damage_is_found_and_repaired() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let ingest = Writer::spawn(
            store.clone(),
            WriterSettings::default().with_commit_interval(Duration::from_millis(10)),
            IngestMetrics::new(),
        );
        let items = (0..100).map(|i| Item::Record(record("d", i, i))).collect();
        ingest.sink.submit_and_wait(items).await.unwrap();
        drop(ingest.sink);
        drop(ingest.cursors);
        ingest.task.await.unwrap();
        let path = store.path().to_owned();
        {
            // Plant: a record that does not decode, an inner gap, a cursor ahead.
            let db = store.db().unwrap();
            let tx = db.begin_write().unwrap();
            {
                let mut t = tx.open_table(RECORDS).unwrap();
                t.insert(50, [codec::FORMAT_VERSION, 0xff].as_slice())
                    .unwrap();
                t.remove(60).unwrap();
                let mut c = tx.open_table(CURSORS).unwrap();
                c.insert("uplink.cloud", 500).unwrap();
            }
            tx.commit().unwrap();
        }
        drop(store);

        let report = fsck(&path, false).unwrap();
        assert!(report.integrity_ok);
        assert_eq!(
            (report.records, report.first_record, report.head),
            (99, 1, 100)
        );
        assert_eq!(report.gaps, vec![(59, 61)]);
        assert_eq!(report.undecodable, vec![50]);
        assert_eq!(report.cursors_ahead, vec![("uplink.cloud".to_owned(), 500)]);
        assert_eq!(report.problems(), 3);
        assert!(report
            .to_string()
            .ends_with("3 problems; run with --repair to fix them"));

        let repaired = fsck(&path, true).unwrap();
        assert!(repaired
            .repaired
            .iter()
            .any(|r| r == "removed 1 undecodable records"));
        assert!(repaired
            .repaired
            .iter()
            .any(|r| r == "moved cursor uplink.cloud from 500 back to 100"));
        let after = fsck(&path, false).unwrap();
        assert_eq!(after.undecodable, Vec::<u64>::new());
        assert_eq!(after.cursors_ahead, vec![]);
        assert_eq!(after.gaps.len(), 2, "the gaps stay: (49, 51) and (59, 61)");
        assert_eq!(after.records, 98);
    }
}

/// A source that acknowledges nobody lets its records wait for a later
/// commit; one that waits for the commit takes them along.
#[tokio::test]
async fn relaxed_submissions_ride_the_next_commit() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let metrics = IngestMetrics::new();
    let ingest = Writer::spawn(
        store.clone(),
        WriterSettings::default().with_commit_interval(Duration::from_millis(10)),
        metrics.clone(),
    );
    let delay = std::time::Duration::from_millis(300);
    let started = std::time::Instant::now();
    let relaxed = ingest
        .sink
        .submit_within(vec![Item::Record(record("m", 1, 1))], Some(delay))
        .await
        .unwrap();
    relaxed.committed().await.unwrap();
    assert!(started.elapsed() >= delay - std::time::Duration::from_millis(5));
    assert_eq!(metrics.commits.get(), 1);

    let relaxed = ingest
        .sink
        .submit_within(
            vec![Item::Record(record("m", 2, 2))],
            Some(std::time::Duration::from_secs(60)),
        )
        .await
        .unwrap();
    let urgent = ingest
        .sink
        .submit_and_wait(vec![Item::Record(record("q", 3, 3))])
        .await
        .unwrap();
    assert_eq!(urgent.last_seq, Some(3));
    assert_eq!(
        relaxed.committed().await.unwrap().last_seq,
        Some(2),
        "in the urgent one's commit"
    );
    assert_eq!(metrics.commits.get(), 2);
    drop(ingest.sink);
    drop(ingest.cursors);
    ingest.task.await.unwrap();
}

mod route;

/// A flood of device names fills `max_devices`; once retention has evicted
/// every record of those devices (through a restart in between, so their
/// last records are known only as "before the start"), a new device is
/// stored, the flood's devices are gone from the registry (and so from
/// `/api/v1/devices`), a name that comes back is a new device again, and a
/// reopened store has the same registry.
#[tokio::test]
async fn devices_whose_every_record_is_evicted_are_forgotten_and_free_their_slots() {
    use std::num::NonZeroUsize;
    fn blob(i: i64) -> Record {
        Record {
            ts: 1000 + i,
            source: Arc::from("local"),
            device: "real".into(),
            fields: vec![
                ("i".into(), Value::Int(i)),
                ("blob".into(), Value::Str("x".repeat(4000).into())),
            ],
        }
    }
    let settings = || WriterSettings {
        retention: Retention {
            max_disk: 2 << 20,
            max_age: None,
            when_full: WhenFull::DropOldest,
        },
        limits: limits::Limits {
            max_devices: NonZeroUsize::new(3).unwrap(),
            ..limits::Limits::default()
        },
        ..WriterSettings::default().with_commit_interval(Duration::from_millis(10))
    };
    let devices = |store: &Store| -> Vec<String> {
        store
            .names()
            .devices()
            .keys()
            .map(|d| d.to_string())
            .collect()
    };
    async fn put(ingest: &Writer, r: Record) -> Committed {
        ingest
            .sink
            .submit_and_wait(vec![Item::Record(r)])
            .await
            .unwrap()
    }
    async fn close(ingest: Writer) {
        drop(ingest.sink);
        drop(ingest.cursors);
        ingest.task.await.unwrap();
    }
    let stored = |seq| Committed {
        last_seq: Some(seq),
    };

    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let ingest = Writer::spawn(store.clone(), settings(), IngestMetrics::new());
    for (i, d) in ["real", "bogus-1", "bogus-2"].iter().enumerate() {
        assert_eq!(put(&ingest, record(d, 1, 0)).await, stored(i as u64 + 1));
    }
    // Full: the new device is a dead letter.
    put(&ingest, record("new", 1, 0)).await;
    assert_eq!(store.heads().dead, 1);
    assert_eq!(
        store.read_dead(0, 1).unwrap()[0].dead.kind,
        "too_many_devices"
    );
    close(ingest).await;

    // After a restart, retention evicts the flood's records (and the first
    // of `real`) to make room for `real`'s.
    let metrics = IngestMetrics::new();
    let ingest = Writer::spawn(store.clone(), settings(), metrics.clone());
    let mut i = 0;
    while store.read_records(0, 1, &mut Vec::new()).unwrap().last_seq <= 3 {
        put(&ingest, blob(i)).await;
        i += 1;
        assert!(i < 1000, "retention never evicted the first records");
    }
    assert_eq!(devices(&store), ["bogus-1", "bogus-2", "real"]);
    let seq = store.heads().records + 1;
    assert_eq!(put(&ingest, record("new", 1, 0)).await, stored(seq));
    assert_eq!(devices(&store), ["new", "real"]);
    assert_eq!(metrics.devices_forgotten.get(), 2);
    // The flood's eight series, and the four of `real` whose only record
    // went (its blobs hold two others): `real` stays.
    assert_eq!(metrics.series_forgotten.get(), 12);
    assert_eq!(metrics.devices.get(), 2);
    assert_eq!(metrics.series.get(), 6);
    // A forgotten name that comes back is a new device, with room for it.
    assert_eq!(put(&ingest, record("bogus-1", 1, 0)).await, stored(seq + 1));
    assert_eq!(devices(&store), ["bogus-1", "new", "real"]);
    close(ingest).await;
    drop(store);

    let store = open(&dir);
    assert_eq!(devices(&store), ["bogus-1", "new", "real"]);
    let tx = store.db().unwrap().begin_read().unwrap();
    assert_eq!(names::known_series(&tx).unwrap().len(), 10);
}
