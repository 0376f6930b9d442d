//! The front's listener and its per-connection relay.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::timeout;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::accept::{AcceptBackoff, AcceptFailure};
use ferry_core::text::escape;

use super::acl::{TopicPolicy, TopicRefusal};
use super::backlog::Backlog;
use super::events::{BrokerEvent, BrokerObserver, Denied, Limit};
use super::packet::{self, ConnackCode, Header, Malformed};
use super::passwd::Passwords;

/// Time a client has for its TLS handshake and CONNECT.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest CONNECT read (client id, will, username, password).
const MAX_CONNECT: usize = 64 * 1024;

/// Most a held-back device is read ahead, for its PINGREQs (what it has
/// sent beyond that waits in its TCP window, as everything did before).
const HOLD: usize = 16 * 1024;

/// Sockets open beyond `max_connections`: clients being refused (CONNACK 3
/// once their CONNECT arrives) or not yet logged in.
pub const REFUSING: usize = 64;

/// What every connection of one front shares.
pub struct Front {
    pub source: Arc<str>,
    /// rumqttd's own listener, on loopback.
    pub inner: SocketAddr,
    pub tls: Option<TlsAcceptor>,
    /// The password file and what it held when last read; `None`: no login.
    pub passwords: Option<(PathBuf, RwLock<Arc<Passwords>>)>,
    pub policy: TopicPolicy,
    /// Largest packet relayed; a bigger one closes its connection.
    pub max_packet: usize,
    pub slots: Arc<Semaphore>,
    /// The sockets open: `max_connections` + [`REFUSING`].
    pub sockets: Arc<Semaphore>,
    pub max_connections: usize,
    pub observer: Arc<dyn BrokerObserver>,
    /// What was relayed into rumqttd and is not stored yet (devices wait
    /// while it is too much).
    pub backlog: Arc<Backlog>,
    pub cancel: CancellationToken,
}

