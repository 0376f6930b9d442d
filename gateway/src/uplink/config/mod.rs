//! `[uplinks.NAME]`: a batching, rate-limited, at-least-once publisher to a
//! cloud MQTT broker (AWS IoT Core, or any MQTT 3.1.1 broker).
//!
//! `topic.rs` checks the topic and client id templates against IoT Core's
//! limits; `settings.rs` turns the table into the settings an uplink runs
//! with. (The checks that need the rest of the config, such as the sources
//! an uplink names, are the config loader's: `config/uplink_check.rs`.)

mod settings;
pub mod topic;

pub use settings::{DRAIN_TIMEOUT, WINDOW_RECORDS};

use std::num::{NonZeroU16, NonZeroU32};
use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;

/// How an uplink's endpoint is written, in messages.
pub const ENDPOINT_EXAMPLE: &str = "abc123-ats.iot.eu-west-1.amazonaws.com:8883";

/// `max_batch_records` with `encoding = "json"` unless set: an IoT rule's
/// Firehose action in batch mode takes at most 500 elements of an array
/// (AWS IoT developer guide, "Firehose" rule action, `batchMode`).
pub const JSON_BATCH_RECORDS: usize = 500;

/// The most `max_batch_records` accepted.
pub const MAX_BATCH_RECORDS: usize = 100_000;

/// The hard cap on `max_batch_bytes`: IoT Core's payload limit.
pub const MAX_BATCH_BYTES: u64 = 128 * 1024;
/// The least `max_batch_bytes` accepted.
pub const MIN_BATCH_BYTES: u64 = 1024;
/// The most QoS 1 publishes IoT Core lets a connection have unacknowledged.
pub const MAX_INFLIGHT: u16 = 100;

