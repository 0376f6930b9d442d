//! The real `ferry` binary at a steady 1,000 records/s: its memory and the
//! bytes it writes to disk per record.
//!
//! Runs `ferry run --config FILE` (the binary cargo builds for this bench,
//! `CARGO_BIN_EXE_ferry`) with its embedded broker on a free port, data in a
//! temp dir and metrics on, twice: without an uplink, and with an uplink to a
//! local TLS mosquitto (client certificates). 10 devices (rumqttc, one
//! connection each) publish 100 QoS 1 readings/s each for ~20 s. Every second
//! the daemon's `VmRSS` is sampled from `/proc/PID/status`; `/proc/PID/io` and
//! the block device give the bytes written per record, `/proc/PID/stat` the
//! CPU it used. After SIGTERM the store is opened to check every record
//! (and, with the uplink, its cursor).
//!
//! Then floods: 1, 4, 10 and 50 connections, each publishing QoS 1 as fast as
//! a window of 20 in flight lets it (paho's and mosquitto's clients'
//! default), to a fresh `ferry` (its default: the device front) and, in the
//! same run, to mosquitto (Debian's, no persistence: what a broker that
//! stores nothing costs): acknowledged, stored, throughput, peak RSS
//! (`VmHWM`) and CPU of the broker's process.
//!
//! Last, memory per device connection: 400 connections publish 5 readings
//! each as one device, then 400 more each as a device of its own; the
//! growth of the broker's anonymous RSS (`RssAnon`) in each step, divided by
//! 400, is the cost of a connection, and of a connection with a device's
//! names and series; ferry's beside mosquitto's.
//!
//! `cargo bench -p ferry-gateway --bench daemon_rss`; `FERRY_BENCH_SCALE=0.1`
//! shortens the run (at least 3 s), `FERRY_BENCH_SECS` sets it (600 for the
//! 10-minute figure). For experiments: `FERRY_BENCH_ONLY=uplink`
//! (or `no_uplink`, `flood`, `connections`) runs one part; `FERRY_BENCH_SOURCE_EXTRA` adds TOML
//! lines to `[sources.local]`, `FERRY_BENCH_CONFIG_EXTRA` appends tables
//! (e.g. `[store]`); the daemon inherits the environment (`MALLOC_ARENA_MAX`);
//! `FERRY_BENCH_SMAPS=PATH` keeps the daemon's `/proc/PID/smaps` at the end
//! in `PATH.no_uplink` / `PATH.uplink`.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{fig, fig1, scaled, section, Disk, Writes};
use ferry_gateway::store::{Store, StoreOptions};
use ferry_testkit::{free_port, Mosquitto, Pki};

const DEVICES: u64 = 10;
const PER_DEVICE_PER_S: u64 = 100;
const GATEWAY: &str = "pi-line-7";
/// Connections of the floods, and each one's window of publishes in flight.
const FLOOD_CONNECTIONS: [u64; 4] = [1, 4, 10, 50];
const FLOOD_WINDOW: usize = 20;

fn main() {
    let scale = common::scale();
    common::print_machine();
    println!("# scale: {scale}");
    let bin = ferry_binary();
    println!("# binary: {}", bin.display());
    let secs = std::env::var("FERRY_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| scaled(20.0, scale, 3));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let pki = Pki::generate(GATEWAY).expect("PKI (needs openssl)");
    let cloud = Mosquitto::tls(&pki).expect("mosquitto (needs mosquitto installed)");
    let only = std::env::var("FERRY_BENCH_ONLY").unwrap_or_default();
    for uplink in [false, true] {
        if !only.is_empty() && only != if uplink { "uplink" } else { "no_uplink" } {
            continue;
        }
        let cloud = uplink.then_some((&pki, &cloud));
        rt.block_on(run(&bin, secs, cloud));
    }
    if only.is_empty() || only == "flood" {
        let total = scaled(100_000.0, scale, 2_000);
        for connections in FLOOD_CONNECTIONS {
            rt.block_on(flood(&bin, connections, total));
        }
    }
    if only.is_empty() || only == "connections" {
        rt.block_on(connections(&bin, scaled(400.0, scale, 20)));
    }
    rt.shutdown_background();
}

/// The `ferry` binary: `FERRY_BIN` if set (e.g. a copy on another file
/// system, to see what its page cache does to the mapped code); else
/// `CARGO_BIN_EXE_ferry`, which cargo sets for benches; else the `ferry`
/// next to this bench's `deps/` directory.
fn ferry_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("FERRY_BIN") {
        return PathBuf::from(p);
    }
    if let Some(p) = option_env!("CARGO_BIN_EXE_ferry") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("ferry"))
        .expect("target dir");
    assert!(
        bin.exists(),
        "{} is missing: cargo build --profile bench --bin ferry",
        bin.display()
    );
    bin
}

