//! Shared helpers of the gateway's end-to-end tests: the real `ferry` binary
//! as a child process, and a QoS 1 publisher that knows which of its
//! messages were acknowledged.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};

/// The `ferry` binary under test: `FERRY_BIN` if set (a copy that a
/// concurrent build in a shared target directory cannot replace), else the
/// one cargo built for these tests.
pub fn ferry_bin() -> std::ffi::OsString {
    std::env::var_os("FERRY_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_ferry").into())
}

/// A running `ferry run --config FILE`, killed on drop.
pub struct Ferry {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    pub config: PathBuf,
}

impl Ferry {
    /// Writes `config` to `dir/ferry.toml`, starts the daemon and waits until
    /// it logs that it is running.
    pub fn start(dir: &Path, config: &str) -> Ferry {
        let path = dir.join("ferry.toml");
        std::fs::write(&path, config).unwrap();
        Ferry::start_file(&path)
    }

    pub fn start_file(path: &Path) -> Ferry {
        Ferry::start_file_env(path, &[])
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Waits (without sleeping blindly) until a log line contains `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) {
        let log = self.log.clone();
        ferry_testkit::wait_until_blocking(timeout, needle, || {
            log.lock().unwrap().iter().any(|l| l.contains(needle))
        })
        .unwrap_or_else(|e| panic!("{e}; log:\n{}", self.log().join("\n")));
    }

    /// SIGKILL: a crash or a power cut, as far as the process can tell.
    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, as systemd stops it; returns the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "ferry did not stop within 30 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Ferry {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- ferry log\n{}", self.log().join("\n"));
        }
    }
}

/// A QoS 1 publisher that waits for each PUBACK before the next publish, so
/// it knows exactly which messages the broker acknowledged, and when.
pub struct Publisher {
    client: AsyncClient,
    events: EventLoop,
}

impl Publisher {
    pub async fn connect(addr: std::net::SocketAddr, client_id: &str) -> anyhow::Result<Publisher> {
        let mut o = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
        o.set_keep_alive(Duration::from_secs(5));
        o.set_max_packet_size(256 * 1024, 256 * 1024);
        let (client, mut events) = AsyncClient::new(o, 10);
        loop {
            match tokio::time::timeout(Duration::from_secs(10), events.poll()).await?? {
                Event::Incoming(Packet::ConnAck(_)) => break,
                _ => continue,
            }
        }
        Ok(Publisher { client, events })
    }

    /// Publishes and waits for the PUBACK; the time it came.
    pub async fn publish(&mut self, topic: &str, payload: Vec<u8>) -> anyhow::Result<Instant> {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await?;
        loop {
            match tokio::time::timeout(Duration::from_secs(10), self.events.poll()).await?? {
                Event::Incoming(Packet::PubAck(_)) => return Ok(Instant::now()),
                _ => continue,
            }
        }
    }
}

/// The seed-format reading number `i`, from device `i % 10`.
pub fn seed_payload(i: u64) -> Vec<u8> {
    format!(
        r#"{{"client_id": 1, "device_id": {}, "voltage": {}, "temperature": {}, "sequence": {i}}}"#,
        i % 10,
        600 + i % 50,
        100 + i % 20
    )
    .into_bytes()
}

pub fn seed_topic(i: u64) -> String {
    format!("sensors/{}/telemetry", i % 10)
}

/// The `sequence` field of every record in a JSON batch.
pub fn sequences(m: &ferry_testkit::Message) -> anyhow::Result<Vec<u64>> {
    let v: serde_json::Value = serde_json::from_slice(&m.payload)?;
    v.as_array()
        .ok_or_else(|| anyhow::anyhow!("not an array"))?
        .iter()
        .map(|r| {
            r["sequence"]
                .as_u64()
                .ok_or_else(|| anyhow::anyhow!("no sequence in {r}"))
        })
        .collect()
}

/// A gateway config with an embedded broker on `broker` and an uplink to a
/// TLS mosquitto at `cloud`.
pub fn broker_config(
    data: &Path,
    broker: std::net::SocketAddr,
    cloud: std::net::SocketAddr,
    pki: &ferry_testkit::Pki,
    metrics: std::net::SocketAddr,
) -> String {
    format!(
        r#"
[gateway]
id = "{id}"
data_dir = "{data}"

[sources.local]
type = "mqtt_broker"
listen = "{broker}"
topics = ["sensors/{{device}}/telemetry"]

{uplink}

[metrics]
listen = "{metrics}"
"#,
        id = pki.client_id,
        data = data.display(),
        uplink = uplink_section(cloud, pki),
    )
}

/// A gateway config with a subscriber of the local broker `local` and an
/// uplink to a TLS mosquitto at `cloud`.
pub fn subscribe_config(
    data: &Path,
    local: std::net::SocketAddr,
    cloud: std::net::SocketAddr,
    pki: &ferry_testkit::Pki,
    metrics: std::net::SocketAddr,
) -> String {
    format!(
        r#"
[gateway]
id = "{id}"
data_dir = "{data}"

[sources.plant]
type = "mqtt_subscribe"
broker = "{local}"
topics = ["sensors/{{device}}/telemetry"]
reconnect_min = "50ms"
reconnect_max = "500ms"

{uplink}

[metrics]
listen = "{metrics}"
"#,
        id = pki.client_id,
        data = data.display(),
        uplink = uplink_section(cloud, pki),
    )
}

pub fn uplink_section(cloud: std::net::SocketAddr, pki: &ferry_testkit::Pki) -> String {
    format!(
        r#"
[uplinks.cloud]
endpoint = "{cloud}"
ca = "{ca}"
cert = "{cert}"
key = "{key}"
topic = "dt/ferry/{{gateway}}/telemetry"
max_batch_age = "100ms"
reconnect_min = "100ms"
reconnect_max = "1s"
"#,
        ca = pki.ca.display(),
        cert = pki.client.cert.display(),
        key = pki.client.key.display(),
    )
}

/// One sample's value on the daemon's /metrics page: `sample` is the name
/// with its labels as the page prints them (`ferry_x_total{source="a"}`).
/// `None` if the page cannot be fetched (the daemon is down) or has no such
/// sample yet.
pub fn metric_sample(addr: std::net::SocketAddr, sample: &str) -> Option<f64> {
    let page = std::panic::catch_unwind(|| http_get(addr, "/metrics")).ok()?;
    page.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
}

/// The sum of a metric's samples over all their labels (0 if it has none).
pub fn metric_sum(addr: std::net::SocketAddr, name: &str) -> f64 {
    http_get(addr, "/metrics")
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with(' ') || r.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Fetches `path` from the daemon's HTTP endpoint.
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

impl Ferry {
    /// Like [`Ferry::start_file`], with `env` added to the daemon's
    /// environment (and not to this process's, which other tests share).
    pub fn start_file_env(path: &Path, env: &[(&str, &str)]) -> Ferry {
        let mut command = Command::new(ferry_bin());
        command
            .args(["run", "--config"])
            .arg(path)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("start ferry");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("ferry running") {
                    let _ = tx.send(());
                }
                sink.lock().unwrap().push(line);
            }
        });
        let mut ferry = Ferry {
            child,
            log,
            config: path.to_owned(),
        };
        if rx.recv_timeout(Duration::from_secs(30)).is_err() {
            let status = ferry.child.try_wait();
            panic!(
                "ferry did not start ({status:?}); its log:\n{}",
                ferry.log().join("\n")
            );
        }
        ferry
    }

    /// The exit status if the daemon has exited, `None` while it runs.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// Waits up to `timeout` for the daemon to exit by itself (polling, no
    /// signal sent); its exit status, `None` if it still runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
