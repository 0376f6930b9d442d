//! Helpers shared by the MQTT source tests: a real mosquitto, free ports, a
//! stand-in for ingest, and QoS 1 publishers.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use ferry_core::sink::{Committed, Item, Sink, Submission, SubmitError};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;
use tokio::time::timeout;

/// Logs to the test output when `RUST_LOG` is set.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A port that was free a moment ago (bind port 0, read it, release it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// A mosquitto broker on a free loopback port, stopped on drop.
pub struct Mosquitto {
    child: Child,
    pub port: u16,
    /// mosquitto's log lines, from start-up on.
    log: mpsc::UnboundedReceiver<String>,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    /// Starts mosquitto with a generated config (anonymous, no TLS, sessions
    /// in memory) and waits until it logs that it is running.
    pub fn start() -> Mosquitto {
        Mosquitto::start_on(free_port())
    }

    /// Like [`Mosquitto::start`], on a given port.
    pub fn start_on(port: u16) -> Mosquitto {
        let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("mosquitto is not installed: apt-get install -y mosquitto");
        let dir = tempfile::tempdir().expect("temp dir");
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\n\
                 allow_anonymous true\n\
                 persistence false\n\
                 max_inflight_messages 20\n\
                 max_queued_messages 100000\n\
                 log_dest stderr\n\
                 log_type error\nlog_type warning\nlog_type notice\nlog_type information\n\
                 log_type subscribe\n{}",
                if std::env::var_os("MOSQUITTO_LOG").is_some() {
                    "log_type all\n"
                } else {
                    ""
                }
            ),
        )
        .expect("write mosquitto.conf");
        let mut child = Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start mosquitto");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std_mpsc::channel();
        let (log_tx, log) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("MOSQUITTO_LOG").is_some() {
                    eprintln!("mosquitto: {line}");
                }
                if line.contains(" running") {
                    let _ = tx.send(());
                }
                let _ = log_tx.send(line);
            }
        });
        if rx.recv_timeout(Duration::from_secs(10)).is_err() {
            let _ = child.kill();
            panic!("mosquitto did not report running within 10s");
        }
        Mosquitto {
            child,
            port,
            log,
            _dir: dir,
        }
    }

    /// Waits until mosquitto logs a line containing `needle`.
    pub async fn wait_log(&mut self, needle: &str, within: Duration) {
        let wait = async {
            while let Some(line) = self.log.recv().await {
                if line.contains(needle) {
                    return;
                }
            }
            panic!("mosquitto exited before logging {needle:?}");
        };
        timeout(within, wait)
            .await
            .unwrap_or_else(|_| panic!("mosquitto did not log {needle:?} within {within:?}"));
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A stand-in for ingest: reads submissions and answers them.
pub struct Ingest {
    pub rx: mpsc::Receiver<Submission>,
    next_seq: u64,
}

impl Ingest {
    pub fn new(capacity: usize) -> (Sink, Ingest) {
        let (sink, rx) = Sink::channel(capacity);
        (sink, Ingest { rx, next_seq: 0 })
    }

    /// The next submission; panics if none comes within `within`.
    pub async fn next(&mut self, within: Duration) -> Submission {
        timeout(within, self.rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no submission within {within:?}"))
            .expect("all sinks dropped")
    }

    /// Commits a submission: answers `Ok` with sequence numbers and returns
    /// its items.
    pub fn commit(&mut self, mut sub: Submission) -> Vec<Item> {
        let records = sub
            .items
            .iter()
            .filter(|i| matches!(i, Item::Record(_)))
            .count() as u64;
        let last_seq = if records == 0 {
            None
        } else {
            self.next_seq += records;
            Some(self.next_seq - 1)
        };
        if let Some(done) = sub.done.take() {
            let _ = done.send(Ok(Committed { last_seq }));
        }
        sub.items
    }

    /// Fails a submission as a store error would.
    pub fn fail(&mut self, mut sub: Submission, why: &str) -> Vec<Item> {
        if let Some(done) = sub.done.take() {
            let _ = done.send(Err(SubmitError::Store(why.into())));
        }
        sub.items
    }
}

/// An MQTT client whose event loop runs in a task; `acked` receives one
/// `()` per PUBACK.
pub struct Publisher {
    pub client: AsyncClient,
    pub acked: mpsc::UnboundedReceiver<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Publisher {
    pub fn connect(addr: SocketAddr, client_id: &str) -> Publisher {
        let mut opts = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
        opts.set_keep_alive(Duration::from_secs(30))
            .set_max_packet_size(1 << 20, 1 << 20)
            .set_inflight(100);
        let (client, mut eventloop) = AsyncClient::new(opts, 1000);
        let (tx, acked) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        if tx.send(()).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    // Reconnects on the next poll; pause so a refused
                    // connection does not spin.
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        });
        Publisher {
            client,
            acked,
            task,
        }
    }

    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .expect("queue publish");
    }

    /// Waits for `n` PUBACKs.
    pub async fn wait_acked(&mut self, n: usize, within: Duration) {
        let wait = async {
            for _ in 0..n {
                self.acked.recv().await.expect("publisher event loop ended");
            }
        };
        timeout(within, wait)
            .await
            .unwrap_or_else(|_| panic!("{n} PUBACKs not received within {within:?}"));
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Creates a persistent session for `client_id` subscribed to `filter` at
/// QoS 1, then disconnects: from then on the broker keeps the messages for
/// that client id whether or not it is connected.
pub async fn create_session(port: u16, client_id: &str, filter: &str) {
    let mut opts = MqttOptions::new(client_id, "127.0.0.1", port);
    opts.set_clean_session(false);
    let (client, mut eventloop) = AsyncClient::new(opts, 10);
    client
        .subscribe(filter, QoS::AtLeastOnce)
        .await
        .expect("queue subscribe");
    let run = async {
        loop {
            match eventloop.poll().await.expect("session client") {
                Event::Incoming(Packet::SubAck(_)) => break,
                _ => continue,
            }
        }
        client.disconnect().await.expect("queue disconnect");
        // Wait until mosquitto closes the connection: it has then processed
        // the DISCONNECT, and the next client with this id starts clean.
        while eventloop.poll().await.is_ok() {}
    };
    timeout(Duration::from_secs(10), run)
        .await
        .expect("session created within 10s");
}
