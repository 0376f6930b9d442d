//! The uplink's run loop: a state machine over one MQTT connection at a time.
//!
//! ```text
//!            ┌──────────── error / PUBACK timeout ─────────────┐
//!            v                                                 │
//!   Backoff ──delay──> Connecting ──CONNACK──> Connected ───────┘
//!      ^                   │                      │
//!      └──── error ────────┘                      └── cancelled ──> Draining ──> stopped
//! ```
//!
//! - **Connecting**: a fresh MQTT client (clean session) dials the endpoint;
//!   TLS and CONNACK must complete within `connect_timeout`.
//! - **Connected**: reads windows of records after the cursor from the store
//!   (never the whole backlog: one window at a time, as publishes free up),
//!   encodes them into batches, publishes QoS 1 within the inflight window
//!   and the token buckets, and moves the cursor over acknowledged windows
//!   (with one topic, each batch is a window: the cursor moves batch by batch).
//!   Batches are sized to the link and the bytes in flight bounded by it
//!   ([`super::pace`]).
//!   A partial batch waits up to `max_batch_age` for more records; with
//!   `max_batch_age = 0s` it goes at once when nothing is in flight, and
//!   otherwise waits until what is in flight is acknowledged (records that
//!   come meanwhile share one publish).
//! - **Backoff**: everything in flight is forgotten and reading rewinds to
//!   the cursor (so unacknowledged batches are sent again: at-least-once);
//!   the next attempt waits a capped exponential delay with full jitter, at
//!   least a second after the last, and cut short when a probe of the
//!   endpoint answers after probes failed (the link is back): see
//!   [`super::reconnect`] for the schedule, [`super::probe`] for the probes.
//!   The first connect, too, waits for a probe to answer.
//! - A dead link is noticed by a missing PUBACK (`puback_timeout`, 10 s by
//!   default, from the later of the oldest unacknowledged publish and the
//!   last PUBACK) or, when idle, a missing PINGRESP (one PINGREQ every
//!   `keep_alive`; one unanswered when the next is due ends the session).
//! - **Draining** (on shutdown): no new publishes; waits for the PUBACKs of
//!   those in flight up to `drain_timeout`, moves the cursor, disconnects.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use ferry_core::record::now_millis;
use rumqttc::{
    AsyncClient, ConnectionError, Event, MqttOptions, Outgoing, Packet, QoS, TlsConfiguration,
    Transport,
};
use thiserror::Error;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::batch::{encoder, Encoding, Topic};
use super::control::{ControlLink, Inbound, Track};
use super::drain::DrainRate;
use super::flight::Flight;
use super::limiter::Limits;
use super::pace::LinkPace;
use super::probe::Probes;
use super::reconnect::Reconnect;
use crate::metrics::{UplinkLabel, UplinkMetrics};
use crate::store::{Cursors, Store, StoredRecord, Stream};

/// Everything an uplink needs to run, resolved from its config.
#[derive(Clone)]
pub struct Settings {
    /// The uplink's name in the config.
    pub name: String,
    pub gateway: String,
    pub client_id: String,
    pub host: String,
    pub port: u16,
    /// `None` only when plaintext was explicitly allowed.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub topic: Topic,
    pub encoding: Encoding,
    pub max_batch_bytes: usize,
    /// The most records in one batch (`usize::MAX`: no limit but the bytes).
    pub max_batch_records: usize,
    pub max_batch_age: Duration,
    pub max_inflight: usize,
    pub publishes_per_second: u32,
    pub bytes_per_second: u64,
    pub keep_alive: Duration,
    pub connect_timeout: Duration,
    pub puback_timeout: Duration,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// How often the endpoint is probed while waiting to reconnect (zero:
    /// never; the backoff alone decides).
    pub probe_interval: Duration,
    /// Records older than this when their turn comes are skipped (counted,
    /// kept in the store); `None`: everything is sent.
    pub max_send_age: Option<Duration>,
    pub drain_timeout: Duration,
    /// Source names to forward; empty = all.
    pub sources: Vec<String>,
    /// Records read from the store per window.
    pub window_records: usize,
    /// The stream sent: the stored records, or a route's output.
    pub stream: Stream,
    /// What else this connection carries (the device shadow): see
    /// [`super::control`]. `None` for an uplink that only publishes.
    pub control: Option<ControlLink>,
}

