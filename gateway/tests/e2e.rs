//! The whole gateway, as the `ferry` binary, between real peers: devices
//! publish to its embedded broker (or to a local mosquitto it subscribes to),
//! and a TLS mosquitto with client certificates stands in for IoT Core.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use ferry_gateway::store::{Store, StoreOptions};
use ferry_testkit::{free_ports, Mosquitto};

const WAIT: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_mode_forwards_everything_and_dead_letters_bad_payloads() {
    let Cloud {
        pki,
        mosquitto: cloud,
        sub,
    } = Cloud::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(2).unwrap();
    let (broker, metrics) = (loopback(ports[0]), loopback(ports[1]));
    let data = dir.path().join("data");
    let mut ferry = Ferry::start(
        dir.path(),
        &broker_config(&data, broker, cloud.tls_addr(), &pki, metrics),
    );

    let mut publisher = Publisher::connect(broker, "device-pub").await.unwrap();
    let bad: [(&str, &[u8], &str); 5] = [
        ("sensors/3/telemetry", b"not json", "not_json"),
        ("sensors/3/telemetry", b"[1,2]", "not_object"),
        (
            "sensors/3/telemetry",
            br#"{"a":{"b":1}}"#,
            "unsupported_type",
        ),
        ("sensors/3/telemetry", br#"{"a":null}"#, "unsupported_type"),
        ("elsewhere/3", br#"{"a":1}"#, "unknown_topic"),
    ];
    for i in 0..2_000u64 {
        publisher
            .publish(&seed_topic(i), seed_payload(i))
            .await
            .unwrap();
        if i % 400 == 7 {
            let (topic, payload, _) = bad[(i / 400) as usize];
            publisher.publish(topic, payload.to_vec()).await.unwrap();
        }
    }
    let seen = sub.wait_for_seqs(0..2_000, WAIT, sequences).await.unwrap();
    assert!(seen.is_complete(), "{seen}");

    // Exact values: reading 1234 as the cloud received it.
    let all: Vec<serde_json::Value> = sub
        .messages()
        .iter()
        .flat_map(|m| serde_json::from_slice::<Vec<serde_json::Value>>(&m.payload).unwrap())
        .collect();
    let r = all.iter().find(|r| r["sequence"] == 1234).unwrap();
    assert_eq!(r["gateway"], "pi-line-7");
    assert_eq!(r["source"], "local");
    assert_eq!(r["device"], "4");
    assert_eq!(
        (
            &r["client_id"],
            &r["device_id"],
            &r["voltage"],
            &r["temperature"]
        ),
        (&1.into(), &4.into(), &634.into(), &114.into())
    );

    let text = http_get(metrics, "/metrics");
    for (reason, n) in [
        ("not_json", 1),
        ("not_object", 1),
        ("unsupported_type", 2),
        ("unknown_topic", 1),
    ] {
        let line = format!(
            "ferry_ingest_records_rejected_total{{source=\"local\",reason=\"{reason}\"}} {n}"
        );
        assert!(text.contains(&line), "missing `{line}` in\n{text}");
    }
    assert!(
        text.contains("ferry_ingest_records_stored_total 2000"),
        "{text}"
    );
    assert!(http_get(metrics, "/readyz").starts_with("HTTP/1.1 200"));

    // SIGTERM: drained, exit 0, and every message is in the store.
    let status = ferry.terminate();
    assert!(status.success(), "{status:?}");
    let store = Store::open(&Store::file_in(&data), &StoreOptions::default()).unwrap();
    assert_eq!(store.heads().records, 2_000);
    assert_eq!(
        store.cursor("uplink.cloud").unwrap(),
        2_000,
        "the cursor was committed on shutdown"
    );
    let dead = store.read_dead(0, 100).unwrap();
    let kinds: Vec<&str> = dead.iter().map(|d| d.dead.kind).collect();
    assert_eq!(kinds, bad.iter().map(|b| b.2).collect::<Vec<_>>());
    assert_eq!(dead[0].dead.payload, b"not json");
    assert_eq!(&*dead[4].dead.origin, "elsewhere/3");
    assert!(dead.iter().all(|d| !d.dead.reason.is_empty()));
}

/// Broker mode, the default config: the device front acknowledges a
/// reading only once it is committed, so `kill -9` at random moments, again
/// and again, loses nothing that was acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_mode_kill9_loses_nothing_acknowledged() {
    const ROUNDS: u64 = 3;
    let Cloud {
        pki,
        mosquitto: cloud,
        sub,
    } = Cloud::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(2).unwrap();
    let (broker, metrics) = (loopback(ports[0]), loopback(ports[1]));
    let config = broker_config(
        &dir.path().join("data"),
        broker,
        cloud.tls_addr(),
        &pki,
        metrics,
    );
    let mut ferry = Ferry::start(dir.path(), &config);
    let mut acked = Vec::new();
    // Where each round is killed: 200 to 2,000 readings in.
    let seed = ferry_core::record::now_millis() as u64;
    for round in 0..ROUNDS {
        let kill_after = 200 + (seed / (round + 1)) % 1_800;
        // One connection, up to 100 in flight: its PUBACKs come in order,
        // so the first `acked()` readings queued are the acknowledged ones.
        let mut p = Publisher::connect(broker, &format!("device-{round}"))
            .await
            .unwrap();
        let first = round * 100_000;
        let client = p.client().clone();
        let publishing = tokio::spawn(async move {
            for i in first..first + 100_000 {
                let publish = client.publish(
                    seed_topic(i),
                    rumqttc::QoS::AtLeastOnce,
                    false,
                    seed_payload(i),
                );
                if publish.await.is_err() {
                    return;
                }
            }
        });
        p.wait_acked(kill_after as usize, WAIT).await;
        tokio::task::block_in_place(|| ferry.kill9());
        let n = p.acked();
        publishing.abort();
        acked.extend(first..first + n);
        eprintln!("round {round}: killed after {n} acknowledged (seed {seed})");
        ferry = tokio::task::block_in_place(|| Ferry::start_file(&ferry.config));
    }

    // Publish more after the last restart; once they are in the cloud, so
    // is everything before them.
    let mut p = Publisher::connect(broker, "device-last").await.unwrap();
    for i in 900_000..900_500u64 {
        p.publish(&seed_topic(i), seed_payload(i)).await.unwrap();
    }
    sub.wait_for_seqs(900_000..900_500, WAIT, sequences)
        .await
        .unwrap();
    let received: BTreeSet<u64> = sub
        .messages()
        .iter()
        .flat_map(|m| sequences(m).unwrap())
        .collect();
    let lost: Vec<u64> = acked
        .iter()
        .copied()
        .filter(|i| !received.contains(i))
        .collect();
    assert_eq!(
        lost,
        Vec::<u64>::new(),
        "of {} acknowledged readings",
        acked.len()
    );
    drop(ferry);
}

/// Subscribe mode: Ferry acknowledges a message to the local broker only
/// after committing it, so a crash loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_mode_kill9_loses_nothing() {
    let Cloud {
        pki,
        mosquitto: cloud,
        sub,
    } = Cloud::start().await;
    let local = Mosquitto::plain().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let metrics = loopback(free_ports(1).unwrap()[0]);
    let config = subscribe_config(
        &dir.path().join("data"),
        local.plain_addr(),
        cloud.tls_addr(),
        &pki,
        metrics,
    );
    let mut ferry = Ferry::start(dir.path(), &config);
    // The first start creates the persistent session; from then on the
    // local broker keeps messages for Ferry while it is down.
    tokio::task::block_in_place(|| ferry.wait_log("subscribed", WAIT));
    let local_addr = local.plain_addr();
    let publishing = tokio::spawn(async move {
        let mut p = Publisher::connect(local_addr, "device-pub").await.unwrap();
        for i in 0..6_000u64 {
            p.publish(&seed_topic(i), seed_payload(i)).await.unwrap();
        }
    });
    // Kill it once it has forwarded part of the stream.
    sub.wait_for_count(3, WAIT).await.unwrap();
    tokio::task::block_in_place(|| ferry.kill9());
    let _ferry2 = tokio::task::block_in_place(|| Ferry::start_file(&ferry.config));
    publishing.await.unwrap();
    let seen = sub.wait_for_seqs(0..6_000, WAIT, sequences).await.unwrap();
    assert!(seen.is_complete(), "{seen}");
    eprintln!(
        "duplicates at the cloud after the crash: {}",
        seen.duplicates()
    );
}

