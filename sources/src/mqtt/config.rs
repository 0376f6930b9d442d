//! Configuration of the MQTT sources.
//!
//! The gateway embeds these under `[sources.NAME]` with `type = "mqtt_broker"`
//! ([`BrokerSourceConfig`]) or `type = "mqtt_subscribe"`
//! ([`SubscribeSourceConfig`]); the `type` tag belongs to the gateway's enum,
//! not to these structs. Deserializing checks types and unknown keys;
//! `validate` then lists every remaining problem at once, each starting with
//! the key it is about.

use ferry_core::hostport::HostPort;
use ferry_core::report::{KeyPath, Report};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

use super::broker_security::{Acl, BrokerTlsConfig, DeviceFront};
use super::decode::MessageDecoder;
use super::payload::PayloadOptions;
use super::topic::TopicTemplate;
use super::SourceError;

/// The largest payload MQTT can carry (its packet length limit).
const MQTT_MAX_PAYLOAD: u64 = 268_435_455;

fn default_listen() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 1883))
}
fn default_topics() -> Vec<String> {
    vec!["sensors/{device}/telemetry".to_owned()]
}
fn default_max_payload() -> ByteSize {
    ByteSize::kib(64)
}
fn default_max_fields() -> usize {
    256
}
fn default_max_connections() -> usize {
    1000
}
fn default_max_topic_length() -> usize {
    256
}
fn default_buffer() -> ByteSize {
    ByteSize::kib(512)
}
fn default_qos() -> u8 {
    1
}
fn default_keep_alive() -> Duration {
    Duration::from_secs(30)
}
fn default_reconnect_min() -> Duration {
    Duration::from_secs(1)
}
fn default_reconnect_max() -> Duration {
    Duration::from_secs(60)
}

/// `type = "mqtt_broker"`: Ferry's embedded MQTT broker, which local devices
/// publish to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerSourceConfig {
    /// Address the broker listens on (MQTT 3.1.1, over TLS when `tls` is
    /// set); port 0 picks a free port. Default: `"127.0.0.1:1883"`.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Topic templates that are accepted, tried in order; `{device}` takes
    /// one whole level and names the device. Messages on other topics become
    /// `unknown_topic` dead letters. Default: `["sensors/{device}/telemetry"]`.
    #[serde(default = "default_topics")]
    pub topics: Vec<String>,
    /// Payload field that names the device (a string or an integer); it is
    /// taken out of the fields. A payload without it falls back to the
    /// topic's `{device}`. Default: none (the topic names the device).
    #[serde(default)]
    pub device_field: Option<String>,
    /// Payload field that holds the reading's time: seconds or milliseconds
    /// (from 1e11 on) since 1970, or an RFC 3339 string with a time zone; it
    /// is taken out of the fields. Default: none (the time of receipt).
    #[serde(default)]
    pub timestamp_field: Option<String>,
    /// Largest payload accepted; larger ones become `oversize` dead letters
    /// (up to twice this size: beyond that the broker drops the publishing
    /// connection). Default: `"64KiB"`.
    #[serde(default = "default_max_payload")]
    pub max_payload: ByteSize,
    /// Most fields one payload may carry (besides the device and timestamp
    /// fields); more is a `too_many_fields` dead letter. Default: `256`.
    #[serde(default = "default_max_fields")]
    pub max_fields: usize,
    /// Most devices connected at once. Through the device front (see
    /// `device_front`) more are refused with CONNACK 3 (server unavailable)
    /// and counted; connected directly, the broker drops them without a
    /// CONNACK. Default: `1000`.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Longest topic a device may publish to, in bytes. Through the device
    /// front a longer one is dropped (acknowledged at QoS 1, not stored);
    /// connected directly it becomes a `topic_too_long` dead letter. Both
    /// are counted. Default: `256`.
    #[serde(default = "default_max_topic_length")]
    pub max_topic_length: usize,
    /// TLS for devices: `{ cert = "...", key = "...", client_ca = "..." }`.
    /// Default: none (plain TCP).
    #[serde(default)]
    pub tls: Option<BrokerTlsConfig>,
    /// Devices must log in with a username and password listed in this
    /// file, in mosquitto's format (`mosquitto_passwd -c FILE USER` writes
    /// it). Re-read on SIGHUP. Default: none (any client may connect).
    #[serde(default)]
    pub password_file: Option<std::path::PathBuf>,
    /// Per-device topics: `"username"` or `"client_id"` lets a client
    /// publish only to topics whose `{device}` level equals that name, and
    /// not subscribe; `"none"` allows any topic. Default: `"none"`.
    #[serde(default)]
    pub acl: Acl,
    /// `"always"`: devices connect through Ferry's device front, which
    /// stores each publish before it acknowledges it (zero loss), refuses
    /// clients over `max_connections` with a CONNACK and counts connected
    /// clients (`ferry_source_connections`). `"auto"`: through the front
    /// only when `tls`, `password_file` or `acl` needs it, and straight to
    /// rumqttd otherwise, which acknowledges a publish before Ferry stores
    /// it (a crash loses up to a commit interval of acknowledged messages).
    /// Default: `"always"`.
    #[serde(default)]
    pub device_front: DeviceFront,
    /// Memory for messages in flight: through the device front, the room
    /// partial packets over 16 KiB share (at least twice the largest
    /// packet); rumqttd keeps the last `buffer` of the messages it routes
    /// (what devices subscribe to, or, for devices connected straight to
    /// it, everything), which with its overhead costs about three times
    /// this once traffic has filled it. Devices connected straight to
    /// rumqttd are not held back: if Ferry falls behind by more than this
    /// (the store stalls) rumqttd drops the oldest messages it has already
    /// acknowledged (Ferry logs and counts them: `overrun`); raise it for
    /// them. 64KiB to 1GiB. Default: `"512KiB"`.
    #[serde(default = "default_buffer")]
    pub buffer: ByteSize,
}

