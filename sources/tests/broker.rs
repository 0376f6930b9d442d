//! The embedded broker source against real MQTT clients.
#![cfg(feature = "embedded-broker")]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use bytesize::ByteSize;
use common::{init_tracing, Ingest};
use ferry_core::record::{now_millis, Value};
use ferry_core::sink::{Item, Submission};
use ferry_sources::mqtt::{
    run_broker, run_broker_observed, BrokerEvent, BrokerObserver, BrokerSourceConfig, DeviceFront,
    Limit, Reject, SourceError,
};
use ferry_testkit::Publisher;
use tokio::sync::{mpsc, oneshot};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

const DEVICES: usize = 10;
const PER_DEVICE: usize = 200;
const WAIT: Duration = Duration::from_secs(30);

fn payload(device: usize, seq: usize) -> String {
    format!(
        r#"{{"client_id": {device}, "device_id": 7, "voltage": {}, "temperature": {}.5, "sequence": {seq}, "ok": {}, "unit": "V"}}"#,
        600 + seq,
        seq % 100,
        seq % 2 == 0
    )
}

fn expected_fields(device: usize, seq: usize) -> Vec<(Box<str>, Value)> {
    vec![
        ("client_id".into(), Value::Int(device as i64)),
        ("device_id".into(), Value::Int(7)),
        ("voltage".into(), Value::Int(600 + seq as i64)),
        ("temperature".into(), Value::Float((seq % 100) as f64 + 0.5)),
        ("sequence".into(), Value::Int(seq as i64)),
        ("ok".into(), Value::Bool(seq % 2 == 0)),
        ("unit".into(), Value::Str("V".into())),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn good_and_bad_messages_from_ten_devices() {
    init_tracing();
    let started = now_millis();
    let cfg = BrokerSourceConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        max_payload: ByteSize::kib(1),
        ..BrokerSourceConfig::default()
    };
    let (sink, mut ingest) = Ingest::new(8);
    let cancel = CancellationToken::new();
    let (ready_tx, ready_rx) = oneshot::channel();
    let source = tokio::spawn(run_broker(
        Arc::from("local"),
        cfg,
        sink,
        cancel.clone(),
        Some(ready_tx),
    ));
    let addr: SocketAddr = timeout(WAIT, ready_rx)
        .await
        .expect("broker ready in time")
        .expect("broker ready");
    assert_ne!(addr.port(), 0, "the actual port is reported");

    // Ten devices, each on its own connection, 200 QoS 1 messages each.
    let mut publishers = Vec::new();
    for d in 0..DEVICES {
        let p = Publisher::spawn(addr, &format!("dev-{d}"));
        let topic = format!("sensors/dev-{d}/telemetry");
        let client = p.client().clone();
        publishers.push(p);
        tokio::spawn(async move {
            for seq in 0..PER_DEVICE {
                client
                    .publish(&topic, rumqttc::QoS::AtLeastOnce, false, payload(d, seq))
                    .await
                    .expect("queue publish");
            }
        });
    }
    // And the bad ones.
    let oversize = format!(r#"{{"pad": "{}"}}"#, "x".repeat(2000));
    let bad: Vec<(&str, Vec<u8>, &str, &str)> = vec![
        (
            "sensors/dev-0/telemetry",
            b"voltage=647".to_vec(),
            Reject::NOT_JSON,
            "not JSON: expected value at line 1 column 1",
        ),
        (
            "sensors/dev-1/telemetry",
            b"[1, 2, 3]".to_vec(),
            Reject::NOT_OBJECT,
            "payload is a JSON array, not an object of fields",
        ),
        (
            "sensors/dev-2/telemetry",
            br#"{"voltage": 1, "temperature": {"c": 20}}"#.to_vec(),
            Reject::UNSUPPORTED_TYPE,
            "field `temperature`: nested object is not supported",
        ),
        (
            "sensors/dev-3/telemetry",
            oversize.clone().into_bytes(),
            Reject::OVERSIZE,
            "payload is 2011 bytes, over the limit of 1024 bytes",
        ),
        (
            "factory/dev-4/status",
            br#"{"up": true}"#.to_vec(),
            Reject::UNKNOWN_TOPIC,
            "topic `factory/dev-4/status` matches none of the source's topic templates",
        ),
    ];
    let mut bad_publisher = Publisher::spawn(addr, "bad-device");
    for (topic, body, _, _) in &bad {
        bad_publisher.queue(topic, body.clone()).await;
    }

    // Every message reaches ingest...
    let mut records = HashMap::new();
    let mut dead = Vec::new();
    let mut submissions = 0;
    while records.len() < DEVICES * PER_DEVICE || dead.len() < bad.len() {
        let sub = ingest.next(WAIT).await;
        submissions += 1;
        assert!(sub.items.len() <= 512, "batches are capped");
        // A submission waits in ingest for its commit: it holds its items,
        // not room for a full batch.
        assert_eq!(sub.items.capacity(), sub.items.len(), "exact-size batches");
        for item in ingest.commit(sub) {
            match item {
                Item::Record(r) => {
                    let Some(Value::Int(seq)) = r.field("sequence").cloned() else {
                        panic!("record without sequence: {r:?}")
                    };
                    let key = (r.device.to_string(), seq as usize);
                    assert!(records.insert(key, r).is_none(), "duplicate record");
                }
                Item::Dead(d) => dead.push(d),
            }
        }
    }
    let now = now_millis();
    for d in 0..DEVICES {
        for seq in 0..PER_DEVICE {
            let r = records
                .get(&(format!("dev-{d}"), seq))
                .unwrap_or_else(|| panic!("dev-{d} #{seq} missing"));
            assert_eq!(&*r.source, "local");
            assert_eq!(r.fields, expected_fields(d, seq), "dev-{d} #{seq}");
            assert!((started..=now).contains(&r.ts), "receipt time");
        }
    }
    assert_eq!(records.len(), DEVICES * PER_DEVICE);

    let by_kind: BTreeMap<&str, _> = dead.iter().map(|d| (d.kind, d)).collect();
    assert_eq!(
        by_kind.len(),
        bad.len(),
        "one dead letter per bad message: {dead:?}"
    );
    for (topic, body, kind, reason) in &bad {
        let d = by_kind[kind];
        assert_eq!(&*d.origin, *topic);
        assert_eq!(&*d.reason, *reason);
        assert_eq!(&*d.source, "local");
        assert_eq!(d.payload_len as usize, body.len());
        assert_eq!(d.payload, body[..body.len().min(1024)]);
    }
    assert!(submissions < DEVICES * PER_DEVICE, "messages are batched");
    // ... and is acknowledged once committed.
    for p in &mut publishers {
        p.wait_acked(PER_DEVICE, WAIT).await;
    }
    bad_publisher.wait_acked(bad.len(), WAIT).await;

    // Nothing more arrives.
    assert!(
        timeout(Duration::from_millis(200), ingest.rx.recv())
            .await
            .is_err(),
        "no extra submissions"
    );

    cancel.cancel();
    timeout(WAIT, source)
        .await
        .expect("source stops when cancelled")
        .expect("source task")
        .expect("source ends cleanly");
}

#[tokio::test]
async fn a_taken_address_is_a_clear_error() {
    init_tracing();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let cfg = BrokerSourceConfig {
        listen: addr,
        ..BrokerSourceConfig::default()
    };
    let (sink, _ingest) = Ingest::new(1);
    let err = run_broker(
        Arc::from("local"),
        cfg,
        sink,
        CancellationToken::new(),
        None,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, SourceError::Bind { .. }), "{err:?}");
    assert!(
        err.to_string()
            .starts_with(&format!("embedded MQTT broker cannot listen on {addr}: ")),
        "{err}"
    );
}

#[tokio::test]
async fn an_invalid_config_is_refused_with_every_problem() {
    let cfg = BrokerSourceConfig {
        topics: vec!["a/{foo}".into()],
        max_fields: 0,
        ..BrokerSourceConfig::default()
    };
    let (sink, _ingest) = Ingest::new(1);
    match run_broker(
        Arc::from("local"),
        cfg,
        sink,
        CancellationToken::new(),
        None,
    )
    .await
    {
        Err(SourceError::Config(problems)) => assert_eq!(problems.len(), 2, "{problems:?}"),
        other => panic!("{other:?}"),
    }
}

/// Devices connected directly (`device_front = "auto"`) get no
/// back-pressure: while ingest is stalled the broker keeps acknowledging
/// them and keeps only `buffer` bytes. The oldest messages are lost, and an
/// `overrun` dead letter says how many.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directly_connected_a_stalled_ingest_loses_the_oldest_messages_and_says_how_many() {
    init_tracing();
    const N: usize = 5000;
    let cfg = BrokerSourceConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        buffer: ByteSize::kib(64),
        device_front: DeviceFront::Auto,
        ..BrokerSourceConfig::default()
    };
    // Room for one submission: the source blocks on the second.
    let (sink, mut ingest) = Ingest::new(1);
    let cancel = CancellationToken::new();
    let (ready_tx, ready_rx) = oneshot::channel();
    let source = tokio::spawn(run_broker(
        Arc::from("local"),
        cfg,
        sink,
        cancel.clone(),
        Some(ready_tx),
    ));
    let addr = timeout(WAIT, ready_rx).await.unwrap().unwrap();
    let mut publisher = Publisher::spawn(addr, "dev-0");
    for seq in 0..N {
        publisher
            .queue(
                "sensors/dev-0/telemetry",
                format!(r#"{{"sequence": {seq}, "pad": "{}"}}"#, "x".repeat(80)),
            )
            .await;
    }
    // The broker acknowledges all of them, stored or not.
    publisher.wait_acked(N, WAIT).await;

    let mut received = Vec::new();
    let mut lost = 0;
    while received.len() + lost < N {
        let sub = ingest.next(WAIT).await;
        for item in ingest.commit(sub) {
            match item {
                Item::Record(r) => received.push(r.field("sequence").cloned()),
                Item::Dead(d) => {
                    assert_eq!(d.kind, Reject::OVERRUN, "{d:?}");
                    let count: usize = d
                        .reason
                        .strip_prefix("the embedded broker dropped ")
                        .and_then(|r| r.split(' ').next())
                        .and_then(|n| n.parse().ok())
                        .unwrap_or_else(|| panic!("no count in {:?}", d.reason));
                    lost += count;
                }
            }
        }
    }
    assert!(lost > 0, "64KiB cannot hold 5000 messages of 100 bytes");
    assert_eq!(received.len() + lost, N);
    // What arrives is in order and without duplicates.
    let seqs: Vec<i64> = received
        .into_iter()
        .map(|v| match v {
            Some(Value::Int(s)) => s,
            other => panic!("{other:?}"),
        })
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(*seqs.last().unwrap(), N as i64 - 1, "the newest are kept");
    cancel.cancel();
    timeout(WAIT, source).await.unwrap().unwrap().unwrap();
}

