//! Modbus RTU sources on a serial bus made of a socat pty pair, with two
//! units served by pymodbus's serial server (testkit/src/modbus_sim.py): a unit
//! that stops answering is backed off while the other keeps its poll rate,
//! and it recovers; bad answers are counted and survived.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::init_tracing;
use common::modbus::{next_full_record, next_record, start_source, stop_source, Running};
use ferry_core::record::{now_millis, Millis, Record, Value};
use ferry_sources::modbus::{
    run_modbus_rtu, DeviceConfig, FailureKind, ModbusError, PollEvent, RtuSourceConfig,
};
use ferry_testkit::modbus::{PtyPair, Simulator};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(10);
const INTERVAL: Duration = Duration::from_millis(100);

fn bus_config(bus: &PtyPair) -> RtuSourceConfig {
    let device = |name: &str, unit: u8| -> DeviceConfig {
        toml::from_str(&format!(
            r#"
name = "{name}"
unit = {unit}
interval = "100ms"
timeout = "60ms"
registers = [
  {{ name = "t", table = "holding", address = 0, type = "f32" }},
  {{ name = "t_dcba", table = "holding", address = 6, type = "f32", order = "DCBA" }},
  {{ name = "unit_id", table = "holding", address = 20 }},
  {{ name = "pump", table = "coil", address = 0 }},
]
"#
        ))
        .expect("device")
    };
    RtuSourceConfig {
        baud: 115_200,
        backoff_max: Duration::from_millis(800),
        ..RtuSourceConfig::new(&bus.ferry, vec![device("meter-1", 1), device("meter-2", 2)])
    }
}

fn start(cfg: RtuSourceConfig) -> Running {
    start_source(|sink, events, cancel| run_modbus_rtu(Arc::from("bus"), cfg, sink, events, cancel))
}

async fn stop(cancel: CancellationToken, task: JoinHandle<Result<(), ModbusError>>) {
    stop_source(cancel, task, WAIT).await;
}

/// Receives records until one of `device` is timestamped at or after `until`;
/// returns all received.
async fn records_until(
    records: &mut UnboundedReceiver<Record>,
    device: &str,
    until: Millis,
) -> Vec<Record> {
    let mut out = Vec::new();
    loop {
        let r = next_record(records, None, WAIT).await;
        let done = &*r.device == device && r.ts >= until;
        out.push(r);
        if done {
            return out;
        }
    }
}

fn count(records: &[Record], device: &str, from: Millis, to: Millis) -> usize {
    records
        .iter()
        .filter(|r| &*r.device == device && r.ts >= from && r.ts < to)
        .count()
}

