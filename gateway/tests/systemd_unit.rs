//! `systemd/ferry.service`, checked by systemd's own tools (no running
//! systemd needed): `systemd-analyze verify` and the offline security
//! rating, which must stay at or below 2.0; and the settings the daemon's
//! behaviour depends on.

use std::path::{Path, PathBuf};
use std::process::Command;

fn unit_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/ferry.service")
}

fn unit() -> String {
    std::fs::read_to_string(unit_path()).unwrap()
}

fn systemd_analyze(args: &[&str]) -> std::process::Output {
    Command::new("systemd-analyze")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run systemd-analyze ({e}): install systemd \
                 (`apt-get install systemd`; bash .ci/run does)"
            )
        })
}

/// The values of `key=` in the unit, in order.
fn values(unit: &str, key: &str) -> Vec<String> {
    let prefix = format!("{key}=");
    unit.lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_unit_verifies() {
    // verify checks that the commands exist: point them at the binary
    // cargo built, in a copy of the unit.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("ferry.service");
    std::fs::write(
        &copy,
        unit().replace("/usr/bin/ferry", env!("CARGO_BIN_EXE_ferry")),
    )
    .unwrap();
    let out = systemd_analyze(&["verify", copy.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify: {stderr}");
    assert!(
        !stderr.contains("ferry.service"),
        "warnings about the unit: {stderr}"
    );
}

#[test]
fn security_exposure_is_at_most_2() {
    let out = systemd_analyze(&["security", "--offline=yes", unit_path().to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level for ferry.service:"))
        .unwrap_or_else(|| panic!("no overall rating in:\n{text}"));
    let exposure: f64 = line
        .rsplit_once(": ")
        .unwrap()
        .1
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(exposure <= 2.0, "exposure {exposure} > 2.0:\n{text}");
}

#[test]
fn the_unit_runs_ferry_as_the_daemon_expects() {
    let unit = unit();
    let one = |key: &str| -> String {
        let v = values(&unit, key);
        assert_eq!(v.len(), 1, "{key}= {v:?}");
        v[0].clone()
    };
    assert_eq!(one("Type"), "notify");
    assert_eq!(one("NotifyAccess"), "main");
    assert_eq!(
        one("ExecStartPre"),
        "/usr/bin/ferry validate /etc/ferry/ferry.toml"
    );
    assert_eq!(
        one("ExecStart"),
        "/usr/bin/ferry run --config /etc/ferry/ferry.toml"
    );
    assert_eq!(one("ExecReload"), "/bin/kill -HUP $MAINPID");
    assert_eq!(one("Restart"), "on-failure");
    assert_eq!(one("User"), "ferry");
    assert_eq!(one("StateDirectory"), "ferry");
    assert_eq!(one("SupplementaryGroups"), "dialout");
    assert_eq!(one("ProtectSystem"), "strict");
    assert_eq!(one("NoNewPrivileges"), "yes");
    // The watchdog: the daemon pings every WatchdogSec/4 and stops after a
    // WatchdogSec/2 stall (`watchdog.rs`), which needs at least 6 s.
    let watchdog = humantime::parse_duration(&one("WatchdogSec")).unwrap();
    assert!(watchdog.as_secs() >= 6, "{watchdog:?}");
    // The graceful drain: sources 5 s, uplinks' PUBACKs 5 s, final commit.
    let stop = humantime::parse_duration(&one("TimeoutStopSec")).unwrap();
    assert!(stop.as_secs() >= 15, "{stop:?}");
    // The packaged config keeps the store where StateDirectory= puts it.
    let conffile = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/ferry.toml");
    let config = ferry_gateway::config::Config::load(&conffile).unwrap();
    assert_eq!(config.gateway.data_dir, Path::new("/var/lib/ferry"));
}
