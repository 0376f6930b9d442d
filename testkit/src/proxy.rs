//! A TCP proxy between the gateway and its cloud broker that a test can cut.
//!
//! Modes:
//! - **forward** (the start): every connection is relayed to the target.
//! - **cut** ([`Proxy::cut`]): open connections are closed at once (the client sees the
//!   link drop); new connections are accepted and held open with nothing relayed (the
//!   client's CONNECT goes unanswered, like a route that swallows packets).
//! - **blackhole** ([`Proxy::blackhole`]): nothing is relayed, but open connections stay
//!   open: the client notices only through its own timeouts (keep-alive), as with a
//!   dead mobile link.
//!
//! Independently of the mode, [`Proxy::throttle`] paces relayed bytes to a given rate in
//! each direction of each connection (a slow mobile link); [`Proxy::unthrottle`] lifts it.
//!
//! [`Proxy::restore`] forwards again and closes every held connection, so clients
//! reconnect through a fresh, working relay.
//!
//! Counters say how many bytes crossed in each direction; after `cut().await` or
//! `blackhole().await` returns, they no longer move until `restore()`.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Size of each direction's relay buffer.
const BUFFER: usize = 16 * 1024;

/// What the proxy does with connections; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Relay.
    Forward,
    /// Close open connections; hold new ones without relaying.
    Cut,
    /// Relay nothing; keep open connections open.
    Blackhole,
}

/// A cuttable TCP proxy on `127.0.0.1`. Needs a tokio runtime; dropping it closes
/// every connection and stops listening.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    target: SocketAddr,
    mode: watch::Sender<Mode>,
    /// Connections relaying right now (or about to check the mode and start).
    relaying: Arc<watch::Sender<usize>>,
    stats: Arc<Stats>,
    stop: CancellationToken,
}

#[derive(Debug, Default)]
struct Stats {
    accepted: AtomicU64,
    up: AtomicU64,
    down: AtomicU64,
    /// Bytes per second in each direction; 0 = as fast as the sockets go.
    throttle: AtomicU64,
}

impl Proxy {
    /// Listens on `127.0.0.1:0` and relays each connection to `target`.
    pub async fn start(target: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .context("binding the proxy on 127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let (mode, _) = watch::channel(Mode::Forward);
        let (relaying, _) = watch::channel(0);
        let proxy = Proxy {
            addr,
            target,
            mode,
            relaying: Arc::new(relaying),
            stats: Arc::default(),
            stop: CancellationToken::new(),
        };
        tokio::spawn(accept_loop(
            listener,
            target,
            proxy.mode.subscribe(),
            proxy.relaying.clone(),
            proxy.stats.clone(),
            proxy.stop.clone(),
        ));
        Ok(proxy)
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where connections are relayed to.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        *self.mode.borrow()
    }

    /// Closes every open connection and holds new ones unrelayed. Returns once no
    /// connection relays any more.
    pub async fn cut(&self) {
        self.set_mode_and_settle(Mode::Cut).await;
    }

    /// Stops relaying without closing anything. Returns once no connection relays any more.
    pub async fn blackhole(&self) {
        self.set_mode_and_settle(Mode::Blackhole).await;
    }

    /// Relays again; connections held while cut or blackholed are closed.
    pub fn restore(&self) {
        self.mode.send_replace(Mode::Forward);
    }

    /// Paces relaying to `bytes_per_second` in each direction of each connection, open
    /// ones included: data goes out in slices of about 1/20 s worth, each when the link
    /// would have carried the previous one.
    pub fn throttle(&self, bytes_per_second: u64) {
        assert!(
            bytes_per_second > 0,
            "a throttle of 0 bytes/s is a blackhole"
        );
        self.stats
            .throttle
            .store(bytes_per_second, Ordering::Relaxed);
    }

    /// Relays at full speed again.
    pub fn unthrottle(&self) {
        self.stats.throttle.store(0, Ordering::Relaxed);
    }

    /// Bytes relayed from clients to the target.
    pub fn bytes_up(&self) -> u64 {
        self.stats.up.load(Ordering::Relaxed)
    }

    /// Bytes relayed from the target to clients.
    pub fn bytes_down(&self) -> u64 {
        self.stats.down.load(Ordering::Relaxed)
    }

    /// Connections accepted so far, relayed or held.
    pub fn accepted(&self) -> u64 {
        self.stats.accepted.load(Ordering::Relaxed)
    }

    async fn set_mode_and_settle(&self, mode: Mode) {
        self.mode.send_replace(mode);
        // A connection counts itself as relaying *before* it reads the mode, so once the
        // count is zero every later one has seen `mode` and will not relay.
        let mut relaying = self.relaying.subscribe();
        // The proxy holds the sender, so the channel cannot close.
        let _ = relaying.wait_for(|n| *n == 0).await;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    mode: watch::Receiver<Mode>,
    relaying: Arc<watch::Sender<usize>>,
    stats: Arc<Stats>,
    stop: CancellationToken,
) {
    loop {
        let client = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => client,
                // E.g. EMFILE, or the client reset before accept: keep serving the rest.
                Err(_) => continue,
            },
        };
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        let relay = RelayGuard::new(relaying.clone());
        tokio::spawn(serve(
            client,
            target,
            mode.clone(),
            relay,
            stats.clone(),
            stop.clone(),
        ));
    }
}

