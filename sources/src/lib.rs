//! Ferry's sources: the parts that talk to devices and turn what they say
//! into [`ferry_core::record::Record`]s for the durable ingest.
//!
//! - [`mqtt`]: devices that publish MQTT, either to Ferry's embedded broker or
//!   to an existing broker that Ferry subscribes to.
//! - [`accept`]: the back-off every accept loop takes when `accept` fails.
//! - [`modbus`]: devices polled over Modbus TCP or RTU (RS-485).

pub mod accept;
pub mod modbus;
pub mod mqtt;
