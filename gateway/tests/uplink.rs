//! The uplink against a real TLS mosquitto with client-certificate auth (the
//! stand-in for AWS IoT Core): every stored record arrives, in batches,
//! through link cuts and restarts; wrong certificates deliver nothing.

mod common;

use std::time::{Duration, Instant};

use common::{seed_reading, uplink_settings as settings, Cloud, Gateway};
use ferry_gateway::metrics::UplinkMetrics;
use ferry_gateway::uplink::batch::{Encoding, Topic};
use ferry_testkit::{json_record_seqs, Proxy};

const WAIT: Duration = Duration::from_secs(60);

fn label() -> ferry_gateway::metrics::UplinkLabel {
    UplinkMetrics::label("cloud")
}

/// Seq numbers in a JSON batch are the store's: 1-based. Readings are 0-based.
fn seqs(m: &ferry_testkit::Message) -> anyhow::Result<Vec<u64>> {
    Ok(json_record_seqs(&m.payload)?
        .into_iter()
        .map(|s| s - 1)
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_records_from_ten_devices_arrive_in_batches() {
    let Cloud {
        pki,
        mosquitto: cloud,
        sub,
    } = Cloud::start().await;
    let gw = Gateway::new(seed_reading, 100);
    gw.store(0..20_000).await;
    let (cancel, task) = gw.start(settings(&pki, cloud.tls_addr(), &pki.ca, &pki.client));
    let seen = sub.wait_for_seqs(0..20_000, WAIT, seqs).await.unwrap();
    assert!(seen.is_complete(), "{seen}");
    assert_eq!(seen.outside(), 0);
    // Batched: 20,000 records of ~170 bytes fill 128 KiB batches.
    let publishes = sub.len();
    assert!(publishes <= 40, "{publishes} publishes for 20,000 records");
    for m in sub.messages() {
        assert!(m.payload.len() <= 128 * 1024);
        assert_eq!(m.topic, "dt/ferry/pi-line-7/telemetry");
    }
    // Exact values survive: the first record of the first batch.
    let first: serde_json::Value = serde_json::from_slice(&sub.messages()[0].payload).unwrap();
    assert_eq!(
        first[0],
        serde_json::json!({"gateway":"pi-line-7","source":"local","device":"0","ts":1_764_000_000_000u64,
            "seq":1,"client_id":1,"device_id":0,"voltage":600,"temperature":20.0,"sequence":0})
    );
    // The cursor reaches the head once everything is acknowledged.
    ferry_testkit::wait_until(WAIT, "cursor at head", || {
        gw.metric(|m| m.acked_seq.get_or_create(&label()).get()) == 20_000
    })
    .await
    .unwrap();
    cancel.cancel();
    task.await.unwrap();
}

/// A json batch holds at most `max_batch_records` (the daemon's default for
/// json: 500, what a Firehose rule action in batch mode takes), in order,
/// every record once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_batches_hold_at_most_max_batch_records() {
    let Cloud {
        pki,
        mosquitto: cloud,
        sub,
    } = Cloud::start().await;
    // Each store() is one commit.
    let gw = Gateway::new(seed_reading, 1_200);
    let mut s = settings(&pki, cloud.tls_addr(), &pki.ca, &pki.client);
    s.max_batch_records = ferry_gateway::uplink::config::JSON_BATCH_RECORDS;
    let (cancel, task) = gw.start(s);
    // A first delivery measures the link (until then batches start small).
    gw.store(0..300).await;
    sub.wait_for_seqs(0..300, WAIT, seqs).await.unwrap();
    let warm_up = sub.len();
    gw.store(300..1_500).await;
    let seen = sub.wait_for_seqs(0..1_500, WAIT, seqs).await.unwrap();
    assert!(seen.is_complete(), "{seen}");
    assert_eq!(seen.outside(), 0);
    // 1,200 records of ~170 bytes would fill two 128 KiB batches (819 and
    // 381); by records they are 500, 500 and 200, in order.
    let batches: Vec<Vec<u64>> = sub.messages().iter().map(|m| seqs(m).unwrap()).collect();
    let sizes: Vec<usize> = batches[warm_up..].iter().map(Vec::len).collect();
    assert_eq!(sizes, [500, 500, 200], "{sizes:?}");
    assert!(batches[..warm_up].iter().all(|b| b.len() <= 500));
    let all: Vec<u64> = batches.concat();
    assert_eq!(all, (0..1_500).collect::<Vec<u64>>());
    cancel.cancel();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_link_and_a_broker_restart_lose_nothing() {
    let Cloud {
        pki,
        mosquitto: mut cloud,
        sub,
    } = Cloud::start().await;
    let link = Proxy::start(cloud.tls_addr()).await.unwrap();
    let gw = Gateway::new(seed_reading, 100);
    let (cancel, task) = gw.start(settings(&pki, link.addr(), &pki.ca, &pki.client));
    gw.store(0..3_000).await;
    sub.wait_for_seqs(0..3_000, WAIT, seqs).await.unwrap();

    // The link goes dark: records keep being stored.
    link.cut().await;
    gw.store(3_000..6_000).await;
    link.restore();
    sub.wait_for_seqs(0..6_000, WAIT, seqs).await.unwrap();

    // The cloud broker itself restarts while records come in.
    tokio::task::block_in_place(|| cloud.stop()).unwrap();
    gw.store(6_000..9_000).await;
    tokio::task::block_in_place(|| cloud.start()).unwrap();
    let seen = sub.wait_for_seqs(0..9_000, WAIT, seqs).await.unwrap();
    assert!(seen.is_complete(), "{seen}");
    assert!(gw.metric(|m| m.connects.get_or_create(&label()).get()) >= 2);
    cancel.cancel();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_resends_from_the_cursor() {
    let Cloud {
        pki,
        mosquitto: cloud,
        sub,
    } = Cloud::start().await;
    let mut gw = Gateway::new(seed_reading, 100);
    gw.store(0..1_000).await;
    let (cancel, task) = gw.start(settings(&pki, cloud.tls_addr(), &pki.ca, &pki.client));
    sub.wait_for_seqs(0..1_000, WAIT, seqs).await.unwrap();
    cancel.cancel();
    task.await.unwrap();
    // Close ingest: the cursor is committed.
    let ingest = gw.ingest.take().unwrap();
    drop(ingest.sink);
    drop(ingest.cursors);
    ingest.task.await.unwrap();
    assert_eq!(gw.store.cursor("uplink.cloud").unwrap(), 1_000);
    let before = sub.len();

    // A new run on the same store sends only what is new.
    gw.reopen_ingest();
    gw.store(1_000..1_500).await;
    let (cancel, task) = gw.start(settings(&pki, cloud.tls_addr(), &pki.ca, &pki.client));
    let seen = sub.wait_for_seqs(0..1_500, WAIT, seqs).await.unwrap();
    assert_eq!(seen.duplicates(), 0, "{seen}");
    assert!(sub.len() > before);
    cancel.cancel();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_certificates_deliver_nothing_and_keep_trying() {
    let Cloud {
        pki,
        mosquitto: cloud,
        sub,
    } = Cloud::start().await;
    for (what, ca, id) in [
        (
            "rogue client certificate",
            pki.ca.clone(),
            pki.rogue_client.clone(),
        ),
        (
            "expired client certificate",
            pki.ca.clone(),
            pki.expired_client.clone(),
        ),
        (
            "wrong CA for the server",
            pki.rogue_ca.clone(),
            pki.client.clone(),
        ),
    ] {
        let gw = Gateway::new(seed_reading, 100);
        gw.store(0..10).await;
        let (cancel, task) = gw.start(settings(&pki, cloud.tls_addr(), &ca, &id));
        ferry_testkit::wait_until(WAIT, "three failed attempts", || {
            gw.metric(|m| m.connect_errors.get_or_create(&label()).get()) >= 3
        })
        .await
        .unwrap();
        assert_eq!(
            gw.metric(|m| m.connects.get_or_create(&label()).get()),
            0,
            "{what}"
        );
        assert_eq!(
            gw.metric(|m| m.acked_seq.get_or_create(&label()).get()),
            0,
            "{what}"
        );
        cancel.cancel();
        task.await.unwrap();
        assert_eq!(gw.store.cursor("uplink.cloud").unwrap(), 0, "{what}");
    }
    assert_eq!(sub.len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_device_topics_and_the_columnar_encoding() {
    let Cloud {
        pki,
        mosquitto: cloud,
        sub,
    } = Cloud::start().await;
    let gw = Gateway::new(seed_reading, 100);
    gw.store(0..1_000).await;
    let mut s = settings(&pki, cloud.tls_addr(), &pki.ca, &pki.client);
    s.topic = Topic::parse("dt/ferry/{gateway}/{device}", &pki.client_id).unwrap();
    s.encoding = Encoding::Columnar;
    let (cancel, task) = gw.start(s);
    let seen = sub
        .wait_for_seqs(0..1_000, WAIT, |m| {
            let v: serde_json::Value = serde_json::from_slice(&m.payload)?;
            let device = m.topic.rsplit('/').next().unwrap().to_owned();
            assert_eq!(v["devices"], serde_json::json!([device]));
            let mut seq = 0u64;
            let mut out = Vec::new();
            for (i, d) in v["seq"].as_array().unwrap().iter().enumerate() {
                seq = if i == 0 {
                    d.as_u64().unwrap()
                } else {
                    seq + d.as_u64().unwrap()
                };
                out.push(seq - 1);
                let reading: u64 = v["fields"]["sequence"][i].as_u64().unwrap();
                assert_eq!(reading, seq - 1);
                assert_eq!(reading % 10, device.parse::<u64>().unwrap());
            }
            Ok(out)
        })
        .await
        .unwrap();
    assert!(seen.is_complete(), "{seen}");
    cancel.cancel();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackholed_link_is_detected_by_the_puback_timeout_and_recovers() {
    let Cloud {
        pki,
        mosquitto: cloud,
        sub,
    } = Cloud::start().await;
    let link = Proxy::start(cloud.tls_addr()).await.unwrap();
    let gw = Gateway::new(seed_reading, 100);
    let mut s = settings(&pki, link.addr(), &pki.ca, &pki.client);
    s.puback_timeout = Duration::from_millis(500);
    s.keep_alive = Duration::from_secs(30);
    let (cancel, task) = gw.start(s);
    gw.store(0..100).await;
    sub.wait_for_seqs(0..100, WAIT, seqs).await.unwrap();

    // Packets vanish, the TCP connection stays up: only the missing PUBACK tells.
    link.blackhole().await;
    gw.store(100..200).await;
    ferry_testkit::wait_until(WAIT, "the session given up", || {
        gw.metric(|m| m.connect_errors.get_or_create(&label()).get()) >= 1
    })
    .await
    .unwrap();
    link.restore();
    let seen = sub.wait_for_seqs(0..200, WAIT, seqs).await.unwrap();
    assert!(seen.is_complete(), "{seen}");
    cancel.cancel();
    task.await.unwrap();
}

/// `max_batch_age = 0s`: a record goes out at once when nothing is in
/// flight; records stored while a batch crosses a slow link wait for its
/// PUBACK and share the next publish, instead of one publish each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_age_uplink_sends_at_once_when_idle_and_batches_behind_a_publish_in_flight() {
    let Cloud {
        pki,
        mosquitto: cloud,
        sub,
    } = Cloud::start().await;
    let link = Proxy::start(cloud.tls_addr()).await.unwrap();
    let gw = Gateway::new(seed_reading, 1);
    let mut s = settings(&pki, link.addr(), &pki.ca, &pki.client);
    s.max_batch_age = Duration::ZERO;
    let (cancel, task) = gw.start(s);
    ferry_testkit::wait_until(WAIT, "connected", || {
        gw.metrics.connected.get_or_create(&label()).get() == 1
    })
    .await
    .unwrap();
    // Idle: each record is its own publish, at once.
    for i in 0..5 {
        gw.store(i..i + 1).await;
        sub.wait_for_seqs(0..i + 1, WAIT, seqs).await.unwrap();
    }
    assert_eq!(sub.len(), 5);
    // A slow link (about 0.1 s per one-record batch): 60 records stored one
    // commit each, 10 ms apart, go out in few publishes.
    link.throttle(2_000);
    gw.store(5..65).await;
    let seen = sub.wait_for_seqs(0..65, WAIT, seqs).await.unwrap();
    assert!(seen.is_complete(), "{seen}");
    assert_eq!(seen.duplicates(), 0, "{seen}");
    let publishes = sub.len() - 5;
    eprintln!("60 records stored one by one behind a slow link: {publishes} publishes");
    assert!(publishes <= 20, "{publishes} publishes for 60 records");
    cancel.cancel();
    task.await.unwrap();
}

/// The drain gauges, through an outage and a drain over a 50 kB/s link:
/// while the link is down the backlog is exact, nothing is sent and there
/// is no estimate; while draining, the estimate is the backlog over the send
/// rate (nothing new comes in) and the drain ends near it; then zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_gauges_follow_an_outage_and_a_drain() {
    const RECORDS: u64 = 2_000;
    let Cloud {
        pki,
        mosquitto: cloud,
        sub,
    } = Cloud::start().await;
    let link = Proxy::start(cloud.tls_addr()).await.unwrap();
    link.refuse().await;
    let gw = Gateway::new(seed_reading, 500);
    gw.store(0..RECORDS).await;
    let (cancel, task) = gw.start(settings(&pki, link.addr(), &pki.ca, &pki.client));
    let m = gw.metrics.clone();
    let gauges = move || {
        let l = label();
        (
            m.backlog_records.get_or_create(&l).get(),
            m.send_rate.get_or_create(&l).get(),
            m.drain_eta.get_or_create(&l).get(),
        )
    };
    ferry_testkit::wait_until(WAIT, "the outage's backlog in the gauges", || {
        gauges().0 == RECORDS && gauges().2.is_infinite()
    })
    .await
    .unwrap();
    assert_eq!(gauges(), (RECORDS, 0.0, f64::INFINITY));

    link.throttle(50_000);
    link.restore();
    // An estimate once the drain is under way (a third of the backlog sent:
    // the rates then cover more than the connect and the first small batches).
    let mut first = None;
    ferry_testkit::wait_until(WAIT, "an estimate consistent with the backlog", || {
        let (backlog, rate, eta) = gauges();
        let ok =
            backlog > 0 && backlog <= RECORDS * 2 / 3 && eta.is_finite() && eta > 0.0 && rate > 0.0;
        if ok && (eta * rate - backlog as f64).abs() <= 1.0 {
            first = Some((Instant::now(), backlog, rate, eta));
            return true;
        }
        false
    })
    .await
    .unwrap();
    let (at, backlog, rate, eta) = first.unwrap();
    let seen = sub.wait_for_seqs(0..RECORDS, WAIT, seqs).await.unwrap();
    assert!(seen.is_complete(), "{seen}");
    ferry_testkit::wait_until(WAIT, "drained: backlog and estimate zero", || {
        gauges().0 == 0 && gauges().2 == 0.0
    })
    .await
    .unwrap();
    let took = at.elapsed().as_secs_f64();
    eprintln!(
        "estimate: backlog {backlog} at {rate:.1} records/s, {eta:.1} s to go; drained in {took:.1} s"
    );
    // About 170 bytes a record at 50 kB/s: 290 records/s.
    assert!((100.0..=600.0).contains(&rate), "{rate} records/s");
    assert!(
        took >= eta / 2.0 && took <= eta * 2.0 + 1.0,
        "estimated {eta:.1} s, took {took:.1} s"
    );
    cancel.cancel();
    task.await.unwrap();
}

/// `max_send_age`: records older than it when their turn comes stay in the
/// store, are counted and not sent; the cursor moves past them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_older_than_max_send_age_are_counted_and_not_sent() {
    let Cloud {
        pki,
        mosquitto: cloud,
        sub,
    } = Cloud::start().await;
    let gw = Gateway::new(seed_reading, 100);
    let now = ferry_core::record::now_millis();
    // 100 readings of two hours ago, then 50 of now.
    let items = (0..150)
        .map(|i| {
            let mut r = seed_reading(i);
            r.ts = if i < 100 { now - 7_200_000 } else { now };
            ferry_core::sink::Item::Record(r)
        })
        .collect();
    let ingest = gw.ingest.as_ref().unwrap();
    ingest.sink.submit_and_wait(items).await.unwrap();
    let mut s = settings(&pki, cloud.tls_addr(), &pki.ca, &pki.client);
    s.max_send_age = Some(Duration::from_secs(3600));
    let (cancel, task) = gw.start(s);
    let seen = sub.wait_for_seqs(100..150, WAIT, seqs).await.unwrap();
    assert!(seen.is_complete(), "{seen}");
    ferry_testkit::wait_until(WAIT, "the cursor at the head", || {
        gw.metric(|m| m.acked_seq.get_or_create(&label()).get()) == 150
    })
    .await
    .unwrap();
    assert_eq!(seen.outside(), 0, "nothing older was sent: {seen}");
    assert_eq!(
        gw.metric(|m| m.records_expired.get_or_create(&label()).get()),
        100
    );
    assert_eq!(
        gw.metric(|m| m.records_sent.get_or_create(&label()).get()),
        50
    );
    // They stay in the store.
    let mut out = Vec::new();
    gw.store.read_records(0, 200, &mut out).unwrap();
    assert_eq!(out.len(), 150);
    cancel.cancel();
    task.await.unwrap();
}
