//! The daemon's HTTP endpoints from a test: a plain GET, samples of its
//! /metrics page, and where that page is.

use super::Ferry;

/// One sample's value on the daemon's /metrics page: `sample` is the name
/// with its labels as the page prints them (`ferry_x_total{source="a"}`).
/// `None` if the page cannot be fetched (the daemon is down) or has no such
/// sample yet.
pub fn metric_sample(addr: std::net::SocketAddr, sample: &str) -> Option<f64> {
    let page = std::panic::catch_unwind(|| http_get(addr, "/metrics")).ok()?;
    page.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
}

/// The sum of a metric's samples over all their labels (0 if it has none).
pub fn metric_sum(addr: std::net::SocketAddr, name: &str) -> f64 {
    http_get(addr, "/metrics")
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with(' ') || r.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Fetches `path` from the daemon's HTTP endpoint.
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// The metrics address from the daemon's config file.
pub fn metrics_addr(ferry: &Ferry) -> std::net::SocketAddr {
    let config = std::fs::read_to_string(&ferry.config).unwrap();
    let section = &config[config.find("[metrics]").unwrap()..];
    let line = section.lines().find(|l| l.starts_with("listen")).unwrap();
    line.split('"').nth(1).unwrap().parse().unwrap()
}

/// One GET with `Connection: close` (the API keeps a connection open
/// otherwise), reading the answer for at most `timeout`: the status (0 if
/// there is none), the head as sent, and the body with its chunks joined.
pub fn get_closed(
    addr: std::net::SocketAddr,
    path: &str,
    timeout: std::time::Duration,
) -> (u16, String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(timeout)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let out = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return (status, head.to_owned(), body.to_owned());
    }
    let (mut rest, mut joined) = (body, String::new());
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        if size == 0 {
            break;
        }
        joined.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
    (status, head.to_owned(), joined)
}
