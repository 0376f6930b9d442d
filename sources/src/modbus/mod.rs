//! Modbus sources: devices polled over Modbus TCP or RTU (RS-485), each poll
//! one record.
//!
//! - [`run_modbus_tcp`]: devices reached over TCP; each address has its own
//!   connection and is polled concurrently with the others.
//! - [`run_modbus_rtu`]: devices on one serial bus, one request at a time
//!   with a quiet gap between requests.
//!
//! A device's register map ([`RegisterConfig`]) names each value, its table,
//! address, type, byte/word [`Order`], scale and offset; it is checked when
//! the config loads, and turned into as few read requests as the limits allow
//! ([`plan`]). Each poll becomes one [`Record`](ferry_core::record::Record) with
//! the fields that were read, timestamped at the poll; what could not be read
//! is left out, counted ([`PollEvent`]) and logged with the device, table and
//! address, never replaced by a made-up value.
//!
//! Failures are kept apart ([`ReadError`]): an exception answer leaves the
//! link alone; a timeout or a link failure backs the device off (a circuit
//! breaker with capped exponential delays, [`schedule`](Schedule)) so that it
//! cannot stall the others sharing its bus. `ferry modbus probe` ([`probe`])
//! reads registers once and shows them in every type and order.

mod config;
mod decode;
mod error;
mod events;
mod link;
mod plan;
mod poll;
mod probe;
mod register;
mod run;
mod schedule;
mod types;

pub use config::{
    split_host_port, DeviceConfig, DeviceSpec, MapConfig, RtuSourceConfig, TcpSourceConfig,
};
pub use decode::{finish, ordered_u16, raw, value_bytes, Field, Raw, ValueError};
pub use error::ModbusError;
pub use events::{DeviceObserver, FailureKind, ModbusObserver, NoObserver, PollEvent};
pub use link::{exception_name, Data, Link, ReadError, SerialSettings, Target};
pub use plan::{plan, Limits, Request, Span};
pub use probe::{probe, ProbeError, ProbeReport, ProbeRequest};
pub use register::RegisterConfig;
pub use run::{run_modbus_rtu, run_modbus_tcp};
pub use schedule::{Change, Schedule};
pub use types::{DataType, Order, Parity, Table};
