//! The uplink is back within 2 s of the link's return, whatever the outage
//! and however far the backoff had grown, without hammering the broker: a
//! real TLS mosquitto, behind the testkit's proxy for the link's faults.
//!
//! The backoff is set to what a long outage leaves (`reconnect_min` 60 s:
//! every delay it draws is 6 s to 2 min), so only the probes can bring the
//! uplink back in time. Each test stores readings during the outage and
//! measures, from the link's return, when the broker acknowledged the first
//! of them (the uplink's cursor passes it) and when the cloud subscriber got
//! it; TLS connects are counted by the uplink (`connect_attempts`) and, at the
//! proxy, as connections that carried data.

mod common;

use std::time::{Duration, Instant};

use common::{seed_reading, uplink_settings, Cloud, Gateway};
use ferry_gateway::metrics::{UplinkLabel, UplinkMetrics};
use ferry_gateway::uplink::Settings;
use ferry_testkit::{json_record_seqs, Message, Proxy};

const WAIT: Duration = Duration::from_secs(60);
/// The bound under test: link-up to the first outage reading at the cloud.
const BACK_WITHIN: Duration = Duration::from_secs(2);
/// Readings 0..100 go before the outage, 100..200 during it.
const BEFORE: u64 = 100;
const DURING: u64 = 200;

fn label() -> UplinkLabel {
    UplinkMetrics::label("cloud")
}

/// Seq numbers in a JSON batch are the store's: 1-based. Readings are 0-based.
fn seqs(m: &Message) -> anyhow::Result<Vec<u64>> {
    Ok(json_record_seqs(&m.payload)?
        .into_iter()
        .map(|s| s - 1)
        .collect())
}

/// The link's faults under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// Nothing crosses; open connections stay open, new ones hang.
    Blackholed,
    /// Open connections are reset, new ones refused.
    Reset,
    /// The cloud broker stops (the uplink dials it directly).
    BrokerStopped,
}

/// Settings with the backoff of a long outage and the daemon's defaults for
/// noticing a dead link (`puback_timeout` 10 s, `keep_alive` 30 s).
fn settings(cloud: &Cloud, addr: std::net::SocketAddr) -> Settings {
    Settings {
        keep_alive: Duration::from_secs(30),
        connect_timeout: Duration::from_secs(5),
        puback_timeout: Duration::from_secs(10),
        reconnect_min: Duration::from_secs(60),
        reconnect_max: Duration::from_secs(120),
        probe_interval: Duration::from_secs(1),
        ..uplink_settings(&cloud.pki, addr, &cloud.pki.ca, &cloud.pki.client)
    }
}

/// Runs one outage of `fault` and checks the return; prints what it measured.
async fn outage_then_back(fault: Fault) {
    let mut cloud = Cloud::start().await;
    let link = Proxy::start(cloud.mosquitto.tls_addr()).await.unwrap();
    let addr = match fault {
        Fault::BrokerStopped => cloud.mosquitto.tls_addr(),
        _ => link.addr(),
    };
    let gw = Gateway::new(seed_reading, 100);
    let metric = |get: fn(&UplinkMetrics) -> u64| gw.metric(get);
    let (cancel, task) = gw.start(settings(&cloud, addr));
    gw.store(0..BEFORE).await;
    cloud
        .sub
        .wait_for_seqs(0..BEFORE, WAIT, seqs)
        .await
        .unwrap();

    let attempts_before = metric(|m| m.connect_attempts.get_or_create(&label()).get());
    let down = Instant::now();
    match fault {
        Fault::Blackholed => link.dark().await,
        Fault::Reset => link.refuse().await,
        Fault::BrokerStopped => tokio::task::block_in_place(|| cloud.mosquitto.stop()).unwrap(),
    }
    gw.store(BEFORE..DURING).await;
    ferry_testkit::wait_until(WAIT, "the dead session given up", || {
        metric(|m| m.connect_errors.get_or_create(&label()).get()) >= 1
    })
    .await
    .unwrap();
    let noticed = down.elapsed();
    // The outage goes on until eight more probes have failed (one every 0.5
    // to 1 s: 4 to 8 s more; in the blackhole each fails at its 5 s timeout).
    let failed = metric(|m| m.probe_failures.get_or_create(&label()).get());
    ferry_testkit::wait_until(WAIT, "eight more probes failed", || {
        metric(|m| m.probe_failures.get_or_create(&label()).get()) >= failed + 8
    })
    .await
    .unwrap();
    // The backlog gauge follows while the uplink waits.
    ferry_testkit::wait_until(WAIT, "the outage's readings in the backlog gauge", || {
        metric(|m| m.backlog_records.get_or_create(&label()).get()) >= DURING - BEFORE
    })
    .await
    .unwrap();
    let attempts = metric(|m| m.connect_attempts.get_or_create(&label()).get()) - attempts_before;
    let outage = down.elapsed();

    match fault {
        Fault::BrokerStopped => tokio::task::block_in_place(|| cloud.mosquitto.start()).unwrap(),
        _ => link.restore(),
    }
    let up = Instant::now();
    ferry_testkit::wait_until(WAIT, "the first outage reading acknowledged", || {
        metric(|m| m.acked_seq.get_or_create(&label()).get()) > BEFORE
    })
    .await
    .unwrap();
    let acked = up.elapsed();
    let seen = cloud
        .sub
        .wait_for_seqs(0..DURING, WAIT, seqs)
        .await
        .unwrap();
    assert!(seen.is_complete(), "{seen}");
    let first = cloud
        .sub
        .messages()
        .into_iter()
        .find(|m| seqs(m).unwrap().contains(&BEFORE))
        .expect("the first outage reading arrived");
    let arrived = first.received.saturating_duration_since(up);
    let probes = metric(|m| m.probes.get_or_create(&label()).get());
    eprintln!(
        "{fault:?}: dead session noticed after {noticed:?}; outage {outage:?} with {attempts} \
         TLS connects and {probes} probes in all; after link-up the first outage reading was \
         acknowledged in {acked:?} and at the subscriber in {arrived:?}"
    );

    assert!(
        acked <= BACK_WITHIN,
        "{fault:?}: acknowledged {acked:?} after link-up"
    );
    if fault != Fault::BrokerStopped {
        // (After a broker restart the subscriber, too, has to reconnect.)
        assert!(
            arrived <= BACK_WITHIN,
            "{fault:?}: arrived {arrived:?} after link-up"
        );
    }
    if fault == Fault::Blackholed {
        // A PINGREQ every 5 s; one unanswered when the next is due.
        assert!(
            noticed <= Duration::from_secs(11),
            "noticed after {noticed:?}"
        );
    }
    // At most one TLS connect a second while the link was down.
    let most = outage.as_secs_f64().ceil() as u64 + 1;
    assert!(
        attempts <= most,
        "{fault:?}: {attempts} connects in {outage:?}"
    );
    if fault != Fault::BrokerStopped {
        let sessions = link.sessions();
        for pair in sessions.windows(2) {
            let gap = pair[1] - pair[0];
            assert!(
                gap >= Duration::from_millis(900),
                "{fault:?}: two connects {gap:?} apart at the proxy"
            );
        }
    }
    cancel.cancel();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_within_two_seconds_after_a_blackholed_link() {
    outage_then_back(Fault::Blackholed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_within_two_seconds_after_a_link_that_reset_connections() {
    outage_then_back(Fault::Reset).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_within_two_seconds_after_the_broker_stopped() {
    outage_then_back(Fault::BrokerStopped).await;
}
