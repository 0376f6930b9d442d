//! The config: the embedded default, and each kind of problem with its exact
//! message and line.

use std::num::{NonZeroU16, NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use ferry_gateway::config::{
    Config, ConfigErrors, Encoding, LogLevel, SourceConfig, UplinkConfig, DEFAULT_TOML,
};

/// The problems of `text`, each as `(line, key, message)`.
fn problems(text: &str) -> Vec<(Option<usize>, String, String)> {
    match Config::from_toml(text, Path::new("test.toml")) {
        Ok(_) => panic!("expected errors, the config is valid:\n{text}"),
        Err(e) => e
            .errors
            .into_iter()
            .map(|e| (e.line, e.key, e.message))
            .collect(),
    }
}

/// The only problem of `text`.
fn problem(text: &str) -> (Option<usize>, String, String) {
    let mut all = problems(text);
    assert_eq!(all.len(), 1, "expected one problem, got {all:#?}");
    all.remove(0)
}

fn p(line: usize, key: &str, message: &str) -> (Option<usize>, String, String) {
    (Some(line), key.to_owned(), message.to_owned())
}

fn valid(text: &str) -> Config {
    Config::from_toml(text, Path::new("test.toml")).unwrap_or_else(|e| panic!("{e}"))
}

/// Lines 1-2: a source; 4-6: an uplink without TLS; `extra` from line 7.
fn with_uplink(extra: &str) -> String {
    format!(
        "[sources.local]\ntype = \"mqtt_broker\"\n\n[uplinks.cloud]\n\
         endpoint = \"127.0.0.1:8883\"\nplaintext = true\n{extra}"
    )
}

fn uplink(config: &Config) -> &UplinkConfig {
    &config.uplinks["cloud"]
}

#[test]
fn the_embedded_default_is_valid_and_has_the_documented_values() {
    let c = Config::default_embedded();
    assert_eq!(c.gateway.id, "ferry");
    assert_eq!(c.gateway.data_dir, PathBuf::from("./ferry-data"));
    assert_eq!(c.gateway.log_level, LogLevel::Info);
    assert_eq!(c.store.commit_interval, Duration::from_millis(250));
    assert_eq!(c.store.commit_max_records, NonZeroUsize::new(4096).unwrap());
    assert_eq!(c.store.cursor_flush_interval, Duration::from_secs(1));
    assert_eq!(c.store.cache_size, ByteSize::mib(1));
    assert_eq!(c.store.queue, NonZeroUsize::new(1024).unwrap());
    assert_eq!(c.sources.len(), 1);
    let SourceConfig::MqttBroker(local) = &c.sources["local"] else {
        panic!(
            "sources.local is not an mqtt_broker: {:?}",
            c.sources["local"]
        );
    };
    assert_eq!(local.listen.to_string(), "127.0.0.1:1883");
    assert_eq!(local.topics, ["sensors/{device}/telemetry"]);
    assert!(c.uplinks.is_empty(), "the default forwards nothing");
    assert_eq!(c.metrics.listen, Some("127.0.0.1:9108".parse().unwrap()));
    // The file states the same defaults as the types.
    assert_eq!(c.gateway, Default::default());
    assert_eq!(c.store, Default::default());
    assert_eq!(
        Config::from_toml(DEFAULT_TOML, Path::new("default.toml")).unwrap(),
        c
    );
}

#[test]
fn the_commented_uplink_in_the_default_is_valid_with_the_documented_defaults() {
    // Uncomment the example uplink (without TLS files, to need none).
    let block: Vec<&str> = DEFAULT_TOML
        .lines()
        .skip_while(|l| *l != "# [uplinks.iot_core]")
        .take_while(|l| l.starts_with('#'))
        .map(|l| l.strip_prefix("# ").unwrap_or(l))
        .filter(|l| !["ca =", "cert =", "key ="].iter().any(|k| l.starts_with(k)))
        .map(|l| {
            if l == "plaintext = false" {
                "plaintext = true"
            } else {
                l
            }
        })
        .collect();
    assert!(block.len() > 30, "the example uplink is missing: {block:?}");
    let text = format!(
        "[sources.local]\ntype = \"mqtt_broker\"\n{}\n",
        block.join("\n")
    );
    let full = valid(&text);
    let endpoint = "abc123-ats.iot.eu-west-1.amazonaws.com:8883";
    let minimal = valid(&format!(
        "[sources.local]\ntype = \"mqtt_broker\"\n[uplinks.iot_core]\n\
         endpoint = \"{endpoint}\"\nplaintext = true\n"
    ));
    assert_eq!(full.uplinks, minimal.uplinks);
}

#[test]
fn max_batch_records_defaults_by_encoding_and_is_bounded() {
    let json = valid(&with_uplink(""));
    assert_eq!(uplink(&json).max_batch_records, None);
    assert_eq!(uplink(&json).batch_records(), 500);
    let columnar = valid(&with_uplink("encoding = \"columnar\"\n"));
    assert_eq!(uplink(&columnar).batch_records(), usize::MAX);
    let set = valid(&with_uplink(
        "encoding = \"columnar\"\nmax_batch_records = 20\n",
    ));
    assert_eq!(uplink(&set).batch_records(), 20);
    assert_eq!(
        problem(&with_uplink("max_batch_records = 100001\n")),
        p(
            7,
            "uplinks.cloud.max_batch_records",
            "must be between 1 and 100000, got 100001"
        )
    );
    let (line, key, message) = problem(&with_uplink("max_batch_records = 0\n"));
    assert_eq!(
        (line, key.as_str()),
        (Some(7), "uplinks.cloud.max_batch_records")
    );
    assert!(
        message.contains("nonzero") || message.contains("at least 1"),
        "{message}"
    );
}

#[test]
fn the_commented_pipeline_and_route_in_the_default_are_valid() {
    let block: Vec<&str> = DEFAULT_TOML
        .lines()
        .skip_while(|l| *l != "# [devices.7]")
        .take_while(|l| l.starts_with('#'))
        .map(|l| l.strip_prefix("# ").unwrap_or(l))
        .collect();
    assert!(block.len() > 30, "the example is missing: {block:?}");
    let c = valid(&format!(
        "[sources.local]\ntype = \"mqtt_broker\"\n{}\n",
        block.join("\n")
    ));
    let steps: Vec<&str> = c.pipeline.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(steps, ["plausible", "1_math", "2_rename", "3_enrich"]);
    assert_eq!(c.pipeline.devices["7"].len(), 2);
    let r = &c.routes["minute"];
    assert_eq!(r.fields, ["voltage", "temp_c", "power"]);
    assert_eq!(r.deadband.as_ref().unwrap().absolute, Some(0.5));
    let w = r.window.as_ref().unwrap();
    assert_eq!(
        (w.size, w.grace),
        (Duration::from_secs(60), Duration::from_secs(10))
    );
    assert_eq!(r.batch_records.get(), 4096);
}

#[test]
fn uplink_defaults() {
    let c = valid(&with_uplink(""));
    let u = uplink(&c);
    assert_eq!(u.client_id, "{gateway}", "placeholders are kept");
    assert_eq!(u.client_id_for(&c.gateway.id), "ferry");
    assert_eq!(
        u.topic, "dt/ferry/{gateway}/telemetry",
        "placeholders are kept"
    );
    assert_eq!(u.encoding, Encoding::Json);
    assert_eq!(u.max_batch_bytes, ByteSize::kib(128));
    assert_eq!(u.max_batch_age, Duration::from_secs(1));
    assert_eq!(u.max_inflight, NonZeroU16::new(100).unwrap());
    assert_eq!(u.max_publishes_per_second, NonZeroU32::new(100).unwrap());
    assert_eq!(u.max_bytes_per_second, ByteSize::kib(512));
    assert_eq!(u.keep_alive, Duration::from_secs(30));
    assert_eq!(u.connect_timeout, Duration::from_secs(10));
    assert_eq!(u.puback_timeout, Duration::from_secs(10));
    assert_eq!(u.reconnect_min, Duration::from_secs(1));
    assert_eq!(u.reconnect_max, Duration::from_secs(120));
    assert_eq!(u.probe_interval, Duration::from_secs(1));
    assert_eq!(u.max_send_age, None);
    assert!(u.alpn.is_empty() && u.sources.is_empty());
    assert!(u.plaintext && u.ca.is_none() && u.cert.is_none() && u.key.is_none());
    let built = UplinkConfig {
        plaintext: true,
        ..UplinkConfig::new("127.0.0.1:8883")
    };
    assert_eq!(*u, built, "UplinkConfig::new has the same defaults");
}

#[test]
fn client_id() {
    let c = valid(&with_uplink("client_id = \"{gateway}-uplink\""));
    assert_eq!(uplink(&c).client_id_for("pi-7"), "pi-7-uplink");
    assert_eq!(
        problem(&with_uplink("client_id = \"{device}\"")),
        p(
            7,
            "uplinks.cloud.client_id",
            "unknown placeholder {device}; known: {gateway}"
        )
    );
    let long = format!("client_id = \"{{gateway}}{}\"", "x".repeat(124));
    assert_eq!(
        problem(&with_uplink(&long)),
        p(
            7,
            "uplinks.cloud.client_id",
            "is 129 bytes long with {gateway} filled in; IoT Core allows 128"
        )
    );
}

#[test]
fn syntax_error() {
    let e = problem("[gateway]\nid = \"x\"\ndata_dir = \n");
    assert_eq!(e.0, Some(3));
    assert_eq!(e.1, "");
    assert!(e.2.starts_with("invalid TOML: "), "{}", e.2);
    assert!(!e.2.contains('\n'));
}

#[test]
fn unknown_key_at_the_top() {
    assert_eq!(
        problem("[sources.local]\ntype = \"mqtt_broker\"\n\n[storage]\nx = 1\n"),
        p(
            4,
            "storage",
            "unknown key `storage`, expected one of the sections `gateway`, `store`, `sources`, `uplinks`, `metrics`, `pipeline`, `devices`, `routes`, `api`, `fleet`"
        )
    );
}

#[test]
fn unknown_key_in_a_section() {
    assert_eq!(
        problem("[sources.local]\ntype = \"mqtt_broker\"\n[store]\n\ncomit_interval = \"1s\"\n"),
        p(
            5,
            "store.comit_interval",
            "unknown field `comit_interval`, expected one of `commit_interval`, `commit_max_records`, \
             `cursor_flush_interval`, `cache_size`, `queue`, `max_disk`, `max_age`, `when_full`, `max_devices`, `max_series`, `max_fields_per_device`, `index_memory`"
        )
    );
}

#[test]
fn unknown_key_in_a_source() {
    assert_eq!(
        problem("[sources.local]\ntype = \"mqtt_broker\"\nlistne = \"0.0.0.0:1883\"\n"),
        p(
            3,
            "sources.local.listne",
            "unknown field `listne`, expected one of `listen`, `topics`, `device_field`, \
             `timestamp_field`, `max_payload`, `max_fields`, `max_connections`, \
             `max_topic_length`, `tls`, `password_file`, `acl`, `device_front`, `buffer`"
        )
    );
}

#[test]
fn unknown_key_in_an_uplink() {
    let (line, key, message) = problem(&with_uplink("window = \"1m\""));
    assert_eq!((line, key.as_str()), (Some(7), "uplinks.cloud.window"));
    assert!(
        message.starts_with("unknown field `window`, expected one of `endpoint`, `client_id`,"),
        "{message}"
    );
}

#[test]
fn wrong_type() {
    let base = "[sources.local]\ntype = \"mqtt_broker\"\n";
    assert_eq!(
        problem(&format!("{base}[store]\nqueue = \"many\"\n")),
        p(
            4,
            "store.queue",
            "invalid type: string \"many\", expected an integer of at least 1"
        )
    );
    assert_eq!(
        problem(&format!("{base}[gateway]\nlog_level = \"loud\"\n")),
        p(
            4,
            "gateway.log_level",
            "unknown variant `loud`, expected one of `error`, `warn`, `info`, `debug`, `trace`"
        )
    );
    assert_eq!(
        problem(&with_uplink("plaintext = \"yes\"").replace("plaintext = true\n", "")),
        p(
            6,
            "uplinks.cloud.plaintext",
            "invalid type: string \"yes\", expected a boolean"
        )
    );
}

#[test]
fn bad_duration() {
    assert_eq!(
        problem("[sources.local]\ntype = \"mqtt_broker\"\n[store]\ncommit_interval = \"10 parsecs\"\n"),
        p(
            4,
            "store.commit_interval",
            "invalid value: string \"10 parsecs\", expected a duration like \"10ms\", \"30s\" or \"2m\""
        )
    );
    assert_eq!(
        problem(&with_uplink("keep_alive = 30")),
        p(
            7,
            "uplinks.cloud.keep_alive",
            "invalid type: integer `30`, expected a duration like \"10ms\", \"30s\" or \"2m\""
        )
    );
}

#[test]
fn durations_out_of_range() {
    assert_eq!(
        problem("[sources.local]\ntype = \"mqtt_broker\"\n[store]\ncommit_interval = \"20s\"\n"),
        p(
            4,
            "store.commit_interval",
            "must be between 1ms and 10s, got 20s"
        )
    );
    assert_eq!(
        problem(&with_uplink("keep_alive = \"1s\"")),
        p(
            7,
            "uplinks.cloud.keep_alive",
            "must be between 5s and 20m, got 1s"
        )
    );
    assert_eq!(
        problem(&with_uplink(
            "reconnect_min = \"5m\"\nreconnect_max = \"1m\""
        )),
        p(
            8,
            "uplinks.cloud.reconnect_max",
            "must be at least reconnect_min"
        )
    );
    for (value, got) in [("50ms", "50ms"), ("2m", "2m")] {
        assert_eq!(
            problem(&with_uplink(&format!("probe_interval = \"{value}\""))),
            p(
                7,
                "uplinks.cloud.probe_interval",
                &format!("must be 0s (no probes) or between 100ms and 1m, got {got}")
            )
        );
    }
    let off = valid(&with_uplink("probe_interval = \"0s\""));
    assert_eq!(uplink(&off).probe_interval, Duration::ZERO);
    assert_eq!(
        problem(&with_uplink("max_send_age = \"0s\"")),
        p(
            7,
            "uplinks.cloud.max_send_age",
            "must be between 1s and 10years, got 0s"
        )
    );
    let day = valid(&with_uplink("max_send_age = \"1day\""));
    assert_eq!(uplink(&day).max_send_age, Some(Duration::from_secs(86_400)));
}

#[test]
fn bad_size() {
    assert_eq!(
        problem("[sources.local]\ntype = \"mqtt_broker\"\n[store]\ncache_size = \"4 MegaB\"\n"),
        p(
            4,
            "store.cache_size",
            "invalid value: string \"4 MegaB\", expected a size like \"64KiB\" or \"4MiB\""
        )
    );
}

#[test]
fn batch_over_128kib() {
    assert_eq!(
        problem(&with_uplink(
            "max_batch_bytes = \"256KiB\"\nmax_bytes_per_second = \"1MiB\""
        )),
        p(
            7,
            "uplinks.cloud.max_batch_bytes",
            "must be at most 128KiB (the IoT Core payload limit), got 256KiB"
        )
    );
    // 128 KB is less than 128 KiB: fine.
    assert_eq!(
        uplink(&valid(&with_uplink("max_batch_bytes = \"128KB\"")))
            .max_batch_bytes
            .as_u64(),
        128_000
    );
    assert_eq!(
        problem(&with_uplink("max_batch_bytes = 512")),
        p(
            7,
            "uplinks.cloud.max_batch_bytes",
            "must be at least 1KiB, got 512B"
        )
    );
}

#[test]
fn inflight_0_and_101() {
    assert_eq!(
        problem(&with_uplink("max_inflight = 0")),
        p(
            7,
            "uplinks.cloud.max_inflight",
            "must be between 1 and 100 (the IoT Core limit), got 0"
        )
    );
    assert_eq!(
        problem(&with_uplink("max_inflight = 101")),
        p(
            7,
            "uplinks.cloud.max_inflight",
            "must be between 1 and 100 (the IoT Core limit), got 101"
        )
    );
    assert_eq!(
        uplink(&valid(&with_uplink("max_inflight = 1")))
            .max_inflight
            .get(),
        1
    );
}

#[test]
fn unknown_source_type() {
    assert_eq!(
        problem("[sources.plc1]\ntype = \"opc_ua\"\naddress = \"192.168.1.50:4840\"\n"),
        p(
            2,
            "sources.plc1.type",
            "unknown source type `opc_ua`, expected `mqtt_broker`, `mqtt_subscribe`, `modbus_tcp` \
             or `modbus_rtu`"
        )
    );
    assert_eq!(
        problem("[sources.local]\nlisten = \"127.0.0.1:1883\"\n"),
        p(
            1,
            "sources.local",
            "missing field `type`, expected `mqtt_broker`, `mqtt_subscribe`, `modbus_tcp` or \
             `modbus_rtu`"
        )
    );
}

#[test]
fn sources_are_required_and_named_plainly() {
    assert_eq!(
        problem("[gateway]\nid = \"x\"\n"),
        (
            None,
            "sources".to_owned(),
            "no sources: define at least one, e.g. [sources.local] with type = \"mqtt_broker\""
                .to_owned()
        )
    );
    assert_eq!(
        problem("[sources.Local]\ntype = \"mqtt_broker\"\n"),
        p(
            1,
            "sources.Local",
            "invalid source name \"Local\": use 1 to 64 characters of a-z, 0-9, '_' and '-'"
        )
    );
}

#[test]
fn source_problems_found_by_the_adapter_name_their_key() {
    let text = "[sources.sub]\ntype = \"mqtt_subscribe\"\nbroker = \"localhost:1883\"\nqos = 2\n";
    assert_eq!(
        problem(text),
        p(4, "sources.sub.qos", "must be 0 or 1, not 2")
    );
}

#[test]
fn uplink_naming_a_missing_source() {
    assert_eq!(
        problem(&with_uplink("sources = [\"local\",\n  \"plc1\"]")),
        p(
            8,
            "uplinks.cloud.sources[1]",
            "no source named \"plc1\" (sources: local)"
        )
    );
    // A source that exists but is broken is not also "missing".
    let text = "[sources.local]\ntype = \"mqtt_broker\"\nlisten = 1\n\n[uplinks.cloud]\n\
                endpoint = \"127.0.0.1:8883\"\nplaintext = true\nsources = [\"local\"]\n";
    assert_eq!(problems(text).len(), 1, "{:#?}", problems(text));
}

#[test]
fn bad_topic_placeholder() {
    assert_eq!(
        problem(&with_uplink("topic = \"dt/{gatway}/telemetry\"")),
        p(
            7,
            "uplinks.cloud.topic",
            "unknown placeholder {gatway}; known: {gateway}, {device}, {source}"
        )
    );
    assert_eq!(
        problem(&with_uplink("topic = \"dt/{gateway/telemetry\"")),
        p(
            7,
            "uplinks.cloud.topic",
            "unbalanced '{'; placeholders are written {name}"
        )
    );
    assert_eq!(
        problem(&with_uplink("topic = \"dt/+/telemetry\"")),
        p(
            7,
            "uplinks.cloud.topic",
            "must not contain the MQTT wildcards '+' or '#'"
        )
    );
    let c = valid(&with_uplink("topic = \"dt/{source}/{gateway}/{device}\""));
    assert_eq!(uplink(&c).topic, "dt/{source}/{gateway}/{device}");
}

#[test]
fn topic_with_8_slashes() {
    assert_eq!(
        problem(&with_uplink("topic = \"a/b/c/d/e/f/g/h/{device}\"")),
        p(
            7,
            "uplinks.cloud.topic",
            "has 8 slashes; IoT Core allows 7 (not counting a Basic Ingest prefix)"
        )
    );
    valid(&with_uplink("topic = \"a/b/c/d/e/f/g/{device}\""));
}

#[test]
fn topic_too_long() {
    // 250 + 1 + "ferry": exactly 256 bytes.
    let long = "x".repeat(250);
    valid(&with_uplink(&format!("topic = \"{long}/{{gateway}}\"")));
    assert_eq!(
        problem(&with_uplink(&format!("topic = \"{long}/{{gateway}}x\""))),
        p(
            7,
            "uplinks.cloud.topic",
            "is 257 bytes long with {gateway} and {source} filled in; \
             IoT Core allows 256 (not counting a Basic Ingest prefix)"
        )
    );
}

#[test]
fn basic_ingest_topic_accepted() {
    // 7 slashes after the prefix, which does not count.
    let c = valid(&with_uplink(
        "topic = \"$aws/rules/ferry_rule/a/b/c/d/e/f/{gateway}/{device}\"",
    ));
    assert_eq!(
        uplink(&c).topic,
        "$aws/rules/ferry_rule/a/b/c/d/e/f/{gateway}/{device}"
    );
    assert_eq!(
        problem(&with_uplink("topic = \"$aws/rules/ferry-rule/x\"")),
        p(
            7,
            "uplinks.cloud.topic",
            "Basic Ingest topic needs a rule name of letters, digits and '_' after $aws/rules/, got \"ferry-rule\""
        )
    );
    assert_eq!(
        problem(&with_uplink("topic = \"$aws/things/x/shadow/update\"")),
        p(
            7,
            "uplinks.cloud.topic",
            "topics starting with '$' are reserved; the only one allowed is a Basic Ingest topic $aws/rules/RULE_NAME/..."
        )
    );
}

#[test]
fn missing_cert_when_not_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, "x").unwrap();
    let missing = dir.path().join("device.pem.crt");
    let text = format!(
        "[sources.local]\ntype = \"mqtt_broker\"\n\n[uplinks.cloud]\n\
         endpoint = \"abc-ats.iot.eu-west-1.amazonaws.com:8883\"\n\
         ca = {ca:?}\ncert = {missing:?}\n"
    );
    assert_eq!(
        problems(&text),
        vec![
            p(
                4,
                "uplinks.cloud.key",
                "missing field `key` (required unless plaintext = true)"
            ),
            p(
                7,
                "uplinks.cloud.cert",
                &format!("file not found: {}", missing.display())
            ),
        ]
    );
    let text = with_uplink(&format!("cert = {missing:?}"));
    assert_eq!(
        problem(&text),
        p(
            7,
            "uplinks.cloud.cert",
            "is set but plaintext = true turns TLS off; remove one of them"
        )
    );
}

