//! Floods of the embedded broker (the default config: devices through its
//! device front) by real MQTT clients (paho-mqtt, each with 20 in flight),
//! against the `ferry` binary: every PUBACK a device got is compared with
//! what is in the store, at 1, 4 and 50 connections, and through a
//! `kill -9` and a SIGTERM in the middle of a flood.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::Ferry;
use ferry_core::record::Value;
use ferry_gateway::store::{Store, StoreOptions};
use ferry_testkit::{free_ports, MQTT_FLOOD};

fn config(data: &Path, broker: SocketAddr) -> String {
    format!(
        r#"
[gateway]
id = "flood"
data_dir = "{data}"

[sources.local]
type = "mqtt_broker"
listen = "{broker}"
topics = ["sensors/{{device}}/telemetry"]
"#,
        data = data.display(),
    )
}

/// The paho devices: `clients` connections, `per` readings each.
fn devices(broker: SocketAddr, clients: usize, per: usize) -> Child {
    Command::new("python3")
        .arg(MQTT_FLOOD)
        .args([
            broker.ip().to_string(),
            broker.port().to_string(),
            clients.to_string(),
            per.to_string(),
            "60".to_owned(),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 with paho-mqtt")
}

/// Reads the devices' PUBACKs as they come; `on_ack` is told the count
/// after each. Returns every (client, reading) acknowledged.
fn acks(devices: &mut Child, mut on_ack: impl FnMut(usize)) -> BTreeSet<(String, i64)> {
    let out = BufReader::new(devices.stdout.take().unwrap());
    let mut acked = BTreeSet::new();
    for line in out.lines() {
        let line = line.unwrap();
        if line == "done" {
            break;
        }
        let mut w = line.split(' ');
        assert_eq!(w.next(), Some("acked"), "{line}");
        let (k, seq) = (w.next().unwrap(), w.next().unwrap().parse().unwrap());
        assert!(
            acked.insert((format!("flood-{k}"), seq)),
            "acknowledged twice: {line}"
        );
        on_ack(acked.len());
    }
    assert!(devices.wait().unwrap().success());
    acked
}

/// Every (device, reading) in the store, and how many records it holds.
fn stored(data: &Path) -> (BTreeSet<(String, i64)>, usize) {
    let store = Store::open(&Store::file_in(data), &StoreOptions::default()).unwrap();
    let mut out = Vec::new();
    store.read_records(0, usize::MAX, &mut out).unwrap();
    let set = out
        .iter()
        .map(|r| {
            let Some(Value::Int(seq)) = r.record.field("seq") else {
                panic!("{r:?}")
            };
            (r.record.device.to_string(), *seq)
        })
        .collect();
    (set, out.len())
}

#[test]
fn floods_of_1_4_and_50_connections_store_every_acknowledged_reading() {
    for (clients, per) in [(1, 6_000), (4, 2_000), (50, 200)] {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let broker = SocketAddr::from(([127, 0, 0, 1], free_ports(1).unwrap()[0]));
        let mut ferry = Ferry::start(dir.path(), &config(&data, broker));
        let started = std::time::Instant::now();
        let mut paho = devices(broker, clients, per);
        let acked = acks(&mut paho, |_| {});
        let took = started.elapsed();
        assert!(ferry.terminate().success());
        let (stored, records) = stored(&data);
        let missing: Vec<_> = acked.difference(&stored).collect();
        assert!(
            missing.is_empty(),
            "{clients} connections: acknowledged, not stored: {missing:?}"
        );
        assert_eq!(
            acked.len(),
            clients * per,
            "{clients} connections: every reading acknowledged"
        );
        assert_eq!(
            records,
            clients * per,
            "{clients} connections: each stored once"
        );
        eprintln!(
            "{clients} connections: {} readings in {took:?}",
            acked.len()
        );
    }
}

/// `kill -9` or SIGTERM while 4 paho devices flood: whatever was
/// acknowledged is in the store.
#[test]
fn a_crash_or_a_stop_during_a_flood_loses_nothing_acknowledged() {
    for (how, after) in [("kill -9", 3_000), ("SIGTERM", 5_000)] {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let broker = SocketAddr::from(([127, 0, 0, 1], free_ports(1).unwrap()[0]));
        let mut ferry = Some(Ferry::start(dir.path(), &config(&data, broker)));
        let mut paho = devices(broker, 4, 10_000);
        let acked = acks(&mut paho, |n| {
            if n == after {
                if let Some(mut f) = ferry.take() {
                    if how == "kill -9" {
                        f.kill9();
                    } else {
                        assert!(f.terminate().success());
                    }
                }
            }
        });
        assert!(
            ferry.is_none(),
            "{how}: the flood ended before {after} PUBACKs"
        );
        let (stored, _) = stored(&data);
        let missing: Vec<_> = acked.difference(&stored).collect();
        assert!(
            missing.is_empty(),
            "{how}: acknowledged, not stored: {missing:?}"
        );
        eprintln!(
            "{how}: {} acknowledged, {} stored",
            acked.len(),
            stored.len()
        );
    }
}
