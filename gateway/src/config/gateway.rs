//! `[gateway]`: who this gateway is and where it keeps its data.

use std::path::PathBuf;

use serde::Deserialize;

use ferry_core::text::excerpt;

use ferry_core::report::{KeyPath, Report};

/// `[gateway]`: the identity of this machine and where its data lives.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// This gateway's name: the default MQTT client id at the cloud broker and
    /// `{gateway}` in uplink topics. 1 to 128 bytes, no whitespace, none of
    /// `/ + # { }`, not starting with `$`. Default: `"ferry"`.
    pub id: String,
    /// The directory holding the store (created if missing). A relative path
    /// is relative to the working directory. Checked when the config is
    /// loaded: an existing path must be a directory (not a file, a device
    /// or a dangling symlink), a missing one must be creatable (its nearest
    /// existing parent a directory), and it must not hold a NUL byte.
    /// Default: `"./ferry-data"`.
    pub data_dir: PathBuf,
    /// The least severe log events written, unless `RUST_LOG` is set.
    /// Default: `"info"`.
    pub log_level: LogLevel,
    /// What to do when a private key (an uplink's `key`, a broker's
    /// `tls.key`) or a broker's `password_file` is readable by every user:
    /// `"warn"` (start anyway) or `"refuse"` (a config error).
    /// Default: `"warn"`.
    pub insecure_key_files: KeyFilePolicy,
}

/// `gateway.insecure_key_files`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum KeyFilePolicy {
    #[default]
    Warn,
    Refuse,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            id: "ferry".to_owned(),
            data_dir: PathBuf::from("./ferry-data"),
            log_level: LogLevel::Info,
            insecure_key_files: KeyFilePolicy::Warn,
        }
    }
}

/// A log level, least to most verbose.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    #[default]
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    /// The level as `tracing`'s filters spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

impl GatewayConfig {
    pub(crate) fn check(&self, at: &KeyPath, report: &mut Report) {
        if let Err(why) = check_id(&self.id) {
            report.error(
                at.key("id"),
                format!("invalid gateway id {}: {why}", excerpt(&self.id)),
            );
        }
        super::check::check_data_dir(at.key("data_dir"), &self.data_dir, report);
    }
}

/// Why `id` cannot be a gateway id (an MQTT client id and a topic level).
fn check_id(id: &str) -> Result<(), &'static str> {
    if id.is_empty() {
        return Err("must not be empty");
    }
    if id.len() > 128 {
        return Err("must be at most 128 bytes (the IoT Core client id limit)");
    }
    if id.starts_with('$') {
        return Err("must not start with '$'");
    }
    if id
        .chars()
        .any(|c| matches!(c, '/' | '+' | '#' | '{' | '}') || c.is_whitespace() || c.is_control())
    {
        return Err("must not contain whitespace or any of / + # { }");
    }
    Ok(())
}
