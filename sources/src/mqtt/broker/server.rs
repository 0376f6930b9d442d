//! Running rumqttd: its config from the source's, reserving its port,
//! starting it on its own thread, and waiting until it accepts connections.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::thread;
use std::time::Duration;

use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::{ConnectionSettings, RouterConfig, ServerSettings};
use tokio::sync::oneshot;
use tokio::time::{sleep, timeout, Instant};
use tracing::debug;

use crate::mqtt::config::BrokerSourceConfig;
use crate::mqtt::front::{self};
use crate::mqtt::SourceError;

use super::*;

/// Checks that `listen` can be bound and, for port 0, picks a free port.
///
/// rumqttd binds its listener inside its own thread and never tells the
/// address it got, nor whether binding failed (it logs and its thread ends).
/// So Ferry binds the address first, reads the port and releases it: a bad
/// or taken address becomes a clear error here. Another process could take
/// the port in the instant between; then the broker's thread stops and
/// [`wait_listening`] reports it.
pub(super) fn reserve(listen: SocketAddr) -> Result<SocketAddr, SourceError> {
    let listener = TcpListener::bind(listen).map_err(|source| SourceError::Bind {
        addr: listen,
        source,
    })?;
    listener.local_addr().map_err(|source| SourceError::Bind {
        addr: listen,
        source,
    })
}

/// How long rumqttd waits for a new connection's CONNECT, in ms.
pub const CONNECT_TIMEOUT_MS: u16 = 5_000;
/// rumqttd's pause after each connection it accepts, in ms: it accepts at
/// most one a millisecond.
pub const NEXT_CONNECTION_DELAY_MS: u64 = 1;
/// The sockets rumqttd may hold beyond its connections when devices connect
/// to it directly: those accepted and not past their CONNECT yet, at most
/// its accept rate times its CONNECT timeout. (Each is one descriptor.)
pub const DIRECT_PENDING: usize = CONNECT_TIMEOUT_MS as usize / NEXT_CONNECTION_DELAY_MS as usize;

pub(super) fn rumqttd_config(
    cfg: &BrokerSourceConfig,
    name: &str,
    addr: SocketAddr,
) -> rumqttd::Config {
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
        connection_timeout_ms: CONNECT_TIMEOUT_MS,
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
        next_connection_delay_ms: NEXT_CONNECTION_DELAY_MS,
        connections,
    };
    rumqttd::Config {
        id: 0,
        router,
        v4: Some(HashMap::from([("1".to_owned(), v4)])),
        ..Default::default()
    }
}

/// Starts rumqttd on its own thread and returns Ferry's link to it
/// (subscribed to `#` if `forward_all`: Ferry reads what devices publish
/// there), plus a receiver that fires (with the reason) if the broker stops.
pub(super) async fn spawn_broker(
    name: &str,
    config: rumqttd::Config,
    addr: SocketAddr,
    forward_all: bool,
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
                Ok((tx, rx)) if !forward_all => Ok((tx, rx)),
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
pub(super) async fn wait_listening(
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
pub(super) async fn probe_once(name: &str, ip: IpAddr, port: u16) -> Result<(), String> {
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
