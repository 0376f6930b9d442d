//! Fault injection on the uplink's link and on the daemon while it is
//! offline: a link throttled to 10 KB/s, and the CPU the daemon spends (and
//! the reconnects it attempts) while the cloud is unreachable.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use ferry_core::record::Value;
use ferry_gateway::metrics::UplinkMetrics;
use ferry_gateway::store::{Store, StoreOptions};
use ferry_gateway::uplink::Settings;
use ferry_testkit::{free_port, json_record_seqs, Mosquitto, Pki, Proxy};

const WAIT: Duration = Duration::from_secs(120);

/// The uplink settings of these tests: slower to give up than the default.
fn settings(pki: &Pki, addr: SocketAddr) -> Settings {
    Settings {
        keep_alive: Duration::from_secs(30),
        connect_timeout: Duration::from_secs(10),
        puback_timeout: Duration::from_secs(30),
        reconnect_min: Duration::from_millis(100),
        reconnect_max: Duration::from_secs(1),
        ..uplink_settings(pki, addr, &pki.ca, &pki.client)
    }
}

/// A 10 KB/s link (each way) carrying batches that each take longer to
/// cross than a fifth of `puback_timeout`, and all of them together far
/// longer than it: the uplink keeps one session, sends every record exactly
/// once, and keeps each batch within its limits. The PUBACK timeout counts
/// from the last sign of progress, so a slow link is never mistaken for a
/// dead one (which would resend the whole window again and again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_throttled_to_10_kb_per_s_delivers_each_record_once_without_resend_storms() {
    const RECORDS: u64 = 1_000;
    const RATE: u64 = 10_000;
    const MAX_BATCH: usize = 16 * 1024;
    let Cloud {
        pki,
        mosquitto: cloud,
        sub,
    } = Cloud::start().await;
    let link = Proxy::start(cloud.tls_addr()).await.unwrap();
    link.throttle(RATE);
    let gw = Gateway::new(small_reading, 500);
    gw.store(0..RECORDS).await;
    let mut s = settings(&pki, link.addr());
    s.max_batch_bytes = MAX_BATCH;
    // One batch crosses in ~1.6 s; all of them take ~12 s.
    s.puback_timeout = Duration::from_secs(4);
    let started = Instant::now();
    let (cancel, task) = gw.start(s);
    let seen = sub
        .wait_for_seqs(1..RECORDS + 1, WAIT, |m| json_record_seqs(&m.payload))
        .await
        .unwrap();
    let took = started.elapsed();
    assert!(seen.is_complete(), "{seen}");
    assert_eq!(seen.duplicates(), 0, "exactly once on a slow link: {seen}");
    assert_eq!(seen.outside(), 0);
    let payload: usize = sub.messages().iter().map(|m| m.payload.len()).sum();
    for m in sub.messages() {
        assert!(m.payload.len() <= MAX_BATCH, "{} bytes", m.payload.len());
    }
    let label = UplinkMetrics::label("cloud");
    let m = &gw.metrics;
    assert_eq!(m.connect_errors.get_or_create(&label).get(), 0);
    assert_eq!(m.connects.get_or_create(&label).get(), 1);
    // (The first connect follows a probe: a TCP connect that carries nothing.)
    assert_eq!(link.sessions().len(), 1, "one connection, never given up");
    // What crossed the link: the payloads once, plus TLS and MQTT framing.
    let up = link.bytes_up();
    assert!(
        up <= payload as u64 * 11 / 10 + 16 * 1024,
        "{up} bytes on the wire for {payload} bytes of payload: something was resent"
    );
    // And the link really was slow.
    assert!(
        took >= Duration::from_secs_f64(payload as f64 / RATE as f64 * 0.9),
        "{payload} bytes crossed 10 KB/s in {took:?}"
    );
    eprintln!(
        "{RECORDS} records in {} publishes ({payload} payload bytes, {up} on the wire) in {took:?}",
        sub.len()
    );
    cancel.cancel();
    task.await.unwrap();
}

