//! Real peers for Ferry's integration tests, standing in for AWS IoT Core and its
//! network: certificates ([`Pki`]), a TLS mosquitto requiring client certificates
//! ([`Mosquitto`]), a cloud-side subscriber that records what arrives
//! ([`CloudSubscriber`]), a TCP proxy that cuts the link on demand ([`Proxy`]), a device
//! publishing at QoS 1 ([`Publisher`]), Modbus devices (the pymodbus simulator and a
//! socat pty pair, [`modbus`]), the Device Shadow service
//! ([`ShadowService`], moto's shadow rules on the reserved topics), and helpers to wait without sleeping ([`wait_until`],
//! [`free_port`]).
//!
//! Needs on the machine: `openssl` (3.x) and `mosquitto` (`apt-get install -y openssl
//! mosquitto`); `mosquitto_pub`/`mosquitto_sub` for tests that use them; `python3`
//! with pymodbus and `socat` for [`modbus`]. Nothing touches the network beyond
//! 127.0.0.1.
//!
//! ```no_run
//! use std::time::Duration;
//! use ferry_testkit::{json_record_seqs, CloudSubscriber, Mosquitto, Pki, Proxy};
//!
//! # async fn example() -> anyhow::Result<()> {
//! let pki = Pki::generate("pi-line-7")?;
//! let cloud = Mosquitto::tls(&pki)?;
//! let link = Proxy::start(cloud.tls_addr()).await?;
//! let subscriber = CloudSubscriber::connect(&pki, cloud.tls_addr(), "dt/ferry/#").await?;
//! // Point the gateway's uplink at `link.addr()` with `ca = pki.ca`,
//! // `cert = pki.client.cert`, `key = pki.client.key`, client id `pki.client_id`.
//! link.cut().await;
//! // ... the gateway keeps ingesting ...
//! link.restore();
//! let seen = subscriber
//!     .wait_for_seqs(0..20_000, Duration::from_secs(60), |m| json_record_seqs(&m.payload))
//!     .await?;
//! println!("{seen}");
//! # Ok(())
//! # }
//! ```

pub mod modbus;
mod mosquitto;
mod pki;
mod proxy;
mod publisher;
mod seqs;
mod shadow;
mod subscriber;
pub mod tls;
mod wait;

pub use mosquitto::{mosquitto_pub, Mosquitto, MosquittoBuilder, IOT_CORE_MAX_PACKET};
pub use pki::{Identity, Pki, CLOUD_CLIENT_CN};
pub use proxy::{Mode, Proxy};
pub use publisher::{Publisher, PublisherBuilder};
pub use seqs::{json_record_seqs, SeqTracker};
pub use shadow::{ShadowService, SHADOW_SELFTEST, SHADOW_SERVICE};
pub use subscriber::{CloudSubscriber, LinkStatus, Message, SubscriberConfig};
pub use wait::{free_port, free_ports, wait_until, wait_until_blocking, Timeout};

/// The paho-mqtt flood script (`testkit/src/mqtt_flood.py`): devices that
/// publish QoS 1 as fast as their in-flight window lets them and print each
/// PUBACK.
pub const MQTT_FLOOD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/mqtt_flood.py");
