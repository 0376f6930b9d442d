//! The front's listener: accepting (within the caps), the TLS handshake,
//! the CONNECT and its admission (protocol level, slot, login, ACL name,
//! will topic); then the relay (`relay.rs`) takes the connection.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::timeout;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::accept::{AcceptBackoff, AcceptFailure};
use ferry_core::text::escape;

use super::acl::{TopicPolicy, TopicRefusal};
use super::events::{BrokerEvent, BrokerObserver, Denied, Limit};
use super::inner::Inner;
use super::intake::Intake;
use super::packet::{self, ConnackCode, Malformed};
use super::passwd::Passwords;
use super::prelogin::{Full, PreLogin, Waiting, PER_ADDRESS, PRE_LOGIN};
use super::read::read_packet;
use super::relay::{acker, downstream, AckedAt, Conn, INNER_KEEP_ALIVE, WINDOW};
use super::subs::Subscriptions;
use super::takeover::Sessions;

/// Time a client has for its TLS handshake and CONNECT.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest CONNECT read (client id, will, username, password).
pub(super) const MAX_CONNECT: usize = 64 * 1024;

/// The largest partial packet a connection holds on its own; a larger one
/// waits for room in the front's budget (`buffer`, shared by all), so that
/// many devices each sending the start of a large packet cannot take more.
pub(super) const HOLD: usize = 16 * 1024;

/// Batches of one connection handed to ingest and not yet acknowledged.
const PENDING: usize = 64;

/// Sockets open beyond `max_connections`: clients not yet logged in (some
/// to be refused, CONNACK 3, once their CONNECT arrives).
pub const REFUSING: usize = PRE_LOGIN;

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
    /// `max_connections`, taken once a client has logged in.
    pub slots: Arc<Semaphore>,
    /// The clients not logged in yet.
    pub pre_login: Arc<PreLogin>,
    pub max_connections: usize,
    pub observer: Arc<dyn BrokerObserver>,
    /// Where devices' publishes go.
    pub intake: Intake,
    /// What devices subscribed to (publishes that match go to rumqttd).
    pub subs: Subscriptions,
    /// The sessions by client id: one each.
    pub sessions: Sessions,
    /// Room for partial packets over [`HOLD`], in bytes.
    pub large: Arc<Semaphore>,
    pub cancel: CancellationToken,
}

