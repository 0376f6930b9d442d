//! The subscriber source: Ferry subscribes to an existing MQTT broker.
//!
//! # Zero loss
//!
//! The session is persistent (`clean_session = false`) and acknowledgements
//! are manual: a QoS 1 message is acknowledged (PUBACK) only after ingest has
//! committed and fsynced it. Until then the broker keeps it in the session
//! and sends it again after a reconnect, even one by a new Ferry process
//! with the same client id. So nothing the broker accepted is lost; a message
//! may arrive twice (after a crash between commit and PUBACK), never zero
//! times.
//!
//! Messages flow through three stages joined by bounded queues:
//!
//! ```text
//! event loop ──(message, item)──> submitter ──(batch, receipt)──> acker ──PUBACK──> event loop
//! ```
//!
//! - The event loop task polls the connection, decodes each PUBLISH and
//!   queues it; it subscribes after each CONNACK whose session is new (and on
//!   the first of each run, so that a changed `topics` takes effect).
//! - The submitter hands what is queued to ingest in batches (waiting while
//!   ingest is full: back-pressure reaches the broker, whose in-flight window
//!   stops sending). A batch may wait up to `store.commit_interval` for its
//!   commit, unless half the broker's in-flight window (`broker_inflight`)
//!   is waiting: then it asks for a commit at once, since the broker sends
//!   nothing more until it has PUBACKs.
//! - The acker awaits the receipts in order and acknowledges each batch's
//!   messages once it is committed. A failed commit is not acknowledged: the
//!   acker drops the connection so that the broker sends those messages again
//!   after the reconnect.
//!
//! A PUBACK names a packet id, which the broker reuses once acknowledged, so
//! an acknowledgement must never reach a later connection than the one its
//! message came on. Each message carries the connection's epoch; the acker
//! sends a PUBACK only while the epoch is current, under a lock that the event
//! loop takes to end an epoch, after which it removes any PUBACK still queued.
//!
//! # Reconnecting
//!
//! After a lost connection, the next attempt waits a random delay up to a
//! ceiling that starts at `reconnect_min` and doubles up to `reconnect_max`
//! (full jitter); a successful connection resets it, unless the connection
//! was dropped because the store failed.
//!
//! # Shutdown
//!
//! On cancellation the source stops taking new messages (the broker keeps
//! them for the next run), waits up to [`SHUTDOWN_GRACE`] for the commits of
//! what it has already handed to ingest, acknowledges those, and disconnects.
//!
//! Messages larger than the client's packet limit (16 MiB or twice
//! `max_payload`, whichever is larger) cannot be read: the connection fails
//! on them each time the broker sends them. Cap the broker's message size
//! (mosquitto: `message_size_limit`) below that.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Outgoing, Packet, Publish, QoS,
    SubscribeFilter, SubscribeReasonCode,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use ferry_core::sink::{Committed, Item, Receipt, Sink, SubmitError};

use super::config::{split_host_port, SubscribeSourceConfig};
use super::decode::MessageDecoder;
use super::log::DeadLetterLog;
use super::SourceError;
use ferry_core::backoff::Backoff;

/// Most items handed to ingest in one submission.
const MAX_BATCH: usize = 512;

/// Depth of the queues between the stages.
const QUEUE: usize = 1024;

/// How long, once cancelled, the source waits for the commits of what it has
/// handed to ingest before it disconnects without acknowledging them.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How long the final DISCONNECT may take.
const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Room in the client's request queue: more than the 65,535 QoS 1 messages a
/// connection can have unacknowledged (packet ids are 16-bit), so queueing a
/// PUBACK never waits on the event loop.
const REQUESTS: usize = 65_535 + 64;

