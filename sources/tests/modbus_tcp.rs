//! Modbus TCP sources against pymodbus's server (testkit/src/modbus_sim.py): known
//! values decoded exactly, exceptions counted without a reconnect, bad answers
//! reported and survived, unreachable devices backed off, the probe.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::init_tracing;
use common::modbus::{next_full_record, next_record, start_source, stop_source, Running};
use ferry_core::record::Value;
use ferry_sources::modbus::{
    probe, run_modbus_tcp, Data, DeviceConfig, FailureKind, ModbusError, PollEvent, ProbeRequest,
    RegisterConfig, Table, Target, TcpSourceConfig,
};
use ferry_testkit::modbus::Simulator;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(10);

fn registers(text: &str) -> Vec<RegisterConfig> {
    #[derive(serde::Deserialize)]
    struct Map {
        registers: Vec<RegisterConfig>,
    }
    toml::from_str::<Map>(text).expect("register map").registers
}

fn device(name: &str, address: String, registers: Vec<RegisterConfig>) -> DeviceConfig {
    toml::from_str::<DeviceConfig>(&format!(
        "name = \"{name}\"\naddress = \"{address}\"\ninterval = \"100ms\"\ntimeout = \"500ms\""
    ))
    .map(|d| DeviceConfig { registers, ..d })
    .expect("device")
}

fn start(cfg: TcpSourceConfig) -> Running {
    start_source(|sink, events, cancel| {
        run_modbus_tcp(Arc::from("plant"), cfg, sink, events, cancel)
    })
}

async fn stop(cancel: CancellationToken, task: JoinHandle<Result<(), ModbusError>>) {
    stop_source(cancel, task, WAIT).await;
}

const KNOWN: &str = r#"
registers = [
  { name = "t_abcd", table = "holding", address = 0, type = "f32", order = "ABCD" },
  { name = "t_cdab", table = "holding", address = 2, type = "f32", order = "CDAB" },
  { name = "t_badc", table = "holding", address = 4, type = "f32", order = "BADC" },
  { name = "t_dcba", table = "holding", address = 6, type = "f32", order = "DCBA" },
  { name = "energy", table = "holding", address = 8, type = "u32", unit = "Wh" },
  { name = "offset", table = "holding", address = 10, type = "i16" },
  { name = "temperature", table = "holding", address = 11, type = "u16", scale = 0.1, unit = "°C" },
  { name = "ratio", table = "holding", address = 12, type = "f64", order = "CDAB" },
  { name = "big", table = "holding", address = 16, type = "i64", order = "DCBA" },
  { name = "unit_id", table = "holding", address = 20 },
  { name = "pump", table = "coil", address = 0 },
  { name = "valve", table = "coil", address = 1 },
  { name = "door", table = "discrete_input", address = 1 },
  { name = "flow", table = "input", address = 0, type = "i32" },
  { name = "serial", table = "input", address = 2, type = "string", count = 4 },
]
"#;

#[tokio::test]
async fn known_values_are_stored_exactly() {
    init_tracing();
    let sim = Simulator::tcp(1, &[1], "test");
    let cfg = TcpSourceConfig::new(vec![device("sim", sim.address(0), registers(KNOWN))]);
    let plan = &cfg.devices().unwrap()[0].requests;
    assert_eq!(plan.len(), 4, "one request per table: {plan:?}");
    let (mut records, events, cancel, task) = start(cfg);

    let before = Instant::now();
    let record = next_record(&mut records, Some("sim"), WAIT).await;
    assert_eq!(&*record.source, "plant");
    let fields: Vec<(&str, Value)> = record
        .fields
        .iter()
        .map(|(n, v)| (&**n, v.clone()))
        .collect();
    assert_eq!(
        fields,
        [
            ("t_abcd", Value::Float(21.5)),
            ("t_cdab", Value::Float(21.5)),
            ("t_badc", Value::Float(21.5)),
            ("t_dcba", Value::Float(21.5)),
            ("energy", Value::Int(4_000_000_000)),
            ("offset", Value::Int(-1234)),
            ("temperature", Value::Float(215.0 * 0.1)),
            ("ratio", Value::Float(-0.125)),
            ("big", Value::Int(-5_000_000_000)),
            ("unit_id", Value::Int(1)),
            ("pump", Value::Bool(true)),
            ("valve", Value::Bool(false)),
            ("door", Value::Bool(true)),
            ("flow", Value::Int(-70_000)),
            ("serial", Value::Str("FERRY-01".into())),
        ]
    );
    assert_eq!(record.field("temperature"), Some(&Value::Float(21.5)));
    // Timestamped at the poll: within the wait, not at some later time.
    let now = ferry_core::record::now_millis();
    assert!(record.ts <= now && now - record.ts < 5_000);
    // Polled at its interval: three more records in well under a second.
    for _ in 0..3 {
        next_record(&mut records, Some("sim"), WAIT).await;
    }
    assert!(before.elapsed() < Duration::from_secs(3));
    let answered = events.count("sim", before, |e| matches!(e, PollEvent::Answered { .. }));
    assert!(answered >= 16, "4 requests per poll, 4 polls: {answered}");
    assert_eq!(sim.connections(), 1, "one connection for every poll");
    stop(cancel, task).await;
}