#[test]
fn tls_files_that_exist_pass_and_a_readable_key_is_a_warning() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    // Real PEM: the loader loads the files as `ferry run` does.
    let pki = ferry_testkit::Pki::generate("gw-tls").unwrap();
    let file = |name: &str, mode: u32| {
        let path = dir.path().join(name);
        let from = match name {
            "ca.pem" => &pki.ca,
            "c.crt" => &pki.client.cert,
            _ => &pki.client.key,
        };
        std::fs::copy(from, &path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    };
    let (ca, cert, key) = (
        file("ca.pem", 0o644),
        file("c.crt", 0o644),
        file("k.key", 0o644),
    );
    let text = format!(
        "[sources.local]\ntype = \"mqtt_broker\"\n\n[uplinks.cloud]\n\
         endpoint = \"abc-ats.iot.eu-west-1.amazonaws.com:443\"\nalpn = [\"x-amzn-mqtt-ca\"]\n\
         ca = {ca:?}\ncert = {cert:?}\nkey = {key:?}\n"
    );
    let (c, warnings) = Config::from_toml_with_warnings(&text, Path::new("t.toml")).unwrap();
    assert_eq!(uplink(&c).key.as_deref(), Some(key.as_path()));
    assert_eq!(warnings.warnings.len(), 1, "{warnings}");
    assert_eq!(
        warnings.to_string(),
        format!(
            "ferry: config warning: t.toml:9: uplinks.cloud.key: private key {} is readable by every user (mode 644); chmod 600 it",
            key.display()
        )
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (_, warnings) = Config::from_toml_with_warnings(&text, Path::new("t.toml")).unwrap();
    assert!(warnings.warnings.is_empty(), "{warnings}");
}

#[test]
fn the_iot_core_example_is_valid_but_for_its_certificate_files() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/iot-core.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let e: ConfigErrors = match Config::from_toml(&text, &path) {
        Err(e) => e,
        Ok(_) => {
            // This machine has the files: nothing to check about them.
            assert!(Path::new("/etc/ferry/private.pem.key").exists());
            return;
        }
    };
    let expected: Vec<String> = [
        ("ca", "/etc/ferry/AmazonRootCA1.pem"),
        ("cert", "/etc/ferry/device.pem.crt"),
        ("key", "/etc/ferry/private.pem.key"),
    ]
    .iter()
    .filter(|(_, f)| !Path::new(f).exists())
    .map(|(k, f)| format!("uplinks.iot_core.{k}: file not found: {f}"))
    .collect();
    let got: Vec<String> = e
        .errors
        .iter()
        .map(|e| format!("{}: {}", e.key, e.message))
        .collect();
    assert_eq!(got, expected);

    // With the files in place, it is valid as it stands.
    let dir = tempfile::tempdir().unwrap();
    let mut text = text.clone();
    let pki = ferry_testkit::Pki::generate("pi-line-7").unwrap();
    for (f, from) in [
        ("AmazonRootCA1.pem", &pki.ca),
        ("device.pem.crt", &pki.client.cert),
        ("private.pem.key", &pki.client.key),
    ] {
        let file = dir.path().join(f);
        std::fs::copy(from, &file).unwrap();
        text = text.replace(&format!("/etc/ferry/{f}"), file.to_str().unwrap());
    }
    let (c, _) = Config::from_toml_with_warnings(&text, &path).unwrap();
    assert_eq!(c.gateway.id, "pi-line-7");
    assert_eq!(
        uplink_named(&c, "iot_core").client_id_for(&c.gateway.id),
        "pi-line-7"
    );
    assert!(matches!(
        c.sources["mosquitto"],
        SourceConfig::MqttSubscribe(_)
    ));
    // And so is its Basic Ingest alternative.
    let basic = text.replace(
        "topic = \"dt/ferry/{gateway}/telemetry\"",
        "topic = \"$aws/rules/ferry_telemetry/dt/ferry/{gateway}/telemetry\"",
    );
    assert!(basic.contains("\"$aws/rules/ferry_telemetry/dt/ferry/{gateway}/telemetry\"\n"));
    let c = Config::from_toml(&basic, &path).unwrap();
    assert!(uplink_named(&c, "iot_core")
        .topic
        .starts_with("$aws/rules/"));
}