impl Default for BrokerSourceConfig {
    fn default() -> Self {
        BrokerSourceConfig {
            listen: default_listen(),
            topics: default_topics(),
            device_field: None,
            timestamp_field: None,
            max_payload: default_max_payload(),
            max_fields: default_max_fields(),
            max_connections: default_max_connections(),
            max_topic_length: default_max_topic_length(),
            tls: None,
            password_file: None,
            acl: Acl::None,
            device_front: DeviceFront::Always,
            buffer: default_buffer(),
        }
    }
}

impl BrokerSourceConfig {
    /// Whether devices connect through Ferry's device front rather than to
    /// the broker directly (see `device_front`).
    pub fn uses_front(&self) -> bool {
        self.device_front == DeviceFront::Always
            || self.tls.is_some()
            || self.password_file.is_some()
            || self.acl != Acl::None
    }

    /// Every problem with this configuration, each at its key below `at`.
    pub fn check(&self, at: &KeyPath, report: &mut Report) {
        check_decoding(
            &self.topics,
            &self.device_field,
            &self.timestamp_field,
            self.max_payload,
            self.max_fields,
            at,
            report,
        );
        if self.max_connections == 0 {
            report.error(at.key("max_connections"), "must be at least 1");
        }
        if self.max_topic_length == 0 || self.max_topic_length > usize::from(u16::MAX) {
            report.error(
                at.key("max_topic_length"),
                format!("{} is not 1 to 65535 bytes", self.max_topic_length),
            );
        }
        match self.acl {
            Acl::None => {}
            Acl::Username if self.password_file.is_none() => report.error(
                at.key("acl"),
                "\"username\" needs password_file, or any client could claim any username",
            ),
            Acl::Username | Acl::ClientId => {
                for (i, text) in self.topics.iter().enumerate() {
                    if TopicTemplate::parse(text).is_ok_and(|t| !t.has_device()) {
                        report.error(
                            at.key("topics").index(i),
                            format!(
                                "`{text}` has no `{{device}}` level, which acl = \"{}\" \
                             compares with the client's name",
                                self.acl.as_str()
                            ),
                        );
                    }
                }
            }
        }
        if self.buffer < ByteSize::kib(64) {
            report.error(
                at.key("buffer"),
                format!("{} is too small; at least 64KiB", self.buffer),
            );
        } else if self.buffer.as_u64() == u64::MAX {
            // What a size too large for 64 bits parses to (saturated).
            report.error(
                at.key("buffer"),
                "is too large: the size overflows 16EiB; at most 1GiB",
            );
        } else if self.buffer > ByteSize::gib(1) {
            report.error(
                at.key("buffer"),
                format!("{} is too large; at most 1GiB", self.buffer),
            );
        }
    }

