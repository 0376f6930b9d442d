//! The proxy relays and counts, cuts (closing open connections, holding new ones),
//! blackholes (relaying nothing, closing nothing), and restores. No timers: each
//! absence is checked through the proxy's counters or the connection's end.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ferry_testkit::{wait_until, Mode, Proxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const WAIT: Duration = Duration::from_secs(10);

/// An echo server; returns its address and how many connections it has accepted.
async fn echo_server() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (mut r, mut w) = socket.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    (addr, accepted)
}

async fn ping(stream: &mut TcpStream, text: &[u8]) {
    stream.write_all(text).await.unwrap();
    let mut echo = vec![0; text.len()];
    tokio::time::timeout(WAIT, stream.read_exact(&mut echo))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(echo, text);
}

/// A proxy to an echo server, and a connection through it that has relayed.
async fn proxy_with_open_connection() -> (Proxy, TcpStream, Arc<AtomicUsize>) {
    let (echo, echo_accepted) = echo_server().await;
    let proxy = Proxy::start(echo).await.unwrap();
    let mut open = TcpStream::connect(proxy.addr()).await.unwrap();
    ping(&mut open, b"before").await;
    (proxy, open, echo_accepted)
}

/// The connection has ended (EOF or reset) without delivering any more data.
async fn assert_closed(stream: &mut TcpStream) {
    let mut buf = [0; 64];
    match tokio::time::timeout(WAIT, stream.read(&mut buf))
        .await
        .expect("the connection should be closed")
    {
        Ok(0) => {}
        Ok(n) => panic!("expected the connection to end, got {n} bytes"),
        Err(e) => assert!(
            matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe),
            "unexpected error: {e}"
        ),
    }
}

#[tokio::test]
async fn relays_both_ways_and_counts_bytes() {
    let (echo, _) = echo_server().await;
    let proxy = Proxy::start(echo).await.unwrap();
    assert_eq!(proxy.target(), echo);
    let mut a = TcpStream::connect(proxy.addr()).await.unwrap();
    let mut b = TcpStream::connect(proxy.addr()).await.unwrap();
    ping(&mut a, b"hello").await;
    ping(&mut b, b"world!").await;
    wait_until(WAIT, "11 bytes counted each way", || {
        proxy.bytes_up() == 11 && proxy.bytes_down() == 11
    })
    .await
    .unwrap();
    assert_eq!(proxy.accepted(), 2);
    assert_eq!(proxy.mode(), Mode::Forward);
}

#[tokio::test]
async fn cut_closes_open_connections_and_holds_new_ones_until_restored() {
    let (proxy, mut open, echo_accepted) = proxy_with_open_connection().await;

    proxy.cut().await;
    assert_eq!(proxy.mode(), Mode::Cut);
    assert_closed(&mut open).await;
    let up = proxy.bytes_up();

    // A new connection is accepted (the client cannot tell yet) but nothing crosses.
    let mut held = TcpStream::connect(proxy.addr()).await.unwrap();
    held.write_all(b"into the void").await.unwrap();
    wait_until(WAIT, "the proxy to accept the second connection", || {
        proxy.accepted() == 2
    })
    .await
    .unwrap();

    proxy.restore();
    assert_closed(&mut held).await;
    assert_eq!(proxy.bytes_up(), up, "bytes crossed while cut");
    assert_eq!(
        echo_accepted.load(Ordering::SeqCst),
        1,
        "a held connection reached the target"
    );

    let mut after = TcpStream::connect(proxy.addr()).await.unwrap();
    ping(&mut after, b"after").await;
}