/// Sends every broker event down a channel.
struct Events(mpsc::UnboundedSender<BrokerEvent>);

impl BrokerObserver for Events {
    fn event(&self, _source: &str, event: BrokerEvent) {
        let _ = self.0.send(event);
    }
}

/// A broker source through the front (the default), an ingest that
/// commits nothing until the test does, and device `dev-0`
/// publishing `n` readings of ~100 bytes (`sequence` 0..n) in a task.
struct Flooded {
    ingest: Ingest,
    cancel: CancellationToken,
    source: tokio::task::JoinHandle<Result<(), SourceError>>,
    addr: SocketAddr,
    publisher: Publisher,
    publishing: tokio::task::JoinHandle<()>,
}

impl Flooded {
    const TOPIC: &str = "sensors/dev-0/telemetry";

    fn payload(seq: usize) -> String {
        format!(r#"{{"sequence": {seq}, "pad": "{}"}}"#, "x".repeat(80))
    }

    async fn start(n: usize) -> Flooded {
        init_tracing();
        let cfg = BrokerSourceConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            ..BrokerSourceConfig::default()
        };
        let (sink, ingest) = Ingest::new(1);
        let cancel = CancellationToken::new();
        let (ready_tx, ready_rx) = oneshot::channel();
        let source = tokio::spawn(run_broker(
            Arc::from("local"),
            cfg,
            sink,
            cancel.clone(),
            Some(ready_tx),
        ));
        let addr = timeout(WAIT, ready_rx).await.unwrap().unwrap();
        let publisher = Publisher::spawn(addr, "dev-0");
        let client = publisher.client().clone();
        let publishing = tokio::spawn(async move {
            for seq in 0..n {
                client
                    .publish(
                        Flooded::TOPIC,
                        rumqttc::QoS::AtLeastOnce,
                        false,
                        Flooded::payload(seq),
                    )
                    .await
                    .unwrap();
            }
        });
        Flooded {
            ingest,
            cancel,
            source,
            addr,
            publisher,
            publishing,
        }
    }

