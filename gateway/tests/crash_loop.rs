//! Fault injection: the daemon is killed with SIGKILL at random moments
//! while devices publish and it forwards, again and again. Subscribe mode
//! promises zero loss: every message the local broker acknowledged to a
//! device must reach the cloud after the last restart.
//!
//! `FERRY_KILL_CYCLES` sets the number of kills (default 100); the loop also
//! stops after 120 s, so CI time stays bounded.

mod common;

use std::time::{Duration, Instant};

use common::*;
use ferry_testkit::{free_ports, CloudSubscriber, Mosquitto, Pki};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_again_and_again_loses_nothing_in_subscribe_mode() {
    let cycles: usize = std::env::var("FERRY_KILL_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let pki = Pki::generate("pi-line-7").unwrap();
    let cloud = Mosquitto::tls(&pki).unwrap();
    let local = Mosquitto::plain().unwrap();
    let sub = CloudSubscriber::connect(&pki, cloud.tls_addr(), "dt/ferry/#")
        .await
        .unwrap();
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
    let mut kills = 0;
    while kills < cycles && started.elapsed() < Duration::from_secs(120) {
        // A random moment: mid-commit, mid-publish, mid-start.
        let delay = Duration::from_millis(fastrand::u64(20..300));
        tokio::time::sleep(delay).await;
        tokio::task::block_in_place(|| {
            ferry.kill9();
            ferry = Ferry::start_file(&ferry.config);
        });
        kills += 1;
    }
    stop.cancel();
    let published = publishing.await.unwrap();
    let seen = sub
        .wait_for_seqs(0..published, Duration::from_secs(120), sequences)
        .await
        .unwrap();
    assert!(seen.is_complete(), "{seen}");
    // Duplicates are expected and reported, not bounded here: a life shorter
    // than the time to deliver the backlog since the last saved cursor sends
    // that backlog again (each record keeps its `seq`, so the cloud can drop
    // the copies).
    eprintln!(
        "{kills} kills in {:?}; {published} messages, all delivered; {} duplicates at the cloud",
        started.elapsed(),
        seen.duplicates()
    );
    drop(ferry);
}
