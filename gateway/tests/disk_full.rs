//! A full disk (ENOSPC) under the store: no panic, sources are told their
//! records were not stored, and ingest resumes by itself when space returns.
//! Uses a small tmpfs, so it needs root (as CI has); elsewhere it says why
//! it did not run.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use ferry_core::record::{Record, Value};
use ferry_core::sink::{Item, SubmitError};
use ferry_gateway::metrics::IngestMetrics;
use ferry_gateway::store::{Store, StoreOptions, Writer, WriterSettings};

struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = std::env::temp_dir().join(format!("ferry-enospc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Tmpfs(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn reading(i: i64) -> Record {
    Record {
        ts: i,
        source: Arc::from("local"),
        device: "d".into(),
        fields: vec![
            ("i".into(), Value::Int(i)),
            ("pad".into(), Value::Str("p".repeat(200).into())),
        ],
    }
}

fn fill(path: &Path) {
    // Fill the file system to the last byte.
    let mut f = std::fs::File::create(path).unwrap();
    let block = vec![0u8; 64 * 1024];
    use std::io::Write;
    while f.write_all(&block).is_ok() {}
    let small = [0u8; 512];
    while f.write_all(&small).is_ok() {}
    let _ = f.sync_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_records_and_ingest_resumes_when_space_returns() {
    let Some(fs) = Tmpfs::mount("8m") else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    };
    let store = Store::open(&Store::file_in(&fs.0), &StoreOptions::default()).unwrap();
    let metrics = IngestMetrics::new();
    let ingest = Writer::spawn(
        store.clone(),
        WriterSettings::default().with_commit_interval(Duration::from_millis(10)),
        metrics.clone(),
    );
    let mut acked = Vec::new();
    for i in 0..10 {
        let items = (0..100)
            .map(|k| Item::Record(reading(i * 100 + k)))
            .collect();
        let done = ingest.sink.submit_and_wait(items).await.unwrap();
        acked.push(done.last_seq.unwrap());
    }
    let filler = fs.0.join("filler");
    fill(&filler);
    // Now every commit fails: each submitter is told, nothing panics.
    let mut refused = 0;
    let mut i = 1_000;
    while refused < 20 {
        match ingest
            .sink
            .submit_and_wait((0..50).map(|k| Item::Record(reading(i + k))).collect())
            .await
        {
            Ok(done) => acked.push(done.last_seq.unwrap()),
            Err(SubmitError::Store(msg)) => {
                refused += 1;
                assert!(!msg.is_empty());
            }
            Err(e) => panic!("{e}"),
        }
        i += 50;
    }
    assert!(metrics.commit_errors.get() >= 20);
    // Space returns: ingest resumes without a restart.
    std::fs::remove_file(&filler).unwrap();
    let done = ingest
        .sink
        .submit_and_wait(vec![Item::Record(reading(999_999))])
        .await
        .expect("ingest resumes once there is space");
    let last = done.last_seq.unwrap();
    // Every acknowledged record is readable, and the new one too.
    let mut out = Vec::new();
    store.read_records(0, usize::MAX, &mut out).unwrap();
    let stored: std::collections::HashSet<u64> = out.iter().map(|r| r.seq).collect();
    for seq in acked.iter().chain([&last]) {
        assert!(stored.contains(seq), "acknowledged seq {seq} is missing");
    }
    drop(ingest.sink);
    drop(ingest.cursors);
    ingest.task.await.unwrap();
}
