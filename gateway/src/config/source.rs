//! `[sources.NAME]`: where readings come from. `type` picks the kind; the
//! other keys belong to that kind's config in `ferry_sources`.

use std::collections::BTreeMap;

use ferry_core::files::{MAX_FILE_BYTES, MAX_PASSWORD_FILE_BYTES};
use ferry_sources::modbus::{RtuSourceConfig, TcpSourceConfig};
use ferry_sources::mqtt::{BrokerSourceConfig, SubscribeSourceConfig};

use super::gateway::KeyFilePolicy;
use super::uplink_check::check_file;
use ferry_core::report::{typed, KeyPath, Report};

/// The `type` values a source may have.
pub const SOURCE_TYPES: [&str; 4] = ["mqtt_broker", "mqtt_subscribe", "modbus_tcp", "modbus_rtu"];

/// `[sources.NAME]`: one source of readings, by its `type`.
#[derive(Clone, Debug, PartialEq)]
pub enum SourceConfig {
    /// `type = "mqtt_broker"`: Ferry's embedded MQTT broker, which local
    /// devices publish to.
    MqttBroker(BrokerSourceConfig),
    /// `type = "mqtt_subscribe"`: a subscription to an existing broker with a
    /// persistent session, acknowledged only after the commit.
    MqttSubscribe(SubscribeSourceConfig),
    /// `type = "modbus_tcp"`: devices polled over Modbus TCP.
    ModbusTcp(TcpSourceConfig),
    /// `type = "modbus_rtu"`: devices on one serial (RS-485) bus.
    ModbusRtu(RtuSourceConfig),
}

impl SourceConfig {
    /// The `type` this source was configured with.
    pub fn type_name(&self) -> &'static str {
        match self {
            SourceConfig::MqttBroker(_) => "mqtt_broker",
            SourceConfig::MqttSubscribe(_) => "mqtt_subscribe",
            SourceConfig::ModbusTcp(_) => "modbus_tcp",
            SourceConfig::ModbusRtu(_) => "modbus_rtu",
        }
    }

    /// Deserializes the source at `at` from its table, dispatching on `type`.
    pub(crate) fn from_value(
        value: toml::Value,
        at: &KeyPath,
        report: &mut Report,
    ) -> Option<SourceConfig> {
        let toml::Value::Table(mut table) = value else {
            report.error(
                at.clone(),
                format!("invalid type: {}, expected a table", value.type_str()),
            );
            return None;
        };
        let expected = "expected `mqtt_broker`, `mqtt_subscribe`, `modbus_tcp` or `modbus_rtu`";
        let kind = match table.remove("type") {
            Some(toml::Value::String(kind)) => kind,
            Some(other) => {
                let message = format!("invalid type: {}, {expected}", other.type_str());
                report.error(at.key("type"), message);
                return None;
            }
            None => {
                report.error(at.clone(), format!("missing field `type`, {expected}"));
                return None;
            }
        };
        let rest = toml::Value::Table(table);
        match kind.as_str() {
            "mqtt_broker" if !cfg!(feature = "embedded-broker") => {
                report.error(
                    at.key("type"),
                    "`mqtt_broker`: this build of ferry has no embedded broker (cargo feature \
                     `embedded-broker`); use `mqtt_subscribe` with an external broker",
                );
                None
            }
            "mqtt_broker" => typed(rest, at, report).map(SourceConfig::MqttBroker),
            "mqtt_subscribe" => typed(rest, at, report).map(SourceConfig::MqttSubscribe),
            "modbus_tcp" => typed(rest, at, report).map(SourceConfig::ModbusTcp),
            "modbus_rtu" => typed(rest, at, report).map(SourceConfig::ModbusRtu),
            other => {
                let message = format!("unknown source type `{other}`, {expected}");
                report.error(at.key("type"), message);
                None
            }
        }
    }

    /// Checks what the types could not, and the files a source names.
    pub(crate) fn check(&self, at: &KeyPath, key_files: KeyFilePolicy, report: &mut Report) {
        let found = match self {
            SourceConfig::MqttBroker(c) => below(at, report, |at, r| c.check(at, r)),
            SourceConfig::MqttSubscribe(c) => below(at, report, |at, r| c.check(at, r)),
            SourceConfig::ModbusTcp(c) => below(at, report, |at, r| c.check(at, r)),
            SourceConfig::ModbusRtu(c) => below(at, report, |at, r| c.check(at, r)),
        };
        if let (SourceConfig::MqttBroker(c), 0) = (self, found) {
            check_broker_files(c, at, key_files, report);
        }
    }
}

