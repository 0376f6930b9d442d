//! The IoT Core stand-in most tests start with: certificates for gateway
//! `pi-line-7`, a TLS mosquitto requiring them, and a subscriber on
//! `dt/ferry/#` recording what arrives ([`Cloud`]).

use ferry_testkit::{CloudSubscriber, Mosquitto, Pki};

/// The cloud side of a test.
pub struct Cloud {
    pub pki: Pki,
    pub mosquitto: Mosquitto,
    pub sub: CloudSubscriber,
}

impl Cloud {
    pub async fn start() -> Cloud {
        let pki = Pki::generate("pi-line-7").unwrap();
        let mosquitto = Mosquitto::tls(&pki).unwrap();
        let sub = CloudSubscriber::connect(&pki, mosquitto.tls_addr(), "dt/ferry/#")
            .await
            .unwrap();
        Cloud {
            pki,
            mosquitto,
            sub,
        }
    }
}
