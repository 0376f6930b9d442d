//! The cloud side of a test: an MQTT client that subscribes at the IoT Core stand-in
//! and keeps every message it receives, so a test can wait for what it expects.
//!
//! It connects over TLS with its own client certificate ([`Pki::cloud`] by default),
//! with a persistent session (`clean_session = false`) and a unique client id, and
//! subscribes QoS 1. It reconnects by itself (10–200 ms backoff) and subscribes again on
//! every connection, so it rides out a broker restart or a proxy cut; with the broker's
//! persistence on (the [`crate::Mosquitto`] default) nothing published meanwhile is lost.
//!
//! Waiting is event-driven: each received publish wakes the waiters, who look only at
//! messages they have not seen yet.

use std::net::SocketAddr;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Packet, QoS, SubscribeReasonCode,
    TlsConfiguration, Transport,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::mosquitto::IOT_CORE_MAX_PACKET;
use crate::pki::{Identity, Pki, CLOUD_CLIENT_CN};
use crate::seqs::SeqTracker;
use crate::wait::Timeout;

/// How long the first connection and subscription may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Reconnect backoff bounds.
const MIN_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_millis(200);
/// Largest packet the subscriber accepts: above anything IoT Core would pass on.
const MAX_INCOMING_PACKET: usize = 1024 * 1024;

/// One publish received by the subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The topic it was published to.
    pub topic: String,
    /// Its payload.
    pub payload: Bytes,
    /// The QoS it was delivered with.
    pub qos: QoS,
    /// Whether the broker marked it as a redelivery.
    pub dup: bool,
    /// Whether it was a retained message.
    pub retain: bool,
    /// When the subscriber's event loop received it.
    pub received: std::time::Instant,
}

impl Message {
    /// The payload parsed as JSON.
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.payload)
            .with_context(|| format!("payload on {} is not JSON", self.topic))
    }
}

/// How a [`CloudSubscriber`] connects. Start from [`SubscriberConfig::new`] and change
/// fields as needed (e.g. `identity` to present a rogue certificate).
#[derive(Debug, Clone)]
pub struct SubscriberConfig {
    /// The broker's TLS address.
    pub broker: SocketAddr,
    /// The topic filter to subscribe to, QoS 1.
    pub filter: String,
    /// CA certificate(s) to trust for the broker's certificate.
    pub ca: PathBuf,
    /// The client certificate and key to present.
    pub identity: Identity,
    /// MQTT client id; must be unique per broker (a second connection with the same id
    /// disconnects the first).
    pub client_id: String,
    /// `false` (the default) keeps the subscription and queued messages at the broker
    /// while the subscriber is disconnected.
    pub clean_session: bool,
    /// MQTT keep-alive; detects a silently dead link (e.g. [`crate::Proxy::blackhole`]).
    pub keep_alive: Duration,
}

impl SubscriberConfig {
    /// Subscribes to `filter` at `broker` as the [`Pki::cloud`] identity, trusting
    /// [`Pki::ca`], with a client id unique in this process.
    pub fn new(pki: &Pki, broker: SocketAddr, filter: &str) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        SubscriberConfig {
            broker,
            filter: filter.to_owned(),
            ca: pki.ca.clone(),
            identity: pki.cloud.clone(),
            client_id: format!("{CLOUD_CLIENT_CN}-{}-{n}", std::process::id()),
            clean_session: false,
            keep_alive: Duration::from_secs(5),
        }
    }
}

/// The subscriber's view of its link to the broker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkStatus {
    /// Connected (CONNACK received, no error since).
    pub connected: bool,
    /// Connected and the broker acknowledged the subscription on this connection.
    pub subscribed: bool,
    /// How many times it has connected (CONNACKs received).
    pub connects: u64,
    /// The last connection error, if any.
    pub last_error: Option<String>,
}

/// A TLS MQTT subscriber collecting every message it receives. See the module docs.
///
/// Needs a tokio runtime; dropping it stops its task and drops the connection.
pub struct CloudSubscriber {
    client: AsyncClient,
    client_id: String,
    messages: watch::Receiver<Vec<Message>>,
    link: watch::Receiver<LinkStatus>,
    task: JoinHandle<()>,
}

impl CloudSubscriber {
    /// Connects to `broker` as [`Pki::cloud`] and subscribes QoS 1 to `filter`. Returns
    /// once the broker acknowledged the subscription (SUBACK).
    pub async fn connect(pki: &Pki, broker: SocketAddr, filter: &str) -> Result<Self> {
        Self::connect_with(SubscriberConfig::new(pki, broker, filter)).await
    }

