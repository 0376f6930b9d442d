//! The `ferry` binary under a stand-in for systemd: a real unix datagram
//! socket as `NOTIFY_SOCKET`, `WATCHDOG_USEC` set, SIGHUP to reload and
//! SIGTERM to stop, as `systemd/ferry.service` does it.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{http_get, loopback, seed_payload, seed_topic, sequences, Cloud, Publisher};
use ferry_testkit::free_ports;

const WAIT: Duration = Duration::from_secs(30);

/// `ferry run` with `NOTIFY_SOCKET` bound here; killed on drop.
struct Daemon {
    child: Child,
    manager: UnixDatagram,
    log: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    fn start(dir: &Path, config: &Path, watchdog: Duration) -> Daemon {
        let socket = dir.join("notify.sock");
        let manager = UnixDatagram::bind(&socket).unwrap();
        manager.set_read_timeout(Some(WAIT)).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["run", "--config"])
            .arg(config)
            .env("NOTIFY_SOCKET", &socket)
            .env("WATCHDOG_USEC", watchdog.as_micros().to_string())
            .env_remove("WATCHDOG_PID")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Daemon {
            child,
            manager,
            log,
        }
    }

    /// The next notification (waits up to [`WAIT`]).
    fn next(&self) -> String {
        let mut buf = [0u8; 4096];
        match self.manager.recv(&mut buf) {
            Ok(n) => String::from_utf8(buf[..n].to_vec()).unwrap(),
            Err(e) => panic!("no notification: {e}; log:\n{}", self.log()),
        }
    }

    /// Notifications until one contains `needle` (within [`WAIT`]); all of
    /// them.
    fn until(&self, needle: &str) -> Vec<String> {
        let deadline = Instant::now() + WAIT;
        let mut seen = Vec::new();
        loop {
            let m = self.next();
            let done = m.contains(needle);
            seen.push(m);
            if done {
                return seen;
            }
            if Instant::now() > deadline {
                seen.retain(|m| m != "WATCHDOG=1\n");
                panic!("no {needle:?} in {seen:?}; log:\n{}", self.log());
            }
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    fn wait_log(&self, needle: &str) {
        let log = self.log.clone();
        ferry_testkit::wait_until_blocking(WAIT, needle, || {
            log.lock().unwrap().iter().any(|l| l.contains(needle))
        })
        .unwrap_or_else(|e| panic!("{e}; log:\n{}", self.log()));
    }

    fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "ferry did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- ferry log\n{}", self.log());
        }
    }
}

