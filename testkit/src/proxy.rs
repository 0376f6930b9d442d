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
//! - **dark** ([`Proxy::dark`]): a blackhole for new connections too: their SYNs are
//!   dropped (a socket filter on the listener), so a connect hangs as on a dead route,
//!   until it times out or the proxy is restored (the client's SYN retransmit then
//!   gets through).
//! - **refuse** ([`Proxy::refuse`]): open connections are reset and the listener is
//!   closed, so new connections are refused, as when a route answers with resets or
//!   the port is closed. [`Proxy::restore`] listens again on the same port.
//!
//! Independently of the mode, [`Proxy::throttle`] paces relayed bytes to a given rate in
//! each direction of each connection (a slow mobile link); [`Proxy::unthrottle`] lifts it.
//!
//! [`Proxy::restore`] forwards again and closes every held connection, so clients
//! reconnect through a fresh, working relay.
//!
//! Counters say how many bytes crossed in each direction; after `cut().await`,
//! `blackhole().await`, `dark().await` or `refuse().await` returns, they no longer move
//! until `restore()`. [`Proxy::sessions`] lists when relayed connections carried their
//! first byte from the client (a TLS or MQTT connect; a bare TCP probe carries none).

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
    /// Relay nothing; keep open connections open; drop new connections' SYNs.
    Dark,
    /// Reset open connections; refuse new ones (nothing listens).
    Refuse,
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
    /// The mode the listener has taken on (filter attached, closed, listening).
    listener: Arc<watch::Sender<Mode>>,
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
    /// When relayed connections carried their first byte from the client.
    sessions: std::sync::Mutex<Vec<std::time::Instant>>,
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
        let (listener_mode, _) = watch::channel(Mode::Forward);
        let proxy = Proxy {
            addr,
            target,
            mode,
            relaying: Arc::new(relaying),
            listener: Arc::new(listener_mode),
            stats: Arc::default(),
            stop: CancellationToken::new(),
        };
        tokio::spawn(accept_loop(
            listener,
            addr,
            target,
            proxy.mode.subscribe(),
            proxy.listener.clone(),
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

    /// Relays nothing, keeps open connections open, and drops the SYNs of new ones (a
    /// connect hangs). Returns once no connection relays any more.
    pub async fn dark(&self) {
        self.set_mode_and_settle(Mode::Dark).await;
    }

    /// Resets every open connection and stops listening: new connections are refused.
    /// Returns once no connection relays any more.
    pub async fn refuse(&self) {
        self.set_mode_and_settle(Mode::Refuse).await;
    }

    /// When relayed connections carried their first byte from the client, in order:
    /// the connects that reached the target (bare TCP probes send nothing).
    pub fn sessions(&self) -> Vec<std::time::Instant> {
        self.stats
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Relays again; connections held while cut, blackholed or dark are closed; a
    /// refusing proxy listens again on its port.
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
        // And the listener has followed: closed, or dropping SYNs.
        let mut listener = self.listener.subscribe();
        let _ = listener.wait_for(|m| *m == mode).await;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[allow(clippy::too_many_arguments)]
async fn accept_loop(
    mut listener: TcpListener,
    addr: SocketAddr,
    target: SocketAddr,
    mut mode: watch::Receiver<Mode>,
    applied: Arc<watch::Sender<Mode>>,
    relaying: Arc<watch::Sender<usize>>,
    stats: Arc<Stats>,
    stop: CancellationToken,
) {
    let mut dark = false;
    loop {
        let now = *mode.borrow_and_update();
        if now == Mode::Refuse {
            // Nothing listens: the kernel answers SYNs with a reset.
            drop(listener);
            applied.send_replace(Mode::Refuse);
            tokio::select! {
                _ = stop.cancelled() => return,
                changed = mode.wait_for(|m| *m != Mode::Refuse) => if changed.is_err() { return },
            }
            listener = match rebind(addr).await {
                Ok(l) => l,
                Err(_) => return,
            };
            dark = false;
            continue;
        }
        if (now == Mode::Dark) != dark {
            dark = now == Mode::Dark;
            // A failure leaves the listener as it was; the test then sees connects
            // that should hang complete, and fails on what it asserts.
            let _ = drop_syns(&listener, dark);
        }
        applied.send_replace(now);
        let client = tokio::select! {
            _ = stop.cancelled() => return,
            changed = mode.changed() => match changed {
                Ok(()) => continue,
                Err(_) => return,
            },
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
            applied.subscribe(),
            relay,
            stats.clone(),
            stop.clone(),
        ));
    }
}

/// Listens on `addr` again after [`Mode::Refuse`]. The port was this proxy's a moment
/// ago; another socket may hold it for a short while (a closing relay), so a few
/// tries, each after the previous failed.
async fn rebind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let mut last = None;
    for _ in 0..50 {
        match TcpListener::bind(addr).await {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
        tokio::task::yield_now().await;
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("rebinding the proxy")))
}

/// Attaches (`on`) or detaches a socket filter that drops every packet the listener
/// receives: SYNs vanish, as on a dead route, and connects hang.
fn drop_syns(listener: &TcpListener, on: bool) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = listener.as_raw_fd();
    // One classic BPF instruction: `ret #0` (keep zero bytes: drop).
    let mut drop_all = [libc::sock_filter {
        code: 0x06,
        jt: 0,
        jf: 0,
        k: 0,
    }];
    let program = libc::sock_fprog {
        len: 1,
        filter: drop_all.as_mut_ptr(),
    };
    if on {
        set_option(fd, libc::SO_ATTACH_FILTER, &program)
    } else {
        // The kernel ignores the value, but wants an int's worth of it.
        set_option(fd, libc::SO_DETACH_FILTER, &0 as &libc::c_int)
    }
}

