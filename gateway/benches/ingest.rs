//! Durable ingest: what it costs to get a reading from a device onto disk.
//!
//! 1. `raw_redb`: the baseline. The same records, encoded as the store encodes
//!    them, appended straight into a redb table in fsynced commits of 1,000.
//! 2. `broker`: 10 devices publish QoS 1 as fast as the gateway commits
//!    (they pause while more than `AHEAD` records are not committed yet, a
//!    closed loop) to the embedded broker (`run_broker`, devices through
//!    its device front, the default), which feeds `Writer::spawn`. Each
//!    device is a [`common::WirePublisher`] (MQTT packets written straight to
//!    its socket, at most 100 unacknowledged), so that the load generator
//!    leaves the 2 cores to what is measured. Records/s
//!    as committed (the store's heads watch), publish→committed latency, the
//!    ratio to the baseline, and the CPU each part used.
//! 3. `broker_direct`: the unpaced phase again with `device_front =
//!    "auto"` and no TLS, logins or ACL: devices straight to rumqttd.
//! 4. `broker_half_raw`, `broker_direct_half_raw`: devices publish at half
//!    the raw rate, paced, without waiting for commits: through the front
//!    (which stops reading from devices while ingest is more than half of
//!    `buffer` behind: no loss, the devices wait) and straight to rumqttd
//!    (ingest more than `buffer` behind loses the oldest acknowledged
//!    messages: `overrun`).
//! 5. `broker_flood`, `broker_direct_flood`: unpaced devices that do not
//!    wait for commits (an open loop): the front holds them back; straight
//!    to rumqttd, whatever ingest cannot keep up with is lost (`overrun`).
//! 6. `paced_*`: the same devices at a steady 1,000 records/s in total, at
//!    commit intervals of 10 ms, 100 ms, 250 ms (the default) and 1 s: the
//!    bytes written per record when each commit carries few records (what
//!    wears an SD card at low rates).
//!
//! Every phase reports the bytes written per record two ways (see
//! BENCHMARKS.md): the kernel's `write_bytes` for this process (page cache
//! dirtied) and the block device's counter (what reached the disk,
//! file-system journal included).
//!
//! `cargo bench -p ferry-gateway --bench ingest`; `FERRY_BENCH_SCALE=0.1` for
//! a quick run. For experiments: `FERRY_BENCH_ONLY=broker_flood,paced` runs
//! only the phases whose names start with one of those (the baseline always
//! runs); `FERRY_BENCH_BUFFER=512KiB` sets the broker's `buffer` and
//! `FERRY_BENCH_COMMIT_MS=250` the commit interval of phases 2-5 (10 ms).

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{fig, fig1, quantile, scaled, section, Disk, WirePublisher, Writes};
use ferry_core::record::{now_millis, Value};
use ferry_gateway::metrics::IngestMetrics;
use ferry_gateway::store::{codec, Store, StoreOptions, Writer, WriterSettings};
use ferry_sources::mqtt::{run_broker, BrokerSourceConfig, DeviceFront};
use redb::{Database, TableDefinition};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

const DEVICES: u64 = 10;
/// Unpaced devices publish while at most this many records are not
/// committed yet (two full group commits).
const AHEAD: u64 = 8_192;
const RAW_COMMIT: usize = 1_000;
const RECORDS: TableDefinition<u64, &[u8]> = TableDefinition::new("records");

