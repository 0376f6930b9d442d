//! The subscriber source against a real mosquitto: zero loss with manual
//! acknowledgements and a persistent session.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use common::{create_session, init_tracing, local_broker, wait_log, Ingest};
use ferry_core::record::Value;
use ferry_core::sink::{Item, Submission};
use ferry_sources::mqtt::{run_subscriber, SourceError, SubscribeSourceConfig};
use ferry_testkit::{Mosquitto, Publisher};
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(30);
const FILTER: &str = "sensors/+/telemetry";

fn config(mosquitto: &Mosquitto, client_id: &str) -> SubscribeSourceConfig {
    SubscribeSourceConfig {
        client_id: Some(client_id.into()),
        reconnect_min: Duration::from_millis(50),
        reconnect_max: Duration::from_millis(500),
        ..SubscribeSourceConfig::new(mosquitto.plain_addr().to_string())
    }
}

fn start(
    cfg: SubscribeSourceConfig,
    ingest_capacity: usize,
) -> (
    Ingest,
    CancellationToken,
    JoinHandle<Result<(), SourceError>>,
) {
    let (sink, ingest) = Ingest::new(ingest_capacity);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(run_subscriber(
        Arc::from("upstream"),
        "gw",
        cfg,
        sink,
        cancel.clone(),
    ));
    (ingest, cancel, task)
}

async fn stop(cancel: CancellationToken, task: JoinHandle<Result<(), SourceError>>) {
    cancel.cancel();
    timeout(WAIT, task)
        .await
        .expect("subscriber stops when cancelled")
        .expect("subscriber task")
        .expect("subscriber ends cleanly");
}

/// Publishes messages `per_device` (a range) from each of `devices` devices
/// at QoS 1 and waits until mosquitto has acknowledged them all. Message
/// `seq` is unique: `device × 10,000 + i`.
async fn publish_all(port: u16, devices: usize, per_device: Range<usize>) -> BTreeSet<i64> {
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut publisher = Publisher::spawn(addr, &format!("publisher-{}", per_device.start));
    let mut all = BTreeSet::new();
    for i in per_device {
        for d in 0..devices {
            let seq = (d * 10_000 + i) as i64;
            all.insert(seq);
            publisher
                .queue(
                    &format!("sensors/dev-{d}/telemetry"),
                    format!(r#"{{"seq": {seq}, "voltage": {}}}"#, 600 + i),
                )
                .await;
        }
    }
    publisher.wait_acked(all.len(), WAIT).await;
    all
}

/// The `seq` of every record in a submission, checking the device and fields.
fn seqs(sub: &Submission) -> Vec<i64> {
    sub.items
        .iter()
        .map(|item| match item {
            Item::Record(r) => {
                let Some(Value::Int(seq)) = r.field("seq").cloned() else {
                    panic!("no seq: {r:?}")
                };
                assert_eq!(&*r.device, format!("dev-{}", seq / 10_000));
                assert_eq!(r.field("voltage"), Some(&Value::Int(600 + seq % 10_000)));
                assert_eq!(&*r.source, "upstream");
                seq
            }
            Item::Dead(d) => panic!("unexpected dead letter: {d:?}"),
        })
        .collect()
}

/// Commits `sub` and returns its `seq`s.
fn commit(ingest: &mut Ingest, sub: Submission) -> Vec<i64> {
    let s = seqs(&sub);
    ingest.commit(sub);
    s
}

/// Zero loss across restarts, in three runs with the same client id:
///
/// 1. commits phase A, then holds the first submission of phase B
///    uncommitted when it is stopped (ingest dies with it);
/// 2. is stopped right after its first submission arrives, which ingest
///    commits only then, during the shutdown grace: it must still be
///    acknowledged;
/// 3. gets everything not committed yet, including phase C, published while
///    no subscriber was connected; nothing committed before comes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_uncommitted_is_lost_across_restarts() {
    init_tracing();
    let mosquitto = local_broker(None);
    let client_id = "ferry-test-zero-loss";
    create_session(mosquitto.plain_addr().port(), client_id, FILTER).await;
    let mut committed = BTreeSet::new();

    // Run 1.
    let (mut ingest, cancel, task) = start(config(&mosquitto, client_id), 64);
    let phase_a = publish_all(mosquitto.plain_addr().port(), 10, 0..20).await;
    while !phase_a.is_subset(&committed) {
        let sub = ingest.next(WAIT).await;
        for seq in commit(&mut ingest, sub) {
            assert!(phase_a.contains(&seq), "seq {seq} is not from phase A");
            assert!(committed.insert(seq), "seq {seq} twice");
        }
    }
    let phase_b = publish_all(mosquitto.plain_addr().port(), 10, 20..40).await;
    let held = ingest.next(WAIT).await;
    let held_seqs: BTreeSet<i64> = seqs(&held).into_iter().collect();
    assert!(!held_seqs.is_empty() && held_seqs.is_subset(&phase_b));
    cancel.cancel();
    // Ingest dies without committing what it holds.
    drop(held);
    drop(ingest);
    stop(cancel, task).await;

    // Run 2.
    let (mut ingest, cancel, task) = start(config(&mosquitto, client_id), 64);
    let first = ingest.next(WAIT).await;
    cancel.cancel();
    let late: Vec<i64> = commit(&mut ingest, first);
    for seq in &late {
        assert!(phase_b.contains(seq), "seq {seq} is not from phase B");
        assert!(committed.insert(*seq), "seq {seq} was committed in run 1");
    }
    // What else arrived is dropped uncommitted.
    drop(ingest);
    stop(cancel, task).await;

    // Run 3, after phase C was published to the stopped subscriber's session.
    let phase_c = publish_all(mosquitto.plain_addr().port(), 10, 40..60).await;
    let all: BTreeSet<i64> = phase_a
        .iter()
        .chain(&phase_b)
        .chain(&phase_c)
        .copied()
        .collect();
    let (mut ingest, cancel, task) = start(config(&mosquitto, client_id), 64);
    while committed.len() < all.len() {
        let sub = ingest.next(WAIT).await;
        for seq in commit(&mut ingest, sub) {
            assert!(all.contains(&seq), "unknown seq {seq}");
            assert!(
                committed.insert(seq),
                "seq {seq} was committed and acknowledged before, yet sent again"
            );
        }
    }
    assert!(held_seqs.is_subset(&committed));
    assert_eq!(committed, all);
    stop(cancel, task).await;
}

