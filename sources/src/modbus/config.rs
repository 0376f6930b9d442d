//! Configuration of the Modbus sources.
//!
//! The gateway embeds these under `[sources.NAME]` with `type = "modbus_tcp"`
//! ([`TcpSourceConfig`]) or `type = "modbus_rtu"` ([`RtuSourceConfig`]).
//! Both hold `devices` (each with a register map, inline or named from
//! `maps`); `validate` lists every problem at once, each starting with its
//! key, and [`TcpSourceConfig::devices`]/[`RtuSourceConfig::devices`] turn a
//! valid config into the resolved devices with their request plans.

use ferry_core::hostport::HostPort;
use ferry_core::report::{KeyPath, Report};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::decode::Field;
use super::link::SerialSettings;
use super::plan::{plan, Limits, Request, Span};
use super::register::{check_map, RegisterConfig};
use super::types::{Order, Parity};

fn default_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_timeout() -> Duration {
    Duration::from_millis(500)
}
fn default_max_registers() -> u16 {
    125
}
fn default_backoff_max() -> Duration {
    Duration::from_secs(60)
}
fn default_baud() -> u32 {
    9600
}
fn default_parity() -> Parity {
    Parity::Even
}
fn default_data_bits() -> u8 {
    8
}
fn default_stop_bits() -> u8 {
    1
}

/// One device: where it answers, how often it is polled, what is read.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// The device name: the `device` of its records. Required, unique within
    /// the source.
    pub name: String,
    /// TCP only: the device, `"host:port"` (`"host"` alone means port 502).
    /// Devices with the same address share one connection (a TCP-to-RTU
    /// gateway) and are polled one request at a time. Required for TCP.
    #[serde(default)]
    pub address: Option<String>,
    /// The Modbus unit (slave) id: 1 to 247 on a serial bus; 0 to 255 over
    /// TCP (devices that ignore it usually take 1 or 255). Default: `1`.
    #[serde(default = "default_unit")]
    pub unit: u8,
    /// Time between polls; each poll is one record. Default: `"1s"`.
    #[serde(default = "default_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// How long to wait for each answer. Default: `"500ms"`.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Byte and word order of multi-register values that name none:
    /// `"ABCD"`, `"CDAB"`, `"BADC"` or `"DCBA"`. Default: the map's, else
    /// `"ABCD"`.
    #[serde(default)]
    pub order: Option<Order>,
    /// Most unmapped addresses read through to join two entries into one
    /// request. Some devices answer an exception for unmapped addresses, so
    /// the default reads only mapped ones. Default: `0`.
    #[serde(default)]
    pub max_gap: u16,
    /// Most registers per request, for devices that take fewer than the
    /// protocol's 125. Default: `125`.
    #[serde(default = "default_max_registers")]
    pub max_registers: u16,
    /// The register map, by name from this source's `maps`; or give
    /// `registers` instead.
    #[serde(default)]
    pub map: Option<String>,
    /// The register map, inline: `[{ name, table, address, type, ... }]`.
    #[serde(default)]
    pub registers: Vec<RegisterConfig>,
}

fn default_unit() -> u8 {
    1
}

/// A register map shared by devices of one model: `[sources.NAME.maps.MODEL]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapConfig {
    /// Default byte and word order of its entries. Default: `"ABCD"`.
    #[serde(default)]
    pub order: Option<Order>,
    /// The entries. Required.
    pub registers: Vec<RegisterConfig>,
}

/// `type = "modbus_tcp"`: devices polled over Modbus TCP, each address
/// concurrently.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpSourceConfig {
    /// The devices. Required, at least one.
    pub devices: Vec<DeviceConfig>,
    /// Register maps by name, for devices that say `map = "NAME"`.
    #[serde(default)]
    pub maps: BTreeMap<String, MapConfig>,
    /// Quiet time between the end of one answer and the next request on a
    /// connection. Default: `"0s"`.
    #[serde(default, with = "humantime_serde")]
    pub request_gap: Duration,
    /// A device that fails (times out, cannot be reached) is polled again
    /// after a delay that starts at its interval and doubles, up to this.
    /// Default: `"60s"`.
    #[serde(default = "default_backoff_max", with = "humantime_serde")]
    pub backoff_max: Duration,
}

