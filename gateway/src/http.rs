//! The operator's HTTP endpoint: `/metrics` (Prometheus text format),
//! `/healthz` (the process answers) and `/readyz` (the store is open and the
//! sources are started: 200 with the status line, which reports each uplink's
//! state and backlog; 503 while starting). Deliberately tiny: a few GETs from a scraper on
//! localhost do not need a web framework.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

/// Serves until `cancel` fires.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    ready: watch::Receiver<Option<Arc<str>>>,
    cancel: CancellationToken,
) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "metrics endpoint listening");
    }
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    debug!(error = %e, "metrics accept failed");
                    continue;
                }
            },
            _ = cancel.cancelled() => return,
        };
        let registry = registry.clone();
        let ready = ready.borrow().clone();
        tokio::spawn(async move {
            let answer = tokio::time::timeout(
                Duration::from_secs(5),
                respond(stream, &registry, ready.as_deref()),
            );
            if let Ok(Err(e)) = answer.await {
                debug!(%peer, error = %e, "metrics request failed");
            }
        });
    }
}

async fn respond(
    mut stream: TcpStream,
    registry: &Registry,
    ready: Option<&str>,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 2048];
    let mut len = 0;
    // Read until the end of the request head (or the buffer is full).
    while len < buf.len() {
        let n = stream.read(&mut buf[len..]).await?;
        if n == 0 {
            break;
        }
        len += n;
        if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let head = String::from_utf8_lossy(&buf[..len]);
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
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// Binds the metrics listener; an error names the address.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for metrics on {addr}: {e}"))
}