/// Why a connection ended early.
#[derive(Debug, thiserror::Error)]
enum Closed {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Malformed(#[from] Malformed),
    #[error("{0}")]
    Refused(String),
}

impl Front {
    /// Accepts devices until cancelled; SIGHUP re-reads the password file.
    ///
    /// At most `max_connections` + [`REFUSING`] sockets are open at once:
    /// one more is closed as soon as it is accepted (counted as the
    /// `connections` limit), so the front's descriptors stay within the
    /// budget `ferry validate` checks. A failed accept (out of descriptors,
    /// mostly) waits with a back-off instead of retrying at once.
    pub async fn run(self: Arc<Self>, listener: TcpListener) {
        let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(|e| warn!(source = %self.source, "cannot watch SIGHUP: {e}"))
            .ok();
        let mut backoff = AcceptBackoff::new(format!("source {}", self.source));
        let mut over_cap = false;
        loop {
            let hangup = async {
                match hangups.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = hangup => self.reload_passwords(),
                accepted = listener.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        backoff.accepted();
                        let Ok(socket) = self.sockets.clone().try_acquire_owned() else {
                            self.observer
                                .event(&self.source, BrokerEvent::Limit(Limit::Connections));
                            if !over_cap {
                                over_cap = true;
                                warn!(
                                    source = %self.source, %peer,
                                    "closing new connections at once: max_connections ({}) \
                                     clients and {REFUSING} more are connected already (counted)",
                                    self.max_connections
                                );
                            }
                            drop(tcp);
                            continue;
                        };
                        over_cap = false;
                        let permit = self.slots.clone().try_acquire_owned().ok();
                        tokio::spawn(self.clone().serve(tcp, peer, permit, socket));
                    }
                    Err(e) => {
                        let (failure, wait) = backoff.failed(&e);
                        let limit = match failure {
                            AcceptFailure::OutOfDescriptors => Limit::Descriptors,
                            AcceptFailure::Other => Limit::AcceptError,
                        };
                        self.observer.event(&self.source, BrokerEvent::Limit(limit));
                        tokio::select! {
                            _ = self.cancel.cancelled() => return,
                            _ = tokio::time::sleep(wait) => {}
                        }
                    }
                },
            }
        }
    }

    /// Reads the password file again; keeps the old users if it is bad.
    pub fn reload_passwords(&self) {
        let Some((path, current)) = &self.passwords else {
            return;
        };
        match Passwords::load(path) {
            Ok(p) => {
                info!(source = %self.source, users = p.len(), "password file re-read");
                *current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(p);
            }
            Err(e) => error!(
                source = %self.source,
                "password file not re-read, the previous users stay: {e}"
            ),
        }
    }

    async fn serve(
        self: Arc<Self>,
        tcp: TcpStream,
        peer: SocketAddr,
        slot: Option<OwnedSemaphorePermit>,
        _socket: OwnedSemaphorePermit,
    ) {
        if let Err(e) = tcp.set_nodelay(true) {
            debug!(source = %self.source, %peer, "cannot set TCP_NODELAY: {e}");
        }
        let result = match &self.tls {
            None => self.session(tcp, peer, slot).await,
            Some(acceptor) => match timeout(CONNECT_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => self.session(tls, peer, slot).await,
                Ok(Err(e)) => {
                    self.observer.event(&self.source, BrokerEvent::TlsFailed);
                    warn!(source = %self.source, %peer, "TLS handshake failed: {e}");
                    return;
                }
                Err(_) => {
                    self.observer.event(&self.source, BrokerEvent::TlsFailed);
                    warn!(source = %self.source, %peer, "no TLS handshake within {CONNECT_TIMEOUT:?}");
                    return;
                }
            },
        };
        if let Err(e) = result {
            debug!(source = %self.source, %peer, "connection closed: {e}");
        }
    }

    /// One client: its CONNECT checked, then relayed to rumqttd.
    async fn session<S>(
        &self,
        stream: S,
        peer: SocketAddr,
        slot: Option<OwnedSemaphorePermit>,
    ) -> Result<(), Closed>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let (mut rd, mut wr) = tokio::io::split(stream);
        let mut buf = BytesMut::with_capacity(1024);
        let first = timeout(CONNECT_TIMEOUT, read_packet(&mut rd, &mut buf, MAX_CONNECT))
            .await
            .map_err(|_| Closed::Refused(format!("no CONNECT within {CONNECT_TIMEOUT:?}")))??;
        let Some((h, connect_bytes)) = first else {
            return Ok(());
        };
        if h.kind() != packet::CONNECT {
            return Err(Closed::Refused(format!(
                "first packet is of type {}, not CONNECT",
                h.kind()
            )));
        }
        let connect = packet::connect(packet::body(&h, &connect_bytes))?;
        let client = connect.client_id.as_str();
        let user = connect.username.as_deref();
        // Logged escaped and bounded: both come from the device.
        let (client_log, user_log) = (escape(client), user.map(escape));
        let refuse = |code: ConnackCode| packet::connack(code);
        if !(3..=4).contains(&connect.level) {
            wr.write_all(&refuse(ConnackCode::BadProtocolVersion))
                .await?;
            wr.flush().await?;
            return Err(Closed::Refused(format!(
                "MQTT protocol level {} (only 3.1 and 3.1.1)",
                connect.level
            )));
        }
        if slot.is_none() {
            self.observer
                .event(&self.source, BrokerEvent::Limit(Limit::Connections));
            warn!(
                source = %self.source, %peer, client = ?client_log, user = user_log.map(tracing::field::debug),
                "refused: max_connections ({}) clients are connected already",
                self.max_connections
            );
            wr.write_all(&refuse(ConnackCode::ServerUnavailable))
                .await?;
            wr.flush().await?;
            return Ok(());
        }
        if let Some((_, passwords)) = &self.passwords {
            let passwords = passwords.read().unwrap_or_else(|e| e.into_inner()).clone();
            if let Err(why) = passwords.check(user, connect.password.as_deref()) {
                self.observer
                    .event(&self.source, BrokerEvent::LoginRefused(why));
                warn!(source = %self.source, %peer, client = ?client_log, user = user_log.map(tracing::field::debug), reason = why.as_str(), "login refused");
                let code = match why {
                    super::passwd::LoginError::NoCredentials => ConnackCode::NotAuthorized,
                    _ => ConnackCode::BadUsernameOrPassword,
                };
                wr.write_all(&refuse(code)).await?;
                wr.flush().await?;
                return Ok(());
            }
        }
        let identity = self.policy.identity(client, user);
        if identity == Some("") {
            warn!(source = %self.source, %peer, client = ?client_log, user = user_log.map(tracing::field::debug), "refused: the ACL needs a client name, and it is empty");
            wr.write_all(&refuse(ConnackCode::IdentifierRejected))
                .await?;
            wr.flush().await?;
            return Ok(());
        }
        if let Some(will) = &connect.will_topic {
            if let Err(why) = self.policy.check(will.as_bytes(), identity) {
                let (event, what) = match why {
                    TopicRefusal::TooLong => (
                        BrokerEvent::Limit(Limit::TopicLength),
                        "longer than max_topic_length",
                    ),
                    TopicRefusal::NotOwn => (
                        BrokerEvent::Denied(Denied::Will),
                        "not the client's own topic",
                    ),
                };
                self.observer.event(&self.source, event);
                warn!(source = %self.source, %peer, client = ?client_log, user = user_log.map(tracing::field::debug), topic = ?escape(will), "refused: the will topic is {what}");
                wr.write_all(&refuse(ConnackCode::NotAuthorized)).await?;
                wr.flush().await?;
                return Ok(());
            }
        }
        let inner = match TcpStream::connect(self.inner).await {
            Ok(inner) => inner,
            Err(e) => {
                error!(source = %self.source, inner = %self.inner, "cannot reach the embedded broker: {e}");
                wr.write_all(&refuse(ConnackCode::ServerUnavailable))
                    .await?;
                wr.flush().await?;
                return Err(e.into());
            }
        };
        if let Err(e) = inner.set_nodelay(true) {
            debug!(source = %self.source, "cannot set TCP_NODELAY: {e}");
        }
        let (inner_rd, mut inner_wr) = inner.into_split();
        inner_wr.write_all(&connect_bytes).await?;
        drop(connect_bytes);

        self.observer.event(&self.source, BrokerEvent::Connected);
        let (inject_tx, inject_rx) = mpsc::channel(64);
        let mut conn = Conn {
            front: self,
            peer,
            client,
            user,
            identity,
            refused: 0,
            throttled: false,
        };
        let result = tokio::select! {
            r = conn.upstream(&mut rd, buf, &mut inner_wr, inject_tx) => r,
            r = downstream(inner_rd, &mut wr, inject_rx) => r,
            _ = self.cancel.cancelled() => Ok(()),
        };
        if conn.refused > 1 {
            warn!(
                source = %self.source, %peer, client = ?client_log, user = user_log.map(tracing::field::debug), refused = conn.refused,
                "connection closed after publishes or subscriptions were refused"
            );
        }
        self.observer.event(&self.source, BrokerEvent::Disconnected);
        drop(slot);
        result
    }
}

