//! The embedded broker's front door: what devices connect to.
//!
//! rumqttd 0.20 cannot do what a gateway's device port needs: it
//! acknowledges a device's messages as soon as they are in its memory,
//! before Ferry has stored them; its authentication drops a refused client
//! without a CONNACK; its TLS listener brings a second TLS stack
//! (tokio-rustls 0.25, rustls 0.22); and the messages it forwards do not say
//! which connection published them, so no per-device ACL can be built on its
//! API. So rumqttd listens on a loopback port only, and this front listens
//! on `listen`, terminates TLS (rustls 0.23, like the uplinks), reads each
//! client's packets, and stores what devices publish itself (`relay.rs`):
//! each PUBLISH is decoded and handed to ingest with the rest of its read,
//! and its PUBACK or PUBREC goes out once the commit that holds it is done,
//! in order. rumqttd gets the rest of a device's session (its SUBSCRIBEs,
//! the acknowledgements of what it is sent) and only the publishes that a
//! subscription or a retain flag needs (`subs.rs`). A device with a clean
//! session and no will gets its CONNACK from the front and a connection to
//! rumqttd only once it needs one (`inner.rs`): a device that only
//! publishes costs rumqttd nothing, and the front keeps one session per
//! client id itself (`takeover.rs`). When a commit is asked for before
//! the commit interval is in `pace.rs`. (With `device_front =
//! "auto"` and none of `tls`, `password_file` and `acl`, devices connect to
//! rumqttd directly instead, and lose that guarantee.)
//!
//! | checked here | how it is refused |
//! | --- | --- |
//! | `max_connections` (a slot is taken once a client has logged in) | CONNACK 3 (server unavailable) |
//! | clients not logged in yet: 64, 16 from one address | closed as soon as accepted |
//! | no CONNECT within 5 s | the connection is closed |
//! | `accept` failing (`EMFILE`, ...) | a back-off of 5 ms to 500 ms ([`crate::accept`]) |
//! | `password_file` (mosquitto's format) | CONNACK 4 (bad username or password), or 5 (not authorized) without credentials |
//! | `acl`: PUBLISH to a topic whose `{device}` is not the client's name | dropped; QoS 1 acknowledged (as mosquitto does), QoS 2 closes the connection |
//! | `acl`: SUBSCRIBE | SUBACK 0x80 for every filter |
//! | `acl`: a will topic outside the client's own | CONNACK 5 |
//! | `max_topic_length` | the PUBLISH is dropped as above |
//! | a PUBLISH topic with `+` or `#` | the connection is closed |
//! | a packet over twice `max_payload` | the connection is closed |
//! | nothing heard for 1.5 times the device's keep-alive (0: none) | the connection is closed |
//! | more than 4,096 distinct subscribed filters | SUBACK 0x80 |
//! | `tls.client_ca` | the TLS handshake fails |
//!
//! Payloads up to twice `max_payload` pass and become `oversize` dead
//! letters, as do payloads with more than `max_fields` fields
//! (`too_many_fields`): the decoder checks those. Every refusal is counted
//! through [`BrokerObserver`] and logged with the client's address, client
//! id and username (the first refusal of a connection at `warn`, the rest
//! at `debug`); a password is never logged.
//!
//! Memory per connection is bounded: a read of at most 64 KiB, a partial
//! packet of at most 16 KiB (larger ones wait for room in a budget of
//! `buffer` that all connections share), 64 KiB of publishes waiting for
//! their commit (then the device waits: `limit="backlog"`), and 1,024 QoS 2
//! packet ids between PUBLISH and PUBREL.

mod acl;
mod events;
mod inner;
mod intake;
mod pace;
mod packet;
mod passwd;
mod prelogin;
mod read;
mod relay;
mod serve;
mod subs;
mod takeover;
mod tls;

pub use serve::REFUSING;

pub use events::{BrokerEvent, BrokerObserver, Denied, Limit, NoBrokerObserver};
pub(crate) use intake::observe_dead;
pub use intake::Intake;
pub use passwd::{LoginError, Passwords};

use ferry_core::report::{problem_lines, KeyPath, Report};
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::config::BrokerSourceConfig;
use super::{SourceError, TopicTemplate};
use acl::TopicPolicy;
use serve::Front;
use subs::Subscriptions;

