//! The daemon's life under systemd, measured on the real `ferry` binary with
//! a unix datagram socket as `NOTIFY_SOCKET`:
//!
//! - start-to-READY (spawn to the `READY=1` datagram) with an empty store and
//!   with a store of ~1 GB (filled beforehand through the library, with the
//!   query index, as the daemon writes it);
//! - RSS idle, a few seconds after READY, for both;
//! - SIGTERM-to-exit with a backlog: the 1 GB store, an uplink to a local TLS
//!   mosquitto busy sending it, SIGTERM once it publishes;
//! - restart with the query index far behind (none at all) after a flood,
//!   at 1 M, 2 M and 4 M records: start-to-READY and the daemon's
//!   background replay (READY to `ferry_query_index_lag_records` 0), and
//!   the library's replay per record, with the old way of writing every
//!   open minute at every chunk as the baseline on the same stores.
//!
//! `cargo bench -p ferry-gateway --bench lifecycle`; `FERRY_BENCH_SCALE=0.1`
//! makes the big store ~100 MB and the replay stores a tenth.
//! `FERRY_BENCH_ONLY=replay` runs only the replay phase. Prints
//! `name: value unit` lines.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_core::record::{Record, Value};
use ferry_core::sink::Item;
use ferry_gateway::metrics::IngestMetrics;
use ferry_gateway::query::{Index, IndexOptions};
use ferry_gateway::store::{Store, StoreOptions, Writer, WriterSettings};
use ferry_testkit::{free_port, Mosquitto, Pki};

fn scale() -> f64 {
    std::env::var("FERRY_BENCH_SCALE")
        .ok()
        .map(|s| s.parse().expect("FERRY_BENCH_SCALE is a number"))
        .unwrap_or(1.0)
}

fn fig(name: &str, value: impl std::fmt::Display, unit: &str) {
    println!("{name}: {value} {unit}");
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

struct Daemon {
    child: Child,
    socket: UnixDatagram,
}

impl Daemon {
    /// Starts `ferry run` and waits for READY=1; the time it took.
    fn start(dir: &Path, config: &str) -> (Daemon, Duration) {
        let path = dir.join("ferry.toml");
        std::fs::write(&path, config).unwrap();
        let sock = dir.join("notify.sock");
        let _ = std::fs::remove_file(&sock);
        let socket = UnixDatagram::bind(&sock).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(600)))
            .unwrap();
        let started = Instant::now();
        let child = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["run", "--config"])
            .arg(&path)
            .env("NOTIFY_SOCKET", &sock)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let d = Daemon { child, socket };
        let mut buf = [0u8; 4096];
        loop {
            let n = d.socket.recv(&mut buf).expect("no READY=1");
            if buf[..n].starts_with(b"READY=1") {
                return (d, started.elapsed());
            }
        }
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .unwrap()
    }

    /// SIGTERM, then the time to exit.
    fn stop(mut self) -> Duration {
        let t = Instant::now();
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{status:?}");
        t.elapsed()
    }
}

fn config(data: &Path, uplink: &str) -> String {
    format!(
        r#"
[gateway]
id = "pi-line-7"
data_dir = "{data}"

[store]
max_disk = "4GiB"

[sources.local]
type = "mqtt_broker"
listen = "127.0.0.1:{broker}"

[metrics]
listen = "127.0.0.1:{metrics}"
{uplink}
"#,
        data = data.display(),
        broker = free_port().unwrap(),
        metrics = free_port().unwrap(),
    )
}

/// Fills a store in `data` until its file, closed, is `bytes` large; the
/// number of records. redb grows the file ahead of its data and trims it
/// when closed, so a first round finds the records per byte and a second
/// one adds what is missing.
fn fill(data: &Path, bytes: u64) -> u64 {
    std::fs::create_dir_all(data).unwrap();
    let path = Store::file_in(data);
    let mut n = fill_round(data, 0, |_, len| len >= bytes);
    let closed = std::fs::metadata(&path).unwrap().len();
    if closed < bytes {
        let wanted = (n as f64 * bytes as f64 / closed as f64) as u64;
        n = fill_round(data, n, |n, _| n >= wanted);
    }
    n
}