/// Subscribes to `cfg.broker` and forwards its messages to `sink` until
/// `cancel` fires. `gateway_id` names the default client id
/// (`ferry-{gateway_id}`).
///
/// Guarantee (QoS 1): a message is acknowledged to the broker only after
/// ingest committed it; the persistent session keeps the rest for the next
/// connection or run. Nothing is lost; a message can arrive twice. On
/// cancellation it takes no new messages, waits up to [`SHUTDOWN_GRACE`] for
/// the commits of what it handed to ingest, acknowledges those, sends
/// DISCONNECT and waits for the broker to close the connection.
///
/// Connection failures are retried forever; it fails only on an invalid
/// configuration or when ingest shuts down.
pub async fn run_subscriber(
    name: Arc<str>,
    gateway_id: &str,
    cfg: SubscribeSourceConfig,
    sink: Sink,
    cancel: CancellationToken,
) -> Result<(), SourceError> {
    let decoder = cfg.decoder(name.clone())?;
    let (host, port) = split_host_port(&cfg.broker)
        .map_err(|e| SourceError::Config(vec![format!("broker: {e}")]))?;
    let client_id = cfg.client_id_for(gateway_id);
    let mut opts = MqttOptions::new(client_id.clone(), host, port);
    opts.set_clean_session(false)
        .set_manual_acks(true)
        .set_keep_alive(cfg.keep_alive)
        .set_max_packet_size(max_incoming_packet(&cfg), 1 << 20);
    if let Some(user) = &cfg.username {
        opts.set_credentials(user, cfg.password.clone().unwrap_or_default());
    }
    let qos = if cfg.qos == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    };
    let filters = decoder
        .filters()
        .into_iter()
        .map(|f| SubscribeFilter::new(f, qos))
        .collect();
    let (client, eventloop) = AsyncClient::new(opts, REQUESTS);

    let shared = Arc::new(Shared {
        epoch: Mutex::new(0),
        store_failed: AtomicBool::new(false),
        sink_closed: CancellationToken::new(),
        client: client.clone(),
        name: name.clone(),
        unacked: AtomicUsize::new(0),
        commit_now_at: usize::from(cfg.broker_inflight).div_ceil(2),
    });
    let (queue_tx, queue_rx) = mpsc::channel(QUEUE);
    let (receipts_tx, receipts_rx) = mpsc::channel(QUEUE);
    let submitter = tokio::spawn(submitter(
        queue_rx,
        sink,
        receipts_tx,
        cancel.clone(),
        shared.clone(),
    ));
    let acker = tokio::spawn(acker(receipts_rx, cancel.clone(), shared.clone()));

    info!(source = %name, broker = %cfg.broker, client_id, "subscribing");
    let mut events = EventLoopTask {
        decoder,
        filters,
        broker: cfg.broker.clone(),
        eventloop,
        client,
        shared: shared.clone(),
        queue: Some(queue_tx),
        backoff: Backoff::new(cfg.reconnect_min, cfg.reconnect_max),
        rng: fastrand::Rng::new(),
        first_connack: true,
        connected: false,
        dead: DeadLetterLog::default(),
    };
    events.run(&cancel, acker).await;
    if let Err(e) = submitter.await {
        error!(source = %name, "submitter task failed: {e}");
    }
    if shared.sink_closed.is_cancelled() && !cancel.is_cancelled() {
        return Err(SourceError::SinkClosed);
    }
    info!(source = %name, "subscriber stopped");
    Ok(())
}

/// The largest packet the client reads: see the module doc.
fn max_incoming_packet(cfg: &SubscribeSourceConfig) -> usize {
    let max_payload = usize::try_from(cfg.max_payload.as_u64()).unwrap_or(usize::MAX);
    // At most MQTT's own limit on a packet's remaining length.
    max_payload.saturating_mul(2).clamp(16 << 20, 268_435_455)
}

/// State the three stages share.
struct Shared {
    /// The connection epoch; see the module doc.
    epoch: Mutex<u64>,
    /// A commit failed since the last successful connection.
    store_failed: AtomicBool,
    /// Ingest refused a submission: it has shut down.
    sink_closed: CancellationToken,
    client: AsyncClient,
    name: Arc<str>,
    /// Messages handed to ingest whose receipt the acker has not handled.
    unacked: AtomicUsize,
    /// At this many `unacked`, submissions ask for a commit at once.
    commit_now_at: usize,
}

