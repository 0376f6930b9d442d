//! A damaged store file against the real daemon: whatever the damage (bit
//! flips in data pages, truncation by a byte or to half, 0 bytes, a garbage
//! header), the daemon starts, stays up and serves; the file is set aside
//! (kept) and counted (a lost header is rebuilt: everything is salvaged); what reads is salvaged with its sequence numbers and
//! the uplink cursor; `ferry fsck` reaches the same verdict as the daemon's
//! open. And when the full integrity check runs: not after a clean stop,
//! always after a `kill -9` or a change to the file.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use common::{ferry_bin, http_get, metric_sample, Ferry};
use ferry_core::record::{Record, Value};
use ferry_core::sink::Item;
use ferry_gateway::metrics::IngestMetrics;
use ferry_gateway::store::{Store, StoreOptions, Writer, WriterSettings};

const T0: i64 = 1_764_000_000_000;
/// Records in the seed store (seq 1..=N).
const N: u64 = 5_000;
/// Where the uplink `cloud` stands in the seed store.
const CURSOR: u64 = 3_000;

/// The record stored as `seq`.
fn reading(seq: u64) -> Record {
    Record {
        ts: T0 + seq as i64 * 1000,
        source: Arc::from("local"),
        device: "d".into(),
        fields: vec![
            ("voltage".into(), Value::Int(seq as i64)),
            ("state".into(), Value::Str(format!("s{}", seq % 7).into())),
        ],
    }
}

/// A store of N records and an uplink cursor at CURSOR, closed cleanly;
/// built once.
fn seed() -> &'static Path {
    static SEED: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &SEED
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let path = Store::file_in(dir.path());
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async {
                let store = Store::open(&path, &StoreOptions::default()).unwrap();
                let ingest = Writer::spawn(
                    store.clone(),
                    WriterSettings::default().with_commit_interval(Duration::from_millis(10)),
                    IngestMetrics::new(),
                );
                for chunk in 0..N / 500 {
                    let items = (chunk * 500 + 1..=chunk * 500 + 500)
                        .map(|s| Item::Record(reading(s)))
                        .collect();
                    ingest.sink.submit_and_wait(items).await.unwrap();
                }
                ingest
                    .cursors
                    .advance_promptly(&Arc::from("uplink.cloud"), CURSOR)
                    .await
                    .unwrap();
                drop(ingest.sink);
                drop(ingest.cursors);
                ingest.task.await.unwrap();
                drop(store);
            });
            (dir, path)
        })
        .1
}

/// A data dir holding a copy of the seed store; the daemon's config.
fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::copy(seed(), Store::file_in(&data)).unwrap();
    let config = dir.path().join("ferry.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\nid = \"t\"\ndata_dir = {data:?}\n\
             [sources.local]\ntype = \"mqtt_broker\"\nlisten = \"127.0.0.1:0\"\n\
             [metrics]\nlisten = \"127.0.0.1:0\"\n[api]\nlisten = \"127.0.0.1:0\"\n"
        ),
    )
    .unwrap();
    (dir, data, config)
}

