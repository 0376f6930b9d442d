//! Fault injection: the daemon is killed with SIGKILL at random moments
//! while devices publish and it forwards, again and again. Subscribe mode
//! promises zero loss: every message the local broker acknowledged to a
//! device must reach the cloud after the last restart.
//!
//! Copies at the cloud are bounded: the uplink's cursor is made durable
//! within a commit interval of each PUBACK, so after a kill only what was in
//! flight and what was acknowledged just before is sent again. Each copy
//! keeps its gateway `seq`; the test counts them per `seq`.
//!
//! `FERRY_KILL_CYCLES` sets the number of kills (default 100); the loop also
//! stops after 120 s, so CI time stays bounded.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use ferry_testkit::{free_ports, json_record_seqs, Mosquitto};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_again_and_again_loses_nothing_in_subscribe_mode() {
    let cycles: usize = std::env::var("FERRY_KILL_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let Cloud {
        pki,
        mosquitto: cloud,
        sub,
    } = Cloud::start().await;
    let local = Mosquitto::plain().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let metrics = std::net::SocketAddr::from(([127, 0, 0, 1], free_ports(1).unwrap()[0]));
    let config = subscribe_config(
        &dir.path().join("data"),
        local.plain_addr(),
        cloud.tls_addr(),
        &pki,
        metrics,
    );
    let mut ferry = Ferry::start(dir.path(), &config);
    tokio::task::block_in_place(|| ferry.wait_log("subscribed", Duration::from_secs(30)));

    // Devices publish throughout; the local broker acknowledges each message.
    let stop = tokio_util::sync::CancellationToken::new();
    let local_addr = local.plain_addr();
    let publishing = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut p = Publisher::connect(local_addr, "device-pub").await.unwrap();
            let mut i = 0u64;
            while !stop.is_cancelled() {
                p.publish(&seed_topic(i), seed_payload(i)).await.unwrap();
                i += 1;
            }
            i
        })
    };

    let started = Instant::now();
    let mut kills_at = Vec::new();
    while kills_at.len() < cycles && started.elapsed() < Duration::from_secs(120) {
        // A random moment: mid-commit, mid-publish, mid-start.
        let delay = Duration::from_millis(fastrand::u64(20..300));
        tokio::time::sleep(delay).await;
        tokio::task::block_in_place(|| {
            kills_at.push(Instant::now());
            ferry.kill9();
            ferry = Ferry::start_file(&ferry.config);
        });
    }
    let kills = kills_at.len();
    stop.cancel();
    let published = publishing.await.unwrap();
    let seen = sub
        .wait_for_seqs(0..published, Duration::from_secs(120), sequences)
        .await
        .unwrap();
    assert!(seen.is_complete(), "{seen}");

    // Copies at the cloud, per gateway `seq`: after a kill the new process
    // sends again what was in flight and what was acknowledged since the
    // cursor was last made durable (within one commit interval of the
    // PUBACK). So the earlier copy of every duplicate arrived at the cloud
    // within a short time of a kill that came before the copy.
    let copies = Copies::count(&sub.messages(), &kills_at);
    eprintln!(
        "{kills} kills in {:?}; {published} messages, all delivered; {} copies of a reading \
         at the cloud (incl. redeliveries by the local broker); per gateway seq: {copies}",
        started.elapsed(),
        seen.duplicates(),
    );
    assert!(
        copies.late.is_empty(),
        "{} copies sent again although their earlier copy reached the cloud more than \
         {DUPLICATE_WINDOW:?} from any kill (the cursor lagged): e.g. {:?}",
        copies.late.len(),
        &copies.late[..copies.late.len().min(10)]
    );
    drop(ferry);
}

