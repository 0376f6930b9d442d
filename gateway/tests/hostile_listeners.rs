//! Hostile clients of the daemon's listeners (the query API, the metrics
//! endpoint, the embedded broker's device front), against the real binary:
//! idle keep-alive connections past the cap, slowloris headers, and a
//! process out of file descriptors. Every test is bounded in time.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{cpu_time, ferry_bin, metric_sample, Ferry, Publisher};
use ferry_testkit::{free_ports, wait_until_blocking};

struct Addrs {
    broker: SocketAddr,
    metrics: SocketAddr,
    api: SocketAddr,
}

fn addrs() -> Addrs {
    let p = free_ports(3).unwrap();
    let at = |port| SocketAddr::from(([127, 0, 0, 1], port));
    Addrs {
        broker: at(p[0]),
        metrics: at(p[1]),
        api: at(p[2]),
    }
}

fn config(data: &Path, a: &Addrs, api: &str, metrics: &str) -> String {
    format!(
        r#"
[gateway]
id = "hostile"
data_dir = "{data}"

[sources.local]
type = "mqtt_broker"
listen = "{broker}"
topics = ["sensors/{{device}}/telemetry"]
max_connections = 10

[metrics]
listen = "{metrics_at}"
{metrics}

[api]
listen = "{api_at}"
{api}
"#,
        data = data.display(),
        broker = a.broker,
        metrics_at = a.metrics,
        api_at = a.api,
    )
}

/// One request on an open (keep-alive) connection; the status line and the
/// body, read by its Content-Length.
fn request(s: &mut TcpStream, path: &str) -> std::io::Result<(String, Vec<u8>)> {
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n")?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte)? == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body)?;
    Ok((head.lines().next().unwrap_or("").to_owned(), body))
}

/// A GET on a fresh connection with timeouts: the whole response, or `None`
/// if the listener does not answer.
fn try_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

fn metric(addr: SocketAddr, sample: &str) -> f64 {
    metric_sample(addr, sample).unwrap_or(0.0)
}

/// Whether the server closed `s` (EOF or a reset), without blocking.
fn closed(s: &mut TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 256];
    let closed = loop {
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break false,
            Err(_) => break true,
        }
    };
    s.set_nonblocking(false).unwrap();
    closed
}

/// A device publishes one QoS 1 message and has it acknowledged.
fn device_publishes(broker: SocketAddr, client: &str) -> bool {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let attempt = async {
            let mut p = Publisher::connect(broker, client).await?;
            p.publish("sensors/d1/telemetry", br#"{"v":1}"#.to_vec())
                .await
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(5), attempt).await,
            Ok(Ok(_))
        )
    })
}

const API_OPEN: &str = r#"ferry_http_connections{listener="api"}"#;

