//! The checks of one `[uplinks.NAME]` beyond its types: ranges, the endpoint,
//! the TLS files, the topic and client id templates, and the sources named.

use ferry_core::hostport::HostPort;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use ferry_core::files::MAX_FILE_BYTES;

use super::gateway::KeyFilePolicy;
use crate::uplink::config::topic::{check_client_id, check_topic};
use crate::uplink::config::{
    UplinkConfig, ENDPOINT_EXAMPLE, MAX_BATCH_BYTES, MAX_BATCH_RECORDS, MIN_BATCH_BYTES,
};
use ferry_core::report::{fmt_bytes, fmt_duration, KeyPath, Report};
use ferry_core::text::escape_to;

/// The largest `max_bytes_per_second`: 1 TiB.
const MAX_BYTES_PER_SECOND: u64 = 1 << 40;

/// What an uplink's checks need to know about the rest of the config.
pub(crate) struct UplinkContext<'a> {
    /// The gateway id (`{gateway}`).
    pub(crate) gateway: &'a str,
    /// The names of all sources in the file, valid or not.
    pub(crate) sources: &'a BTreeSet<String>,
    /// `gateway.insecure_key_files`.
    pub(crate) key_files: KeyFilePolicy,
}

impl UplinkConfig {
    /// Checks this uplink.
    pub(crate) fn check(&self, at: &KeyPath, cx: &UplinkContext<'_>, report: &mut Report) {
        if let Err(why) = check_endpoint(&self.endpoint) {
            report.error(at.key("endpoint"), why);
        }
        if let Err(why) = check_client_id(&self.client_id, cx.gateway) {
            report.error(at.key("client_id"), why);
        }
        self.check_tls(at, cx, report);
        self.check_sources(at, cx, report);
        let longest_source = if self.sources.is_empty() {
            cx.sources
                .iter()
                .map(String::as_str)
                .max_by_key(|s| s.len())
        } else {
            self.sources
                .iter()
                .map(String::as_str)
                .max_by_key(|s| s.len())
        };
        for why in check_topic(&self.topic, cx.gateway, longest_source.unwrap_or("")) {
            report.error(at.key("topic"), why);
        }
        self.check_limits(at, report);
        self.check_iot_core(at, report);
    }

    fn check_tls(&self, at: &KeyPath, cx: &UplinkContext<'_>, report: &mut Report) {
        if report.is_suppressed(&at.key("plaintext")) {
            return; // Invalid: whether TLS is meant is unknown.
        }
        let files = [("ca", &self.ca), ("cert", &self.cert), ("key", &self.key)];
        let mut readable = true;
        for (name, file) in files {
            match (self.plaintext, file) {
                (false, None) => report.error(
                    at.key(name),
                    format!("missing field `{name}` (required unless plaintext = true)"),
                ),
                (false, Some(file)) => {
                    let private = (name == "key").then_some(("private key", cx.key_files));
                    readable &= check_file(report, at.key(name), file, MAX_FILE_BYTES, private);
                }
                (true, Some(_)) => report.error(
                    at.key(name),
                    "is set but plaintext = true turns TLS off; remove one of them",
                ),
                (true, None) => {}
            }
        }
        if readable && !self.plaintext {
            // As `ferry run` loads them: PEM that parses, a key that fits.
            super::check::check_uplink_tls(at, self, report);
        }
        for (i, p) in self.alpn.iter().enumerate() {
            if p.is_empty() || p.len() > 255 {
                report.error(at.key("alpn").index(i), "must be 1 to 255 bytes long");
            }
        }
        if self.plaintext && !self.alpn.is_empty() {
            report.error(at.key("alpn"), "ALPN needs TLS but plaintext = true");
        }
    }

    fn check_sources(&self, at: &KeyPath, cx: &UplinkContext<'_>, report: &mut Report) {
        let mut seen = BTreeSet::new();
        for (i, name) in self.sources.iter().enumerate() {
            if !cx.sources.contains(name) {
                let known: Vec<&str> = cx.sources.iter().map(String::as_str).collect();
                report.error(
                    at.key("sources").index(i),
                    format!("no source named {name:?} (sources: {})", known.join(", ")),
                );
            } else if !seen.insert(name) {
                report.error(
                    at.key("sources").index(i),
                    format!("{name:?} is listed twice"),
                );
            }
        }
    }