/// Room above twice `max_payload` for a packet's topic and header.
const PACKET_OVERHEAD: usize = 1024 + 65_537;

/// The largest packet a device may send: twice `max_payload` (so that
/// oversize payloads arrive and become dead letters) plus its topic.
pub fn max_packet(cfg: &BrokerSourceConfig) -> usize {
    let max_payload = usize::try_from(cfg.max_payload.as_u64()).unwrap_or(usize::MAX);
    max_payload
        .saturating_mul(2)
        .saturating_add(PACKET_OVERHEAD)
}

/// The room partial packets over 16 KiB share: `buffer`, and at least two
/// of the largest packets.
fn large_budget(cfg: &BrokerSourceConfig) -> usize {
    let buffer = usize::try_from(cfg.buffer.as_u64()).unwrap_or(usize::MAX);
    buffer
        .max(max_packet(cfg).saturating_mul(2))
        .min(u32::MAX as usize)
}

/// Loads the files a broker source names (its TLS certificate and key, its
/// password file): every problem, each at its key below `at`.
pub fn check_files(cfg: &BrokerSourceConfig, at: &KeyPath, report: &mut Report) {
    if let Some(tls) = &cfg.tls {
        if let Err(p) = tls::server_config(tls) {
            report.error(at.child(&p.path), p.message);
        }
    }
    if let Some(path) = &cfg.password_file {
        if let Err(e) = Passwords::load(path) {
            report.error(at.key("password_file"), e.to_string());
        }
    }
}

/// A bound, not yet serving front.
pub struct BoundFront {
    front: Arc<Front>,
    listener: TcpListener,
}

impl BoundFront {
    /// Loads the TLS and password files and binds `cfg.listen`; once
    /// [`BoundFront::serve`] runs, devices' publishes go to `intake`, and
    /// the rest of their sessions to the broker on `inner`.
    pub async fn bind(
        name: Arc<str>,
        cfg: &BrokerSourceConfig,
        inner: SocketAddr,
        intake: Intake,
        observer: Arc<dyn BrokerObserver>,
        cancel: CancellationToken,
    ) -> Result<BoundFront, SourceError> {
        let problems = problem_lines(|at, report| check_files(cfg, at, report));
        if !problems.is_empty() {
            return Err(SourceError::Config(problems));
        }
        let tls = match &cfg.tls {
            Some(t) => Some(TlsAcceptor::from(
                tls::server_config(t).map_err(|e| SourceError::Config(vec![e.to_string()]))?,
            )),
            None => None,
        };
        let passwords = match &cfg.password_file {
            Some(path) => {
                let p = Passwords::load(path)
                    .map_err(|e| SourceError::Config(vec![format!("password_file: {e}")]))?;
                Some((path.clone(), RwLock::new(Arc::new(p))))
            }
            None => None,
        };
        let templates = cfg
            .topics
            .iter()
            .map(|t| TopicTemplate::parse(t))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| SourceError::Config(vec![format!("topics: {e}")]))?;
        let listener = TcpListener::bind(cfg.listen)
            .await
            .map_err(|source| SourceError::Bind {
                addr: cfg.listen,
                source,
            })?;
        let front = Front {
            source: name,
            inner,
            tls,
            passwords,
            policy: TopicPolicy {
                acl: cfg.acl,
                templates,
                max_topic_length: cfg.max_topic_length,
            },
            max_packet: max_packet(cfg),
            slots: Arc::new(Semaphore::new(cfg.max_connections)),
            pre_login: Arc::default(),
            max_connections: cfg.max_connections,
            observer,
            intake,
            subs: Subscriptions::default(),
            sessions: Default::default(),
            large: Arc::new(Semaphore::new(large_budget(cfg))),
            cancel,
        };
        Ok(BoundFront {
            front: Arc::new(front),
            listener,
        })
    }

    /// The address devices connect to.
    pub fn local_addr(&self) -> Result<SocketAddr, SourceError> {
        self.listener.local_addr().map_err(|e| SourceError::Broker {
            addr: self.front.inner,
            reason: format!("its front has no address: {e}"),
        })
    }

    /// Serves devices until cancelled.
    pub fn serve(self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(self.front.run(self.listener))
    }
}