fn config(dir: &Path, broker: u16, metrics: u16, cloud: Option<(&Pki, &Mosquitto)>) -> String {
    let mut c = format!(
        r#"[gateway]
id = "{GATEWAY}"
data_dir = "{data}"
log_level = "info"

[sources.local]
type = "mqtt_broker"
listen = "127.0.0.1:{broker}"
{source_extra}

[metrics]
listen = "127.0.0.1:{metrics}"
"#,
        data = dir.join("data").display(),
        source_extra = std::env::var("FERRY_BENCH_SOURCE_EXTRA").unwrap_or_default(),
    );
    if let Some((pki, mosq)) = cloud {
        c.push_str(&format!(
            r#"
[uplinks.cloud]
endpoint = "{endpoint}"
ca = "{ca}"
cert = "{cert}"
key = "{key}"
"#,
            endpoint = mosq.tls_addr(),
            ca = pki.ca.display(),
            cert = pki.client.cert.display(),
            key = pki.client.key.display()
        ));
    }
    c.push_str(&std::env::var("FERRY_BENCH_CONFIG_EXTRA").unwrap_or_default());
    c
}

/// The daemon, with its stderr kept (the last lines) for a failure message.
struct Daemon {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    fn start(bin: &Path, config: &Path) -> Daemon {
        let mut child = Command::new(bin)
            .args(["run", "--config"])
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ferry");
        let log = Arc::new(Mutex::new(Vec::new()));
        let keep = log.clone();
        let stderr = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut l = keep.lock().unwrap();
                l.push(line);
                if l.len() > 60 {
                    l.remove(0);
                }
            }
        });
        Daemon { child, log }
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    fn tail(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// SIGTERM, then waits for the exit; returns its code.
    fn stop(&mut self) -> Option<i32> {
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn status_kib(pid: &str, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

async fn run(bin: &Path, secs: u64, cloud: Option<(&Pki, &Mosquitto)>) {
    let label = if cloud.is_some() {
        "uplink"
    } else {
        "no_uplink"
    };
    let name = format!("daemon.{label}");
    section(&format!(
        "{label}: ferry with its embedded broker, {DEVICES} devices x {PER_DEVICE_PER_S} QoS 1 records/s for {secs} s{}",
        if cloud.is_some() { ", uplink to TLS mosquitto" } else { "" }
    ));
    let dir = common::tempdir("ferry-bench-daemon-");
    let disk = Disk::under(dir.path());
    let broker = free_port().expect("free port");
    let metrics = free_port().expect("free port");
    let config_path = dir.path().join("ferry.toml");
    std::fs::write(&config_path, config(dir.path(), broker, metrics, cloud)).expect("config");
    let mut daemon = Daemon::start(bin, &config_path);
    let pid = daemon.pid();
    let addr = format!("127.0.0.1:{broker}").parse().expect("addr");

    let mut publishers = Vec::new();
    for d in 0..DEVICES {
        publishers.push(Arc::new(
            common::publisher(addr, &format!("dev-{d}"), 10).await,
        ));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = status_kib(&pid, "VmRSS:");

    let before = Writes::sample(&pid, disk.as_ref());
    let cpu_before = common::cpu_secs(&format!("/proc/{pid}/stat"));
    let start = Instant::now();
    let per_device = secs * PER_DEVICE_PER_S;
    let every = Duration::from_secs(1) / PER_DEVICE_PER_S as u32;
    let mut tasks = Vec::new();
    for (d, p) in publishers.iter().enumerate() {
        let p = p.clone();
        tasks.push(tokio::spawn(async move {
            let topic = common::seed_topic(d as u64);
            let first = tokio::time::Instant::now() + every.mul_f64(d as f64 / DEVICES as f64);
            let mut tick = tokio::time::interval_at(first, every);
            for i in 0..per_device {
                tick.tick().await;
                let sent = start.elapsed().as_nanos() as u64;
                p.queue(&topic, common::seed_payload(d as u64, i, sent))
                    .await;
            }
        }));
    }
    // One RSS sample a second while the devices publish.
    let mut samples = Vec::new();
    let mut sampler = tokio::time::interval(Duration::from_secs(1));
    while tasks.iter().any(|t| !t.is_finished()) {
        sampler.tick().await;
        samples.push(status_kib(&pid, "VmRSS:"));
    }
    let publishing = start.elapsed();
    // The last commit, and the uplink's cursor flush (1 s).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = Writes::sample(&pid, disk.as_ref());
    let cpu = common::cpu_secs(&format!("/proc/{pid}/stat")) - cpu_before;
    let measured = start.elapsed();
    let hwm = status_kib(&pid, "VmHWM:");
    let (anon, file) = (status_kib(&pid, "RssAnon:"), status_kib(&pid, "RssFile:"));
    let threads = std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count());
    if let Ok(to) = std::env::var("FERRY_BENCH_SMAPS") {
        let _ = std::fs::copy(format!("/proc/{pid}/smaps"), format!("{to}.{label}"));
    }
    let published = per_device * DEVICES;
    let acked: u64 = publishers.iter().map(|p| p.acked()).sum();
    drop(publishers);
    let code = daemon.stop();
    if code != Some(0) {
        println!("# ferry exited with {code:?}; its log:\n{}", daemon.tail());
    }

    let store = Store::open(
        &Store::file_in(&dir.path().join("data")),
        &StoreOptions::default(),
    )
    .expect("open the daemon's store");
    let stored = store.heads().records;
    if stored != published || acked != published {
        println!("# published {published}, acknowledged {acked}, stored {stored}");
    }
    if cloud.is_some() {
        let cursor = store
            .cursor(&ferry_gateway::uplink::cursor_name("cloud"))
            .unwrap_or(0);
        fig(
            &format!("{name}.uplink_cursor"),
            cursor,
            &format!("of {stored} records"),
        );
    }

    let steady = {
        let mut late: Vec<u64> = samples[samples.len() / 2..].to_vec();
        late.sort_unstable();
        late.get(late.len() / 2).copied().unwrap_or(0)
    };
    let max = samples.iter().copied().max().unwrap_or(0).max(hwm);
    // Still growing? The least-squares slope of the second half, per second.
    let slope = {
        let late = &samples[samples.len() / 2..];
        let n = late.len() as f64;
        let mx = (n - 1.0) / 2.0;
        let my = late.iter().sum::<u64>() as f64 / n;
        let (mut sxy, mut sxx) = (0.0, 0.0);
        for (i, &y) in late.iter().enumerate() {
            sxy += (i as f64 - mx) * (y as f64 - my);
            sxx += (i as f64 - mx).powi(2);
        }
        if sxx > 0.0 {
            sxy / sxx
        } else {
            0.0
        }
    };
    fig1(
        &format!("{name}.records_per_s"),
        published as f64 / publishing.as_secs_f64(),
        "records/s offered",
    );
    fig(&format!("{name}.records_stored"), stored, "records");
    println!(
        "{name}.cpu: {:.3} cores (the daemon's user + system time, load to the last commit)",
        cpu / measured.as_secs_f64()
    );
    fig1(
        &format!("{name}.cpu_per_record"),
        cpu * 1e6 / published as f64,
        "us/record",
    );
    fig(&format!("{name}.rss_idle"), idle, "KiB");
    println!("{name}.rss_steady: {steady} KiB (target <= 16384)");
    fig(
        &format!("{name}.rss_max"),
        max,
        "KiB (max of samples and VmHWM)",
    );
    fig1(
        &format!("{name}.rss_slope"),
        slope,
        "KiB/s over the second half (0 = steady)",
    );
    fig(&format!("{name}.rss_anon"), anon, "KiB (at the end)");
    fig(
        &format!("{name}.rss_file"),
        file,
        "KiB (at the end: mapped binary and libraries)",
    );
    fig(&format!("{name}.threads"), threads, "threads");
    println!(
        "{name}.rss_samples: {} KiB",
        samples
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    );
    after.report(&before, disk.as_ref(), stored, None, &name);
    let size = std::fs::metadata(store.path()).map_or(0, |m| m.len());
    fig1(
        &format!("{name}.file_bytes_per_record"),
        size as f64 / stored.max(1) as f64,
        "bytes/record",
    );
}

/// `total` readings from `connections` devices, as fast as their windows
/// let them, to a fresh `ferry` and then to mosquitto.
async fn flood(bin: &Path, connections: u64, total: u64) {
    let per = total / connections;
    let total = per * connections;
    section(&format!(
        "flood: {connections} connections x {per} QoS 1 readings, {FLOOD_WINDOW} in flight each; ferry (device front) beside mosquitto (no persistence)"
    ));
    let dir = common::tempdir("ferry-bench-flood-");
    let (mut daemon, addr) = listening_daemon(bin, dir.path()).await;
    let name = format!("flood.{connections}.ferry");
    let acked = flood_devices(addr, &daemon.pid(), connections, per, &name).await;
    let code = daemon.stop();
    if code != Some(0) {
        println!("# ferry exited with {code:?}; its log:\n{}", daemon.tail());
    }
    let store = Store::open(
        &Store::file_in(&dir.path().join("data")),
        &StoreOptions::default(),
    )
    .expect("open the daemon's store");
    let stored = store.heads().records;
    fig(
        &format!("{name}.acknowledged"),
        acked,
        &format!("of {total}"),
    );
    fig(
        &format!("{name}.stored"),
        stored,
        if stored >= acked {
            "records (none acknowledged lost)"
        } else {
            "records: ACKNOWLEDGED READINGS LOST"
        },
    );

    let mut mosquitto = Mosquitto::plain().expect("mosquitto (needs mosquitto installed)");
    let pid = mosquitto.pid().expect("mosquitto's pid").to_string();
    let name = format!("flood.{connections}.mosquitto");
    let acked = flood_devices(mosquitto.plain_addr(), &pid, connections, per, &name).await;
    fig(
        &format!("{name}.acknowledged"),
        acked,
        &format!("of {total}"),
    );
    let _ = mosquitto.stop();
}

/// Floods `addr` and reports the rate and what the broker's process
/// `pid` used; returns the readings acknowledged.
async fn flood_devices(
    addr: std::net::SocketAddr,
    pid: &str,
    connections: u64,
    per: u64,
    name: &str,
) -> u64 {
    let mut devices = Vec::new();
    for d in 0..connections {
        let id = format!("flood-{d}");
        devices.push(Arc::new(
            common::WirePublisher::with_window(addr, &id, FLOOD_WINDOW).await,
        ));
    }
    let idle = status_kib(pid, "VmRSS:");
    let cpu_before = common::cpu_secs(&format!("/proc/{pid}/stat"));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (d, p) in devices.iter().enumerate() {
        let p = p.clone();
        tasks.push(tokio::spawn(async move {
            let topic = common::seed_topic(d as u64);
            for i in 0..per {
                let payload = common::seed_payload(d as u64, i, 0);
                p.publish(&topic, payload.as_bytes(), i + 1 == per).await;
            }
        }));
    }
    let total = per * connections;
    let acked = || {
        devices
            .iter()
            .map(|p| p.acked.load(Ordering::Relaxed))
            .sum::<u64>()
    };
    let all = common::poll_until(Duration::from_secs(300), Duration::from_millis(5), || {
        acked() == total
    })
    .await;
    let took = start.elapsed();
    let cpu = common::cpu_secs(&format!("/proc/{pid}/stat")) - cpu_before;
    for t in tasks {
        t.abort();
    }
    let acked = acked();
    if !all {
        println!("# {name}: {acked} of {total} acknowledged within 300 s");
    }
    fig1(
        &format!("{name}.acked_per_s"),
        acked as f64 / took.as_secs_f64(),
        "readings/s acknowledged",
    );
    fig(&format!("{name}.rss_idle"), idle, "KiB (connected, before)");
    fig(
        &format!("{name}.rss_peak"),
        status_kib(pid, "VmHWM:"),
        "KiB (VmHWM)",
    );
    fig1(
        &format!("{name}.cpu_per_reading"),
        cpu * 1e6 / acked.max(1) as f64,
        "us/reading (the broker's process)",
    );
    acked
}

/// `n` devices connect and publish 5 readings each: the broker's
/// anonymous memory per connection, ferry's and then mosquitto's.
async fn connections(bin: &Path, n: u64) {
    section(&format!(
        "connections: 2 x {n} devices publish 5 QoS 1 readings each as one device, then as devices of their own; RssAnon per connection, ferry (device front) beside mosquitto"
    ));
    let dir = common::tempdir("ferry-bench-conns-");
    let (mut daemon, addr) = listening_daemon(bin, dir.path()).await;
    // One device first, so that what every broker allocates once is not
    // counted per connection.
    let first = common::WirePublisher::with_window(addr, "warm-up", FLOOD_WINDOW).await;
    first.publish(&common::seed_topic(0), b"{}", true).await;
    per_connection(addr, &daemon.pid(), n, "connections.ferry").await;
    drop(first);
    daemon.stop();

    let mut mosquitto = Mosquitto::plain().expect("mosquitto (needs mosquitto installed)");
    let pid = mosquitto.pid().expect("mosquitto's pid").to_string();
    let first = common::WirePublisher::with_window(mosquitto.plain_addr(), "warm-up", 20).await;
    first.publish(&common::seed_topic(0), b"{}", true).await;
    per_connection(mosquitto.plain_addr(), &pid, n, "connections.mosquitto").await;
    drop(first);
    let _ = mosquitto.stop();
}

/// `n` more devices connect and publish 5 readings each, as one device
/// name (`distinct` false: what a connection costs) or each as its own
/// (what a device costs, with its names and series); returns the growth of
/// the broker's anonymous memory, in KiB, and keeps them connected.
async fn connected_devices(
    addr: std::net::SocketAddr,
    pid: &str,
    n: u64,
    distinct: bool,
    kept: &mut Vec<common::WirePublisher>,
) -> u64 {
    let before = status_kib(pid, "RssAnon:");
    let first = kept.len() as u64;
    for d in first..first + n {
        let p = common::WirePublisher::with_window(addr, &format!("dev-{d}"), FLOOD_WINDOW).await;
        let device = if distinct { d } else { 0 };
        let topic = common::seed_topic(device);
        for i in 0..5 {
            p.publish(
                &topic,
                common::seed_payload(device, i, 0).as_bytes(),
                i == 4,
            )
            .await;
        }
        kept.push(p);
    }
    let want = kept.len() as u64 * 5;
    let all = common::poll_until(Duration::from_secs(60), Duration::from_millis(10), || {
        kept.iter()
            .map(|p| p.acked.load(Ordering::Relaxed))
            .sum::<u64>()
            == want
    })
    .await;
    assert!(all, "not every reading acknowledged within 60 s");
    status_kib(pid, "RssAnon:").saturating_sub(before)
}

/// Memory per connection and per device of the broker `pid`.
async fn per_connection(addr: std::net::SocketAddr, pid: &str, n: u64, name: &str) {
    let mut kept = Vec::new();
    let connections = connected_devices(addr, pid, n, false, &mut kept).await;
    let devices = connected_devices(addr, pid, n, true, &mut kept).await;
    fig1(
        &format!("{name}.per_connection"),
        connections as f64 / n as f64,
        "KiB per connection (all publishing as one device)",
    );
    fig1(
        &format!("{name}.per_device"),
        devices as f64 / n as f64,
        "KiB per connection of a device of its own (with its names and series)",
    );
    fig(
        &format!("{name}.rss_anon"),
        status_kib(pid, "RssAnon:"),
        "KiB (at the end)",
    );
}

/// A fresh `ferry` in `dir` (no uplink), once its broker listens; and the
/// broker's address.
async fn listening_daemon(bin: &Path, dir: &Path) -> (Daemon, std::net::SocketAddr) {
    let broker = free_port().expect("free port");
    let metrics = free_port().expect("free port");
    let config_path = dir.join("ferry.toml");
    std::fs::write(&config_path, config(dir, broker, metrics, None)).expect("config");
    let daemon = Daemon::start(bin, &config_path);
    let addr = format!("127.0.0.1:{broker}").parse().expect("addr");
    let listening = common::poll_until(Duration::from_secs(30), Duration::from_millis(10), || {
        std::net::TcpStream::connect(addr).is_ok()
    })
    .await;
    assert!(
        listening,
        "ferry's broker is not listening; its log:\n{}",
        daemon.tail()
    );
    (daemon, addr)
}