    async fn stop(self) {
        timeout(WAIT, self.publishing).await.unwrap().unwrap();
        self.cancel.cancel();
        timeout(WAIT, self.source).await.unwrap().unwrap().unwrap();
    }
}

/// Through the device front (the default) a publish is acknowledged only
/// once the commit that holds it is done: while ingest commits nothing, the
/// device hears nothing; at every moment it has been acknowledged at most
/// what was committed; and in the end every reading is stored once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_front_nothing_is_acknowledged_before_its_commit() {
    const N: usize = 2000;
    let mut f = Flooded::start(N).await;
    let first = f.ingest.next(WAIT).await;
    // Held uncommitted: a second on, not one PUBACK (rumqttd would have
    // sent them within milliseconds).
    let _ = timeout(Duration::from_secs(1), f.publisher.wait_acked(1, WAIT)).await;
    assert_eq!(f.publisher.acked(), 0, "acknowledged before any commit");

    let mut received = Vec::new();
    let mut sub = first;
    loop {
        assert!(
            f.publisher.acked() as usize <= received.len(),
            "{} acknowledged, {} committed",
            f.publisher.acked(),
            received.len()
        );
        for item in f.ingest.commit(sub) {
            match item {
                Item::Record(r) => received.push(r.field("sequence").cloned()),
                Item::Dead(d) => panic!("{d:?}"),
            }
        }
        if received.len() >= N {
            break;
        }
        sub = f.ingest.next(WAIT).await;
    }
    let want: Vec<_> = (0..N).map(|s| Some(Value::Int(s as i64))).collect();
    assert_eq!(received, want, "every message, once, in order");
    f.publisher.wait_acked(N, WAIT).await;
    f.stop().await;
}

/// Encodes MQTT packets for raw devices.
mod wire {
    use bytes::BytesMut;

    pub fn connect(client: &str, keep_alive: u16) -> BytesMut {
        let mut wire = BytesMut::new();
        let mut connect = rumqttc::Connect::new(client);
        connect.keep_alive = keep_alive;
        connect.write(&mut wire).unwrap();
        wire
    }

    pub fn publish(wire: &mut BytesMut, topic: &str, qos: u8, pkid: u16, payload: String) {
        let qos = rumqttc::qos(qos).unwrap();
        let mut p = rumqttc::Publish::new(topic, qos, payload);
        p.pkid = pkid;
        p.write(wire).unwrap();
    }

