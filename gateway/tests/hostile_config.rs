//! Hostile config files and hostile names, against the real `ferry` binary:
//! files that never end or never open (`/dev/zero`, a FIFO), oversized
//! files and values, control characters from devices in the log, and every
//! config that `ferry validate` passed but `ferry run` refused.
//!
//! Each child runs with its address space capped (`RLIMIT_AS`), so a
//! regression that reads without bound fails the test instead of eating the
//! machine's memory, and each wait has a deadline.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::ferry_bin;

/// The address space a child may take: far above what Ferry needs (its
/// threads' stacks and two malloc arenas), far below a runaway read.
const AS_LIMIT: u64 = 1 << 30;

fn command(args: &[&str]) -> Command {
    let mut c = Command::new(ferry_bin());
    c.args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: setrlimit(2) only, between fork and exec.
    unsafe {
        c.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: AS_LIMIT,
                rlim_max: AS_LIMIT,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    c
}

/// Runs `ferry ARGS` to its end, killed (and the test failed) after
/// `within`.
fn ferry_within(args: &[&str], within: Duration) -> Output {
    let mut child = command(args).spawn().expect("start ferry");
    let deadline = Instant::now() + within;
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "ferry {args:?} did not return within {within:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo(3) on a path in the test's own directory.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

/// A config with an embedded broker and metrics on free ports, its data in
/// `dir/data`.
fn base_config(dir: &Path, extra: &str) -> String {
    format!(
        "[gateway]\ndata_dir = \"{}\"\n\n[sources.local]\ntype = \"mqtt_broker\"\n\
         listen = \"127.0.0.1:0\"\ntopics = [\"sensors/{{device}}/telemetry\"]\n\n\
         [metrics]\nlisten = \"127.0.0.1:0\"\n{extra}",
        dir.join("data").display()
    )
}

/// A running `ferry run`, its stderr lines collected; killed on drop.
struct Daemon {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    fn start(config: &Path) -> Daemon {
        let mut child = command(&["run", "--config", config.to_str().unwrap()])
            .stdout(Stdio::null())
            .spawn()
            .expect("start ferry");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            // Split on '\n' only: a raw control byte stays in its line.
            for line in BufReader::new(err).split(b'\n').map_while(Result::ok) {
                sink.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&line).into_owned());
            }
        });
        let d = Daemon { child, lines };
        d.wait_line("ferry running", Duration::from_secs(30));
        d
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits until a line contains `needle`; fails at once if the daemon
    /// ends or its RSS passes 256 MiB.
    fn wait_line(&self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            if let Some(l) = self.lines().into_iter().find(|l| l.contains(needle)) {
                return l;
            }
            let rss = self.rss_kib();
            assert!(
                rss.is_some_and(|kib| kib < 256 << 10) && Instant::now() < deadline,
                "no line with {needle:?} (RSS {rss:?} KiB); log:\n{}",
                self.lines().join("\n")
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// VmRSS from /proc, in KiB; `None` once the process is gone.
    fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        if status
            .lines()
            .any(|l| l.starts_with("State:") && l.contains('Z'))
        {
            return None;
        }
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    fn hangup(&self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGHUP) };
    }

    /// The metrics endpoint's address, from its "listening" line.
    fn metrics_addr(&self) -> std::net::SocketAddr {
        self.addr_from("metrics endpoint listening")
    }

    /// The embedded broker's address, from its "listening" line.
    fn broker_addr(&self) -> std::net::SocketAddr {
        self.addr_from("embedded MQTT broker listening")
    }

    fn addr_from(&self, needle: &str) -> std::net::SocketAddr {
        let line = self.wait_line(needle, Duration::from_secs(10));
        let addr = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("addr="))
            .unwrap_or_else(|| panic!("no addr= in {line:?}"));
        addr.parse().unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- ferry log\n{}", self.lines().join("\n"));
        }
    }
}