/// Why a connection ended.
#[derive(Debug, Error)]
pub enum LinkError {
    #[error("{0}")]
    Mqtt(#[from] ConnectionError),
    #[error("no CONNACK within {0:?}")]
    ConnectTimeout(Duration),
    #[error("no PUBACK within {0:?}: treating the connection as broken")]
    PubackTimeout(Duration),
    #[error("the MQTT client refused a publish: {0}")]
    Client(#[from] rumqttc::ClientError),
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("ingest is shut down")]
    Closed,
}

/// The name of the uplink `name`'s cursor in the store.
pub fn cursor_name(uplink: &str) -> String {
    format!("uplink.{uplink}")
}

/// A batch encoded and waiting for its turn.
struct Ready {
    window_end: u64,
    topic: String,
    payload: Vec<u8>,
    records: usize,
}

/// Runs the uplink until `cancel` fires, then drains and returns.
pub async fn run(
    settings: Settings,
    store: Store,
    cursors: Cursors,
    metrics: UplinkMetrics,
    cancel: CancellationToken,
) {
    let mut uplink = Uplink::new(settings, store, cursors, metrics);
    let mut schedule = Reconnect::new(
        uplink.s.reconnect_min,
        uplink.s.reconnect_max,
        uplink.s.probe_interval,
        Instant::now(),
    );
    let mut rng = fastrand::Rng::new();
    loop {
        let gauges = || uplink.update_gauges();
        let probes = Probes {
            name: &uplink.s.name,
            host: &uplink.s.host,
            port: uplink.s.port,
            timeout: uplink.s.connect_timeout,
            metrics: &uplink.metrics,
            label: &uplink.label,
            every_second: &gauges,
        };
        if cancel.is_cancelled()
            || !probes
                .wait_to_connect(&mut schedule, &mut rng, &cancel)
                .await
        {
            break;
        }
        uplink
            .metrics
            .connect_attempts
            .get_or_create(&uplink.label)
            .inc();
        let ended = uplink.session(&cancel).await;
        if let Some(c) = &uplink.s.control {
            c.tell(Inbound::Disconnected);
        }
        match ended {
            Ok(()) => break,
            Err(e) => {
                uplink
                    .metrics
                    .connect_errors
                    .get_or_create(&uplink.label)
                    .inc();
                uplink.metrics.connected.get_or_create(&uplink.label).set(0);
                // The backlog grows while the link is down: keep it current.
                uplink.update_gauges();
                let delay = schedule.failed(Instant::now(), uplink.was_connected, rng.f64());
                warn!(uplink = %uplink.s.name, endpoint = %format!("{}:{}", uplink.s.host, uplink.s.port),
                      error = %e, retry_in = ?delay, probing = schedule.probing(), "uplink connection failed");
            }
        }
    }
    uplink.metrics.connected.get_or_create(&uplink.label).set(0);
    info!(uplink = %uplink.s.name, acked = uplink.flight.acked(), "uplink stopped");
}

struct Uplink {
    s: Settings,
    store: Store,
    cursors: Cursors,
    cursor_name: Arc<str>,
    metrics: UplinkMetrics,
    label: UplinkLabel,
    flight: Flight,
    /// The link's measured throughput, and the batch size it calls for.
    pace: LinkPace,
    /// The backlog's drain, sampled with the gauges.
    drain: std::sync::Mutex<DrainRate>,
    queue: VecDeque<Ready>,
    /// Average encoded bytes per record, to judge when a batch would be full.
    bytes_per_record: f64,
    /// Since when a partial batch has been waiting for more records.
    partial_since: Option<Instant>,
    was_connected: bool,
    read_buf: Vec<StoredRecord>,
    /// Which packet ids are control publishes.
    track: Track,
    /// The control plane's SUBACK arrived on this connection.
    subscribed: bool,
}

impl Uplink {
    fn new(s: Settings, store: Store, cursors: Cursors, metrics: UplinkMetrics) -> Self {
        let cursor_name: Arc<str> = cursor_name(&s.name).into();
        let acked = store.cursor(&cursor_name).unwrap_or_else(|e| {
            warn!(uplink = %s.name, error = %e, "cannot read the cursor; starting from the beginning");
            0
        });
        let label = UplinkMetrics::label(&s.name);
        metrics.acked_seq.get_or_create(&label).set(acked);
        Uplink {
            cursor_name,
            label,
            flight: Flight::new(acked),
            pace: LinkPace::new(),
            drain: std::sync::Mutex::new(DrainRate::new()),
            queue: VecDeque::new(),
            bytes_per_record: 100.0,
            partial_since: None,
            was_connected: false,
            read_buf: Vec::new(),
            track: Track::default(),
            subscribed: false,
            s,
            store,
            cursors,
            metrics,
        }
    }