    pub fn pubrel(wire: &mut BytesMut, pkid: u16) {
        rumqttc::PubRel::new(pkid).write(wire).unwrap();
    }
}

/// Connects a raw device `client` (keep-alive `keep_alive` s) that sends
/// its CONNECT and three QoS 1 publishes (packet ids 1..=3, `sequence`
/// 100,001..=100,003) in one write; returns once its CONNACK came.
async fn raw_device(addr: SocketAddr, client: &str, keep_alive: u16) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut wire = wire::connect(client, keep_alive);
    for pkid in 1..=3u16 {
        let topic = format!("sensors/{client}/telemetry");
        let payload = format!(r#"{{"sequence": {}}}"#, 100_000 + u32::from(pkid));
        wire::publish(&mut wire, &topic, 1, pkid, payload);
    }
    let mut raw = tokio::net::TcpStream::connect(addr).await.unwrap();
    raw.write_all(&wire).await.unwrap();
    expect_bytes(&mut raw, &[0x20, 0x02, 0x00, 0x00], "a CONNACK").await;
    raw
}

/// Reads `want.len()` bytes from `raw` and compares them with `want`.
async fn expect_bytes(raw: &mut tokio::net::TcpStream, want: &[u8], what: &str) {
    use tokio::io::AsyncReadExt;
    let mut got = vec![0u8; want.len()];
    timeout(WAIT, raw.read_exact(&mut got))
        .await
        .unwrap_or_else(|_| panic!("no {what}"))
        .unwrap_or_else(|e| panic!("no {what}: {e}"));
    assert_eq!(got, want, "{what}");
}

/// Ingest catches up with `f`'s `n` readings and the raw device's three:
/// all stored, and the raw device gets its three PUBACKs, in order.
async fn catch_up(f: &mut Flooded, n: usize, raw: &mut tokio::net::TcpStream, client: &str) {
    let mut first = 0;
    let mut second = Vec::new();
    while first < n || second.len() < 3 {
        let sub = f.ingest.next(WAIT).await;
        for item in f.ingest.commit(sub) {
            match item {
                Item::Record(r) if &*r.device == client => {
                    second.push(r.field("sequence").cloned())
                }
                Item::Record(_) => first += 1,
                Item::Dead(d) => panic!("{d:?}"),
            }
        }
    }
    let want: Vec<_> = (1..=3).map(|k| Some(Value::Int(100_000 + k))).collect();
    assert_eq!(second, want);
    expect_bytes(
        raw,
        &[0x40, 2, 0, 1, 0x40, 2, 0, 2, 0x40, 2, 0, 3],
        "three PUBACKs, in order, once stored",
    )
    .await;
}

/// A device that connects while ingest commits nothing gets its CONNACK,
/// and what it sent in the same breath as its CONNECT waits for the
/// commit: no PUBACK until ingest catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_connecting_while_ingest_waits_is_acknowledged_after_the_commit() {
    use tokio::io::AsyncReadExt;
    const N: usize = 2000;
    let mut f = Flooded::start(N).await;
    let held = f.ingest.next(WAIT).await;
    let mut raw = raw_device(f.addr, "dev-1", 60).await;
    let mut more = [0u8; 1];
    assert!(
        timeout(Duration::from_secs(1), raw.read(&mut more))
            .await
            .is_err(),
        "a PUBACK came while ingest committed nothing"
    );
    let n = N - f.ingest.commit(held).len();
    catch_up(&mut f, n, &mut raw, "dev-1").await;
    f.stop().await;
}

/// A device whose publishes wait for their commit keeps its keep-alive:
/// the front answers its PINGREQs at once, and it stays connected through
/// a wait of three keep-alives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_device_keeps_its_keep_alive() {
    use tokio::io::AsyncWriteExt;
    const N: usize = 2000;
    let mut f = Flooded::start(N).await;
    let held = f.ingest.next(WAIT).await;
    let mut raw = raw_device(f.addr, "dev-1", 1).await;
    let mut ping = tokio::time::interval(Duration::from_millis(500));
    for _ in 0..6 {
        ping.tick().await;
        raw.write_all(&[0xc0, 0x00]).await.unwrap();
        expect_bytes(&mut raw, &[0xd0, 0x00], "a PINGRESP, not a PUBACK").await;
    }
    let n = N - f.ingest.commit(held).len();
    catch_up(&mut f, n, &mut raw, "dev-1").await;
    f.stop().await;
}