    /// Every problem with this configuration, each naming its key.
    pub fn validate(&self) -> Vec<String> {
        ferry_core::report::problem_lines(|at, report| self.check(at, report))
    }

    /// How payloads are decoded.
    pub fn payload_options(&self) -> PayloadOptions {
        payload_options(
            &self.device_field,
            &self.timestamp_field,
            self.max_payload,
            self.max_fields,
        )
    }

    /// The decoder for this source's messages; fails with every problem if
    /// the configuration is invalid.
    pub fn decoder(&self, source: Arc<str>) -> Result<MessageDecoder, SourceError> {
        checked_decoder(
            self.validate(),
            source,
            &self.topics,
            self.payload_options(),
        )
    }
}

/// `type = "mqtt_subscribe"`: Ferry subscribes to an existing broker (such as
/// mosquitto) with a persistent session and acknowledges each message only
/// once it is committed.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscribeSourceConfig {
    /// The broker, `"host:port"` (plain TCP; `"[::1]:1883"` for IPv6).
    /// Required.
    pub broker: String,
    /// MQTT client id; the broker keeps the persistent session (and the
    /// messages not yet acknowledged) under it, so it must be stable and
    /// unique. Default: `"ferry-{gateway}"` with the gateway's id.
    #[serde(default)]
    pub client_id: Option<String>,
    /// Topic templates subscribed to, tried in order; `{device}` takes one
    /// whole level and names the device. Default:
    /// `["sensors/{device}/telemetry"]`.
    #[serde(default = "default_topics")]
    pub topics: Vec<String>,
    /// QoS of the subscriptions: `1` (each message acknowledged after it is
    /// committed: nothing lost) or `0` (at most once). Default: `1`.
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// User name for the broker. Default: none (anonymous).
    #[serde(default)]
    pub username: Option<String>,
    /// Password for the broker; needs `username`. Default: none.
    #[serde(default)]
    pub password: Option<String>,
    /// MQTT keep-alive: the broker drops the connection after 1.5 times this
    /// without traffic; whole seconds, `"0s"` disables it. Default: `"30s"`.
    #[serde(default = "default_keep_alive", with = "humantime_serde")]
    pub keep_alive: Duration,
    /// Payload field that names the device (a string or an integer); it is
    /// taken out of the fields. A payload without it falls back to the
    /// topic's `{device}`. Default: none (the topic names the device).
    #[serde(default)]
    pub device_field: Option<String>,
    /// Payload field that holds the reading's time: seconds or milliseconds
    /// (from 1e11 on) since 1970, or an RFC 3339 string with a time zone; it
    /// is taken out of the fields. Default: none (the time of receipt).
    #[serde(default)]
    pub timestamp_field: Option<String>,
    /// Largest payload accepted; larger ones become `oversize` dead letters.
    /// Default: `"64KiB"`.
    #[serde(default = "default_max_payload")]
    pub max_payload: ByteSize,
    /// Most fields one payload may carry (besides the device and timestamp
    /// fields); more is a `too_many_fields` dead letter. Default: `256`.
    #[serde(default = "default_max_fields")]
    pub max_fields: usize,
    /// First delay before reconnecting; it doubles on each failed attempt
    /// (with full jitter) up to `reconnect_max`. Default: `"1s"`.
    #[serde(default = "default_reconnect_min", with = "humantime_serde")]
    pub reconnect_min: Duration,
    /// Longest delay between reconnection attempts. Default: `"60s"`.
    #[serde(default = "default_reconnect_max", with = "humantime_serde")]
    pub reconnect_max: Duration,
    /// The broker's in-flight window for this client: how many QoS 1
    /// messages it sends before it waits for PUBACKs (mosquitto:
    /// `max_inflight_messages`, default 20). Messages are acknowledged only
    /// once committed, so when half of this many wait for their commit,
    /// Ferry commits at once instead of after `store.commit_interval`: the
    /// broker is never held up for long, and at low rates commits stay few.
    /// 1 to 65535. Default: `20`.
    #[serde(default = "default_broker_inflight")]
    pub broker_inflight: u16,
}

