//! From an `[uplinks.NAME]` table to the settings an uplink runs with.

use ferry_core::hostport::HostPort;
use std::time::Duration;

use anyhow::Context;
use tracing::warn;

use super::UplinkConfig;
use crate::store::Stream;
use crate::uplink::batch::Topic;
use crate::uplink::Settings;

/// How long a stopping uplink waits for the PUBACKs of what it has in flight
/// before it gives up on them (they are sent again from its cursor at the
/// next start: at least once).
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Records an uplink reads from the store at a time to fill its batches: a
/// window of 2,048 seed-format records is about 150 KiB of memory, and fills
/// more than one batch of the largest size IoT Core accepts.
pub const WINDOW_RECORDS: usize = 2048;

impl Settings {
    /// The settings of the uplink `name` of gateway `gateway`, with its TLS
    /// material loaded; an error names the key at fault.
    pub fn from_config(name: &str, u: &UplinkConfig, gateway: &str) -> anyhow::Result<Settings> {
        let HostPort { host, port } = HostPort::parse(&u.endpoint, None, super::ENDPOINT_EXAMPLE)
            .with_context(|| format!("endpoint `{}`", u.endpoint))?;
        let tls = if u.plaintext {
            warn!(
                uplink = name,
                "plaintext MQTT: for tests only, never toward the cloud"
            );
            None
        } else {
            let (Some(ca), Some(cert), Some(key)) = (&u.ca, &u.cert, &u.key) else {
                anyhow::bail!("ca, cert and key are required unless plaintext = true");
            };
            Some(crate::uplink::tls::client_config(ca, cert, key, &u.alpn)?)
        };
        Ok(Settings {
            name: name.to_owned(),
            gateway: gateway.to_owned(),
            client_id: u.client_id_for(gateway),
            host,
            port,
            tls,
            topic: Topic::parse(&u.topic, gateway).map_err(anyhow::Error::msg)?,
            encoding: u.encoding,
            max_batch_bytes: u.max_batch_bytes.as_u64() as usize,
            max_batch_records: u.batch_records(),
            max_batch_age: u.max_batch_age,
            max_inflight: usize::from(u.max_inflight.get()),
            publishes_per_second: u.max_publishes_per_second.get(),
            bytes_per_second: u.max_bytes_per_second.as_u64(),
            keep_alive: u.keep_alive,
            connect_timeout: u.connect_timeout,
            puback_timeout: u.puback_timeout,
            reconnect_min: u.reconnect_min,
            reconnect_max: u.reconnect_max,
            probe_interval: u.probe_interval,
            max_send_age: u.max_send_age,
            drain_timeout: DRAIN_TIMEOUT,
            sources: u.sources.clone(),
            window_records: WINDOW_RECORDS,
            stream: match &u.route {
                Some(r) => Stream::Route(r.as_str().into()),
                None => Stream::Raw,
            },
            control: None,
        })
    }
}