/// `type = "modbus_rtu"`: devices on one serial (RS-485) bus, polled one
/// request at a time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RtuSourceConfig {
    /// The serial port, such as `"/dev/ttyUSB0"`. Required.
    pub path: PathBuf,
    /// Bits per second. Default: `9600`.
    #[serde(default = "default_baud")]
    pub baud: u32,
    /// `"none"`, `"even"` or `"odd"`. Default: `"even"` (Modbus's default
    /// 8E1; many devices use `"none"`).
    #[serde(default = "default_parity")]
    pub parity: Parity,
    /// Data bits, 5 to 8. Default: `8`.
    #[serde(default = "default_data_bits")]
    pub data_bits: u8,
    /// Stop bits, 1 or 2. Default: `1`.
    #[serde(default = "default_stop_bits")]
    pub stop_bits: u8,
    /// Quiet time between the end of one answer and the next request.
    /// Default: Modbus's 3.5 character times (4 ms at 9600 baud; 1.75 ms
    /// above 19200).
    #[serde(default, with = "humantime_serde")]
    pub request_gap: Option<Duration>,
    /// A device that fails (times out) is polled again after a delay that
    /// starts at its interval and doubles, up to this; the others keep the
    /// bus. Default: `"60s"`.
    #[serde(default = "default_backoff_max", with = "humantime_serde")]
    pub backoff_max: Duration,
    /// The devices on the bus. Required, at least one.
    pub devices: Vec<DeviceConfig>,
    /// Register maps by name, for devices that say `map = "NAME"`.
    #[serde(default)]
    pub maps: BTreeMap<String, MapConfig>,
}

/// A device resolved for polling.
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceSpec {
    pub name: Arc<str>,
    /// TCP: `host:port`.
    pub address: Option<String>,
    pub unit: u8,
    pub interval: Duration,
    pub timeout: Duration,
    /// The map's entries, in map order (the order of the record's fields).
    pub fields: Vec<Field>,
    /// The requests of one poll.
    pub requests: Vec<Request>,
}

impl TcpSourceConfig {
    /// A config with defaults polling `devices`.
    pub fn new(devices: Vec<DeviceConfig>) -> Self {
        TcpSourceConfig {
            devices,
            maps: BTreeMap::new(),
            request_gap: Duration::ZERO,
            backoff_max: default_backoff_max(),
        }
    }

    /// Every problem with this configuration, each at its key below `at`.
    pub fn check(&self, at: &KeyPath, report: &mut Report) {
        check_common(&self.devices, &self.maps, self.backoff_max, at, report);
        let mut seen: HashMap<(String, u8), usize> = HashMap::new();
        for (i, d) in self.devices.iter().enumerate() {
            let Some(address) = &d.address else {
                report.error(
                    at.key("devices").index(i),
                    "missing field `address`, the device's \"host:port\"".to_string(),
                );
                continue;
            };
            match split_host_port(address) {
                Err(why) => report.error(
                    at.key("devices").index(i).key("address"),
                    format!("`{address}`: {why}"),
                ),
                Ok((host, port)) => {
                    let key = (format!("{}:{port}", host.to_ascii_lowercase()), d.unit);
                    if let Some(first) = seen.insert(key, i) {
                        report.error(
                            at.key("devices").index(i).key("unit"),
                            format!("devices[{first}] is already unit {} at {address}", d.unit),
                        );
                    }
                }
            }
        }
    }

    /// Every problem with this configuration, each naming its key.
    pub fn validate(&self) -> Vec<String> {
        ferry_core::report::problem_lines(|at, report| self.check(at, report))
    }

    /// The devices resolved for polling; every problem if the config is invalid.
    pub fn devices(&self) -> Result<Vec<DeviceSpec>, Vec<String>> {
        let problems = self.validate();
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(self
            .devices
            .iter()
            .map(|d| {
                let mut spec = resolve(d, &self.maps);
                spec.address = d.address.as_deref().map(with_default_port);
                spec
            })
            .collect())
    }
}

