//! A real mosquitto broker, started and stopped by the test: the AWS IoT Core stand-in
//! (TLS, client certificates required) or a plain local broker for devices.
//!
//! Each broker gets its own temporary directory holding its configuration, copies of
//! its certificates, its persistence file and its log. The log captures mosquitto's
//! stdout and stderr (connections, TLS failures, errors); [`Mosquitto::log`] reads it,
//! and if the test panics while the broker is alive, dropping it prints the log's tail.
//!
//! Ports: mosquitto cannot bind port 0 and report what it got, so [`free_port`] picks
//! ports that were free a moment ago and mosquitto binds them. If another process
//! takes one in between, mosquitto exits with "Address already in use" and the first
//! start retries on fresh ports. [`MosquittoBuilder::plain_port`] names the plain
//! listener's port instead, for clients started before the broker. A restart ([`Mosquitto::start`] after
//! [`Mosquitto::stop`]) reuses the same ports, so clients can reconnect to the address
//! they were given.
//!
//! Readiness is an event, not a guess: mosquitto logs `mosquitto version X running`
//! once every listener is open, and start returns when that line appears (or fails at
//! once, with the log, if mosquitto exits).
//!
//! Persistence is on by default (in the broker's directory, saved on a clean stop), so
//! a stop/start keeps persistent sessions, their subscriptions and their queued QoS 1
//! messages, as IoT Core keeps them across its own restarts. [`Mosquitto::kill`] is the
//! crash: state since the last start is lost.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};

use crate::pki::Pki;
use crate::wait::{free_ports, wait_until_blocking};

/// The largest MQTT packet AWS IoT Core accepts: a 128 KiB payload plus room for a
/// topic (Basic Ingest prefix included) and the fixed and variable headers. Larger
/// packets make mosquitto disconnect the client, as IoT Core rejects them.
pub const IOT_CORE_MAX_PACKET: u32 = 128 * 1024 + 1024;

/// How long mosquitto may take to open its listeners.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long mosquitto may take to exit after SIGTERM before it gets SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How many fresh port sets the first start tries when a port was taken meanwhile.
const PORT_ATTEMPTS: usize = 3;
/// Lines of the log printed when a test panics with the broker alive.
const LOG_TAIL_LINES: usize = 80;

/// How to configure a [`Mosquitto`]; from [`Mosquitto::builder`].
#[derive(Debug, Clone)]
pub struct MosquittoBuilder {
    tls: Option<TlsFiles>,
    plain_listener: bool,
    plain_port: Option<u16>,
    persistence: bool,
    max_packet_size: Option<u32>,
    max_inflight_messages: u16,
    max_queued_messages: u32,
    verbose: bool,
    extra: Vec<String>,
}

#[derive(Debug, Clone)]
struct TlsFiles {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl MosquittoBuilder {
    /// Adds the TLS listener, IoT Core style: server certificate [`Pki::server`], client
    /// certificates signed by [`Pki::ca`] required (`require_certificate true`), the
    /// certificate's CN used as the username, TLS 1.2 or newer. The files are copied,
    /// so the `Pki` may be dropped before the broker.
    pub fn tls(mut self, pki: &Pki) -> Self {
        self.tls = Some(TlsFiles {
            ca: pki.ca.clone(),
            cert: pki.server.cert.clone(),
            key: pki.server.key.clone(),
        });
        self
    }

    /// Adds (or not) a plain MQTT listener that accepts anyone. Default: off.
    pub fn plain_listener(mut self, on: bool) -> Self {
        self.plain_listener = on;
        self
    }

    /// Adds the plain listener on a given port rather than a free one, for a client
    /// that is started (and retries) before the broker exists. Default: a free port.
    pub fn plain_port(mut self, port: u16) -> Self {
        self.plain_listener = true;
        self.plain_port = Some(port);
        self
    }

    /// Persist sessions across [`Mosquitto::stop`]/[`Mosquitto::start`]. Default: on.
    pub fn persistence(mut self, on: bool) -> Self {
        self.persistence = on;
        self
    }

    /// Disconnect clients that send a larger packet. Default: [`IOT_CORE_MAX_PACKET`].
    pub fn max_packet_size(mut self, bytes: Option<u32>) -> Self {
        self.max_packet_size = bytes;
        self
    }

    /// QoS 1 messages the broker sends a client before it waits for PUBACKs.
    /// Default: 100.
    pub fn max_inflight_messages(mut self, n: u16) -> Self {
        self.max_inflight_messages = n;
        self
    }

    /// QoS 1 messages queued per client beyond those in flight, 0 for no limit.
    /// Default: 0, so an offline test subscriber misses nothing.
    pub fn max_queued_messages(mut self, n: u32) -> Self {
        self.max_queued_messages = n;
        self
    }

