//! Modbus polling cost: the `ferry` daemon polling 100 Modbus TCP devices ×
//! 50 holding registers (25 f32 values each) once a second, against the
//! pymodbus simulator (`testkit/src/modbus_sim.py`, one server per device
//! on its own loopback port), storing every poll as a record.
//!
//! Prints `name: value unit` lines: the daemon's CPU time per second of wall
//! time (% of one core, user + system, from `/proc/PID/stat`), its RSS at the
//! end and its peak, and from its metrics the records stored, requests,
//! errors and polls missed per second, and the bytes the daemon wrote per
//! record stored (`/proc/PID/io`). The simulator's own CPU is printed too (it
//! shares the machine).
//!
//! Size: `--scale X` or `FERRY_BENCH_SCALE` (default 1: 100 devices, 60 s
//! measured after 10 s of warm-up; without `--bench`, 0.05); the device
//! count is scaled too, at least 5. Needs python3 with pymodbus (see
//! `.ci/run`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn scale() -> f64 {
    let args: Vec<String> = std::env::args().collect();
    let arg = args
        .iter()
        .position(|a| a == "--scale")
        .and_then(|i| args.get(i + 1))
        .map(|s| s.parse::<f64>().expect("--scale takes a number"));
    let env = std::env::var("FERRY_BENCH_SCALE")
        .ok()
        .map(|s| s.parse::<f64>().expect("FERRY_BENCH_SCALE is a number"));
    let benching = args.iter().any(|a| a == "--bench");
    arg.or(env).unwrap_or(if benching { 1.0 } else { 0.05 })
}

fn fig(name: &str, value: f64, unit: &str) {
    println!("{name}: {value:.1} {unit}");
}

/// A child process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// user + system CPU time of `pid` so far.
fn cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the line.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_micros(ticks * 1_000_000 / hz.max(1))
}

/// Bytes of page cache `pid` dirtied so far (`write_bytes` of `/proc/PID/io`:
/// the kernel's estimate of what reaches the disk).
fn write_bytes(pid: u32) -> f64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// A `kB` line of `/proc/PID/status` (`VmRSS`, `VmHWM`), in MiB.
fn status_mib(pid: u32, key: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

/// The sum of the samples of metric `name` (every label set).
fn metric(addr: SocketAddr, name: &str) -> f64 {
    let mut s = TcpStream::connect(addr).expect("metrics endpoint");
    write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with(' ') || r.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn main() {
    let scale = scale();
    let devices = ((100.0 * scale.min(1.0)).round() as usize).max(5);
    let warmup = Duration::from_secs_f64((10.0 * scale).clamp(2.0, 10.0));
    let measured = Duration::from_secs_f64((60.0 * scale).max(3.0));
    println!("# modbus: {devices} TCP devices x 50 registers at 1 Hz");

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testkit/src/modbus_sim.py");
    let python = std::env::var("FERRY_PYTHON").unwrap_or_else(|_| "python3".into());
    let mut sim = Command::new(python)
        .arg(&script)
        .args([
            "tcp",
            "--servers",
            &devices.to_string(),
            "--profile",
            "bench",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the simulator (python3 with pymodbus)");
    let _sim_stdin = sim.stdin.take();
    let mut lines = BufReader::new(sim.stdout.take().unwrap()).lines();
    let sim = Proc(sim);
    let mut ports = Vec::new();
    for line in lines.by_ref() {
        let line = line.expect("simulator output");
        if let Some(p) = line.strip_prefix("listening ") {
            ports.push(p.parse::<u16>().unwrap());
        } else if line == "ready" {
            break;
        }
    }
    assert_eq!(
        ports.len(),
        devices,
        "the simulator did not start its servers"
    );
    std::thread::spawn(move || lines.for_each(drop));

    let dir = tempfile::tempdir().unwrap();
    let metrics: SocketAddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let registers: Vec<String> = (0..25)
        .map(|i| {
            format!(
                "  {{ name = \"v{i:02}\", table = \"holding\", address = {}, type = \"f32\" }},",
                i * 2
            )
        })
        .collect();
    let mut config = format!(
        "[gateway]\nid = \"bench\"\ndata_dir = \"{}\"\nlog_level = \"warn\"\n\n\
         [metrics]\nlisten = \"{metrics}\"\n\n\
         [sources.plant]\ntype = \"modbus_tcp\"\n\n\
         [sources.plant.maps.meter]\nregisters = [\n{}\n]\n",
        dir.path().join("data").display(),
        registers.join("\n")
    );
    for (i, port) in ports.iter().enumerate() {
        config.push_str(&format!(
            "\n[[sources.plant.devices]]\nname = \"dev-{i:03}\"\naddress = \"127.0.0.1:{port}\"\n\
             interval = \"1s\"\ntimeout = \"500ms\"\nmap = \"meter\"\n"
        ));
    }
    let path = dir.path().join("ferry.toml");
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["run", "--config"])
        .arg(&path)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ferry");
    let stderr = child.stderr.take().unwrap();
    let ferry = Proc(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("ferry running") {
                let _ = tx.send(());
            }
            if line.contains("WARN") || line.contains("ERROR") {
                eprintln!("ferry: {line}");
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("ferry did not start");
    std::thread::sleep(warmup);

    let pid = ferry.0.id();
    let sim_pid = sim.0.id();
    let counters = [
        "ferry_ingest_records_stored_total",
        "ferry_modbus_requests_total",
        "ferry_modbus_errors_total",
        "ferry_modbus_polls_missed_total",
    ];
    let before: Vec<f64> = counters.iter().map(|c| metric(metrics, c)).collect();
    let (cpu0, sim0, io0, t0) = (cpu(pid), cpu(sim_pid), write_bytes(pid), Instant::now());
    std::thread::sleep(measured);
    let (cpu1, sim1, io1, wall) = (cpu(pid), cpu(sim_pid), write_bytes(pid), t0.elapsed());
    let after: Vec<f64> = counters.iter().map(|c| metric(metrics, c)).collect();
    let per_s = |i: usize| (after[i] - before[i]) / wall.as_secs_f64();

    fig("modbus.devices", devices as f64, "devices");
    fig("modbus.measured", wall.as_secs_f64(), "s");
    fig(
        "modbus.ferry_cpu",
        100.0 * (cpu1 - cpu0).as_secs_f64() / wall.as_secs_f64(),
        "% of one core",
    );
    fig("modbus.ferry_rss", status_mib(pid, "VmRSS:"), "MiB");
    fig("modbus.ferry_rss_peak", status_mib(pid, "VmHWM:"), "MiB");
    fig("modbus.records_stored", per_s(0), "records/s");
    fig("modbus.requests", per_s(1), "requests/s");
    fig("modbus.errors", per_s(2), "errors/s");
    let records = (after[0] - before[0]).max(1.0);
    fig(
        "modbus.written_per_record",
        (io1 - io0) / records,
        "bytes/record",
    );
    fig("modbus.polls_missed", per_s(3), "polls/s");
    fig(
        "modbus.simulator_cpu",
        100.0 * (sim1 - sim0).as_secs_f64() / wall.as_secs_f64(),
        "% of one core",
    );
}
