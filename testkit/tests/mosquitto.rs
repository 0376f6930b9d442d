//! The TLS mosquitto behaves like IoT Core at the door: the good client certificate
//! gets in, a rogue or expired one does not, and a wrong CA on the client's side fails
//! the server's certificate. Messages published with an OpenSSL client (mosquitto_pub)
//! reach the rustls subscriber; a restart on the same port keeps the subscription.

use std::time::Duration;

use anyhow::Result;
use ferry_testkit::{mosquitto_pub, wait_until, CloudSubscriber, Mosquitto, Pki, SubscriberConfig};

const WAIT: Duration = Duration::from_secs(10);

/// The error chain of a connection attempt with `config`, which must fail.
async fn refused(config: SubscriberConfig) -> String {
    match CloudSubscriber::connect_with(config).await {
        Ok(_) => panic!("the connection should have been refused"),
        Err(e) => {
            let e = format!("{e:#}");
            eprintln!("refused as expected: {e}");
            e
        }
    }
}

/// Publishes with mosquitto_pub as the gateway's identity. `block_in_place`: the
/// subscriber's task keeps running on the other worker meanwhile.
async fn publish(pki: &Pki, broker: &Mosquitto, topic: &str, payload: &str) -> Result<()> {
    tokio::task::block_in_place(|| {
        mosquitto_pub(
            broker.tls_addr(),
            Some((pki, &pki.client)),
            topic,
            payload.as_bytes(),
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepts_the_good_certificate_in_every_key_encoding() {
    let pki = Pki::generate("pi-line-7").unwrap();
    let broker = Mosquitto::tls(&pki).unwrap();
    let identities = [
        (pki.client.cert.clone(), pki.client.key.clone()),
        (pki.client.cert.clone(), pki.client_key_sec1.clone()),
        (pki.client_rsa.cert.clone(), pki.client_rsa.key.clone()),
        (
            pki.client_rsa.cert.clone(),
            pki.client_rsa_key_pkcs1.clone(),
        ),
    ];
    for (cert, key) in identities {
        let mut config = SubscriberConfig::new(&pki, broker.tls_addr(), "dt/#");
        config.identity = ferry_testkit::Identity { cert, key };
        let sub = CloudSubscriber::connect_with(config).await.unwrap();
        assert!(sub.link().subscribed);
    }
    // use_identity_as_username: the broker knows the device by its certificate's CN.
    wait_until(WAIT, "the CN as username in the broker's log", || {
        broker.log().contains("u'pi-line-7'")
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_rogue_or_expired_certificate_and_a_wrong_ca() {
    let pki = Pki::generate("pi-line-7").unwrap();
    let broker = Mosquitto::tls(&pki).unwrap();

    let mut rogue = SubscriberConfig::new(&pki, broker.tls_addr(), "dt/#");
    rogue.identity = pki.rogue_client.clone();
    let error = refused(rogue).await;
    assert!(error.contains("UnknownCA"), "rogue certificate: {error}");

    let mut expired = SubscriberConfig::new(&pki, broker.tls_addr(), "dt/#");
    expired.identity = pki.expired_client.clone();
    let error = refused(expired).await;
    assert!(
        error.contains("CertificateExpired"),
        "expired certificate: {error}"
    );

    // The broker's side of both refusals (it may log them after the client has read
    // the alert).
    wait_until(WAIT, "both refusals in the broker's log", || {
        broker.log().matches("certificate verify failed").count() == 2
    })
    .await
    .unwrap();
    let log = broker.log();
    assert!(
        !log.contains("u'pi-line-7'"),
        "a refused client got in: {log}"
    );

    // A client that trusts the wrong CA refuses the broker's certificate itself.
    let mut wrong_ca = SubscriberConfig::new(&pki, broker.tls_addr(), "dt/#");
    wrong_ca.ca = pki.rogue_ca.clone();
    let error = refused(wrong_ca).await;
    assert!(error.contains("UnknownIssuer"), "wrong CA: {error}");

    // The broker is unharmed.
    CloudSubscriber::connect(&pki, broker.tls_addr(), "dt/#")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_pub_over_tls_reaches_the_subscriber() {
    let pki = Pki::generate("pi-line-7").unwrap();
    let broker = Mosquitto::tls(&pki).unwrap();
    let sub = CloudSubscriber::connect(&pki, broker.tls_addr(), "dt/ferry/+/telemetry")
        .await
        .unwrap();

    publish(
        &pki,
        &broker,
        "dt/ferry/pi-line-7/telemetry",
        r#"[{"seq":0},{"seq":1}]"#,
    )
    .await
    .unwrap();
    publish(&pki, &broker, "dt/ferry/pi-line-7/other", "not for us")
        .await
        .unwrap();
    publish(
        &pki,
        &broker,
        "dt/ferry/pi-line-7/telemetry",
        r#"[{"seq":2}]"#,
    )
    .await
    .unwrap();

    let seen = sub
        .wait_for_seqs(0..3, WAIT, |m| ferry_testkit::json_record_seqs(&m.payload))
        .await
        .unwrap();
    assert_eq!(seen.duplicates(), 0);
    let messages = sub.messages();
    assert_eq!(messages.len(), 2);
    assert!(messages
        .iter()
        .all(|m| m.topic == "dt/ferry/pi-line-7/telemetry"));
    assert_eq!(messages[1].json().unwrap(), serde_json::json!([{"seq": 2}]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_the_port_and_the_subscription() {
    let pki = Pki::generate("pi-line-7").unwrap();
    let mut broker = Mosquitto::tls(&pki).unwrap();
    let addr = broker.tls_addr();
    let sub = CloudSubscriber::connect(&pki, addr, "dt/#").await.unwrap();

    broker.stop().unwrap();
    assert!(!broker.is_running());
    sub.wait_disconnected(WAIT).await.unwrap();
    broker.start().unwrap();
    assert_eq!(broker.tls_addr(), addr);

    // Published before the subscriber has necessarily reconnected: the persisted
    // session holds the subscription and queues the message.
    publish(&pki, &broker, "dt/after-restart", "1")
        .await
        .unwrap();
    sub.wait_for_count(1, WAIT).await.unwrap();
    sub.wait_subscribed(WAIT).await.unwrap();
    assert!(sub.link().connects >= 2);
    assert_eq!(broker.log().matches(" running").count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_broker_relays_device_messages() {
    let broker = Mosquitto::plain().unwrap();
    let addr = broker.plain_addr();
    assert_eq!(broker.tls_port(), None);

    let mut options =
        rumqttc::MqttOptions::new("test-device-reader", addr.ip().to_string(), addr.port());
    options.set_keep_alive(Duration::from_secs(5));
    let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 10);
    client
        .subscribe("sensors/#", rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    let received = tokio::time::timeout(WAIT, async {
        let mut published = false;
        loop {
            match eventloop.poll().await.unwrap() {
                rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)) if !published => {
                    published = true;
                    tokio::task::block_in_place(|| {
                        mosquitto_pub(
                            addr,
                            None,
                            "sensors/7/telemetry",
                            br#"{"temperature":21.5}"#,
                        )
                    })
                    .unwrap();
                }
                rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) => return p,
                _ => {}
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(received.topic, "sensors/7/telemetry");
    assert_eq!(&received.payload[..], br#"{"temperature":21.5}"#);
}

#[test]
fn a_broker_needs_a_listener() {
    let err = Mosquitto::builder().start().unwrap_err();
    assert!(err.to_string().contains("needs a TLS listener"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_packets_over_iot_cores_limit() {
    let pki = Pki::generate("pi-line-7").unwrap();
    let broker = Mosquitto::tls(&pki).unwrap();
    let sub = CloudSubscriber::connect(&pki, broker.tls_addr(), "dt/#")
        .await
        .unwrap();
    let too_big = "x".repeat(ferry_testkit::IOT_CORE_MAX_PACKET as usize);
    let error = publish(&pki, &broker, "dt/big", &too_big)
        .await
        .unwrap_err();
    eprintln!("refused as expected: {error:#}");
    let fits = "y".repeat(128 * 1024);
    publish(&pki, &broker, "dt/fits", &fits).await.unwrap();
    sub.wait_for_count(1, WAIT).await.unwrap();
    assert_eq!(sub.messages()[0].topic, "dt/fits");
    assert_eq!(sub.messages()[0].payload.len(), 128 * 1024);
}