fn default_broker_inflight() -> u16 {
    20
}

impl std::fmt::Debug for SubscribeSourceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubscribeSourceConfig")
            .field("broker", &self.broker)
            .field("client_id", &self.client_id)
            .field("topics", &self.topics)
            .field("qos", &self.qos)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("keep_alive", &self.keep_alive)
            .field("device_field", &self.device_field)
            .field("timestamp_field", &self.timestamp_field)
            .field("max_payload", &self.max_payload)
            .field("max_fields", &self.max_fields)
            .field("reconnect_min", &self.reconnect_min)
            .field("reconnect_max", &self.reconnect_max)
            .field("broker_inflight", &self.broker_inflight)
            .finish()
    }
}

impl SubscribeSourceConfig {
    /// A configuration with every default, subscribing to `broker`.
    pub fn new(broker: impl Into<String>) -> Self {
        SubscribeSourceConfig {
            broker: broker.into(),
            client_id: None,
            topics: default_topics(),
            qos: default_qos(),
            username: None,
            password: None,
            keep_alive: default_keep_alive(),
            device_field: None,
            timestamp_field: None,
            max_payload: default_max_payload(),
            max_fields: default_max_fields(),
            reconnect_min: default_reconnect_min(),
            reconnect_max: default_reconnect_max(),
            broker_inflight: default_broker_inflight(),
        }
    }

    /// Every problem with this configuration, each at its key below `at`.
    pub fn check(&self, at: &KeyPath, report: &mut Report) {
        if let Err(why) = split_host_port(&self.broker) {
            report.error(at.key("broker"), format!("`{}`: {why}", self.broker));
        }
        if let Some(id) = &self.client_id {
            if id.is_empty() {
                report.error(at.key("client_id"), "must not be empty");
            } else if id.len() > u16::MAX as usize {
                report.error(at.key("client_id"), "longer than 65535 bytes");
            }
        }
        check_decoding(
            &self.topics,
            &self.device_field,
            &self.timestamp_field,
            self.max_payload,
            self.max_fields,
            at,
            report,
        );
        if self.qos > 1 {
            report.error(at.key("qos"), format!("must be 0 or 1, not {}", self.qos));
        }
        if self.password.is_some() && self.username.is_none() {
            report.error(at.key("password"), "set without username");
        }
        let ka = self.keep_alive;
        if ka.subsec_nanos() != 0 || ka.as_secs() > u64::from(u16::MAX) {
            report.error(
                at.key("keep_alive"),
                format!(
                    "{} must be whole seconds, at most 65535s",
                    humantime::format_duration(ka)
                ),
            );
        }
        if self.reconnect_min.is_zero() {
            report.error(at.key("reconnect_min"), "must be more than 0s");
        }
        if self.broker_inflight == 0 {
            report.error(at.key("broker_inflight"), "must be at least 1");
        }
        if self.reconnect_min > self.reconnect_max {
            report.error(
                at.key("reconnect_max"),
                format!(
                    "{} is less than reconnect_min ({})",
                    humantime::format_duration(self.reconnect_max),
                    humantime::format_duration(self.reconnect_min)
                ),
            );
        }
    }

    /// Every problem with this configuration, each naming its key.
    pub fn validate(&self) -> Vec<String> {
        ferry_core::report::problem_lines(|at, report| self.check(at, report))
    }

    /// How payloads are decoded.
    pub fn payload_options(&self) -> PayloadOptions {
        payload_options(
            &self.device_field,
            &self.timestamp_field,
            self.max_payload,
            self.max_fields,
        )
    }