/// A commit that fails is not acknowledged: the subscriber reconnects and the
/// broker sends the message again, in the same run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_commit_is_redelivered_after_a_reconnect() {
    init_tracing();
    let mosquitto = local_broker(None);
    let client_id = "ferry-test-store-error";
    create_session(mosquitto.plain_addr().port(), client_id, FILTER).await;

    let (mut ingest, cancel, task) = start(config(&mosquitto, client_id), 64);
    let all = publish_all(mosquitto.plain_addr().port(), 4, 0..25).await;

    let first = ingest.next(WAIT).await;
    let failed: BTreeSet<i64> = seqs(&first).into_iter().collect();
    ingest.fail(first, "disk full");

    let mut committed = BTreeSet::new();
    while committed.len() < all.len() {
        let sub = ingest.next(WAIT).await;
        let s = seqs(&sub);
        ingest.commit(sub);
        committed.extend(s);
    }
    assert_eq!(committed, all);
    assert!(failed.is_subset(&committed));
    stop(cancel, task).await;
}

/// The broker is not there yet: the subscriber retries, connects when it
/// appears, and subscribes on its own (a new session).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_once_the_broker_is_up_and_subscribes() {
    init_tracing();
    let port = ferry_testkit::free_port().unwrap();
    let client_id = "ferry-test-late-broker";
    let cfg = SubscribeSourceConfig {
        client_id: Some(client_id.into()),
        reconnect_min: Duration::from_millis(50),
        reconnect_max: Duration::from_millis(200),
        ..SubscribeSourceConfig::new(format!("127.0.0.1:{port}"))
    };
    let (mut ingest, cancel, task) = start(cfg, 8);
    let mosquitto = local_broker(Some(port));
    // mosquitto logs "<client id> <qos> <filter>" once it has subscribed.
    wait_log(&mosquitto, &format!("{client_id} 1 {FILTER}"), WAIT).await;
    let all = publish_all(port, 2, 0..10).await;
    let mut received = BTreeSet::new();
    while received.len() < all.len() {
        let sub = ingest.next(WAIT).await;
        received.extend(seqs(&sub));
        ingest.commit(sub);
    }
    assert_eq!(received, all);
    stop(cancel, task).await;
}

/// mosquitto sends at most its in-flight window (20 here) of QoS 1 messages
/// before it waits for PUBACKs, which Ferry sends only after the commit. So
/// batches may wait for the commit interval while few messages wait, and ask
/// for a commit at once when half the window (`broker_inflight` / 2) does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asks_for_a_commit_at_once_when_half_the_broker_window_waits() {
    init_tracing();
    let mosquitto = local_broker(None);
    let client_id = "ferry-test-window";
    create_session(mosquitto.plain_addr().port(), client_id, FILTER).await;
    // Queued in the session before the subscriber connects.
    let all = publish_all(mosquitto.plain_addr().port(), 10, 0..6).await;
    let cfg = SubscribeSourceConfig {
        broker_inflight: 20,
        ..config(&mosquitto, client_id)
    };
    let (mut ingest, cancel, task) = start(cfg, 64);

    // Nothing is committed yet: the broker stops after its window of 20.
    let mut waiting = 0;
    let mut held = Vec::new();
    while waiting < 20 {
        let sub = ingest.next(WAIT).await;
        waiting += sub.items.len();
        let expected = (waiting >= 10).then_some(Duration::ZERO);
        assert_eq!(
            sub.max_delay, expected,
            "a batch that brings the messages waiting for a commit to {waiting}"
        );
        held.push(sub);
    }
    assert_eq!(waiting, 20, "mosquitto sent more than its in-flight window");

    // Committed, they are acknowledged and the rest comes.
    let mut committed = BTreeSet::new();
    for sub in held {
        committed.extend(commit(&mut ingest, sub));
    }
    while committed.len() < all.len() {
        let sub = ingest.next(WAIT).await;
        committed.extend(commit(&mut ingest, sub));
    }
    assert_eq!(committed, all);
    stop(cancel, task).await;
}
