use super::*;
use crate::modbus::types::{DataType, Table};

fn tcp(text: &str) -> TcpSourceConfig {
    toml::from_str(text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn rtu(text: &str) -> RtuSourceConfig {
    toml::from_str(text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

const PLC: &str = r#"
[[devices]]
name = "plc1"
address = "192.168.1.50:502"
unit = 1
interval = "1s"
registers = [
  { name = "temperature", table = "holding", address = 100, type = "f32", order = "CDAB", scale = 0.1 },
  { name = "pressure", table = "holding", address = 102, type = "i16" },
  { name = "pump", table = "coil", address = 0 },
]
"#;

#[test]
fn a_valid_tcp_source_resolves_with_its_plan() {
    let cfg = tcp(PLC);
    assert_eq!(cfg.validate(), Vec::<String>::new());
    let devices = cfg.devices().unwrap();
    assert_eq!(devices.len(), 1);
    let d = &devices[0];
    assert_eq!(&*d.name, "plc1");
    assert_eq!(d.address.as_deref(), Some("192.168.1.50:502"));
    assert_eq!(d.timeout, Duration::from_millis(500));
    assert_eq!(d.fields[0].order, Order::CDAB);
    assert_eq!(d.fields[1].order, Order::ABCD);
    assert_eq!(d.fields[2].kind, DataType::Bool);
    let plan: Vec<_> = d
        .requests
        .iter()
        .map(|r| (r.table, r.start, r.count))
        .collect();
    assert_eq!(plan, [(Table::Coil, 0, 1), (Table::Holding, 100, 3)]);
}

#[test]
fn every_problem_at_once_with_its_key() {
    let cfg = tcp(r#"
backoff_max = "0s"
[[devices]]
name = "a"
address = "plc:0"
interval = "0s"
max_registers = 1
registers = [
  { name = "t", table = "holding", address = 0, type = "f32" },
  { name = "t", table = "holding", address = 1 },
]
[[devices]]
name = "a"
map = "missing"
[[devices]]
name = "b"
address = "plc"
map = "m"
registers = [{ name = "x", table = "input", address = 0 }]
[maps.m]
registers = []
"#);
    assert_eq!(
        cfg.validate(),
        [
            "backoff_max: must be more than 0s",
            "maps.m.registers: a map needs at least one entry",
            "devices[0].interval: must be more than 0s",
            "devices[0].registers[1].name: `t` is already the name of devices[0].registers[0]",
            "devices[0].registers[1].address: `t` (holding 1) overlaps `t` (holding 0..=1, devices[0].registers[0])",
            "devices[0].max_registers: 1 is less than the 2 registers of `t` (devices[0].registers[0])",
            "devices[1].name: `a` is already the name of devices[0]",
            "devices[1].map: no map named `missing` in this source's `maps` (it has: m)",
            "devices[2].map: give either `map` or `registers`, not both",
            "devices[0].address: `plc:0`: `0` is not a port number (1 to 65535)",
            "devices[1]: missing field `address`, the device's \"host:port\"",
        ]
    );
}

#[test]
fn shared_addresses_and_duplicate_units() {
    let cfg = tcp(r#"
[[devices]]
name = "a"
address = "gw:502"
unit = 3
registers = [{ name = "x", table = "input", address = 0 }]
[[devices]]
name = "b"
address = "GW"
unit = 3
registers = [{ name = "x", table = "input", address = 0 }]
"#);
    assert_eq!(
        cfg.validate(),
        ["devices[1].unit: devices[0] is already unit 3 at GW"]
    );
}

#[test]
fn rtu_bus_with_a_shared_map() {
    let cfg = rtu(r#"
path = "/dev/ttyUSB0"
parity = "none"
[[devices]]
name = "meter-1"
unit = 1
map = "sdm120"
[[devices]]
name = "meter-2"
unit = 2
map = "sdm120"
order = "CDAB"
[maps.sdm120]
order = "BADC"
registers = [
  { name = "voltage", table = "input", address = 0, type = "f32", unit = "V" },
  { name = "current", table = "input", address = 6, type = "f32", unit = "A" },
]
"#);
    assert_eq!(cfg.validate(), Vec::<String>::new());
    let devices = cfg.devices().unwrap();
    assert_eq!(devices[0].fields[0].order, Order::BADC);
    assert_eq!(devices[1].fields[0].order, Order::CDAB);
    assert_eq!(devices[0].requests.len(), 2, "a gap of 4 with max_gap 0");
    assert_eq!(cfg.gap(), Duration::from_micros(4011));
    let fast = RtuSourceConfig {
        baud: 115_200,
        ..cfg.clone()
    };
    assert_eq!(fast.gap(), Duration::from_micros(1750));
    assert_eq!(cfg.serial().parity, Parity::None);
}

#[test]
fn rtu_problems() {
    let cfg = rtu(r#"
path = ""
baud = 0
data_bits = 9
stop_bits = 3
[[devices]]
name = "m"
unit = 0
address = "x:502"
registers = [{ name = "x", table = "input", address = 0 }]
[[devices]]
name = "n"
unit = 248
registers = [{ name = "x", table = "input", address = 0 }]
[[devices]]
name = "o"
unit = 248
timeout = "0s"
max_registers = 126
registers = [{ name = "x", table = "input", address = 0 }]
"#);
    assert_eq!(
        cfg.validate(),
        [
            "path: must name the serial port, such as \"/dev/ttyUSB0\"",
            "baud: must be more than 0",
            "data_bits: must be 5 to 8, not 9",
            "stop_bits: must be 1 or 2, not 3",
            "devices[2].timeout: must be more than 0s",
            "devices[2].max_registers: must be 1 to 125, not 126",
            "devices[0].address: a serial device is on its source's bus (`path`); remove `address`",
            "devices[0].unit: must be 1 to 247 on a serial bus, not 0",
            "devices[1].unit: must be 1 to 247 on a serial bus, not 248",
            "devices[2].unit: must be 1 to 247 on a serial bus, not 248",
            "devices[2].unit: devices[1] is already unit 248 on this bus",
        ]
    );
}

#[test]
fn unknown_keys_are_refused() {
    let e = toml::from_str::<TcpSourceConfig>(
        "[[devices]]\nname = \"a\"\naddress = \"h\"\nregisters = []\npoll = \"1s\"\n",
    )
    .unwrap_err();
    assert!(e.to_string().contains("unknown field `poll`"), "{e}");
}

#[test]
fn host_and_port() {
    assert_eq!(split_host_port("plc"), Ok(("plc".into(), 502)));
    assert_eq!(
        split_host_port("10.0.0.5:1502"),
        Ok(("10.0.0.5".into(), 1502))
    );
    assert_eq!(
        split_host_port("[fd00::1]:502"),
        Ok(("fd00::1".into(), 502))
    );
    assert_eq!(split_host_port("[fd00::1]"), Ok(("fd00::1".into(), 502)));
    assert!(split_host_port("fd00::1").is_err());
    assert!(split_host_port(":502").is_err());
    assert_eq!(with_default_port("[fd00::1]"), "[fd00::1]:502");
    assert_eq!(with_default_port("plc"), "plc:502");
}