    /// Also log every PUBLISH, SUBSCRIBE and PINGREQ (`log_type all`). Default: off.
    pub fn verbose(mut self, on: bool) -> Self {
        self.verbose = on;
        self
    }

    /// Appends a line to the global part of `mosquitto.conf`, e.g. `"retain_available false"`.
    pub fn config_line(mut self, line: impl Into<String>) -> Self {
        self.extra.push(line.into());
        self
    }

    /// Writes the configuration, starts mosquitto and returns once it accepts connections.
    pub fn start(self) -> Result<Mosquitto> {
        ensure!(
            self.tls.is_some() || self.plain_listener,
            "a Mosquitto needs a TLS listener (.tls(&pki)) or a plain one (.plain_listener(true))"
        );
        let binary = find_mosquitto()?;
        let dir = tempfile::Builder::new()
            .prefix("ferry-mosquitto-")
            .tempdir()
            .context("creating mosquitto's temporary directory")?;
        if let Some(tls) = &self.tls {
            for (from, to) in [
                (&tls.ca, "ca.pem"),
                (&tls.cert, "server.pem"),
                (&tls.key, "server.key"),
            ] {
                std::fs::copy(from, dir.path().join(to))
                    .with_context(|| format!("copying {} for mosquitto", from.display()))?;
            }
        }
        let mut broker = Mosquitto {
            config_path: dir.path().join("mosquitto.conf"),
            log_path: dir.path().join("mosquitto.log"),
            dir,
            binary,
            settings: self,
            tls_port: None,
            plain_port: None,
            child: None,
        };
        let mut attempt = 1;
        loop {
            let mut ports = free_ports(2).context("finding free ports for mosquitto")?;
            broker.tls_port = broker.settings.tls.is_some().then(|| ports.remove(0));
            let fixed = broker.settings.plain_port;
            broker.plain_port = broker
                .settings
                .plain_listener
                .then(|| fixed.unwrap_or_else(|| ports.remove(0)));
            std::fs::write(&broker.config_path, broker.config_text())
                .with_context(|| format!("writing {}", broker.config_path.display()))?;
            match broker.spawn_and_wait() {
                Ok(()) => return Ok(broker),
                Err(StartError::PortTaken(_)) if attempt < PORT_ATTEMPTS => attempt += 1,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// A running (or stopped) mosquitto. Dropping it kills the process and deletes its
/// directory.
#[derive(Debug)]
pub struct Mosquitto {
    dir: tempfile::TempDir,
    binary: PathBuf,
    config_path: PathBuf,
    log_path: PathBuf,
    settings: MosquittoBuilder,
    tls_port: Option<u16>,
    plain_port: Option<u16>,
    child: Option<Child>,
}

impl Mosquitto {
    /// Configuration with every default: no listener yet, persistence on, IoT Core's
    /// packet size limit.
    pub fn builder() -> MosquittoBuilder {
        MosquittoBuilder {
            tls: None,
            plain_listener: false,
            plain_port: None,
            persistence: true,
            max_packet_size: Some(IOT_CORE_MAX_PACKET),
            max_inflight_messages: 100,
            max_queued_messages: 0,
            verbose: false,
            extra: Vec::new(),
        }
    }

    /// The IoT Core stand-in: one TLS listener requiring client certificates from `pki`.
    pub fn tls(pki: &Pki) -> Result<Self> {
        Self::builder().tls(pki).start()
    }

    /// A plain local broker (one listener, no TLS, anyone may connect) for devices.
    pub fn plain() -> Result<Self> {
        Self::builder().plain_listener(true).start()
    }

    /// The TLS listener's address (on 127.0.0.1).
    ///
    /// # Panics
    /// If the broker was built without [`MosquittoBuilder::tls`].
    pub fn tls_addr(&self) -> SocketAddr {
        let port = self
            .tls_port
            .expect("this Mosquitto has no TLS listener: build it with .tls(&pki)");
        (Ipv4Addr::LOCALHOST, port).into()
    }

    /// The plain listener's address (on 127.0.0.1).
    ///
    /// # Panics
    /// If the broker has no plain listener.
    pub fn plain_addr(&self) -> SocketAddr {
        let port = self
            .plain_port
            .expect("this Mosquitto has no plain listener: build it with .plain_listener(true)");
        (Ipv4Addr::LOCALHOST, port).into()
    }

    /// The TLS listener's port, if there is one.
    pub fn tls_port(&self) -> Option<u16> {
        self.tls_port
    }

    /// The plain listener's port, if there is one.
    pub fn plain_port(&self) -> Option<u16> {
        self.plain_port
    }

    /// The broker's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is alive (it may have exited on its own).
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Stops the broker cleanly: SIGTERM (mosquitto saves its persistence file) and
    /// waits for it to exit; SIGKILL if it takes longer than 10 s. Does nothing if it
    /// is not running.
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        let pid =
            libc::pid_t::try_from(child.id()).context("mosquitto's pid does not fit pid_t")?;
        // SAFETY: kill(2) with a pid we spawned and have not yet reaped (so it cannot
        // have been reused) and a valid signal number.
        // SAFETY: kill takes no pointers; the pid is this process's own child.
        if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
            return Err(std::io::Error::last_os_error()).context("sending SIGTERM to mosquitto");
        }
        let mut exited = false;
        let clean = wait_until_blocking(STOP_TIMEOUT, "mosquitto to exit after SIGTERM", || {
            exited = matches!(child.try_wait(), Ok(Some(_)) | Err(_));
            exited
        });
        if clean.is_err() {
            child
                .kill()
                .context("killing mosquitto after SIGTERM timed out")?;
        }
        child.wait().context("waiting for mosquitto to exit")?;
        clean
    }

    /// Kills the broker with SIGKILL, as a crash would: nothing is saved.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            if child.try_wait()?.is_none() {
                child.kill().context("killing mosquitto")?;
            }
            child.wait().context("waiting for mosquitto to exit")?;
        }
        Ok(())
    }

