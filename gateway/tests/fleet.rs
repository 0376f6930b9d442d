//! Configuration from the fleet through the device shadow, end to end: the
//! real `ferry` binary, the TLS mosquitto standing in for IoT Core (reached
//! through a proxy that can cut the link), and the Device Shadow stand-in
//! (moto's shadow rules on the reserved topics). The fleet's side sets
//! `state.desired.config` as UpdateThingShadow would, and reads
//! `state.reported` as GetThingShadow would.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use ferry_testkit::{
    free_port, mosquitto_pub, wait_until_blocking, CloudSubscriber, Mosquitto, Pki, Proxy,
    ShadowService,
};
use serde_json::{json, Value};

const THING: &str = "pi-line-7";
const SHADOW: &str = "ferry";
const WAIT: Duration = Duration::from_secs(30);

/// The cloud (TLS mosquitto, shadow service, a subscriber on `dt/#`), a
/// proxy in front of it, and a gateway directory.
struct Fleet {
    rt: tokio::runtime::Runtime,
    pki: Pki,
    _mosquitto: Mosquitto,
    shadow: ShadowService,
    proxy: Proxy,
    sub: CloudSubscriber,
    dir: tempfile::TempDir,
    broker: std::net::SocketAddr,
    metrics: std::net::SocketAddr,
}

