//! The embedded broker source: devices publish to Ferry's own MQTT broker.
//!
//! Ferry runs rumqttd (MQTT 3.1.1 over plain TCP, one listener) on its own
//! threads. Devices reach it through Ferry's device front (the `front`
//! module), which stores each publish itself and acknowledges it only after
//! its commit, and hands rumqttd only what devices subscribe to (local
//! publish/subscribe) and retained messages. With `device_front = "auto"`
//! and no `tls`, `password_file` or `acl`, devices connect to rumqttd
//! directly instead, and Ferry reads every message through a local link
//! subscribed to `#` (`forward.rs`).
//!
//! Either way each message is matched to the source's topic templates (no
//! match: an `unknown_topic` dead letter), decoded, and handed to ingest.
//!
//! # Delivery guarantee
//!
//! Through the front: zero loss. A PUBACK (QoS 1) or PUBREC (QoS 2) goes
//! out only after the commit that holds the message; a crash loses nothing
//! acknowledged (see the `front` module).
//!
//! Connected directly: rumqttd sends a device its PUBACK as soon as the
//! message is routed in memory, before Ferry has stored it. So a QoS 1
//! message acknowledged to its device is lost if the process dies before
//! ingest's next commit: the window is one commit interval plus the time to
//! forward it. And when ingest is full, this source stops pulling from the
//! link, but rumqttd keeps accepting (and acknowledging) device messages
//! into its in-memory log, which keeps the last `buffer` bytes: a backlog
//! beyond that loses the oldest messages; Ferry sees the gap in the log's
//! offsets, logs how many were lost, and stores an `overrun` dead letter
//! that says so.
//!
//! # Shutdown
//!
//! On cancellation the front accepts no more connections and reads no more
//! from its devices; what it has handed to ingest is still acknowledged as
//! ingest's final commit lands. rumqttd has no way to stop its threads:
//! connected directly, this source forwards what the link already holds,
//! hands it to ingest and returns, and the broker keeps accepting
//! connections (and acknowledging messages that are no longer stored) until
//! the process exits, which the gateway does right after ingest's final
//! commit. For the same reason the broker's port stays taken until the
//! process exits: run this source once per process.
//!
//! `server.rs` runs rumqttd (its config, its port, its readiness);
//! `forward.rs` moves what it routes to ingest.

mod forward;
mod server;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use ferry_core::sink::Sink;

use super::config::BrokerSourceConfig;
use super::front::{BoundFront, BrokerObserver, Intake, NoBrokerObserver};
use super::log::DeadLetterLog;
use super::SourceError;

use forward::*;
pub use server::DIRECT_PENDING;
use server::*;

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

/// Runs the embedded broker and stores what devices publish through `sink`
/// until `cancel` fires.
///
/// Guarantee: through the device front (the default), a publish is
/// acknowledged only after it is committed. Devices connected directly are
/// acknowledged by rumqttd before their messages are stored: a crash loses
/// what was acknowledged in about the last commit interval, and if ingest
/// stalls the broker keeps only `buffer` bytes and drops the oldest, each
/// gap an `overrun` dead letter. On cancellation the front stops reading
/// (what it took is still acknowledged as it is committed) and forwarding
/// stops, but the broker's threads (and its port) live until the process
/// exits.
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
    // through the front (see the `front` module for why), which stores
    // their publishes itself; without one, devices connect to rumqttd on
    // `listen`, and Ferry reads their publishes from rumqttd.
    let (inner, front, decoder) = if cfg.uses_front() {
        let inner = reserve(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
        let intake = Intake::new(decoder, sink.clone(), observer.clone());
        let front = BoundFront::bind(
            name.clone(),
            &cfg,
            inner,
            intake,
            observer.clone(),
            cancel.clone(),
        )
        .await?;
        (inner, Some(front), None)
    } else {
        (reserve(cfg.listen)?, None, Some(decoder))
    };
    let addr = match &front {
        Some(front) => front.local_addr()?,
        None => inner,
    };
    let (link, mut stopped) = spawn_broker(
        &name,
        rumqttd_config(&cfg, &name, inner),
        inner,
        decoder.is_some(),
    )
    .await?;
    let (_link_tx, link_rx) = link;

    tokio::select! {
        biased;
        _ = cancel.cancelled() => return Ok(()),
        r = wait_listening(&name, inner, &mut stopped) => r?,
    }
    let front = front.map(BoundFront::serve);
    info!(
        source = %name,
        %addr,
        front = front.is_some(),
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

    let Some(decoder) = decoder else {
        // The front's connections store what devices send; this waits.
        return tokio::select! {
            _ = cancel.cancelled() => Ok(()),
            reason = &mut stopped => Err(SourceError::Broker {
                addr,
                reason: reason.unwrap_or_else(|_| "its thread died".to_owned()),
            }),
        };
    };
    let mut forwarder = Forwarder {
        addr,
        decoder,
        max_topic_length: cfg.max_topic_length,
        link_rx,
        sink,
        batch: Vec::with_capacity(MAX_BATCH),
        next_offset: 0,
        lost: 0,
        dead: DeadLetterLog::default(),
        observer,
        receipts: spawn_receipt_watcher(name.clone()),
    };
    let result = forwarder.run(&cancel, &mut stopped).await;
    info!(
        source = %name,
        "stopped forwarding; the embedded broker runs until the process exits"
    );
    result
}