    /// Starts a stopped broker again on the same ports and returns once it accepts
    /// connections. Fails if it is running, or if another process took a port meanwhile.
    pub fn start(&mut self) -> Result<()> {
        ensure!(!self.is_running(), "mosquitto is already running");
        self.spawn_and_wait()
            .map_err(anyhow::Error::from)
            .context("restarting mosquitto on its previous ports")
    }

    /// The log so far (every start appends to it).
    pub fn log(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_else(|e| format!("<cannot read {}: {e}>", self.log_path.display()))
    }

    /// Where the log is written.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The broker's temporary directory (configuration, certificates, persistence, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn spawn_and_wait(&mut self) -> Result<(), StartError> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(|e| {
                StartError::Other(anyhow::Error::new(e).context("opening mosquitto's log"))
            })?;
        let offset = log.metadata().map(|m| m.len()).unwrap_or(0);
        let stderr = log.try_clone().map_err(|e| {
            StartError::Other(anyhow::Error::new(e).context("duplicating the log handle"))
        })?;
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(&self.config_path)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .spawn()
            .map_err(|e| {
                StartError::Other(
                    anyhow::Error::new(e).context(format!("spawning {}", self.binary.display())),
                )
            })?;
        let child = self.child.insert(child);

        let mut exited: Option<ExitStatus> = None;
        let mut running = false;
        let waited = wait_until_blocking(START_TIMEOUT, "mosquitto to open its listeners", || {
            exited = child.try_wait().ok().flatten();
            running = read_from(&self.log_path, offset)
                .lines()
                .any(is_running_line);
            running || exited.is_some()
        });
        if running {
            return Ok(());
        }
        let log = read_from(&self.log_path, offset);
        if let Some(status) = exited {
            self.child = None;
            let error =
                anyhow::anyhow!("mosquitto exited ({status}) before it was ready; its log:\n{log}");
            return Err(if log.contains("Address already in use") {
                StartError::PortTaken(error)
            } else {
                StartError::Other(error)
            });
        }
        self.kill().map_err(StartError::Other)?;
        let waited = waited.expect_err("neither running nor exited, so the wait timed out");
        Err(StartError::Other(
            waited.context(format!("mosquitto's log:\n{log}")),
        ))
    }

    fn config_text(&self) -> String {
        let s = &self.settings;
        let dir = self.dir.path().display();
        let mut c = String::from("# Written by ferry-testkit.\n");
        // Run as root, mosquitto switches to user `mosquitto`, which could not write the
        // persistence file into this 0700 directory. As any other user this has no effect.
        // SAFETY: geteuid(2) cannot fail and has no side effects.
        if unsafe { libc::geteuid() } == 0 {
            c.push_str("user root\n");
        }
        // The TLS listener still demands a certificate; the plain one is for devices.
        c.push_str("allow_anonymous true\n");
        c.push_str(&format!("persistence {}\n", s.persistence));
        c.push_str(&format!("persistence_location {dir}/\n"));
        c.push_str("autosave_interval 0\n");
        c.push_str("log_dest stderr\n");
        let log_types: &[&str] = if s.verbose {
            &["all"]
        } else {
            &["error", "warning", "notice", "information"]
        };
        for t in log_types {
            c.push_str(&format!("log_type {t}\n"));
        }
        c.push_str("log_timestamp_format %Y-%m-%dT%H:%M:%S\n");
        c.push_str("connection_messages true\n");
        c.push_str(&format!(
            "max_inflight_messages {}\n",
            s.max_inflight_messages
        ));
        c.push_str(&format!("max_queued_messages {}\n", s.max_queued_messages));
        if let Some(bytes) = s.max_packet_size {
            c.push_str(&format!("max_packet_size {bytes}\n"));
        }
        for line in &s.extra {
            c.push_str(line);
            c.push('\n');
        }
        if let Some(port) = self.tls_port {
            c.push_str(&format!(
                "\nlistener {port} 127.0.0.1\n\
                 cafile {dir}/ca.pem\n\
                 certfile {dir}/server.pem\n\
                 keyfile {dir}/server.key\n\
                 require_certificate true\n\
                 use_identity_as_username true\n\
                 tls_version tlsv1.2\n"
            ));
        }
        if let Some(port) = self.plain_port {
            c.push_str(&format!("\nlistener {port} 127.0.0.1\n"));
        }
        c
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if std::thread::panicking() && self.child.is_some() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
            eprintln!(
                "--- mosquitto log ({}), last {} lines ---\n{}\n--- end of mosquitto log ---",
                self.log_path.display(),
                tail.len(),
                tail.join("\n")
            );
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill(); // it may have exited already; nothing to do either way
            let _ = child.wait();
        }
    }
}

