//! What is wrong with a config file, and where.

use std::fmt;
use std::path::{Path, PathBuf};

/// One problem in a config file (or, among warnings, one thing worth fixing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The 1-based line it was found on, when it can be found.
    pub line: Option<usize>,
    /// The dotted path of the key, e.g. `uplinks.iot_core.topic` or
    /// `sources.local.topics[1]`; empty for a TOML syntax error.
    pub key: String,
    /// What is wrong, on one line.
    pub message: String,
}

impl ConfigError {
    fn write(&self, f: &mut fmt::Formatter<'_>, label: &str, file: &Path) -> fmt::Result {
        write!(f, "ferry: config {label}: {}", file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found in one config file. Displays one problem per line:
/// `ferry: config error: FILE:LINE: KEY.PATH: message`, then any warnings as
/// `ferry: config warning: ...`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors {
    /// The file as it was named to Ferry.
    pub file: PathBuf,
    /// The problems, in the order of the file (problems without a line last).
    pub errors: Vec<ConfigError>,
    /// Things found alongside that are not fatal.
    pub warnings: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (label, list) in [("error", &self.errors), ("warning", &self.warnings)] {
            for e in list {
                if !first {
                    f.write_str("\n")?;
                }
                first = false;
                e.write(f, label, &self.file)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Warnings about a config that is valid. Displays one per line as
/// `ferry: config warning: FILE:LINE: KEY.PATH: message`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigWarnings {
    /// The file as it was named to Ferry.
    pub file: PathBuf,
    /// The warnings, in the order of the file.
    pub warnings: Vec<ConfigError>,
}

impl fmt::Display for ConfigWarnings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, w) in self.warnings.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            w.write(f, "warning", &self.file)?;
        }
        Ok(())
    }
}

/// Why [`Config::load`](super::Config::load) failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read at all.
    #[error("ferry: config error: {}: cannot read: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file was read but is not a valid config.
    #[error("{0}")]
    Invalid(ConfigErrors),
}
