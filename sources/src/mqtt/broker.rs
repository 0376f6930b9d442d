//! The embedded broker source: devices publish to Ferry's own MQTT broker.
//!
//! Ferry runs rumqttd (MQTT 3.1.1 over plain TCP, one listener) on its own
//! threads and reads every message through a local link subscribed to `#`.
//! Devices reach rumqttd through Ferry's device front (the `front` module),
//! or, with `device_front = "auto"` and no `tls`, `password_file` or `acl`,
//! connect to it directly: relaying every packet through the front costs
//! about a quarter more of Ferry's CPU per message (`BENCHMARKS.md`, "Core"),
//! and buys back-pressure (below).
//!
//! Each message is matched to the source's topic templates (no match: an
//! `unknown_topic` dead letter; subscribing to `#` rather than to the
//! templates' filters is what lets Ferry see those at all, since rumqttd
//! silently drops messages that no subscription matches), decoded, and handed
//! to ingest in batches of up to [`MAX_BATCH`] items.
//!
//! # Delivery guarantee and its loss window
//!
//! rumqttd sends a device its PUBACK as soon as the message is routed in
//! memory, before Ferry has stored it; Ferry cannot delay that
//! acknowledgement. So a QoS 1 message acknowledged to its device is lost if
//! the process dies before ingest's next commit: the window is the time a
//! message spends between the broker and the fsync, one commit interval plus
//! the time to forward it (milliseconds under normal load). For zero loss,
//! use the subscriber source against an external broker instead.
//!
//! Back-pressure: when ingest is full, this source stops pulling from the
//! link, but rumqttd keeps accepting (and acknowledging) device messages
//! into its in-memory log, which keeps the last `buffer` bytes. Through the
//! front, devices wait instead: the front stops reading from them while
//! more than half of `buffer` waits in rumqttd, or more than `buffer` has
//! been relayed and not yet answered for by ingest (`front::Backlog`; the
//! receipt watcher tells it when ingest is done with a submission); once
//! more than half of `buffer` waits for ingest, submissions ask for a commit
//! at once rather than at the commit interval. Devices connected directly
//! cannot be slowed: a backlog beyond `buffer` loses the oldest messages;
//! Ferry sees the gap in the log's offsets, logs how many were lost, and
//! stores an `overrun` dead letter that says so.
//!
//! # Shutdown
//!
//! rumqttd has no way to stop its threads. On cancellation this source
//! forwards what the link already holds, hands it to ingest and returns; the
//! broker keeps accepting connections (and acknowledging messages that are
//! no longer stored) until the process exits, which the gateway does right
//! after ingest's final commit. For the same reason the broker's port stays
//! taken until the process exits: run this source once per process.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::thread;
use std::time::Duration;

use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::{ConnectionSettings, Notification, RouterConfig, ServerSettings};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep, timeout, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info};

use ferry_core::record::DeadLetter;
use ferry_core::sink::{Item, Receipt, Sink, SubmitError};

use super::config::BrokerSourceConfig;
use super::decode::MessageDecoder;
use super::front::{
    self, Backlog, BoundFront, BrokerEvent, BrokerObserver, Limit, NoBrokerObserver,
};
use super::log::DeadLetterLog;
use super::payload::Reject;
use super::SourceError;

/// Most items handed to ingest in one submission.
pub const MAX_BATCH: usize = 512;

/// How long the broker may take to accept its first connection.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

/// How long, once cancelled, this source still waits for ingest to accept
/// what it has already taken from the broker.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// The broker keeps `buffer` bytes in this many segments; it drops the
/// oldest segment when a new one is needed.
const SEGMENTS: usize = 4;