fn main() {
    let scale = common::scale();
    common::print_machine();
    println!("# scale: {scale}");
    let start = Instant::now();
    let probe = common::tempdir("ferry-bench-ingest-");
    let disk = Disk::under(probe.path());
    drop(probe);

    let raw_n = scaled(400_000.0, scale, 10_000);
    let raw_rate = raw_redb(raw_n, disk.as_ref());

    // The gateway's runtime and the devices' runtime, apart, so that the CPU
    // each uses can be told apart by thread name.
    let ferry = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("ferry-rt")
        .enable_all()
        .build()
        .expect("ferry runtime");
    let devices = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("load-gen")
        .enable_all()
        .build()
        .expect("load runtime");
    let load = devices.handle().clone();

    // Unpaced: devices through the device front (the default), then
    // straight to rumqttd (`device_front = "auto"`, without TLS, logins or
    // an ACL). Then the target as a load: half the raw rate, paced, for
    // ~10 s, through the front (which slows the devices down when ingest
    // falls behind) and straight to rumqttd (which drops what ingest falls
    // `buffer` behind on).
    let unpaced = scaled(30_000.0, scale, 500);
    let half = raw_rate / 2.0;
    let half_per_device = ((half * 10.0 * scale.min(1.0)) as u64 / DEVICES).max(100);
    let half_pace = Some(Duration::from_secs_f64(DEVICES as f64 / half));
    // Last, a flood: unpaced devices that do not wait for commits, which
    // only the front's back-pressure keeps from losing messages.
    for (name, front, per_device, pace, closed_loop) in [
        ("broker", true, unpaced, None, true),
        ("broker_direct", false, unpaced, None, true),
        ("broker_half_raw", true, half_per_device, half_pace, false),
        (
            "broker_direct_half_raw",
            false,
            half_per_device,
            half_pace,
            false,
        ),
        ("broker_flood", true, unpaced, None, false),
        ("broker_direct_flood", false, unpaced, None, false),
    ] {
        if !wanted(name) {
            continue;
        }
        let rate = ferry.block_on(phase(
            Phase {
                name,
                front,
                commit_interval: Duration::from_millis(commit_ms()),
                per_device,
                pace,
                closed_loop,
            },
            start,
            &load,
            disk.as_ref(),
        ));
        if let Some(rate) = rate {
            let ratio = rate / raw_rate;
            println!("ingest.{name}.ratio_to_raw: {ratio:.2} (target >= 0.50)");
        }
    }

    let paced = scaled(10_000.0, scale, 300) / DEVICES;
    for (name, ms) in [
        ("paced_1000_10ms", 10),
        ("paced_1000_100ms", 100),
        ("paced_1000_250ms", 250),
        ("paced_1000_1s", 1000),
    ] {
        if !wanted(name) {
            continue;
        }
        ferry.block_on(phase(
            Phase {
                name,
                front: true,
                commit_interval: Duration::from_millis(ms),
                per_device: paced,
                pace: Some(Duration::from_millis(10)),
                closed_loop: false,
            },
            start,
            &load,
            disk.as_ref(),
        ));
    }
    devices.shutdown_background();
    ferry.shutdown_background();
}

/// Whether `FERRY_BENCH_ONLY` (unset: every phase) asks for phase `name`.
fn wanted(name: &str) -> bool {
    std::env::var("FERRY_BENCH_ONLY").map_or(true, |only| {
        only.split(',').any(|p| name.starts_with(p.trim()))
    })
}

/// The commit interval of the broker phases: `FERRY_BENCH_COMMIT_MS`, or
/// 10 ms.
fn commit_ms() -> u64 {
    std::env::var("FERRY_BENCH_COMMIT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10)
}

/// The broker's `buffer`: `FERRY_BENCH_BUFFER`, or the default through
/// the front, and 2 MiB for devices straight to rumqttd (the default would
/// overrun in the closed loop's 8,192 records in flight; its docs say to
/// raise it for them).
fn buffer(front: bool) -> bytesize::ByteSize {
    match std::env::var("FERRY_BENCH_BUFFER") {
        Ok(v) => v
            .parse()
            .expect("FERRY_BENCH_BUFFER: a size such as 512KiB"),
        Err(_) if front => BrokerSourceConfig::default().buffer,
        Err(_) => bytesize::ByteSize::mib(2),
    }
}

/// The seed records as the broker source makes them, encoded as the store
/// does, appended in commits of `RAW_COMMIT`. Returns records/s.
fn raw_redb(n: u64, disk: Option<&Disk>) -> f64 {
    section(&format!(
        "raw_redb: {n} seed records into a redb table, fsynced commits of {RAW_COMMIT}"
    ));
    // The ids the ingest writer would give the names: source, device, fields.
    let mut ids: HashMap<String, u32> = HashMap::new();
    let mut id = |name: &str| {
        let next = ids.len() as u32;
        *ids.entry(name.to_owned()).or_insert(next)
    };
    let ts = now_millis();
    let values: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            let device = i % DEVICES;
            let fields = [
                ("client_id", 1),
                ("device_id", device as i64),
                ("voltage", 647),
                ("temperature", 110),
                ("sequence", (i / DEVICES) as i64),
                // The send time the broker phase carries: ns since start.
                ("sent_ns", 1_000_000_000 + i as i64 * 20_000),
            ];
            let mut buf = Vec::with_capacity(64);
            let (source, device) = (id("local"), id(&device.to_string()));
            codec::put_record_header(&mut buf, ts + (i / 100) as i64, source, device, 6);
            for (name, v) in fields {
                codec::put_field(&mut buf, id(name), &Value::Int(v));
            }
            buf
        })
        .collect();
    let mean_len = values.iter().map(Vec::len).sum::<usize>() as f64 / n as f64;
    fig1("ingest.raw_redb.value_len", mean_len, "bytes/record");

    let dir = common::tempdir("ferry-bench-raw-");
    let path = dir.path().join("raw.redb");
    let db = Database::builder()
        .set_cache_size(StoreOptions::default().cache_bytes)
        .create(&path)
        .expect("create the raw redb file");
    let before = Writes::sample("self", disk);
    let t = Instant::now();
    let mut seq = 0u64;
    for chunk in values.chunks(RAW_COMMIT) {
        let tx = db.begin_write().expect("begin_write");
        {
            let mut table = tx.open_table(RECORDS).expect("open records");
            for v in chunk {
                seq += 1;
                table.insert(seq, v.as_slice()).expect("insert");
            }
        }
        tx.commit().expect("commit");
    }
    let secs = t.elapsed().as_secs_f64();
    let after = Writes::sample("self", disk);
    let rate = n as f64 / secs;
    fig("ingest.raw_redb.records_per_s", rate.round(), "records/s");
    after.report(
        &before,
        disk,
        n,
        Some(n.div_ceil(RAW_COMMIT as u64)),
        "ingest.raw_redb",
    );
    let size = std::fs::metadata(&path).map_or(0, |m| m.len());
    fig1(
        "ingest.raw_redb.file_bytes_per_record",
        size as f64 / n as f64,
        "bytes/record",
    );
    rate
}