fn uplink_named<'a>(c: &'a Config, name: &str) -> &'a UplinkConfig {
    &c.uplinks[name]
}

#[test]
fn two_uplinks_with_one_client_id_at_one_endpoint() {
    let text = with_uplink("\n[uplinks.second]\nendpoint = \"127.0.0.1:8883\"\nplaintext = true\nclient_id = \"{gateway}\"\n");
    assert_eq!(
        problem(&text),
        p(
            11,
            "uplinks.second.client_id",
            "uplink \"cloud\" already connects to 127.0.0.1:8883 as \"ferry\"; the broker would disconnect one whenever the other connects"
        )
    );
}

#[test]
fn several_errors_at_once_are_all_reported_in_file_order() {
    let text = r#"[gateway]
id = "pi/7"
colour = "blue"

[store]
commit_interval = "forever"
queue = 0

[sources.local]
type = "mqtt_broker"
listen = "localhost"

[sources.plc1]
type = "opc_ua"

[uplinks.cloud]
endpoint = "host"
plaintext = true
topic = "dt/{thing}"
max_inflight = 500
max_batch_bytes = "1MiB"
sources = ["plc2"]

[metrics]
listen = "127.0.0.1:9108"
"#;
    let got = problems(text);
    let keys: Vec<(usize, &str)> = got
        .iter()
        .map(|(l, k, _)| (l.unwrap(), k.as_str()))
        .collect();
    assert_eq!(
        keys,
        vec![
            (2, "gateway.id"),
            (3, "gateway.colour"),
            (6, "store.commit_interval"),
            (7, "store.queue"),
            (11, "sources.local.listen"),
            (14, "sources.plc1.type"),
            (17, "uplinks.cloud.endpoint"),
            (19, "uplinks.cloud.topic"),
            (20, "uplinks.cloud.max_inflight"),
            (21, "uplinks.cloud.max_batch_bytes"),
            (22, "uplinks.cloud.sources[0]"),
        ],
        "{got:#?}"
    );
    // And the display: one line per problem, FILE:LINE: KEY: message.
    let e = Config::from_toml(text, Path::new("ferry.toml")).unwrap_err();
    let shown = e.to_string();
    assert_eq!(shown.lines().count(), 11);
    assert_eq!(
        shown.lines().nth(1).unwrap(),
        "ferry: config error: ferry.toml:3: gateway.colour: unknown field `colour`, expected one of `id`, `data_dir`, `log_level`, `insecure_key_files`"
    );
}