    /// Connects as `config` says and subscribes. Returns once the broker acknowledged the
    /// subscription, or the first connection error (e.g. the broker refused the
    /// certificate): it does not retry before it has been subscribed once.
    pub async fn connect_with(config: SubscriberConfig) -> Result<Self> {
        let tls =
            crate::tls::client_config(&config.ca, &config.identity.cert, &config.identity.key)?;
        let mut options = MqttOptions::new(
            &config.client_id,
            config.broker.ip().to_string(),
            config.broker.port(),
        );
        options
            .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                Arc::new(tls),
            )))
            .set_clean_session(config.clean_session)
            .set_keep_alive(config.keep_alive)
            .set_max_packet_size(MAX_INCOMING_PACKET, IOT_CORE_MAX_PACKET as usize);
        let (client, mut eventloop) = AsyncClient::new(options, 16);
        let (messages_tx, messages) = watch::channel(Vec::new());
        let (link_tx, link) = watch::channel(LinkStatus::default());
        let session = Session {
            client: client.clone(),
            filter: config.filter.clone(),
            messages: messages_tx,
            link: link_tx,
        };

        let context = || {
            format!(
                "cloud subscriber {} connecting to {} and subscribing to {:?}",
                config.client_id, config.broker, config.filter
            )
        };
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        while !session.link.borrow().subscribed {
            let event = tokio::time::timeout_at(deadline, eventloop.poll())
                .await
                .map_err(|_| {
                    anyhow!(Timeout {
                        what: "CONNACK and SUBACK".into(),
                        after: CONNECT_TIMEOUT
                    })
                })
                .and_then(|polled| polled.map_err(anyhow::Error::from))
                .with_context(context)?;
            session.on_event(event).with_context(context)?;
        }
        let task = tokio::spawn(session.run(eventloop));
        Ok(CloudSubscriber {
            client,
            client_id: config.client_id,
            messages,
            link,
            task,
        })
    }

    /// Every message received so far, in arrival order.
    pub fn messages(&self) -> Vec<Message> {
        self.messages.borrow().clone()
    }

    /// How many messages have been received.
    pub fn len(&self) -> usize {
        self.messages.borrow().len()
    }

    /// Whether no message has been received.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The link's current state.
    pub fn link(&self) -> LinkStatus {
        self.link.borrow().clone()
    }

    /// The MQTT client id in use.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The underlying client, e.g. to publish towards the gateway.
    pub fn client(&self) -> &AsyncClient {
        &self.client
    }

    /// Feeds every message, from the first ever received, to `done` exactly once and in
    /// arrival order, waiting for new ones as needed, until `done` returns true.
    ///
    /// `done` may keep state (a count, a set). It runs while the message list is
    /// borrowed: it must not call back into this subscriber. Fails with a [`Timeout`]
    /// naming `what` (and the link's state) if `timeout` passes first.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        mut done: impl FnMut(&Message) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut messages = self.messages.clone();
        let mut next = 0;
        loop {
            {
                let seen = messages.borrow_and_update();
                while let Some(message) = seen.get(next) {
                    next += 1;
                    if done(message) {
                        return Ok(());
                    }
                }
            }
            match tokio::time::timeout_at(deadline, messages.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(anyhow!("the cloud subscriber's task has ended")),
                Err(_) => {
                    return Err(anyhow!(Timeout {
                        what: what.to_owned(),
                        after: timeout
                    })
                    .context(format!("{next} messages received; link: {:?}", self.link())))
                }
            }
        }
    }

    /// Waits until at least `n` messages have been received in total.
    pub async fn wait_for_count(&self, n: usize, timeout: Duration) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        let mut count = 0;
        self.wait_for(timeout, &format!("{n} messages"), |_| {
            count += 1;
            count >= n
        })
        .await
    }

    /// Waits until the records in the received payloads carry every sequence number in
    /// `expected`; `extract` lists a payload's numbers (e.g. [`crate::json_record_seqs`]).
    /// Returns the tracker (duplicates, strays). On a timeout the error lists what is
    /// missing; a payload `extract` rejects fails the wait at once.
    pub async fn wait_for_seqs(
        &self,
        expected: Range<u64>,
        timeout: Duration,
        mut extract: impl FnMut(&Message) -> Result<Vec<u64>>,
    ) -> Result<SeqTracker> {
        let mut tracker = SeqTracker::new(expected.clone());
        if tracker.is_complete() {
            return Ok(tracker);
        }
        let mut bad_payload = None;
        let waited = self
            .wait_for(
                timeout,
                &format!("records with seq {expected:?}"),
                |message| {
                    match extract(message) {
                        Ok(seqs) => seqs.into_iter().for_each(|seq| tracker.record(seq)),
                        Err(e) => {
                            let preview = String::from_utf8_lossy(
                                &message.payload[..message.payload.len().min(200)],
                            )
                            .into_owned();
                            bad_payload =
                                Some(e.context(format!("payload on {}: {preview}", message.topic)));
                            return true;
                        }
                    }
                    tracker.is_complete()
                },
            )
            .await;
        if let Some(e) = bad_payload {
            return Err(e);
        }
        waited.map_err(|e| e.context(tracker.to_string()))?;
        Ok(tracker)
    }

    /// Waits until the subscriber is connected and subscribed (e.g. after a restart of
    /// the broker or a restored proxy).
    pub async fn wait_subscribed(&self, timeout: Duration) -> Result<()> {
        self.wait_link(timeout, "the subscriber to be subscribed", |l| l.subscribed)
            .await
    }

    /// Waits until the subscriber has noticed that its link is down.
    pub async fn wait_disconnected(&self, timeout: Duration) -> Result<()> {
        self.wait_link(timeout, "the subscriber to lose its link", |l| !l.connected)
            .await
    }

    async fn wait_link(
        &self,
        timeout: Duration,
        what: &str,
        condition: impl FnMut(&LinkStatus) -> bool,
    ) -> Result<()> {
        let mut link = self.link.clone();
        let outcome = tokio::time::timeout(timeout, async {
            link.wait_for(condition).await.map(|_| ())
        })
        .await;
        match outcome {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(anyhow!("the cloud subscriber's task has ended")),
            Err(_) => Err(anyhow!(Timeout {
                what: what.to_owned(),
                after: timeout
            })
            .context(format!("link: {:?}", self.link()))),
        }
    }
}