impl Shared {
    fn epoch(&self) -> u64 {
        *self.epoch.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Ends the current connection's epoch: no PUBACK is sent for its
    /// messages from now on.
    fn end_epoch(&self) {
        *self.epoch.lock().unwrap_or_else(PoisonError::into_inner) += 1;
    }
}

/// What the acker needs to acknowledge one message.
#[derive(Debug, Clone, Copy)]
struct Delivery {
    epoch: u64,
    qos: QoS,
    pkid: u16,
}

/// The event loop stage.
struct EventLoopTask {
    decoder: MessageDecoder,
    filters: Vec<SubscribeFilter>,
    broker: String,
    eventloop: EventLoop,
    client: AsyncClient,
    shared: Arc<Shared>,
    /// To the submitter; `None` once stopping.
    queue: Option<mpsc::Sender<(Delivery, Item)>>,
    backoff: Backoff,
    rng: fastrand::Rng,
    first_connack: bool,
    connected: bool,
    dead: DeadLetterLog,
}

impl EventLoopTask {
    fn source(&self) -> &str {
        &self.shared.name
    }

    /// Polls the connection until stopped (cancelled, or ingest shut down)
    /// and the acker has queued its last PUBACKs; then disconnects.
    async fn run(&mut self, cancel: &CancellationToken, mut acker: JoinHandle<()>) {
        let sink_closed = self.shared.sink_closed.clone();
        loop {
            let stopping = self.queue.is_none();
            let polled = tokio::select! {
                biased;
                _ = cancel.cancelled(), if !stopping => {
                    self.stop("cancelled");
                    continue;
                }
                _ = sink_closed.cancelled(), if !stopping => {
                    self.stop("ingest is shut down");
                    continue;
                }
                r = &mut acker, if stopping => {
                    if let Err(e) = r {
                        error!(source = %self.source(), "acker task failed: {e}");
                    }
                    break;
                }
                polled = self.eventloop.poll() => polled,
            };
            match polled {
                Ok(event) => self.handle(event, cancel).await,
                Err(e) => {
                    self.connection_lost(&e);
                    if self.queue.is_none() {
                        // Stopping and disconnected: what is not
                        // acknowledged comes again next run.
                        acker.abort();
                        return;
                    }
                    let delay = self.backoff.next_delay(&mut self.rng);
                    debug!(source = %self.source(), ?delay, "reconnecting after a delay");
                    tokio::select! {
                        _ = sleep(delay) => {}
                        _ = cancel.cancelled() => {}
                        _ = sink_closed.cancelled() => {}
                    }
                    if cancel.is_cancelled() || sink_closed.is_cancelled() {
                        acker.abort();
                        return;
                    }
                }
            }
        }
        self.disconnect().await;
    }

    fn stop(&mut self, why: &str) {
        info!(
            source = %self.source(),
            "{why}: taking no new messages, acknowledging what is committed"
        );
        self.queue = None;
    }

    async fn handle(&mut self, event: Event, cancel: &CancellationToken) {
        match event {
            Event::Incoming(Packet::ConnAck(ack)) => {
                self.connected = true;
                if !self.shared.store_failed.swap(false, Ordering::Relaxed) {
                    self.backoff.reset();
                }
                info!(
                    source = %self.source(),
                    broker = %self.broker,
                    session_present = ack.session_present,
                    "connected"
                );
                if !self.first_connack && !ack.session_present {
                    warn!(
                        source = %self.source(),
                        broker = %self.broker,
                        "the broker did not keep the session: what it received for Ferry while \
                         disconnected is lost (does it persist sessions?)"
                    );
                }
                if self.first_connack || !ack.session_present {
                    self.first_connack = false;
                    if let Err(e) = self.client.try_subscribe_many(self.filters.clone()) {
                        error!(source = %self.source(), "cannot queue the subscription: {e}");
                    }
                }
            }
            Event::Incoming(Packet::SubAck(ack)) => {
                for (code, filter) in ack.return_codes.iter().zip(&self.filters) {
                    match code {
                        SubscribeReasonCode::Success(qos) => {
                            info!(source = %self.source(), filter = %filter.path, ?qos, "subscribed")
                        }
                        SubscribeReasonCode::Failure => error!(
                            source = %self.source(),
                            filter = %filter.path,
                            "the broker refused the subscription"
                        ),
                    }
                }
            }
            Event::Incoming(Packet::Publish(publish)) => self.publish(publish, cancel).await,
            _ => {}
        }
    }