#[test]
fn metrics_can_be_off_and_must_not_clash_with_a_broker() {
    let c = valid("[sources.local]\ntype = \"mqtt_broker\"\n");
    assert_eq!(c.metrics.listen, None);
    assert_eq!(
        problem(
            "[sources.local]\ntype = \"mqtt_broker\"\n[metrics]\nlisten = \"127.0.0.1:1883\"\n"
        ),
        p(
            4,
            "metrics.listen",
            "127.0.0.1:1883 is already the listen address of source \"local\""
        )
    );
}

#[test]
fn load_names_an_unreadable_file() {
    let e = Config::load(Path::new("/nonexistent/ferry.toml")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "ferry: config error: /nonexistent/ferry.toml: cannot read: No such file or directory (os error 2)"
    );
}

/// A build without the embedded broker refuses `mqtt_broker` at validation
/// (`.ci/run` runs this test alone with `--no-default-features`: the
/// others configure embedded brokers).
#[cfg(not(feature = "embedded-broker"))]
#[test]
fn a_build_without_the_embedded_broker_refuses_its_sources() {
    assert_eq!(
        problem("[sources.local]\ntype = \"mqtt_broker\"\n"),
        p(
            2,
            "sources.local.type",
            "`mqtt_broker`: this build of ferry has no embedded broker (cargo feature \
             `embedded-broker`); use `mqtt_subscribe` with an external broker"
        )
    );
}