/// Replaces `path` at once (rename over it) with a symlink to `target`.
fn replace_with_symlink(path: &Path, target: &Path) {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn sighup_with_the_config_a_symlink_to_dev_zero_is_refused_and_a_later_good_one_applies() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ferry.toml");
    let good = base_config(dir.path(), "");
    std::fs::write(&path, &good).unwrap();
    let d = Daemon::start(&path);
    let before = d.rss_kib().unwrap();

    replace_with_symlink(&path, Path::new("/dev/zero"));
    d.hangup();
    let refused = d.wait_line("reload: config error: ", Duration::from_secs(10));
    assert!(
        refused.ends_with(&format!(
            "reload: config error: {}: is a character device, not a regular file",
            path.display()
        )),
        "{refused}"
    );
    d.wait_line(
        "reload: the config has problems; still running with the previous one",
        Duration::from_secs(10),
    );
    let after = d.rss_kib().unwrap();
    assert!(
        after < before + (16 << 10),
        "RSS grew from {before} to {after} KiB"
    );

    // A FIFO is refused at once as well (no writer ever comes).
    let fifo = dir.path().join("fifo");
    mkfifo(&fifo);
    replace_with_symlink(&path, &fifo);
    d.hangup();
    d.wait_line(
        "is a FIFO (named pipe), not a regular file",
        Duration::from_secs(10),
    );

    // Later SIGHUPs are still processed: a good config is applied.
    std::fs::remove_file(&path).unwrap();
    std::fs::write(
        &path,
        good.replace("[gateway]\n", "[gateway]\nlog_level = \"debug\"\n"),
    )
    .unwrap();
    d.hangup();
    let reloaded = d.wait_line("config reloaded", Duration::from_secs(10));
    assert!(reloaded.contains("needs_restart=[]"), "{reloaded}");
    assert_eq!(
        d.lines()
            .iter()
            .filter(|l| l.contains("reload: the config has problems"))
            .count(),
        2
    );
    // Counted as well as logged.
    let metrics = d.metrics_addr();
    let reloads = |result: &str| {
        common::metric_sample(
            metrics,
            &format!("ferry_config_reloads_total{{result=\"{result}\"}}"),
        )
    };
    assert_eq!(
        (reloads("refused"), reloads("applied")),
        (Some(2.0), Some(1.0))
    );
}

#[test]
fn validate_and_run_refuse_a_fifo_and_dev_zero_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("ferry.fifo");
    mkfifo(&fifo);
    let link = dir.path().join("zero.toml");
    std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
    let cases = [
        (fifo.as_path(), "is a FIFO (named pipe), not a regular file"),
        (
            Path::new("/dev/zero"),
            "is a character device, not a regular file",
        ),
        (link.as_path(), "is a character device, not a regular file"),
        (dir.path(), "is a directory, not a regular file"),
    ];
    for (path, why) in cases {
        let p = path.to_str().unwrap();
        for args in [["validate", "--config", p], ["run", "--config", p]] {
            let started = Instant::now();
            let out = ferry_within(&args, Duration::from_secs(10));
            assert_eq!(out.status.code(), Some(64), "{args:?}: {}", stderr(&out));
            assert_eq!(stderr(&out), format!("ferry: config error: {p}: {why}\n"));
            assert!(started.elapsed() < Duration::from_secs(5), "{args:?}");
        }
    }
}

