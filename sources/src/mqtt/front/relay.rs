//! A client's session once it is admitted.
//!
//! Device to front (`Conn::upstream`): whole packets, read in batches.
//! Each PUBLISH is checked (ACL, topic length), decoded and handed to
//! ingest with the rest of its read, and its PUBACK (QoS 1) or PUBREC
//! (QoS 2) waits for the commit that holds it; only a publish that a
//! subscription or its retain flag needs goes on to the broker. SUBSCRIBE,
//! UNSUBSCRIBE and the acknowledgements of what the broker delivers go on
//! to the broker; the front answers PINGREQ and PUBREL itself.
//!
//! The acker (`acker`) awaits each batch's commit in order and then sends
//! its acknowledgements, so a device hears them in the order it published
//! (MQTT 3.1.1, 4.6). A failed commit acknowledges nothing and closes the
//! connection: the device sends those messages again.
//!
//! Front to device (`downstream`): what the broker sends, less its
//! PUBACKs (for the publishes the front handed on: the device has the
//! front's) and PINGRESPs (for the front's own pings), with the front's
//! packets between.
//!
//! Bounds per connection: a read of at most 64 KiB, a partial packet of at
//! most [`HOLD`] (larger ones wait for room in the front's shared budget of
//! `buffer`), and [`WINDOW`] bytes of publishes waiting for their commit.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use ferry_core::sink::{Item, Receipt};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tracing::{debug, warn};

use ferry_core::text::escape;

use super::acl::TopicRefusal;
use super::events::{BrokerEvent, Denied, Limit};
use super::inner::Inner;
use super::pace::Pace;
use super::packet::{self, Header};
use super::read::ReadRoom;
use super::serve::{Closed, Front, HOLD};
use crate::mqtt::broker::MAX_BATCH;

/// Bytes of a connection's publishes that may wait for their commit; more
/// waits in the device (its TCP window) until the acknowledgements go out.
pub(super) const WINDOW: usize = 64 * 1024;

/// A connection with this many publishes unacknowledged asks for a commit
/// at once: the in-flight window of paho's and mosquitto's clients (20),
/// full, whether or not the device is seen waiting ([`super::pace`]). A
/// device that pipelines more than 20 readings within one commit interval
/// (100 Hz at 250 ms) commits every 20 of them instead.
pub(super) const FULL_WINDOW: usize = 20;

/// Most QoS 2 packet ids a device may hold between PUBLISH and PUBREL.
pub(super) const MAX_UNRELEASED: usize = 1024;

/// The keep-alive the front asks of the broker for its own connection
/// there (rumqttd refuses 0), and how often it pings it.
pub(super) const INNER_KEEP_ALIVE: u16 = u16::MAX;
pub(super) const INNER_PING: Duration = Duration::from_secs(3600);

/// An admitted client's session state.
pub(super) struct Conn<'a> {
    pub(super) front: &'a Front,
    pub(super) peer: SocketAddr,
    pub(super) client: &'a str,
    pub(super) user: Option<&'a str>,
    pub(super) identity: Option<&'a str>,
    /// Publishes and subscriptions refused so far (the first is logged at
    /// `warn`, the others at `debug` and summed up at the end).
    pub(super) refused: u64,
    /// 1.5 times the device's keep-alive: the longest it may stay silent.
    pub(super) silence: Option<Duration>,
    /// QoS 2 packet ids stored and not released (PUBREL) yet: a publish
    /// sent again under one is answered, not stored again.
    pub(super) unreleased: HashSet<u16>,
    /// The filters this connection holds in the front's subscriptions.
    pub(super) filters: Vec<String>,
    /// [`WINDOW`], in bytes.
    pub(super) window: Arc<Semaphore>,
    /// QoS 1 and 2 publishes handed to ingest and not yet acknowledged.
    pub(super) unacked: Arc<AtomicUsize>,
    /// When the acker last sent acknowledgements.
    pub(super) acked_at: Arc<AckedAt>,
    /// The device's publishing pace: when it waits for a commit.
    pub(super) pace: Pace,
    /// The last quiet time a commit was asked for (or found needless).
    pub(super) stalled: Option<Instant>,
    /// The device has waited for its window.
    pub(super) throttled: bool,
    /// Ends the upstream: the front is cancelled, or the downstream ended.
    pub(super) stop: tokio_util::sync::CancellationToken,
}