impl Drop for CloudSubscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the event loop task owns: the sending ends, and a client to subscribe with.
struct Session {
    client: AsyncClient,
    filter: String,
    messages: watch::Sender<Vec<Message>>,
    link: watch::Sender<LinkStatus>,
}

impl Session {
    /// Polls forever, reconnecting with a capped backoff after errors.
    async fn run(self, mut eventloop: EventLoop) {
        let mut backoff = MIN_BACKOFF;
        loop {
            match eventloop.poll().await {
                Ok(event) => {
                    if matches!(event, Event::Incoming(Packet::ConnAck(_))) {
                        backoff = MIN_BACKOFF;
                    }
                    if let Err(e) = self.on_event(event) {
                        self.link
                            .send_modify(|l| l.last_error = Some(format!("{e:#}")));
                    }
                }
                Err(e) => {
                    self.on_error(&e);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    fn on_event(&self, event: Event) -> Result<()> {
        match event {
            Event::Incoming(Packet::ConnAck(_)) => {
                self.link.send_modify(|l| {
                    l.connected = true;
                    l.subscribed = false;
                    l.connects += 1;
                });
                // On every connection: a session the broker lost (persistence off, or a
                // crash) has no subscription; one it kept is unharmed by a repeat.
                self.client
                    .try_subscribe(&self.filter, QoS::AtLeastOnce)
                    .context("queueing the SUBSCRIBE")?;
            }
            Event::Incoming(Packet::SubAck(ack)) => {
                if ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, SubscribeReasonCode::Failure))
                {
                    anyhow::bail!("the broker refused the subscription to {:?}", self.filter);
                }
                self.link.send_modify(|l| l.subscribed = true);
            }
            Event::Incoming(Packet::Publish(p)) => {
                let message = Message {
                    topic: p.topic,
                    payload: p.payload,
                    qos: p.qos,
                    dup: p.dup,
                    retain: p.retain,
                    received: std::time::Instant::now(),
                };
                self.messages.send_modify(|m| m.push(message));
            }
            _ => {}
        }
        Ok(())
    }

    fn on_error(&self, e: &ConnectionError) {
        self.link.send_modify(|l| {
            l.connected = false;
            l.subscribed = false;
            l.last_error = Some(e.to_string());
        });
    }
}