/// The address a daemon logged for `what` ("metrics endpoint listening").
fn logged_addr(ferry: &Ferry, what: &str) -> SocketAddr {
    ferry.wait_log(what, Duration::from_secs(10));
    let log = ferry.log();
    let line = log.iter().find(|l| l.contains(what)).unwrap();
    let at = line.find("addr=").unwrap() + 5;
    line[at..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// Starts the daemon, checks that it serves (`/readyz`; a query of every
/// record's `voltage`), returns it, its metrics address and the number of
/// points the query returned.
fn start_and_serve(config: &Path) -> (Ferry, SocketAddr, usize) {
    let ferry = Ferry::start_file(config);
    let metrics = logged_addr(&ferry, "metrics endpoint listening");
    let api = logged_addr(&ferry, "query API listening");
    let ready = http_get(metrics, "/readyz");
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    // The index replays the (salvaged) log in the background: ask until
    // the answer says it is complete.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let points = loop {
        let q = api_get(
            api,
            &format!(
                "/api/v1/query?series=d/voltage&from={T0}&to={}",
                T0 + (N as i64 + 10) * 1000
            ),
        );
        let body = q.split("\r\n\r\n").nth(1).unwrap_or_default();
        if q.starts_with("HTTP/1.1 404") {
            // Nothing of the series is left (nothing was salvaged).
            assert!(body.contains("never stored"), "{q}");
            break 0;
        }
        assert!(q.starts_with("HTTP/1.1 200"), "{q}");
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        if body["complete"] == serde_json::Value::Bool(true) {
            break body["series"][0]["points"].as_array().unwrap().len();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the index did not catch up: {body}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    (ferry, metrics, points)
}

/// GET from the API (which keeps connections open unless asked not to).
fn api_get(addr: SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn counter(metrics: SocketAddr, sample: &str) -> u64 {
    metric_sample(metrics, sample).unwrap_or_else(|| panic!("no sample {sample}")) as u64
}

/// Waits until the wall clock is past the file's mtime (so a rewrite within
/// the same clock tick cannot keep its mtime).
fn clock_past_mtime(path: &Path) {
    let mtime = std::fs::metadata(path).unwrap().modified().unwrap();
    ferry_testkit::wait_until_blocking(Duration::from_secs(5), "the clock moves on", || {
        SystemTime::now() > mtime + Duration::from_millis(20)
    })
    .unwrap();
}

type Damage = fn(&mut Vec<u8>);

/// Flips 10 bits past the header page, at positions from `seed`.
fn flip_bits(bytes: &mut [u8], seed: u64) {
    let mut rng = fastrand::Rng::with_seed(seed);
    for _ in 0..10 {
        let at = rng.usize(4096..bytes.len());
        bytes[at] ^= 1 << rng.u8(0..8);
    }
}

/// One case: the daemon runs once and stops cleanly; the file is damaged;
/// `ferry fsck` gives its verdict; the daemon starts on it and serves.
/// Returns the salvaged records (seq, record) and the metric samples.
fn case(what: &str, damage: Damage) -> (Vec<(u64, Record)>, u64, String) {
    let started = Instant::now();
    let (_dir, data, config) = setup();
    let file = Store::file_in(&data);
    {
        let (mut ferry, _, points) = start_and_serve(&config);
        assert_eq!(points as u64, N, "{what}");
        assert!(ferry.terminate().success(), "{what}");
    }
    clock_past_mtime(&file);
    let mut bytes = std::fs::read(&file).unwrap();
    damage(&mut bytes);
    std::fs::write(&file, &bytes).unwrap();

    let fsck = Command::new(ferry_bin())
        .args(["fsck", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let fsck_out = String::from_utf8_lossy(&fsck.stdout).into_owned();
    assert_eq!(fsck.status.code(), Some(1), "{what}: {fsck_out}");
    let verdict = fsck_out
        .split("problem: the store is damaged: ")
        .nth(1)
        .and_then(|r| r.split(" (the daemon sets").next())
        .unwrap_or_else(|| panic!("{what}: no verdict in {fsck_out}"))
        .to_owned();

    let (mut ferry, metrics, points) = start_and_serve(&config);
    assert_eq!(
        counter(metrics, "ferry_store_files_set_aside_total"),
        1,
        "{what}"
    );
    assert_eq!(
        counter(metrics, "ferry_store_integrity_checks_total"),
        1,
        "{what}"
    );
    let salvaged = counter(metrics, "ferry_store_salvaged_total{data=\"records\"}");
    let lost = counter(metrics, "ferry_store_salvage_lost_total{data=\"records\"}");
    let log = ferry.log().join("\n");
    assert!(
        log.contains(&format!("error={verdict}")) || log.contains(&format!("error=\"{verdict}\"")),
        "{what}: the daemon's verdict differs from fsck's ({verdict}):\n{log}"
    );
    assert!(log.contains("moved it aside"), "{what}: {log}");
    assert!(ferry.terminate().success(), "{what}");

    // The damaged file is kept as it was.
    let aside: Vec<PathBuf> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(".corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "{what}: {aside:?}");

    let store = Store::open(&file, &StoreOptions::default()).unwrap();
    let mut out = Vec::new();
    store.read_records(0, 2 * N as usize, &mut out).unwrap();
    assert_eq!(
        out.len() as u64,
        salvaged,
        "{what}: the metric counts what is there"
    );
    // The query index was rebuilt from the salvaged records.
    let in_range = out
        .iter()
        .filter(|r| {
            r.record.device.as_ref() == "d"
                && (T0..T0 + (N as i64 + 10) * 1000).contains(&r.record.ts)
                && r.record.fields.iter().any(|(f, _)| f.as_ref() == "voltage")
        })
        .count();
    assert_eq!(points, in_range, "{what}");
    // No sequence number is used twice: the head is past every known one.
    assert!(
        store.heads().records >= out.last().map_or(0, |r| r.seq),
        "{what}"
    );
    let cursor = store.cursor("uplink.cloud").unwrap();
    eprintln!(
        "{what}: {verdict}; salvaged {salvaged}, lost {lost}, cursor {cursor}, head {}, {:?}",
        store.heads().records,
        started.elapsed()
    );
    let records = out.into_iter().map(|r| (r.seq, r.record)).collect();
    (records, lost, format!("{cursor}"))
}

/// Records that are not what was stored under their seq.
fn altered(records: &[(u64, Record)]) -> usize {
    records.iter().filter(|(s, r)| *r != reading(*s)).count()
}

#[test]
fn bit_flips_in_data_pages_are_set_aside_and_what_reads_is_salvaged() {
    let flips: [(u64, Damage); 4] = [
        (1, |b| flip_bits(b, 1)),
        (2, |b| flip_bits(b, 2)),
        (3, |b| flip_bits(b, 3)),
        (4, |b| flip_bits(b, 4)),
    ];
    for (seed, damage) in flips {
        let what = format!("10 bits flipped, seed {seed}");
        let (records, lost, cursor) = case(&what, damage);
        assert!(records.windows(2).all(|w| w[0].0 < w[1].0), "{what}");
        // A flipped bit inside a value that still decodes is kept as read:
        // at most one record per flipped bit differs from what was stored.
        assert!(altered(&records) <= 10, "{what}: {}", altered(&records));
        if cursor != "0" {
            assert_eq!(cursor, CURSOR.to_string(), "{what}");
        }
        // The head is known (the cursor, the accounts): every seq is either
        // salvaged or counted lost.
        assert!(records.len() as u64 + lost <= N, "{what}");
    }
}

#[test]
fn a_truncated_store_keeps_what_reads() {
    // One byte short: the last page reads as zeros past the end, so nothing
    // is lost.
    let (records, lost, cursor) = case("truncated by 1 byte", |b| b.truncate(b.len() - 1));
    assert_eq!(records.len() as u64, N);
    assert_eq!(lost, 0);
    assert_eq!(altered(&records), 0);
    assert_eq!(records.first().map(|r| r.0), Some(1));
    assert_eq!(records.last().map(|r| r.0), Some(N));
    assert_eq!(cursor, CURSOR.to_string());
    // Half: whatever reads is intact and in order.
    let (records, _, _) = case("truncated to half", |b| b.truncate(b.len() / 2));
    assert_eq!(altered(&records), 0);
}

#[test]
fn an_empty_file_or_a_garbage_header_is_set_aside_not_replaced_silently() {
    let (records, _, cursor) = case("0 bytes", |b| b.clear());
    assert!(records.is_empty());
    assert_eq!(cursor, "0");
    // The header's first 64 bytes (magic number, page size, regions) are
    // rebuilt; its commit slots verify: everything is salvaged.
    let (records, lost, cursor) = case("garbage header", |b| b[..64].fill(0xAB));
    assert_eq!(records.len() as u64, N);
    assert_eq!((lost, altered(&records)), (0, 0));
    assert_eq!(cursor, CURSOR.to_string());
    // The commit slots too: the trees' roots are lost, and nothing reads.
    let (records, _, _) = case("header and commit slots zeroed", |b| b[..512].fill(0));
    assert!(records.is_empty());
}

#[test]
fn the_full_check_runs_after_a_kill_or_a_change_not_after_a_clean_stop() {
    let (_dir, data, config) = setup();
    let file = Store::file_in(&data);
    // A copied file: no clean-close record for it, so it is checked.
    let (mut ferry, metrics, _) = start_and_serve(&config);
    assert_eq!(counter(metrics, "ferry_store_integrity_checks_total"), 1);
    assert!(ferry.terminate().success());
    // Closed cleanly: trusted.
    let (mut ferry, metrics, _) = start_and_serve(&config);
    assert_eq!(counter(metrics, "ferry_store_integrity_checks_total"), 0);
    // kill -9: checked.
    ferry.kill9();
    let (mut ferry, metrics, _) = start_and_serve(&config);
    assert_eq!(counter(metrics, "ferry_store_integrity_checks_total"), 1);
    assert_eq!(counter(metrics, "ferry_store_files_set_aside_total"), 0);
    assert!(ferry.terminate().success());
    // Rewritten by something else, even with the same bytes: checked.
    clock_past_mtime(&file);
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, bytes).unwrap();
    let (mut ferry, metrics, _) = start_and_serve(&config);
    assert_eq!(counter(metrics, "ferry_store_integrity_checks_total"), 1);
    assert!(ferry.terminate().success());
    let store = Store::open(&file, &StoreOptions::default()).unwrap();
    assert_eq!(store.heads().records, N);
    assert_eq!(store.cursor("uplink.cloud").unwrap(), CURSOR);
}