/// What one read's packets leave to do once they are committed.
#[derive(Default)]
pub(super) struct Batch {
    items: Vec<Item>,
    /// The acknowledgements, in order.
    acks: BytesMut,
    /// Its QoS 1 and 2 publishes.
    acked: usize,
    bytes: usize,
}

/// A batch handed to ingest, for the acker.
pub(super) struct Pending {
    receipt: Option<Receipt>,
    acks: BytesMut,
    acked: usize,
    _window: Option<OwnedSemaphorePermit>,
}

impl Conn<'_> {
    /// Device to front, until the device closes or the front is
    /// cancelled; every batch goes to `pending` once handed to ingest.
    pub(super) async fn upstream<R>(
        &mut self,
        rd: &mut R,
        mut buf: BytesMut,
        inner: &mut Inner,
        pending: mpsc::Sender<Pending>,
        inject: mpsc::Sender<Vec<u8>>,
    ) -> Result<(), Closed>
    where
        R: AsyncRead + Unpin,
    {
        let mut out = BytesMut::new();
        let mut room = ReadRoom::default();
        let mut large: Option<OwnedSemaphorePermit> = None;
        let mut ping = tokio::time::interval_at(Instant::now() + INNER_PING, INNER_PING);
        loop {
            let mut batch = Batch::default();
            let mut disconnect = false;
            while let Some((h, pkt)) = packet::split_packet(&mut buf)? {
                // The packet the budget's room was for is whole now.
                large = None;
                let open = inner.is_open();
                disconnect |= self
                    .packet(h, pkt, &mut batch, &mut out, &inject, open)
                    .await?;
                if batch.items.len() >= MAX_BATCH {
                    self.hand_over(std::mem::take(&mut batch), &pending).await?;
                }
            }
            self.hand_over(batch, &pending).await?;
            if !out.is_empty() {
                inner.write(&out).await?;
                out.clear();
            }
            if disconnect {
                return Ok(());
            }
            room.fit(&mut out);
            if let Some(h) = packet::header(&buf)? {
                self.make_room(&h, &mut large).await?;
                buf.reserve(h.total().saturating_sub(buf.len()));
            }
            // Counted while waiting for the device only: time spent here
            // (ingest full, say) is not the device's silence.
            let quiet = self.silence.map(|s| Instant::now() + s);
            let stall = self.pace.stalls_at().filter(|&at| self.stalled != Some(at));
            tokio::select! {
                more = room.read(rd, &mut buf) => {
                    if !more? {
                        return Ok(());
                    }
                }
                _ = ping.tick() => inner.ping().await?,
                _ = until(stall) => self.waiting_for_us(stall).await?,
                _ = until(quiet) => {
                    return Err(Closed::Refused(
                        "nothing heard from the device for 1.5 times its keep-alive".to_owned(),
                    ))
                }
                _ = self.stop.cancelled() => return Ok(()),
            }
        }
    }

    /// The device has gone quiet waiting for its acknowledgements
    /// ([`Pace`]): ingest is asked to commit what it holds at once.
    async fn waiting_for_us(&mut self, at: Option<Instant>) -> Result<(), Closed> {
        self.stalled = at;
        if self.unacked.load(Ordering::Acquire) == 0 {
            return Ok(());
        }
        let asked = self
            .front
            .intake
            .sink
            .submit_within(Vec::new(), Some(Duration::ZERO));
        asked
            .await
            .map(drop)
            .map_err(|_| Closed::Refused("ingest is shut down".to_owned()))
    }

    /// Checks the size of the packet at the head of the buffer; one over
    /// [`HOLD`] waits for room in the front's shared budget first.
    async fn make_room(
        &mut self,
        h: &Header,
        large: &mut Option<OwnedSemaphorePermit>,
    ) -> Result<(), Closed> {
        let total = h.total();
        if total > self.front.max_packet {
            self.refuse(
                BrokerEvent::Limit(Limit::Payload),
                "connection closed: a packet is over twice max_payload",
                "",
            );
            return Err(Closed::Refused(format!("a {total}-byte packet")));
        }
        if total > HOLD && large.is_none() {
            let n = u32::try_from(total).unwrap_or(u32::MAX);
            let permit = self.front.large.clone().acquire_many_owned(n).await;
            *large = Some(permit.map_err(|_| Closed::Refused("the front stopped".to_owned()))?);
        }
        Ok(())
    }

    /// One packet from the device (`inner_open`: its connection to
    /// rumqttd is). `true` for a DISCONNECT.
    async fn packet(
        &mut self,
        h: Header,
        pkt: BytesMut,
        batch: &mut Batch,
        out: &mut BytesMut,
        inject: &mpsc::Sender<Vec<u8>>,
        inner_open: bool,
    ) -> Result<bool, Closed> {
        match h.kind() {
            packet::PUBLISH => self.publish(h, &pkt, batch, out)?,
            packet::PUBREL => {
                let id = packet::packet_id(packet::body(&h, &pkt))?;
                self.unreleased.remove(&id);
                batch.acks.extend_from_slice(&packet::pubcomp(id));
            }
            packet::PINGREQ => send(inject, packet::PINGRESP_PACKET.to_vec()).await?,
            packet::SUBSCRIBE => self.subscribe(&h, &pkt, out, inject).await?,
            packet::UNSUBSCRIBE => {
                for f in packet::unsubscribe(packet::body(&h, &pkt))? {
                    if let Some(i) = self.filters.iter().position(|own| own == f) {
                        self.filters.swap_remove(i);
                        self.front.subs.remove(f);
                    }
                }
                out.extend_from_slice(&pkt);
            }
            packet::CONNECT => return Err(Closed::Refused("a second CONNECT".to_owned())),
            packet::DISCONNECT => {
                // To rumqttd too, if connected: it then drops the will.
                if inner_open {
                    out.extend_from_slice(&pkt);
                }
                return Ok(true);
            }
            // Acknowledgements of what rumqttd delivered: none without
            // a connection to it.
            _ if inner_open => out.extend_from_slice(&pkt),
            _ => {}
        }
        Ok(false)
    }

    fn publish(
        &mut self,
        h: Header,
        pkt: &BytesMut,
        batch: &mut Batch,
        out: &mut BytesMut,
    ) -> Result<(), Closed> {
        let p = packet::publish(h.byte, packet::body(&h, pkt))?;
        if let Err(why) = self.front.policy.check(p.topic, self.identity) {
            self.refuse_publish(why, p.topic);
            return match (p.qos, p.pkid) {
                (0, _) => Ok(()),
                (1, Some(id)) => {
                    batch.acks.extend_from_slice(&packet::puback(id));
                    Ok(())
                }
                _ => Err(Closed::Refused(
                    "a QoS 2 publish was refused; QoS 2 refusals close the connection".to_owned(),
                )),
            };
        }
        match (p.qos, p.pkid) {
            (1, Some(id)) => batch.acks.extend_from_slice(&packet::puback(id)),
            (2, Some(id)) => {
                batch.acks.extend_from_slice(&packet::pubrec(id));
                if self.unreleased.contains(&id) {
                    // Sent again before our PUBREC arrived: stored once.
                    return Ok(());
                }
                if self.unreleased.len() >= MAX_UNRELEASED {
                    return Err(Closed::Refused(format!(
                        "over {MAX_UNRELEASED} QoS 2 publishes not released"
                    )));
                }
                self.unreleased.insert(id);
            }
            _ => {}
        }
        batch.acked += usize::from(p.qos > 0);
        batch.bytes += pkt.len();
        batch.items.push(self.front.intake.item(p.topic, p.payload));
        if p.retain || self.front.subs.wanted(p.topic) {
            let at = out.len();
            out.extend_from_slice(pkt);
            if p.qos == 2 {
                out[at] = packet::at_qos1(h.byte);
            }
        }
        Ok(())
    }

    async fn subscribe(
        &mut self,
        h: &Header,
        pkt: &BytesMut,
        out: &mut BytesMut,
        inject: &mpsc::Sender<Vec<u8>>,
    ) -> Result<(), Closed> {
        let (pkid, filters) = packet::subscribe(packet::body(h, pkt))?;
        let refusal = if self.identity.is_some() {
            Some((
                BrokerEvent::Denied(Denied::Subscribe),
                "subscription refused: devices may not subscribe under the ACL",
            ))
        } else {
            let mut held = 0;
            for f in &filters {
                if !self.front.subs.add(f) {
                    break;
                }
                held += 1;
            }
            if held == filters.len() {
                self.filters.extend(filters.iter().map(|f| (*f).to_owned()));
                None
            } else {
                for f in &filters[..held] {
                    self.front.subs.remove(f);
                }
                Some((
                    BrokerEvent::Limit(Limit::Subscriptions),
                    "subscription refused: the front holds its most distinct filters",
                ))
            }
        };
        match refusal {
            None => out.extend_from_slice(pkt),
            Some((event, what)) => {
                self.refuse(event, what, filters.first().copied().unwrap_or(""));
                let mut suback = BytesMut::new();
                packet::suback_refused(pkid, filters.len(), &mut suback);
                send(inject, suback.to_vec()).await?;
            }
        }
        Ok(())
    }

    /// Hands a batch's items to ingest (waiting while ingest is full, or
    /// while this connection's [`WINDOW`] is), and its acknowledgements to
    /// the acker.
    async fn hand_over(
        &mut self,
        batch: Batch,
        pending: &mpsc::Sender<Pending>,
    ) -> Result<(), Closed> {
        if batch.items.is_empty() && batch.acks.is_empty() {
            return Ok(());
        }
        let window = if batch.items.is_empty() {
            None
        } else {
            let n = u32::try_from(batch.bytes.min(WINDOW)).unwrap_or(u32::MAX);
            match self.window.clone().try_acquire_many_owned(n) {
                Ok(permit) => Some(permit),
                Err(_) => {
                    self.held_back();
                    let permit = self.window.clone().acquire_many_owned(n).await;
                    Some(permit.map_err(|_| Closed::Refused("the front stopped".to_owned()))?)
                }
            }
        };
        let waiting = WINDOW.saturating_sub(self.window.available_permits());
        let unacked = self.unacked.fetch_add(batch.acked, Ordering::AcqRel) + batch.acked;
        if batch.acked > 0 {
            self.pace.published(Instant::now(), self.acked_at.last());
        }
        let pressing = unacked >= FULL_WINDOW || waiting >= WINDOW / 2;
        let receipt = if batch.items.is_empty() {
            None
        } else {
            let max_delay = pressing.then_some(Duration::ZERO);
            // It waits in ingest for its commit: its items, not more room.
            let mut items = batch.items;
            items.shrink_to_fit();
            let submitted = self.front.intake.sink.submit_within(items, max_delay).await;
            Some(submitted.map_err(|_| Closed::Refused("ingest is shut down".to_owned()))?)
        };
        let p = Pending {
            receipt,
            acks: batch.acks,
            acked: batch.acked,
            _window: window,
        };
        pending
            .send(p)
            .await
            .map_err(|_| Closed::Refused("the acker stopped".to_owned()))
    }

    /// The device waits for its window: counted, logged once per
    /// connection.
    fn held_back(&mut self) {
        let f = self.front;
        f.observer
            .event(&f.source, BrokerEvent::Limit(Limit::Backlog));
        if !self.throttled {
            self.throttled = true;
            let (peer, client_log, user_log) =
                (self.peer, escape(self.client), self.user.map(escape));
            debug!(
                source = %f.source, %peer, client = ?client_log, user = user_log.map(tracing::field::debug),
                "device held back: {WINDOW} bytes of its publishes wait for their commit"
            );
        }
    }

    pub(super) fn refuse_publish(&mut self, why: TopicRefusal, topic: &[u8]) {
        let topic = String::from_utf8_lossy(topic);
        match why {
            TopicRefusal::TooLong => self.refuse(
                BrokerEvent::Limit(Limit::TopicLength),
                "publish dropped: its topic is longer than max_topic_length",
                &topic,
            ),
            TopicRefusal::NotOwn => self.refuse(
                BrokerEvent::Denied(Denied::Publish),
                "publish dropped: not the client's own topic",
                &topic,
            ),
        }
    }

    pub(super) fn refuse(&mut self, event: BrokerEvent, what: &str, topic: &str) {
        let f = self.front;
        f.observer.event(&f.source, event);
        self.refused += 1;
        let (peer, client_log, user_log) = (self.peer, escape(self.client), self.user.map(escape));
        if self.refused == 1 {
            warn!(source = %f.source, %peer, client = ?client_log, user = user_log.map(tracing::field::debug), topic = ?escape(topic), "{what}");
        } else {
            debug!(source = %f.source, %peer, client = ?client_log, user = user_log.map(tracing::field::debug), topic = ?escape(topic), "{what}");
        }
    }
}