/// Adds records numbered from `from` until `done(records, file length)`.
fn fill_round(data: &Path, from: u64, done: impl Fn(u64, u64) -> bool) -> u64 {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let path = Store::file_in(data);
        let store = Store::open(&path, &StoreOptions::default()).unwrap();
        let index = Index::open(&store, IndexOptions::default()).unwrap();
        let ingest = Writer::spawn(
            store.clone(),
            WriterSettings {
                index: Some(index),
                ..WriterSettings::default().with_commit_interval(Duration::from_millis(10))
            },
            IngestMetrics::new(),
        );
        let source: Arc<str> = "local".into();
        let t0 = ferry_core::record::now_millis() - 86_400_000;
        let mut n = from;
        while !done(n, std::fs::metadata(&path).unwrap().len()) {
            let items: Vec<Item> = (0..4096)
                .map(|_| {
                    n += 1;
                    Item::Record(Record {
                        ts: t0 + (n / 10) as i64,
                        source: source.clone(),
                        device: format!("{}", n % 10).into(),
                        fields: vec![
                            ("voltage".into(), Value::Int(600 + (n % 50) as i64)),
                            ("temperature".into(), Value::Float(20.0 + (n % 7) as f64)),
                            ("sequence".into(), Value::Int(n as i64)),
                        ],
                    })
                })
                .collect();
            ingest.sink.submit_and_wait(items).await.unwrap();
        }
        drop(ingest.sink);
        drop(ingest.cursors);
        ingest.task.await.unwrap();
        n
    })
}

/// Fills `data` with `n` records of a flood (500 records per millisecond of
/// timestamps: 10 devices, 3 fields) with no query index.
fn fill_flood(data: &Path, n: u64) {
    std::fs::create_dir_all(data).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = Store::open(&Store::file_in(data), &StoreOptions::default()).unwrap();
        let ingest = Writer::spawn(
            store.clone(),
            WriterSettings {
                commit_max_records: 50_000,
                ..WriterSettings::default().with_commit_interval(Duration::from_millis(10))
            },
            IngestMetrics::new(),
        );
        let source: Arc<str> = "local".into();
        let t0 = ferry_core::record::now_millis() - 86_400_000;
        let mut i = 0u64;
        while i < n {
            let items: Vec<Item> = (i..(i + 8192).min(n))
                .map(|k| {
                    Item::Record(Record {
                        ts: t0 + (k / 500) as i64,
                        source: source.clone(),
                        device: format!("{}", k % 10).into(),
                        fields: vec![
                            ("voltage".into(), Value::Int(600 + (k % 50) as i64)),
                            ("temperature".into(), Value::Float(20.0 + (k % 7) as f64)),
                            ("sequence".into(), Value::Int(k as i64)),
                        ],
                    })
                })
                .collect();
            i = (i + 8192).min(n);
            ingest.sink.submit_and_wait(items).await.unwrap();
        }
        drop(ingest.sink);
        drop(ingest.cursors);
        ingest.task.await.unwrap();
    });
}

/// Deletes the query index of the (closed) store in `data`.
fn drop_index(data: &Path) {
    let db = redb::Database::open(Store::file_in(data)).unwrap();
    let tx = db.begin_write().unwrap();
    for t in [
        "index_minutes",
        "index_hours",
        "index_series",
        "index_expiry",
    ] {
        let _ = tx.delete_table(redb::TableDefinition::<u64, u64>::new(t));
    }
    let mut meta = tx
        .open_table(redb::TableDefinition::<&str, u64>::new("meta"))
        .unwrap();
    meta.remove("index.through").unwrap();
    meta.remove("index.version").unwrap();
    drop(meta);
    tx.commit().unwrap();
}

/// The library's replay of the whole log of `data` (`Index::open`); seconds.
fn library_replay(data: &Path, old: bool) -> f64 {
    drop_index(data);
    let store = Store::open(&Store::file_in(data), &StoreOptions::default()).unwrap();
    let t = Instant::now();
    let index = Index::open(
        &store,
        IndexOptions {
            rewrite_open_each_chunk: old,
            ..IndexOptions::default()
        },
    )
    .unwrap();
    let s = t.elapsed().as_secs_f64();
    drop(index);
    s
}