#[test]
fn an_oversized_config_is_refused_unread() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ferry.toml");
    // Valid TOML (a comment) one byte over the 1 MiB limit.
    let mut text = base_config(dir.path(), "# ");
    text.push_str(&"x".repeat((1 << 20) + 1 - text.len() - 1));
    text.push('\n');
    assert_eq!(text.len(), (1 << 20) + 1);
    std::fs::write(&path, &text).unwrap();
    let p = path.to_str().unwrap();
    let out = ferry_within(&["validate", p], Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        format!(
            "ferry: config error: {p}: is larger than the limit of 1048576 bytes (1048577 bytes)\n"
        )
    );
    // At the limit it is read.
    text.truncate((1 << 20) - 1);
    text.push('\n');
    std::fs::write(&path, &text).unwrap();
    let out = ferry_within(&["validate", p], Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn a_huge_gateway_id_gives_a_short_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ferry.toml");
    let p = path.to_str().unwrap();
    let id = "a".repeat(1_000_000);
    std::fs::write(
        &path,
        format!("[gateway]\nid = \"{id}\"\n[sources.local]\ntype = \"mqtt_broker\"\n"),
    )
    .unwrap();
    let out = ferry_within(&["validate", p], Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(64));
    assert_eq!(
        stderr(&out),
        format!(
            "ferry: config error: {p}:2: gateway.id: invalid gateway id \"{}…\" (1000000 bytes): \
             must be at most 128 bytes (the IoT Core client id limit)\n",
            "a".repeat(64)
        )
    );
    // A long key, and a long value quoted by serde: excerpts too.
    let id = "b".repeat(400_000);
    std::fs::write(
        &path,
        format!(
            "[sources.local]\ntype = \"mqtt_broker\"\n[sources.{id}]\ntype = \"mqtt_broker\"\n\
             [store]\nwhen_full = \"{id}\"\n"
        ),
    )
    .unwrap();
    let out = ferry_within(&["validate", p], Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(64));
    let err = stderr(&out);
    assert!(err.len() < 2048, "{} bytes of errors", err.len());
    assert!(err.lines().count() >= 2, "{err}");
    // 50 MB: the size cap refuses the file before anything is parsed.
    let id = "a".repeat(50 << 20);
    std::fs::write(&path, format!("[gateway]\nid = \"{id}\"\n")).unwrap();
    let out = ferry_within(&["validate", p], Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(64));
    assert_eq!(
        stderr(&out),
        format!(
            "ferry: config error: {p}: is larger than the limit of 1048576 bytes ({} bytes)\n",
            id.len() + 18
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_with_a_newline_and_esc_is_logged_escaped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ferry.toml");
    std::fs::write(&path, base_config(dir.path(), "")).unwrap();
    let d = tokio::task::block_in_place(|| Daemon::start(&path));
    let addr = tokio::task::block_in_place(|| d.broker_addr());
    let mut publisher = common::Publisher::connect(addr, "dev7").await.unwrap();
    let topic = "sensors/7\nINFO ferry: forged line\u{1b}[2J/x";
    publisher
        .publish(topic, b"{\"v\": 1}".to_vec())
        .await
        .unwrap();
    let line = tokio::task::block_in_place(|| d.wait_line("dead letter", Duration::from_secs(10)));
    assert!(
        line.contains("sensors/7\\nINFO ferry: forged line\\u{1b}[2J/x"),
        "{line}"
    );
    let lines = d.lines();
    assert!(
        !lines.iter().any(|l| l.starts_with("INFO ferry: forged")),
        "a forged line: {lines:#?}"
    );
    assert!(
        !lines.iter().any(|l| l.chars().any(|c| c == '\u{1b}')),
        "a raw ESC: {lines:#?}"
    );
}

/// Configs `ferry validate` used to pass and `ferry run` refused (or ran
/// wrongly): validate and run both exit 64 with the key's line.
#[test]
fn what_run_would_refuse_validate_refuses_with_the_key_path() {
    let dir = tempfile::tempdir().unwrap();
    let devnull = dir.path().join("null-dir");
    std::os::unix::fs::symlink("/dev/null", &devnull).unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not PEM\n").unwrap();
    let pki = ferry_testkit::Pki::generate("gw-hostile").unwrap();
    // The key readable by its owner only (else validate warns about it).
    let key = dir.path().join("client.key");
    std::fs::copy(&pki.client.key, &key).unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let data = dir.path().join("data");
    let broker =
        |listen: &str| format!("[sources.local]\ntype = \"mqtt_broker\"\nlisten = \"{listen}\"\n");
    let gateway = |data_dir: &str| format!("[gateway]\ndata_dir = {data_dir}\n");
    let d = format!("{:?}", data.display().to_string());
    let cases: Vec<(String, String)> = vec![
        (
            format!("{}{}[api]\nlisten = \"127.0.0.1:18830\"\n", gateway(&d), broker("127.0.0.1:18830")),
            ":7: api.listen: 127.0.0.1:18830 is already the listen address of source \"local\"".into(),
        ),
        (
            format!(
                "{}{}[metrics]\nlisten = \"127.0.0.1:18831\"\n[api]\nlisten = \"127.0.0.1:18831\"\n",
                gateway(&d),
                broker("127.0.0.1:0")
            ),
            ":9: api.listen: 127.0.0.1:18831 is already the listen address of the metrics endpoint (metrics.listen)".into(),
        ),
        (
            format!("{}{}[metrics]\nlisten = \"127.0.0.1:18832\"\n", gateway(&d), broker("0.0.0.0:18832")),
            ":7: metrics.listen: 127.0.0.1:18832 overlaps 0.0.0.0:18832, the listen address of source \"local\"; give each listener its own port".into(),
        ),
        (
            format!("{}{}", gateway("\"/tmp/a\\u0000b\""), broker("127.0.0.1:0")),
            ":2: gateway.data_dir: /tmp/a\\0b contains a NUL byte".into(),
        ),
        (
            format!(
                "{}{}[store]\nmax_disk = \"99999999999999999999EiB\"\n",
                gateway(&d),
                broker("127.0.0.1:0")
            ),
            ":7: store.max_disk: is too large: the size overflows 16EiB; at most 1PiB".into(),
        ),
        (
            format!("{}{}buffer = \"99999999999999999999EiB\"\n", gateway(&d), broker("127.0.0.1:0")),
            ":6: sources.local.buffer: is too large: the size overflows 16EiB; at most 1GiB".into(),
        ),
        (
            format!("{}{}", gateway(&format!("{:?}", devnull.display().to_string())), broker("127.0.0.1:0")),
            format!(
                ":2: gateway.data_dir: {} is a character device, not a directory; name a directory for the store",
                devnull.display()
            ),
        ),
        (
            format!(
                "{}{}",
                gateway(&format!("{:?}", file.join("data").display().to_string())),
                broker("127.0.0.1:0")
            ),
            format!(
                ":2: gateway.data_dir: {} cannot be created: {} is a regular file, not a directory",
                file.join("data").display(),
                file.display()
            ),
        ),
        (
            format!(
                "{}{}[uplinks.cloud]\nendpoint = \"127.0.0.1:1\"\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
                gateway(&d),
                broker("127.0.0.1:0"),
                pki.ca.display().to_string(),
                garbage.display().to_string(),
                key.display().to_string()
            ),
            format!(
                ":9: uplinks.cloud.cert: certificate {} holds no PEM certificate",
                garbage.display()
            ),
        ),
    ];
    let path = dir.path().join("ferry.toml");
    let p = path.to_str().unwrap();
    for (text, want) in &cases {
        std::fs::write(&path, text).unwrap();
        for cmd in ["validate", "run"] {
            let out = ferry_within(&[cmd, "--config", p], Duration::from_secs(20));
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(64), "{cmd} {text}\n{err}");
            assert_eq!(
                err,
                format!("ferry: config error: {p}{want}\n"),
                "{cmd} {text}"
            );
        }
    }
    assert!(
        !data.exists(),
        "nothing is created for a config that does not run"
    );
}

/// The configs next to those above that validate accepts: run starts each.
#[test]
fn what_validate_accepts_run_starts() {
    let dir = tempfile::tempdir().unwrap();
    let port = ferry_testkit::free_port().unwrap();
    let path = dir.path().join("ferry.toml");
    let p = path.to_str().unwrap();
    let pki = ferry_testkit::Pki::generate("gw-hostile").unwrap();
    let existing = dir.path().join("existing");
    std::fs::create_dir(&existing).unwrap();
    let linked = dir.path().join("linked");
    std::os::unix::fs::symlink(&existing, &linked).unwrap();
    let cases = [
        // One port on two loopback addresses, and port 0 twice.
        base_config(
            dir.path(),
            &format!("[api]\nlisten = \"127.0.0.1:{port}\"\n"),
        )
        .replace(
            "listen = \"127.0.0.1:0\"\ntopics",
            &format!("listen = \"127.0.0.2:{port}\"\ntopics"),
        ),
        // The largest sizes.
        base_config(
            dir.path(),
            "[store]\nmax_disk = \"1PiB\"\ncache_size = \"16MiB\"\n",
        )
        .replace("topics =", "buffer = \"1GiB\"\ntopics ="),
        // A data_dir several levels down, and one through a symlink.
        base_config(&dir.path().join("a/b/c"), ""),
        base_config(dir.path(), "").replace(
            &dir.path().join("data").display().to_string(),
            &linked.display().to_string(),
        ),
        // An uplink whose files load (the cloud is not there: it retries).
        base_config(
            dir.path(),
            &format!(
                "[uplinks.cloud]\nendpoint = \"127.0.0.1:1\"\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
                pki.ca.display().to_string(),
                pki.client.cert.display().to_string(),
                pki.client.key.display().to_string()
            ),
        ),
    ];
    for text in cases {
        std::fs::write(&path, &text).unwrap();
        let out = ferry_within(&["validate", p], Duration::from_secs(10));
        assert_eq!(out.status.code(), Some(0), "{text}\n{}", stderr(&out));
        let mut d = Daemon::start(&path);
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(d.child.id() as i32, libc::SIGTERM) };
        d.wait_line("ferry stopped", Duration::from_secs(30));
        let status = d.child.wait().unwrap();
        assert!(status.success(), "{text}: {status:?}");
    }
}
