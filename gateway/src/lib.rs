//! Ferry, the edge gateway daemon: configuration, the durable store, the
//! uplinks to the cloud, metrics, and the wiring that runs them.

pub mod api;
pub mod cli;
pub mod config;
pub mod contain;
pub mod daemon;
pub mod fleet;
mod http;
mod listen;
pub mod metrics;
pub mod pipeline;
pub mod query;
pub mod route;
pub mod store;
pub mod uplink;
