//! Ferry's sources: the parts that talk to devices and turn what they say
//! into [`record::Record`]s for the durable ingest.
//!
//! - [`mqtt`]: devices that publish MQTT, either to Ferry's embedded broker or
//!   to an existing broker that Ferry subscribes to.

pub mod mqtt;
pub mod record;
pub mod sink;