/// Runs the embedded broker and forwards its messages to `sink` until
/// `cancel` fires.
///
/// Guarantee: the broker acknowledges a QoS 1 message before it is stored,
/// so a crash loses what was acknowledged in the last moments (the time from
/// the broker to ingest's fsync: about one commit interval). If ingest
/// stalls, devices through the front wait; for devices connected directly
/// the broker keeps only `buffer` bytes and drops the oldest, and each gap
/// becomes an `overrun` dead letter. On cancellation it stops forwarding,
/// but the broker's threads (and its port) live until the process exits.
///
/// `ready` is told the address the broker listens on once it accepts
/// connections (a configured port 0 is replaced by a free port). Fails if the
/// configuration is invalid, the address cannot be bound, the broker stops,
/// or ingest shuts down.
pub async fn run_broker(
    name: Arc<str>,
    cfg: BrokerSourceConfig,
    sink: Sink,
    cancel: CancellationToken,
    ready: Option<oneshot::Sender<SocketAddr>>,
) -> Result<(), SourceError> {
    run_broker_observed(name, cfg, sink, Arc::new(NoBrokerObserver), cancel, ready).await
}

/// [`run_broker`], reporting connections, refusals and limits to
/// `observer`.
pub async fn run_broker_observed(
    name: Arc<str>,
    cfg: BrokerSourceConfig,
    sink: Sink,
    observer: Arc<dyn BrokerObserver>,
    cancel: CancellationToken,
    ready: Option<oneshot::Sender<SocketAddr>>,
) -> Result<(), SourceError> {
    let decoder = cfg.decoder(name.clone())?;
    // With a front, rumqttd listens on loopback only and devices reach it
    // through the front (see the `front` module for why); without one,
    // devices connect to rumqttd on `listen`.
    let (inner, front, backlog) = if cfg.uses_front() {
        let inner = reserve(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
        let backlog = Arc::new(Backlog::new(cfg.buffer.as_u64()));
        let front = BoundFront::bind(
            name.clone(),
            &cfg,
            inner,
            observer.clone(),
            backlog.clone(),
            cancel.clone(),
        )
        .await?;
        (inner, Some(front), Some(backlog))
    } else {
        (reserve(cfg.listen)?, None, None)
    };
    let addr = match &front {
        Some(front) => front.local_addr()?,
        None => inner,
    };
    let (link, mut stopped) =
        spawn_broker(&name, rumqttd_config(&cfg, &name, inner), inner).await?;
    let (_link_tx, link_rx) = link;

    tokio::select! {
        biased;
        _ = cancel.cancelled() => return Ok(()),
        r = wait_listening(&name, inner, &mut stopped) => r?,
    }
    let _front = front.map(BoundFront::serve);
    info!(
        source = %name,
        %addr,
        front = cfg.uses_front(),
        tls = cfg.tls.is_some(),
        login = cfg.password_file.is_some(),
        acl = cfg.acl.as_str(),
        "embedded MQTT broker listening"
    );
    if let Some(ready) = ready {
        if ready.send(addr).is_err() {
            debug!(source = %name, "nobody waits for the broker's address");
        }
    }

    let mut forwarder = Forwarder {
        addr,
        decoder,
        // The front drops long topics before they reach the broker.
        max_topic_length: (!cfg.uses_front()).then_some(cfg.max_topic_length),
        link_rx,
        sink,
        batch: Vec::with_capacity(MAX_BATCH),
        next_offset: 0,
        lost: 0,
        dead: DeadLetterLog::default(),
        observer,
        receipts: spawn_receipt_watcher(name.clone(), backlog.clone()),
        backlog,
        batch_bytes: 0,
    };
    let result = forwarder.run(&cancel, &mut stopped).await;
    info!(
        source = %name,
        "stopped forwarding; the embedded broker runs until the process exits"
    );
    result
}

/// Checks that `listen` can be bound and, for port 0, picks a free port.
///
/// rumqttd binds its listener inside its own thread and never tells the
/// address it got, nor whether binding failed (it logs and its thread ends).
/// So Ferry binds the address first, reads the port and releases it: a bad
/// or taken address becomes a clear error here. Another process could take
/// the port in the instant between; then the broker's thread stops and
/// [`wait_listening`] reports it.
fn reserve(listen: SocketAddr) -> Result<SocketAddr, SourceError> {
    let listener = TcpListener::bind(listen).map_err(|source| SourceError::Bind {
        addr: listen,
        source,
    })?;
    listener.local_addr().map_err(|source| SourceError::Bind {
        addr: listen,
        source,
    })
}

fn rumqttd_config(cfg: &BrokerSourceConfig, name: &str, addr: SocketAddr) -> rumqttd::Config {
    let buffer = usize::try_from(cfg.buffer.as_u64()).unwrap_or(usize::MAX);
    let router = RouterConfig {
        // The devices, Ferry's link and the start-up probe.
        max_connections: cfg.max_connections.saturating_add(2),
        max_outgoing_packet_count: 200,
        max_segment_size: (buffer / SEGMENTS).max(1),
        max_segment_count: SEGMENTS,
        custom_segment: None,
        initialized_filters: None,
        shared_subscriptions_strategy: Default::default(),
    };
    let connections = ConnectionSettings {
        connection_timeout_ms: 5_000,
        // A larger packet closes its connection: the front's check (which
        // counts it) or, for devices connected directly, rumqttd's.
        max_payload_size: front::max_packet(cfg),
        max_inflight_count: 100,
        auth: None,
        external_auth: None,
        dynamic_filters: false,
    };
    let v4 = ServerSettings {
        name: format!("ferry-{name}-v4"),
        listen: addr,
        tls: None,
        next_connection_delay_ms: 1,
        connections,
    };
    rumqttd::Config {
        id: 0,
        router,
        v4: Some(HashMap::from([("1".to_owned(), v4)])),
        ..Default::default()
    }
}

/// Starts rumqttd on its own thread and returns Ferry's link to it, plus a
/// receiver that fires (with the reason) if the broker stops.
async fn spawn_broker(
    name: &str,
    config: rumqttd::Config,
    addr: SocketAddr,
) -> Result<((LinkTx, LinkRx), oneshot::Receiver<String>), SourceError> {
    let broker_error = |reason: String| SourceError::Broker { addr, reason };
    let link_id = format!("ferry-{name}");
    let (link_tx, link_rx) = oneshot::channel();
    let (stopped_tx, stopped_rx) = oneshot::channel();
    thread::Builder::new()
        .name(format!("broker-{name}"))
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            // The router handles the subscription before any device
            // connects: both travel through its one queue, and the servers
            // start below.
            let link = match broker.link(&link_id) {
                Ok((mut tx, rx)) => match tx.subscribe("#") {
                    Ok(_) => Ok((tx, rx)),
                    Err(e) => Err(e.to_string()),
                },
                Err(e) => Err(e.to_string()),
            };
            let started = link.is_ok();
            if link_tx.send(link).is_err() || !started {
                return;
            }
            let reason = match broker.start() {
                Ok(()) => "its listener stopped (could it bind the address?)".to_owned(),
                Err(e) => e.to_string(),
            };
            if stopped_tx.send(reason).is_err() {
                debug!("the embedded broker stopped after its source");
            }
        })
        .map_err(|e| broker_error(format!("cannot start its thread: {e}")))?;
    let link = link_rx
        .await
        .map_err(|_| broker_error("its thread died while starting".to_owned()))?
        .map_err(|e| broker_error(format!("cannot link to its router: {e}")))?;
    Ok((link, stopped_rx))
}

