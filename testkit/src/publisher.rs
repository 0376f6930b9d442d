//! A device: a plain MQTT client publishing at QoS 1, whose event loop runs in its own
//! task (so keep-alives and reconnects happen between calls) and reports what the broker
//! acknowledged.
//!
//! Two ways to publish: [`Publisher::publish`] queues a message and waits for the next
//! PUBACK (it knows exactly which messages the broker acknowledged, and when; a lost
//! connection is an error), and [`Publisher::queue`] only queues it, for a stream of
//! messages whose PUBACKs [`Publisher::wait_acked`] counts afterwards (connection
//! errors there are retried, as a device would), or [`Publisher::next_ack`] times one
//! by one. [`Publisher::acked`] is the number of
//! PUBACKs so far, from any thread.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;

/// How long [`Publisher::connect`] and [`Publisher::publish`] wait for the broker's
/// answer (CONNACK, PUBACK) before they give up.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// The pause after a connection error before the event loop reconnects, so that a
/// refused connection does not spin.
const RECONNECT_PAUSE: Duration = Duration::from_millis(20);

/// What the event loop task reports.
enum Note {
    ConnAck,
    PubAck(Instant),
    Error(String),
}

/// How to connect a [`Publisher`]; from [`Publisher::builder`].
pub struct PublisherBuilder {
    options: MqttOptions,
    queue: usize,
}

impl PublisherBuilder {
    /// MQTT keep-alive. Default: 30 s.
    pub fn keep_alive(mut self, every: Duration) -> Self {
        self.options.set_keep_alive(every);
        self
    }

    /// The largest packet sent or accepted. Default: 1 MiB.
    pub fn max_packet_size(mut self, bytes: usize) -> Self {
        self.options.set_max_packet_size(bytes, bytes);
        self
    }

    /// The client's request channel. Default: 1000. A small one keeps the time taken
    /// before [`Publisher::queue`] close to when the packet leaves.
    pub fn queue(mut self, requests: usize) -> Self {
        self.queue = requests;
        self
    }

    /// Starts the event loop and returns at once: it connects (and reconnects) in the
    /// background. Needs a tokio runtime.
    pub fn spawn(self) -> Publisher {
        let (client, mut eventloop) = AsyncClient::new(self.options, self.queue);
        let (tx, notes) = mpsc::unbounded_channel();
        let acked = Arc::new(AtomicU64::new(0));
        let count = acked.clone();
        let task = tokio::spawn(async move {
            loop {
                let note = match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => Note::ConnAck,
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        count.fetch_add(1, Ordering::Relaxed);
                        Note::PubAck(Instant::now())
                    }
                    Ok(_) => continue,
                    Err(e) => {
                        let _ = tx.send(Note::Error(e.to_string()));
                        tokio::time::sleep(RECONNECT_PAUSE).await;
                        continue;
                    }
                };
                if tx.send(note).is_err() {
                    return;
                }
            }
        });
        Publisher {
            client,
            notes,
            acked,
            task,
        }
    }

    /// Starts the event loop and waits for the broker's CONNACK (10 s at most); a
    /// connection error before it fails.
    pub async fn connect(self) -> Result<Publisher> {
        let mut publisher = self.spawn();
        loop {
            match publisher.next_note().await? {
                Note::ConnAck => return Ok(publisher),
                Note::PubAck(_) => continue,
                Note::Error(e) => return Err(anyhow!("connecting: {e}")),
            }
        }
    }
}

/// A QoS 1 MQTT publisher; see the module docs. Dropping it stops its event loop.
pub struct Publisher {
    client: AsyncClient,
    notes: mpsc::UnboundedReceiver<Note>,
    acked: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Publisher {
    /// A publisher to `addr` with client id `client_id`, every option at its default.
    pub fn builder(addr: SocketAddr, client_id: &str) -> PublisherBuilder {
        let mut options = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
        options
            .set_keep_alive(Duration::from_secs(30))
            .set_max_packet_size(1 << 20, 1 << 20)
            .set_inflight(100);
        PublisherBuilder {
            options,
            queue: 1000,
        }
    }

    /// [`PublisherBuilder::spawn`] with every default: connects in the background.
    pub fn spawn(addr: SocketAddr, client_id: &str) -> Publisher {
        Publisher::builder(addr, client_id).spawn()
    }

    /// [`PublisherBuilder::connect`] with every default: returns once connected.
    pub async fn connect(addr: SocketAddr, client_id: &str) -> Result<Publisher> {
        Publisher::builder(addr, client_id).connect().await
    }

    /// The MQTT client, to publish from another task.
    pub fn client(&self) -> &AsyncClient {
        &self.client
    }

    /// PUBACKs received so far.
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    /// Publishes at QoS 1 and waits for the PUBACK (10 s at most); the time it came. A
    /// connection error meanwhile fails it.
    pub async fn publish(&mut self, topic: &str, payload: impl Into<Vec<u8>>) -> Result<Instant> {
        self.queue(topic, payload).await;
        loop {
            match self.next_note().await? {
                Note::PubAck(at) => return Ok(at),
                Note::ConnAck => continue,
                Note::Error(e) => return Err(anyhow!("publishing to {topic}: {e}")),
            }
        }
    }

    /// Queues a QoS 1 publish (waiting while the client's queue is full), without
    /// waiting for its PUBACK.
    pub async fn queue(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .expect("the publisher's event loop is running");
    }

    /// Waits for the broker's CONNACK, retrying connection errors meanwhile; panics if
    /// it does not come within `within`. For a publisher from [`PublisherBuilder::spawn`].
    pub async fn wait_connected(&mut self, within: Duration) {
        let wait = async {
            loop {
                match self.notes.recv().await {
                    Some(Note::ConnAck) => return,
                    Some(_) => {}
                    None => panic!("publisher event loop ended"),
                }
            }
        };
        tokio::time::timeout(within, wait)
            .await
            .unwrap_or_else(|_| panic!("no CONNACK within {within:?}"));
    }

    /// Waits for `n` more PUBACKs, connection errors meanwhile aside; panics if they do
    /// not come within `within`.
    pub async fn wait_acked(&mut self, n: usize, within: Duration) {
        let wait = async {
            let mut acked = 0;
            while acked < n {
                match self.notes.recv().await {
                    Some(Note::PubAck(_)) => acked += 1,
                    Some(_) => {}
                    None => panic!("publisher event loop ended"),
                }
            }
        };
        tokio::time::timeout(within, wait)
            .await
            .unwrap_or_else(|_| panic!("{n} PUBACKs not received within {within:?}"));
    }

    /// Waits for the next PUBACK (10 s at most) and returns when it came; a connection
    /// error meanwhile fails it. With messages [`Publisher::queue`]d, the n-th call
    /// answers the n-th of them (QoS 1 acknowledgements come in order).
    pub async fn next_ack(&mut self) -> Result<Instant> {
        loop {
            match self.next_note().await? {
                Note::PubAck(at) => return Ok(at),
                Note::ConnAck => continue,
                Note::Error(e) => return Err(anyhow!("waiting for a PUBACK: {e}")),
            }
        }
    }

    async fn next_note(&mut self) -> Result<Note> {
        tokio::time::timeout(ANSWER_TIMEOUT, self.notes.recv())
            .await
            .context("no answer from the broker within 10 s")?
            .context("the publisher's event loop ended")
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.task.abort();
    }
}
