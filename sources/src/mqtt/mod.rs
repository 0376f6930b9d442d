//! MQTT sources: devices that publish JSON readings over MQTT.
//!
//! Two ways in, one decoding path:
//!
//! - [`run_broker`] (feature `embedded-broker`, on by default): Ferry runs an
//!   embedded MQTT broker that local devices publish to: its device front
//!   acknowledges each publish only after it is committed (zero loss), and
//!   rumqttd serves what devices subscribe to.
//! - [`run_subscriber`]: Ferry subscribes to an existing broker (mosquitto)
//!   with a persistent session and acknowledges each message only after it is
//!   committed: zero loss.
//!
//! Both map a topic to a device through a [`TopicTemplate`]
//! (`sensors/{device}/telemetry`) and decode the payload (a flat JSON object of
//! fields, see [`decode_payload`]) into a [`Record`](ferry_core::record::Record);
//! what cannot be decoded becomes a [`DeadLetter`](ferry_core::record::DeadLetter)
//! whose `kind` is one of the [`Reject`] kinds.

#[cfg(feature = "embedded-broker")]
mod broker;
mod broker_security;
mod config;
mod decode;
mod error;
#[cfg(feature = "embedded-broker")]
mod front;
mod log;
mod payload;
mod rfc3339;
mod subscribe;
mod topic;

#[cfg(feature = "embedded-broker")]
pub use broker::{run_broker, run_broker_observed, DIRECT_PENDING};
pub use broker_security::{Acl, BrokerTlsConfig, DeviceFront};
pub use config::{BrokerSourceConfig, SubscribeSourceConfig};
pub use decode::MessageDecoder;
pub use error::SourceError;
#[cfg(feature = "embedded-broker")]
pub use front::{
    check_files as check_broker_files, BrokerEvent, BrokerObserver, Denied, Limit, LoginError,
    NoBrokerObserver, Passwords, REFUSING as FRONT_REFUSING,
};
pub use payload::{decode_payload, Decoded, PayloadOptions, Reject};
pub use subscribe::{run_subscriber, SHUTDOWN_GRACE as SUBSCRIBER_SHUTDOWN_GRACE};
pub use topic::{TemplateError, TopicMatch, TopicTemplate};
