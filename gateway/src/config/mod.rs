//! Ferry's configuration: one TOML file, checked whole before anything runs.
//!
//! - Strict: every table denies unknown keys; durations are written like
//!   `"10ms"`, sizes like `"128KiB"`; each field's doc comment states its
//!   default (and `config/default.toml` shows them all).
//! - Every problem at once: a syntax error stops at itself, but otherwise each
//!   section, source and uplink is deserialized and checked on its own, and
//!   every problem is reported with its key path and line
//!   ([`ConfigErrors`]).
//! - Checked against the machine too, as `ferry run` would meet it at start
//!   (`check.rs`): the TLS files an uplink names must load (a private key
//!   readable by every user is a warning), `gateway.data_dir` must be a
//!   directory or creatable, and no two listeners may share an address.
//!   Relative paths are relative to the working directory.
//! - Bounded: the file itself, and every file it names, is read only if it
//!   is a regular file within a size limit ([`ferry_core::files`]); a
//!   value quoted in a message is an escaped excerpt
//!   ([`ferry_core::text`]).
//!
//! Shape: `[gateway]`, `[store]`, `[sources.NAME]` (at least one), optional
//! `[uplinks.NAME]`, `[metrics]`, `[[pipeline]]`, `[devices.NAME]`,
//! `[routes.NAME]`, `[api]`, `[fleet]`.

mod budget;
mod check;
mod error;
mod gateway;
mod load;
mod locate;
mod metrics;
mod source;
mod uplink_check;

use std::collections::BTreeMap;
use std::path::Path;

pub use crate::api::config::ApiConfig;
pub use crate::listen::{ListenerLimits, HTTP_REFUSING};
pub use crate::pipeline::{Action, PipelineConfig, Step};
pub use crate::route::{Aggregate, DeadbandConfig, RouteConfig, WindowConfig};
pub use crate::store::config::StoreConfig;
pub use crate::uplink::config::topic::{MAX_TOPIC_BYTES, MAX_TOPIC_SLASHES, TOPIC_PLACEHOLDERS};
pub use crate::uplink::config::{
    Encoding, UplinkConfig, MAX_BATCH_BYTES, MAX_INFLIGHT, MIN_BATCH_BYTES,
};
pub use budget::{FD_BUDGET, FD_RESERVE};
pub use error::{ConfigError, ConfigErrors, ConfigWarnings, LoadError};
pub use gateway::{GatewayConfig, KeyFilePolicy, LogLevel};
pub use metrics::MetricsConfig;
pub use source::{SourceConfig, SOURCE_TYPES};

/// The default config, embedded in the binary: what `ferry run` uses without
/// `--config` and what `ferry print-config` prints.
pub const DEFAULT_TOML: &str = include_str!("../../../config/default.toml");

/// The largest config file Ferry reads: 1 MiB
/// ([`ferry_core::files::MAX_FILE_BYTES`]; the default config with every
/// key explained is about 12 KiB).
pub const MAX_CONFIG_BYTES: u64 = ferry_core::files::MAX_FILE_BYTES;

/// How the embedded default config is named in messages.
pub const DEFAULT_NAME: &str = "<embedded default config>";

/// A whole, checked Ferry configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// `[gateway]`: identity, data directory, log level.
    pub gateway: GatewayConfig,
    /// `[store]`: group commit and cache of the durable log.
    pub store: StoreConfig,
    /// `[sources.NAME]`, by name: at least one.
    pub sources: BTreeMap<String, SourceConfig>,
    /// `[uplinks.NAME]`, by name: none means data is only kept locally.
    pub uplinks: BTreeMap<String, UplinkConfig>,
    /// `[metrics]`: the Prometheus endpoint.
    pub metrics: MetricsConfig,
    /// `[[pipeline]]` steps applied before storage, and `[devices.NAME]`.
    pub pipeline: PipelineConfig,
    /// `[routes.NAME]`, by name: what routed uplinks send.
    pub routes: BTreeMap<String, RouteConfig>,
    /// `[api]`: the local query API and status page.
    pub api: ApiConfig,
    /// `[fleet]`: configuration through the device shadow; none without it.
    pub fleet: Option<crate::fleet::FleetConfig>,
}

impl Config {
    /// Parses and checks `text`; `file` names it in messages. Warnings are
    /// dropped: see [`Config::from_toml_with_warnings`].
    pub fn from_toml(text: &str, file: &Path) -> Result<Config, ConfigErrors> {
        Config::from_toml_with_warnings(text, file).map(|(config, _)| config)
    }

    /// Parses and checks `text`, and returns what is worth a warning.
    pub fn from_toml_with_warnings(
        text: &str,
        file: &Path,
    ) -> Result<(Config, ConfigWarnings), ConfigErrors> {
        load::parse(text, file)
    }

    /// Reads, parses and checks the file at `path`.
    pub fn load(path: &Path) -> Result<Config, LoadError> {
        Config::load_with_warnings(path).map(|(config, _)| config)
    }

    /// Reads, parses and checks the file at `path`, and returns what is worth
    /// a warning. What `ferry validate`, `ferry run` and a reload (SIGHUP)
    /// all call.
    ///
    /// Only a regular file (symlinks followed, the type taken from the
    /// opened file) of at most [`MAX_CONFIG_BYTES`] is read: a FIFO, a
    /// device such as `/dev/zero`, a directory or a larger file is refused
    /// at once as an invalid config (exit 64), without reading it. A file
    /// that cannot be opened (missing, not permitted) is
    /// [`LoadError::Unreadable`] (exit 66).
    pub fn load_with_warnings(path: &Path) -> Result<(Config, ConfigWarnings), LoadError> {
        use ferry_core::files::{read_text, FileError};
        let text = match read_text(path, MAX_CONFIG_BYTES) {
            Ok(text) => text,
            Err(FileError::Io(source)) => {
                return Err(LoadError::Unreadable {
                    path: path.to_owned(),
                    source,
                })
            }
            Err(refused) => {
                return Err(LoadError::Invalid(ConfigErrors {
                    file: path.to_owned(),
                    errors: vec![ConfigError {
                        line: None,
                        key: String::new(),
                        message: refused.to_string(),
                    }],
                    warnings: Vec::new(),
                }))
            }
        };
        Config::from_toml_with_warnings(&text, path).map_err(LoadError::Invalid)
    }

    /// The embedded default config ([`DEFAULT_TOML`]), parsed.
    pub fn default_embedded() -> Config {
        match Config::from_toml(DEFAULT_TOML, Path::new(DEFAULT_NAME)) {
            Ok(config) => config,
            // The tests parse it: a broken default never ships.
            Err(e) => unreachable!("the embedded default config is invalid:\n{e}"),
        }
    }
}