    /// The client id used at the broker.
    pub fn client_id_for(&self, gateway_id: &str) -> String {
        self.client_id
            .clone()
            .unwrap_or_else(|| format!("ferry-{gateway_id}"))
    }

    /// The decoder for this source's messages; fails with every problem if
    /// the configuration is invalid.
    pub fn decoder(&self, source: Arc<str>) -> Result<MessageDecoder, SourceError> {
        checked_decoder(
            self.validate(),
            source,
            &self.topics,
            self.payload_options(),
        )
    }
}

/// Splits `host:port` (`[v6]:port` for IPv6 literals): see
/// [`ferry_core::hostport`].
pub(crate) fn split_host_port(s: &str) -> Result<(String, u16), String> {
    let hp = HostPort::parse(s, None, "localhost:1883").map_err(|e| e.to_string())?;
    Ok((hp.host, hp.port))
}

fn payload_options(
    device_field: &Option<String>,
    timestamp_field: &Option<String>,
    max_payload: ByteSize,
    max_fields: usize,
) -> PayloadOptions {
    PayloadOptions {
        device_field: device_field.clone(),
        timestamp_field: timestamp_field.clone(),
        max_payload: usize::try_from(max_payload.as_u64()).unwrap_or(usize::MAX),
        max_fields,
    }
}

fn checked_decoder(
    problems: Vec<String>,
    source: Arc<str>,
    topics: &[String],
    options: PayloadOptions,
) -> Result<MessageDecoder, SourceError> {
    if !problems.is_empty() {
        return Err(SourceError::Config(problems));
    }
    let templates = topics
        .iter()
        .map(|t| TopicTemplate::parse(t))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| SourceError::Config(vec![format!("topics: {e}")]))?;
    Ok(MessageDecoder::new(source, templates, options))
}

#[allow(clippy::too_many_arguments)]
fn check_decoding(
    topics: &[String],
    device_field: &Option<String>,
    timestamp_field: &Option<String>,
    max_payload: ByteSize,
    max_fields: usize,
    at: &KeyPath,
    report: &mut Report,
) {
    if topics.is_empty() {
        report.error(at.key("topics"), "at least one topic template is needed");
    }
    let mut filters: HashMap<String, usize> = HashMap::new();
    for (i, text) in topics.iter().enumerate() {
        match TopicTemplate::parse(text) {
            Err(e) => report.error(at.key("topics").index(i), format!("`{text}`: {e}")),
            Ok(t) => {
                if !t.has_device() && device_field.is_none() {
                    report.error(
                        at.key("topics").index(i),
                        format!(
                            "`{text}` has no `{{device}}` level, so `device_field` \
                         must name the payload field that holds the device"
                        ),
                    );
                }
                if let Some(first) = filters.insert(t.filter(), i) {
                    report.error(
                        at.key("topics").index(i),
                        format!(
                            "`{text}` subscribes to the same filter `{}` as \
                         topics[{first}] (`{}`), which takes all its messages",
                            t.filter(),
                            topics[first]
                        ),
                    );
                    filters.insert(t.filter(), first);
                }
            }
        }
    }
    if device_field.as_deref() == Some("") {
        report.error(at.key("device_field"), "must not be empty");
    }
    if timestamp_field.as_deref() == Some("") {
        report.error(at.key("timestamp_field"), "must not be empty");
    }
    if device_field.is_some() && device_field == timestamp_field {
        report.error(
            at.key("timestamp_field"),
            "is the same field as device_field",
        );
    }
    if max_payload.as_u64() == 0 {
        report.error(at.key("max_payload"), "must be at least 1 byte");
    } else if max_payload.as_u64() > MQTT_MAX_PAYLOAD {
        report.error(
            at.key("max_payload"),
            format!(
                "{max_payload} is over MQTT's limit of {}",
                ByteSize::b(MQTT_MAX_PAYLOAD)
            ),
        );
    }
    if max_fields == 0 {
        report.error(at.key("max_fields"), "must be at least 1");
    }
}

#[cfg(test)]
mod tests;
