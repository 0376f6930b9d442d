//! All the pieces together, as a gateway test would use them: a subscriber reaching the
//! TLS broker through the proxy loses its link on a cut, and after the restore gets
//! what was published meanwhile (its persistent session queued it).

use std::time::Duration;

use ferry_testkit::{
    json_record_seqs, mosquitto_pub, CloudSubscriber, Mosquitto, Pki, Proxy, SubscriberConfig,
};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_link_delivers_after_restore() {
    let pki = Pki::generate("pi-line-7").unwrap();
    let broker = Mosquitto::tls(&pki).unwrap();
    let link = Proxy::start(broker.tls_addr()).await.unwrap();
    let sub = CloudSubscriber::connect_with(SubscriberConfig::new(&pki, link.addr(), "dt/#"))
        .await
        .unwrap();
    let publish = |seq: u64| {
        let payload = format!(r#"[{{"seq":{seq}}}]"#);
        tokio::task::block_in_place(|| {
            mosquitto_pub(
                broker.tls_addr(),
                Some((&pki, &pki.client)),
                "dt/t",
                payload.as_bytes(),
            )
        })
        .unwrap();
    };

    publish(0);
    sub.wait_for_count(1, WAIT).await.unwrap();

    link.cut().await;
    sub.wait_disconnected(WAIT).await.unwrap();
    for seq in 1..5 {
        publish(seq);
    }
    link.restore();

    let seen = sub
        .wait_for_seqs(0..5, WAIT, |m| json_record_seqs(&m.payload))
        .await
        .unwrap();
    assert!(seen.is_complete(), "{seen}");
    assert!(sub.link().connects >= 2);
}