/// `[uplinks.NAME]`: one connection to a cloud broker and what it forwards.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UplinkConfig {
    /// The broker, as `host:port`, e.g.
    /// `"abc123-ats.iot.eu-west-1.amazonaws.com:8883"`. Required.
    pub endpoint: String,
    /// The MQTT client id; `{gateway}` stands for the gateway id (see
    /// [`UplinkConfig::client_id_for`]). At most 128 bytes once expanded; two
    /// uplinks to one endpoint must not share it. Default: `"{gateway}"`.
    #[serde(default = "defaults::client_id")]
    pub client_id: String,
    /// PEM file of the CA certificate(s) the broker's certificate must chain
    /// to, e.g. Amazon Root CA 1. Required unless `plaintext`.
    pub ca: Option<PathBuf>,
    /// PEM file of this gateway's client certificate (chain). Required unless
    /// `plaintext`.
    pub cert: Option<PathBuf>,
    /// PEM file of the client certificate's private key: PKCS#8, PKCS#1 (RSA)
    /// or SEC1 (EC). Required unless `plaintext`; should not be readable by
    /// other users.
    pub key: Option<PathBuf>,
    /// ALPN protocols offered in the TLS handshake: `["x-amzn-mqtt-ca"]` for
    /// IoT Core on port 443. Default: `[]` (none).
    #[serde(default)]
    pub alpn: Vec<String>,
    /// MQTT without TLS (for tests against a local broker only): `ca`, `cert`
    /// and `key` must then be absent. Otherwise TLS 1.2 or 1.3 with a client
    /// certificate. Default: `false`.
    #[serde(default)]
    pub plaintext: bool,
    /// The topic template batches are published to. Placeholders:
    /// `{gateway}`, `{device}`, `{source}`. At most 256 bytes and 7 slashes,
    /// not counting a Basic Ingest prefix `$aws/rules/RULE_NAME/`; no `+` or
    /// `#`. Default: `"dt/ferry/{gateway}/telemetry"`.
    #[serde(default = "defaults::topic")]
    pub topic: String,
    /// How batches are encoded. Default: `"json"`.
    #[serde(default)]
    pub encoding: Encoding,
    /// The largest payload published: 1KiB to 128KiB (IoT Core's limit).
    /// Batches are smaller on a slow link: about 2 s of its measured
    /// throughput, at least 5 KiB ([`crate::uplink::pace`]).
    /// Default: `"128KiB"`.
    #[serde(default = "defaults::max_batch_bytes")]
    pub max_batch_bytes: ByteSize,
    /// The most records in one batch, 1 to 100,000. Default: 500 with
    /// `encoding = "json"` (each element of the array is one record to a
    /// rule action in batch mode, and the Firehose action takes at most 500),
    /// no limit but `max_batch_bytes` with `"columnar"` (one object per batch).
    #[serde(default)]
    pub max_batch_records: Option<std::num::NonZeroUsize>,
    /// How long a partial batch waits for more records before it is sent.
    /// `"0s"`: at once when nothing is in flight (records stored while a
    /// publish is in flight wait for its PUBACK and share the next one).
    /// 0s to 1h. Default: `"1s"`.
    #[serde(with = "humantime_serde", default = "defaults::max_batch_age")]
    pub max_batch_age: Duration,
    /// Batches published and not yet acknowledged (QoS 1), at most. 1 to 100
    /// (IoT Core's limit). Default: `100`.
    #[serde(
        default = "defaults::max_inflight",
        deserialize_with = "defaults::deserialize_inflight"
    )]
    pub max_inflight: NonZeroU16,
    /// Publishes per second, at most (token bucket). IoT Core discards more
    /// than 100 per connection. Default: `100`.
    #[serde(default = "defaults::max_publishes_per_second")]
    pub max_publishes_per_second: NonZeroU32,
    /// Payload bytes per second, at most (token bucket); at least
    /// `max_batch_bytes`, at most 1TiB. IoT Core throttles above 512KiB/s per
    /// connection.
    /// Default: `"512KiB"`.
    #[serde(default = "defaults::max_bytes_per_second")]
    pub max_bytes_per_second: ByteSize,
    /// MQTT keep-alive: a PINGREQ goes out every `keep_alive`, and one still
    /// unanswered when the next is due ends the session (so an idle dead
    /// link is noticed within twice this). 5s to 1200s (IoT Core raises
    /// anything under 30s to 30s). Short values hurt slow links: the
    /// PINGRESP waits behind every batch in flight. Default: `"30s"`.
    #[serde(with = "humantime_serde", default = "defaults::keep_alive")]
    pub keep_alive: Duration,
    /// How long a TCP + TLS + MQTT connect may take. 10ms to 10m.
    /// Default: `"10s"`.
    #[serde(with = "humantime_serde", default = "defaults::connect_timeout")]
    pub connect_timeout: Duration,
    /// No PUBACK for this long while batches wait for one (counted from the
    /// later of the oldest unacknowledged publish and the last PUBACK, so a
    /// slow link that keeps acknowledging is not given up) means the link
    /// is dead: the session is dropped and reconnected, and unacknowledged
    /// batches are resent. A reading stored while the link is dead is
    /// published at once, so the dead link is noticed within this of it.
    /// Batches are sized to cross the link in about 2 s (see
    /// [`crate::uplink::pace`]); on a link too slow to carry even a 5 KiB
    /// batch within it, raise it. 10ms to 1h. Default: `"10s"`.
    #[serde(with = "humantime_serde", default = "defaults::puback_timeout")]
    pub puback_timeout: Duration,
    /// The first reconnect delay; each failure doubles it up to
    /// `reconnect_max`, with full jitter. 1ms to 1h. Default: `"1s"`.
    #[serde(with = "humantime_serde", default = "defaults::reconnect_min")]
    pub reconnect_min: Duration,
    /// The longest reconnect delay; at least `reconnect_min`, at most 1h.
    /// Default: `"2m"`.
    #[serde(with = "humantime_serde", default = "defaults::reconnect_max")]
    pub reconnect_max: Duration,
    /// How often the endpoint is probed (a plain TCP connect to its host and
    /// port, closed at once; no TLS, no MQTT) while the uplink waits to
    /// reconnect. A connect starts only once a probe answers, and a probe
    /// that answers after probes failed (the link is back) cuts the backoff
    /// short: the connect follows within a quarter of this, at least 1s
    /// after the last. Each interval is drawn between half and all of this.
    /// `"0s"` (no probes: the backoff alone decides) or 100ms to 1m.
    /// Default: `"1s"`.
    #[serde(with = "humantime_serde", default = "defaults::probe_interval")]
    pub probe_interval: Duration,
    /// Records older than this (by their timestamp) when their turn to be
    /// sent comes are not sent: they stay in the store (queries, routes and
    /// other uplinks still have them), are counted
    /// (`ferry_uplink_records_expired_total`), and the cursor moves past
    /// them. After a long outage the cloud gets what is still worth having
    /// and the link is not spent on the rest. 1s to 10 years. Default: none
    /// (everything is sent).
    #[serde(with = "humantime_serde", default)]
    pub max_send_age: Option<Duration>,
    /// The names of the sources whose records this uplink forwards; each must
    /// be a configured source. Default: `[]` (all sources).
    #[serde(default)]
    pub sources: Vec<String>,
    /// The route (`[routes.NAME]`) whose output this uplink sends instead
    /// of the stored records. Default: none (the stored records).
    #[serde(default)]
    pub route: Option<String>,
}

