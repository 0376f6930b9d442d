//! The uplink's TLS client configuration: the CA that signs the cloud's
//! server certificate, and this gateway's X.509 client certificate and key.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};
use thiserror::Error;

/// What is wrong with the TLS material, naming the file.
#[derive(Debug, Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("{what} {path} holds no PEM certificate")]
    NoCertificate { what: &'static str, path: String },
    #[error("key {path} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    NoKey { path: String },
    #[error("CA {path}: {message}")]
    BadCa { path: String, message: String },
    #[error("client certificate and key do not fit together: {0}")]
    Mismatch(rustls::Error),
}

/// The PEM file at `path`: a regular file of at most
/// [`MAX_FILE_BYTES`](ferry_core::files::MAX_FILE_BYTES) (a FIFO or a
/// device is refused, not read).
fn read_pem(path: &Path) -> std::io::Result<Vec<u8>> {
    use ferry_core::files::{read_bounded, FileError, MAX_FILE_BYTES};
    read_bounded(path, MAX_FILE_BYTES).map_err(|e| match e {
        FileError::Io(e) => e,
        refused => std::io::Error::new(std::io::ErrorKind::InvalidInput, refused.to_string()),
    })
}

fn read_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read = |source| TlsError::Read {
        what,
        path: path.display().to_string(),
        source,
    };
    let pem = read_pem(path).map_err(read)?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(read)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            what,
            path: path.display().to_string(),
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let read = |source| TlsError::Read {
        what: "key",
        path: path.display().to_string(),
        source,
    };
    let pem = read_pem(path).map_err(read)?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(read)?
        .ok_or_else(|| TlsError::NoKey {
            path: path.display().to_string(),
        })
}

/// A client configuration: TLS 1.2 and 1.3 only, the given CA as the only
/// trust anchor, client authentication with `cert` and `key`, and the ALPN
/// protocols (e.g. `x-amzn-mqtt-ca` for MQTT on port 443).
pub fn client_config(
    ca: &Path,
    cert: &Path,
    key: &Path,
    alpn: &[String],
) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in read_certs("CA", ca)? {
        roots.add(c).map_err(|e| TlsError::BadCa {
            path: ca.display().to_string(),
            message: e.to_string(),
        })?;
    }
    let chain = read_certs("certificate", cert)?;
    let key = read_key(key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("ring supports TLS 1.2 and 1.3")
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(TlsError::Mismatch)?;
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Ok(Arc::new(config))
}
