//! The Device Shadow stand-in: its messages parse with awsiotsdk's shadow models and
//! follow the shadow rules (the self-test script, run as a device over TLS), and the
//! fleet side of the wrapper (set desired, get, count requests) agrees with what a
//! device sees.

use std::process::Command;

use ferry_testkit::{Mosquitto, Pki, ShadowService, SHADOW_SELFTEST};
use serde_json::json;

#[test]
fn messages_match_the_sdk_models_and_the_shadow_rules() {
    let pki = Pki::generate("pi-shadow-1").unwrap();
    let broker = Mosquitto::tls(&pki).unwrap();
    let _service = ShadowService::start(&pki, broker.tls_addr()).unwrap();
    let python = std::env::var("FERRY_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(python)
        .arg(SHADOW_SELFTEST)
        .args(["--host", "127.0.0.1", "--port"])
        .arg(broker.tls_addr().port().to_string())
        .arg("--ca")
        .arg(&pki.ca)
        .arg("--cert")
        .arg(&pki.client.cert)
        .arg("--key")
        .arg(&pki.client.key)
        .args(["--thing", &pki.client_id])
        .output()
        .expect("run python3 with shadow_selftest.py (awsiotsdk 1.31.0 installed?)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim_end().ends_with("ok"),
        "self-test failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_fleet_side_sets_desired_and_reads_the_document() {
    let pki = Pki::generate("pi-shadow-2").unwrap();
    let broker = Mosquitto::tls(&pki).unwrap();
    let service = ShadowService::start(&pki, broker.tls_addr()).unwrap();
    assert_eq!(service.get("pi-shadow-2", "ferry").unwrap(), None);
    assert_eq!(
        service
            .set_desired("pi-shadow-2", "ferry", json!({"config": "x"}))
            .unwrap(),
        1
    );
    let doc = service.get("pi-shadow-2", "ferry").unwrap().unwrap();
    assert_eq!(doc["version"], 1);
    assert_eq!(doc["state"]["desired"], json!({"config": "x"}));
    assert_eq!(doc["state"]["delta"], json!({"config": "x"}));
    // An update with a stale version is refused with the service's conflict.
    let conflict = service
        .update(
            "pi-shadow-2",
            "ferry",
            json!({"state": {"reported": {"a": 1}}, "version": 7}),
        )
        .unwrap()
        .unwrap_err();
    assert_eq!(
        (conflict["code"].as_u64(), conflict["message"].as_str()),
        (Some(409), Some("Version conflict"))
    );
    assert_eq!(service.requests("pi-shadow-2", "ferry").unwrap(), 0);
}