impl UplinkConfig {
    /// An uplink to `endpoint` with every other key at its default (TLS on,
    /// but no `ca`, `cert` or `key` yet).
    pub fn new(endpoint: impl Into<String>) -> UplinkConfig {
        UplinkConfig {
            endpoint: endpoint.into(),
            client_id: defaults::client_id(),
            ca: None,
            cert: None,
            key: None,
            alpn: Vec::new(),
            plaintext: false,
            topic: defaults::topic(),
            encoding: Encoding::default(),
            max_batch_bytes: defaults::max_batch_bytes(),
            max_batch_records: None,
            max_batch_age: defaults::max_batch_age(),
            max_inflight: defaults::max_inflight(),
            max_publishes_per_second: defaults::max_publishes_per_second(),
            max_bytes_per_second: defaults::max_bytes_per_second(),
            keep_alive: defaults::keep_alive(),
            connect_timeout: defaults::connect_timeout(),
            puback_timeout: defaults::puback_timeout(),
            reconnect_min: defaults::reconnect_min(),
            reconnect_max: defaults::reconnect_max(),
            probe_interval: defaults::probe_interval(),
            max_send_age: None,
            sources: Vec::new(),
            route: None,
        }
    }

    /// The most records in one batch: `max_batch_records`, or its default
    /// for the encoding (`usize::MAX`: no limit but the bytes).
    pub fn batch_records(&self) -> usize {
        match (self.max_batch_records, self.encoding) {
            (Some(n), _) => n.get(),
            (None, Encoding::Json) => JSON_BATCH_RECORDS,
            (None, Encoding::Columnar) => usize::MAX,
        }
    }

    /// The client id, with `{gateway}` replaced by `gateway`.
    pub fn client_id_for(&self, gateway: &str) -> String {
        topic::expand_gateway(&self.client_id, gateway)
    }
}

pub use super::batch::Encoding;

mod defaults {
    use super::*;

    pub fn client_id() -> String {
        "{gateway}".to_owned()
    }
    pub fn topic() -> String {
        "dt/ferry/{gateway}/telemetry".to_owned()
    }
    pub fn max_batch_bytes() -> ByteSize {
        ByteSize::kib(128)
    }
    pub fn max_batch_age() -> Duration {
        Duration::from_secs(1)
    }
    pub fn max_inflight() -> NonZeroU16 {
        NonZeroU16::new(MAX_INFLIGHT).expect("nonzero")
    }
    /// `max_inflight`, with its range checked: zero and more than IoT Core
    /// takes are the same kind of mistake, and get the same message.
    pub fn deserialize_inflight<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<NonZeroU16, D::Error> {
        let n = i64::deserialize(d)?;
        u16::try_from(n)
            .ok()
            .filter(|n| *n <= MAX_INFLIGHT)
            .and_then(NonZeroU16::new)
            .ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "must be between 1 and {MAX_INFLIGHT} (the IoT Core limit), got {n}"
                ))
            })
    }
    pub fn max_publishes_per_second() -> NonZeroU32 {
        NonZeroU32::new(100).expect("nonzero")
    }
    pub fn max_bytes_per_second() -> ByteSize {
        ByteSize::kib(512)
    }
    pub fn keep_alive() -> Duration {
        Duration::from_secs(30)
    }
    pub fn connect_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub fn puback_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub fn reconnect_min() -> Duration {
        Duration::from_secs(1)
    }
    pub fn reconnect_max() -> Duration {
        Duration::from_secs(120)
    }
    pub fn probe_interval() -> Duration {
        Duration::from_secs(1)
    }
}
