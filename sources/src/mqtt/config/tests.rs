use super::*;

/// How the gateway embeds the source configs: an internally tagged enum.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Source {
    MqttBroker(BrokerSourceConfig),
    MqttSubscribe(SubscribeSourceConfig),
}

#[derive(Debug, Deserialize)]
struct Sources {
    sources: std::collections::BTreeMap<String, Source>,
}

#[test]
fn defaults() {
    let b: BrokerSourceConfig = toml::from_str("").unwrap();
    assert_eq!(b, BrokerSourceConfig::default());
    assert_eq!(b.listen.to_string(), "127.0.0.1:1883");
    assert_eq!(b.topics, ["sensors/{device}/telemetry"]);
    assert_eq!(b.max_payload, ByteSize::kib(64));
    assert_eq!(b.max_fields, 256);
    assert_eq!(b.max_connections, 1000);
    assert_eq!(b.buffer, ByteSize::kib(512));
    assert!(b.validate().is_empty());

    let s: SubscribeSourceConfig = toml::from_str(r#"broker = "localhost:1883""#).unwrap();
    assert_eq!(s, SubscribeSourceConfig::new("localhost:1883"));
    assert_eq!(s.qos, 1);
    assert_eq!(s.keep_alive, Duration::from_secs(30));
    assert_eq!(s.reconnect_min, Duration::from_secs(1));
    assert_eq!(s.reconnect_max, Duration::from_secs(60));
    assert_eq!(s.client_id_for("pi-line-7"), "ferry-pi-line-7");
    assert!(s.validate().is_empty(), "{:?}", s.validate());
}

#[test]
fn embedded_in_a_tagged_enum_with_typed_values() {
    let text = r#"
        [sources.local]
        type = "mqtt_broker"
        listen = "0.0.0.0:1883"
        topics = ["sensors/{device}/telemetry", "plant/+/{device}/#"]
        max_payload = "128KiB"

        [sources.upstream]
        type = "mqtt_subscribe"
        broker = "[::1]:1884"
        client_id = "edge-1"
        qos = 0
        username = "ferry"
        password = "secret"
        keep_alive = "1m"
        device_field = "device_id"
        timestamp_field = "ts"
        reconnect_min = "500ms"
        reconnect_max = "2m"
    "#;
    let parsed: Sources = toml::from_str(text).unwrap();
    match &parsed.sources["local"] {
        Source::MqttBroker(b) => {
            assert_eq!(b.listen.to_string(), "0.0.0.0:1883");
            assert_eq!(b.max_payload, ByteSize::kib(128));
            assert_eq!(b.topics.len(), 2);
            assert!(b.validate().is_empty());
        }
        other => panic!("{other:?}"),
    }
    match &parsed.sources["upstream"] {
        Source::MqttSubscribe(s) => {
            assert_eq!(s.keep_alive, Duration::from_secs(60));
            assert_eq!(s.reconnect_min, Duration::from_millis(500));
            assert_eq!(s.reconnect_max, Duration::from_secs(120));
            assert_eq!(s.client_id_for("gw"), "edge-1");
            assert_eq!(s.qos, 0);
            assert!(s.validate().is_empty(), "{:?}", s.validate());
            assert!(!format!("{s:?}").contains("secret"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn unknown_keys_are_refused() {
    let err = toml::from_str::<Sources>(
        r#"
        [sources.local]
        type = "mqtt_broker"
        topic = "x/{device}"
    "#,
    )
    .unwrap_err();
    assert!(err.to_string().contains("unknown field `topic`"), "{err}");
    let err = toml::from_str::<SubscribeSourceConfig>(
        r#"
        broker = "h:1"
        keepalive = "5s"
    "#,
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("unknown field `keepalive`"),
        "{err}"
    );
}

#[test]
fn broker_validate_lists_every_problem() {
    let b = BrokerSourceConfig {
        topics: vec![
            "a/{foo}".into(),
            "b/{device}".into(),
            "b/+".into(),
            "nodevice/x".into(),
        ],
        timestamp_field: Some(String::new()),
        max_payload: ByteSize::b(0),
        max_fields: 0,
        max_connections: 0,
        buffer: ByteSize::kib(1),
        ..BrokerSourceConfig::default()
    };
    assert_eq!(
        b.validate(),
        [
            "topics[0]: `a/{foo}`: level 2 (`{foo}`): unknown placeholder; the only \
             placeholder is `{device}`",
            "topics[2]: `b/+` has no `{device}` level, so `device_field` must name the \
             payload field that holds the device",
            "topics[2]: `b/+` subscribes to the same filter `b/+` as topics[1] \
             (`b/{device}`), which takes all its messages",
            "topics[3]: `nodevice/x` has no `{device}` level, so `device_field` must name \
             the payload field that holds the device",
            "timestamp_field: must not be empty",
            "max_payload: must be at least 1 byte",
            "max_fields: must be at least 1",
            "max_connections: must be at least 1",
            "buffer: 1.0 KiB is too small; at least 64KiB",
        ]
    );
    let empty = BrokerSourceConfig {
        topics: vec![],
        ..BrokerSourceConfig::default()
    };
    assert_eq!(
        empty.validate(),
        ["topics: at least one topic template is needed"]
    );
    // Without `{device}` is fine when the payload names the device.
    let by_field = BrokerSourceConfig {
        topics: vec!["telemetry/#".into()],
        device_field: Some("id".into()),
        ..BrokerSourceConfig::default()
    };
    assert!(by_field.validate().is_empty());
}

#[test]
fn subscribe_validate_lists_every_problem() {
    let s = SubscribeSourceConfig {
        client_id: Some(String::new()),
        qos: 2,
        password: Some("p".into()),
        keep_alive: Duration::from_millis(1500),
        device_field: Some("x".into()),
        timestamp_field: Some("x".into()),
        reconnect_min: Duration::from_secs(10),
        reconnect_max: Duration::from_secs(5),
        max_payload: ByteSize::mib(300),
        ..SubscribeSourceConfig::new("localhost")
    };
    assert_eq!(
        s.validate(),
        [
            "broker: `localhost`: expected host:port, such as `localhost:1883`",
            "client_id: must not be empty",
            "timestamp_field: is the same field as device_field",
            "max_payload: 300.0 MiB is over MQTT's limit of 256.0 MiB",
            "qos: must be 0 or 1, not 2",
            "password: set without username",
            "keep_alive: 1s 500ms must be whole seconds, at most 65535s",
            "reconnect_max: 5s is less than reconnect_min (10s)",
        ]
    );
}

#[test]
fn host_port() {
    assert_eq!(
        split_host_port("localhost:1883"),
        Ok(("localhost".into(), 1883))
    );
    assert_eq!(split_host_port("[::1]:1884"), Ok(("::1".into(), 1884)));
    assert_eq!(split_host_port("10.0.0.1:1"), Ok(("10.0.0.1".into(), 1)));
    assert!(split_host_port("::1:1883").is_err());
    assert!(split_host_port(":1883").is_err());
    assert!(split_host_port("h:99999").is_err());
    assert!(split_host_port("h:0").is_err());
    assert!(split_host_port("[::1:1883").is_err());
}

#[test]
fn the_device_front_is_used_unless_auto_and_no_setting_needs_it() {
    let plain: BrokerSourceConfig = toml::from_str("").unwrap();
    assert_eq!(plain.device_front, DeviceFront::Always);
    assert!(plain.uses_front());
    let auto: BrokerSourceConfig = toml::from_str(r#"device_front = "auto""#).unwrap();
    assert!(!auto.uses_front());
    for extra in [
        r#"password_file = "/etc/ferry/passwd""#,
        r#"acl = "client_id""#,
        r#"tls = { cert = "c.pem", key = "k.pem" }"#,
    ] {
        let b: BrokerSourceConfig =
            toml::from_str(&format!("device_front = \"auto\"\n{extra}")).unwrap();
        assert!(b.uses_front(), "{extra}");
    }
    let err = toml::from_str::<BrokerSourceConfig>(r#"device_front = "never""#).unwrap_err();
    assert!(
        err.to_string()
            .contains("unknown variant `never`, expected `auto` or `always`"),
        "{err}"
    );
}