struct Phase {
    name: &'static str,
    /// Devices connect through the device front (`device_front =
    /// "always"`) instead of to rumqttd directly.
    front: bool,
    commit_interval: Duration,
    per_device: u64,
    /// Time between one device's publishes; `None` = as fast as it can.
    pace: Option<Duration>,
    /// Unpaced devices wait while `AHEAD` records are not committed (a
    /// closed loop); without it they flood.
    closed_loop: bool,
}

fn thread_group(comm: &str) -> &'static str {
    if comm.starts_with("load-gen") {
        "devices"
    } else if comm.starts_with("ferry-rt") {
        "ferry"
    } else if comm.starts_with("router-")
        || comm.starts_with("broker-")
        || comm.ends_with("-v4")
        || comm == "timer"
    {
        "rumqttd"
    } else {
        "other"
    }
}

/// Runs one broker → ingest phase; returns records/s when all arrived.
async fn phase(
    p: Phase,
    start: Instant,
    load: &tokio::runtime::Handle,
    disk: Option<&Disk>,
) -> Option<f64> {
    let total = p.per_device * DEVICES;
    let name = format!("ingest.{}", p.name);
    section(&format!(
        "{}: {DEVICES} devices x {} QoS 1 publishes to the embedded broker, {}, commit_interval {:?}",
        p.name,
        p.per_device,
        match p.pace {
            None => "unpaced".to_owned(),
            Some(d) => format!("{:.0} records/s in total", DEVICES as f64 / d.as_secs_f64()),
        },
        p.commit_interval
    ));
    let dir = common::tempdir("ferry-bench-ingest-");
    let store = Store::open(&Store::file_in(dir.path()), &StoreOptions::default()).expect("store");
    let metrics = IngestMetrics::new();
    let ingest = Writer::spawn(
        store.clone(),
        WriterSettings {
            commit_interval: p.commit_interval,
            ..WriterSettings::default().with_commit_interval(Duration::from_millis(10))
        },
        metrics.clone(),
    );
    let cancel = CancellationToken::new();
    let (ready_tx, ready_rx) = oneshot::channel();
    let source = tokio::spawn(run_broker(
        Arc::from("local"),
        BrokerSourceConfig {
            listen: "127.0.0.1:0".parse().expect("address"),
            device_front: if p.front {
                DeviceFront::Always
            } else {
                DeviceFront::Auto
            },
            buffer: buffer(p.front),
            ..BrokerSourceConfig::default()
        },
        ingest.sink,
        cancel.clone(),
        Some(ready_tx),
    ));
    let addr: SocketAddr = tokio::time::timeout(Duration::from_secs(20), ready_rx)
        .await
        .expect("broker ready in time")
        .expect("broker ready");

    let publishers: Vec<Arc<WirePublisher>> = {
        let mut v = Vec::new();
        for d in 0..DEVICES {
            let id = format!("dev-{d}");
            v.push(Arc::new(
                load.spawn(async move { WirePublisher::connect(addr, &id).await })
                    .await
                    .expect("connect task"),
            ));
        }
        v
    };

    // Every change of the committed head, with when it was seen.
    let seen = Arc::new(std::sync::Mutex::new(Vec::<(u64, u64)>::new()));
    let mut heads = store.watch_heads();
    let record = seen.clone();
    let watcher = tokio::spawn(async move {
        loop {
            let h = heads.borrow_and_update().records;
            record
                .lock()
                .unwrap()
                .push((start.elapsed().as_nanos() as u64, h));
            if heads.changed().await.is_err() {
                return;
            }
        }
    });

    let cpu0 = common::cpu_by_group(thread_group);
    let w0 = Writes::sample("self", disk);
    let commits0 = metrics.commits.get();
    let t0 = Instant::now();
    let mut sending = Vec::new();
    // Unpaced devices stop while more than `AHEAD` of all published records
    // are not committed yet: the most the gateway can sustain, without
    // outrunning the embedded broker's buffer (which would drop acknowledged
    // messages: see `lost` below).
    let published_total = Arc::new(std::sync::atomic::AtomicU64::new(0));
    for (d, pubr) in publishers.iter().enumerate() {
        let pubr = pubr.clone();
        let (per, pace, closed_loop) = (p.per_device, p.pace, p.closed_loop);
        let published_total = published_total.clone();
        let mut committed = store.watch_heads();
        sending.push(load.spawn(async move {
            let topic = common::seed_topic(d as u64);
            let mut tick = pace.map(|every| {
                // Spread the devices over the period.
                let first = tokio::time::Instant::now() + every.mul_f64(d as f64 / DEVICES as f64);
                tokio::time::interval_at(first, every)
            });
            for i in 0..per {
                if let Some(t) = &mut tick {
                    t.tick().await;
                }
                let sent = start.elapsed().as_nanos() as u64;
                // A reading at a time when paced by the millisecond or
                // slower; else in bursts of 16 (tokio's timer ticks by the
                // millisecond, so faster paces come in bursts anyway).
                let burst_end = i % 16 == 15 || i + 1 == per;
                let flush = burst_end || pace.is_some_and(|e| e >= Duration::from_millis(1));
                pubr.publish(
                    &topic,
                    common::seed_payload(d as u64, i, sent).as_bytes(),
                    flush,
                )
                .await;
                let n = published_total.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                if closed_loop && tick.is_none() && flush {
                    while n.saturating_sub(committed.borrow_and_update().records) > AHEAD {
                        if committed.changed().await.is_err() {
                            break;
                        }
                    }
                }
            }
        }));
    }
    for s in sending {
        s.await.expect("publishing task");
    }
    let published = t0.elapsed();
    let acked = || -> u64 {
        publishers
            .iter()
            .map(|p| p.acked.load(std::sync::atomic::Ordering::Relaxed))
            .sum()
    };
    common::poll_until(Duration::from_secs(60), Duration::from_millis(5), || {
        acked() >= total
    })
    .await;
    // Done when every record is committed, or when the head has not moved
    // for 3 s (the broker dropped messages: counted below).
    let mut last = (store.heads().records, Instant::now());
    common::poll_until(Duration::from_secs(300), Duration::from_millis(5), || {
        let h = store.heads().records;
        if h != last.0 {
            last = (h, Instant::now());
        }
        h >= total || last.1.elapsed() > Duration::from_secs(3)
    })
    .await;
    // The watcher may not have seen the last head yet (it runs on the same
    // runtime, after this poll): the rate and latencies need it.
    let final_head = store.heads().records;
    common::poll_until(Duration::from_secs(5), Duration::from_millis(1), || {
        seen.lock()
            .unwrap()
            .last()
            .is_some_and(|&(_, h)| h >= final_head)
    })
    .await;
    watcher.abort();
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    // Until the last commit (not the 3 s of waiting for one more).
    let wall = last.1.saturating_duration_since(t0).max(published);
    // Let the last commit's writes land before reading the counters.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let w1 = Writes::sample("self", disk);
    let cpu1 = common::cpu_by_group(thread_group);
    let commits = metrics.commits.get() - commits0;

    cancel.cancel();
    let _ = source.await;
    drop(ingest.cursors);
    let _ = ingest.task.await;
    let acked_by_broker = acked();
    drop(publishers);

    let heads = store.heads();
    fig(
        &format!("{name}.publish_seconds"),
        format!("{:.1}", published.as_secs_f64()),
        &format!(
            "s ({:.0} records/s offered)",
            total as f64 / published.as_secs_f64()
        ),
    );
    if acked_by_broker != total || heads.records != total || heads.dead > 0 {
        println!(
            "{name}.lost: {} records (published {total}, acknowledged by the broker {acked_by_broker}, committed {}, {} overrun dead letters)",
            acked_by_broker.saturating_sub(heads.records),
            heads.records,
            heads.dead
        );
    }
    if heads.records == 0 {
        return None;
    }

    // Latency: the head that first covered a record's seq, minus its send time.
    let mut latencies = Vec::with_capacity(total as usize);
    let mut first_sent = u64::MAX;
    let mut buf = Vec::new();
    let mut after = 0;
    loop {
        buf.clear();
        let stats = store
            .read_records(after, 8192, &mut buf)
            .expect("read back");
        if buf.is_empty() {
            break;
        }
        after = stats.last_seq;
        for r in &buf {
            let Some(Value::Int(sent)) = r.record.field("sent_ns") else {
                continue;
            };
            let sent = *sent as u64;
            first_sent = first_sent.min(sent);
            let i = seen.partition_point(|&(_, h)| h < r.seq);
            if let Some(&(at, _)) = seen.get(i) {
                latencies.push(at.saturating_sub(sent));
            }
        }
    }
    latencies.sort_unstable();
    let last_commit = seen
        .iter()
        .find(|&&(_, h)| h >= heads.records)
        .map_or(0, |&(at, _)| at);
    let secs = (last_commit.saturating_sub(first_sent)) as f64 / 1e9;
    let rate = heads.records as f64 / secs;
    fig(&format!("{name}.records"), heads.records, "records");
    fig(&format!("{name}.records_per_s"), rate.round(), "records/s");
    let ms = |ns: u64| ns as f64 / 1e6;
    fig1(
        &format!("{name}.latency_p50"),
        ms(quantile(&latencies, 0.50)),
        "ms",
    );
    println!(
        "{name}.latency_p99: {:.1} ms (target <= 50)",
        ms(quantile(&latencies, 0.99))
    );
    fig1(
        &format!("{name}.latency_max"),
        ms(quantile(&latencies, 1.0)),
        "ms",
    );
    fig(&format!("{name}.commits"), commits, "commits");
    fig1(
        &format!("{name}.records_per_commit"),
        heads.records as f64 / commits.max(1) as f64,
        "records/commit",
    );
    commit_durations(&metrics, &name);
    w1.report(&w0, disk, heads.records, Some(commits), &name);
    let size = std::fs::metadata(store.path()).map_or(0, |m| m.len());
    fig1(
        &format!("{name}.file_bytes_per_record"),
        size as f64 / heads.records.max(1) as f64,
        "bytes/record",
    );
    common::report_cpu(&name, &cpu0, &cpu1, wall);
    Some(rate)
}

