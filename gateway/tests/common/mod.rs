//! Shared helpers of the gateway's end-to-end tests, a file per job:
//!
//! - `cloud.rs`: the IoT Core stand-in with a subscriber on it ([`Cloud`]);
//! - `daemon.rs`: the real `ferry` binary as a child process ([`Ferry`]);
//! - `configs.rs`: gateway configs (embedded broker or subscriber, TLS uplink);
//! - `readings.rs`: seed-format payloads and the sequences the cloud got;
//! - `http.rs`: GETs from the daemon, samples of its /metrics page;
//! - `browser.rs`: headless Chromium for the status page;
//! - `uplink.rs`: the store, ingest writer and an uplink in process ([`Gateway`]);
//! - `process.rs`: loopback addresses, a process's CPU time.
//!
//! Devices publish with [`ferry_testkit::Publisher`], re-exported here.
#![allow(dead_code, unused_imports)]

mod browser;
mod cloud;
mod configs;
mod daemon;
mod http;
mod process;
mod readings;
mod uplink;

pub use browser::*;
pub use cloud::*;
pub use configs::*;
pub use daemon::*;
pub use ferry_testkit::Publisher;
pub use http::*;
pub use process::*;
pub use readings::*;
pub use uplink::*;