impl Fleet {
    fn start() -> Fleet {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let pki = Pki::generate(THING).unwrap();
        let mosquitto = Mosquitto::tls(&pki).unwrap();
        let shadow = ShadowService::start(&pki, mosquitto.tls_addr()).unwrap();
        let proxy = rt.block_on(Proxy::start(mosquitto.tls_addr())).unwrap();
        let sub = rt
            .block_on(CloudSubscriber::connect(&pki, mosquitto.tls_addr(), "dt/#"))
            .unwrap();
        Fleet {
            rt,
            pki,
            _mosquitto: mosquitto,
            shadow,
            proxy,
            sub,
            dir: tempfile::tempdir().unwrap(),
            broker: loopback(free_port().unwrap()),
            metrics: loopback(free_port().unwrap()),
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The operator's file: what the fleet may send (the uplink to the
    /// proxy, the default topic) plus the keys that stay local: identity,
    /// data directory, certificates, [fleet].
    fn local_config(&self) -> String {
        let shared = self.fleet_config("dt/ferry/{gateway}/telemetry", self.proxy.addr());
        let shared = shared
            .replace(
                "[gateway]\n",
                &format!(
                    "[gateway]\nid = \"{THING}\"\ndata_dir = \"{}\"\n",
                    self.data().display()
                ),
            )
            .replace(
                "[uplinks.cloud]\n",
                &format!(
                    "[uplinks.cloud]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
                    self.pki.ca.display(),
                    self.pki.client.cert.display(),
                    self.pki.client.key.display()
                ),
            );
        format!(
            "{shared}\n[fleet]\nuplink = \"cloud\"\nprobation = \"3s\"\nreport_interval = \"1s\"\n"
        )
    }

    /// A config the fleet sends: the local one without the local keys, the
    /// uplink's `topic` and `endpoint` as given.
    fn fleet_config(&self, topic: &str, endpoint: std::net::SocketAddr) -> String {
        format!(
            r#"
[gateway]
log_level = "info"

[sources.local]
type = "mqtt_broker"
listen = "{broker}"
topics = ["sensors/{{device}}/telemetry"]

[uplinks.cloud]
endpoint = "{endpoint}"
topic = "{topic}"
max_batch_age = "50ms"
reconnect_min = "100ms"
reconnect_max = "500ms"
probe_interval = "0s"

[metrics]
listen = "{metrics}"
"#,
            broker = self.broker,
            metrics = self.metrics,
        )
    }

    fn start_ferry(&self) -> Ferry {
        Ferry::start(self.dir.path(), &self.local_config())
    }

    fn set_desired(&self, config: &str) -> u64 {
        self.shadow
            .set_desired(THING, SHADOW, json!({ "config": config }))
            .unwrap()
    }

    fn reported(&self) -> Value {
        self.shadow
            .get(THING, SHADOW)
            .unwrap()
            .and_then(|d| d.pointer("/state/reported").cloned())
            .unwrap_or(Value::Null)
    }

    /// Waits until `state.reported.applied` is `state` for `config`.
    fn wait_reported(&self, state: &str, config: &str) -> Value {
        let sha = sha256(config);
        let mut last = Value::Null;
        let waited = wait_until_blocking(WAIT, &format!("reported {state}"), || {
            last = self.reported();
            last.pointer("/applied/state") == Some(&json!(state))
                && last.pointer("/applied/sha256") == Some(&json!(sha))
        });
        if let Err(e) = waited {
            panic!("{e}; last reported: {last:#}");
        }
        last
    }

    /// Publishes reading `i` to the embedded broker and waits until the
    /// cloud got it on `topic`.
    fn deliver(&self, i: u64, topic: &str) {
        self.deliver_via(self.broker, i, topic);
    }

    /// [`Fleet::deliver`] through the embedded broker at `broker`.
    fn deliver_via(&self, broker: std::net::SocketAddr, i: u64, topic: &str) {
        mosquitto_pub(
            broker,
            None,
            &format!("sensors/{}/telemetry", i % 10),
            &seed_payload(i),
        )
        .unwrap();
        wait_until_blocking(WAIT, &format!("reading {i} on {topic}"), || {
            self.sub
                .messages()
                .iter()
                .any(|m| m.topic == topic && sequences(m).is_ok_and(|s| s.contains(&i)))
        })
        .unwrap();
    }

    fn metric(&self, sample: &str) -> f64 {
        metric_sample(self.metrics, sample).unwrap_or(0.0)
    }

    fn fleet_file(&self, name: &str) -> Option<String> {
        std::fs::read_to_string(self.data().join("fleet").join(name)).ok()
    }
}

fn sha256(text: &str) -> String {
    ferry_gateway::fleet::state::sha256_hex(text.as_bytes())
}

fn applies(result: &str) -> String {
    format!("ferry_fleet_applies_total{{result=\"{result}\"}}")
}

fn wait_log(ferry: &Ferry, needle: &str) {
    ferry.wait_log(needle, WAIT);
}

#[test]
fn a_valid_config_is_applied_and_reported_within_seconds() {
    let f = Fleet::start();
    let ferry = f.start_ferry();
    // The first report: Ferry's build and status, nothing applied yet.
    wait_until_blocking(WAIT, "the first report", || {
        f.reported().pointer("/ferry/arch") == Some(&json!(std::env::consts::ARCH))
    })
    .unwrap();
    f.deliver(1, "dt/ferry/pi-line-7/telemetry");

    let config = f.fleet_config("dt/fleet/{gateway}/v2", f.proxy.addr());
    let asked = std::time::Instant::now();
    let version = f.set_desired(&config);
    let reported = f.wait_reported("applied", &config);
    let took = asked.elapsed();
    // Probation 3 s, then the report (report_interval 1 s).
    assert!(
        took < Duration::from_secs(10),
        "applied and reported after {took:?}"
    );
    assert_eq!(reported["applied"]["version"].as_u64(), Some(version));
    assert_eq!(reported["applied"]["errors"], json!([]));
    assert_eq!(
        reported["ferry"]["version"],
        json!(env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(
        reported["status"]["uplinks"]["cloud"]["connected"],
        json!(true)
    );
    assert!(
        reported["status"]["records"].as_u64() >= Some(1),
        "{reported}"
    );
    // The new topic is in effect, and the config is kept beside the store.
    f.deliver(2, "dt/fleet/pi-line-7/v2");
    assert_eq!(
        f.fleet_file("config.toml").as_deref(),
        Some(config.as_str())
    );
    assert_eq!(f.fleet_file("good.toml").as_deref(), Some(config.as_str()));
    assert_eq!(f.metric(&applies("applied")), 1.0);
    assert_eq!(f.metric(&applies("rejected")), 0.0);
    drop(ferry);

    // A restart runs the fleet's config, not just the local file.
    let ferry = f.start_ferry();
    wait_log(
        &ferry,
        "running the config from the fleet over the local file",
    );
    f.deliver(3, "dt/fleet/pi-line-7/v2");
}

#[test]
fn an_invalid_config_is_refused_with_every_key_path_and_nothing_changes() {
    let f = Fleet::start();
    let _ferry = f.start_ferry();
    f.deliver(1, "dt/ferry/pi-line-7/telemetry");
    let bad = f.fleet_config("dt/ferry/+/bad", f.proxy.addr()).replace(
        "max_batch_age = \"50ms\"",
        "max_batch_age = \"50ms\"\nmax_inflight = 1000",
    );
    f.set_desired(&bad);
    let reported = f.wait_reported("rejected", &bad);
    let mut errors: Vec<&str> = reported["applied"]["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    errors.sort();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors[0].starts_with("uplinks.cloud.max_inflight: "),
        "{errors:?}"
    );
    assert!(errors[1].starts_with("uplinks.cloud.topic: "), "{errors:?}");
    // Keys that stay local are refused by name too.
    let local = format!(
        "[gateway]\ndata_dir = \"/tmp\"\n{}",
        f.fleet_config("t", f.proxy.addr())
            .replace("[gateway]\n", "")
    );
    f.set_desired(&local);
    let reported = f.wait_reported("rejected", &local);
    assert_eq!(
        reported["applied"]["errors"],
        json!(["gateway.data_dir: is set in the local config only (/etc/ferry/ferry.toml), never by the fleet"])
    );
    // Nothing changed: no fleet config, readings still on the old topic.
    assert_eq!(f.fleet_file("config.toml"), None);
    f.deliver(2, "dt/ferry/pi-line-7/telemetry");
    assert_eq!(f.metric(&applies("rejected")), 2.0);
    assert_eq!(f.metric(&applies("applied")), 0.0);
}

#[test]
fn a_config_that_cuts_the_uplink_off_is_rolled_back_and_reported_after_reconnect() {
    let f = Fleet::start();
    let ferry = f.start_ferry();
    f.deliver(1, "dt/ferry/pi-line-7/telemetry");
    // Nothing listens there: the uplink cannot connect with this config.
    let nowhere = loopback(free_port().unwrap());
    let breaking = f.fleet_config("dt/ferry/{gateway}/telemetry", nowhere);
    let asked = std::time::Instant::now();
    f.set_desired(&breaking);
    wait_log(&ferry, "fleet: config applied; in probation");
    let reported = f.wait_reported("rolled_back", &breaking);
    let took = asked.elapsed();
    assert!(
        took < Duration::from_secs(15),
        "rolled back and reported after {took:?}"
    );
    assert_eq!(
        reported["applied"]["errors"],
        json!([
            "uplinks.cloud: not connected within the probation of 3s; the last good config runs"
        ])
    );
    assert_eq!(
        f.fleet_file("config.toml"),
        None,
        "back to the local file alone"
    );
    assert_eq!(f.metric(&applies("rolled_back")), 1.0);
    // Locally: what was asked, what runs, and why they differ.
    let out = std::process::Command::new(ferry_bin())
        .args(["fleet", "status", "--config"])
        .arg(&ferry.config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert_eq!(
        text,
        format!(
            "fleet: thing pi-line-7, shadow ferry, over uplink cloud\n\
             asked: shadow version {version}, sha256 {sha}: rolled_back\n  \
             uplinks.cloud: not connected within the probation of 3s; the last good config runs\n\
             runs: the local file alone\n",
            version = reported["applied"]["version"],
            sha = sha256(&breaking),
        )
    );
    f.deliver(2, "dt/ferry/pi-line-7/telemetry");
    // The same config again (a later version) is not tried again.
    f.set_desired(&breaking.replace("log_level = \"info\"", "log_level = \"info\"\n"));
    f.deliver(3, "dt/ferry/pi-line-7/telemetry");
}

#[test]
fn a_config_that_cannot_change_in_place_is_applied_by_a_restart() {
    let f = Fleet::start();
    let mut ferry = f.start_ferry();
    f.deliver(1, "dt/ferry/pi-line-7/telemetry");
    // A second source: an embedded broker binds its port only at start.
    let second = loopback(free_port().unwrap());
    let config = format!(
        "{}\n[sources.second]\ntype = \"mqtt_broker\"\nlisten = \"{second}\"\nmax_connections = 100\n\
         topics = [\"sensors/{{device}}/telemetry\"]\n",
        f.fleet_config("dt/fleet/{gateway}/restarted", f.proxy.addr())
    );
    f.set_desired(&config);
    // Ferry stops by itself, asking to be started again (systemd does it:
    // Restart=on-failure; here the test does).
    let status = ferry.wait_exit(WAIT).expect("ferry restarts itself");
    assert_eq!(status.code(), Some(75), "{}", ferry.log().join("\n"));
    let ferry = f.start_ferry();
    wait_log(
        &ferry,
        "fleet: restarted to apply the config whole; in probation again",
    );
    let reported = f.wait_reported("applied", &config);
    assert_eq!(reported["applied"]["errors"], json!([]));
    f.deliver_via(second, 3, "dt/fleet/pi-line-7/restarted");
}

#[test]
fn a_config_change_gets_through_while_a_backlog_drains() {
    let f = Fleet::start();
    let ferry = f.start_ferry();
    f.deliver(0, "dt/ferry/pi-line-7/telemetry");
    // A backlog stored while the link is down, then drained through a slow
    // link (50 KB/s: about 10 s for 3,000 readings, a batch of 500 every
    // 1.6 s, so the 3 s probation sees a batch acknowledged).
    f.rt.block_on(f.proxy.cut());
    wait_log(&ferry, "uplink connection failed");
    let n = 3000u64;
    f.rt.block_on(async {
        let mut p = Publisher::connect(f.broker, "device-pub").await.unwrap();
        for i in 1..=n {
            p.publish(&seed_topic(i), seed_payload(i)).await.unwrap();
        }
    });
    f.proxy.throttle(50_000);
    f.proxy.restore();
    let all = |f: &Fleet| {
        let mut seen = std::collections::BTreeSet::new();
        for m in f.sub.messages() {
            seen.extend(sequences(&m).unwrap_or_default());
        }
        (1..=n).all(|i| seen.contains(&i))
    };
    // A change that leaves the uplink running (it keeps draining).
    let config = f
        .fleet_config("dt/ferry/{gateway}/telemetry", f.proxy.addr())
        .replace("log_level = \"info\"", "log_level = \"warn\"");
    f.set_desired(&config);
    wait_log(&ferry, "fleet: config passed its probation");
    assert!(
        !all(&f),
        "the backlog drained before the probation ended: the test proves nothing"
    );
    f.proxy.unthrottle();
    f.wait_reported("applied", &config);
    wait_until_blocking(WAIT, "the whole backlog", || all(&f)).unwrap();
}

#[test]
fn a_change_made_while_offline_is_applied_on_reconnect() {
    let f = Fleet::start();
    let ferry = f.start_ferry();
    f.deliver(1, "dt/ferry/pi-line-7/telemetry");
    f.rt.block_on(f.proxy.cut());
    wait_log(&ferry, "uplink connection failed");
    let config = f.fleet_config("dt/fleet/{gateway}/offline", f.proxy.addr());
    f.set_desired(&config);
    assert_eq!(f.fleet_file("config.toml"), None);
    f.proxy.restore();
    f.wait_reported("applied", &config);
    f.deliver(2, "dt/fleet/pi-line-7/offline");
}

#[test]
fn a_kill_during_apply_leaves_the_old_config_or_the_new_one() {
    let f = Fleet::start();
    let mut configs = vec![];
    let mut good_topic = "dt/ferry/pi-line-7/telemetry".to_owned();
    for round in 0..4u64 {
        let mut ferry = f.start_ferry();
        let config = f.fleet_config(&format!("dt/fleet/{{gateway}}/r{round}"), f.proxy.addr());
        configs.push(config.clone());
        f.set_desired(&config);
        // At a different moment of the apply each round: at once, as it
        // starts, once it is applied, in the middle of the probation.
        match round {
            0 => {}
            1 => wait_log(&ferry, "fleet: applying a config from the shadow"),
            _ => wait_log(&ferry, "fleet: config applied; in probation"),
        }
        if round == 3 {
            std::thread::sleep(Duration::from_millis(1500));
        }
        ferry.kill9();
        // On disk: a whole config the fleet sent, or none; a whole status.
        if let Some(c) = f.fleet_file("config.toml") {
            assert!(configs.contains(&c), "a config that was never sent: {c}");
        }
        if let Some(s) = f.fleet_file("status.json") {
            serde_json::from_str::<Value>(&s).expect("status.json is whole");
        }
        // After the restart the gateway settles: the config applied (it was
        // not yet, or passed its probation), or rolled back (the kill came
        // in its probation) and not tried again.
        let ferry = f.start_ferry();
        let sha = sha256(&config);
        let mut state = Value::Null;
        let mut errors = Value::Null;
        wait_until_blocking(WAIT, "the config applied or rolled back", || {
            let r = f.reported();
            state = r.pointer("/applied/state").cloned().unwrap_or(Value::Null);
            errors = r.pointer("/applied/errors").cloned().unwrap_or(Value::Null);
            r.pointer("/applied/sha256") == Some(&json!(sha))
                && (state == json!("applied") || state == json!("rolled_back"))
        })
        .unwrap();
        if state == json!("applied") {
            good_topic = format!("dt/fleet/pi-line-7/r{round}");
            assert_eq!(
                f.fleet_file("config.toml").as_deref(),
                Some(config.as_str())
            );
        } else {
            // Only a kill after the apply began rolls back, and says so.
            assert_eq!(
                errors,
                json!(["the gateway stopped during the probation (crash, kill or power loss); the last good config runs"])
            );
        }
        f.deliver(100 + round, &good_topic);
        drop(ferry);
    }
}

/// Many gateways, each its own thing, against one shadow service: the fleet
/// sets one config on every shadow and every gateway applies it and reports
/// it. `FERRY_FLEET_GATEWAYS` sets how many (default 50).
#[test]
fn fifty_gateways_converge_on_one_shadow_service() {
    let n: usize = std::env::var("FERRY_FLEET_GATEWAYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let pki = Pki::generate("fleet").unwrap();
    let mosquitto = Mosquitto::tls(&pki).unwrap();
    let shadow = ShadowService::start(&pki, mosquitto.tls_addr()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = |i: usize, broker: std::net::SocketAddr, topic: &str| {
        format!(
            r#"
[sources.local]
type = "mqtt_broker"
listen = "{broker}"

[uplinks.cloud]
endpoint = "{cloud}"
topic = "{topic}"
reconnect_min = "200ms"
reconnect_max = "2s"
probe_interval = "0s"
{local}"#,
            cloud = mosquitto.tls_addr(),
            local = if i == usize::MAX {
                String::new()
            } else {
                format!(
                    "ca = \"{ca}\"\ncert = \"{cert}\"\nkey = \"{key}\"\n\n\
                     [gateway]\nid = \"pi-{i}\"\ndata_dir = \"{data}\"\n\n\
                     [fleet]\nuplink = \"cloud\"\nprobation = \"2s\"\nreport_interval = \"1s\"\n",
                    ca = pki.ca.display(),
                    cert = pki.client.cert.display(),
                    key = pki.client.key.display(),
                    data = dir.path().join(format!("data-{i}")).display(),
                )
            }
        )
    };
    let mut gateways = Vec::new();
    for i in 0..n {
        let broker = loopback(free_port().unwrap());
        let gdir = dir.path().join(format!("g{i}"));
        std::fs::create_dir_all(&gdir).unwrap();
        let local = config(i, broker, "dt/ferry/{gateway}/telemetry");
        gateways.push((Ferry::start(&gdir, &local), broker));
    }
    // The fleet: one config for all (each keeps its own broker port).
    let mut shas = Vec::new();
    for (i, (_, broker)) in gateways.iter().enumerate() {
        let c = config(usize::MAX, *broker, "dt/fleet/{gateway}/v2");
        shas.push(sha256(&c));
        shadow
            .set_desired(&format!("pi-{i}"), SHADOW, json!({ "config": c }))
            .unwrap();
    }
    let started = std::time::Instant::now();
    let mut pending: Vec<usize> = (0..n).collect();
    wait_until_blocking(
        Duration::from_secs(120),
        "every gateway to report applied",
        || {
            pending.retain(|&i| {
                let doc = shadow.get(&format!("pi-{i}"), SHADOW).unwrap();
                let applied = doc
                    .as_ref()
                    .and_then(|d| d.pointer("/state/reported/applied"));
                !(applied.and_then(|a| a.get("state")) == Some(&json!("applied"))
                    && applied.and_then(|a| a.get("sha256")) == Some(&json!(shas[i])))
            });
            pending.is_empty()
        },
    )
    .unwrap_or_else(|e| panic!("{e}: {} not applied: {pending:?}", pending.len()));
    eprintln!(
        "{n} gateways applied and reported in {:?}",
        started.elapsed()
    );
    drop(gateways);
}
