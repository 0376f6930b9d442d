//! Modbus devices for tests: the pymodbus simulator ([`Simulator`], running
//! `modbus_sim.py` next to this file: TCP servers or a serial server whose units can be
//! told to go mute, answer garbage or answer short), and a socat pty pair standing in
//! for an RS-485 bus ([`PtyPair`]).
//!
//! Needs on the machine: `python3` with pymodbus 3.16 (`pip install
//! pymodbus[serial]==3.16.1`; `FERRY_PYTHON` names another interpreter) and `socat`.
//! Unlike the rest of the kit these panic on failure: they are only used from tests.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::Duration;

/// The simulator script (`testkit/src/modbus_sim.py`), for callers that run it
/// themselves (the Modbus benchmark).
pub const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/modbus_sim.py");

/// The Python interpreter with pymodbus: `FERRY_PYTHON`, else `python3`.
fn python() -> String {
    std::env::var("FERRY_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// The pymodbus simulator, stopped on drop.
pub struct Simulator {
    child: Child,
    stdin: ChildStdin,
    /// The TCP ports it listens on (none for serial).
    pub ports: Vec<u16>,
    lines: std_mpsc::Receiver<String>,
    connections: Arc<AtomicUsize>,
}

impl Simulator {
    /// `count` TCP servers on free loopback ports, each serving `units`.
    pub fn tcp(count: usize, units: &[u8], profile: &str) -> Simulator {
        Simulator::start(&[
            "tcp".into(),
            "--servers".into(),
            count.to_string(),
            "--units".into(),
            units_arg(units),
            "--profile".into(),
            profile.into(),
        ])
    }

    /// A serial server on `port` answering as `units`.
    pub fn serial(port: &Path, units: &[u8]) -> Simulator {
        Simulator::start(&[
            "serial".into(),
            "--port".into(),
            port.display().to_string(),
            "--units".into(),
            units_arg(units),
        ])
    }

    fn start(args: &[String]) -> Simulator {
        let script = Path::new(SCRIPT);
        let mut child = Command::new(python())
            .arg(script)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start python3 (FERRY_PYTHON) with testkit/src/modbus_sim.py");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = std_mpsc::channel();
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line == "connected" {
                    counted.fetch_add(1, Ordering::SeqCst);
                    continue;
                }
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut sim = Simulator {
            child,
            stdin,
            ports: Vec::new(),
            lines,
            connections,
        };
        loop {
            let line =
                sim.line("ready (is pymodbus installed? pip install pymodbus[serial]==3.16.1)");
            if let Some(port) = line.strip_prefix("listening ") {
                sim.ports.push(port.parse().expect("port number"));
            } else if line == "ready" {
                return sim;
            }
        }
    }

    fn line(&mut self, waiting_for: &str) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("the simulator did not print {waiting_for} within 20s"))
    }

    /// How `unit` answers from now on: `normal`, `mute`, `garbage`, `short`.
    pub fn set_mode(&mut self, unit: u8, mode: &str) {
        writeln!(self.stdin, "mode {unit} {mode}").expect("write to the simulator");
        self.stdin.flush().expect("flush");
        let ack = self.line("ok");
        assert_eq!(ack, "ok", "simulator refused `mode {unit} {mode}`");
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    pub fn address(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.ports[i])
    }
}

fn units_arg(units: &[u8]) -> String {
    units
        .iter()
        .map(u8::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

impl Drop for Simulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two connected ptys made by socat (`<dir>/ferry` and `<dir>/device`):
/// the serial bus of the RTU tests.
pub struct PtyPair {
    child: Child,
    pub ferry: PathBuf,
    pub device: PathBuf,
    _dir: tempfile::TempDir,
}

impl PtyPair {
    pub fn start() -> PtyPair {
        let dir = tempfile::tempdir().expect("temp dir");
        let ferry = dir.path().join("ferry");
        let device = dir.path().join("device");
        let mut child = Command::new("socat")
            .arg("-d")
            .arg("-d")
            .arg(format!("pty,raw,echo=0,link={}", ferry.display()))
            .arg(format!("pty,raw,echo=0,link={}", device.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("socat is not installed: apt-get install -y socat");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std_mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("starting data transfer loop") {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(10))
            .expect("socat did not start within 10s");
        PtyPair {
            child,
            ferry,
            device,
            _dir: dir,
        }
    }
}

impl Drop for PtyPair {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
