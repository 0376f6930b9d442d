//! A client's relay once it is admitted: client to broker through the
//! ACL, the topic limit and the backlog's hold-back (`Conn::upstream`),
//! and broker to client with the front's own answers between packets
//! (`downstream`).

use std::net::SocketAddr;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use ferry_core::text::escape;

use super::acl::TopicRefusal;
use super::backlog::Backlog;
use super::events::{BrokerEvent, Denied, Limit};
use super::packet::{self};

use super::read::ReadRoom;
use super::serve::{Closed, Front, HOLD};

/// An accepted client's relay state.
pub(super) struct Conn<'a> {
    pub(super) front: &'a Front,
    pub(super) peer: SocketAddr,
    pub(super) client: &'a str,
    pub(super) user: Option<&'a str>,
    pub(super) identity: Option<&'a str>,
    /// Publishes and subscriptions refused so far (the first is logged at
    /// `warn`, the others at `debug` and summed up at the end).
    pub(super) refused: u64,
    /// The device has had to wait for ingest.
    pub(super) throttled: bool,
}

impl Conn<'_> {
    /// Client to broker: whole packets, each PUBLISH checked, each
    /// SUBSCRIBE refused under the ACL.
    pub(super) async fn upstream<R, W>(
        &mut self,
        rd: &mut R,
        mut buf: BytesMut,
        inner: &mut W,
        inject: mpsc::Sender<Vec<u8>>,
    ) -> Result<(), Closed>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut out = BytesMut::new();
        let mut room = ReadRoom::default();
        let backlog = &self.front.backlog;
        loop {
            // Before anything more is relayed, also what came with the
            // CONNECT: a device that reconnects while ingest is behind
            // gets its CONNACK, and waits with its publishes.
            let open = if backlog.over() {
                self.throttled();
                self.hold(rd, &mut buf, inner).await?
            } else {
                true
            };
            let mut relayed = 0;
            while let Some((h, pkt)) = packet::split_packet(&mut buf)? {
                match h.kind() {
                    packet::PUBLISH => {
                        let p = packet::publish(h.byte, packet::body(&h, &pkt))?;
                        match self.front.policy.check(p.topic, self.identity) {
                            Ok(()) => {
                                out.extend_from_slice(&pkt);
                                relayed += Backlog::size(p.topic, p.payload_len).unwrap_or(0);
                            }
                            Err(why) => {
                                self.refuse_publish(why, p.topic);
                                match (p.qos, p.pkid) {
                                    (0, _) => {}
                                    (1, Some(pkid)) => send(&inject, packet::puback(pkid).to_vec()).await?,
                                    _ => {
                                        return Err(Closed::Refused(
                                            "a QoS 2 publish was refused; QoS 2 refusals close the connection".to_owned(),
                                        ))
                                    }
                                }
                            }
                        }
                    }
                    packet::SUBSCRIBE if self.identity.is_some() => {
                        let (pkid, count) = packet::subscribe(packet::body(&h, &pkt))?;
                        self.refuse(
                            BrokerEvent::Denied(Denied::Subscribe),
                            "subscription refused: devices may not subscribe under the ACL",
                            "",
                        );
                        let mut suback = BytesMut::new();
                        packet::suback_refused(pkid, count, &mut suback);
                        send(&inject, suback.to_vec()).await?;
                    }
                    packet::CONNECT => return Err(Closed::Refused("a second CONNECT".to_owned())),
                    _ => out.extend_from_slice(&pkt),
                }
            }
            if !out.is_empty() {
                inner.write_all(&out).await?;
                out.clear();
                backlog.relayed(relayed);
            }
            if !open {
                return Ok(());
            }
            room.fit(&mut out);
            if let Some(h) = packet::header(&buf)? {
                if h.total() > self.front.max_packet {
                    self.refuse(
                        BrokerEvent::Limit(Limit::Payload),
                        "connection closed: a packet is over twice max_payload",
                        "",
                    );
                    return Err(Closed::Refused(format!("a {}-byte packet", h.total())));
                }
                buf.reserve(h.total() - buf.len());
            }
            if !room.read(rd, &mut buf).await? {
                return Ok(());
            }
        }
    }

    /// Waits until the backlog has room again. Meanwhile the device is
    /// still read, up to [`HOLD`] bytes, so that its keep-alive goes on: a
    /// PINGREQ is relayed at once (rumqttd's PINGRESP answers it, and
    /// rumqttd hears from the device within its keep-alive), everything
    /// else is kept in `buf`, in order, for when there is room. Without
    /// this, a device held back for over 1.5 keep-alives is dropped by
    /// rumqttd (and its client gives up waiting for a PINGRESP) and
    /// reconnects, again and again while ingest is behind. `false` if the
    /// device closed its side meanwhile (what it sent before is still
    /// relayed).
    pub(super) async fn hold<R, W>(
        &self,
        rd: &mut R,
        buf: &mut BytesMut,
        inner: &mut W,
    ) -> Result<bool, Closed>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        // One wait throughout, so that its drift check runs on schedule.
        let mut room = std::pin::pin!(self.front.backlog.room());
        let mut held = BytesMut::new();
        let mut open = true;
        loop {
            while let Some((h, pkt)) = packet::split_packet(buf)? {
                if h.kind() == packet::PINGREQ {
                    inner.write_all(&pkt).await?;
                } else {
                    held.extend_from_slice(&pkt);
                }
            }
            let kept = held.len() + buf.len();
            if !open || kept >= HOLD {
                room.await;
                break;
            }
            buf.reserve(HOLD - kept);
            let mut ahead = (&mut *rd).take((HOLD - kept) as u64);
            tokio::select! {
                _ = &mut room => break,
                n = ahead.read_buf(buf) => open = n? > 0,
            }
        }
        held.unsplit(std::mem::take(buf));
        *buf = held;
        Ok(open)
    }

    /// The device waited for ingest: counted, logged once per connection.
    pub(super) fn throttled(&mut self) {
        let f = self.front;
        f.observer
            .event(&f.source, BrokerEvent::Limit(Limit::Backlog));
        if !self.throttled {
            self.throttled = true;
            let (peer, client_log, user_log) =
                (self.peer, escape(self.client), self.user.map(escape));
            info!(
                source = %f.source, %peer, client = ?client_log, user = user_log.map(tracing::field::debug),
                "device held back: ingest is behind by more than `buffer` allows"
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

pub(super) async fn send(inject: &mpsc::Sender<Vec<u8>>, packet: Vec<u8>) -> Result<(), Closed> {
    inject
        .send(packet)
        .await
        .map_err(|_| Closed::Refused("the client's writer stopped".to_owned()))
}

/// Broker to client: whole packets, with the front's own answers (PUBACK,
/// SUBACK) between them.
pub(super) async fn downstream<R, W>(
    mut inner: R,
    client: &mut W,
    mut inject: mpsc::Receiver<Vec<u8>>,
) -> Result<(), Closed>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = BytesMut::new();
    let mut room = ReadRoom::default();
    loop {
        tokio::select! {
            more = room.read(&mut inner, &mut buf) => {
                if !more? {
                    return Ok(());
                }
                let whole = packet::whole_packets_len(&buf)?;
                if whole > 0 {
                    let packets = buf.split_to(whole);
                    client.write_all(&packets).await?;
                    client.flush().await?;
                }
                if let Some(h) = packet::header(&buf)? {
                    buf.reserve(h.total().saturating_sub(buf.len()));
                }
            }
            Some(extra) = inject.recv() => {
                client.write_all(&extra).await?;
                client.flush().await?;
            }
        }
    }
}