/// A 20 kB/s link and an uplink killed every 3 s (its task aborted: no
/// drain, what is in flight is lost, like `kill -9`), restarted on the same
/// store: every life moves the durable cursor, and every record arrives.
/// A 128 KiB batch takes 6.5 s to cross such a link; batches sized to the
/// link's measured throughput (2 s of it) are acknowledged within a life.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_20_kb_per_s_link_with_the_uplink_killed_every_3_s_moves_the_cursor_every_life() {
    const RECORDS: u64 = 1_500;
    const RATE: u64 = 20_000;
    const LIFE: Duration = Duration::from_secs(3);
    let Cloud {
        pki,
        mosquitto: cloud,
        sub,
    } = Cloud::start().await;
    let link = Proxy::start(cloud.tls_addr()).await.unwrap();
    link.throttle(RATE);
    let gw = Gateway::new(seed_reading, 500);
    gw.store(0..RECORDS).await;
    let label = UplinkMetrics::label("cloud");
    let mut cursors = vec![0u64];
    // The link's throughput as the uplink measured it, each life.
    let mut rates = Vec::new();
    while *cursors.last().unwrap() < RECORDS {
        assert!(cursors.len() <= 40, "no end in sight: cursors {cursors:?}");
        let (_cancel, task) = gw.start(settings(&pki, link.addr()));
        // The life's length: a schedule of kills, not a wait for an event.
        tokio::time::sleep(LIFE).await;
        rates.push(gw.metrics.link_rate.get_or_create(&label).get());
        task.abort();
        let _ = task.await;
        // What the uplink advanced is committed within the writer's interval.
        let advanced = gw.metric(|m| m.acked_seq.get_or_create(&label).get());
        ferry_testkit::wait_until(WAIT, "the last cursor move committed", || {
            gw.store.cursor("uplink.cloud").unwrap() == advanced
        })
        .await
        .unwrap();
        let before = *cursors.last().unwrap();
        cursors.push(advanced);
        assert!(
            advanced > before,
            "life {} moved nothing: cursors {cursors:?}",
            cursors.len() - 1
        );
    }
    let seen = sub
        .wait_for_seqs(1..RECORDS + 1, WAIT, |m| json_record_seqs(&m.payload))
        .await
        .unwrap();
    assert!(seen.is_complete(), "{seen}");
    assert_eq!(seen.outside(), 0);
    let largest = sub
        .messages()
        .iter()
        .map(|m| m.payload.len())
        .max()
        .unwrap();
    eprintln!(
        "{RECORDS} records over {} lives of {LIFE:?} at {RATE} B/s: cursors {cursors:?}; \
         measured {rates:.0?} B/s; \
         {} publishes, the largest {largest} bytes; {} duplicates",
        cursors.len() - 1,
        sub.len(),
        seen.duplicates()
    );
    // About two seconds of the link (the measure is of a proxy that slices
    // its pacing), never the 6.5 s of a full batch.
    assert!(largest <= 3 * RATE as usize, "a {largest}-byte batch");
    for r in &rates {
        assert!(
            (RATE as f64 / 2.0..=RATE as f64 * 2.0).contains(r),
            "measured {rates:?} B/s of a {RATE} B/s link"
        );
    }
}

/// How long the CPU is measured while offline, and the bound: 2% of one core.
const OFFLINE_WINDOW: Duration = Duration::from_secs(6);
const OFFLINE_CPU_SHARE: f64 = 0.02;

/// The daemon with its embedded broker, a backlog of readings and an uplink
/// to `cloud` (fast timeouts, so that reconnects happen within the window).
fn offline_daemon(dir: &std::path::Path, cloud: SocketAddr, pki: &Pki) -> (Ferry, SocketAddr) {
    let broker = SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
    let config = broker_config(&dir.join("data"), broker, cloud, pki, metrics).replace(
        "[metrics]",
        "connect_timeout = \"1s\"\npuback_timeout = \"1s\"\nkeep_alive = \"5s\"\n\n[metrics]",
    );
    let ferry = Ferry::start(dir, &config);
    (ferry, broker)
}

async fn publish_backlog(broker: SocketAddr, n: u64) {
    let mut p = Publisher::connect(broker, "device-pub").await.unwrap();
    for i in 0..n {
        p.publish(&seed_topic(i), seed_payload(i)).await.unwrap();
    }
}