#[tokio::test]
async fn exceptions_are_counted_without_a_reconnect() {
    init_tracing();
    let sim = Simulator::tcp(1, &[1], "test");
    let map = registers(
        r#"
registers = [
  { name = "t", table = "holding", address = 0, type = "f32" },
  { name = "missing", table = "holding", address = 500, type = "u16" },
  { name = "pump", table = "coil", address = 0 },
]
"#,
    );
    let cfg = TcpSourceConfig::new(vec![device("sim", sim.address(0), map)]);
    let (mut records, events, cancel, task) = start(cfg);
    let from = Instant::now();
    for _ in 0..5 {
        let r = next_record(&mut records, Some("sim"), WAIT).await;
        // The fields that were read, and no value for the one that was not.
        assert_eq!(r.field("t"), Some(&Value::Float(21.5)));
        assert_eq!(r.field("pump"), Some(&Value::Bool(true)));
        assert_eq!(r.field("missing"), None);
        assert_eq!(r.fields.len(), 2);
    }
    let illegal_address = events.count("sim", from, |e| {
        matches!(e, PollEvent::Exception { code: 2, .. })
    });
    assert!(
        illegal_address >= 5,
        "exceptions counted: {illegal_address}"
    );
    let failed = events.count("sim", from, |e| matches!(e, PollEvent::Failed(_)));
    assert_eq!(failed, 0, "an exception is not a link failure");
    let down = events.count("sim", from, |e| matches!(e, PollEvent::Up(false)));
    assert_eq!(
        down, 0,
        "a device that answers exceptions is not backed off"
    );
    let polled = events.count("sim", from, |e| {
        matches!(
            e,
            PollEvent::Polled {
                fields: 2,
                missing: 1
            }
        )
    });
    assert!(polled >= 5);
    assert_eq!(sim.connections(), 1, "no reconnect for exceptions");
    stop(cancel, task).await;
}

