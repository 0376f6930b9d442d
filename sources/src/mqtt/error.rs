//! Why an MQTT source stopped.

use std::io;
use std::net::SocketAddr;

use thiserror::Error;

/// A source's fatal error. Bad messages are not errors (they become dead
/// letters) and a lost connection to an external broker is not one either
/// (the subscriber reconnects); these end the source.
#[derive(Debug, Error)]
pub enum SourceError {
    /// The configuration is invalid; every problem is listed.
    #[error("invalid configuration: {}", .0.join("; "))]
    Config(Vec<String>),
    /// The embedded broker cannot listen on its address.
    #[error("embedded MQTT broker cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// The embedded broker failed to start or stopped on its own.
    #[error("embedded MQTT broker on {addr}: {reason}")]
    Broker { addr: SocketAddr, reason: String },
    /// Ingest has shut down: nothing more can be stored.
    #[error("ingest is shut down")]
    SinkClosed,
}