/// Counts a connection as relaying while it lives.
struct RelayGuard(Arc<watch::Sender<usize>>);

impl RelayGuard {
    fn new(relaying: Arc<watch::Sender<usize>>) -> Self {
        relaying.send_modify(|n| *n += 1);
        RelayGuard(relaying)
    }
}

impl Drop for RelayGuard {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

async fn serve(
    mut client: TcpStream,
    target: SocketAddr,
    mut mode: watch::Receiver<Mode>,
    relay: RelayGuard,
    stats: Arc<Stats>,
    stop: CancellationToken,
) {
    if *mode.borrow_and_update() != Mode::Forward {
        drop(relay);
        hold(&mut mode, &stop, false).await;
        return;
    }
    // The target is down: close the client's connection, as a router would refuse it.
    let Ok(mut upstream) = TcpStream::connect(target).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let next = tokio::select! {
        // A mode change wins over data that is ready at the same time.
        biased;
        _ = stop.cancelled() => return,
        changed = mode.wait_for(|m| *m != Mode::Forward) => match changed {
            Ok(m) => *m,
            Err(_) => return,
        },
        _ = relay_both(&mut client, &mut upstream, &stats) => return,
    };
    drop(relay);
    if next == Mode::Blackhole {
        // Keep both sockets open, relaying nothing, until restored or cut.
        hold(&mut mode, &stop, true).await;
    }
    // Dropping the sockets closes both connections.
}

/// Holds a connection unrelayed until the proxy is restored (or, for an established
/// connection in a blackhole, cut), or dropped.
async fn hold(mode: &mut watch::Receiver<Mode>, stop: &CancellationToken, established: bool) {
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = mode.wait_for(|m| *m == Mode::Forward || (established && *m == Mode::Cut)) => {}
    }
}

/// Relays both directions until both have ended, or either fails.
async fn relay_both(
    client: &mut TcpStream,
    upstream: &mut TcpStream,
    stats: &Stats,
) -> std::io::Result<()> {
    let (mut client_read, mut client_write) = client.split();
    let (mut upstream_read, mut upstream_write) = upstream.split();
    tokio::try_join!(
        relay(
            &mut client_read,
            &mut upstream_write,
            &stats.up,
            &stats.throttle
        ),
        relay(
            &mut upstream_read,
            &mut client_write,
            &stats.down,
            &stats.throttle
        ),
    )?;
    Ok(())
}

async fn relay(
    from: &mut (impl AsyncRead + Unpin),
    to: &mut (impl AsyncWrite + Unpin),
    counter: &AtomicU64,
    throttle: &AtomicU64,
) -> std::io::Result<()> {
    let mut buffer = vec![0; BUFFER];
    // When the throttled link is free to carry the next slice.
    let mut free_at = tokio::time::Instant::now();
    loop {
        let n = from.read(&mut buffer).await?;
        if n == 0 {
            // Pass the half-close on; the other direction may still have data.
            return to.shutdown().await;
        }
        let mut sent = 0;
        while sent < n {
            let rate = throttle.load(Ordering::Relaxed);
            let slice = if rate == 0 {
                n - sent
            } else {
                ((rate / 20).max(64) as usize).min(n - sent)
            };
            if rate > 0 {
                // Link emulation, not synchronisation: the slice leaves when a link of
                // this rate would have carried the one before.
                let now = tokio::time::Instant::now();
                free_at = free_at.max(now);
                tokio::time::sleep_until(free_at).await;
                free_at += std::time::Duration::from_secs_f64(slice as f64 / rate as f64);
            }
            to.write_all(&buffer[sent..sent + slice]).await?;
            counter.fetch_add(slice as u64, Ordering::Relaxed);
            sent += slice;
        }
    }
}
