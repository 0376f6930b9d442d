//! Helpers shared by the sources' tests: a local mosquitto, a stand-in for
//! ingest, persistent sessions; `modbus.rs` holds the Modbus tests' collector
//! and observer. Brokers, publishers and Modbus devices are `ferry_testkit`'s.
#![allow(dead_code)]

pub mod modbus;

use std::time::Duration;

use ferry_core::sink::{Committed, Item, Sink, Submission, SubmitError};
use ferry_testkit::Mosquitto;
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

/// A local mosquitto for the subscriber's tests: anonymous, no TLS, sessions
/// in memory, an in-flight window of 20, subscriptions logged (for
/// [`wait_log`]); every message logged too when `MOSQUITTO_LOG` is set. On a
/// given port with `Some(port)`.
pub fn local_broker(port: Option<u16>) -> Mosquitto {
    let mut b = Mosquitto::builder()
        .plain_listener(true)
        .persistence(false)
        .max_packet_size(None)
        .max_inflight_messages(20)
        .max_queued_messages(100_000)
        .config_line("log_type subscribe")
        .verbose(std::env::var_os("MOSQUITTO_LOG").is_some());
    if let Some(port) = port {
        b = b.plain_port(port);
    }
    b.start().expect("start mosquitto")
}

/// Waits until mosquitto logs a line containing `needle`.
pub async fn wait_log(mosquitto: &Mosquitto, needle: &str, within: Duration) {
    ferry_testkit::wait_until(within, &format!("mosquitto to log {needle:?}"), || {
        mosquitto.log().contains(needle)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
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