/// Why a connection ended early.
#[derive(Debug, thiserror::Error)]
pub(super) enum Closed {
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
    /// a socket holds a place among those logging in (`prelogin.rs`) until
    /// it has logged in and holds a slot; one past the places is closed as
    /// soon as it is accepted (counted as the `pre_login` limit), so the
    /// front's descriptors stay within the budget `ferry validate` checks.
    /// A failed accept (out of descriptors, mostly) waits with a back-off
    /// instead of retrying at once.
    pub async fn run(self: Arc<Self>, listener: TcpListener) {
        let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(|e| warn!(source = %self.source, "cannot watch SIGHUP: {e}"))
            .ok();
        let mut backoff = AcceptBackoff::new(format!("source {}", self.source));
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
                        let waiting = match self.pre_login.enter(peer.ip()) {
                            Ok(waiting) => waiting,
                            Err(full) => {
                                self.observer
                                    .event(&self.source, BrokerEvent::Limit(Limit::PreLogin));
                                debug!(
                                    source = %self.source, %peer,
                                    "closed at once: {} (counted)",
                                    match full {
                                        Full::All => format!("{PRE_LOGIN} clients are logging in"),
                                        Full::Address => format!(
                                            "{PER_ADDRESS} clients from this address are logging in"
                                        ),
                                    }
                                );
                                continue;
                            }
                        };
                        tokio::spawn(self.clone().serve(tcp, peer, waiting));
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

    pub(super) async fn serve(self: Arc<Self>, tcp: TcpStream, peer: SocketAddr, waiting: Waiting) {
        if let Err(e) = tcp.set_nodelay(true) {
            debug!(source = %self.source, %peer, "cannot set TCP_NODELAY: {e}");
        }
        // A TLS session's state (rustls' connection, its buffers) is boxed:
        // inline, every plain connection's task would be as large.
        let result = match &self.tls {
            None => self.session(tcp, peer, waiting).await,
            Some(acceptor) => {
                match timeout(CONNECT_TIMEOUT, Box::pin(acceptor.accept(tcp))).await {
                    Ok(Ok(tls)) => Box::pin(self.session(Box::new(tls), peer, waiting)).await,
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
                }
            }
        };
        if let Err(e) = result {
            debug!(source = %self.source, %peer, "connection closed: {e}");
        }
    }

    /// One client: its CONNECT checked, then relayed to rumqttd.
    /// Whether the client of `connect` may in: its protocol level, a free
    /// slot, its login, its name under the ACL and its will topic, each
    /// refusal logged and counted. `Ok` with its identity under the ACL;
    /// otherwise the CONNACK to answer, and the error the close is (none:
    /// a clean refusal).
    pub(super) fn admit<'c>(
        &self,
        connect: &'c packet::Connect,
        peer: SocketAddr,
        has_slot: bool,
    ) -> Result<Option<&'c str>, (ConnackCode, Option<Closed>)> {
        let client = connect.client_id.as_str();
        let user = connect.username.as_deref();
        // Logged escaped and bounded: both come from the device.
        let (client_log, user_log) = (escape(client), user.map(escape));
        if !(3..=4).contains(&connect.level) {
            let why = format!("MQTT protocol level {} (only 3.1 and 3.1.1)", connect.level);
            return Err((ConnackCode::BadProtocolVersion, Some(Closed::Refused(why))));
        }
        if !has_slot {
            self.observer
                .event(&self.source, BrokerEvent::Limit(Limit::Connections));
            warn!(
                source = %self.source, %peer, client = ?client_log, user = user_log.map(tracing::field::debug),
                "refused: max_connections ({}) clients are connected already",
                self.max_connections
            );
            return Err((ConnackCode::ServerUnavailable, None));
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
                return Err((code, None));
            }
        }
        let identity = self.policy.identity(client, user);
        if identity == Some("") {
            warn!(source = %self.source, %peer, client = ?client_log, user = user_log.map(tracing::field::debug), "refused: the ACL needs a client name, and it is empty");
            return Err((ConnackCode::IdentifierRejected, None));
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
                return Err((ConnackCode::NotAuthorized, None));
            }
        }
        Ok(identity)
    }

    pub(super) async fn session<S>(
        &self,
        stream: S,
        peer: SocketAddr,
        waiting: Waiting,
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
        // A slot only for a valid CONNECT, and kept only after its login.
        let slot = self.slots.clone().try_acquire_owned().ok();
        let identity = match self.admit(&connect, peer, slot.is_some()) {
            Ok(identity) => identity,
            Err((code, closed)) => {
                wr.write_all(&packet::connack(code)).await?;
                wr.flush().await?;
                return closed.map_or(Ok(()), Err);
            }
        };
        drop(waiting);
        let (client, user) = (connect.client_id.as_str(), connect.username.as_deref());
        let (client_log, user_log) = (escape(client), user.map(escape));
        let stop = self.cancel.child_token();
        let _session = self.sessions.begin(client, stop.clone());
        let (opened_tx, opened_rx) = oneshot::channel();
        let mut inner = if connect.clean_session && connect.will_topic.is_none() {
            // Connected to rumqttd only once it needs it (`inner.rs`).
            wr.write_all(&packet::connack(ConnackCode::Accepted))
                .await?;
            wr.flush().await?;
            Inner::lazy(self.inner, client, INNER_KEEP_ALIVE, opened_tx)
        } else {
            // The device's keep-alive is the front's to watch (0 is valid:
            // none); rumqttd refuses 0 and only hears the front's pings.
            let mut connect_bytes = connect_bytes;
            let at = h.header_len + connect.keep_alive_at;
            connect_bytes[at..at + 2].copy_from_slice(&INNER_KEEP_ALIVE.to_be_bytes());
            let opened = Inner::open_with(self.inner, &connect_bytes, opened_tx).await;
            let (inner, connack) = match opened {
                Ok(opened) => opened,
                Err(e) => {
                    error!(source = %self.source, inner = %self.inner, "cannot reach the embedded broker: {e}");
                    wr.write_all(&packet::connack(ConnackCode::ServerUnavailable))
                        .await?;
                    wr.flush().await?;
                    return Err(e);
                }
            };
            wr.write_all(&connack).await?;
            wr.flush().await?;
            if connack[3] != 0 {
                return Ok(());
            }
            inner
        };

        self.observer.event(&self.source, BrokerEvent::Connected);
        let (inject_tx, inject_rx) = mpsc::channel(64);
        let (pending_tx, pending_rx) = mpsc::channel(PENDING);
        let unacked = Arc::new(AtomicUsize::new(0));
        let acked_at = Arc::new(AckedAt::new());
        let mut conn = Conn {
            front: self,
            peer,
            client,
            user,
            identity,
            refused: 0,
            silence: (connect.keep_alive > 0)
                .then(|| Duration::from_millis(u64::from(connect.keep_alive) * 1500)),
            unreleased: HashSet::new(),
            filters: Vec::new(),
            window: Arc::new(Semaphore::new(WINDOW)),
            unacked: unacked.clone(),
            acked_at: acked_at.clone(),
            pace: Default::default(),
            stalled: None,
            throttled: false,
            stop: stop.clone(),
        };
        // Once the device is done (or the front cancelled), what it sent
        // is still acknowledged as it is committed: the downstream ends
        // when the upstream and the acker have, and it stops them when the
        // device or the broker closes.
        let from_device = async {
            let (up, acks) = tokio::join!(
                conn.upstream(&mut rd, buf, &mut inner, pending_tx, inject_tx.clone()),
                async {
                    let r = acker(pending_rx, inject_tx, unacked, acked_at).await;
                    if r.is_err() {
                        stop.cancel();
                    }
                    r
                },
            );
            up.and(acks)
        };
        let to_device = async {
            let r = downstream(opened_rx, &mut wr, inject_rx).await;
            stop.cancel();
            r
        };
        let (from, to) = tokio::join!(from_device, to_device);
        let result = from.and(to);
        if !connect.clean_session {
            // rumqttd keeps a persistent session's subscriptions.
            conn.filters.clear();
        }
        for f in conn.filters.drain(..) {
            self.subs.remove(&f);
        }
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
