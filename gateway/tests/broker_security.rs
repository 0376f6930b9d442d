//! The embedded broker's security against a real `ferry` daemon and real
//! clients (mosquitto_pub/mosquitto_sub over OpenSSL, raw MQTT over TCP):
//! TLS with and without client certificates, a mosquitto_passwd file
//! (re-read on SIGHUP), per-device topic ACLs, and every limit counted.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{http_get, loopback, Ferry};
use ferry_testkit::{free_ports, wait_until_blocking, Pki};

const WAIT: Duration = Duration::from_secs(10);

/// Runs mosquitto_pub (or `mosquitto_sub` via `tool`) with `args`; its
/// stderr and stdout on failure.
fn mosquitto(tool: &str, port: u16, args: &[&str]) -> Result<String, String> {
    let out = Command::new(tool)
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("mosquitto-clients is installed");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

/// mosquitto_pub, QoS 1, over TLS trusting the test CA, as `user`/`pass`.
fn publish(
    port: u16,
    pki: &Pki,
    login: Option<(&str, &str)>,
    topic: &str,
    payload: &str,
) -> Result<String, String> {
    let ca = pki.ca.to_str().unwrap();
    let mut args = vec!["--cafile", ca, "-q", "1", "-t", topic, "-m", payload];
    if let Some((user, pass)) = login {
        args.extend(["-i", user, "-u", user, "-P", pass]);
    }
    mosquitto("mosquitto_pub", port, &args)
}

/// One sample of the daemon's metrics, 0 if it is not there yet.
fn metric(metrics: SocketAddr, sample: &str) -> f64 {
    common::metric_sample(metrics, sample).unwrap_or(0.0)
}

fn wait_metric(metrics: SocketAddr, sample: &str, value: f64) {
    wait_until_blocking(WAIT, sample, || metric(metrics, sample) == value).unwrap_or_else(|e| {
        panic!("{e}: {sample} is {}", metric(metrics, sample));
    });
}

/// GET from the query API, which keeps connections open unless told.
fn api_get(api: SocketAddr, path: &str) -> String {
    let (_, head, body) = common::get_closed(api, path, WAIT);
    assert!(!head.is_empty(), "no HTTP answer to {path}");
    body
}

/// The stored records' `device` values, in order.
fn stored_devices(api: SocketAddr) -> Vec<String> {
    let json = &api_get(api, "/api/v1/records?after=0&limit=1000");
    let v: serde_json::Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}"));
    v["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["device"].as_str().unwrap().to_owned())
        .collect()
}

/// The stored dead letters' `kind` values, in order.
fn dead_kinds(api: SocketAddr) -> Vec<String> {
    let json = &api_get(api, "/api/v1/dead?after=0&limit=1000");
    let v: serde_json::Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}"));
    v["dead"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kind"].as_str().unwrap().to_owned())
        .collect()
}

/// An MQTT 3.1.1 CONNECT with clean session and keep-alive 30 s.
fn raw_connect(client_id: &str) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 30];
    body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    body.extend_from_slice(client_id.as_bytes());
    let mut out = vec![0x10, body.len() as u8];
    out.extend(body);
    out
}

/// Connects over plain TCP and returns the socket and its CONNACK code.
fn raw_client(port: u16, client_id: &str) -> (TcpStream, u8) {
    let mut s = TcpStream::connect(loopback(port)).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(&raw_connect(client_id)).unwrap();
    let mut connack = [0u8; 4];
    s.read_exact(&mut connack).unwrap();
    assert_eq!(&connack[..3], &[0x20, 2, 0], "a CONNACK");
    (s, connack[3])
}

