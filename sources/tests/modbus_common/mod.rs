//! Helpers shared by the Modbus source tests: the pymodbus simulator
//! (`modbus_sim.py`), a socat pty pair standing in for an RS-485 bus, a
//! stand-in for ingest that collects records, and an observer that records
//! poll events with their time.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_core::record::Record;
use ferry_core::sink::{Committed, Item, Sink};
use ferry_sources::modbus::{DeviceObserver, ModbusObserver, PollEvent};
use tokio::sync::{mpsc, Notify};
use tokio::time::{timeout, Instant};

/// Logs to the test output when `RUST_LOG` is set.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

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
        // Also used by the gateway's tests: find it from either crate.
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sources/tests/modbus_sim.py");
        let mut child = Command::new(python())
            .arg(&script)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start python3 (FERRY_PYTHON) with tests/modbus_sim.py");
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

/// A stand-in for ingest: commits every submission at once and passes its
/// records on.
pub fn collector() -> (Sink, mpsc::UnboundedReceiver<Record>) {
    let (sink, mut rx) = Sink::channel(64);
    let (tx, records) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut seq = 0;
        while let Some(mut sub) = rx.recv().await {
            for item in std::mem::take(&mut sub.items) {
                match item {
                    Item::Record(r) => {
                        seq += 1;
                        let _ = tx.send(r);
                    }
                    Item::Dead(d) => panic!("a Modbus source sent a dead letter: {d:?}"),
                }
            }
            if let Some(done) = sub.done.take() {
                let _ = done.send(Ok(Committed {
                    last_seq: Some(seq),
                }));
            }
        }
    });
    (sink, records)
}

/// The next record (of `device`, if given) within `within`.
pub async fn next_record(
    records: &mut mpsc::UnboundedReceiver<Record>,
    device: Option<&str>,
    within: Duration,
) -> Record {
    let wait = async {
        loop {
            let r = records.recv().await.expect("the source stopped");
            if device.is_none_or(|d| &*r.device == d) {
                return r;
            }
        }
    };
    timeout(within, wait)
        .await
        .unwrap_or_else(|_| panic!("no record of {device:?} within {within:?}"))
}

/// The next record of `device` that holds `fields` fields (records polled
/// before a device recovered may hold fewer).
pub async fn next_full_record(
    records: &mut mpsc::UnboundedReceiver<Record>,
    device: &str,
    fields: usize,
    within: Duration,
) -> Record {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let r = next_record(records, Some(device), left).await;
        if r.fields.len() == fields {
            return r;
        }
    }
}

/// One recorded event.
#[derive(Clone, Debug)]
pub struct Seen {
    pub at: Instant,
    pub device: String,
    pub event: PollEvent,
}

/// An observer that keeps every event with its time.
#[derive(Clone, Default)]
pub struct Events(Arc<(Mutex<Vec<Seen>>, Notify)>);

struct DeviceEvents {
    device: String,
    all: Events,
}

impl ModbusObserver for Events {
    fn device(&self, _source: &str, device: &str) -> Arc<dyn DeviceObserver> {
        Arc::new(DeviceEvents {
            device: device.to_owned(),
            all: self.clone(),
        })
    }
}

impl DeviceObserver for DeviceEvents {
    fn event(&self, event: PollEvent) {
        self.all.0 .0.lock().unwrap().push(Seen {
            at: Instant::now(),
            device: self.device.clone(),
            event,
        });
        self.all.0 .1.notify_waiters();
    }
}

impl Events {
    /// Events of `device` since `from` that `pick` selects.
    pub fn count(&self, device: &str, from: Instant, pick: impl Fn(&PollEvent) -> bool) -> usize {
        self.0
             .0
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.device == device && s.at >= from && pick(&s.event))
            .count()
    }

    pub fn all(&self) -> Vec<Seen> {
        self.0 .0.lock().unwrap().clone()
    }

    /// Waits (without polling) until `done` holds, checked after each event;
    /// panics after `within`.
    pub async fn wait_until(&self, within: Duration, what: &str, done: impl Fn(&Events) -> bool) {
        let wait = async {
            loop {
                let notified = self.0 .1.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if done(self) {
                    return;
                }
                notified.await;
            }
        };
        if timeout(within, wait).await.is_err() {
            panic!("{what}: not within {within:?}; events: {:?}", self.all());
        }
    }
}