/// A device silent for 1.5 times its keep-alive is disconnected; one with
/// keep-alive 0 is accepted (MQTT 3.1.1: no keep-alive) and stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_is_the_front_s_to_watch() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (addr, _ingest, cancel, source) = front_source(ByteSize::kib(512)).await;
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    silent.write_all(&wire::connect("silent", 1)).await.unwrap();
    expect_bytes(&mut silent, &[0x20, 0x02, 0x00, 0x00], "a CONNACK").await;
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let n = timeout(WAIT, silent.read_to_end(&mut rest)).await.unwrap();
    assert_eq!(
        (n.unwrap(), started.elapsed() >= Duration::from_millis(1400)),
        (0, true)
    );

    let mut forever = tokio::net::TcpStream::connect(addr).await.unwrap();
    forever
        .write_all(&wire::connect("forever", 0))
        .await
        .unwrap();
    expect_bytes(
        &mut forever,
        &[0x20, 0x02, 0x00, 0x00],
        "a CONNACK for keep-alive 0",
    )
    .await;
    let mut one = [0u8; 1];
    assert!(
        timeout(Duration::from_secs(2), forever.read(&mut one))
            .await
            .is_err(),
        "a keep-alive 0 client was closed"
    );
    cancel.cancel();
    timeout(WAIT, source).await.unwrap().unwrap().unwrap();
}

/// How long a test waits to see that nothing more comes.
const QUIET: Duration = Duration::from_millis(100);

/// Takes submissions until `n` publishes are in, and then an ask for a
/// commit at once if none came with them and one comes within [`QUIET`];
/// commits them all. An ask is an empty submission once the device
/// waits, or publishes that ask once its window is known.
async fn take(ingest: &mut Ingest, n: usize) -> (usize, bool) {
    let mut held = Vec::new();
    let (mut got, mut asked) = (0, false);
    let is_ask = |sub: &Submission| {
        if sub.items.is_empty() {
            assert_eq!(sub.max_delay, Some(Duration::ZERO), "an empty submission");
        }
        sub.max_delay == Some(Duration::ZERO)
    };
    while got < n {
        let sub = ingest.next(WAIT).await;
        asked |= is_ask(&sub);
        got += sub.items.len();
        held.push(sub);
    }
    if !asked {
        if let Ok(Some(sub)) = timeout(QUIET, ingest.rx.recv()).await {
            assert!(sub.items.is_empty(), "{} more publishes", sub.items.len());
            asked = is_ask(&sub);
            held.push(sub);
        }
    }
    for sub in held {
        ingest.commit(sub);
    }
    (got, asked)
}

/// A broker source through the front on 127.0.0.1:0, its ingest, its token
/// and its task.
async fn front_source(
    buffer: ByteSize,
) -> (
    SocketAddr,
    Ingest,
    CancellationToken,
    tokio::task::JoinHandle<Result<(), SourceError>>,
) {
    init_tracing();
    let cfg = BrokerSourceConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        buffer,
        ..BrokerSourceConfig::default()
    };
    let (sink, ingest) = Ingest::new(8);
    let cancel = CancellationToken::new();
    let (ready_tx, ready_rx) = oneshot::channel();
    let source = tokio::spawn(run_broker(
        Arc::from("local"),
        cfg,
        sink,
        cancel.clone(),
        Some(ready_tx),
    ));
    let addr = timeout(WAIT, ready_rx).await.unwrap().unwrap();
    (addr, ingest, cancel, source)
}

