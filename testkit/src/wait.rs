//! Free ports, and waiting on conditions that have no event to wait on.
//!
//! Prefer waiting on an event (a message arriving, a process exiting, a channel
//! closing). Where there is none — a file appearing, a metric reaching a value — poll
//! with [`wait_until`]: it checks at once, then with a short, growing backoff, and fails
//! with a message naming what it waited for. Never sleep a fixed time to synchronise.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::time::{Duration, Instant};

/// First pause between two checks of a polled condition.
const FIRST_BACKOFF: Duration = Duration::from_millis(1);
/// Longest pause between two checks of a polled condition.
const MAX_BACKOFF: Duration = Duration::from_millis(50);

/// A wait that ran out of time. The `Display` says what was awaited and for how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeout {
    /// What was awaited, as the caller described it.
    pub what: String,
    /// How long it was awaited.
    pub after: Duration,
}

impl fmt::Display for Timeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "timed out after {:?} waiting for {}",
            self.after, self.what
        )
    }
}

impl std::error::Error for Timeout {}

/// Returns a TCP port on 127.0.0.1 that was free a moment ago.
///
/// It binds `127.0.0.1:0`, reads the port the kernel chose and closes the socket, so
/// another process may take the port before the caller binds it. The kernel hands
/// ephemeral ports out in rotation, which makes that rare, and [`crate::Mosquitto`]
/// retries on fresh ports when it happens. Use this only for programs that cannot bind
/// port 0 and report what they got (mosquitto cannot); anything else should bind
/// `127.0.0.1:0` itself and be asked for its address.
pub fn free_port() -> std::io::Result<u16> {
    Ok(free_ports(1)?[0])
}

/// Returns `n` distinct ports that were free a moment ago (see [`free_port`]).
pub fn free_ports(n: usize) -> std::io::Result<Vec<u16>> {
    // Hold every listener until all ports are read, so no port is handed out twice.
    let listeners = (0..n)
        .map(|_| TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)))
        .collect::<std::io::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect()
}

/// Polls `condition` until it holds, with a backoff from 1 ms growing to 50 ms.
///
/// For conditions with no event to wait on. Fails with a [`Timeout`] naming `what`.
/// The condition is checked once more at the deadline, so a slow machine that wakes
/// late does not fail a condition that did come true.
pub async fn wait_until(
    timeout: Duration,
    what: &str,
    mut condition: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut backoff = FIRST_BACKOFF;
    loop {
        if condition() {
            return Ok(());
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(Timeout {
                what: what.to_owned(),
                after: timeout,
            }
            .into());
        }
        tokio::time::sleep(backoff.min(deadline - now)).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// [`wait_until`] for code outside an async runtime; it blocks the calling thread.
///
/// Do not call it from an async test whose condition depends on tasks of the same
/// runtime: they cannot run while this thread is blocked.
pub fn wait_until_blocking(
    timeout: Duration,
    what: &str,
    mut condition: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut backoff = FIRST_BACKOFF;
    loop {
        if condition() {
            return Ok(());
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(Timeout {
                what: what.to_owned(),
                after: timeout,
            }
            .into());
        }
        std::thread::sleep(backoff.min(deadline - now));
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct_and_bindable() {
        let ports = free_ports(3).unwrap();
        assert_eq!(ports.len(), 3);
        assert!(ports[0] != ports[1] && ports[1] != ports[2] && ports[0] != ports[2]);
        TcpListener::bind((Ipv4Addr::LOCALHOST, ports[0])).unwrap();
    }

    #[test]
    fn blocking_wait_reports_what_timed_out() {
        let err =
            wait_until_blocking(Duration::from_millis(20), "pigs to fly", || false).unwrap_err();
        let timeout = err.downcast_ref::<Timeout>().unwrap();
        assert_eq!(timeout.what, "pigs to fly");
        assert!(err.to_string().contains("waiting for pigs to fly"));
    }

    #[tokio::test]
    async fn wait_returns_once_condition_holds() {
        let mut calls = 0;
        wait_until(Duration::from_secs(5), "third call", || {
            calls += 1;
            calls == 3
        })
        .await
        .unwrap();
        assert_eq!(calls, 3);
    }
}
