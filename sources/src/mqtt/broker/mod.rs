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