/// The tight loop that matters most for copies: a backlog drains to the
/// cloud while no new reading comes in (so no record commit carries the
/// cursor), and each process lives a fraction of a second. Every life must
/// make its progress durable, or the loop would send the same front of the
/// backlog for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_a_backlog_drain_resends_only_what_was_in_flight() {
    const BACKLOG: u64 = 20_000;
    let Cloud {
        pki,
        mosquitto: cloud,
        sub,
    } = Cloud::start().await;
    let link = ferry_testkit::Proxy::start(cloud.tls_addr()).await.unwrap();
    let local = Mosquitto::plain().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let metrics = std::net::SocketAddr::from(([127, 0, 0, 1], free_ports(1).unwrap()[0]));
    // Smaller batches at a lower rate: the drain outlasts the kills.
    let config = subscribe_config(
        &dir.path().join("data"),
        local.plain_addr(),
        link.addr(),
        &pki,
        metrics,
    )
    .replace(
        "[metrics]",
        "max_batch_bytes = \"32KiB\"\nmax_bytes_per_second = \"256KiB\"\n\n[metrics]",
    )
        // Cursor moves that are not prompt wait longer than any life here,
        // so every copy beyond the window would show a lagging cursor.
        + "\n[store]\ncursor_flush_interval = \"30s\"\n";
    // The backlog builds up while the link is cut.
    link.cut().await;
    let mut ferry = Ferry::start(dir.path(), &config);
    tokio::task::block_in_place(|| ferry.wait_log("subscribed", Duration::from_secs(30)));
    let mut p = Publisher::connect(local.plain_addr(), "device-pub")
        .await
        .unwrap();
    for i in 0..BACKLOG {
        p.publish(&seed_topic(i), seed_payload(i)).await.unwrap();
    }
    ferry_testkit::wait_until(Duration::from_secs(60), "the backlog stored", || {
        metric_sample(metrics, "ferry_ingest_head_seq") == Some(BACKLOG as f64)
    })
    .await
    .unwrap();
    assert!(sub.is_empty());

    link.restore();
    let started = Instant::now();
    let mut kills_at = Vec::new();
    // Lives long enough to connect and deliver for a while.
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_millis(fastrand::u64(300..1500))).await;
        tokio::task::block_in_place(|| {
            kills_at.push(Instant::now());
            ferry.kill9();
            ferry = Ferry::start_file(&ferry.config);
        });
    }
    let seen = sub
        .wait_for_seqs(1..BACKLOG + 1, Duration::from_secs(120), |m| {
            json_record_seqs(&m.payload)
        })
        .await
        .unwrap();
    assert!(seen.is_complete(), "{seen}");
    let copies = Copies::count(&sub.messages(), &kills_at);
    eprintln!(
        "{} kills in {:?} while {BACKLOG} records drained: {copies}",
        kills_at.len(),
        started.elapsed()
    );
    assert!(
        copies.late.is_empty(),
        "{} copies sent again although their earlier copy reached the cloud more than \
         {DUPLICATE_WINDOW:?} from any kill (the cursor lagged): e.g. {:?}",
        copies.late.len(),
        &copies.late[..copies.late.len().min(10)]
    );
    drop(ferry);
}

/// How far from a kill an acknowledged record may have reached the cloud
/// and still be sent again: the commit interval (250 ms by default) and its
/// fsync, the PUBACK's way back and scheduling on a loaded 2-core CI machine.
const DUPLICATE_WINDOW: Duration = Duration::from_millis(500);

/// Duplicates at the cloud by gateway sequence number.
struct Copies {
    /// Records that arrived more than once (each extra arrival counted).
    duplicates: u64,
    /// The most duplicates after one kill.
    most_per_kill: u64,
    /// Duplicates with no kill within [`DUPLICATE_WINDOW`] of their earlier
    /// copy: (seq, distance to the nearest earlier kill, if any).
    late: Vec<(u64, Option<Duration>)>,
    /// The largest distance from an earlier copy to its kill, over all duplicates.
    widest: Duration,
}

impl Copies {
    fn count(messages: &[ferry_testkit::Message], kills_at: &[Instant]) -> Copies {
        let mut last: HashMap<u64, Instant> = HashMap::new();
        let mut per_kill = vec![0u64; kills_at.len()];
        let mut c = Copies {
            duplicates: 0,
            most_per_kill: 0,
            late: Vec::new(),
            widest: Duration::ZERO,
        };
        for m in messages {
            for seq in json_record_seqs(&m.payload).unwrap() {
                let Some(prev) = last.insert(seq, m.received) else {
                    continue;
                };
                c.duplicates += 1;
                // Kills before this copy; the one nearest the earlier copy.
                let before = kills_at.partition_point(|k| *k < m.received);
                let nearest = kills_at[..before]
                    .iter()
                    .enumerate()
                    .map(|(i, k)| (i, abs_diff(*k, prev)))
                    .min_by_key(|(_, d)| *d);
                match nearest {
                    Some((i, d)) if d <= DUPLICATE_WINDOW => {
                        per_kill[i] += 1;
                        c.widest = c.widest.max(d);
                    }
                    other => c.late.push((seq, other.map(|(_, d)| d))),
                }
            }
        }
        c.most_per_kill = per_kill.into_iter().max().unwrap_or(0);
        c
    }
}

impl std::fmt::Display for Copies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} duplicates, at most {} after one kill, earlier copies at most {:?} from their kill, {} late",
            self.duplicates,
            self.most_per_kill,
            self.widest,
            self.late.len()
        )
    }
}

fn abs_diff(a: Instant, b: Instant) -> Duration {
    if a > b {
        a - b
    } else {
        b - a
    }
}
