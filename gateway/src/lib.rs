//! Ferry, the edge gateway daemon: configuration, the durable store, the
//! uplinks to the cloud, metrics, and the wiring that runs them.

pub mod metrics;
pub mod store;
