use std::sync::Arc;

use ferry_adapters::record::{DeadLetter, Record, Value};
use ferry_adapters::sink::{Committed, Item};

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
    let ingest = spawn_ingest(store.clone(), IngestConfig::default(), IngestMetrics::new());
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
    let ingest = spawn_ingest(store.clone(), IngestConfig::default(), IngestMetrics::new());
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
async fn many_small_submissions_share_few_commits() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let metrics = IngestMetrics::new();
    let cfg = IngestConfig {
        commit_interval: std::time::Duration::from_millis(50),
        ..IngestConfig::default()
    };
    let ingest = spawn_ingest(store.clone(), cfg, metrics.clone());
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
    let tx = store.db().begin_write().unwrap();
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