/// Measures CPU time and reconnect attempts over [`OFFLINE_WINDOW`];
/// `attempts` counts them however the case can.
async fn measure_offline(ferry: &Ferry, attempts: impl Fn() -> u64) -> (Duration, u64, Duration) {
    let (cpu0, n0, t0) = (cpu_time(ferry.pid()), attempts(), Instant::now());
    // A measuring interval, not a wait for something to happen.
    tokio::time::sleep(OFFLINE_WINDOW).await;
    let (cpu1, n1, t1) = (cpu_time(ferry.pid()), attempts(), Instant::now());
    (cpu1 - cpu0, n1 - n0, t1 - t0)
}

fn assert_low_cpu(what: &str, cpu: Duration, wall: Duration) {
    let share = cpu.as_secs_f64() / wall.as_secs_f64();
    eprintln!(
        "{what}: {cpu:?} CPU in {wall:?} = {:.2}% of one core",
        share * 100.0
    );
    assert!(
        share < OFFLINE_CPU_SHARE,
        "{what}: the daemon used {cpu:?} of CPU in {wall:?} ({:.2}% of a core; bound {}%)",
        share * 100.0,
        OFFLINE_CPU_SHARE * 100.0
    );
}

/// The cloud refuses connections (nothing listens): the uplink probes the
/// endpoint (a TCP connect, about one a second: an interval drawn in 0.5 to
/// 1 s) and spends no TLS connect while the probes are refused; never a busy
/// loop, and the daemon's CPU stays under 2% of a core.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_with_the_cloud_refusing_connections_cpu_stays_low_and_reconnects_back_off() {
    let pki = Pki::generate("pi-line-7").unwrap();
    let down = SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
    let dir = tempfile::tempdir().unwrap();
    let (ferry, broker) = offline_daemon(dir.path(), down, &pki);
    let metrics = metrics_addr(&ferry);
    publish_backlog(broker, 500).await;
    let refused = || metric_sum(metrics, "ferry_uplink_probe_failures_total") as u64;
    ferry_testkit::wait_until(WAIT, "five refused probes", || refused() >= 5)
        .await
        .unwrap();
    let (cpu, probes, wall) = measure_offline(&ferry, refused).await;
    eprintln!("{probes} probes refused in {wall:?}");
    // One every 0.5 to 1 s: 6 to 12 in 6 s. A busy loop would make
    // thousands; no retrying at all would make none.
    assert!((2..=40).contains(&probes), "{probes} probes in {wall:?}");
    assert_eq!(
        metric_sum(metrics, "ferry_uplink_connect_attempts_total"),
        0.0,
        "a TLS connect while every probe was refused"
    );
    assert_low_cpu("cloud refusing connections", cpu, wall);
    assert_eq!(metric_sum(metrics, "ferry_ingest_head_seq"), 500.0);
}

/// The link is blackholed (packets vanish, connections stay open; this
/// proxy still completes TCP handshakes, so the probes answer): each TLS
/// connect waits out `connect_timeout` (1 s), connects start at least 1 s
/// apart, and the daemon's CPU stays under 2% of a core.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_behind_a_blackholed_link_cpu_stays_low_and_reconnects_back_off() {
    let Cloud {
        pki,
        mosquitto: cloud,
        sub,
    } = Cloud::start().await;
    let link = Proxy::start(cloud.tls_addr()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (ferry, broker) = offline_daemon(dir.path(), link.addr(), &pki);
    let metrics = metrics_addr(&ferry);
    publish_backlog(broker, 100).await;
    sub.wait_for_seqs(1..101, WAIT, |m| json_record_seqs(&m.payload))
        .await
        .unwrap();
    link.blackhole().await;
    publish_backlog(broker, 500).await;
    let errors = || metric_sum(metrics, "ferry_uplink_connect_errors_total") as u64;
    ferry_testkit::wait_until(WAIT, "the session given up, twice", || errors() >= 2)
        .await
        .unwrap();
    let connects = || metric_sum(metrics, "ferry_uplink_connect_attempts_total") as u64;
    let accepted_before = link.accepted();
    let (cpu, attempts, wall) = measure_offline(&ferry, connects).await;
    eprintln!(
        "{attempts} TLS connects in {wall:?}; {} connections (probes included) accepted by the blackhole",
        link.accepted() - accepted_before
    );
    // Each attempt: 1 s unanswered, the next at least 1 s after it started.
    let most = (wall.as_secs_f64() / 1.0).ceil() as u64 + 1;
    assert!(
        (1..=most).contains(&attempts),
        "{attempts} attempts in {wall:?} (at most {most})"
    );
    assert_low_cpu("blackholed link", cpu, wall);
    // And when the link returns, the backlog goes out.
    link.restore();
    let seen = sub
        .wait_for_seqs(1..601, WAIT, |m| json_record_seqs(&m.payload))
        .await
        .unwrap();
    assert!(seen.is_complete(), "{seen}");
}

