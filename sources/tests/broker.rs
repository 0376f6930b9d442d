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
use ferry_core::sink::Item;
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
        // All ~245 KB of the messages below wait at once (ingest is read
        // only once every PUBACK is in): far under half of this buffer, so
        // no early commit is due however slowly the machine runs. (Half of
        // the default 512 KiB is barely above them.)
        buffer: ByteSize::mib(2),
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

    // Every message is acknowledged by the broker...
    for p in &mut publishers {
        p.wait_acked(PER_DEVICE, WAIT).await;
    }
    bad_publisher.wait_acked(bad.len(), WAIT).await;

    // ... and reaches ingest.
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
        // Far under half of `buffer` waits: the commit interval applies.
        assert_eq!(sub.max_delay, None);
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

/// A broker source through the front (the default) with a 64 KiB `buffer`,
/// an ingest that takes nothing until the test commits, and device `dev-0`
/// publishing `n` readings of ~100 bytes (`sequence` 0..n) in a task.
struct Flooded {
    ingest: Ingest,
    events: mpsc::UnboundedReceiver<BrokerEvent>,
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

    /// A reading's size as the front's backlog counts it.
    fn size(seq: usize) -> usize {
        4 + Self::TOPIC.len() + Self::payload(seq).len()
    }

    async fn start(n: usize) -> Flooded {
        init_tracing();
        let cfg = BrokerSourceConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            buffer: ByteSize::kib(64),
            ..BrokerSourceConfig::default()
        };
        let (sink, ingest) = Ingest::new(1);
        let (events_tx, events) = mpsc::unbounded_channel();
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
            events,
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

/// Through the device front (the default), back-pressure reaches the
/// devices: while ingest is stalled the front stops reading once half of
/// `buffer` waits in the broker, so the same flood that overruns a direct
/// broker (above) loses nothing; it is slowed down, and
/// `limit="backlog"` counts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_front_a_stalled_ingest_slows_devices_and_loses_nothing() {
    const N: usize = 5000;
    let mut f = Flooded::start(N).await;
    // Ingest takes nothing yet: the front pauses the device.
    timeout(WAIT, async {
        loop {
            match f.events.recv().await.unwrap() {
                BrokerEvent::Limit(Limit::Backlog) => break,
                BrokerEvent::Connected => {}
                other => panic!("{other:?}"),
            }
        }
    })
    .await
    .expect("the device was not slowed down");
    // Still nothing taken: a second on, the device is still held back
    // (without the pause rumqttd acknowledges all of them in a few
    // milliseconds, as above, and its 64 KiB log loses most).
    let mut acked = 0;
    let _ = timeout(Duration::from_secs(1), async {
        while acked < N {
            f.publisher.wait_acked(1, WAIT).await;
            acked += 1;
        }
    })
    .await;
    assert!(
        acked < N / 2,
        "{acked} of {N} acknowledged while ingest took none"
    );

    let mut received = Vec::new();
    while received.len() < N {
        let sub = f.ingest.next(WAIT).await;
        for item in f.ingest.commit(sub) {
            match item {
                Item::Record(r) => received.push(r.field("sequence").cloned()),
                Item::Dead(d) => panic!("{d:?}"),
            }
        }
    }
    let want: Vec<_> = (0..N).map(|s| Some(Value::Int(s as i64))).collect();
    assert_eq!(received, want, "every message, once, in order");
    f.publisher.wait_acked(N - acked, WAIT).await;
    f.stop().await;
}

/// Connects a raw device `client` (keep-alive `keep_alive` s) that sends
/// its CONNECT and three QoS 1 publishes (packet ids 1..=3, `sequence`
/// 100,001..=100,003) in one write; returns once its CONNACK came.
async fn raw_device(addr: SocketAddr, client: &str, keep_alive: u16) -> tokio::net::TcpStream {
    use bytes::BytesMut;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut wire = BytesMut::new();
    let mut connect = rumqttc::Connect::new(client);
    connect.keep_alive = keep_alive;
    connect.write(&mut wire).unwrap();
    for pkid in 1..=3u16 {
        let mut p = rumqttc::Publish::new(
            format!("sensors/{client}/telemetry"),
            rumqttc::QoS::AtLeastOnce,
            format!(r#"{{"sequence": {}}}"#, 100_000 + u32::from(pkid)),
        );
        p.pkid = pkid;
        p.write(&mut wire).unwrap();
    }
    let mut raw = tokio::net::TcpStream::connect(addr).await.unwrap();
    raw.write_all(&wire).await.unwrap();
    let mut connack = [0u8; 4];
    timeout(WAIT, raw.read_exact(&mut connack))
        .await
        .expect("no CONNACK while held back")
        .unwrap();
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x00]);
    raw
}

