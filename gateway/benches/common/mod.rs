//! Helpers shared by Ferry's benchmarks: the size knob, figures printed as
//! plain `name: value unit` lines, `/proc` and `/sys` readers (I/O, RSS, the
//! block device under a directory), the seed-format readings and QoS 1
//! publishers.
//!
//! # Sizes
//! Every bench scales its work by `FERRY_BENCH_SCALE` (or `--scale X`):
//! `1.0` is the full size in BENCHMARKS.md, `0.01` a smoke run of seconds.
//! Run without `--bench` (as `cargo test --benches` does) a bench is a smoke
//! run at `0.01` unless a scale is given.
//!
//! # Where data goes
//! Stores are created under `FERRY_BENCH_DIR` (default: the system temp dir).
//! Point it at a dedicated file system (a loop-mounted ext4, an SD card) to
//! make the block device's write counter the bench's own; see BENCHMARKS.md.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use ferry_testkit::Publisher;

/// The size factor: `--scale X`, else `FERRY_BENCH_SCALE`, else 1 (or 0.01
/// when not run by `cargo bench`).
pub fn scale() -> f64 {
    let args: Vec<String> = std::env::args().collect();
    let from_arg = args
        .iter()
        .position(|a| a == "--scale")
        .and_then(|i| args.get(i + 1))
        .map(|s| s.parse::<f64>().expect("--scale takes a number, e.g. 0.1"));
    let from_env = std::env::var("FERRY_BENCH_SCALE").ok().map(|s| {
        s.parse::<f64>()
            .expect("FERRY_BENCH_SCALE is a number, e.g. 0.1")
    });
    let benching = args.iter().any(|a| a == "--bench");
    let s = from_arg
        .or(from_env)
        .unwrap_or(if benching { 1.0 } else { 0.01 });
    assert!(s > 0.0, "the scale must be positive");
    s
}

/// `n` scaled, at least `min`.
pub fn scaled(n: f64, scale: f64, min: u64) -> u64 {
    ((n * scale).round() as u64).max(min)
}

/// Prints one figure.
pub fn fig(name: &str, value: impl std::fmt::Display, unit: &str) {
    println!("{name}: {value} {unit}");
}

/// Prints a figure with one decimal.
pub fn fig1(name: &str, value: f64, unit: &str) {
    println!("{name}: {value:.1} {unit}");
}

/// Prints a section heading (a comment line, not a figure).
pub fn section(title: &str) {
    println!("# {title}");
}

/// A temp dir under `FERRY_BENCH_DIR` (or the system temp dir).
pub fn tempdir(prefix: &str) -> tempfile::TempDir {
    let mut b = tempfile::Builder::new();
    b.prefix(prefix);
    match std::env::var_os("FERRY_BENCH_DIR") {
        Some(dir) => b.tempdir_in(dir),
        None => b.tempdir(),
    }
    .expect("creating a temp dir for the bench")
}

/// The counters of `/proc/PID/io` that matter here.
#[derive(Debug, Clone, Copy, Default)]
pub struct Io {
    /// Bytes of page cache dirtied (the kernel's estimate of disk writes;
    /// counted per folio, see BENCHMARKS.md).
    pub write_bytes: u64,
}

impl Io {
    pub fn of(pid: &str) -> Io {
        let text = std::fs::read_to_string(format!("/proc/{pid}/io"))
            .expect("reading /proc/PID/io (needs task I/O accounting)");
        let get = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        Io {
            write_bytes: get("write_bytes:"),
        }
    }

    pub fn me() -> Io {
        Io::of("self")
    }

    pub fn since(self, before: Io) -> Io {
        Io {
            write_bytes: self.write_bytes - before.write_bytes,
        }
    }
}

/// The block device holding a directory, and its sectors-written counter.
#[derive(Debug, Clone)]
pub struct Disk {
    /// `/sys/dev/block/MAJ:MIN`.
    sys: PathBuf,
    pub name: String,
}

impl Disk {
    /// The device under `dir`, if `/sys` knows it (not for tmpfs or overlay).
    pub fn under(dir: &Path) -> Option<Disk> {
        let dev = std::fs::metadata(dir).ok()?.dev();
        let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
        let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
        let sys = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
        let name = std::fs::read_to_string(sys.join("uevent"))
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("DEVNAME=").map(str::to_owned))
            .unwrap_or_else(|| format!("{major}:{minor}"));
        sys.join("stat").exists().then_some(Disk { sys, name })
    }

    /// Bytes written to the device so far (sectors are 512 bytes in `stat`).
    pub fn written(&self) -> u64 {
        let stat = std::fs::read_to_string(self.sys.join("stat")).unwrap_or_default();
        let sectors: u64 = stat
            .split_whitespace()
            .nth(6)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        sectors * 512
    }
}