/// Waits until the broker completes an MQTT handshake on `addr`: its
/// listener is bound and serving.
async fn wait_listening(
    name: &str,
    addr: SocketAddr,
    stopped: &mut oneshot::Receiver<String>,
) -> Result<(), SourceError> {
    let target = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    let probe = async {
        loop {
            match probe_once(name, target, addr.port()).await {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => sleep(Duration::from_millis(10)).await,
            }
        }
    };
    tokio::select! {
        r = probe => r.map_err(|e| SourceError::Broker {
            addr,
            reason: format!("not accepting MQTT connections after {STARTUP_TIMEOUT:?}: {e}"),
        }),
        reason = stopped => Err(SourceError::Broker {
            addr,
            reason: reason.unwrap_or_else(|_| "its thread died".to_owned()),
        }),
    }
}

/// One MQTT handshake. The probe then closes its socket without a
/// DISCONNECT: rumqttd logs a peer's close at `info`, but a DISCONNECT at
/// `error` ("router-drop").
async fn probe_once(name: &str, ip: IpAddr, port: u16) -> Result<(), String> {
    let mut opts = rumqttc::MqttOptions::new(format!("ferry-probe-{name}"), ip.to_string(), port);
    opts.set_keep_alive(Duration::from_secs(5));
    let (_client, mut eventloop) = rumqttc::AsyncClient::new(opts, 1);
    match timeout(Duration::from_secs(2), eventloop.poll()).await {
        Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_)))) => Ok(()),
        Ok(Ok(other)) => Err(format!("unexpected {other:?}")),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no CONNACK within 2s".to_owned()),
    }
}

