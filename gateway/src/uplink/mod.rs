//! Uplinks: batching, rate-limited, at-least-once publishers to a cloud
//! MQTT broker (AWS IoT Core). See [`run`] for the state machine.

pub mod batch;
pub mod config;
pub mod control;
pub mod drain;
pub mod flight;
pub mod limiter;
pub mod pace;
mod probe;
pub mod reconnect;
mod run;
pub mod tls;

pub use config::{UplinkConfig, DRAIN_TIMEOUT, WINDOW_RECORDS};
pub use run::{cursor_name, run, LinkError, Settings};