#[test]
fn the_commented_fleet_table_in_the_default_is_valid_with_the_documented_defaults() {
    let block: Vec<&str> = DEFAULT_TOML
        .lines()
        .skip_while(|l| *l != "# [fleet]")
        .take_while(|l| l.starts_with('#'))
        .map(|l| l.strip_prefix("# ").unwrap_or(l))
        .collect();
    assert!(block.len() > 8, "the example [fleet] is missing: {block:?}");
    let full = valid(&with_uplink(&block.join("\n").replace("iot_core", "cloud")));
    let minimal = valid(&with_uplink("[fleet]\nuplink = \"cloud\"\n"));
    assert_eq!(full.fleet, minimal.fleet);
    let f = minimal.fleet.unwrap();
    assert_eq!(
        (
            f.shadow.as_str(),
            f.probation,
            f.report_interval,
            f.max_messages_per_second
        ),
        (
            "ferry",
            Duration::from_secs(60),
            Duration::from_secs(30),
            10
        )
    );
    // The thing is the uplink's client id unless named.
    assert_eq!(f.thing(&minimal.uplinks, &minimal.gateway.id), "ferry");
}

#[test]
fn fleet_problems_name_their_keys() {
    assert_eq!(
        problems(&with_uplink(
            "[fleet]\nuplink = \"nope\"\nshadow = \"a/b\"\nprobation = \"0s\"\n\
             report_interval = \"2d\"\nmax_messages_per_second = 0\n"
        )),
        [
            p(8, "fleet.uplink", "no uplink named \"nope\"; name the [uplinks.NAME] that connects with the thing's certificate"),
            p(9, "fleet.shadow", "\"a/b\" is not a valid shadow name (1 to 64 of A-Z a-z 0-9 _ : -)"),
            p(10, "fleet.probation", "must be between 1s and 1h, got 0s"),
            p(11, "fleet.report_interval", "must be between 1s and 1day, got 2days"),
            p(12, "fleet.max_messages_per_second", "must be between 1 and 100, got 0"),
        ]
    );
    assert_eq!(
        problem(&with_uplink("[fleet]\nuplink = \"cloud\"\nthing_name = \"has space\"\n")),
        p(9, "fleet.thing_name", "the thing name \"has space\" is not a valid AWS IoT thing name (1 to 128 of A-Z a-z 0-9 _ : -)")
    );
    assert_eq!(
        problem(&with_uplink("[fleet]\nuplink = \"cloud\"\nprobe = 1\n")).1,
        "fleet.probe"
    );
}