/// Ferry's end of the link: pulls forwarded messages, decodes and submits
/// them.
struct Forwarder {
    addr: SocketAddr,
    decoder: MessageDecoder,
    /// Longer topics become `topic_too_long` dead letters (`None`: the
    /// device front checks them).
    max_topic_length: Option<usize>,
    link_rx: LinkRx,
    sink: Sink,
    receipts: mpsc::Sender<Submitted>,
    batch: Vec<Item>,
    /// The broker log offset expected next; a jump means lost messages. The
    /// log starts at 0 with Ferry's subscription, before any device connects.
    next_offset: u64,
    /// Messages the broker dropped before Ferry could read them.
    lost: u64,
    dead: DeadLetterLog,
    observer: Arc<dyn BrokerObserver>,
    /// With a front: what it relayed, this took, and ingest answered for.
    backlog: Option<Arc<Backlog>>,
    /// The backlog's bytes of the messages in `batch`.
    batch_bytes: u64,
}

impl Forwarder {
    fn source(&self) -> &str {
        self.decoder.source()
    }

    async fn run(
        &mut self,
        cancel: &CancellationToken,
        stopped: &mut oneshot::Receiver<String>,
    ) -> Result<(), SourceError> {
        loop {
            // Waiting on the link: if ingest holds nothing either, a device
            // the front holds back meanwhile waits on a count that drifted.
            self.set_idle(true);
            let first = tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                reason = &mut *stopped => return Err(SourceError::Broker {
                    addr: self.addr,
                    reason: reason.unwrap_or_else(|_| "its thread died".to_owned()),
                }),
                n = self.link_rx.next() => n.map_err(|e| self.link_failed(e))?,
            };
            self.set_idle(false);
            let mut unscheduled = first.is_some_and(|n| self.take(n));
            unscheduled |= self.drain_ready()?;
            if let Some(b) = &self.backlog {
                b.wake();
            }
            self.submit(cancel).await?;
            if unscheduled {
                // The router paused forwarding to this link while its buffer
                // was full; ask for more now that it is drained.
                self.link_rx.wake().await.map_err(|e| self.link_failed(e))?;
            }
        }
        // Cancelled: forward what the link holds already, then stop.
        self.drain_ready()?;
        self.submit(cancel).await
    }

    fn set_idle(&self, idle: bool) {
        if let Some(b) = &self.backlog {
            b.set_idle(idle);
        }
    }

    fn link_failed(&self, e: rumqttd::local::LinkError) -> SourceError {
        SourceError::Broker {
            addr: self.addr,
            reason: format!("its router link failed: {e}"),
        }
    }

    /// Takes what the link has ready without waiting, up to a full batch.
    /// Returns whether the router paused forwarding.
    fn drain_ready(&mut self) -> Result<bool, SourceError> {
        let mut unscheduled = false;
        while self.batch.len() < MAX_BATCH {
            match now_or_never(self.link_rx.next()) {
                Some(Ok(Some(n))) => unscheduled |= self.take(n),
                Some(Ok(None)) | None => break,
                Some(Err(e)) => return Err(self.link_failed(e)),
            }
        }
        Ok(unscheduled)
    }

    /// Decodes one notification into the batch. Returns true for the
    /// router's "paused" notice.
    fn take(&mut self, n: Notification) -> bool {
        let forward = match n {
            Notification::Forward(f) => f,
            Notification::Unschedule => return true,
            other => {
                debug!(source = %self.source(), "broker link: {other:?}");
                return false;
            }
        };
        if let Some((_, offset)) = forward.cursor {
            self.check_offset(offset);
        }
        let publish = forward.publish;
        if let Some(b) = &self.backlog {
            let size = Backlog::size(&publish.topic, publish.payload.len()).unwrap_or(0);
            b.taken(size);
            self.batch_bytes += size;
        }
        let topic = String::from_utf8_lossy(&publish.topic);
        let item = match self.max_topic_length {
            Some(max) if publish.topic.len() > max => Item::Dead(DeadLetter::new(
                self.decoder.source().clone(),
                &*topic,
                Reject::TOPIC_TOO_LONG,
                format!(
                    "topic of {} bytes: longer than max_topic_length ({max})",
                    publish.topic.len()
                ),
                &publish.payload,
            )),
            _ => self.decoder.decode(&topic, &publish.payload),
        };
        if let Item::Dead(d) = &item {
            self.dead.log(d);
            let limit = match d.kind {
                Reject::OVERSIZE => Some(Limit::Payload),
                Reject::TOO_MANY_FIELDS => Some(Limit::Fields),
                Reject::TOPIC_TOO_LONG => Some(Limit::TopicLength),
                _ => None,
            };
            if let Some(limit) = limit {
                self.observer
                    .event(self.source(), BrokerEvent::Limit(limit));
            }
        }
        self.batch.push(item);
        false
    }

    /// Checks that no message was skipped; a gap becomes an `overrun` dead
    /// letter (and an error in the log), so that the loss is stored too.
    fn check_offset(&mut self, offset: u64) {
        let expected = self.next_offset;
        self.next_offset = offset + 1;
        if offset <= expected {
            return;
        }
        let lost = offset - expected;
        self.lost += lost;
        let reason = format!(
            "the embedded broker dropped {lost} acknowledged messages (log offsets \
             {expected}..{offset}) before Ferry read them: ingest fell more than `buffer` \
             behind"
        );
        error!(
            source = %self.source(),
            lost,
            lost_total = self.lost,
            "{reason}"
        );
        self.batch.push(Item::Dead(DeadLetter::new(
            self.decoder.source().clone(),
            "embedded broker",
            Reject::OVERRUN,
            reason,
            &[],
        )));
    }

    /// Hands the batch to ingest, waiting while ingest is full (and so not
    /// pulling from the broker). Does not wait for the commit: the broker has
    /// acknowledged these messages already.
    async fn submit(&mut self, cancel: &CancellationToken) -> Result<(), SourceError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        // A vector of just these items: the submission waits in ingest for
        // its commit (up to `commit_interval`), and one with room for a full
        // batch held ~50 KB per message at a trickle (heaptrack: 1.7 MB of
        // the daemon's heap at 1,000 records/s). `batch` keeps its room.
        let items: Vec<Item> = self.batch.drain(..).collect();
        let bytes = std::mem::take(&mut self.batch_bytes);
        let count = items.len();
        // Through the front, devices are held back once `buffer` waits for
        // ingest: when half of it does, ask for a commit at once, not at
        // the interval (with a small `buffer` or a long interval, devices
        // would otherwise wait out each interval).
        let pressing = self.backlog.as_ref().is_some_and(|b| b.pressing());
        let max_delay = pressing.then_some(Duration::ZERO);
        let mut submit = pin!(self.sink.submit_within(items, max_delay));
        let submitted = tokio::select! {
            r = &mut submit => r,
            _ = cancel.cancelled() => match timeout(SHUTDOWN_GRACE, &mut submit).await {
                Ok(r) => r,
                Err(_) => {
                    error!(
                        source = %self.source(),
                        count,
                        "shutting down: ingest did not accept the last messages in time; \
                         they are lost"
                    );
                    self.done_with(bytes);
                    return Ok(());
                }
            },
        };
        let receipt = submitted.map_err(|_| SourceError::SinkClosed)?;
        if let Err(mpsc::error::TrySendError::Full(s)) = self.receipts.try_send(Submitted {
            count,
            bytes,
            receipt,
        }) {
            debug!(
                source = %self.source(),
                count = s.count, "receipt watcher is behind; not watching this commit"
            );
            self.done_with(s.bytes);
        }
        Ok(())
    }

    /// The front's backlog no longer counts `bytes` as held in Ferry.
    fn done_with(&self, bytes: u64) {
        if let Some(b) = &self.backlog {
            b.done(bytes);
        }
    }
}