/// `store.when_full = "block"` with the cloud unreachable: once the store
/// is full ingest stops, and through the device front (the default) the
/// devices are held back instead of the embedded broker acknowledging
/// messages it must then drop. When the link returns, the backlog drains,
/// room returns, and every message the devices sent arrives at the cloud.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_mode_full_store_in_block_mode_holds_devices_back_and_loses_nothing() {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    // ~1.3 KB a record in the store: the 16 MiB budget blocks at ~11,000.
    const N: u64 = 25_000;
    let Cloud {
        pki,
        mosquitto: cloud,
        sub,
    } = Cloud::start().await;
    let link = ferry_testkit::Proxy::start(cloud.tls_addr()).await.unwrap();
    link.cut().await;
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(2).unwrap();
    let (broker, metrics) = (loopback(ports[0]), loopback(ports[1]));
    let data = dir.path().join("data");
    // IoT Core's 512 KB/s per connection would take a minute to drain it.
    let config = format!(
        "{}\n[store]\nmax_disk = \"16MiB\"\nwhen_full = \"block\"\n",
        broker_config(&data, broker, link.addr(), &pki, metrics).replace(
            "max_batch_age = \"100ms\"",
            "max_batch_age = \"100ms\"\nmax_bytes_per_second = \"64MiB\""
        )
    );
    let _ferry = Ferry::start(dir.path(), &config);

    // One device publishing ~1 KB readings, up to 100 unacknowledged.
    let mut opts = MqttOptions::new("filler", "127.0.0.1", broker.port());
    opts.set_keep_alive(Duration::from_secs(60))
        .set_inflight(100);
    let (client, mut events) = AsyncClient::new(opts, 100);
    let acked = Arc::new(AtomicU64::new(0));
    let counter = acked.clone();
    let device = tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    let publishing = tokio::spawn(async move {
        for i in 0..N {
            let mut payload = seed_payload(i);
            payload.pop();
            payload.extend_from_slice(format!(r#", "pad": "{}"}}"#, "x".repeat(900)).as_bytes());
            client
                .publish(seed_topic(i), QoS::AtLeastOnce, false, payload)
                .await
                .unwrap();
        }
        client
    });

    // The store fills (nothing can be delivered), ingest blocks, and the
    // front holds the device back.
    let m = |s: &str| metric_sample(metrics, s).unwrap_or(0.0);
    ferry_testkit::wait_until(WAIT, "ingest blocked and the device held back", || {
        m("ferry_ingest_blocked") == 1.0
            && m("ferry_source_limits_hit_total{source=\"local\",limit=\"backlog\"}") >= 1.0
    })
    .await
    .unwrap();
    let held = acked.load(Ordering::Relaxed);
    assert!(held < N, "all {N} acknowledged while the store was full");
    // A second later it is still held (without the front, rumqttd would
    // have acknowledged the rest within it and dropped what its log
    // cannot keep).
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while acked.load(Ordering::Relaxed) < N {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let later = acked.load(Ordering::Relaxed);
    assert!(
        later < N && later - held < 4_000,
        "{held} acknowledged when held back, {later} a second later"
    );

    // The link returns: everything arrives.
    link.restore();
    let seen = sub.wait_for_seqs(0..N, WAIT, sequences).await.unwrap();
    assert!(seen.is_complete(), "{seen}");
    let _client = publishing.await.unwrap();
    ferry_testkit::wait_until(WAIT, "every publish acknowledged", || {
        acked.load(Ordering::Relaxed) == N
    })
    .await
    .unwrap();
    device.abort();
    assert_eq!(m("ferry_ingest_blocked"), 0.0);
    assert_eq!(
        metric_sample(
            metrics,
            "ferry_ingest_records_rejected_total{source=\"local\",reason=\"overrun\"}"
        ),
        None,
        "nothing was dropped by the embedded broker"
    );
}