/// An ext4 file system in an image file, loop-mounted (needs root).
/// `errors=remount-ro`, as Raspberry Pi OS mounts its root: after an error
/// the kernel turns the file system read-only under the running daemon.
struct LoopFs {
    image: std::path::PathBuf,
    dir: std::path::PathBuf,
}

impl LoopFs {
    fn create(under: &std::path::Path) -> Option<LoopFs> {
        let image = under.join("store.img");
        let dir = under.join("mnt");
        std::fs::create_dir_all(&dir).ok()?;
        std::fs::File::create(&image).ok()?.set_len(64 << 20).ok()?;
        let ok = run("mkfs.ext4", &["-q", "-F", image.to_str()?]).is_ok();
        let fs = LoopFs { image, dir };
        (ok && fs.mount().is_ok()).then_some(fs)
    }

    fn mount(&self) -> Result<(), String> {
        run(
            "mount",
            &[
                "-o",
                "loop,errors=remount-ro",
                self.image.to_str().unwrap(),
                self.dir.to_str().unwrap(),
            ],
        )
    }

    /// What the kernel does on an I/O error with `errors=remount-ro`: from
    /// now on every write and every open for writing fails with EROFS.
    fn turn_read_only(&self) {
        run(
            "mount",
            &["-o", "remount,abort", self.dir.to_str().unwrap()],
        )
        .unwrap();
    }

    /// What an operator does: unmount, check, mount again.
    fn repair(&self) -> Result<(), String> {
        run("umount", &[self.dir.to_str().unwrap()])?;
        // e2fsck exits 1 when it corrected something: that is a repair.
        let _ = run("e2fsck", &["-f", "-y", self.image.to_str().unwrap()]);
        self.mount()
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let _ = run("umount", &["-l", self.dir.to_str().unwrap()]);
    }
}