/// Runs a source's own check from its root, so that the keys its messages
/// mention are the source's own (`devices[0].registers[1]`), and reports
/// each problem at `at` joined with its key; returns how many it found.
fn below(at: &KeyPath, report: &mut Report, check: impl FnOnce(&KeyPath, &mut Report)) -> usize {
    let mut own = Report::default();
    check(&KeyPath::default(), &mut own);
    let found = own.errors.len();
    for p in own.errors {
        report.error(at.child(&p.path), p.message);
    }
    for p in own.warnings {
        report.warn(at.child(&p.path), p.message);
    }
    found
}

/// Checks that the files of an embedded broker can be read (and are not
/// readable by every user when secret), then that they load.
fn check_broker_files(
    c: &BrokerSourceConfig,
    at: &KeyPath,
    key_files: KeyFilePolicy,
    report: &mut Report,
) {
    let mut readable = true;
    if let Some(tls) = &c.tls {
        let at = at.key("tls");
        readable &= check_file(report, at.key("cert"), &tls.cert, MAX_FILE_BYTES, None);
        let private = Some(("private key", key_files));
        readable &= check_file(report, at.key("key"), &tls.key, MAX_FILE_BYTES, private);
        if let Some(ca) = &tls.client_ca {
            readable &= check_file(report, at.key("client_ca"), ca, MAX_FILE_BYTES, None);
        }
    }
    if let Some(file) = &c.password_file {
        let private = Some(("password file", key_files));
        let limit = MAX_PASSWORD_FILE_BYTES;
        readable &= check_file(report, at.key("password_file"), file, limit, private);
    }
    #[cfg(feature = "embedded-broker")]
    if readable {
        below(at, report, |at, r| {
            ferry_sources::mqtt::check_broker_files(c, at, r)
        });
    }
    #[cfg(not(feature = "embedded-broker"))]
    let _ = readable;
}

/// Errors when two sources would fight over one thing: the persistent
/// session (broker and client id) of a subscription, or a serial port.
/// (Listen addresses are checked with the other listeners: `check.rs`.)
pub(crate) fn check_conflicts(
    sources: &BTreeMap<String, SourceConfig>,
    gateway: &str,
    report: &mut Report,
) {
    let mut sessions = BTreeMap::new();
    let mut buses = BTreeMap::new();
    for (name, source) in sources {
        let at = KeyPath::root("sources").key(name);
        match source {
            SourceConfig::MqttBroker(_) => {}
            SourceConfig::MqttSubscribe(c) => {
                let session = (c.broker.clone(), c.client_id_for(gateway));
                if let Some(first) = sessions.insert(session, name) {
                    report.error(
                        at.key("client_id"),
                        format!(
                            "source {first:?} already subscribes to {} with client id {:?}; \
                             the broker would keep only one of the two sessions",
                            c.broker,
                            c.client_id_for(gateway)
                        ),
                    );
                }
            }
            SourceConfig::ModbusTcp(_) => {}
            SourceConfig::ModbusRtu(c) => {
                if let Some(first) = buses.insert(c.path.clone(), name) {
                    report.error(
                        at.key("path"),
                        format!(
                            "{} is already the bus of source {first:?}; put all the devices of one bus in one source",
                            c.path.display()
                        ),
                    );
                }
            }
        }
    }
}