/// A submission to ingest, whose commit the receipt watcher waits for.
struct Submitted {
    count: usize,
    /// Its messages' bytes in the front's backlog.
    bytes: u64,
    receipt: Receipt,
}

/// Watches commit receipts in order, to report store failures (the broker
/// has acknowledged these messages, so a failed commit loses them) and to
/// tell the front's backlog (with a front) that ingest is done with them.
fn spawn_receipt_watcher(name: Arc<str>, backlog: Option<Arc<Backlog>>) -> mpsc::Sender<Submitted> {
    let (tx, mut rx) = mpsc::channel::<Submitted>(1024);
    tokio::spawn(async move {
        while let Some(Submitted {
            count,
            bytes,
            receipt,
        }) = rx.recv().await
        {
            let outcome = receipt.committed().await;
            if let Some(b) = &backlog {
                b.done(bytes);
            }
            match outcome {
                Ok(_) => {}
                Err(SubmitError::Closed) => break,
                Err(e @ SubmitError::Store(_)) => error!(
                    source = %name,
                    count,
                    "messages acknowledged by the embedded broker were not stored: {e}"
                ),
            }
        }
    });
    tx
}

/// Polls a future once: its output if it is ready now.
fn now_or_never<F: Future>(fut: F) -> Option<F::Output> {
    let mut fut = pin!(fut);
    match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_picks_a_free_port_and_names_a_taken_one() {
        let addr = reserve("127.0.0.1:0".parse().unwrap()).unwrap();
        assert_ne!(addr.port(), 0);
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let taken_addr = taken.local_addr().unwrap();
        let err = reserve(taken_addr).unwrap_err();
        assert!(
            err.to_string().starts_with(&format!(
                "embedded MQTT broker cannot listen on {taken_addr}: "
            )),
            "{err}"
        );
    }

    #[test]
    fn rumqttd_config_follows_ferry_config() {
        let cfg = BrokerSourceConfig::default();
        let addr: SocketAddr = "127.0.0.1:1883".parse().unwrap();
        let c = rumqttd_config(&cfg, "local", addr);
        assert_eq!(c.router.max_connections, 1002);
        assert_eq!(
            c.router.max_segment_size * c.router.max_segment_count,
            512 << 10
        );
        let v4 = &c.v4.as_ref().unwrap()["1"];
        assert_eq!(v4.listen, addr);
        assert_eq!(v4.connections.max_payload_size, 2 * 65536 + 1024 + 65537);
        assert!(c.v5.is_none() && c.ws.is_none() && c.console.is_none());
    }
}