#[tokio::test]
async fn blackhole_relays_nothing_and_closes_nothing() {
    let (echo, _) = echo_server().await;
    let proxy = Proxy::start(echo).await.unwrap();
    let mut open = TcpStream::connect(proxy.addr()).await.unwrap();
    ping(&mut open, b"before").await;

    proxy.blackhole().await;
    let up = proxy.bytes_up();
    open.write_all(b"lost").await.unwrap();
    let mut buf = [0; 16];
    // Neither data nor EOF: the connection looks alive.
    assert_eq!(
        open.try_read(&mut buf).unwrap_err().kind(),
        ErrorKind::WouldBlock
    );

    // Cutting a blackhole closes what it held.
    proxy.cut().await;
    assert_closed(&mut open).await;
    assert_eq!(proxy.bytes_up(), up);

    // And restoring a blackhole closes its connections so clients reconnect.
    proxy.restore();
    let mut second = TcpStream::connect(proxy.addr()).await.unwrap();
    ping(&mut second, b"x").await;
    proxy.blackhole().await;
    proxy.restore();
    assert_closed(&mut second).await;
}

#[tokio::test]
async fn a_dead_target_closes_the_client() {
    let port = ferry_testkit::free_port().unwrap();
    let proxy = Proxy::start(([127, 0, 0, 1], port).into()).await.unwrap();
    let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_closed(&mut client).await;
}

#[tokio::test]
async fn throttle_paces_both_directions_and_lifts() {
    let (target, _) = echo_server().await;
    let proxy = Proxy::start(target).await.unwrap();
    let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
    ping(&mut stream, b"fast").await;
    // 10 KB/s each way: 20 KB echoed takes about 2 s (the two directions overlap).
    proxy.throttle(10_000);
    let data: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
    let started = std::time::Instant::now();
    let (mut r, mut w) = stream.split();
    let (_, echoed) = tokio::join!(async { w.write_all(&data).await.unwrap() }, async {
        let mut echo = vec![0; data.len()];
        tokio::time::timeout(WAIT, r.read_exact(&mut echo))
            .await
            .unwrap()
            .unwrap();
        echo
    });
    let took = started.elapsed();
    assert_eq!(echoed, data);
    assert!(
        took >= Duration::from_millis(1_900) && took <= Duration::from_secs(5),
        "20 KB through 10 KB/s took {took:?}"
    );
    proxy.unthrottle();
    let started = std::time::Instant::now();
    ping(&mut stream, &data).await;
    assert!(started.elapsed() < Duration::from_millis(500));
}

/// Dark: open connections stay open and silent, new connects hang (their SYNs are
/// dropped); restored, a connect goes through and relays. Refuse: open connections
/// are reset, new connects refused; restored, the same port relays again. Only
/// connections that carried data are listed as sessions.
#[tokio::test]
async fn dark_hangs_new_connects_and_refuse_refuses_them() {
    let (proxy, mut open, _) = proxy_with_open_connection().await;
    // A bare connect, closed at once, is no session.
    drop(TcpStream::connect(proxy.addr()).await.unwrap());
    assert_eq!(proxy.sessions().len(), 1);

    proxy.dark().await;
    assert_eq!(proxy.mode(), Mode::Dark);
    let hung =
        tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(proxy.addr())).await;
    assert!(hung.is_err(), "a connect completed through the dark proxy");
    proxy.restore();
    let mut fresh = TcpStream::connect(proxy.addr()).await.unwrap();
    ping(&mut fresh, b"after dark").await;
    assert_closed(&mut open).await;

    proxy.refuse().await;
    assert_closed(&mut fresh).await;
    let refused = TcpStream::connect(proxy.addr()).await.unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::ConnectionRefused);
    proxy.restore();
    let mut back = None;
    wait_until(WAIT, "the proxy to listen again", || {
        back = std::net::TcpStream::connect(proxy.addr()).ok();
        back.is_some()
    })
    .await
    .unwrap();
    let mut back = TcpStream::from_std({
        let s = back.unwrap();
        s.set_nonblocking(true).unwrap();
        s
    })
    .unwrap();
    ping(&mut back, b"after refuse").await;
    assert_eq!(proxy.sessions().len(), 3);
}