/// `setsockopt(fd, SOL_SOCKET, name, value)`.
fn set_option<T>(fd: std::os::fd::RawFd, name: libc::c_int, value: &T) -> std::io::Result<()> {
    // SAFETY: the caller's `fd` is an open socket for the duration of the call, and
    // `value` points to a live `T` of the size passed (the kernel copies it, and a
    // filter program's instructions, during the call).
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            name,
            std::ptr::from_ref(value).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Closes `stream` with a reset (SO_LINGER 0) rather than a FIN.
fn reset(stream: TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // A failure only means the close is a FIN instead.
    let _ = set_option(stream.as_raw_fd(), libc::SO_LINGER, &linger);
    drop(stream);
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
    mut listener: watch::Receiver<Mode>,
    relay: RelayGuard,
    stats: Arc<Stats>,
    stop: CancellationToken,
) {
    let now = *mode.borrow_and_update();
    if now == Mode::Refuse {
        // Accepted just before the listener closed.
        drop(relay);
        return reset(client);
    }
    if now != Mode::Forward {
        drop(relay);
        if hold(&mut mode, &stop, false).await == Some(Mode::Refuse) {
            listener_closed(&mut listener, &stop).await;
            reset(client);
        }
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
    let next = if matches!(next, Mode::Blackhole | Mode::Dark) {
        // Keep both sockets open, relaying nothing, until restored, cut or refused.
        hold(&mut mode, &stop, true).await
    } else {
        Some(next)
    };
    if next == Some(Mode::Refuse) {
        listener_closed(&mut listener, &stop).await;
        reset(client);
        reset(upstream);
    }
    // Dropping the sockets closes both connections.
}

/// Waits until the listener is closed, so that a client whose connection is reset
/// finds its next connect refused, as when a link resets everything at once.
async fn listener_closed(listener: &mut watch::Receiver<Mode>, stop: &CancellationToken) {
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = listener.wait_for(|m| *m == Mode::Refuse) => {}
    }
}

/// Holds a connection unrelayed until the proxy is restored or refusing (or, for an
/// established connection in a blackhole, cut), or dropped. Returns the mode that
/// ended the hold (`None`: the proxy was dropped).
async fn hold(
    mode: &mut watch::Receiver<Mode>,
    stop: &CancellationToken,
    established: bool,
) -> Option<Mode> {
    tokio::select! {
        _ = stop.cancelled() => None,
        m = mode.wait_for(|m| {
            matches!(m, Mode::Forward | Mode::Refuse) || (established && *m == Mode::Cut)
        }) => m.ok().map(|m| *m),
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
            &stats.throttle,
            Some(&stats.sessions)
        ),
        relay(
            &mut upstream_read,
            &mut client_write,
            &stats.down,
            &stats.throttle,
            None
        ),
    )?;
    Ok(())
}

async fn relay(
    from: &mut (impl AsyncRead + Unpin),
    to: &mut (impl AsyncWrite + Unpin),
    counter: &AtomicU64,
    throttle: &AtomicU64,
    mut first_byte: Option<&std::sync::Mutex<Vec<std::time::Instant>>>,
) -> std::io::Result<()> {
    let mut buffer = vec![0; BUFFER];
    // When the throttled link is free to carry the next slice.
    let mut free_at = tokio::time::Instant::now();
    loop {
        let n = from.read(&mut buffer).await?;
        if let Some(sessions) = first_byte.take().filter(|_| n > 0) {
            let now = std::time::Instant::now();
            sessions.lock().unwrap_or_else(|e| e.into_inner()).push(now);
        }
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
