//! The uplink draining a backlog to a local TLS mosquitto (the IoT Core
//! stand-in, client certificates required).
//!
//! 1. A 1,000,000-record backlog of seed-format readings from 10 devices is
//!    written through `Writer::spawn` in big submissions.
//! 2. `json` and `columnar`, unthrottled (limits set huge), each through a
//!    testkit `Proxy` that counts the bytes on the wire: records/s until the
//!    uplink's `acked_seq` reaches the head, payload and wire bytes per
//!    record, and the process's RSS before, after and at its peak during the
//!    drain (the backlog must be streamed, not loaded).
//! 3. Both encodings again under IoT Core's limits (100 publishes/s,
//!    512 KiB/s, 128 KiB batches) for a few seconds, with a `CloudSubscriber`
//!    receiving every payload: records per billed 5 KB message
//!    (billed units = ceil(len / 5120)) and records/s at those limits.
//!
//! `cargo bench -p ferry-gateway --bench uplink`; `FERRY_BENCH_SCALE=0.1`
//! for a quick run. `FERRY_BENCH_WINDOW` overrides the records read per
//! window (default 2048, as the daemon sets it).

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{fig, fig1, scaled, section};
use ferry_core::record::{Record, Value};
use ferry_core::sink::Item;
use ferry_gateway::metrics::{IngestMetrics, UplinkMetrics};
use ferry_gateway::store::{Store, StoreOptions, Writer, WriterSettings};
use ferry_gateway::uplink::batch::{Encoding, Topic};
use ferry_gateway::uplink::control::{ControlLink, Outbound};
use ferry_gateway::uplink::{self, tls, Settings};
use ferry_testkit::{json_record_seqs, CloudSubscriber, Message, Mosquitto, Pki, Proxy};
use tokio_util::sync::CancellationToken;

const GATEWAY: &str = "pi-line-7";
const SUBMISSION: u64 = 4096;
/// IoT Core meters messages in 5 KB steps.
const BILLING_UNIT: usize = 5 * 1024;

fn main() {
    let scale = common::scale();
    common::print_machine();
    println!("# scale: {scale}");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("ferry-rt")
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(bench(scale));
    rt.shutdown_background();
}

fn reading(i: u64) -> Record {
    let device = i % 10;
    Record {
        // Ten devices, each reporting every 10 ms.
        ts: 1_764_000_000_000 + i as i64,
        source: Arc::from("local"),
        device: device.to_string().into(),
        fields: vec![
            ("client_id".into(), Value::Int(1)),
            ("device_id".into(), Value::Int(device as i64)),
            ("voltage".into(), Value::Int(640 + (i * 7 % 15) as i64)),
            ("temperature".into(), Value::Int(105 + (i % 11) as i64)),
            ("sequence".into(), Value::Int((i / 10) as i64)),
        ],
    }
}

fn settings(pki: &Pki, name: &str, addr: SocketAddr, encoding: Encoding, iot: bool) -> Settings {
    let window = std::env::var("FERRY_BENCH_WINDOW")
        .ok()
        .map_or(2048, |w| w.parse().expect("FERRY_BENCH_WINDOW is a number"));
    Settings {
        name: name.into(),
        gateway: GATEWAY.into(),
        client_id: pki.client_id.clone(),
        host: addr.ip().to_string(),
        port: addr.port(),
        tls: Some(
            tls::client_config(&pki.ca, &pki.client.cert, &pki.client.key, &[]).expect("tls"),
        ),
        topic: Topic::parse("dt/ferry/{gateway}/telemetry", GATEWAY).expect("topic"),
        encoding,
        max_batch_bytes: 128 * 1024,
        max_batch_age: Duration::from_secs(1),
        max_inflight: 100,
        publishes_per_second: if iot { 100 } else { 1_000_000 },
        bytes_per_second: if iot { 512 * 1024 } else { 1 << 40 },
        keep_alive: Duration::from_secs(30),
        connect_timeout: Duration::from_secs(10),
        puback_timeout: Duration::from_secs(30),
        reconnect_min: Duration::from_millis(100),
        reconnect_max: Duration::from_secs(1),
        probe_interval: Duration::from_secs(1),
        max_send_age: None,
        drain_timeout: Duration::from_secs(5),
        sources: vec![],
        window_records: window,
        // As the daemon sets it by default (`UplinkConfig::batch_records`).
        max_batch_records: match encoding {
            Encoding::Json => ferry_gateway::uplink::config::JSON_BATCH_RECORDS,
            Encoding::Columnar => usize::MAX,
        },
        stream: ferry_gateway::store::Stream::Raw,
        control: None,
    }
}