/// The commit-duration histogram (write + fsync of one group commit): its
/// mean and the bucket bounds under which 50% and 99% of commits fall.
fn commit_durations(metrics: &IngestMetrics, name: &str) {
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register("d", "", metrics.commit_duration.clone());
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
    let mut buckets = Vec::new();
    let (mut sum, mut count) = (0.0, 0.0);
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("d_bucket{le=\"") {
            let (le, n) = rest.split_once("\"} ").expect("bucket line");
            buckets.push((
                le.parse::<f64>().unwrap_or(f64::INFINITY),
                n.parse::<f64>().unwrap_or(0.0),
            ));
        } else if let Some(v) = line.strip_prefix("d_sum ") {
            sum = v.parse().unwrap_or(0.0);
        } else if let Some(v) = line.strip_prefix("d_count ") {
            count = v.parse().unwrap_or(0.0);
        }
    }
    let under = |q: f64| {
        buckets
            .iter()
            .find(|&&(_, n)| n >= q * count)
            .map_or(f64::INFINITY, |&(le, _)| le * 1e3)
    };
    println!(
        "{name}.commit_duration: mean {:.1} ms, p50 <= {} ms, p99 <= {} ms",
        sum / count.max(1.0) * 1e3,
        under(0.5),
        under(0.99)
    );
}
