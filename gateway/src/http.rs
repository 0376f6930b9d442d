//! The operator's HTTP endpoint: `/metrics` (Prometheus text format),
//! `/healthz` (the process answers) and `/readyz` (the store is open and the
//! sources are started: 200 with the status line, which reports each uplink's
//! state and backlog; 503 while starting). Deliberately tiny: a few GETs from a scraper on
//! localhost do not need a web framework.

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::{timeout, timeout_at, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::listen::ListenerLimits;
use crate::listen::{Acceptor, Counts};
use crate::metrics::ListenerMetrics;

/// The answer to a connection over `max_connections`.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n\
Content-Length: 28\r\nRetry-After: 1\r\nConnection: close\r\n\r\ntoo many connections, retry\n";

/// Serves until `cancel` fires. Each connection carries one request: its
/// first byte must come within `idle_timeout`, the rest of its head within
/// `header_timeout` of it, and the answer must be written within
/// `request_timeout` (`crate::listen` has the cap and the accept back-off).
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    ready: watch::Receiver<Option<Arc<str>>>,
    limits: ListenerLimits,
    metrics: ListenerMetrics,
    cancel: CancellationToken,
) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "metrics endpoint listening");
    }
    let mut acceptor = Acceptor::new("metrics", limits, &metrics, BUSY);
    while let Some(accepted) = acceptor.accept(&listener, &cancel).await {
        let registry = registry.clone();
        let ready = ready.borrow().clone();
        let counts = acceptor.counter();
        tokio::spawn(async move {
            let _slot = accepted.slot;
            let peer = accepted.peer;
            let answer = respond(
                accepted.stream,
                &registry,
                ready.as_deref(),
                &limits,
                &counts,
            );
            if let Err(e) = answer.await {
                debug!(%peer, error = %e, "metrics request failed");
            }
        });
    }
}

async fn respond(
    mut stream: TcpStream,
    registry: &Registry,
    ready: Option<&str>,
    limits: &ListenerLimits,
    counts: &Counts,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 2048];
    // The first byte, within idle_timeout.
    let Ok(first) = timeout(limits.idle_timeout, stream.read(&mut buf)).await else {
        counts.count("idle_timeout");
        return Ok(());
    };
    let mut len = first?;
    // The rest of the head (or a full buffer), within header_timeout of it.
    let head_deadline = Instant::now() + limits.header_timeout;
    while len > 0 && len < buf.len() && !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
        let Some(rest) = buf.get_mut(len..) else {
            break;
        };
        match timeout_at(head_deadline, stream.read(rest)).await {
            Ok(n) => match n? {
                0 => break,
                n => len += n,
            },
            Err(_) => {
                counts.count("header_timeout");
                return Ok(());
            }
        }
    }
    let head = String::from_utf8_lossy(buf.get(..len).unwrap_or_default());
    let mut parts = head.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, content_type, body) = match (method, path) {
        ("GET", "/metrics") => {
            let mut text = String::new();
            match prometheus_client::encoding::text::encode(&mut text, registry) {
                Ok(()) => (
                    "200 OK",
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    text,
                ),
                Err(e) => ("500 Internal Server Error", "text/plain", e.to_string()),
            }
        }
        ("GET", "/healthz") => ("200 OK", "text/plain", "ok\n".to_owned()),
        ("GET", "/readyz") if ready.is_some() => (
            "200 OK",
            "text/plain",
            format!("ready: {}\n", ready.unwrap_or_default()),
        ),
        ("GET", "/readyz") => (
            "503 Service Unavailable",
            "text/plain",
            "starting\n".to_owned(),
        ),
        ("GET", _) => ("404 Not Found", "text/plain", "not found\n".to_owned()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_owned(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let write = async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    };
    match timeout(limits.request_timeout, write).await {
        Ok(written) => written,
        Err(_) => {
            counts.count("request_timeout");
            Ok(())
        }
    }
}

/// Binds the metrics listener; an error names the address.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for metrics on {addr}: {e}"))
}
