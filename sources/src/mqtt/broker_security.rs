//! The embedded broker's security settings: TLS for devices, who may
//! connect, and which topics each device may publish to.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `tls = { cert = ..., key = ..., client_ca = ... }`: devices connect to the
/// embedded broker over TLS (1.2 or 1.3) instead of plain TCP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerTlsConfig {
    /// The broker's certificate chain (PEM), its own certificate first.
    /// Required.
    pub cert: PathBuf,
    /// The broker's private key (PEM: PKCS#8, PKCS#1 or SEC1); should not be
    /// readable by other users (see `gateway.insecure_key_files`). Required.
    pub key: PathBuf,
    /// CA certificates (PEM) that sign device certificates. When set, every
    /// device must present a certificate signed by one of them (mutual TLS);
    /// a device without one fails the handshake. Default: none (devices need
    /// no certificate).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

/// `acl`: which name a device's `{device}` topic level must equal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Acl {
    /// Any client may publish to any topic (what it publishes must still
    /// match a topic template to be stored).
    #[default]
    None,
    /// A client may publish only to topics whose `{device}` level is its
    /// username (needs `password_file`, so that the username is proven).
    Username,
    /// A client may publish only to topics whose `{device}` level is its
    /// client id.
    ClientId,
}

impl Acl {
    pub fn as_str(self) -> &'static str {
        match self {
            Acl::None => "none",
            Acl::Username => "username",
            Acl::ClientId => "client_id",
        }
    }
}

/// `device_front`: whether devices reach the broker through Ferry's device
/// front (see the `front` module) when no setting needs it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceFront {
    /// Only when `tls`, `password_file` or `acl` needs it; otherwise devices
    /// connect to the broker directly: about a fifth less CPU per message,
    /// but no back-pressure (ingest more than `buffer` behind loses the
    /// oldest acknowledged messages), no CONNACK for clients over
    /// `max_connections` and no count of connected clients.
    Auto,
    /// Always: devices are slowed down while ingest is behind, clients over
    /// `max_connections` are refused with CONNACK 3 and counted, and
    /// `ferry_source_connections` counts the clients.
    #[default]
    Always,
}