/// Write counters sampled together: the process's and the device's.
#[derive(Debug, Clone, Copy)]
pub struct Writes {
    io: Io,
    disk: Option<u64>,
}

impl Writes {
    pub fn sample(pid: &str, disk: Option<&Disk>) -> Writes {
        Writes {
            io: Io::of(pid),
            disk: disk.map(Disk::written),
        }
    }

    /// Prints bytes per record (and per commit, when given) since `before`
    /// under `name`.
    pub fn report(
        &self,
        before: &Writes,
        disk: Option<&Disk>,
        records: u64,
        commits: Option<u64>,
        name: &str,
    ) {
        let io = self.io.since(before.io);
        let device = match (disk, self.disk, before.disk) {
            (Some(d), Some(a), Some(b)) => Some((d, a - b)),
            _ => None,
        };
        let per = |what: &str, n: u64, unit: &str| {
            let n = n.max(1) as f64;
            fig1(
                &format!("{name}.proc_write_bytes_per_{what}"),
                io.write_bytes as f64 / n,
                unit,
            );
            if let Some((d, bytes)) = device {
                fig1(
                    &format!("{name}.device_written_per_{what}"),
                    bytes as f64 / n,
                    &format!("{unit} ({}, whole device)", d.name),
                );
            }
        };
        per("record", records, "bytes/record");
        if let Some(c) = commits {
            per("commit", c, "bytes/commit");
        }
    }
}

/// `VmRSS` and `VmHWM` of a process, in KiB.
pub fn rss_kib(pid: &str) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let get = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    };
    Some((get("VmRSS:")?, get("VmHWM:")?))
}

/// Resets this process's `VmHWM` to its current RSS (`clear_refs` 5).
pub fn reset_peak_rss() {
    if let Err(e) = std::fs::write("/proc/self/clear_refs", "5") {
        println!("# cannot reset VmHWM ({e}); the peak includes earlier phases");
    }
}

/// The `q` quantile (0..=1) of sorted values.
pub fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i]
}

/// The seed payload of issue 2, plus `sent_ns` (the send time, in ns since
/// the bench started) for latency.
pub fn seed_payload(device: u64, sequence: u64, sent_ns: u64) -> String {
    format!(
        r#"{{"client_id": 1, "device_id": {device}, "voltage": 647, "temperature": 110, "sequence": {sequence}, "sent_ns": {sent_ns}}}"#
    )
}

/// A device's topic.
pub fn seed_topic(device: u64) -> String {
    format!("sensors/{device}/telemetry")
}

/// A QoS 1 MQTT publisher (one device, one connection; the testkit's, its
/// event loop in its own task counting PUBACKs), once the broker sent
/// CONNACK (20 s at most). `queue` is the client's request channel: keep it
/// small so that the send time taken before `queue` is close to when the
/// packet leaves.
pub async fn publisher(addr: SocketAddr, id: &str, queue: usize) -> Publisher {
    let mut p = Publisher::builder(addr, id).queue(queue).spawn();
    p.wait_connected(Duration::from_secs(20)).await;
    p
}

/// A lean QoS 1 MQTT 3.1.1 publisher for load: it writes PUBLISH packets
/// straight to its socket and a reader task counts PUBACKs, with at most
/// `WIRE_INFLIGHT` unacknowledged. It costs a fraction of a full client's
/// CPU (no event loop, no request channel), so that on a 2-core machine the
/// devices' side leaves the cores to the gateway under test.
pub struct WirePublisher {
    writer: tokio::sync::Mutex<(tokio::net::tcp::OwnedWriteHalf, Vec<u8>, u16)>,
    window: Arc<tokio::sync::Semaphore>,
    pub acked: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

/// Unacknowledged publishes per [`WirePublisher`] (the embedded broker's
/// `max_inflight_count`).
pub const WIRE_INFLIGHT: usize = 100;

impl WirePublisher {
    /// Connects to `addr` as `id` (clean session); returns after CONNACK.
    pub async fn connect(addr: SocketAddr, id: &str) -> WirePublisher {
        Self::with_window(addr, id, WIRE_INFLIGHT).await
    }