/// Ingest catches up with `f`'s `n` readings and the raw device's three:
/// all stored, and the raw device gets its three PUBACKs, in order.
async fn catch_up(f: &mut Flooded, n: usize, raw: &mut tokio::net::TcpStream, client: &str) {
    use tokio::io::AsyncReadExt;
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
    let mut pubacks = [0u8; 12];
    timeout(WAIT, raw.read_exact(&mut pubacks))
        .await
        .expect("no PUBACKs once stored")
        .unwrap();
    assert_eq!(
        pubacks,
        [0x40, 2, 0, 1, 0x40, 2, 0, 2, 0x40, 2, 0, 3],
        "three PUBACKs, in order"
    );
}

/// Waits until `f`'s device is held back.
async fn held_back(f: &mut Flooded) {
    timeout(WAIT, async {
        while f.events.recv().await.unwrap() != BrokerEvent::Limit(Limit::Backlog) {}
    })
    .await
    .expect("the first device was not held back");
}

/// A device that connects while devices are held back gets its CONNACK,
/// but what it sent in the same breath as its CONNECT waits with the rest:
/// no PUBACK until ingest catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_connecting_while_held_back_waits_with_what_came_with_its_connect() {
    use tokio::io::AsyncReadExt;
    const N: usize = 2000;
    let mut f = Flooded::start(N).await;
    held_back(&mut f).await;
    let mut raw = raw_device(f.addr, "dev-1", 60).await;
    // Held back: nothing more comes within a second (without the check
    // its three PUBACKs come within milliseconds).
    let mut more = [0u8; 1];
    assert!(
        timeout(Duration::from_secs(1), raw.read(&mut more))
            .await
            .is_err(),
        "a PUBACK came while ingest took nothing"
    );
    catch_up(&mut f, N, &mut raw, "dev-1").await;
    f.stop().await;
}

/// A held-back device's keep-alive goes on: its PINGREQs are answered
/// while its publishes wait, and rumqttd (which drops a client it has not
/// heard from for 1.5 keep-alives) keeps it connected through a wait of
/// three keep-alives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_back_device_keeps_its_keep_alive() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const N: usize = 2000;
    let mut f = Flooded::start(N).await;
    held_back(&mut f).await;
    let mut raw = raw_device(f.addr, "dev-1", 1).await;
    let mut ping = tokio::time::interval(Duration::from_millis(500));
    for _ in 0..6 {
        ping.tick().await;
        raw.write_all(&[0xc0, 0x00]).await.unwrap();
        let mut pingresp = [0u8; 2];
        timeout(Duration::from_secs(1), raw.read_exact(&mut pingresp))
            .await
            .expect("no PINGRESP while held back")
            .expect("the connection was closed while held back");
        assert_eq!(pingresp, [0xd0, 0x00], "a PINGRESP, not a PUBACK");
    }
    catch_up(&mut f, N, &mut raw, "dev-1").await;
    f.stop().await;
}

/// Through the front, once more than half of `buffer` waits for ingest, each
/// submission asks for a commit at once instead of waiting for the commit
/// interval while the devices are held back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_of_buffer_waiting_for_ingest_asks_for_a_commit_at_once() {
    const N: usize = 2000;
    let mut f = Flooded::start(N).await;
    held_back(&mut f).await;
    // Nothing is committed: what ingest has taken all waits (and what the
    // front relayed is at least that).
    let (mut waiting, mut pressing, mut held) = (0, 0, Vec::new());
    while pressing < 2 {
        let sub = f.ingest.next(WAIT).await;
        for item in &sub.items {
            let Item::Record(r) = item else {
                panic!("{item:?}")
            };
            let Some(Value::Int(seq)) = r.field("sequence") else {
                panic!("{r:?}")
            };
            waiting += Flooded::size(*seq as usize);
        }
        if waiting > 32 * 1024 {
            assert_eq!(
                sub.max_delay,
                Some(Duration::ZERO),
                "{waiting} bytes wait for ingest, of a 64 KiB buffer"
            );
            pressing += 1;
        }
        held.push(sub);
    }
    let mut stored = 0;
    for sub in held {
        stored += f.ingest.commit(sub).len();
    }
    while stored < N {
        let sub = f.ingest.next(WAIT).await;
        stored += f.ingest.commit(sub).len();
    }
    assert_eq!(stored, N);
    f.stop().await;
}
