//! The broker's TLS server configuration (rustls 0.23 with ring, the stack
//! the rest of Ferry uses): TLS 1.2 and 1.3, optionally requiring a device
//! certificate signed by `client_ca`.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

use ferry_core::report::{KeyPath, Problem};

use crate::mqtt::BrokerTlsConfig;

/// A problem with the file of `tls.KEY`.
fn problem(key: &str, message: String) -> Problem {
    Problem {
        path: KeyPath::root("tls").key(key),
        message,
    }
}

/// The PEM file at `path`: a regular file of at most
/// [`MAX_FILE_BYTES`](ferry_core::files::MAX_FILE_BYTES).
fn read_pem(what: &str, path: &Path) -> Result<Vec<u8>, Problem> {
    ferry_core::files::read_bounded(path, ferry_core::files::MAX_FILE_BYTES)
        .map_err(|e| problem(what, format!("cannot read {}: {e}", path.display())))
}

fn read_certs(what: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, Problem> {
    let pem = read_pem(what, path)?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| problem(what, format!("{} is not PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(problem(
            what,
            format!("no certificate in {}", path.display()),
        ));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, Problem> {
    let pem = read_pem("key", path)?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| problem("key", format!("{} is not PEM: {e}", path.display())))?
        .ok_or_else(|| problem("key", format!("no private key in {}", path.display())))
}

/// Loads the files `cfg` names into a server configuration; an error is at
/// the key it is about (`tls.cert`), below the source.
pub fn server_config(cfg: &BrokerTlsConfig) -> Result<Arc<ServerConfig>, Problem> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = read_certs("cert", &cfg.cert)?;
    let key = read_key(&cfg.key)?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| Problem {
            path: KeyPath::root("tls"),
            message: e.to_string(),
        })?;
    let builder = match &cfg.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in read_certs("client_ca", ca)? {
                roots
                    .add(c)
                    .map_err(|e| problem("client_ca", format!("{}: {e}", ca.display())))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| problem("client_ca", format!("{}: {e}", ca.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(chain, key)
        .map_err(|e| problem("key", format!("does not fit tls.cert: {e}")))?;
    Ok(Arc::new(config))
}