/// When acknowledgements last went out, in microseconds since the
/// connection began (0: never).
pub(super) struct AckedAt {
    epoch: Instant,
    at: AtomicU64,
}

impl AckedAt {
    pub(super) fn new() -> AckedAt {
        AckedAt {
            epoch: Instant::now(),
            at: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros())
            .unwrap_or(u64::MAX)
            .saturating_add(1)
    }

    fn sent(&self) {
        self.at.store(self.now(), Ordering::Release);
    }

    /// When acknowledgements last went out.
    fn last(&self) -> Option<Instant> {
        match self.at.load(Ordering::Acquire) {
            0 => None,
            at => Some(self.epoch + Duration::from_micros(at - 1)),
        }
    }
}

/// Waits until `deadline`, forever without one.
async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

pub(super) async fn send(inject: &mpsc::Sender<Vec<u8>>, packet: Vec<u8>) -> Result<(), Closed> {
    inject
        .send(packet)
        .await
        .map_err(|_| Closed::Refused("the client's writer stopped".to_owned()))
}

/// Sends each batch's acknowledgements once its commit is known, in order;
/// those of batches committed together go in one write. Ends when the
/// upstream is done and every batch is answered, or at a failed commit.
pub(super) async fn acker(
    mut pending: mpsc::Receiver<Pending>,
    inject: mpsc::Sender<Vec<u8>>,
    unacked: Arc<AtomicUsize>,
    acked_at: Arc<AckedAt>,
) -> Result<(), Closed> {
    let mut acks = Vec::new();
    let mut next = pending.recv().await;
    while let Some(mut p) = next.take() {
        if let Some(mut receipt) = p.receipt.take() {
            let outcome = match receipt.try_committed() {
                Some(outcome) => outcome,
                None => {
                    // Waiting: what is committed already goes out first.
                    flush(&inject, &mut acks, &acked_at).await?;
                    receipt.committed().await
                }
            };
            if let Err(e) = outcome {
                return Err(Closed::Refused(format!(
                    "nothing more is acknowledged: {e}"
                )));
            }
        }
        acks.extend_from_slice(&p.acks);
        unacked.fetch_sub(p.acked, Ordering::AcqRel);
        drop(p);
        next = match pending.try_recv() {
            Ok(p) => Some(p),
            Err(_) => {
                flush(&inject, &mut acks, &acked_at).await?;
                pending.recv().await
            }
        };
    }
    flush(&inject, &mut acks, &acked_at).await
}