impl RtuSourceConfig {
    /// A config with defaults for the bus at `path`.
    pub fn new(path: impl Into<PathBuf>, devices: Vec<DeviceConfig>) -> Self {
        RtuSourceConfig {
            path: path.into(),
            baud: default_baud(),
            parity: default_parity(),
            data_bits: default_data_bits(),
            stop_bits: default_stop_bits(),
            request_gap: None,
            backoff_max: default_backoff_max(),
            devices,
            maps: BTreeMap::new(),
        }
    }

    /// Every problem with this configuration, each at its key below `at`.
    pub fn check(&self, at: &KeyPath, report: &mut Report) {
        if self.path.as_os_str().is_empty() {
            report.error(
                at.key("path"),
                "must name the serial port, such as \"/dev/ttyUSB0\"",
            );
        }
        if self.baud == 0 {
            report.error(at.key("baud"), "must be more than 0");
        }
        if !(5..=8).contains(&self.data_bits) {
            report.error(
                at.key("data_bits"),
                format!("must be 5 to 8, not {}", self.data_bits),
            );
        }
        if !(1..=2).contains(&self.stop_bits) {
            report.error(
                at.key("stop_bits"),
                format!("must be 1 or 2, not {}", self.stop_bits),
            );
        }
        check_common(&self.devices, &self.maps, self.backoff_max, at, report);
        let mut units: HashMap<u8, usize> = HashMap::new();
        for (i, d) in self.devices.iter().enumerate() {
            if d.address.is_some() {
                report.error(
                    at.key("devices").index(i).key("address"),
                    "a serial device is on its source's bus (`path`); remove `address`".to_string(),
                );
            }
            if !(1..=247).contains(&d.unit) {
                report.error(
                    at.key("devices").index(i).key("unit"),
                    format!("must be 1 to 247 on a serial bus, not {}", d.unit),
                );
            }
            if let Some(first) = units.insert(d.unit, i) {
                report.error(
                    at.key("devices").index(i).key("unit"),
                    format!("devices[{first}] is already unit {} on this bus", d.unit),
                );
            }
        }
    }

    /// Every problem with this configuration, each naming its key.
    pub fn validate(&self) -> Vec<String> {
        ferry_core::report::problem_lines(|at, report| self.check(at, report))
    }

    /// The devices resolved for polling; every problem if the config is invalid.
    pub fn devices(&self) -> Result<Vec<DeviceSpec>, Vec<String>> {
        let problems = self.validate();
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(self
            .devices
            .iter()
            .map(|d| resolve(d, &self.maps))
            .collect())
    }

    /// The serial line settings.
    pub fn serial(&self) -> SerialSettings {
        SerialSettings {
            path: self.path.clone(),
            baud: self.baud,
            parity: self.parity,
            data_bits: self.data_bits,
            stop_bits: self.stop_bits,
        }
    }

    /// The quiet time between requests: `request_gap`, else 3.5 characters
    /// of 11 bits at `baud` (at least 1.75 ms, the spec's fixed value above
    /// 19200 baud).
    pub fn gap(&self) -> Duration {
        self.request_gap.unwrap_or_else(|| {
            let micros = 3.5 * 11.0 * 1e6 / f64::from(self.baud.max(1));
            Duration::from_micros(micros.max(1750.0).ceil() as u64)
        })
    }
}