fn run(cmd: &str, args: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd} {args:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The store's file system turns read-only under the running daemon (as
/// `errors=remount-ro` does after a card error): no panic, readings are not
/// acknowledged to the local broker (subscribe mode), so nothing is lost;
/// `ferry_store_writable` shows 0 and commit errors are counted. After the
/// operator repairs and remounts the file system, ingest resumes by itself
/// (the writer reopens the store file by its path) and every reading,
/// before, during and after, reaches the store and the cloud.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_file_system_turning_read_only_loses_nothing_and_ingest_resumes_by_itself() {
    if !is_root() {
        eprintln!("skipped: mounting a file system needs root (CI runs as root)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(fs) = LoopFs::create(dir.path()) else {
        panic!("cannot make and loop-mount an ext4 image as root (mkfs.ext4, loop devices)");
    };
    let Cloud {
        pki,
        mosquitto: cloud,
        sub,
    } = Cloud::start().await;
    let local = Mosquitto::plain().unwrap();
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
    let data = fs.dir.join("data");
    let config = subscribe_config(&data, local.plain_addr(), cloud.tls_addr(), &pki, metrics);
    let mut ferry = Ferry::start(dir.path(), &config);
    tokio::task::block_in_place(|| ferry.wait_log("subscribed", Duration::from_secs(30)));
    let mut p = Publisher::connect(local.plain_addr(), "device-pub")
        .await
        .unwrap();
    for i in 0..200 {
        p.publish(&seed_topic(i), seed_payload(i)).await.unwrap();
    }
    ferry_testkit::wait_until(WAIT, "200 readings stored", || {
        metric_sum(metrics, "ferry_ingest_head_seq") == 200.0
    })
    .await
    .unwrap();

    fs.turn_read_only();
    for i in 200..400 {
        p.publish(&seed_topic(i), seed_payload(i)).await.unwrap();
    }
    ferry_testkit::wait_until(WAIT, "commits failing, shown in the metrics", || {
        metric_sum(metrics, "ferry_store_writable") == 0.0
            && metric_sum(metrics, "ferry_ingest_commit_errors_total") >= 1.0
    })
    .await
    .unwrap();
    assert_eq!(metric_sum(metrics, "ferry_ingest_head_seq"), 200.0);
    assert!(
        ferry_alive(&mut ferry),
        "the daemon ended on a read-only store"
    );

    // The operator repairs the file system; nothing is done to the daemon.
    // (The writer closed the file when its commit failed, so it unmounts.)
    ferry_testkit::wait_until(WAIT, "the file system unmounted and repaired", || {
        fs.repair().is_ok()
    })
    .await
    .unwrap();
    for i in 400..500 {
        p.publish(&seed_topic(i), seed_payload(i)).await.unwrap();
    }
    let seen = sub.wait_for_seqs(0..500, WAIT, sequences).await.unwrap();
    assert!(seen.is_complete(), "{seen}");
    assert_eq!(metric_sum(metrics, "ferry_store_writable"), 1.0);
    let log = ferry.log().join("\n");
    assert!(!log.contains("panicked"), "{log}");
    assert!(log.contains("Read-only file system"), "the cause is logged");
    assert!(log.contains("store reopened"), "{log}");
    eprintln!(
        "read-only: {} commit errors, {} records refused, then resumed; {} readings at the cloud",
        metric_sum(metrics, "ferry_ingest_commit_errors_total"),
        metric_sum(metrics, "ferry_ingest_records_failed_total"),
        seen.distinct()
    );

    // Every reading is in the store file, once or more (redelivered ones).
    assert!(ferry.terminate().success());
    let store = Store::open(&Store::file_in(&data), &StoreOptions::default()).unwrap();
    let mut out = Vec::new();
    store.read_records(0, usize::MAX, &mut out).unwrap();
    let mut have = std::collections::BTreeSet::new();
    for r in &out {
        let seq = r.record.fields.iter().find(|(k, _)| &**k == "sequence");
        if let Some((_, Value::Int(n))) = seq {
            have.insert(*n);
        }
    }
    assert_eq!(have, (0..500).collect(), "every reading is stored");
    drop(store);
}

fn ferry_alive(ferry: &mut Ferry) -> bool {
    // The process exists and is not a zombie.
    std::fs::read_to_string(format!("/proc/{}/stat", ferry.pid()))
        .is_ok_and(|s| !s[s.rfind(')').unwrap() + 2..].starts_with('Z'))
}

/// Starting on a store directory that is read-only: the daemon exits at
/// once with a message naming the store file and the cause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starting_on_a_read_only_store_directory_fails_with_a_clear_error() {
    if !is_root() {
        eprintln!("skipped: mounting a file system needs root (CI runs as root)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("ro");
    std::fs::create_dir_all(&mnt).unwrap();
    run(
        "mount",
        &[
            "-t",
            "tmpfs",
            "-o",
            "size=4m",
            "tmpfs",
            mnt.to_str().unwrap(),
        ],
    )
    .unwrap();
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = run("umount", &["-l", self.0.to_str().unwrap()]);
        }
    }
    let _unmount = Unmount(mnt.clone());
    let data = mnt.join("data");
    std::fs::create_dir_all(&data).unwrap();
    run("mount", &["-o", "remount,ro", mnt.to_str().unwrap()]).unwrap();

    let pki = Pki::generate("pi-line-7").unwrap();
    let broker = SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
    let cloud = SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
    let path = dir.path().join("ferry.toml");
    std::fs::write(&path, broker_config(&data, broker, cloud, &pki, metrics)).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let file = Store::file_in(&data);
    assert_eq!(out.status.code(), Some(73), "{stderr}");
    assert!(stderr.contains(&file.display().to_string()), "{stderr}");
    assert!(stderr.contains("read-only"), "{stderr}");
}