    async fn publish(&mut self, publish: Publish, cancel: &CancellationToken) {
        let Some(queue) = &self.queue else {
            // Stopping: not acknowledged, so the broker keeps it.
            return;
        };
        let item = self.decoder.decode(&publish.topic, &publish.payload);
        if let Item::Dead(d) = &item {
            self.dead.log(d);
        }
        let delivery = Delivery {
            epoch: self.shared.epoch(),
            qos: publish.qos,
            pkid: publish.pkid,
        };
        tokio::select! {
            biased;
            sent = queue.send((delivery, item)) => {
                if sent.is_err() {
                    // The submitter stopped (ingest shut down); the run loop
                    // sees `sink_closed` next.
                    debug!(source = %self.shared.name, "submitter gone");
                }
            }
            _ = cancel.cancelled() => {}
        }
    }

    /// The connection failed: end its epoch, drop the PUBACKs still queued
    /// for it, and log.
    fn connection_lost(&mut self, e: &ConnectionError) {
        self.shared.end_epoch();
        // `poll` already cleared the queue once, but the acker may have
        // queued a PUBACK between that and `end_epoch`.
        self.eventloop.clean();
        if self.connected {
            warn!(source = %self.source(), broker = %self.broker, "connection lost: {e}");
        } else {
            warn!(source = %self.source(), broker = %self.broker, "cannot connect: {e}");
        }
        self.connected = false;
    }

    /// Sends DISCONNECT after the PUBACKs already queued, then waits for the
    /// broker to close the connection: it does so only after reading
    /// everything before the DISCONNECT, so every PUBACK sent is known to
    /// have reached it. (Closing at once instead leaves a race: a new
    /// connection with the same client id, say a restarted Ferry, can take
    /// over before the broker reads the last PUBACKs, and it then sends those
    /// messages again.)
    async fn disconnect(&mut self) {
        if !self.connected {
            return;
        }
        self.connected = false;
        if let Err(e) = self.client.try_disconnect() {
            warn!(source = %self.source(), "cannot queue DISCONNECT: {e}");
            return;
        }
        let name = self.shared.name.clone();
        let closed = timeout(DISCONNECT_TIMEOUT, async {
            let mut sent = false;
            loop {
                match self.eventloop.poll().await {
                    Ok(Event::Outgoing(Outgoing::Disconnect)) => sent = true,
                    Ok(_) => {}
                    Err(e) if sent => {
                        debug!(source = %name, "the broker closed the connection: {e}");
                        return;
                    }
                    Err(e) => {
                        warn!(source = %name, "connection lost while disconnecting: {e}");
                        return;
                    }
                }
            }
        })
        .await;
        if closed.is_err() {
            warn!(
                source = %self.source(),
                "the broker did not close the connection within {DISCONNECT_TIMEOUT:?} \
                 after DISCONNECT"
            );
        }
    }
}

/// Hands queued messages to ingest in batches and passes the receipts on.
async fn submitter(
    mut queue: mpsc::Receiver<(Delivery, Item)>,
    sink: Sink,
    receipts: mpsc::Sender<(Vec<Delivery>, Receipt)>,
    cancel: CancellationToken,
    shared: Arc<Shared>,
) {
    loop {
        let first = tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            next = queue.recv() => match next {
                Some(m) => m,
                None => return,
            },
        };
        let mut deliveries = vec![first.0];
        let mut items = vec![first.1];
        while items.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok((d, i)) => {
                    deliveries.push(d);
                    items.push(i);
                }
                Err(_) => break,
            }
        }
        // Without acknowledgements the broker stops sending once its
        // in-flight window is full: commit at once when half of it waits.
        let count = items.len();
        let unacked = shared.unacked.fetch_add(count, Ordering::Relaxed) + count;
        let max_delay = (unacked >= shared.commit_now_at).then_some(Duration::ZERO);
        let receipt = tokio::select! {
            biased;
            // Not submitted: not acknowledged, the broker keeps them.
            _ = cancel.cancelled() => return,
            r = sink.submit_within(items, max_delay) => match r {
                Ok(receipt) => receipt,
                Err(_) => {
                    shared.sink_closed.cancel();
                    return;
                }
            },
        };
        if receipts.send((deliveries, receipt)).await.is_err() {
            return;
        }
    }
}

