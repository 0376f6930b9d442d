//! Modbus in the `ferry` binary: the example configs load, config mistakes
//! are reported with their key and line, the daemon polls a pymodbus
//! simulator into the store with metrics, and `ferry modbus probe` prints
//! what it reads.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{http_get, Ferry};
use ferry_core::record::Value;
use ferry_gateway::config::{Config, LoadError, SourceConfig};
use ferry_gateway::store::{Store, StoreOptions};
use ferry_testkit::modbus::Simulator;
use ferry_testkit::{free_ports, wait_until_blocking};

fn repo_file(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

#[test]
fn the_example_configs_load() {
    let meters = Config::load(&repo_file("config/modbus-energy-meter.toml")).unwrap();
    let Some(SourceConfig::ModbusRtu(bus)) = meters.sources.get("meters") else {
        panic!("no modbus_rtu source `meters`");
    };
    let devices = bus.devices().unwrap();
    assert_eq!(devices.len(), 2);
    assert_eq!(devices[0].fields.len(), 15);
    let plan: Vec<(u16, u16)> = devices[0]
        .requests
        .iter()
        .map(|r| (r.start, r.count))
        .collect();
    assert_eq!(
        plan,
        [(0, 18), (30, 2), (52, 2), (70, 6), (342, 2)],
        "as its comment says"
    );

    let plant = Config::load(&repo_file("config/modbus-tcp.toml")).unwrap();
    let Some(SourceConfig::ModbusTcp(tcp)) = plant.sources.get("plant") else {
        panic!("no modbus_tcp source `plant`");
    };
    let devices = tcp.devices().unwrap();
    assert_eq!(devices.len(), 3);
    assert_eq!(devices[1].address, devices[2].address, "behind one gateway");
}

#[test]
fn mistakes_are_reported_with_key_and_line() {
    let text = r#"
[sources.plc]
type = "modbus_tcp"

[[sources.plc.devices]]
name = "plc1"
address = "10.0.0.5"
registers = [
  { name = "t", table = "holding", address = 100, type = "f32", count = 1 },
  { name = "p", table = "holding", address = 101 },
  { name = "s", table = "holding", address = 65530, type = "string", count = 8 },
]

[sources.bus]
type = "modbus_rtu"
path = "/dev/ttyUSB0"
devices = [{ name = "m", unit = 3, map = "nope" }]

[sources.bus2]
type = "modbus_rtu"
path = "/dev/ttyUSB0"
devices = [{ name = "m", unit = 3, registers = [{ name = "x", table = "coil", address = 1, type = "f32" }] }]
"#;
    let errors = Config::from_toml(text, Path::new("ferry.toml")).unwrap_err();
    let got: Vec<(Option<usize>, &str, &str)> = errors
        .errors
        .iter()
        .map(|e| (e.line, e.key.as_str(), e.message.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (Some(9), "sources.plc.devices[0].registers[0].count", "type \"f32\" takes 2 registers, not 1"),
            (
                Some(10),
                "sources.plc.devices[0].registers[1].address",
                "`p` (holding 101) overlaps `t` (holding 100..=101, devices[0].registers[0])"
            ),
            (
                Some(11),
                "sources.plc.devices[0].registers[2].address",
                "65530 + 8 registers runs past the last address, 65535"
            ),
            (
                Some(17),
                "sources.bus.devices[0].map",
                "no map named `nope` in this source's `maps` (it has: none)"
            ),
            (
                Some(21),
                "sources.bus2.path",
                "/dev/ttyUSB0 is already the bus of source \"bus\"; put all the devices of one bus in one source"
            ),
            (
                Some(22),
                "sources.bus2.devices[0].registers[0].type",
                "the coil table holds bits: the type must be \"bool\", not \"f32\""
            ),
        ]
    );
    let order = text.replace(r#"address = 101 }"#, r#"address = 101, order = "ABDC" }"#);
    let errors = Config::from_toml(&order, Path::new("ferry.toml")).unwrap_err();
    assert!(
        errors.errors.iter().any(|e| e.line == Some(10)
            && e.key == "sources.plc.devices[0].registers[1].order"
            && e.message.contains("unknown variant `ABDC`")),
        "{errors}"
    );
    let _ = LoadError::Invalid(errors);
}

#[test]
fn the_daemon_polls_into_the_store_with_metrics() {
    let sim = Simulator::tcp(1, &[1], "test");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let metrics: std::net::SocketAddr = format!("127.0.0.1:{}", free_ports(1).unwrap()[0])
        .parse()
        .unwrap();
    let config = format!(
        r#"
[gateway]
id = "gw"
data_dir = "{data}"

[sources.plc]
type = "modbus_tcp"

[[sources.plc.devices]]
name = "sim"
address = "{address}"
interval = "100ms"
registers = [
  {{ name = "t", table = "holding", address = 2, type = "f32", order = "CDAB" }},
  {{ name = "temperature", table = "holding", address = 11, scale = 0.1 }},
  {{ name = "missing", table = "holding", address = 500 }},
  {{ name = "pump", table = "coil", address = 0 }},
]

[metrics]
listen = "{metrics}"
"#,
        data = data.display(),
        address = sim.address(0),
    );
    let mut ferry = Ferry::start(dir.path(), &config);
    let scrape = || http_get(metrics, "/metrics");
    let has = |text: &str, prefix: &str, at_least: u64| {
        text.lines().any(|l| {
            l.starts_with(prefix)
                && l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) >= Some(at_least as f64)
        })
    };
    wait_until_blocking(Duration::from_secs(20), "5 records stored", || {
        has(&scrape(), "ferry_ingest_records_stored_total ", 5)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", scrape()));
    let text = scrape();
    let labels = r#"{source="plc",device="sim"}"#;
    for (prefix, min) in [
        (format!("ferry_modbus_requests_total{labels} "), 15),
        (format!("ferry_modbus_polls_total{labels} "), 5),
        (format!("ferry_modbus_device_up{labels} "), 1),
        (
            r#"ferry_modbus_exceptions_total{source="plc",device="sim",code="0x02"} "#.to_owned(),
            5,
        ),
        (
            format!("ferry_modbus_round_trip_seconds_count{labels} "),
            15,
        ),
    ] {
        assert!(has(&text, &prefix, min), "no `{prefix}` ≥ {min} in\n{text}");
    }
    assert!(
        text.contains(r#"ferry_modbus_errors_total{source="plc",device="sim",kind="timeout"} 0"#),
        "{text}"
    );

    let status = ferry.terminate();
    assert!(status.success(), "{status:?}");
    let store = Store::open(&Store::file_in(&data), &StoreOptions::default()).unwrap();
    let mut out = Vec::new();
    store.read_records(0, 100, &mut out).unwrap();
    assert!(out.len() >= 5);
    for stored in &out {
        let r = &stored.record;
        assert_eq!((&*r.source, &*r.device), ("plc", "sim"));
        let fields: Vec<(&str, &Value)> = r.fields.iter().map(|(n, v)| (&**n, v)).collect();
        assert_eq!(
            fields,
            [
                ("t", &Value::Float(21.5)),
                ("temperature", &Value::Float(215.0 * 0.1)),
                ("pump", &Value::Bool(true)),
            ]
        );
    }
}

#[test]
fn probe_prints_every_order() {
    let sim = Simulator::tcp(1, &[1], "test");
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args([
            "modbus",
            "probe",
            "--tcp",
            &sim.address(0),
            "--address",
            "4",
            "--count",
            "2",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let f32_line = text
        .lines()
        .find(|l| l.trim_start().starts_with("f32"))
        .unwrap();
    let cells: Vec<&str> = f32_line.split_whitespace().collect();
    assert_eq!(cells[0], "f32");
    assert_eq!(cells[3], "21.5", "BADC is the third order: {f32_line}");

    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args([
            "modbus",
            "probe",
            "--tcp",
            &sim.address(0),
            "--address",
            "500",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        format!(
            "ferry: error: {} unit 1, holding 500..=507: exception 0x02 (illegal data address)",
            sim.address(0)
        )
    );
}