fn passwd(file: &Path, create: bool, user: &str, pass: &str) {
    let mut c = Command::new("mosquitto_passwd");
    if create {
        c.arg("-c");
    }
    let out = c.arg("-b").arg(file).args([user, pass]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn tls_logins_acls_and_limits_of_the_embedded_broker() {
    let pki = Pki::generate("gw-sec").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("passwd");
    passwd(&pw, true, "dev1", "secret-1");
    passwd(&pw, false, "dev2", "secret-2");
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
    let p = free_ports(6).unwrap();
    let (secure, mtls, plain, api, metrics) = (p[0], p[1], p[2], loopback(p[3]), loopback(p[4]));
    let direct = p[5];
    let config = format!(
        r#"
[gateway]
data_dir = "{data}"
insecure_key_files = "refuse"

[sources.secure]
type = "mqtt_broker"
listen = "127.0.0.1:{secure}"
topics = ["sensors/{{device}}/telemetry"]
tls = {{ cert = "{cert}", key = "{key}" }}
password_file = "{pw}"
acl = "username"
max_topic_length = 40
max_payload = "1KiB"
max_fields = 4
# Four brokers at the default 1000 would pass the descriptor budget.
max_connections = 100

[sources.mtls]
type = "mqtt_broker"
listen = "127.0.0.1:{mtls}"
topics = ["plant/{{device}}/data"]
tls = {{ cert = "{cert}", key = "{key}", client_ca = "{ca}" }}
acl = "client_id"
max_connections = 100

[sources.plain]
type = "mqtt_broker"
listen = "127.0.0.1:{plain}"
topics = ["lab/{{device}}"]
max_connections = 2

[sources.direct]
type = "mqtt_broker"
listen = "127.0.0.1:{direct}"
topics = ["hall/{{device}}"]
max_topic_length = 20
device_front = "auto"
# Straight to rumqttd, it may hold 5,000 sockets before their CONNECT on
# top of these: at the default 1,000 the four would pass the budget.
max_connections = 100

[api]
listen = "{api}"

[metrics]
listen = "{metrics}"
"#,
        data = dir.path().join("data").display(),
        cert = pki.server.cert.display(),
        key = pki.server.key.display(),
        ca = pki.ca.display(),
        pw = pw.display(),
    );
    let ferry = Ferry::start(dir.path(), &config);
    let m = |s: &str| format!("ferry_source_{s}");

    // The right password, to the device's own topic: stored.
    publish(
        secure,
        &pki,
        Some(("dev1", "secret-1")),
        "sensors/dev1/telemetry",
        r#"{"t":21.5}"#,
    )
    .unwrap();
    wait_until_blocking(WAIT, "dev1's reading stored", || {
        stored_devices(api) == ["dev1"]
    })
    .unwrap();

    // Wrong password, unknown user, no credentials: refused with the right
    // CONNACK code, counted by reason, logged with client and user.
    let err = publish(
        secure,
        &pki,
        Some(("dev1", "wrong")),
        "sensors/dev1/telemetry",
        "{}",
    )
    .unwrap_err();
    assert!(err.contains("bad user name or password"), "{err}");
    let err = publish(
        secure,
        &pki,
        Some(("dev9", "secret-1")),
        "sensors/dev9/telemetry",
        "{}",
    )
    .unwrap_err();
    assert!(err.contains("bad user name or password"), "{err}");
    let err = publish(secure, &pki, None, "sensors/dev1/telemetry", "{}").unwrap_err();
    assert!(err.contains("not authorised"), "{err}");
    let refused = |r: &str| {
        m(&format!(
            "logins_refused_total{{source=\"secure\",reason=\"{r}\"}}"
        ))
    };
    wait_metric(metrics, &refused("bad_password"), 1.0);
    assert_eq!(metric(metrics, &refused("unknown_user")), 1.0);
    assert_eq!(metric(metrics, &refused("no_credentials")), 1.0);
    ferry.wait_log("reason=\"bad_password\"", WAIT);
    let log = ferry.log().join("\n");
    assert!(log.contains("client=\"dev9\" user=\"dev9\""), "{log}");
    assert!(
        !log.contains("wrong") && !log.contains("secret-1"),
        "a password in the log:\n{log}"
    );

    // dev1 publishing as dev2: acknowledged (QoS 1) but dropped, counted.
    publish(
        secure,
        &pki,
        Some(("dev1", "secret-1")),
        "sensors/dev2/telemetry",
        r#"{"t":1}"#,
    )
    .unwrap();
    publish(
        secure,
        &pki,
        Some(("dev1", "secret-1")),
        "elsewhere/dev1",
        r#"{"t":1}"#,
    )
    .unwrap();
    let denied = m("acl_denied_total{source=\"secure\",action=\"publish\"}");
    wait_metric(metrics, &denied, 2.0);
    ferry.wait_log("publish dropped: not the client's own topic", WAIT);
    // A subscription under the ACL is refused in the SUBACK.
    let ca = pki.ca.to_str().unwrap();
    let sub = mosquitto(
        "mosquitto_sub",
        secure,
        &[
            "--cafile", ca, "-u", "dev2", "-P", "secret-2", "-i", "dev2", "-t", "#", "-C", "1",
            "-W", "5",
        ],
    );
    assert!(format!("{sub:?}").contains("denied"), "{sub:?}");
    wait_metric(
        metrics,
        &m("acl_denied_total{source=\"secure\",action=\"subscribe\"}"),
        1.0,
    );

    // Limits: a topic over 40 bytes is dropped; a payload over max_payload
    // is an `oversize` dead letter; over twice that the connection closes;
    // five fields are one too many.
    let long = format!("sensors/{}/telemetry", "x".repeat(30));
    publish(secure, &pki, Some(("dev1", "secret-1")), &long, "{}").unwrap();
    let limit = |l: &str| {
        m(&format!(
            "limits_hit_total{{source=\"secure\",limit=\"{l}\"}}"
        ))
    };
    wait_metric(metrics, &limit("topic_length"), 1.0);
    let big = format!(r#"{{"t":"{}"}}"#, "y".repeat(1500));
    publish(
        secure,
        &pki,
        Some(("dev1", "secret-1")),
        "sensors/dev1/telemetry",
        &big,
    )
    .unwrap();
    wait_metric(metrics, &limit("payload"), 1.0);
    let huge = "z".repeat(100_000);
    let err = publish(
        secure,
        &pki,
        Some(("dev1", "secret-1")),
        "sensors/dev1/telemetry",
        &huge,
    );
    assert!(
        err.is_err(),
        "a 100 kB payload must close the connection: {err:?}"
    );
    wait_metric(metrics, &limit("payload"), 2.0);
    publish(
        secure,
        &pki,
        Some(("dev1", "secret-1")),
        "sensors/dev1/telemetry",
        r#"{"a":1,"b":2,"c":3,"d":4,"e":5}"#,
    )
    .unwrap();
    wait_metric(metrics, &limit("fields"), 1.0);
    // dev2's own topic, last: everything before it is settled.
    publish(
        secure,
        &pki,
        Some(("dev2", "secret-2")),
        "sensors/dev2/telemetry",
        r#"{"t":2}"#,
    )
    .unwrap();
    wait_until_blocking(WAIT, "dev2's reading stored", || {
        stored_devices(api).len() == 2
    })
    .unwrap();
    assert_eq!(
        stored_devices(api),
        ["dev1", "dev2"],
        "nothing refused was stored"
    );
    assert_eq!(dead_kinds(api), ["oversize", "too_many_fields"]);

    // SIGHUP re-reads the password file: dev3 is added, dev1 removed.
    let next = dir.path().join("passwd.new");
    passwd(&next, true, "dev3", "secret-3");
    std::fs::set_permissions(&next, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::rename(&next, &pw).unwrap();
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(ferry.pid() as i32, libc::SIGHUP) };
    ferry.wait_log("password file re-read", WAIT);
    publish(
        secure,
        &pki,
        Some(("dev3", "secret-3")),
        "sensors/dev3/telemetry",
        r#"{"t":3}"#,
    )
    .unwrap();
    let err = publish(
        secure,
        &pki,
        Some(("dev1", "secret-1")),
        "sensors/dev1/telemetry",
        "{}",
    )
    .unwrap_err();
    assert!(err.contains("bad user name or password"), "{err}");

    // Plain MQTT to a TLS port fails the handshake, counted.
    {
        let mut s = TcpStream::connect(loopback(secure)).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        s.write_all(&raw_connect("plain")).unwrap();
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap_or(0);
        assert!(n == 0 || buf[0] != 0x20, "no CONNACK over plain TCP");
    }
    wait_metric(metrics, &m("tls_failures_total{source=\"secure\"}"), 1.0);

    // Mutual TLS: a certificate from the CA gets in, and its client id is
    // its device; no certificate, or a rogue one, fails the handshake.
    let good = pki.mosquitto_client_args(&pki.client);
    let good: Vec<&str> = good.iter().map(|a| a.to_str().unwrap()).collect();
    let mut args = good.clone();
    args.extend([
        "-i",
        "press-7",
        "-q",
        "1",
        "-t",
        "plant/press-7/data",
        "-m",
        r#"{"p":7}"#,
    ]);
    mosquitto("mosquitto_pub", mtls, &args).unwrap();
    let mut args = good.clone();
    args.extend([
        "-i",
        "press-7",
        "-q",
        "1",
        "-t",
        "plant/press-8/data",
        "-m",
        r#"{"p":8}"#,
    ]);
    mosquitto("mosquitto_pub", mtls, &args).unwrap();
    wait_metric(
        metrics,
        &m("acl_denied_total{source=\"mtls\",action=\"publish\"}"),
        1.0,
    );
    let err = mosquitto(
        "mosquitto_pub",
        mtls,
        &["--cafile", ca, "-t", "plant/x/data", "-m", "{}"],
    );
    assert!(err.is_err(), "no client certificate: {err:?}");
    let rogue = pki.mosquitto_client_args(&pki.rogue_client);
    let mut args: Vec<&str> = rogue.iter().map(|a| a.to_str().unwrap()).collect();
    args.extend(["-t", "plant/x/data", "-m", "{}"]);
    assert!(
        mosquitto("mosquitto_pub", mtls, &args).is_err(),
        "rogue client certificate"
    );
    wait_metric(metrics, &m("tls_failures_total{source=\"mtls\"}"), 2.0);

    // max_connections = 2: the third client gets CONNACK 3, counted.
    let (_a, code_a) = raw_client(plain, "a");
    let (_b, code_b) = raw_client(plain, "b");
    assert_eq!((code_a, code_b), (0, 0));
    let (_c, code_c) = raw_client(plain, "c");
    assert_eq!(code_c, 3, "server unavailable");
    wait_metric(
        metrics,
        &m("limits_hit_total{source=\"plain\",limit=\"connections\"}"),
        1.0,
    );
    assert_eq!(metric(metrics, &m("connections{source=\"plain\"}")), 2.0);
    ferry.wait_log(
        "refused: max_connections (2) clients are connected already",
        WAIT,
    );
    drop(_a);
    wait_metric(metrics, &m("connections{source=\"plain\"}"), 1.0);
    let (_d, code_d) = raw_client(plain, "d");
    assert_eq!(code_d, 0, "a slot is free again");

    wait_until_blocking(WAIT, "dev3's and press-7's readings stored", || {
        stored_devices(api).len() >= 4
    })
    .unwrap();
    assert_eq!(stored_devices(api), ["dev1", "dev2", "dev3", "press-7"]);

    // With device_front = "auto" and without TLS, logins or an ACL, devices
    // reach rumqttd directly: a topic over max_topic_length becomes a dead
    // letter, counted as the front counts its drops, and no connection
    // gauge is kept.
    let long = format!("hall/{}", "x".repeat(30));
    mosquitto(
        "mosquitto_pub",
        direct,
        &["-q", "1", "-t", &long, "-m", r#"{"t":1}"#],
    )
    .unwrap();
    mosquitto(
        "mosquitto_pub",
        direct,
        &["-q", "1", "-t", "hall/h1", "-m", r#"{"t":2}"#],
    )
    .unwrap();
    wait_until_blocking(WAIT, "h1's reading stored", || {
        stored_devices(api).len() >= 5
    })
    .unwrap();
    assert_eq!(stored_devices(api)[4], "h1");
    assert_eq!(
        dead_kinds(api).last().map(String::as_str),
        Some("topic_too_long")
    );
    wait_metric(
        metrics,
        &m("limits_hit_total{source=\"direct\",limit=\"topic_length\"}"),
        1.0,
    );
    let text = http_get(metrics, "/metrics");
    assert!(!text.contains("connections{source=\"direct\"}"), "{text}");
    ferry.wait_log("front=false", WAIT);
}

#[test]
fn world_readable_broker_keys_warn_or_refuse() {
    let pki = Pki::generate("gw-keys").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("broker.key");
    std::fs::copy(&pki.server.key, &key).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let pw = dir.path().join("passwd");
    passwd(&pw, true, "dev1", "secret-1");
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o604)).unwrap();
    let config = |policy: &str| {
        let path = dir.path().join(format!("{policy}.toml"));
        std::fs::write(
            &path,
            format!(
                "[gateway]\ninsecure_key_files = \"{policy}\"\n\n[sources.local]\ntype = \"mqtt_broker\"\n\
                 tls = {{ cert = \"{}\", key = \"{}\" }}\npassword_file = \"{}\"\n",
                pki.server.cert.display(),
                key.display(),
                pw.display()
            ),
        )
        .unwrap();
        path
    };
    let validate = |path: &Path| {
        Command::new(common::ferry_bin())
            .arg("validate")
            .arg(path)
            .output()
            .unwrap()
    };
    let warn = config("warn");
    let out = validate(&warn);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert_eq!(
        err,
        format!(
            "ferry: config warning: {w}:6: sources.local.tls.key: private key {k} is readable by every user (mode 644); chmod 600 it\n\
             ferry: config warning: {w}:7: sources.local.password_file: password file {p} is readable by every user (mode 604); chmod 600 it\n",
            w = warn.display(),
            k = key.display(),
            p = pw.display()
        )
    );
    let refuse = config("refuse");
    let out = validate(&refuse);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(
        err.contains(&format!(
            "{}:6: sources.local.tls.key: private key {} is readable by every user (mode 644); chmod 600 it (gateway.insecure_key_files = \"refuse\")",
            refuse.display(),
            key.display()
        )),
        "{err}"
    );
    assert!(
        err.contains("sources.local.password_file: password file"),
        "{err}"
    );

    // A plain-text password file is an error naming its line.
    std::fs::write(&pw, "# devices\ndev1:hunter2\n").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = validate(&refuse);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(
        err.contains(&format!(
            "sources.local.password_file: {}:2: user \"dev1\": not a hash (a plain-text password?)",
            pw.display()
        )),
        "{err}"
    );
}