enum StartError {
    /// Another process bound one of the ports between `free_ports` and mosquitto.
    PortTaken(anyhow::Error),
    Other(anyhow::Error),
}

impl From<StartError> for anyhow::Error {
    fn from(e: StartError) -> Self {
        match e {
            StartError::PortTaken(e) | StartError::Other(e) => e,
        }
    }
}

/// mosquitto logs this once all its listeners are open.
fn is_running_line(line: &str) -> bool {
    line.contains("mosquitto version") && line.ends_with(" running")
}

/// The log from byte `offset` on ("" if unreadable: the caller polls again).
fn read_from(path: &Path, offset: u64) -> String {
    let mut text = Vec::new();
    if let Ok(mut file) = File::open(path) {
        if file.seek(SeekFrom::Start(offset)).is_ok() {
            let _ = file.read_to_end(&mut text); // a short read is retried by the caller
        }
    }
    String::from_utf8_lossy(&text).into_owned()
}

/// `$MOSQUITTO`, else `mosquitto` on `PATH`, else the Debian location `/usr/sbin/mosquitto`
/// (not on a non-root user's `PATH`).
fn find_mosquitto() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("MOSQUITTO") {
        return Ok(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let candidates = std::env::split_paths(&path)
        .map(|dir| dir.join("mosquitto"))
        .chain(["/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"].map(PathBuf::from));
    for candidate in candidates {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!("mosquitto not found: apt-get install -y mosquitto, or set MOSQUITTO=/path/to/mosquitto")
}

/// Publishes `payload` once, QoS 1, with the `mosquitto_pub` command line client (an
/// OpenSSL client, unlike rustls in Ferry), and waits for it to finish. With `tls`, it
/// trusts [`Pki::ca`] and presents the given identity. Blocks the calling thread for
/// the few milliseconds it takes; from async code, use `spawn_blocking`.
pub fn mosquitto_pub(
    broker: SocketAddr,
    tls: Option<(&Pki, &crate::pki::Identity)>,
    topic: &str,
    payload: &[u8],
) -> Result<()> {
    use std::io::Write;
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let id = format!(
        "ferry-testkit-pub-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );

    let mut command =
        Command::new(std::env::var_os("MOSQUITTO_PUB").unwrap_or_else(|| "mosquitto_pub".into()));
    command
        .args([
            "-h",
            &broker.ip().to_string(),
            "-p",
            &broker.port().to_string(),
        ])
        .args(["-i", &id, "-q", "1", "-t", topic, "-s"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some((pki, identity)) = tls {
        command.args(pki.mosquitto_client_args(identity));
    }
    let mut child = command.spawn().context(
        "running mosquitto_pub (apt-get install -y mosquitto-clients, or set MOSQUITTO_PUB)",
    )?;
    let mut stdin = child.stdin.take().context("mosquitto_pub's stdin")?;
    stdin
        .write_all(payload)
        .context("writing the payload to mosquitto_pub")?;
    drop(stdin);
    let output = child
        .wait_with_output()
        .context("waiting for mosquitto_pub")?;
    ensure!(
        output.status.success(),
        "mosquitto_pub to {broker} failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim(),
        String::from_utf8_lossy(&output.stdout).trim()
    );
    Ok(())
}