    fn check_limits(&self, at: &KeyPath, report: &mut Report) {
        let batch = self.max_batch_bytes.as_u64();
        if batch > MAX_BATCH_BYTES {
            report.error(
                at.key("max_batch_bytes"),
                format!(
                    "must be at most 128KiB (the IoT Core payload limit), got {}",
                    fmt_bytes(batch)
                ),
            );
        } else if batch < MIN_BATCH_BYTES {
            report.error(
                at.key("max_batch_bytes"),
                format!("must be at least 1KiB, got {}", fmt_bytes(batch)),
            );
        }
        // Checks across keys only compare values that are valid themselves.
        let valid =
            |report: &Report, keys: &[&str]| keys.iter().all(|k| !report.is_suppressed(&at.key(k)));
        let rate = self.max_bytes_per_second.as_u64();
        report.size_at_most(at.key("max_bytes_per_second"), rate, MAX_BYTES_PER_SECOND);
        let batch_ok = (MIN_BATCH_BYTES..=MAX_BATCH_BYTES).contains(&batch);
        if batch_ok && rate < batch && valid(report, &["max_batch_bytes"]) {
            report.error(
                at.key("max_bytes_per_second"),
                format!(
                    "must be at least max_batch_bytes ({}), or no batch could ever be sent, got {}",
                    fmt_bytes(batch),
                    fmt_bytes(rate)
                ),
            );
        }
        let (ms, s) = (Duration::from_millis, Duration::from_secs);
        report.duration_in(at.key("max_batch_age"), self.max_batch_age, s(0), s(3600));
        if let Some(n) = self.max_batch_records {
            report.int_in(
                at.key("max_batch_records"),
                n.get() as u64,
                1,
                MAX_BATCH_RECORDS as u64,
            );
        }
        report.duration_in(at.key("keep_alive"), self.keep_alive, s(5), s(1200));
        report.duration_in(
            at.key("connect_timeout"),
            self.connect_timeout,
            ms(10),
            s(600),
        );
        report.duration_in(
            at.key("puback_timeout"),
            self.puback_timeout,
            ms(10),
            s(3600),
        );
        report.duration_in(at.key("reconnect_min"), self.reconnect_min, ms(1), s(3600));
        report.duration_in(at.key("reconnect_max"), self.reconnect_max, ms(1), s(3600));
        if self.reconnect_max < self.reconnect_min && valid(report, &["reconnect_min"]) {
            report.error(at.key("reconnect_max"), "must be at least reconnect_min");
        }
        if let Some(age) = self.max_send_age {
            report.duration_in(at.key("max_send_age"), age, s(1), s(315_576_000));
        }
        let probe = self.probe_interval;
        if !probe.is_zero() && !(ms(100)..=s(60)).contains(&probe) {
            report.error(
                at.key("probe_interval"),
                format!(
                    "must be 0s (no probes) or between 100ms and 1m, got {}",
                    fmt_duration(probe)
                ),
            );
        }
    }

    /// Warnings about settings IoT Core is known to punish.
    fn check_iot_core(&self, at: &KeyPath, report: &mut Report) {
        let Ok(HostPort { host, port }) = HostPort::parse(&self.endpoint, None, ENDPOINT_EXAMPLE)
        else {
            return;
        };
        if !host.to_ascii_lowercase().ends_with(".amazonaws.com") {
            return;
        }
        if self.max_publishes_per_second.get() > 100 {
            report.warn(
                at.key("max_publishes_per_second"),
                "IoT Core discards publishes beyond 100 per second per connection",
            );
        }
        if self.max_bytes_per_second.as_u64() > 512 * 1024 {
            report.warn(
                at.key("max_bytes_per_second"),
                "IoT Core throttles a connection beyond 512KiB per second",
            );
        }
        if self.reconnect_min < Duration::from_secs(1) {
            report.warn(
                at.key("reconnect_min"),
                "IoT Core allows one CONNECT per second per client id",
            );
        }
        if port == 443 && !self.alpn.iter().any(|p| p == "x-amzn-mqtt-ca") && !self.plaintext {
            report.warn(
                at.key("alpn"),
                "MQTT on port 443 at IoT Core needs alpn = [\"x-amzn-mqtt-ca\"]",
            );
        }
    }
}

/// Checks `host:port` (a DNS name, an IPv4 address, or `[IPv6]`).
fn check_endpoint(endpoint: &str) -> Result<(), String> {
    HostPort::parse(endpoint, None, ENDPOINT_EXAMPLE)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Checks that a file named by `key` can be read as Ferry reads it (a
/// regular file, symlinks followed, of at most `limit` bytes; see
/// [`ferry_core::files`]); for a `private` file (`what`: a private key,
/// a password file) readable by every user, warns or errs as the policy
/// says. Returns whether the file can be read.
pub(crate) fn check_file(
    report: &mut Report,
    key: KeyPath,
    file: &Path,
    limit: u64,
    private: Option<(&str, KeyFilePolicy)>,
) -> bool {
    use ferry_core::files::{open_regular, FileError};
    let shown = file.display().to_string();
    let shown = escape_to(&shown, 256);
    let meta = match open_regular(file) {
        Ok((_, meta)) => meta,
        Err(FileError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            report.error(key, format!("file not found: {shown}"));
            return false;
        }
        Err(e) => {
            report.error(key, format!("cannot read {shown}: {e}"));
            return false;
        }
    };
    if meta.len() > limit {
        let e = FileError::TooLarge {
            limit,
            size: meta.len(),
        };
        report.error(key, format!("cannot read {shown}: {e}"));
        return false;
    }
    #[cfg(unix)]
    if let Some((what, policy)) = private {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o004 != 0 {
            let message =
                format!("{what} {shown} is readable by every user (mode {mode:o}); chmod 600 it");
            match policy {
                KeyFilePolicy::Warn => report.warn(key, message),
                KeyFilePolicy::Refuse => report.error(
                    key,
                    format!("{message} (gateway.insecure_key_files = \"refuse\")"),
                ),
            }
        }
    }
    #[cfg(not(unix))]
    let _ = private;
    true
}

#[cfg(test)]
mod tests {
    use super::check_endpoint;

    #[test]
    fn endpoints() {
        assert!(check_endpoint("abc-ats.iot.eu-west-1.amazonaws.com:8883").is_ok());
        assert!(check_endpoint("127.0.0.1:1883").is_ok());
        assert!(check_endpoint("[::1]:8883").is_ok());
        assert!(check_endpoint("localhost").is_err());
        assert!(check_endpoint("mqtts://host:8883").is_err());
        assert!(check_endpoint("host:0").is_err());
        assert!(check_endpoint(":8883").is_err());
        assert!(check_endpoint("::1:8883").is_err());
    }
}
