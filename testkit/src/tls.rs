//! rustls client configuration from PEM files, with the `ring` provider (the one the
//! workspace builds rustls with).

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

/// A TLS client configuration that trusts only the CA certificate(s) in `ca` and
/// authenticates with `cert` and `key` (PKCS#8, PKCS#1 or SEC1).
pub fn client_config(ca: &Path, cert: &Path, key: &Path) -> Result<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for der in CertificateDer::pem_file_iter(ca)
        .with_context(|| format!("reading CA certificates from {}", ca.display()))?
    {
        let der = der.with_context(|| format!("parsing {}", ca.display()))?;
        roots
            .add(der)
            .with_context(|| format!("adding a CA certificate from {}", ca.display()))?;
    }
    let chain = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading certificates from {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading a private key from {}", key.display()))?;
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .context("choosing TLS versions")?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .with_context(|| format!("using {} as a client certificate", cert.display()))?;
    Ok(config)
}