#[tokio::test]
async fn a_dead_unit_is_backed_off_while_the_other_keeps_its_rate() {
    init_tracing();
    let bus = PtyPair::start();
    let mut sim = Simulator::serial(&bus.device, &[1, 2]);
    let (mut records, events, cancel, task) = start(bus_config(&bus));

    // Both units answer, each with its own values.
    for unit in [1, 2] {
        let r = next_record(&mut records, Some(&format!("meter-{unit}")), WAIT).await;
        assert_eq!(r.field("t"), Some(&Value::Float(21.5)));
        assert_eq!(r.field("t_dcba"), Some(&Value::Float(21.5)));
        assert_eq!(r.field("unit_id"), Some(&Value::Int(unit)));
        assert_eq!(r.field("pump"), Some(&Value::Bool(true)));
    }

    // Unit 2 stops answering.
    sim.set_mode(2, "mute");
    let (muted, muted_ms) = (Instant::now(), now_millis());
    const WINDOW: Millis = 3_000;
    let seen = records_until(&mut records, "meter-1", muted_ms + WINDOW).await;
    let window_end = Instant::now();

    // Unit 1 keeps its rate: counted from its record timestamps, after the
    // first 0.5 s (while unit 2's first timeouts happen), against 1 per 100 ms.
    let expected = (WINDOW - 500) as usize / INTERVAL.as_millis() as usize;
    let polled = count(&seen, "meter-1", muted_ms + 500, muted_ms + WINDOW);
    assert!(
        polled * 10 >= expected * 9,
        "meter-1 polled {polled} times in 2.5 s while meter-2 was dead; expected {expected}"
    );
    // Nothing made up for unit 2.
    assert_eq!(count(&seen, "meter-2", muted_ms + 1, Millis::MAX), 0);
    // Unit 2 is backed off: a few attempts, not one per interval.
    let attempts = events.count("meter-2", muted, |e| {
        matches!(e, PollEvent::Failed(FailureKind::Timeout))
    });
    let window = window_end - muted;
    let unbacked = (window.as_millis() / INTERVAL.as_millis()) as usize;
    assert!(
        (2..=unbacked / 3).contains(&attempts),
        "meter-2 tried {attempts} times in {window:?} (every interval would be {unbacked})"
    );
    assert_eq!(
        events.count("meter-2", muted, |e| *e == PollEvent::Up(false)),
        1
    );
    assert_eq!(
        events.count("meter-1", muted, |e| matches!(e, PollEvent::Failed(_))),
        0
    );

    // It answers again: polled again within the longest backoff.
    sim.set_mode(2, "normal");
    let back = Instant::now();
    let r = next_record(&mut records, Some("meter-2"), WAIT).await;
    assert_eq!(r.field("unit_id"), Some(&Value::Int(2)));
    assert!(
        back.elapsed() < Duration::from_millis(800) + 4 * INTERVAL,
        "recovered after {:?}",
        back.elapsed()
    );
    assert_eq!(
        events.count("meter-2", back, |e| *e == PollEvent::Up(true)),
        1
    );
    // And back at its own rate.
    let t = now_millis();
    let seen = records_until(&mut records, "meter-2", t + 1_000).await;
    assert!(count(&seen, "meter-2", t, t + 1_000) >= 8);
    stop(cancel, task).await;
}

#[tokio::test]
async fn bad_answers_on_the_bus_are_counted_and_survived() {
    init_tracing();
    let bus = PtyPair::start();
    let mut sim = Simulator::serial(&bus.device, &[1, 2]);
    let (mut records, events, cancel, task) = start(bus_config(&bus));
    next_record(&mut records, Some("meter-1"), WAIT).await;
    next_record(&mut records, Some("meter-2"), WAIT).await;

    for mode in ["short", "garbage"] {
        sim.set_mode(1, mode);
        let (from, from_ms) = (Instant::now(), now_millis());
        events
            .wait_until(WAIT, &format!("{mode}: failures of meter-1"), |e| {
                e.count("meter-1", from, |e| matches!(e, PollEvent::Failed(_))) >= 3
            })
            .await;
        if mode == "short" {
            let bad = events.count("meter-1", from, |e| {
                matches!(e, PollEvent::Failed(FailureKind::BadResponse))
            });
            assert!(
                bad >= 3,
                "a short answer is a bad answer: {:?}",
                events.all()
            );
        }
        sim.set_mode(1, "normal");
        let r = next_full_record(&mut records, "meter-1", 4, WAIT).await;
        assert_eq!(r.field("t"), Some(&Value::Float(21.5)), "{mode}");
        // Meanwhile unit 2 was polled all along, and no bad value was stored.
        let seen = records_until(&mut records, "meter-2", now_millis()).await;
        for r in &seen {
            assert!(
                r.fields.iter().all(|(n, v)| match &**n {
                    "t" | "t_dcba" => *v == Value::Float(21.5),
                    "unit_id" => *v == Value::Int(if &*r.device == "meter-1" { 1 } else { 2 }),
                    "pump" => *v == Value::Bool(true),
                    _ => false,
                }),
                "{r:?}"
            );
        }
        let two = events.count("meter-2", from, |e| {
            matches!(e, PollEvent::Polled { fields: 4, .. })
        });
        let span = (now_millis() - from_ms) as usize;
        assert!(
            two * 100 * 10 >= span * 7,
            "{mode}: meter-2 polled {two} times in {span} ms"
        );
    }
    assert!(!task.is_finished());
    stop(cancel, task).await;
}