    /// The same, with at most `window` publishes unacknowledged.
    pub async fn with_window(addr: SocketAddr, id: &str, window: usize) -> WirePublisher {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let stream = tokio::time::timeout(
            Duration::from_secs(20),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        .expect("connect in time")
        .expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        let (mut rd, mut wr) = stream.into_split();
        // CONNECT: protocol "MQTT" level 4, clean session, keep-alive 60 s.
        let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60];
        body.extend_from_slice(&(id.len() as u16).to_be_bytes());
        body.extend_from_slice(id.as_bytes());
        let mut packet = vec![0x10];
        put_remaining_length(&mut packet, body.len());
        packet.extend_from_slice(&body);
        wr.write_all(&packet).await.expect("send CONNECT");
        let mut connack = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(20), rd.read_exact(&mut connack))
            .await
            .expect("CONNACK in time")
            .expect("read CONNACK");
        assert_eq!(connack, [0x20, 2, 0, 0], "publisher {id}: CONNACK refused");
        let acked = Arc::new(AtomicU64::new(0));
        let window = Arc::new(tokio::sync::Semaphore::new(window));
        let (count, permits, id) = (acked.clone(), window.clone(), id.to_owned());
        let task = tokio::spawn(async move {
            let mut rd = tokio::io::BufReader::with_capacity(16 << 10, rd);
            let mut packet = [0u8; 4];
            loop {
                // The broker sends this connection nothing but PUBACKs.
                if let Err(e) = rd.read_exact(&mut packet).await {
                    eprintln!("publisher {id}: {e}");
                    return;
                }
                assert_eq!(packet[..2], [0x40, 2], "publisher {id}: not a PUBACK");
                count.fetch_add(1, Ordering::Relaxed);
                permits.add_permits(1);
            }
        });
        WirePublisher {
            writer: tokio::sync::Mutex::new((wr, Vec::with_capacity(32 << 10), 0)),
            window,
            acked,
            task,
        }
    }

    /// Publishes QoS 1, waiting while `WIRE_INFLIGHT` are unacknowledged.
    /// With `flush`, the packet is written at once; without, it waits in a
    /// buffer for the next flushing publish (or a full buffer, or a full
    /// window), so that a burst costs a few writes instead of one each.
    pub async fn publish(&self, topic: &str, payload: &[u8], flush: bool) {
        use tokio::io::AsyncWriteExt;
        let mut guard = self.writer.lock().await;
        let (wr, buf, id) = &mut *guard;
        let permit = match self.window.try_acquire() {
            Ok(p) => p,
            Err(_) => {
                // The window is full: what is buffered must go out for the
                // PUBACKs that open it to come.
                if !buf.is_empty() {
                    wr.write_all(buf).await.expect("send PUBLISH");
                    buf.clear();
                }
                self.window.acquire().await.expect("the window stays open")
            }
        };
        permit.forget();
        *id = id.wrapping_add(1).max(1);
        buf.push(0x32);
        put_remaining_length(buf, 2 + topic.len() + 2 + payload.len());
        buf.extend_from_slice(&(topic.len() as u16).to_be_bytes());
        buf.extend_from_slice(topic.as_bytes());
        buf.extend_from_slice(&id.to_be_bytes());
        buf.extend_from_slice(payload);
        if flush || buf.len() >= 16 << 10 {
            wr.write_all(buf).await.expect("send PUBLISH");
            buf.clear();
        }
    }
}

impl Drop for WirePublisher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn put_remaining_length(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            return;
        }
    }
}

/// Polls `done` every `every` until it holds or `limit` passes; returns
/// whether it held.
pub async fn poll_until(limit: Duration, every: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if done() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(every).await;
    }
}

/// The machine, for the record.
pub fn print_machine() {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("# machine: {cores} cores, {cpu}");
}

/// CPU time of this process's threads so far, grouped by what they run
/// (from their names), in seconds.
pub fn cpu_by_group(
    group: impl Fn(&str) -> &'static str,
) -> std::collections::BTreeMap<&'static str, f64> {
    // SAFETY: sysconf has no preconditions.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut out = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        *out.entry(group(comm)).or_insert(0.0) += cpu_ticks(&stat) as f64 / tick;
    }
    out
}

/// User + system CPU time of a process (`/proc/PID/stat`) or thread
/// (`/proc/PID/task/TID/stat`), in seconds.
pub fn cpu_secs(stat_path: &str) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    cpu_ticks(&std::fs::read_to_string(stat_path).unwrap_or_default()) as f64 / tick
}

/// utime + stime of a `stat` file's text, in clock ticks.
fn cpu_ticks(stat: &str) -> u64 {
    let Some(close) = stat.rfind(')') else {
        return 0;
    };
    let rest: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    [11, 12]
        .iter()
        .filter_map(|&i| rest.get(i).and_then(|v| v.parse::<u64>().ok()))
        .sum()
}

/// Prints the CPU each group used between two samples, in cores.
pub fn report_cpu(
    name: &str,
    before: &std::collections::BTreeMap<&'static str, f64>,
    after: &std::collections::BTreeMap<&'static str, f64>,
    wall: Duration,
) {
    for (g, secs) in after {
        let used = secs - before.get(g).copied().unwrap_or(0.0);
        if used > 0.0 {
            println!(
                "{name}.cpu.{g}: {:.2} cores ({used:.2} s)",
                used / wall.as_secs_f64()
            );
        }
    }
}
