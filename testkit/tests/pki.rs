//! The generated PKI: the right encodings, and certificates that verify (or do not) as
//! their names promise, checked by OpenSSL and by rustls.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use ferry_testkit::{tls, Pki};

fn pem_header(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_owned()
}

/// `openssl verify -CAfile ca cert`: Ok(()) or Err(openssl's complaint).
fn openssl_verify(ca: &Path, cert: &Path) -> Result<(), String> {
    let out = Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(ca)
        .arg(cert)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn openssl_x509(cert: &Path, args: &[&str]) -> String {
    let out = Command::new("openssl")
        .arg("x509")
        .arg("-in")
        .arg(cert)
        .arg("-noout")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn generates_every_file_quickly_with_the_promised_encodings() {
    let started = Instant::now();
    let pki = Pki::generate("pi-line-7").unwrap();
    eprintln!("PKI generated in {:?}", started.elapsed());

    assert_eq!(pem_header(&pki.client.key), "-----BEGIN PRIVATE KEY-----");
    assert_eq!(
        pem_header(&pki.client_key_sec1),
        "-----BEGIN EC PRIVATE KEY-----"
    );
    assert_eq!(
        pem_header(&pki.client_rsa.key),
        "-----BEGIN PRIVATE KEY-----"
    );
    assert_eq!(
        pem_header(&pki.client_rsa_key_pkcs1),
        "-----BEGIN RSA PRIVATE KEY-----"
    );
    for cert in [
        &pki.ca,
        &pki.server.cert,
        &pki.client.cert,
        &pki.expired_client.cert,
        &pki.rogue_client.cert,
    ] {
        assert_eq!(pem_header(cert), "-----BEGIN CERTIFICATE-----");
    }
    for id in [
        &pki.client,
        &pki.client_rsa,
        &pki.expired_client,
        &pki.rogue_client,
    ] {
        assert!(openssl_x509(&id.cert, &["-subject"]).contains("CN = pi-line-7"));
    }
    let san = openssl_x509(&pki.server.cert, &["-ext", "subjectAltName"]);
    assert!(
        san.contains("IP Address:127.0.0.1") && san.contains("DNS:localhost"),
        "{san}"
    );
    assert!(pki.dir().is_dir());
}

#[test]
fn certificates_verify_as_named() {
    let pki = Pki::generate("dev-1").unwrap();
    for cert in [
        &pki.server.cert,
        &pki.client.cert,
        &pki.client_rsa.cert,
        &pki.cloud.cert,
    ] {
        openssl_verify(&pki.ca, cert).unwrap();
    }
    let expired = openssl_verify(&pki.ca, &pki.expired_client.cert).unwrap_err();
    assert!(expired.contains("certificate has expired"), "{expired}");
    let rogue = openssl_verify(&pki.ca, &pki.rogue_client.cert).unwrap_err();
    assert!(
        rogue.contains("unable to get local issuer certificate"),
        "{rogue}"
    );
    openssl_verify(&pki.rogue_ca, &pki.rogue_client.cert).unwrap();
    let dates = openssl_x509(&pki.expired_client.cert, &["-enddate"]);
    assert!(dates.contains("2020"), "{dates}");
}

#[test]
fn rustls_loads_every_key_encoding() {
    let pki = Pki::generate("dev-2").unwrap();
    for (cert, key) in [
        (&pki.client.cert, &pki.client.key),
        (&pki.client.cert, &pki.client_key_sec1),
        (&pki.client_rsa.cert, &pki.client_rsa.key),
        (&pki.client_rsa.cert, &pki.client_rsa_key_pkcs1),
    ] {
        tls::client_config(&pki.ca, cert, key)
            .unwrap_or_else(|e| panic!("{} with {}: {e:#}", cert.display(), key.display()));
    }
}

#[test]
fn refuses_a_client_id_that_cannot_be_a_cn() {
    let err = Pki::generate("a/b").unwrap_err();
    assert!(
        err.to_string().contains("cannot be a certificate CN"),
        "{err}"
    );
    assert!(Pki::generate(&"x".repeat(65)).is_err());
}