/// QoS 2 (MQTT 3.1.1, 4.3.3): PUBREC once stored, a publish sent again
/// under the same packet id before PUBREL is stored once, PUBREL gets its
/// PUBCOMP, and the id is free for a new message afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos_2_is_stored_once_and_released() {
    use tokio::io::AsyncWriteExt;
    let (addr, mut ingest, cancel, source) = front_source(ByteSize::kib(512)).await;
    let mut raw = tokio::net::TcpStream::connect(addr).await.unwrap();
    raw.write_all(&wire::connect("q2", 60)).await.unwrap();
    expect_bytes(&mut raw, &[0x20, 0x02, 0x00, 0x00], "a CONNACK").await;
    let topic = "sensors/q2/telemetry";
    let mut w = bytes::BytesMut::new();
    wire::publish(&mut w, topic, 2, 5, r#"{"sequence": 1}"#.into());
    wire::publish(&mut w, topic, 2, 5, r#"{"sequence": 1}"#.into());
    raw.write_all(&w).await.unwrap();
    let mut stored = Vec::new();
    while stored.is_empty() {
        let sub = ingest.next(WAIT).await;
        stored.extend(ingest.commit(sub));
    }
    expect_bytes(
        &mut raw,
        &[0x50, 2, 0, 5, 0x50, 2, 0, 5],
        "a PUBREC for each",
    )
    .await;
    let mut w = bytes::BytesMut::new();
    wire::pubrel(&mut w, 5);
    wire::publish(&mut w, topic, 2, 5, r#"{"sequence": 2}"#.into());
    raw.write_all(&w).await.unwrap();
    while stored.len() < 2 {
        let sub = ingest.next(WAIT).await;
        stored.extend(ingest.commit(sub));
    }
    expect_bytes(
        &mut raw,
        &[0x70, 2, 0, 5, 0x50, 2, 0, 5],
        "a PUBCOMP, then a PUBREC for the new message",
    )
    .await;
    let seqs: Vec<_> = stored
        .iter()
        .map(|i| match i {
            Item::Record(r) => r.field("sequence").cloned(),
            Item::Dead(d) => panic!("{d:?}"),
        })
        .collect();
    assert_eq!(seqs, vec![Some(Value::Int(1)), Some(Value::Int(2))]);
    cancel.cancel();
    timeout(WAIT, source).await.unwrap().unwrap().unwrap();
}

/// A PUBLISH to a topic with a wildcard closes its connection (MQTT 3.1.1,
/// 3.3.2.1): not acknowledged, not stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wildcard_publish_topic_closes_the_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (addr, mut ingest, cancel, source) = front_source(ByteSize::kib(512)).await;
    let mut raw = tokio::net::TcpStream::connect(addr).await.unwrap();
    raw.write_all(&wire::connect("wild", 60)).await.unwrap();
    expect_bytes(&mut raw, &[0x20, 0x02, 0x00, 0x00], "a CONNACK").await;
    // rumqttc checks topics; the bytes are written by hand.
    let topic = b"sensors/+/telemetry";
    let mut w = vec![0x32, (2 + topic.len() + 2 + 2) as u8, 0, topic.len() as u8];
    w.extend_from_slice(topic);
    w.extend_from_slice(&[0, 1, b'{', b'}']);
    raw.write_all(&w).await.unwrap();
    let mut rest = Vec::new();
    let n = timeout(WAIT, raw.read_to_end(&mut rest)).await.unwrap();
    assert_eq!((n.unwrap(), rest), (0, vec![]), "closed without a PUBACK");
    assert!(
        timeout(Duration::from_millis(300), ingest.rx.recv())
            .await
            .is_err(),
        "nothing stored"
    );
    cancel.cancel();
    timeout(WAIT, source).await.unwrap().unwrap().unwrap();
}

/// A device that floods without waiting for PUBACKs is read only while less
/// than its window (64 KiB) waits for a commit: ingest never holds more of
/// it than that and one read, and `limit="backlog"` counts the waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_device_waits_within_its_window() {
    use tokio::io::AsyncWriteExt;
    const N: u16 = 2000;
    init_tracing();
    let cfg = BrokerSourceConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..BrokerSourceConfig::default()
    };
    let (sink, mut ingest) = Ingest::new(1024);
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let cancel = CancellationToken::new();
    let (ready_tx, ready_rx) = oneshot::channel();
    let source = tokio::spawn(run_broker_observed(
        Arc::from("local"),
        cfg,
        sink,
        Arc::new(Events(events_tx)),
        cancel.clone(),
        Some(ready_tx),
    ));
    let addr = timeout(WAIT, ready_rx).await.unwrap().unwrap();
    let mut raw = tokio::net::TcpStream::connect(addr).await.unwrap();
    raw.write_all(&wire::connect("flood", 60)).await.unwrap();
    expect_bytes(&mut raw, &[0x20, 0x02, 0x00, 0x00], "a CONNACK").await;
    let writer = tokio::spawn(async move {
        let mut w = bytes::BytesMut::new();
        for pkid in 1..=N {
            let payload = format!(r#"{{"sequence": {pkid}, "pad": "{}"}}"#, "x".repeat(180));
            wire::publish(&mut w, "sensors/flood/telemetry", 1, pkid, payload);
        }
        raw.write_all(&w).await.unwrap();
        raw
    });
    timeout(WAIT, async {
        while events.recv().await.unwrap() != BrokerEvent::Limit(Limit::Backlog) {}
    })
    .await
    .expect("the device never waited");
    // Everything ingest was handed so far, none of it committed.
    let mut held = Vec::new();
    let mut bytes = 0;
    while let Ok(sub) = ingest.rx.try_recv() {
        bytes += sub.items.len() * (2 + 2 + 2 + 23 + 210);
        held.push(sub);
    }
    assert!(
        bytes <= 64 * 1024 + 64 * 1024,
        "{bytes} bytes of publishes wait for their commit"
    );
    let mut stored = 0;
    for sub in held {
        stored += ingest.commit(sub).len();
    }
    while stored < usize::from(N) {
        let sub = ingest.next(WAIT).await;
        stored += ingest.commit(sub).len();
    }
    let _raw = timeout(WAIT, writer).await.unwrap().unwrap();
    cancel.cancel();
    timeout(WAIT, source).await.unwrap().unwrap().unwrap();
}

/// A client of the front that subscribes to `filter`, once its SUBACK came.
async fn subscriber(addr: SocketAddr, client: &str, filter: &str) -> rumqttc::EventLoop {
    let opts = rumqttc::MqttOptions::new(client, addr.ip().to_string(), addr.port());
    let (c, mut events) = rumqttc::AsyncClient::new(opts, 100);
    c.subscribe(filter, rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    timeout(WAIT, async {
        loop {
            if let rumqttc::Event::Incoming(rumqttc::Packet::SubAck(a)) =
                events.poll().await.unwrap()
            {
                assert_eq!(a.return_codes.len(), 1);
                break;
            }
        }
    })
    .await
    .expect("no SUBACK");
    events
}

/// The next `n` publishes an event loop receives: topic and payload.
async fn received(events: &mut rumqttc::EventLoop, n: usize) -> Vec<(String, String)> {
    let mut got = Vec::new();
    timeout(WAIT, async {
        while got.len() < n {
            if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) =
                events.poll().await.unwrap()
            {
                got.push((p.topic, String::from_utf8(p.payload.to_vec()).unwrap()));
            }
        }
    })
    .await
    .expect("publishes missing");
    got
}

