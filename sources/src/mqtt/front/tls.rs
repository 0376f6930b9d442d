//! The broker's TLS server configuration (rustls 0.23 with ring, the stack
//! the rest of Ferry uses): TLS 1.2 and 1.3, optionally requiring a device
//! certificate signed by `client_ca`.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

use crate::mqtt::BrokerTlsConfig;

/// The PEM file at `path`: a regular file of at most
/// [`MAX_FILE_BYTES`](ferry_core::files::MAX_FILE_BYTES).
fn read_pem(what: &str, path: &Path) -> Result<Vec<u8>, String> {
    ferry_core::files::read_bounded(path, ferry_core::files::MAX_FILE_BYTES)
        .map_err(|e| format!("tls.{what}: cannot read {}: {e}", path.display()))
}

fn read_certs(what: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read_pem(what, path)?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("tls.{what}: {} is not PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("tls.{what}: no certificate in {}", path.display()));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let pem = read_pem("key", path)?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| format!("tls.key: {} is not PEM: {e}", path.display()))?
        .ok_or_else(|| format!("tls.key: no private key in {}", path.display()))
}

/// Loads the files `cfg` names into a server configuration; an error starts
/// with the key it is about (`tls.cert: ...`).
pub fn server_config(cfg: &BrokerTlsConfig) -> Result<Arc<ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = read_certs("cert", &cfg.cert)?;
    let key = read_key(&cfg.key)?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("tls: {e}"))?;
    let builder = match &cfg.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in read_certs("client_ca", ca)? {
                roots
                    .add(c)
                    .map_err(|e| format!("tls.client_ca: {}: {e}", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("tls.client_ca: {}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(chain, key)
        .map_err(|e| format!("tls.key: does not fit tls.cert: {e}"))?;
    Ok(Arc::new(config))
}