fn check_common(
    devices: &[DeviceConfig],
    maps: &BTreeMap<String, MapConfig>,
    backoff_max: Duration,
    at: &KeyPath,
    report: &mut Report,
) {
    if devices.is_empty() {
        report.error(at.key("devices"), "at least one device is needed");
    }
    if backoff_max.is_zero() {
        report.error(at.key("backoff_max"), "must be more than 0s");
    }
    for (name, map) in maps {
        let list_at = at.key("maps").key(name).key("registers");
        if map.registers.is_empty() {
            report.error(list_at.clone(), "a map needs at least one entry");
        }
        for (i, r) in map.registers.iter().enumerate() {
            r.check(&list_at.index(i), report);
        }
        check_map(&list_at, &map.registers, report);
    }
    let mut names: HashMap<&str, usize> = HashMap::new();
    let source_at = at;
    for (i, d) in devices.iter().enumerate() {
        let at = source_at.key("devices").index(i);
        if d.name.trim().is_empty() {
            report.error(at.key("name"), "must not be empty".to_string());
        } else if let Some(first) = names.insert(&d.name, i) {
            report.error(
                at.key("name"),
                format!("`{}` is already the name of devices[{first}]", d.name),
            );
        }
        if d.interval.is_zero() {
            report.error(at.key("interval"), "must be more than 0s".to_string());
        }
        if d.timeout.is_zero() {
            report.error(at.key("timeout"), "must be more than 0s".to_string());
        }
        if !(1..=125).contains(&d.max_registers) {
            report.error(
                at.key("max_registers"),
                format!("must be 1 to 125, not {}", d.max_registers),
            );
        }
        let (registers, list_at) = match (&d.map, d.registers.is_empty()) {
            (Some(_), false) => {
                report.error(
                    at.key("map"),
                    "give either `map` or `registers`, not both".to_string(),
                );
                continue;
            }
            (None, true) => {
                report.error(
                    at.clone(),
                    "no register map: give `registers = [...]` or `map = \"NAME\"`".to_string(),
                );
                continue;
            }
            (Some(name), true) => match maps.get(name) {
                Some(m) => (
                    &m.registers,
                    source_at.key("maps").key(name).key("registers"),
                ),
                None => {
                    let known: Vec<&str> = maps.keys().map(String::as_str).collect();
                    report.error(
                        at.key("map"),
                        format!(
                            "no map named `{name}` in this source's `maps` (it has: {})",
                            if known.is_empty() {
                                "none".to_owned()
                            } else {
                                known.join(", ")
                            }
                        ),
                    );
                    continue;
                }
            },
            (None, false) => {
                let list_at = at.key("registers");
                for (j, r) in d.registers.iter().enumerate() {
                    r.check(&list_at.index(j), report);
                }
                check_map(&list_at, &d.registers, report);
                (&d.registers, list_at)
            }
        };
        let limit = d.max_registers.clamp(1, 125);
        for (j, r) in registers.iter().enumerate() {
            if !r.table.is_bits() && r.width() > limit {
                report.error(
                    at.key("max_registers"),
                    format!(
                        "{limit} is less than the {} registers of `{}` ({list_at}[{j}])",
                        r.width(),
                        r.name
                    ),
                );
            }
        }
    }
}

fn resolve(d: &DeviceConfig, maps: &BTreeMap<String, MapConfig>) -> DeviceSpec {
    let (registers, map_order) = match d.map.as_ref().and_then(|m| maps.get(m)) {
        Some(map) => (&map.registers, map.order),
        None => (&d.registers, None),
    };
    let order = d.order.or(map_order).unwrap_or(Order::ABCD);
    let fields: Vec<Field> = registers.iter().map(|r| r.field(order)).collect();
    let spans: Vec<Span> = fields
        .iter()
        .map(|f| Span {
            table: f.table,
            start: f.address,
            count: f.count,
        })
        .collect();
    let requests = plan(
        &spans,
        Limits {
            max_gap: d.max_gap,
            max_registers: d.max_registers,
        },
    );
    DeviceSpec {
        name: d.name.as_str().into(),
        address: None,
        unit: d.unit,
        interval: d.interval,
        timeout: d.timeout,
        fields,
        requests,
    }
}

/// `host:port`, `[v6]:port`, or a host alone (port 502): see
/// [`ferry_core::hostport`].
pub fn split_host_port(s: &str) -> Result<(String, u16), String> {
    let hp = HostPort::parse(s, Some(502), "plc:502").map_err(|e| e.to_string())?;
    Ok((hp.host, hp.port))
}

fn with_default_port(s: &str) -> String {
    match HostPort::parse(s, Some(502), "plc:502") {
        Ok(hp) => hp.to_string(),
        Err(_) => s.to_owned(),
    }
}

#[cfg(test)]
mod tests;
