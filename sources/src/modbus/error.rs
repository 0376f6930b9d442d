//! Why a Modbus source stopped.

use thiserror::Error;

/// A Modbus source's fatal error. Devices that fail are not errors (they are
/// backed off and retried forever); these end the source.
#[derive(Debug, Error)]
pub enum ModbusError {
    /// The configuration is invalid; every problem is listed.
    #[error("invalid configuration: {}", .0.join("; "))]
    Config(Vec<String>),
    /// Ingest has shut down: nothing more can be stored.
    #[error("ingest is shut down")]
    SinkClosed,
}