    fn mqtt_options(&self) -> MqttOptions {
        let mut o = MqttOptions::new(&self.s.client_id, &self.s.host, self.s.port);
        o.set_keep_alive(self.s.keep_alive)
            .set_clean_session(true)
            .set_inflight(self.s.max_inflight as u16)
            .set_request_channel_capacity(self.s.max_inflight + 8)
            .set_max_packet_size(64 * 1024, self.s.max_batch_bytes + 1024);
        if let Some(tls) = &self.s.tls {
            o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                tls.clone(),
            )));
        }
        o
    }

    /// One connection, from dialling to its end. `Ok` only when cancelled
    /// and drained.
    async fn session(&mut self, cancel: &CancellationToken) -> Result<(), LinkError> {
        self.was_connected = false;
        self.flight.reset();
        self.pace.reconnected();
        self.track.reset();
        self.subscribed = false;
        self.queue.clear();
        self.partial_since = None;
        let (client, mut eventloop) =
            AsyncClient::new(self.mqtt_options(), self.s.max_inflight + 8);
        let mut net = eventloop.network_options();
        net.set_connection_timeout(self.s.connect_timeout.as_secs().max(1));
        // Each publish is written whole: no Nagle delay behind a segment
        // not yet acknowledged.
        net.set_tcp_nodelay(true);
        eventloop.set_network_options(net);
        // CONNECT / CONNACK.
        match tokio::time::timeout(self.s.connect_timeout, eventloop.poll()).await {
            Err(_) => return Err(LinkError::ConnectTimeout(self.s.connect_timeout)),
            Ok(Err(e)) => return Err(e.into()),
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {}
            Ok(Ok(other)) => debug!(?other, "unexpected first event"),
        }
        self.was_connected = true;
        self.drain.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.metrics.connects.get_or_create(&self.label).inc();
        self.metrics.connected.get_or_create(&self.label).set(1);
        info!(uplink = %self.s.name, endpoint = %format!("{}:{}", self.s.host, self.s.port),
              client_id = %self.s.client_id, acked = self.flight.acked(), "uplink connected");

        if let Some(c) = &self.s.control {
            super::control::subscribe(&client, c)?;
        }
        // The event loop runs in its own task, so that nothing here cancels a
        // half-written packet; its events come through a channel.
        let (etx, mut erx) = mpsc::channel(256);
        let poller = tokio::spawn(async move {
            loop {
                let ev = eventloop.poll().await;
                let stop = ev.is_err();
                if etx.send(ev).await.is_err() || stop {
                    break;
                }
            }
        });
        let _abort = AbortOnDrop(poller);

        let result = self.connected(&client, &mut erx, cancel).await;
        if result.is_ok() {
            let _ = client.try_disconnect();
            // Let the DISCONNECT go out; the poller ends with the connection.
            let _ = tokio::time::timeout(Duration::from_secs(1), erx.recv()).await;
        }
        result
    }

    async fn connected(
        &mut self,
        client: &AsyncClient,
        events: &mut mpsc::Receiver<Result<Event, ConnectionError>>,
        cancel: &CancellationToken,
    ) -> Result<(), LinkError> {
        let mut heads = self.store.watch_heads();
        let mut limits = Limits::new(
            self.s.publishes_per_second,
            self.s.bytes_per_second,
            Instant::now(),
        );
        let mut draining: Option<Instant> = None;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let control = self.s.control.clone();
        // With a control plane, batches wait for its SUBACK (and what goes
        // out on it), at most SUBACK_WAIT.
        let gate = control
            .as_ref()
            .map(|_| Instant::now() + super::control::SUBACK_WAIT);
        loop {
            let now = Instant::now();
            let mut wake: Option<Instant> = None;
            if let Some(c) = &control {
                super::control::send_queued(client, c, &mut self.track, &mut limits, now);
            }
            let gated = gate.filter(|g| !self.subscribed && now < *g);
            if draining.is_none() && gated.is_none() {
                wake = self.publish_ready(client, &mut limits, now).await?;
            }
            wake = wake.or(gated);
            // No PUBACK for `puback_timeout` while publishes wait: a dead
            // link. A slow one that keeps acknowledging is not given up.
            if let Some(since) = self.flight.stalled_since() {
                let limit = since + self.s.puback_timeout;
                if limit <= now {
                    return Err(LinkError::PubackTimeout(self.s.puback_timeout));
                }
                wake = Some(wake.map_or(limit, |w| w.min(limit)));
            }
            if let Some(deadline) = draining {
                if self.flight.inflight() == 0 || now >= deadline {
                    if self.flight.inflight() > 0 {
                        warn!(uplink = %self.s.name, inflight = self.flight.inflight(),
                              "shutting down with batches unacknowledged; they are sent again on the next start");
                    }
                    return Ok(());
                }
                wake = Some(wake.map_or(deadline, |w| w.min(deadline)));
            }
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(Ok(ev)) => self.on_event(ev).await?,
                    Some(Err(e)) => return Err(e.into()),
                    None => return Err(LinkError::Closed),
                },
                changed = heads.changed(), if draining.is_none() => {
                    if changed.is_err() {
                        return Err(LinkError::Closed);
                    }
                }
                _ = cancel.cancelled(), if draining.is_none() => {
                    draining = Some(Instant::now() + self.s.drain_timeout);
                    self.queue.clear();
                }
                _ = tick.tick() => self.update_gauges(),
                _ = control_queued(control.as_ref()) => {}
                _ = sleep_until_opt(wake) => {}
            }
        }
    }

    async fn on_event(&mut self, ev: Event) -> Result<(), LinkError> {
        match ev {
            Event::Outgoing(Outgoing::Publish(pkid)) if !self.track.assigned(pkid) => {
                self.flight.assigned(pkid);
            }
            Event::Incoming(Packet::PubAck(ack)) if self.track.acked(ack.pkid) => {
                if let Some(c) = &self.s.control {
                    c.tell(Inbound::Acked);
                }
            }
            Event::Incoming(Packet::Publish(p)) => {
                if let Some(c) = &self.s.control {
                    c.tell(Inbound::Publish {
                        topic: p.topic,
                        payload: p.payload.to_vec(),
                    });
                }
            }
            Event::Incoming(Packet::SubAck(ack)) => {
                if let Some(c) = &self.s.control {
                    super::control::on_suback(c, &ack);
                    self.subscribed = true;
                }
            }
            Event::Incoming(Packet::PubAck(ack)) => {
                if let Some(c) = &self.s.control {
                    c.count_ack();
                }
                let now = Instant::now();
                let (acked, moved) = self.flight.ack(ack.pkid, now);
                if let Some(a) = acked {
                    self.pace.acked(a.bytes, a.sent, now);
                    self.metrics
                        .puback_latency
                        .get_or_create(&self.label)
                        .observe(a.latency.as_secs_f64());
                    self.metrics
                        .records_acked
                        .get_or_create(&self.label)
                        .inc_by(a.records as u64);
                }
                if let Some(seq) = moved {
                    self.advance_cursor(seq).await?;
                }
            }
            Event::Incoming(Packet::Disconnect) => {
                return Err(LinkError::Mqtt(ConnectionError::Io(std::io::Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    "the broker sent DISCONNECT",
                ))))
            }
            _ => {}
        }
        Ok(())
    }

    /// Moves the durable cursor, committed within the store's commit
    /// interval: after a crash, what is sent again is what was in flight
    /// plus the acknowledgements of about one commit interval.
    async fn advance_cursor(&mut self, seq: u64) -> Result<(), LinkError> {
        self.metrics.acked_seq.get_or_create(&self.label).set(seq);
        self.cursors
            .advance_promptly(&self.cursor_name, seq)
            .await
            .map_err(|_| LinkError::Closed)
    }

    /// Publishes what the inflight window and the limits allow. Returns when
    /// to look again if something is waiting on a timer.
    async fn publish_ready(
        &mut self,
        client: &AsyncClient,
        limits: &mut Limits,
        now: Instant,
    ) -> Result<Option<Instant>, LinkError> {
        while self.flight.inflight() < self.s.max_inflight {
            if self.queue.is_empty() {
                if let Some(wait) = self.fill(now).await? {
                    return Ok(Some(wait));
                }
                if self.queue.is_empty() {
                    return Ok(None);
                }
            }
            let next = self.queue.front().expect("filled above");
            // At most a few seconds of the link in flight (always one batch).
            if self.flight.inflight() > 0
                && self.flight.inflight_bytes() + next.payload.len()
                    > self.pace.inflight_bytes(self.s.max_batch_bytes)
            {
                return Ok(None);
            }
            let wait = limits.wait_for(next.payload.len(), now);
            if !wait.is_zero() {
                return Ok(Some(now + wait));
            }
            let b = self.queue.pop_front().expect("filled above");
            limits.take(b.payload.len(), now);
            self.metrics.publishes.get_or_create(&self.label).inc();
            self.metrics
                .publish_bytes
                .get_or_create(&self.label)
                .inc_by(b.payload.len() as u64);
            self.metrics
                .records_sent
                .get_or_create(&self.label)
                .inc_by(b.records as u64);
            let bytes = b.payload.len();
            client.try_publish(b.topic, QoS::AtLeastOnce, false, b.payload)?;
            self.track.sent(false);
            self.flight.published(b.window_end, b.records, bytes, now);
        }
        Ok(None)
    }

    /// Reads the next window from the store and encodes it. Returns a time
    /// to wait until when a partial batch should wait for more records.
    async fn fill(&mut self, now: Instant) -> Result<Option<Instant>, LinkError> {
        let from = self.flight.read_to();
        let head = self.store.stream_head(&self.s.stream)?;
        if head <= from {
            self.partial_since = None;
            return Ok(None);
        }
        let available = head - from;
        let batch_bytes = self.pace.batch_bytes(self.s.max_batch_bytes);
        let per_batch = (batch_bytes as f64 / self.bytes_per_record)
            .min(self.s.max_batch_records as f64)
            .max(1.0) as u64;
        if available < per_batch {
            if self.s.max_batch_age.is_zero() {
                // At once when nothing is in flight; otherwise what comes
                // meanwhile waits for the next PUBACK and goes as one batch.
                if self.flight.inflight() > 0 {
                    return Ok(None);
                }
            } else {
                let since = *self.partial_since.get_or_insert(now);
                let due = since + self.s.max_batch_age;
                if now < due {
                    return Ok(Some(due));
                }
            }
        }
        self.partial_since = None;
        let store = self.store.clone();
        let max = self.s.window_records;
        let stream = self.s.stream.clone();
        let mut buf = std::mem::take(&mut self.read_buf);
        let (buf, stats) = tokio::task::spawn_blocking(move || {
            buf.clear();
            let stats = store.read_stream(&stream, from, max, &mut buf);
            (buf, stats)
        })
        .await
        .expect("store read task panicked");
        let stats = stats?;
        if stats.undecodable > 0 {
            self.metrics
                .records_skipped
                .get_or_create(&self.label)
                .inc_by(stats.undecodable);
        }
        let windows = self.encode(&buf, stats.last_seq);
        self.read_buf = buf;
        // (A slow start may have taken only the front of the read: the
        // windows end where it stopped, and the next read starts there.)
        if stats.last_seq > from {
            let mut moved = None;
            for (end, batches) in windows {
                moved = self.flight.add_window(end, batches).or(moved);
            }
            if let Some(seq) = moved {
                self.advance_cursor(seq).await?;
            }
        }
        Ok(None)
    }

    /// Encodes a window's records into batches per topic and queues them.
    /// Returns the windows to track, as (last sequence number, batches): with
    /// one topic each batch is a window of its own (its records are a
    /// contiguous run), so the cursor moves batch by batch; with topics per
    /// device or source, batches interleave and the read is one window.
    ///
    /// Until a PUBACK has measured the link, only the first two batches of
    /// a read are taken (the window ends at the last record they consumed):
    /// a slow start, so a slow link is not handed a whole window of batches
    /// sized without a measure. Records this uplink skips (other sources,
    /// too old) do not count, so they are passed over a window at a time.
    fn encode(&mut self, records: &[StoredRecord], mut window_end: u64) -> Vec<(u64, usize)> {
        let mut encoders: HashMap<String, Box<dyn super::batch::Encoder + Send>> = HashMap::new();
        let mut order: Vec<String> = Vec::new();
        // (topic, records, payload, the last seq in it)
        let mut done: Vec<(String, usize, Vec<u8>, u64)> = Vec::new();
        let mut last_pushed = 0u64;
        let mut bytes = 0usize;
        let mut n = 0usize;
        let static_topic = self.s.topic.is_static();
        // Batches close at the link's pace; each holds at least one record.
        let batch_bytes = self.pace.batch_bytes(self.s.max_batch_bytes);
        let slow_start = !self.pace.measured();
        let oldest_sent = self.s.max_send_age.map(|age| {
            now_millis().saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX))
        });
        let mut expired = 0u64;
        for r in records {
            if !self.s.sources.is_empty() && !self.s.sources.iter().any(|s| **s == *r.record.source)
            {
                continue;
            }
            if oldest_sent.is_some_and(|oldest| r.record.ts < oldest) {
                expired += 1;
                continue;
            }
            let topic = if static_topic && !order.is_empty() {
                order[0].clone()
            } else {
                self.s.topic.render(&r.record)
            };
            let e = encoders.entry(topic.clone()).or_insert_with(|| {
                order.push(topic.clone());
                encoder(self.s.encoding, &self.s.gateway, self.s.max_batch_bytes)
            });
            let pushed = if e.len() < self.s.max_batch_records && e.push(r) {
                true
            } else {
                // Full: close this topic's batch and start the next with `r`.
                if !e.is_empty() {
                    done.push((topic.clone(), e.len(), e.finish(), last_pushed));
                }
                e.push(r)
            };
            if pushed {
                last_pushed = r.seq;
                if e.size() >= batch_bytes {
                    done.push((topic.clone(), e.len(), e.finish(), last_pushed));
                }
            } else {
                warn!(uplink = %self.s.name, seq = r.seq, "record larger than max_batch_bytes; skipped (it stays in the store)");
                self.metrics
                    .records_skipped
                    .get_or_create(&self.label)
                    .inc();
            }
            if slow_start && done.len() >= 2 {
                window_end = r.seq;
                break;
            }
        }
        if expired > 0 {
            self.metrics
                .records_expired
                .get_or_create(&self.label)
                .inc_by(expired);
        }
        for topic in order {
            let mut e = encoders.remove(&topic).expect("every topic has an encoder");
            if !e.is_empty() {
                let records_in = e.len();
                done.push((topic, records_in, e.finish(), window_end));
            }
        }
        let windows = if !static_topic {
            vec![(window_end, done.len())]
        } else if done.is_empty() {
            vec![(window_end, 0)]
        } else {
            // The last batch also covers what follows it in the read
            // (records of other sources, undecodable ones).
            let last = done.len() - 1;
            done[last].3 = window_end;
            done.iter().map(|d| (d.3, 1)).collect()
        };
        for (topic, records, payload, end) in done {
            bytes += payload.len();
            n += records;
            self.queue.push_back(Ready {
                window_end: if static_topic { end } else { window_end },
                topic,
                payload,
                records,
            });
        }
        if n > 0 {
            self.bytes_per_record = bytes as f64 / n as f64;
        }
        windows
    }

    fn update_gauges(&self) {
        let acked = self.flight.acked();
        let head = self.store.stream_head(&self.s.stream).unwrap_or(acked);
        let drain = self.drain.lock().unwrap_or_else(|e| e.into_inner()).sample(
            Instant::now(),
            acked,
            head,
        );
        self.metrics
            .backlog_records
            .get_or_create(&self.label)
            .set(drain.backlog);
        self.metrics
            .send_rate
            .get_or_create(&self.label)
            .set(drain.send_rate);
        self.metrics
            .drain_eta
            .get_or_create(&self.label)
            .set(drain.eta.map_or(f64::INFINITY, |d| d.as_secs_f64()));
        let age = match self.store.first_ts_in(&self.s.stream, acked) {
            Ok(Some(ts)) => ((now_millis() - ts).max(0) as f64) / 1000.0,
            _ => 0.0,
        };
        self.metrics
            .oldest_unsent_age
            .get_or_create(&self.label)
            .set(age);
        self.metrics
            .link_rate
            .get_or_create(&self.label)
            .set(self.pace.bytes_per_second().unwrap_or(0.0));
        self.metrics
            .batch_target
            .get_or_create(&self.label)
            .set(self.pace.batch_bytes(self.s.max_batch_bytes) as u64);
    }
}

/// Resolves when `control` has a publish queued; never without a link.
async fn control_queued(control: Option<&ControlLink>) {
    match control {
        Some(c) => c.queued().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