#[tokio::test]
async fn bad_answers_are_reported_and_survived() {
    init_tracing();
    let mut sim = Simulator::tcp(1, &[1], "test");
    let map = registers(
        r#"
registers = [
  { name = "t", table = "holding", address = 0, type = "f32" },
  { name = "u", table = "holding", address = 20 },
]
"#,
    );
    let mut cfg = TcpSourceConfig::new(vec![device("sim", sim.address(0), map)]);
    cfg.backoff_max = Duration::from_millis(400);
    let (mut records, events, cancel, task) = start(cfg);
    next_record(&mut records, Some("sim"), WAIT).await;

    for mode in ["short", "garbage"] {
        sim.set_mode(1, mode);
        // Drain what was polled before the switch, then wait for failures.
        let from = Instant::now();
        // A short answer is a well-formed frame of the wrong length: a bad
        // answer. Garbage cannot be framed (its "length" field is noise), so
        // the client waits for the rest: a bad answer or a timeout.
        let counted = move |e: &PollEvent| match mode {
            "short" => matches!(e, PollEvent::Failed(FailureKind::BadResponse)),
            _ => matches!(
                e,
                PollEvent::Failed(FailureKind::BadResponse | FailureKind::Timeout)
            ),
        };
        events
            .wait_until(WAIT, &format!("{mode}: bad answers counted"), |e| {
                e.count("sim", from, counted) >= 2
            })
            .await;
        while let Ok(r) = records.try_recv() {
            // A record polled after the switch holds no value from a bad answer.
            assert!(r.fields.iter().all(|(n, v)| match &**n {
                "t" => *v == Value::Float(21.5),
                "u" => *v == Value::Int(1),
                _ => false,
            }));
        }
        sim.set_mode(1, "normal");
        // It recovers (after its backoff): a full record again.
        let r = next_full_record(&mut records, "sim", 2, WAIT).await;
        assert_eq!(r.field("t"), Some(&Value::Float(21.5)), "{mode}");
        assert_eq!(r.field("u"), Some(&Value::Int(1)), "{mode}");
    }
    assert!(!task.is_finished(), "the source survived");
    stop(cancel, task).await;
}

#[tokio::test]
async fn an_unreachable_device_is_backed_off() {
    init_tracing();
    // A port nothing listens on: connections are refused at once.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let sim = Simulator::tcp(1, &[1], "test");
    let map = || registers("registers = [{ name = \"u\", table = \"holding\", address = 20 }]");
    let mut cfg = TcpSourceConfig::new(vec![
        device("gone", format!("127.0.0.1:{port}"), map()),
        device("here", sim.address(0), map()),
    ]);
    cfg.devices[0].interval = Duration::from_millis(20);
    cfg.backoff_max = Duration::from_millis(320);
    let (mut records, events, cancel, task) = start(cfg);
    let from = Instant::now();
    // The reachable device is polled all along, concurrently.
    for _ in 0..15 {
        let r = next_record(&mut records, None, WAIT).await;
        assert_eq!(&*r.device, "here", "no record from an unreachable device");
    }
    let window = from.elapsed();
    let attempts = events.count("gone", from, |e| {
        matches!(e, PollEvent::Failed(FailureKind::Link))
    });
    let unbacked = (window.as_millis() / 20) as usize;
    assert!(attempts >= 2, "it keeps trying: {attempts}");
    assert!(
        attempts * 3 < unbacked,
        "{attempts} connection attempts in {window:?}: not backed off (every 20ms would be {unbacked})"
    );
    assert_eq!(
        events.count("gone", from, |e| matches!(e, PollEvent::Up(false))),
        1
    );
    stop(cancel, task).await;
}

#[tokio::test]
async fn probe_reads_raw_registers() {
    init_tracing();
    let sim = Simulator::tcp(1, &[1], "test");
    let report = probe(ProbeRequest {
        target: Target::Tcp(sim.address(0)),
        unit: 1,
        table: Table::Holding,
        address: 0,
        count: 8,
        timeout: Duration::from_secs(2),
    })
    .await
    .expect("probe");
    assert_eq!(
        report.data,
        Data::Words(vec![0x41AC, 0, 0, 0x41AC, 0xAC41, 0, 0, 0xAC41])
    );
    let text = report.to_string();
    // 21.5 appears under each order at the address where it was written that way.
    for (at, column) in [(0, 1), (2, 2), (4, 3), (6, 4)] {
        let block = text
            .split(&format!("\n{at:>7}  "))
            .last()
            .unwrap_or_else(|| panic!("no block for {at}:\n{text}"));
        let f32_line = block
            .lines()
            .find(|l| l.trim_start().starts_with("f32"))
            .unwrap();
        assert_eq!(
            f32_line.split_whitespace().nth(column),
            Some("21.5"),
            "{f32_line}"
        );
    }
    let error = probe(ProbeRequest {
        target: Target::Tcp(sim.address(0)),
        unit: 1,
        table: Table::Holding,
        address: 500,
        count: 1,
        timeout: Duration::from_secs(2),
    })
    .await
    .unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "{} unit 1, holding 500: exception 0x02 (illegal data address)",
            sim.address(0)
        )
    );
}
