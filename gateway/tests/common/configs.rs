//! Gateway configs for the end-to-end tests: an embedded broker or a
//! subscriber of a local broker, with an uplink to a TLS mosquitto.

use std::path::Path;

/// A gateway config with an embedded broker on `broker` and an uplink to a
/// TLS mosquitto at `cloud`.
pub fn broker_config(
    data: &Path,
    broker: std::net::SocketAddr,
    cloud: std::net::SocketAddr,
    pki: &ferry_testkit::Pki,
    metrics: std::net::SocketAddr,
) -> String {
    format!(
        r#"
[gateway]
id = "{id}"
data_dir = "{data}"

[sources.local]
type = "mqtt_broker"
listen = "{broker}"
topics = ["sensors/{{device}}/telemetry"]

{uplink}

[metrics]
listen = "{metrics}"
"#,
        id = pki.client_id,
        data = data.display(),
        uplink = uplink_section(cloud, pki),
    )
}

/// A gateway config with a subscriber of the local broker `local` and an
/// uplink to a TLS mosquitto at `cloud`.
pub fn subscribe_config(
    data: &Path,
    local: std::net::SocketAddr,
    cloud: std::net::SocketAddr,
    pki: &ferry_testkit::Pki,
    metrics: std::net::SocketAddr,
) -> String {
    format!(
        r#"
[gateway]
id = "{id}"
data_dir = "{data}"

[sources.plant]
type = "mqtt_subscribe"
broker = "{local}"
topics = ["sensors/{{device}}/telemetry"]
reconnect_min = "50ms"
reconnect_max = "500ms"

{uplink}

[metrics]
listen = "{metrics}"
"#,
        id = pki.client_id,
        data = data.display(),
        uplink = uplink_section(cloud, pki),
    )
}

pub fn uplink_section(cloud: std::net::SocketAddr, pki: &ferry_testkit::Pki) -> String {
    format!(
        r#"
[uplinks.cloud]
endpoint = "{cloud}"
ca = "{ca}"
cert = "{cert}"
key = "{key}"
topic = "dt/ferry/{{gateway}}/telemetry"
max_batch_age = "100ms"
reconnect_min = "100ms"
reconnect_max = "1s"
"#,
        ca = pki.ca.display(),
        cert = pki.client.cert.display(),
        key = pki.client.key.display(),
    )
}