/// An accepted client's relay state.
struct Conn<'a> {
    front: &'a Front,
    peer: SocketAddr,
    client: &'a str,
    user: Option<&'a str>,
    identity: Option<&'a str>,
    /// Publishes and subscriptions refused so far (the first is logged at
    /// `warn`, the others at `debug` and summed up at the end).
    refused: u64,
    /// The device has had to wait for ingest.
    throttled: bool,
}

impl Conn<'_> {
    /// Client to broker: whole packets, each PUBLISH checked, each
    /// SUBSCRIBE refused under the ACL.
    async fn upstream<R, W>(
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
    async fn hold<R, W>(
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
    fn throttled(&mut self) {
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

    fn refuse_publish(&mut self, why: TopicRefusal, topic: &[u8]) {
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

    fn refuse(&mut self, event: BrokerEvent, what: &str, topic: &str) {
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

async fn send(inject: &mpsc::Sender<Vec<u8>>, packet: Vec<u8>) -> Result<(), Closed> {
    inject
        .send(packet)
        .await
        .map_err(|_| Closed::Refused("the client's writer stopped".to_owned()))
}

/// Broker to client: whole packets, with the front's own answers (PUBACK,
/// SUBACK) between them.
async fn downstream<R, W>(
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

/// Reads one whole packet (at most `max` bytes); `None` if the peer closed
/// first.
async fn read_packet<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Option<(Header, BytesMut)>, Closed> {
    loop {
        if let Some(p) = packet::split_packet(buf)? {
            return Ok(Some(p));
        }
        if let Some(h) = packet::header(buf)? {
            if h.total() > max {
                return Err(Closed::Refused(format!(
                    "a {}-byte first packet",
                    h.total()
                )));
            }
        }
        if rd.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
}

/// Spare room for a connection's next read: a few hundred bytes for a quiet
/// device, growing (up to `MAX`) while reads fill what there is, so that a
/// busy connection is relayed in few large reads and writes instead of many
/// small ones (with no room left, a read into a `BytesMut` gets 64 bytes),
/// and shrinking again when reads come back small, so that a device that
/// once sent a burst does not keep 64 KiB buffers for good.
struct ReadRoom {
    want: usize,
}

impl ReadRoom {
    const MIN: usize = 512;
    const MAX: usize = 64 * 1024;

    /// Reads what `rd` has into `buf`; `false` at the end of the stream.
    async fn read<R: AsyncRead + Unpin>(
        &mut self,
        rd: &mut R,
        buf: &mut BytesMut,
    ) -> std::io::Result<bool> {
        self.fit(buf);
        if buf.capacity() - buf.len() < self.want {
            buf.reserve(self.want);
        }
        let spare = buf.capacity() - buf.len();
        let n = rd.read_buf(buf).await?;
        if n == spare {
            self.want = (self.want * 2).min(Self::MAX);
        } else if n <= spare / 8 {
            self.want = (self.want / 2).max(Self::MIN);
        }
        Ok(n > 0)
    }

    /// Lets an empty buffer's room go when it is well over what reads need.
    fn fit(&self, buf: &mut BytesMut) {
        if buf.is_empty() && buf.capacity() > 2 * self.want {
            *buf = BytesMut::new();
        }
    }
}

impl Default for ReadRoom {
    fn default() -> Self {
        ReadRoom { want: Self::MIN }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_busy_connection_is_read_in_few_large_reads() {
        let (mut device, mut front) = tokio::io::duplex(1 << 20);
        let sent: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
        device.write_all(&sent).await.unwrap();
        drop(device);
        let (mut room, mut buf, mut reads) = (ReadRoom::default(), BytesMut::new(), 0);
        let (mut got, mut peak) = (Vec::new(), 0);
        while room.read(&mut front, &mut buf).await.unwrap() {
            reads += 1;
            peak = peak.max(room.want);
            got.extend_from_slice(&buf);
            buf.clear();
        }
        assert_eq!(got, sent);
        // 512 B, 1 KiB, ... 32 KiB, then 64 KiB at a time: 7 + 4 reads
        // (a buffer without spare room reads 64 bytes: 4,096 reads).
        assert!(reads <= 11, "{reads} reads");
        assert_eq!(peak, ReadRoom::MAX);
    }

    #[tokio::test]
    async fn a_burst_s_room_goes_when_the_device_is_quiet_again() {
        let (mut device, mut front) = tokio::io::duplex(1 << 20);
        let (mut room, mut buf) = (ReadRoom::default(), BytesMut::new());
        device.write_all(&vec![1u8; 512 * 1024]).await.unwrap();
        let (mut got, mut peak) = (0, 0);
        while got < 512 * 1024 {
            assert!(room.read(&mut front, &mut buf).await.unwrap());
            peak = peak.max(room.want);
            got += buf.len();
            buf.clear();
        }
        assert_eq!(peak, ReadRoom::MAX);
        // One small packet at a time, as a quiet device sends them.
        for _ in 0..10 {
            device.write_all(&[0xc0, 0x00]).await.unwrap();
            assert!(room.read(&mut front, &mut buf).await.unwrap());
            assert_eq!(&buf[..], &[0xc0, 0x00]);
            buf.clear();
        }
        assert_eq!(room.want, ReadRoom::MIN);
        assert!(buf.capacity() <= 4 * ReadRoom::MIN, "{}", buf.capacity());
    }
}
