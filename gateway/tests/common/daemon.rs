//! The real `ferry` binary as a child process ([`Ferry`]): started on a
//! config file, its log captured, waited on, signalled, killed.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The `ferry` binary under test: `FERRY_BIN` if set (a copy that a
/// concurrent build in a shared target directory cannot replace), else the
/// one cargo built for these tests.
pub fn ferry_bin() -> std::ffi::OsString {
    std::env::var_os("FERRY_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_ferry").into())
}

/// A running `ferry run --config FILE`, killed on drop.
pub struct Ferry {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    pub config: PathBuf,
}

impl Ferry {
    /// Writes `config` to `dir/ferry.toml`, starts the daemon and waits until
    /// it logs that it is running.
    pub fn start(dir: &Path, config: &str) -> Ferry {
        let path = dir.join("ferry.toml");
        std::fs::write(&path, config).unwrap();
        Ferry::start_file(&path)
    }

    pub fn start_file(path: &Path) -> Ferry {
        Ferry::start_file_env(path, &[])
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Waits (without sleeping blindly) until a log line contains `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) {
        let log = self.log.clone();
        ferry_testkit::wait_until_blocking(timeout, needle, || {
            log.lock().unwrap().iter().any(|l| l.contains(needle))
        })
        .unwrap_or_else(|e| panic!("{e}; log:\n{}", self.log().join("\n")));
    }

    /// SIGKILL: a crash or a power cut, as far as the process can tell.
    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, as systemd stops it; returns the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "ferry did not stop within 30 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Like [`Ferry::start_file`], with `env` added to the daemon's
    /// environment (and not to this process's, which other tests share).
    pub fn start_file_env(path: &Path, env: &[(&str, &str)]) -> Ferry {
        let mut command = Command::new(ferry_bin());
        command
            .args(["run", "--config"])
            .arg(path)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("start ferry");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("ferry running") {
                    let _ = tx.send(());
                }
                sink.lock().unwrap().push(line);
            }
        });
        let mut ferry = Ferry {
            child,
            log,
            config: path.to_owned(),
        };
        if rx.recv_timeout(Duration::from_secs(30)).is_err() {
            let status = ferry.child.try_wait();
            panic!(
                "ferry did not start ({status:?}); its log:\n{}",
                ferry.log().join("\n")
            );
        }
        ferry
    }

    /// The exit status if the daemon has exited, `None` while it runs.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// Waits up to `timeout` for the daemon to exit by itself (polling, no
    /// signal sent); its exit status, `None` if it still runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Ferry {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- ferry log\n{}", self.log().join("\n"));
        }
    }
}