async fn flush(
    inject: &mpsc::Sender<Vec<u8>>,
    acks: &mut Vec<u8>,
    acked_at: &AckedAt,
) -> Result<(), Closed> {
    if acks.is_empty() {
        return Ok(());
    }
    send(inject, std::mem::take(acks)).await?;
    acked_at.sent();
    Ok(())
}

/// Broker to client: whole packets, less the broker's PUBACKs and
/// PINGRESPs (see the module's docs), with the front's own packets between
/// them.
pub(super) async fn downstream<W>(
    opened: oneshot::Receiver<OwnedReadHalf>,
    client: &mut W,
    mut inject: mpsc::Receiver<Vec<u8>>,
) -> Result<(), Closed>
where
    W: AsyncWrite + Unpin,
{
    let mut buf = BytesMut::new();
    let mut out = BytesMut::new();
    let mut room = ReadRoom::default();
    // Until the client's connection to rumqttd opens (if ever), only the
    // front's own packets go to the client.
    let mut opened = Some(opened);
    let mut inner: Option<OwnedReadHalf> = None;
    loop {
        tokio::select! {
            rd = async { opened.as_mut().expect("guarded").await }, if opened.is_some() => {
                opened = None;
                inner = rd.ok();
            }
            more = async { room.read(inner.as_mut().expect("guarded"), &mut buf).await }, if inner.is_some() => {
                if !more? {
                    return Ok(());
                }
                while let Some((h, pkt)) = packet::split_packet(&mut buf)? {
                    if !matches!(h.kind(), packet::PUBACK | packet::PINGRESP) {
                        out.extend_from_slice(&pkt);
                    }
                }
                if !out.is_empty() {
                    client.write_all(&out).await?;
                    client.flush().await?;
                    out.clear();
                }
                room.fit(&mut out);
                if let Some(h) = packet::header(&buf)? {
                    buf.reserve(h.total().saturating_sub(buf.len()));
                }
            }
            extra = inject.recv() => match extra {
                Some(extra) => {
                    client.write_all(&extra).await?;
                    client.flush().await?;
                }
                // The upstream and the acker are done.
                None => return Ok(()),
            },
        }
    }
}
