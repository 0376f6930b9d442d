//! A client's connection to rumqttd, opened only when the client needs the
//! broker.
//!
//! A device that only publishes telemetry never needs rumqttd: the front
//! stores its publishes and acknowledges them itself, and answers its
//! PINGREQs and PUBRELs. Such a client (clean session, no will) gets its
//! CONNACK from the front, and its connection to rumqttd is opened the
//! first time it sends something rumqttd must see: a SUBSCRIBE, a retained
//! publish, a publish another device subscribed to. That saves rumqttd's
//! per-connection state (read and write buffers, queues sized for its
//! in-flight window) for every device that never subscribes.
//!
//! A client with a will or a persistent session (clean session 0) is
//! connected at once with its own CONNECT, and gets rumqttd's CONNACK
//! (with its session-present flag): rumqttd keeps the session and
//! publishes the will.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::timeout;
use tracing::debug;

use super::packet;
use super::serve::{Closed, CONNECT_TIMEOUT};

/// Names for the broker connections of clients that sent an empty client
/// id (MQTT 3.1.1, 3.1.3.1: the server assigns one).
static ANONYMOUS: AtomicU64 = AtomicU64::new(0);

/// One client's connection to rumqttd, open or not yet.
pub(super) struct Inner {
    addr: SocketAddr,
    /// The CONNECT to open it with; `None` once open.
    connect: Option<Vec<u8>>,
    wr: Option<OwnedWriteHalf>,
    /// Where the read half goes once open (the downstream).
    rd: Option<oneshot::Sender<OwnedReadHalf>>,
}

impl Inner {
    /// A connection opened when first written to, as `client` (clean
    /// session); `rd` gets its read half then.
    pub(super) fn lazy(
        addr: SocketAddr,
        client: &str,
        keep_alive: u16,
        rd: oneshot::Sender<OwnedReadHalf>,
    ) -> Inner {
        let id = if client.is_empty() {
            let n = ANONYMOUS.fetch_add(1, Ordering::Relaxed);
            format!("ferry-front-anonymous-{n}")
        } else {
            client.to_owned()
        };
        Inner {
            addr,
            connect: Some(packet::clean_connect(&id, keep_alive)),
            wr: None,
            rd: Some(rd),
        }
    }

    /// Opens the connection with the client's own `connect` and returns
    /// rumqttd's CONNACK, for the client.
    pub(super) async fn open_with(
        addr: SocketAddr,
        connect: &[u8],
        rd: oneshot::Sender<OwnedReadHalf>,
    ) -> Result<(Inner, [u8; 4]), Closed> {
        let mut inner = Inner {
            addr,
            connect: None,
            wr: None,
            rd: Some(rd),
        };
        let connack = inner.open(connect).await?;
        Ok((inner, connack))
    }

    /// Whether the connection is open.
    pub(super) fn is_open(&self) -> bool {
        self.wr.is_some()
    }

    /// Writes `bytes` to rumqttd, opening the connection first if needed.
    pub(super) async fn write(&mut self, bytes: &[u8]) -> Result<(), Closed> {
        if let Some(connect) = self.connect.take() {
            let connack = self.open(&connect).await?;
            if connack[3] != 0 {
                return Err(Closed::Refused(format!(
                    "the embedded broker refused the connection (CONNACK {})",
                    connack[3]
                )));
            }
        }
        match &mut self.wr {
            Some(wr) => Ok(wr.write_all(bytes).await?),
            None => Err(Closed::Refused("no connection to the broker".to_owned())),
        }
    }

    /// Pings rumqttd if the connection is open.
    pub(super) async fn ping(&mut self) -> Result<(), Closed> {
        if let Some(wr) = &mut self.wr {
            wr.write_all(&packet::PINGREQ_PACKET).await?;
        }
        Ok(())
    }

    async fn open(&mut self, connect: &[u8]) -> Result<[u8; 4], Closed> {
        let stream = TcpStream::connect(self.addr).await?;
        if let Err(e) = stream.set_nodelay(true) {
            debug!("cannot set TCP_NODELAY: {e}");
        }
        let (mut rd, mut wr) = stream.into_split();
        wr.write_all(connect).await?;
        let mut connack = [0u8; 4];
        timeout(CONNECT_TIMEOUT, rd.read_exact(&mut connack))
            .await
            .map_err(|_| Closed::Refused("no CONNACK from the embedded broker".to_owned()))??;
        if connack[..2] != [0x20, 0x02] {
            return Err(Closed::Refused(format!(
                "the embedded broker answered CONNECT with {connack:02x?}"
            )));
        }
        if let Some(to) = self.rd.take() {
            // The downstream is gone only if the client's session is.
            let _ = to.send(rd);
        }
        self.wr = Some(wr);
        Ok(connack)
    }
}