fn replay_phase(dir: &Path, scale: f64) {
    for millions in [1u64, 2, 4] {
        let n = ((millions * 1_000_000) as f64 * scale) as u64;
        let data = dir.join(format!("flood{millions}"));
        fill_flood(&data, n);
        // The daemon: READY with the index empty, then its background replay.
        let cfg = config(&data, "");
        let metrics = cfg
            .split("[metrics]\nlisten = \"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap()
            .parse::<std::net::SocketAddr>()
            .unwrap();
        let (d, ready) = Daemon::start(dir, &cfg);
        let t = Instant::now();
        let deadline = t + Duration::from_secs(600);
        loop {
            let text = scrape(metrics);
            let lag = text
                .lines()
                .find_map(|l| l.strip_prefix("ferry_query_index_lag_records "))
                .and_then(|v| v.parse::<u64>().ok());
            if lag == Some(0) {
                break;
            }
            assert!(Instant::now() < deadline, "the replay does not end");
            std::thread::sleep(Duration::from_millis(20));
        }
        let replay = t.elapsed().as_secs_f64();
        d.stop();
        fig(
            &format!("restart_to_ready_index_behind_{millions}m"),
            format!("{:.0}", ready.as_secs_f64() * 1000.0),
            &format!("ms ({n} records to replay)"),
        );
        fig(
            &format!("daemon_background_replay_{millions}m"),
            format!("{replay:.2}"),
            &format!("s ({:.2} us/record)", replay * 1e6 / n as f64),
        );
        for (name, old) in [("library_replay", false), ("library_replay_old", true)] {
            let s = library_replay(&data, old);
            fig(
                &format!("{name}_{millions}m"),
                format!("{s:.2}"),
                &format!("s ({:.2} us/record)", s * 1e6 / n as f64),
            );
        }
        std::fs::remove_dir_all(&data).unwrap();
    }
}

fn main() {
    let scale = scale();
    let big = (1_000_000_000.0 * scale) as u64;
    let dir = tempfile::Builder::new()
        .prefix("ferry-bench-lifecycle")
        .tempdir_in(
            std::env::var_os("FERRY_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from),
        )
        .unwrap();
    let only = std::env::var("FERRY_BENCH_ONLY").ok();
    if only.as_deref() != Some("replay") {
        before_replay(dir.path(), big);
    }
    replay_phase(dir.path(), scale);
}

fn before_replay(dir: &Path, big: u64) {
    // Empty store: five starts.
    let mut ready = Vec::new();
    let mut rss = Vec::new();
    for i in 0..5 {
        let data = dir.join(format!("empty{i}"));
        let (d, t) = Daemon::start(dir, &config(&data, ""));
        ready.push(t.as_secs_f64() * 1000.0);
        std::thread::sleep(Duration::from_secs(3));
        rss.push(d.rss_kib() as f64);
        d.stop();
    }
    fig(
        "start_to_ready_empty_store",
        format!("{:.0}", median(ready)),
        "ms (median of 5)",
    );
    fig(
        "rss_idle_empty_store",
        format!("{:.1}", median(rss) / 1024.0),
        "MiB",
    );

    // The big store.
    let data = dir.join("big");
    let t = Instant::now();
    let records = fill(&data, big);
    let size = std::fs::metadata(Store::file_in(&data)).unwrap().len();
    fig("big_store_file", format!("{:.0}", size as f64 / 1e6), "MB");
    fig("big_store_records", records, "records");
    fig(
        "big_store_fill_time",
        format!("{:.1}", t.elapsed().as_secs_f64()),
        "s",
    );
    let mut ready = Vec::new();
    let mut rss = Vec::new();
    for _ in 0..3 {
        let (d, t) = Daemon::start(dir, &config(&data, ""));
        ready.push(t.as_secs_f64() * 1000.0);
        std::thread::sleep(Duration::from_secs(3));
        rss.push(d.rss_kib() as f64);
        d.stop();
    }
    fig(
        "start_to_ready_big_store",
        format!("{:.0}", median(ready)),
        "ms (median of 3)",
    );
    fig(
        "rss_idle_big_store",
        format!("{:.1}", median(rss) / 1024.0),
        "MiB",
    );

    // After a crash (SIGKILL), redb checks and repairs the file on open.
    let mut ready = Vec::new();
    for _ in 0..3 {
        let (mut d, _) = Daemon::start(dir, &config(&data, ""));
        d.child.kill().unwrap();
        d.child.wait().unwrap();
        let (d, t) = Daemon::start(dir, &config(&data, ""));
        ready.push(t.as_secs_f64() * 1000.0);
        d.stop();
    }
    fig(
        "start_to_ready_big_store_after_kill9",
        format!("{:.0}", median(ready)),
        "ms (median of 3)",
    );

    // SIGTERM with a backlog: the uplink is sending the big store.
    let pki = Pki::generate("pi-line-7").unwrap();
    let cloud = Mosquitto::tls(&pki).unwrap();
    let uplink = format!(
        r#"
[uplinks.cloud]
endpoint = "{}"
ca = "{}"
cert = "{}"
key = "{}"
"#,
        cloud.tls_addr(),
        pki.ca.display(),
        pki.client.cert.display(),
        pki.client.key.display()
    );
    let mut stops = Vec::new();
    for _ in 0..3 {
        let cfg = config(&data, &uplink);
        let metrics = cfg
            .split("[metrics]\nlisten = \"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap()
            .parse::<std::net::SocketAddr>()
            .unwrap();
        let (d, _) = Daemon::start(dir, &cfg);
        // Wait until it publishes (the backlog is being sent).
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let text = scrape(metrics);
            let published = text
                .lines()
                .find_map(|l| l.strip_prefix("ferry_uplink_publishes_total{uplink=\"cloud\"} "))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            if published >= 20 {
                break;
            }
            assert!(Instant::now() < deadline, "the uplink does not publish");
            std::thread::sleep(Duration::from_millis(100));
        }
        stops.push(d.stop().as_secs_f64() * 1000.0);
    }
    fig(
        "sigterm_to_exit_with_backlog",
        format!("{:.0}", median(stops)),
        "ms (median of 3; uplink sending)",
    );
}

fn scrape(addr: std::net::SocketAddr) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return String::new();
    };
    let _ = write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}