fn thread_group(comm: &str) -> &'static str {
    if comm.starts_with("ferry-rt") {
        "ferry"
    } else {
        "other"
    }
}

/// CPU seconds used so far by process `pid`.
fn cpu_of(pid: u32) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest: Vec<&str> = stat
        .rfind(')')
        .map_or("", |i| &stat[i + 1..])
        .split_whitespace()
        .collect();
    [11, 12]
        .iter()
        .filter_map(|&i| rest.get(i).and_then(|v| v.parse::<u64>().ok()))
        .sum::<u64>() as f64
        / tick
}

async fn bench(scale: f64) {
    let n = scaled(1_000_000.0, scale, 10_000);
    let pki = Pki::generate(GATEWAY).expect("PKI (needs openssl)");
    let cloud = Mosquitto::tls(&pki).expect("mosquitto (needs mosquitto installed)");
    let dir = common::tempdir("ferry-bench-uplink-");
    let store = Store::open(&Store::file_in(dir.path()), &StoreOptions::default()).expect("store");
    let ingest = Writer::spawn(
        store.clone(),
        WriterSettings::default().with_commit_interval(Duration::from_millis(10)),
        IngestMetrics::new(),
    );

    section(&format!(
        "backlog: {n} seed records written through Writer::spawn in submissions of {SUBMISSION}"
    ));
    let t = Instant::now();
    let mut pending = std::collections::VecDeque::new();
    let mut next = 0u64;
    while next < n {
        let end = (next + SUBMISSION).min(n);
        let items = (next..end).map(|i| Item::Record(reading(i))).collect();
        pending.push_back(ingest.sink.submit(items).await.expect("submit"));
        if pending.len() >= 4 {
            pending
                .pop_front()
                .unwrap()
                .committed()
                .await
                .expect("commit");
        }
        next = end;
    }
    for r in pending {
        r.committed().await.expect("commit");
    }
    // The receipts resolve a moment before the heads watch moves.
    common::poll_until(Duration::from_secs(10), Duration::from_millis(1), || {
        store.heads().records >= n
    })
    .await;
    let head = store.heads().records;
    assert_eq!(head, n, "every record is stored");
    fig(
        "uplink.backlog.write_records_per_s",
        (n as f64 / t.elapsed().as_secs_f64()).round(),
        "records/s",
    );
    let size = std::fs::metadata(store.path()).map_or(0, |m| m.len());
    fig1(
        "uplink.backlog.file_bytes_per_record",
        size as f64 / n as f64,
        "bytes/record",
    );

    let metrics = UplinkMetrics::new();
    // `json_control`: json again with the fleet's control plane on the
    // connection (the shadow's 5 subscriptions, and a 300-byte report
    // published every 50 ms ahead of the batches), against `json` as the
    // baseline of the same run.
    for (label, encoding, control) in [
        ("json", Encoding::Json, false),
        ("columnar", Encoding::Columnar, false),
        ("json_control", Encoding::Json, true),
    ] {
        section(&format!(
            "{label}: drain {n} records to TLS mosquitto, unthrottled, through a byte-counting proxy"
        ));
        let proxy = Proxy::start(cloud.tls_addr()).await.expect("proxy");
        let mut s = settings(&pki, label, proxy.addr(), encoding, false);
        let reports = control.then(|| {
            let (link, inbound) = ControlLink::new(
                ferry_gateway::fleet::filters(GATEWAY, "ferry"),
                64 * 1024,
                64,
            );
            s.control = Some(link.clone());
            let topic = format!("{}update", ferry_gateway::fleet::prefix(GATEWAY, "ferry"));
            tokio::spawn(async move {
                let _inbound = inbound;
                let mut tick = tokio::time::interval(Duration::from_millis(50));
                loop {
                    tick.tick().await;
                    link.send(Outbound {
                        topic: topic.clone(),
                        payload: vec![b' '; 300],
                    });
                }
            })
        });
        let l = UplinkMetrics::label(label);
        let (rss0, _) = common::rss_kib("self").expect("VmRSS");
        common::reset_peak_rss();
        let cpu0 = common::cpu_by_group(thread_group);
        let mosq0 = cloud.pid().map_or(0.0, cpu_of);
        let cancel = CancellationToken::new();
        let t = Instant::now();
        let task = tokio::spawn(uplink::run(
            s,
            store.clone(),
            ingest.cursors.clone(),
            metrics.clone(),
            cancel.clone(),
        ));
        let acked = || metrics.acked_seq.get_or_create(&l).get();
        // The last few windows can wait for `max_batch_age` (see
        // BENCHMARKS.md), so the rate up to 90% is reported too.
        let mut at_90 = None;
        let done = common::poll_until(Duration::from_secs(600), Duration::from_millis(2), || {
            let a = acked();
            if at_90.is_none() && a * 10 >= head * 9 {
                at_90 = Some((t.elapsed(), a));
            }
            a >= head
        })
        .await;
        let wall = t.elapsed();
        let cpu1 = common::cpu_by_group(thread_group);
        let mosq1 = cloud.pid().map_or(0.0, cpu_of);
        let (rss1, hwm) = common::rss_kib("self").expect("VmRSS");
        cancel.cancel();
        let _ = task.await;
        if let Some(r) = reports {
            r.abort();
        }
        if !done {
            println!("# {label}: only {} of {head} acknowledged in time", acked());
        }
        let name = format!("uplink.{label}");
        let publishes = metrics.publishes.get_or_create(&l).get();
        let bytes = metrics.publish_bytes.get_or_create(&l).get();
        let sent = metrics.records_sent.get_or_create(&l).get();
        println!(
            "{name}.records_per_s: {:.0} records/s (target >= 100000)",
            acked() as f64 / wall.as_secs_f64()
        );
        if let Some((t90, a90)) = at_90 {
            fig(
                &format!("{name}.records_per_s_to_90pct"),
                (a90 as f64 / t90.as_secs_f64()).round(),
                "records/s",
            );
        }
        fig1(&format!("{name}.seconds"), wall.as_secs_f64(), "s");
        fig(&format!("{name}.publishes"), publishes, "publishes");
        fig1(
            &format!("{name}.records_per_publish"),
            sent as f64 / publishes.max(1) as f64,
            "records/publish",
        );
        fig1(
            &format!("{name}.payload_bytes_per_record"),
            bytes as f64 / sent.max(1) as f64,
            "bytes/record",
        );
        fig1(
            &format!("{name}.wire_bytes_per_record"),
            proxy.bytes_up() as f64 / acked().max(1) as f64,
            "bytes/record (TLS, gateway -> broker)",
        );
        fig1(
            &format!("{name}.wire_bytes_down_per_record"),
            proxy.bytes_down() as f64 / acked().max(1) as f64,
            "bytes/record (broker -> gateway)",
        );
        fig(&format!("{name}.rss_before"), rss0, "KiB");
        fig(&format!("{name}.rss_after"), rss1, "KiB");
        fig(&format!("{name}.rss_peak_during"), hwm, "KiB");
        fig(
            &format!("{name}.rss_peak_growth"),
            hwm.saturating_sub(rss0),
            "KiB",
        );
        common::report_cpu(&name, &cpu0, &cpu1, wall);
        println!(
            "{name}.cpu.mosquitto: {:.2} cores",
            (mosq1 - mosq0) / wall.as_secs_f64()
        );
    }

    let secs = scaled(10.0, scale.sqrt(), 3);
    for (label, encoding) in [("json", Encoding::Json), ("columnar", Encoding::Columnar)] {
        section(&format!(
            "{label} under IoT Core limits (100 publishes/s, 512 KiB/s, 128 KiB batches) for up to {secs} s"
        ));
        let uplink_name = format!("{label}_iot");
        let sub = CloudSubscriber::connect(&pki, cloud.tls_addr(), "dt/ferry/#")
            .await
            .expect("cloud subscriber");
        let l = UplinkMetrics::label(&uplink_name);
        let cancel = CancellationToken::new();
        let t = Instant::now();
        let task = tokio::spawn(uplink::run(
            settings(&pki, &uplink_name, cloud.tls_addr(), encoding, true),
            store.clone(),
            ingest.cursors.clone(),
            metrics.clone(),
            cancel.clone(),
        ));
        let acked = || metrics.records_acked.get_or_create(&l).get();
        common::poll_until(Duration::from_secs(1), Duration::from_millis(5), || false).await;
        let (t1, acked1) = (t.elapsed(), acked());
        let drained = common::poll_until(
            Duration::from_secs(secs) - t1,
            Duration::from_millis(5),
            || metrics.acked_seq.get_or_create(&l).get() >= head,
        )
        .await;
        let (t2, acked2) = (t.elapsed(), acked());
        cancel.cancel();
        let _ = task.await;
        let publishes = metrics.publishes.get_or_create(&l).get();
        let arrived =
            common::poll_until(Duration::from_secs(10), Duration::from_millis(10), || {
                sub.len() as u64 >= publishes
            })
            .await;
        if !arrived {
            println!(
                "# {label}: the subscriber got {} of {publishes} publishes",
                sub.len()
            );
        }
        let messages = sub.messages();
        let (mut records, mut units, mut bytes) = (0u64, 0u64, 0u64);
        for m in &messages {
            records += records_in(encoding, m);
            units += m.payload.len().div_ceil(BILLING_UNIT) as u64;
            bytes += m.payload.len() as u64;
        }
        let name = format!("uplink.{label}_iot");
        let target = if encoding == Encoding::Columnar {
            " (target >= 200)"
        } else {
            ""
        };
        println!(
            "{name}.records_per_billed_message: {:.1} records/unit{target}",
            records as f64 / units.max(1) as f64
        );
        fig(&format!("{name}.messages"), messages.len(), "publishes");
        fig(&format!("{name}.billed_units"), units, "units of 5 KB");
        fig1(
            &format!("{name}.payload_bytes_per_publish"),
            bytes as f64 / messages.len().max(1) as f64,
            "bytes",
        );
        fig1(
            &format!("{name}.records_per_publish"),
            records as f64 / messages.len().max(1) as f64,
            "records/publish",
        );
        if drained {
            println!(
                "# {label}: drained the backlog within {:.1} s; the rate below is a lower bound",
                t2.as_secs_f64()
            );
        }
        fig(
            &format!("{name}.records_per_s"),
            ((acked2 - acked1) as f64 / (t2 - t1).as_secs_f64()).round(),
            "records/s (after the first second's burst)",
        );
        drop(sub);
    }
    drop(ingest);
}

/// Records carried by one received payload.
fn records_in(encoding: Encoding, m: &Message) -> u64 {
    match encoding {
        Encoding::Json => json_record_seqs(&m.payload).map_or(0, |s| s.len() as u64),
        Encoding::Columnar => m
            .json()
            .ok()
            .and_then(|v| v.get("seq").and_then(|s| s.as_array()).map(Vec::len))
            .unwrap_or(0) as u64,
    }
}