fn config(data: &Path, broker: u16, metrics: u16, rest: &str) -> String {
    format!(
        r#"
[gateway]
id = "pi-line-7"
data_dir = "{data}"
log_level = "info"

[sources.local]
type = "mqtt_broker"
listen = "127.0.0.1:{broker}"
topics = ["sensors/{{device}}/telemetry"]

[metrics]
listen = "127.0.0.1:{metrics}"
{rest}
"#,
        data = data.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_after_start_then_watchdog_status_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(2).unwrap();
    let data = dir.path().join("data");
    let path = dir.path().join("ferry.toml");
    std::fs::write(&path, config(&data, ports[0], ports[1], "")).unwrap();
    let mut ferry = Daemon::start(dir.path(), &path, Duration::from_millis(400));

    // The first notification is READY=1, with a status; by then the store
    // is open and the embedded broker accepts connections.
    let first = ferry.next();
    assert!(first.starts_with("READY=1\nSTATUS="), "{first:?}");
    assert!(first.contains("0 records stored; no uplink"), "{first:?}");
    assert!(data.join("ferry.redb").exists());
    std::net::TcpStream::connect(loopback(ports[0])).expect("the broker accepts connections");
    let ready = http_get(loopback(ports[1]), "/readyz");
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    assert!(
        ready.ends_with("ready: 0 records stored; no uplink\n"),
        "{ready}"
    );

    // The watchdog is pinged well within WATCHDOG_USEC (400 ms).
    let started = Instant::now();
    for _ in 0..4 {
        assert_eq!(ferry.next(), "WATCHDOG=1\n");
    }
    assert!(started.elapsed() < Duration::from_secs(2));

    // A stored reading changes the status.
    let mut publisher = Publisher::connect(loopback(ports[0]), "dev").await.unwrap();
    publisher
        .publish(&seed_topic(1), seed_payload(1))
        .await
        .unwrap();
    let seen = ferry.until("STATUS=");
    assert!(
        seen.last().unwrap().contains("STATUS=1 records stored"),
        "{seen:?}"
    );

    ferry.signal(libc::SIGTERM);
    let seen = ferry.until("STOPPING=1");
    assert!(seen.last().unwrap().starts_with("STOPPING=1\n"));
    assert!(ferry.wait_exit().success(), "log:\n{}", ferry.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_good_config_and_survives_a_bad_one() {
    let Cloud {
        pki,
        mosquitto: cloud,
        sub,
    } = Cloud::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(4).unwrap();
    let data = dir.path().join("data");
    let uplink = |endpoint: std::net::SocketAddr| {
        format!(
            r#"
[uplinks.cloud]
endpoint = "{endpoint}"
ca = "{ca}"
cert = "{cert}"
key = "{key}"
max_batch_age = "50ms"
reconnect_min = "100ms"
reconnect_max = "200ms"
"#,
            ca = pki.ca.display(),
            cert = pki.client.cert.display(),
            key = pki.client.key.display(),
        )
    };
    let path = dir.path().join("ferry.toml");
    // The uplink first points at a port nobody listens on.
    let nowhere = loopback(ports[2]);
    std::fs::write(&path, config(&data, ports[0], ports[1], &uplink(nowhere))).unwrap();
    let mut ferry = Daemon::start(dir.path(), &path, Duration::from_secs(2));
    assert!(ferry.next().starts_with("READY=1\n"));
    let mut publisher = Publisher::connect(loopback(ports[0]), "dev").await.unwrap();
    publisher
        .publish(&seed_topic(7), seed_payload(7))
        .await
        .unwrap();
    ferry.until("STATUS=1 records stored; uplink cloud disconnected, backlog 1");

    // A config with a problem: logged, nothing changes, still running.
    std::fs::write(&path, "[gateway]\nid = \"has space\"\n").unwrap();
    ferry.signal(libc::SIGHUP);
    let seen = ferry.until("READY=1");
    assert!(
        seen[0].starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{seen:?}"
    );
    ferry.wait_log("still running with the previous one");
    assert!(
        ferry.log().contains("reload: config error:"),
        "{}",
        ferry.log()
    );
    assert!(ferry.child.try_wait().unwrap().is_none());

    // A good config: the uplink moves to the real broker (applied in place)
    // and the reading arrives; the changed broker port needs a restart and
    // is kept.
    let moved = config(&data, ports[3], ports[1], &uplink(cloud.tls_addr()))
        .replace("log_level = \"info\"", "log_level = \"debug\"");
    std::fs::write(&path, moved).unwrap();
    ferry.signal(libc::SIGHUP);
    ferry.until("READY=1");
    ferry.wait_log("config reloaded");
    let log = ferry.log();
    assert!(log.contains("reload: log level changed"), "{log}");
    assert!(
        log.contains("reload: sources.local changed, which needs a restart"),
        "{log}"
    );
    assert!(log.contains("restarted_uplinks=[\"cloud\"]"), "{log}");
    let got = sub.wait_for_seqs(7..8, WAIT, sequences).await.unwrap();
    assert!(got.is_complete(), "{got}");
    ferry.until("uplink cloud connected, backlog 0");
    // The broker still listens where it did.
    std::net::TcpStream::connect(loopback(ports[0])).expect("the broker kept its port");

    ferry.signal(libc::SIGTERM);
    assert!(ferry.wait_exit().success(), "log:\n{}", ferry.log());
}

#[test]
fn journal_stream_lines_carry_priorities_and_no_time() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(2).unwrap();
    let path = dir.path().join("ferry.toml");
    std::fs::write(
        &path,
        config(&dir.path().join("data"), ports[0], ports[1], ""),
    )
    .unwrap();
    // A file stands in for journald's stream: JOURNAL_STREAM names it.
    let log = std::fs::File::create(dir.path().join("journal")).unwrap();
    let meta = log.metadata().unwrap();
    let socket = dir.path().join("notify.sock");
    let manager = UnixDatagram::bind(&socket).unwrap();
    manager.set_read_timeout(Some(WAIT)).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["run", "--config"])
        .arg(&path)
        .env("NOTIFY_SOCKET", &socket)
        .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = manager.recv(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"READY=1"));
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    let text = std::fs::read_to_string(dir.path().join("journal")).unwrap();
    assert!(text.lines().count() >= 3, "{text}");
    for line in text.lines() {
        assert!(
            line.starts_with("<6> INFO ") || line.starts_with("<4> WARN "),
            "{line:?} in\n{text}"
        );
    }
    assert!(
        text.contains("<6> INFO ferry_gateway::daemon: ferry running"),
        "{text}"
    );
}