/// Awaits receipts in order and acknowledges what is committed.
async fn acker(
    mut receipts: mpsc::Receiver<(Vec<Delivery>, Receipt)>,
    cancel: CancellationToken,
    shared: Arc<Shared>,
) {
    let name = shared.name.clone();
    let mut deadline: Option<Instant> = None;
    while let Some((deliveries, receipt)) = receipts.recv().await {
        let Some(outcome) = wait_committed(receipt, &cancel, &mut deadline).await else {
            let mut pending = deliveries.len();
            while let Ok((d, _)) = receipts.try_recv() {
                pending += d.len();
            }
            warn!(
                source = %name,
                pending,
                "shutting down: not committed within {SHUTDOWN_GRACE:?}; left unacknowledged \
                 for the broker to send again"
            );
            return;
        };
        match outcome {
            Ok(Committed { .. }) => ack(&shared, &deliveries),
            Err(SubmitError::Closed) => {
                // Not stored. Keep going: later receipts may still be
                // committed and need their PUBACK.
                debug!(source = %name, count = deliveries.len(), "not committed: ingest closed");
                shared.sink_closed.cancel();
            }
            Err(e @ SubmitError::Store(_)) => {
                error!(
                    source = %name,
                    count = deliveries.len(),
                    "not stored, so not acknowledged; reconnecting for the broker to send \
                     them again: {e}"
                );
                shared.store_failed.store(true, Ordering::Relaxed);
                shared.end_epoch();
                if let Err(e) = shared.client.try_disconnect() {
                    warn!(source = %name, "cannot queue DISCONNECT: {e}");
                }
            }
        }
        shared
            .unacked
            .fetch_sub(deliveries.len(), Ordering::Relaxed);
    }
}

/// Waits for a commit; once cancelled, only until the shutdown deadline.
async fn wait_committed(
    receipt: Receipt,
    cancel: &CancellationToken,
    deadline: &mut Option<Instant>,
) -> Option<Result<Committed, SubmitError>> {
    let committed = receipt.committed();
    tokio::pin!(committed);
    if deadline.is_none() {
        tokio::select! {
            r = &mut committed => return Some(r),
            _ = cancel.cancelled() => {}
        }
    }
    let until = *deadline.get_or_insert_with(|| Instant::now() + SHUTDOWN_GRACE);
    tokio::time::timeout_at(until, committed).await.ok()
}

/// Sends the PUBACKs of committed messages that came on the current
/// connection.
fn ack(shared: &Shared, deliveries: &[Delivery]) {
    let epoch = shared.epoch.lock().unwrap_or_else(PoisonError::into_inner);
    for d in deliveries {
        if d.qos == QoS::AtMostOnce || d.epoch != *epoch {
            // QoS 0 has no PUBACK; an older connection's message comes again.
            continue;
        }
        let mut publish = Publish::new("", d.qos, Vec::new());
        publish.pkid = d.pkid;
        if let Err(e) = shared.client.try_ack(&publish) {
            // Only when the event loop is gone: the broker sends it again.
            debug!(source = %shared.name, pkid = d.pkid, "PUBACK not queued: {e}");
        }
    }
}