/// Devices that subscribe get other devices' publishes (through rumqttd),
/// and a retained publish reaches a later subscriber; everything is stored
/// all the same, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_subscribe_to_each_other_through_the_front() {
    let (addr, mut ingest, cancel, source) = front_source(ByteSize::kib(512)).await;
    let mut listener = subscriber(addr, "listener", "sensors/+/telemetry").await;
    let mut talker = Publisher::spawn(addr, "talker");
    let topic = "sensors/talker/telemetry";
    for seq in 0..5 {
        talker
            .queue(topic, format!(r#"{{"sequence": {seq}}}"#))
            .await;
    }
    let mut stored = 0;
    while stored < 5 {
        let sub = ingest.next(WAIT).await;
        stored += ingest.commit(sub).len();
    }
    talker.wait_acked(5, WAIT).await;
    let want: Vec<_> = (0..5)
        .map(|seq| (topic.to_owned(), format!(r#"{{"sequence": {seq}}}"#)))
        .collect();
    assert_eq!(received(&mut listener, 5).await, want);

    // Retained: kept by rumqttd for whoever subscribes later.
    talker
        .client()
        .publish(topic, rumqttc::QoS::AtLeastOnce, true, r#"{"sequence": 9}"#)
        .await
        .unwrap();
    let sub = ingest.next(WAIT).await;
    assert_eq!(ingest.commit(sub).len(), 1);
    talker.wait_acked(1, WAIT).await;
    let mut late = subscriber(addr, "late", topic).await;
    assert_eq!(
        received(&mut late, 1).await,
        vec![(topic.to_owned(), r#"{"sequence": 9}"#.to_owned())]
    );
    assert!(
        timeout(Duration::from_millis(300), ingest.rx.recv())
            .await
            .is_err(),
        "stored once"
    );
    cancel.cancel();
    timeout(WAIT, source).await.unwrap().unwrap().unwrap();
}

/// A lone publish rides the commit interval; a device that publishes again
/// as soon as it is acknowledged and then goes quiet, waiting for its
/// acknowledgements (a window of one, or a full in-flight window), asks
/// for a commit at once; a device on its own schedule does not until 20
/// of its publishes wait (the usual client window, full).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_device_asks_for_a_commit_at_once() {
    let (addr, mut ingest, cancel, source) = front_source(ByteSize::kib(512)).await;
    let mut p = Publisher::spawn(addr, "dev-0");
    let topic = "sensors/dev-0/telemetry";
    let reading = |seq: usize| format!(r#"{{"sequence": {seq}}}"#);
    p.queue(topic, reading(0)).await;
    let sub = ingest.next(WAIT).await;
    assert_eq!(sub.max_delay, None, "one publish waits");
    assert_eq!(ingest.commit(sub).len(), 1);
    p.wait_acked(1, WAIT).await;

    // One at a time, each as soon as the last is acknowledged (within 2 ms
    // of it: on a loaded machine some take longer and ride the interval).
    let mut asked = 0;
    for seq in 1..=20 {
        p.queue(topic, reading(seq)).await;
        let (stored, ask) = take(&mut ingest, 1).await;
        assert_eq!(stored, 1);
        asked += usize::from(ask);
        p.wait_acked(1, WAIT).await;
    }
    assert!(
        asked > 0,
        "none of 20 answered publishes asked for a commit"
    );

    // A device on its own schedule: it publishes some time after its last
    // PUBACK, 19 readings wait, and no commit is asked for; the 20th (a
    // full window of paho's and mosquitto's clients) asks.
    tokio::time::sleep(Duration::from_millis(100)).await;
    for seq in 21..=39 {
        p.queue(topic, reading(seq)).await;
    }
    let mut held = Vec::new();
    let mut waiting = 0;
    while waiting < 19 {
        let sub = ingest.next(WAIT).await;
        assert_eq!(sub.max_delay, None, "asked at once with {waiting} waiting");
        assert!(!sub.items.is_empty(), "an ask with {waiting} waiting");
        waiting += sub.items.len();
        held.push(sub);
    }
    assert!(
        timeout(QUIET, ingest.rx.recv()).await.is_err(),
        "a commit asked for with 19 waiting"
    );
    p.queue(topic, reading(40)).await;
    let sub = ingest.next(WAIT).await;
    assert_eq!(
        (sub.items.len(), sub.max_delay),
        (1, Some(Duration::ZERO)),
        "the 20th asks"
    );
    held.push(sub);
    for sub in held {
        ingest.commit(sub);
    }
    p.wait_acked(20, WAIT).await;

    // A full in-flight window (the publisher's is 100): the first waits
    // for the interval; the next ones are sent as soon as the last are
    // acknowledged and ask for their commit once the window is full.
    for seq in 41..541 {
        p.queue(topic, reading(seq)).await;
    }
    let mut asked = 0;
    for round in 0..5 {
        let (stored, ask) = take(&mut ingest, 100).await;
        assert_eq!(stored, 100, "window {round}");
        asked += usize::from(ask && round > 0);
    }
    assert!(asked > 0, "no full window asked for its commit");
    p.wait_acked(500, WAIT).await;
    cancel.cancel();
    timeout(WAIT, source).await.unwrap().unwrap().unwrap();
}

/// A client connecting under the id of a connected one ends the older
/// session (MQTT 3.1.1, 3.1.4-2), also for devices that only publish
/// (the front's own sessions: they have no connection to rumqttd); the
/// newer one publishes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_connection_under_one_client_id_ends_the_first() {
    use tokio::io::AsyncReadExt;
    let (addr, mut ingest, cancel, source) = front_source(ByteSize::kib(512)).await;
    let acks = [0x40, 2, 0, 1, 0x40, 2, 0, 2, 0x40, 2, 0, 3];
    // Each sends three publishes with its CONNECT.
    let mut first = raw_device(addr, "dev-1", 60).await;
    let mut stored = 0;
    while stored < 3 {
        let sub = ingest.next(WAIT).await;
        stored += ingest.commit(sub).len();
    }
    expect_bytes(&mut first, &acks, "the first session's PUBACKs").await;

    let mut second = raw_device(addr, "dev-1", 60).await;
    let mut rest = Vec::new();
    timeout(WAIT, first.read_to_end(&mut rest))
        .await
        .expect("the first session closed")
        .unwrap();
    assert!(rest.is_empty(), "closed without more packets: {rest:02x?}");
    let mut stored = 0;
    while stored < 3 {
        let sub = ingest.next(WAIT).await;
        stored += ingest.commit(sub).len();
    }
    expect_bytes(&mut second, &acks, "the second session's PUBACKs").await;
    cancel.cancel();
    timeout(WAIT, source).await.unwrap().unwrap().unwrap();
}

/// A device with a will: rumqttd publishes it to subscribers when the
/// device's connection is lost, not when it says DISCONNECT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_device_s_will_reaches_its_subscribers() {
    let (addr, _ingest, cancel, source) = front_source(ByteSize::kib(512)).await;
    let mut watcher = subscriber(addr, "watcher", "status/+").await;
    for (client, goodbye) in [("polite", true), ("lost", false)] {
        let mut opts = rumqttc::MqttOptions::new(client, addr.ip().to_string(), addr.port());
        opts.set_last_will(rumqttc::LastWill::new(
            format!("status/{client}"),
            "gone",
            rumqttc::QoS::AtLeastOnce,
            false,
        ));
        let (c, mut events) = rumqttc::AsyncClient::new(opts, 10);
        timeout(WAIT, async {
            while !matches!(
                events.poll().await.unwrap(),
                rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))
            ) {}
        })
        .await
        .expect("CONNACK");
        if goodbye {
            c.disconnect().await.unwrap();
            // Polled until the DISCONNECT is out and the connection ends.
            let _ = timeout(WAIT, async { while events.poll().await.is_ok() {} }).await;
        }
        // The lost device's connection just ends.
        drop((c, events));
    }
    assert_eq!(
        received(&mut watcher, 1).await,
        vec![("status/lost".to_owned(), "gone".to_owned())],
        "only the lost device's will"
    );
    cancel.cancel();
    timeout(WAIT, source).await.unwrap().unwrap().unwrap();
}

/// A persistent session (clean session 0) is rumqttd's: what is published
/// to its filter while the device is away is delivered when it returns,
/// with the session-present flag in its CONNACK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_session_gets_what_came_while_it_was_away() {
    let (addr, mut ingest, cancel, source) = front_source(ByteSize::kib(512)).await;
    let session = |clean: bool| {
        let mut opts = rumqttc::MqttOptions::new("keeper", addr.ip().to_string(), addr.port());
        opts.set_clean_session(clean);
        rumqttc::AsyncClient::new(opts, 10)
    };
    let (c, mut events) = session(false);
    c.subscribe("commands/keeper", rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    timeout(WAIT, async {
        while !matches!(
            events.poll().await.unwrap(),
            rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))
        ) {}
    })
    .await
    .expect("SUBACK");
    c.disconnect().await.unwrap();
    let _ = timeout(WAIT, async { while events.poll().await.is_ok() {} }).await;
    drop((c, events));

    let mut sender = Publisher::spawn(addr, "sender");
    sender.queue("commands/keeper", r#"{"open": 1}"#).await;
    let sub = ingest.next(WAIT).await;
    assert_eq!(ingest.commit(sub).len(), 1);
    sender.wait_acked(1, WAIT).await;

    let (_c, mut events) = session(false);
    let present = timeout(WAIT, async {
        loop {
            if let rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(a)) =
                events.poll().await.unwrap()
            {
                return a.session_present;
            }
        }
    })
    .await
    .expect("CONNACK");
    assert!(present, "the session was kept");
    assert_eq!(
        received(&mut events, 1).await,
        vec![("commands/keeper".to_owned(), r#"{"open": 1}"#.to_owned())]
    );
    cancel.cancel();
    timeout(WAIT, source).await.unwrap().unwrap().unwrap();
}