fn refused(listener: &str, reason: &str) -> String {
    format!(r#"ferry_http_connections_refused_total{{listener="{listener}",reason="{reason}"}}"#)
}

#[test]
fn idle_keepalive_connections_past_the_api_cap_are_refused_at_once_and_closed_when_idle() {
    let dir = tempfile::tempdir().unwrap();
    let a = addrs();
    let cfg = config(
        &dir.path().join("data"),
        &a,
        "max_connections = 32\nidle_timeout = \"3s\"\nheader_timeout = \"1s\"",
        "",
    );
    let ferry = Ferry::start(dir.path(), &cfg);

    // 32 keep-alive connections, each after one request: the cap.
    let mut idle: Vec<(TcpStream, Instant)> = (0..32)
        .map(|_| {
            let mut s = TcpStream::connect(a.api).unwrap();
            let (status, _) = request(&mut s, "/").unwrap();
            assert_eq!(status, "HTTP/1.1 200 OK");
            (s, Instant::now())
        })
        .collect();
    wait_until_blocking(Duration::from_secs(5), "32 API connections open", || {
        metric(a.metrics, API_OPEN) == 32.0
    })
    .unwrap();

    // 8 more: each answered 503 at once and closed.
    for _ in 0..8 {
        let start = Instant::now();
        let mut s = TcpStream::connect(a.api).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let (status, body) = request(&mut s, "/").unwrap();
        assert_eq!(status, "HTTP/1.1 503 Service Unavailable");
        assert_eq!(
            String::from_utf8_lossy(&body),
            r#"{"error":"too many connections (api.max_connections), retry","code":"too_many_connections"}"#
        );
        let mut rest = Vec::new();
        assert_eq!(s.read_to_end(&mut rest).unwrap(), 0, "closed after the 503");
        assert!(
            start.elapsed() < Duration::from_millis(500),
            "{:?}",
            start.elapsed()
        );
    }
    assert_eq!(metric(a.metrics, &refused("api", "max_connections")), 8.0);
    assert_eq!(metric(a.metrics, API_OPEN), 32.0);

    // The other listeners answer meanwhile.
    let health = try_get(a.metrics, "/healthz").unwrap();
    assert!(health.starts_with("HTTP/1.1 200 OK"), "{health}");
    assert!(device_publishes(a.broker, "dev-a"));

    // The idle ones are closed after idle_timeout (3 s), not before.
    for (s, last) in &mut idle {
        s.set_read_timeout(Some(Duration::from_secs(6))).unwrap();
        let mut buf = [0u8; 16];
        match s.read(&mut buf) {
            Ok(0) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            other => panic!("an idle connection is not closed: {other:?}"),
        }
        let after = last.elapsed();
        assert!(
            after >= Duration::from_millis(2900) && after < Duration::from_secs(6),
            "closed {after:?} after its last request"
        );
    }
    wait_until_blocking(Duration::from_secs(5), "idle closes counted", || {
        metric(a.metrics, &refused("api", "idle_timeout")) == 32.0
            && metric(a.metrics, API_OPEN) == 0.0
    })
    .unwrap();
    let again = try_get(a.api, "/").unwrap();
    assert!(again.starts_with("HTTP/1.1 200 OK"), "{again}");
    // Each kind logged once, not once per connection.
    let log = ferry.log();
    for needle in [
        "refusing connections with 503: max_connections (32) are open",
        "api.idle_timeout (3s) reached",
    ] {
        let lines = log.iter().filter(|l| l.contains(needle)).count();
        assert_eq!(lines, 1, "{needle}: {lines} lines");
    }
}

#[test]
fn slowloris_headers_are_closed_after_the_header_timeout_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let a = addrs();
    let limits = "header_timeout = \"1s\"\nidle_timeout = \"30s\"";
    let cfg = config(&dir.path().join("data"), &a, limits, limits);
    let ferry = Ferry::start(dir.path(), &cfg);

    // 20 at the API and 5 at the metrics endpoint send a request line and a
    // header, then one byte of another header every 100 ms, never its end.
    let mut slow: Vec<(TcpStream, Instant, Option<Duration>)> = (0..25)
        .map(|i| {
            let addr = if i < 20 { a.api } else { a.metrics };
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .unwrap();
            (s, Instant::now(), None)
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    while slow.iter().any(|(_, _, c)| c.is_none()) && Instant::now() < deadline {
        for (s, start, closed_after) in slow.iter_mut().filter(|(_, _, c)| c.is_none()) {
            if s.write_all(b"a").is_err() || closed(s) {
                *closed_after = Some(start.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for (i, (_, _, after)) in slow.iter().enumerate() {
        let after = after.unwrap_or_else(|| panic!("slow connection {i} still open after 5 s"));
        assert!(
            after >= Duration::from_millis(900) && after < Duration::from_secs(3),
            "connection {i} closed after {after:?}"
        );
    }
    wait_until_blocking(Duration::from_secs(5), "header timeouts counted", || {
        metric(a.metrics, &refused("api", "header_timeout")) == 20.0
            && metric(a.metrics, &refused("metrics", "header_timeout")) == 5.0
            && metric(a.metrics, API_OPEN) == 0.0
    })
    .unwrap();
    assert_eq!(metric(a.metrics, &refused("api", "idle_timeout")), 0.0);
    // Logged once per listener, not once per connection.
    let log = ferry.log();
    for key in [
        "api.header_timeout (1s) reached",
        "metrics.header_timeout (1s) reached",
    ] {
        let lines = log.iter().filter(|l| l.contains(key)).count();
        assert_eq!(lines, 1, "{key}: {lines} lines");
    }
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn out_of_descriptors_the_accept_loops_wait_and_every_listener_answers_again() {
    const NOFILE: u64 = 256;
    let dir = tempfile::tempdir().unwrap();
    let a = addrs();
    let cfg = config(
        &dir.path().join("data"),
        &a,
        "max_connections = 1000\nidle_timeout = \"60s\"",
        "",
    );
    let ferry = Ferry::start(dir.path(), &cfg);
    let pid = ferry.pid();
    let limit = libc::rlimit {
        rlim_cur: NOFILE,
        rlim_max: NOFILE,
    };
    // SAFETY: prlimit(2) on our own child, with a valid rlimit.
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &limit,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());

    // More API connections than the daemon has descriptors left; then a
    // few waiting at the metrics endpoint and the device front too.
    let mut held: Vec<TcpStream> = (0..NOFILE)
        .map(|_| TcpStream::connect(a.api).unwrap())
        .collect();
    wait_until_blocking(
        Duration::from_secs(10),
        "the daemon out of descriptors",
        || open_fds(pid) as u64 >= NOFILE,
    )
    .unwrap();
    for addr in [a.metrics, a.broker] {
        held.extend((0..5).map(|_| TcpStream::connect(addr).unwrap()));
    }

    // Every accept loop is failing now; none may spin.
    let (cpu0, t0) = (cpu_time(pid), Instant::now());
    std::thread::sleep(Duration::from_secs(2));
    let (cpu1, wall) = (cpu_time(pid), t0.elapsed());
    let share = (cpu1 - cpu0).as_secs_f64() / wall.as_secs_f64();
    eprintln!(
        "daemon CPU while out of descriptors: {:.1}% of a core",
        share * 100.0
    );
    assert!(
        share < 0.2,
        "the daemon used {:.0}% of a core",
        share * 100.0
    );
    assert!(open_fds(pid) as u64 >= NOFILE - 1);

    // Once the connections close, every listener answers again.
    drop(held);
    wait_until_blocking(Duration::from_secs(15), "every listener answers", || {
        try_get(a.metrics, "/healthz").is_some_and(|r| r.starts_with("HTTP/1.1 200 OK"))
            && try_get(a.api, "/").is_some_and(|r| r.starts_with("HTTP/1.1 200 OK"))
    })
    .unwrap();
    assert!(device_publishes(a.broker, "dev-c"));

    // Counted and logged once per episode.
    for listener in ["api", "metrics"] {
        let failures = metric(a.metrics, &refused(listener, "out_of_descriptors"));
        assert!(failures >= 3.0, "{listener}: {failures} failed accepts");
    }
    let front = metric(
        a.metrics,
        r#"ferry_source_limits_hit_total{source="local",limit="descriptors"}"#,
    );
    assert!(front >= 3.0, "front: {front} failed accepts");
    let log = ferry.log();
    for listener in ["listener=api", "listener=metrics", "listener=source local"] {
        let warned = log
            .iter()
            .filter(|l| l.contains("cannot accept connections") && l.contains(listener))
            .count();
        assert_eq!(
            warned,
            1,
            "{listener}: {warned} warnings; log:\n{}",
            log.join("\n")
        );
    }
}

#[test]
fn validate_refuses_caps_past_the_budget_and_warns_past_the_process_limit() {
    let dir = tempfile::tempdir().unwrap();
    let a = addrs();
    let data = dir.path().join("data");
    let over = dir.path().join("over.toml");
    std::fs::write(&over, config(&data, &a, "max_connections = 7000", "")).unwrap();
    let out = Command::new(ferry_bin())
        .arg("validate")
        .arg(&over)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains(
            "api.max_connections: the listeners may hold 7142 file descriptors \
             (api.max_connections 7000 + 16 + metrics.max_connections 16 + 16 + \
             sources.local.max_connections 3 x 10 + 64), more than the budget of 6144"
        ),
        "{stderr}"
    );

    let fine = dir.path().join("fine.toml");
    std::fs::write(&fine, config(&data, &a, "", "")).unwrap();
    let mut validate = Command::new(ferry_bin());
    validate.arg("validate").arg(&fine);
    // SAFETY: setrlimit is async-signal-safe; it runs in the child only.
    unsafe {
        use std::os::unix::process::CommandExt;
        validate.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 128,
                rlim_max: 128,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let out = validate.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains(
            "sources.local.max_connections: the listeners may hold 206 file descriptors \
             (api.max_connections 64 + 16 + metrics.max_connections 16 + 16 + \
             sources.local.max_connections 3 x 10 + 64); with 256 for the rest that is \
             more than this process's limit of 128 (RLIMIT_NOFILE)"
        ),
        "{stderr}"
    );
}

/// A TCP connection to `to` from the loopback address `ip` (Linux answers
/// on all of 127.0.0.0/8).
fn connect_from(ip: [u8; 4], to: SocketAddr) -> TcpStream {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let s = rt.block_on(async {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind(SocketAddr::from((ip, 0))).unwrap();
        s.connect(to).await.unwrap().into_std().unwrap()
    });
    s.set_nonblocking(false).unwrap();
    s
}

/// An MQTT 3.1.1 CONNECT for `client` (clean session, keep-alive 60 s).
fn connect_packet(client: &str) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60];
    body.extend_from_slice(&(client.len() as u16).to_be_bytes());
    body.extend_from_slice(client.as_bytes());
    let mut p = vec![0x10, body.len() as u8];
    p.extend(body);
    p
}

/// Whether `s` is closed by the other side within `within`.
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 4];
    match s.read(&mut buf) {
        Ok(0) => true,
        Err(e) if e.kind() == ErrorKind::ConnectionReset => true,
        _ => false,
    }
}

/// Sockets that never send a CONNECT cannot lock devices out: they take no
/// `max_connections` slot, at most 16 are held from one address (more are
/// closed at once and counted, `limit="pre_login"`), and each is closed
/// once its CONNECT is due (5 s); meanwhile `max_connections` (10) devices
/// log in from another address, and the API answers.
#[test]
fn silent_sockets_cannot_lock_devices_out() {
    let dir = tempfile::tempdir().unwrap();
    let a = addrs();
    let _ferry = Ferry::start(dir.path(), &config(&dir.path().join("data"), &a, "", ""));
    let attacker = [127, 0, 0, 2];
    let opened = Instant::now();
    let mut silent: Vec<TcpStream> = (0..16).map(|_| connect_from(attacker, a.broker)).collect();
    for i in 0..4 {
        let start = Instant::now();
        let mut s = connect_from(attacker, a.broker);
        assert!(
            closed_within(&mut s, Duration::from_secs(2)),
            "socket {i} past the address's 16 is not closed"
        );
        assert!(
            start.elapsed() < Duration::from_millis(500),
            "{:?}",
            start.elapsed()
        );
    }
    let limit = r#"ferry_source_limits_hit_total{source="local",limit="pre_login"}"#;
    assert_eq!(metric(a.metrics, limit), 4.0);

    let mut devices: Vec<TcpStream> = (0..10)
        .map(|i| {
            let mut s = TcpStream::connect(a.broker).unwrap();
            s.write_all(&connect_packet(&format!("dev-{i}"))).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut connack = [0u8; 4];
            s.read_exact(&mut connack).unwrap();
            assert_eq!(connack, [0x20, 2, 0, 0], "dev-{i} is let in");
            s
        })
        .collect();
    let mut eleventh = TcpStream::connect(a.broker).unwrap();
    eleventh.write_all(&connect_packet("dev-10")).unwrap();
    let mut connack = [0u8; 4];
    eleventh.read_exact(&mut connack).unwrap();
    assert_eq!(
        connack,
        [0x20, 2, 0, 3],
        "past max_connections: server unavailable"
    );
    let api = try_get(a.api, "/").unwrap();
    assert!(api.starts_with("HTTP/1.1 200 OK"), "{api}");

    for (i, s) in silent.iter_mut().enumerate() {
        assert!(
            closed_within(s, Duration::from_secs(10)),
            "silent socket {i} is held"
        );
    }
    let held = opened.elapsed();
    assert!(
        held >= Duration::from_millis(4_500),
        "closed after {held:?}"
    );
    assert!(devices.iter_mut().all(|s| !closed(s)), "the devices stay");
}
