//! systemd's service notification protocol (`sd_notify(3)`), without
//! libsystemd: datagrams of `KEY=VALUE` lines sent to the unix socket named
//! by `NOTIFY_SOCKET`.
//!
//! What Ferry sends, and when (see the `daemon` module):
//! - `READY=1` once the store is open, the sources are started (an embedded
//!   broker accepts connections) and the uplinks are running;
//! - `STATUS=...`, a one-line summary (records stored, each uplink's state
//!   and backlog), whenever it changes;
//! - `WATCHDOG=1` every half `WatchdogSec=` while the ingest writer is alive
//!   (see [`super::watchdog`]);
//! - `RELOADING=1` ... `READY=1` around a SIGHUP reload, `STOPPING=1` when
//!   shutdown begins.
//!
//! Not under systemd (no `NOTIFY_SOCKET`), [`Notifier::from_env`] is `None`
//! and nothing is sent. Sending never blocks: a datagram the manager cannot
//! take right now is dropped and logged at debug level (the next watchdog
//! ping comes half a timeout later).

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

use tracing::debug;

/// One assignment of a notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State<'a> {
    /// `READY=1`: start-up (or a reload) is finished.
    Ready,
    /// `RELOADING=1` with `MONOTONIC_USEC`: a reload has begun.
    Reloading,
    /// `STOPPING=1`: shutdown has begun.
    Stopping,
    /// `WATCHDOG=1`: the service is alive.
    Watchdog,
    /// `STATUS=...`: a one-line, human-readable status (newlines are replaced).
    Status(&'a str),
}

/// A connection to the service manager's notification socket.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// The notifier systemd asked for through the environment, if any:
    /// `NOTIFY_SOCKET` (a path, or `@name` for an abstract socket), and the
    /// watchdog timeout `WATCHDOG_USEC` when `WATCHDOG_PID` is unset or this
    /// process. `None` when not started by systemd with `Type=notify`.
    pub fn from_env() -> Option<Notifier> {
        let socket = std::env::var_os("NOTIFY_SOCKET")?;
        let watchdog = watchdog_timeout(
            std::env::var("WATCHDOG_USEC").ok().as_deref(),
            std::env::var("WATCHDOG_PID").ok().as_deref(),
            std::process::id(),
        );
        match Notifier::connect(&socket, watchdog) {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::warn!(socket = ?socket, error = %e, "cannot use NOTIFY_SOCKET; not notifying systemd");
                None
            }
        }
    }

    /// A notifier for the socket `name` (a path, or `@name` for the abstract
    /// namespace), with the given watchdog timeout.
    pub fn connect(name: &OsStr, watchdog: Option<Duration>) -> io::Result<Notifier> {
        let addr = socket_addr(name)?;
        let socket = UnixDatagram::unbound()?;
        socket.set_nonblocking(true)?;
        Ok(Notifier {
            socket,
            addr,
            watchdog,
        })
    }

    /// The watchdog timeout systemd enforces (`WatchdogSec=`), if any.
    pub fn watchdog_timeout(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Sends one notification holding `states`.
    pub fn send(&self, states: &[State<'_>]) -> io::Result<()> {
        let message = encode(states, monotonic_usec());
        self.socket
            .send_to_addr(message.as_bytes(), &self.addr)
            .map(drop)
    }

    /// Sends, logging a failure at debug level: a lost notification is
    /// never a reason to stop.
    pub fn notify(&self, states: &[State<'_>]) {
        if let Err(e) = self.send(states) {
            debug!(error = %e, ?states, "cannot notify systemd");
        }
    }
}

/// The text of one notification.
fn encode(states: &[State<'_>], monotonic_usec: u64) -> String {
    let mut out = String::new();
    for state in states {
        match state {
            State::Ready => out.push_str("READY=1\n"),
            State::Reloading => {
                out.push_str("RELOADING=1\n");
                out.push_str(&format!("MONOTONIC_USEC={monotonic_usec}\n"));
            }
            State::Stopping => out.push_str("STOPPING=1\n"),
            State::Watchdog => out.push_str("WATCHDOG=1\n"),
            State::Status(s) => {
                out.push_str("STATUS=");
                out.extend(s.chars().map(|c| if c.is_control() { ' ' } else { c }));
                out.push('\n');
            }
        }
    }
    out
}

fn socket_addr(name: &OsStr) -> io::Result<SocketAddr> {
    let bytes = name.as_bytes();
    match bytes.first() {
        Some(b'/') => SocketAddr::from_pathname(name),
        Some(b'@') => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(&bytes[1..])
        }
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "NOTIFY_SOCKET must be an absolute path or start with '@'",
        )),
    }
}

/// The watchdog timeout from `WATCHDOG_USEC`, if it is meant for `pid`.
fn watchdog_timeout(usec: Option<&str>, for_pid: Option<&str>, pid: u32) -> Option<Duration> {
    if let Some(for_pid) = for_pid {
        if for_pid.trim().parse::<u32>().ok()? != pid {
            return None;
        }
    }
    let usec: u64 = usec?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// `CLOCK_MONOTONIC` in microseconds, as `RELOADING=1` wants it.
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recv(socket: &UnixDatagram) -> String {
        let mut buf = [0u8; 4096];
        let n = socket.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn sends_to_a_socket_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let manager = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::connect(path.as_os_str(), None).unwrap();
        n.send(&[State::Ready, State::Status("up; uplink a: connected")])
            .unwrap();
        assert_eq!(recv(&manager), "READY=1\nSTATUS=up; uplink a: connected\n");
        n.send(&[State::Watchdog]).unwrap();
        assert_eq!(recv(&manager), "WATCHDOG=1\n");
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("ferry-notify-test-{}", std::process::id());
        let manager =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        let n = Notifier::connect(OsStr::new(&format!("@{name}")), None).unwrap();
        n.send(&[State::Stopping]).unwrap();
        assert_eq!(recv(&manager), "STOPPING=1\n");
    }

    #[test]
    fn a_missing_manager_is_an_error_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        let n = Notifier::connect(dir.path().join("absent").as_os_str(), None).unwrap();
        assert!(n.send(&[State::Ready]).is_err());
        n.notify(&[State::Ready]);
        assert!(Notifier::connect(OsStr::new("relative"), None).is_err());
    }

    #[test]
    fn status_is_one_line_and_reloading_carries_the_clock() {
        let text = encode(&[State::Status("a\nb\tc")], 0);
        assert_eq!(text, "STATUS=a b c\n");
        let text = encode(&[State::Reloading], 42);
        assert_eq!(text, "RELOADING=1\nMONOTONIC_USEC=42\n");
        assert!(monotonic_usec() > 0);
    }

    #[test]
    fn watchdog_timeout_is_for_this_process_only() {
        let s = Duration::from_secs;
        assert_eq!(watchdog_timeout(Some("30000000"), None, 7), Some(s(30)));
        assert_eq!(
            watchdog_timeout(Some("30000000"), Some("7"), 7),
            Some(s(30))
        );
        assert_eq!(watchdog_timeout(Some("30000000"), Some("8"), 7), None);
        assert_eq!(watchdog_timeout(Some("0"), None, 7), None);
        assert_eq!(watchdog_timeout(Some("x"), None, 7), None);
        assert_eq!(watchdog_timeout(None, None, 7), None);
    }
}
