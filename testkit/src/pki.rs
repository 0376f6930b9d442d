//! A throw-away PKI made with the `openssl` command line tool: CA, server, clients,
//! a rogue CA, an expired certificate.
//!
//! Everything lives in a temporary directory that is deleted when the [`Pki`] is
//! dropped. Generation takes about a tenth of a second plus one RSA-2048 key (0.1–0.6 s,
//! made on a second thread while the EC P-256 keys are made on the first).
//!
//! Certificates are X.509 v3 with the extensions rustls/webpki insist on: the CA has
//! `basicConstraints CA:TRUE`, leaves have `CA:FALSE` and an extended key usage
//! (`serverAuth` or `clientAuth`), and the server certificate names `127.0.0.1` and
//! `localhost` in its subjectAltName (webpki ignores the CN).
//!
//! Needs OpenSSL 3 (`openssl pkey -traditional`); set `OPENSSL` to use another binary.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};

/// MQTT client id (and certificate CN) of the identity [`crate::CloudSubscriber`] uses.
pub const CLOUD_CLIENT_CN: &str = "ferry-testkit-cloud";

/// The `openssl.cnf` every invocation uses (via `OPENSSL_CONF`), so the result does
/// not depend on the machine's own openssl configuration.
const OPENSSL_CNF: &str = "\
[req]
distinguished_name = dn
prompt = no
x509_extensions = v3_ca
[dn]
CN = unused
[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
# `openssl ca` (used only for the expired certificate: `x509 -days` cannot go back in time)
[ca]
default_ca = testkit_ca
[testkit_ca]
database = index.txt
new_certs_dir = .
serial = serial
default_md = sha256
policy = policy_any
unique_subject = no
copy_extensions = none
[policy_any]
commonName = supplied
";

/// Validity of the good certificates, in days.
const VALID_DAYS: &str = "3650";
/// Validity window of the expired certificate: one day, years ago.
const EXPIRED_FROM: &str = "20200101000000Z";
const EXPIRED_UNTIL: &str = "20200102000000Z";

/// A certificate and its private key, both PEM files. The key is PKCS#8
/// (`BEGIN PRIVATE KEY`) unless a field says otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM, PKCS#8).
    pub key: PathBuf,
}

/// Certificates for a TLS mosquitto standing in for AWS IoT Core, and for the clients
/// that talk to it. All paths point into a temporary directory owned by this value.
#[derive(Debug)]
pub struct Pki {
    /// The client id the client certificates were issued to (their CN).
    pub client_id: String,
    /// The CA certificate that signed the server and every good client certificate:
    /// what the gateway's `ca` setting points at.
    pub ca: PathBuf,
    /// The CA's private key (PKCS#8).
    pub ca_key: PathBuf,
    /// Server certificate for `127.0.0.1` and `localhost` (EC P-256), signed by [`Pki::ca`].
    pub server: Identity,
    /// Client certificate (EC P-256, CN = `client_id`), signed by [`Pki::ca`].
    pub client: Identity,
    /// [`Pki::client`]'s key as SEC1 (`BEGIN EC PRIVATE KEY`).
    pub client_key_sec1: PathBuf,
    /// Client certificate with an RSA-2048 key (CN = `client_id`), signed by [`Pki::ca`].
    pub client_rsa: Identity,
    /// [`Pki::client_rsa`]'s key as PKCS#1 (`BEGIN RSA PRIVATE KEY`).
    pub client_rsa_key_pkcs1: PathBuf,
    /// The cloud-side test client's own certificate (CN = [`CLOUD_CLIENT_CN`]), signed
    /// by [`Pki::ca`]. Used by [`crate::CloudSubscriber`].
    pub cloud: Identity,
    /// Client certificate (CN = `client_id`) signed by [`Pki::ca`] but valid only for a
    /// day in January 2020.
    pub expired_client: Identity,
    /// A second CA, unrelated to [`Pki::ca`]. As a gateway's `ca` it makes the server
    /// certificate untrusted.
    pub rogue_ca: PathBuf,
    /// Client certificate (CN = `client_id`) signed by [`Pki::rogue_ca`]: the broker must
    /// refuse it.
    pub rogue_client: Identity,
    dir: tempfile::TempDir,
}

impl Pki {
    /// Generates everything for a gateway whose MQTT client id is `client_id`.
    ///
    /// `client_id` becomes a certificate CN, so it must be 1–64 characters of
    /// `[A-Za-z0-9._:-]`.
    pub fn generate(client_id: &str) -> Result<Self> {
        ensure!(
            !client_id.is_empty()
                && client_id.len() <= 64
                && client_id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b)),
            "client id {client_id:?} cannot be a certificate CN: use 1-64 characters of [A-Za-z0-9._:-]"
        );
        let dir = tempfile::Builder::new()
            .prefix("ferry-pki-")
            .tempdir()
            .context("creating the PKI's temporary directory")?;
        let ssl = Openssl::new(dir.path())?;
        let path = |name: &str| dir.path().join(name);

        ssl.self_signed_ca("ca", "Ferry Test CA")?;
        ssl.self_signed_ca("rogue-ca", "Rogue Test CA")?;

        // The RSA key is the slow one: make it beside the EC ones.
        std::thread::scope(|scope| -> Result<()> {
            let rsa = scope.spawn(|| -> Result<()> {
                ssl.leaf("client-rsa", client_id, KeyKind::Rsa2048, "ca", "client", 3)?;
                ssl.run([
                    "pkey",
                    "-in",
                    "client-rsa.key",
                    "-traditional",
                    "-out",
                    "client-rsa.pkcs1.key",
                ])
            });
            ssl.leaf("server", "localhost", KeyKind::P256, "ca", "server", 2)?;
            ssl.leaf("client", client_id, KeyKind::P256, "ca", "client", 4)?;
            ssl.run([
                "pkey",
                "-in",
                "client.key",
                "-traditional",
                "-out",
                "client.sec1.key",
            ])?;
            ssl.leaf("cloud", CLOUD_CLIENT_CN, KeyKind::P256, "ca", "client", 5)?;
            ssl.leaf(
                "rogue-client",
                client_id,
                KeyKind::P256,
                "rogue-ca",
                "client",
                6,
            )?;
            ssl.expired_leaf("expired-client", client_id)?;
            rsa.join()
                .map_err(|_| anyhow::anyhow!("the RSA key thread panicked"))?
        })?;

        let pki = Pki {
            client_id: client_id.to_owned(),
            ca: path("ca.pem"),
            ca_key: path("ca.key"),
            server: Identity {
                cert: path("server.pem"),
                key: path("server.key"),
            },
            client: Identity {
                cert: path("client.pem"),
                key: path("client.key"),
            },
            client_key_sec1: path("client.sec1.key"),
            client_rsa: Identity {
                cert: path("client-rsa.pem"),
                key: path("client-rsa.key"),
            },
            client_rsa_key_pkcs1: path("client-rsa.pkcs1.key"),
            cloud: Identity {
                cert: path("cloud.pem"),
                key: path("cloud.key"),
            },
            expired_client: Identity {
                cert: path("expired-client.pem"),
                key: path("expired-client.key"),
            },
            rogue_ca: path("rogue-ca.pem"),
            rogue_client: Identity {
                cert: path("rogue-client.pem"),
                key: path("rogue-client.key"),
            },
            dir,
        };
        pki.check_key_headers()?;
        Ok(pki)
    }

    /// The temporary directory holding every file.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `mosquitto_pub`/`mosquitto_sub` arguments that connect with `identity`, trusting
    /// [`Pki::ca`]: `--cafile CA --cert CERT --key KEY`.
    pub fn mosquitto_client_args(&self, identity: &Identity) -> Vec<OsString> {
        vec![
            "--cafile".into(),
            self.ca.clone().into(),
            "--cert".into(),
            identity.cert.clone().into(),
            "--key".into(),
            identity.key.clone().into(),
        ]
    }

    /// Guards against an openssl that writes other encodings than the fields promise.
    fn check_key_headers(&self) -> Result<()> {
        let expect = [
            (&self.client.key, "-----BEGIN PRIVATE KEY-----"),
            (&self.client_key_sec1, "-----BEGIN EC PRIVATE KEY-----"),
            (&self.client_rsa.key, "-----BEGIN PRIVATE KEY-----"),
            (
                &self.client_rsa_key_pkcs1,
                "-----BEGIN RSA PRIVATE KEY-----",
            ),
        ];
        for (path, header) in expect {
            let pem = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            ensure!(
                pem.starts_with(header),
                "{} does not start with {header}: is `openssl` OpenSSL 3?",
                path.display()
            );
        }
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum KeyKind {
    P256,
    Rsa2048,
}

impl KeyKind {
    fn newkey_args(self) -> &'static [&'static str] {
        match self {
            KeyKind::P256 => &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
            KeyKind::Rsa2048 => &["-newkey", "rsa:2048"],
        }
    }
}

/// Runs the `openssl` binary in the PKI directory with its own configuration file.
struct Openssl<'a> {
    binary: OsString,
    dir: &'a Path,
    config: PathBuf,
}

impl<'a> Openssl<'a> {
    fn new(dir: &'a Path) -> Result<Self> {
        let config = dir.join("openssl.cnf");
        std::fs::write(&config, OPENSSL_CNF)
            .with_context(|| format!("writing {}", config.display()))?;
        std::fs::write(dir.join("index.txt"), "").context("writing index.txt")?;
        std::fs::write(dir.join("serial"), "1000\n").context("writing serial")?;
        let binary = std::env::var_os("OPENSSL").unwrap_or_else(|| "openssl".into());
        Ok(Openssl {
            binary,
            dir,
            config,
        })
    }

    /// A self-signed CA: `{name}.pem` and `{name}.key`.
    fn self_signed_ca(&self, name: &str, cn: &str) -> Result<()> {
        let mut args = vec![
            "req", "-x509", "-new", "-nodes", "-sha256", "-days", VALID_DAYS,
        ];
        args.extend(KeyKind::P256.newkey_args());
        let (key, cert, subj) = (
            format!("{name}.key"),
            format!("{name}.pem"),
            format!("/CN={cn}"),
        );
        args.extend(["-keyout", &key, "-out", &cert, "-subj", &subj]);
        self.run(args)
    }

    /// A new key and CSR: `{name}.key`, `{name}.csr`.
    fn key_and_csr(&self, name: &str, cn: &str, kind: KeyKind) -> Result<()> {
        let mut args = vec!["req", "-new", "-nodes"];
        args.extend(kind.newkey_args());
        let (key, csr, subj) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("/CN={cn}"),
        );
        args.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
        self.run(args)
    }

    /// A leaf certificate `{name}.pem` (key `{name}.key`) signed by the CA `{ca}` with
    /// the extensions of config section `section`.
    fn leaf(
        &self,
        name: &str,
        cn: &str,
        kind: KeyKind,
        ca: &str,
        section: &str,
        serial: u32,
    ) -> Result<()> {
        self.key_and_csr(name, cn, kind)?;
        let (csr, cert) = (format!("{name}.csr"), format!("{name}.pem"));
        let (ca_cert, ca_key) = (format!("{ca}.pem"), format!("{ca}.key"));
        let serial = serial.to_string();
        let config = self.config.to_string_lossy();
        self.run([
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_cert,
            "-CAkey",
            &ca_key,
            "-set_serial",
            &serial,
            "-days",
            VALID_DAYS,
            "-sha256",
            "-extfile",
            &config,
            "-extensions",
            section,
            "-out",
            &cert,
        ])
    }

    /// A client certificate signed by `ca` whose validity ended years ago. `openssl x509`
    /// cannot set past dates before OpenSSL 3.4; `openssl ca` can.
    fn expired_leaf(&self, name: &str, cn: &str) -> Result<()> {
        self.key_and_csr(name, cn, KeyKind::P256)?;
        let (csr, cert) = (format!("{name}.csr"), format!("{name}.pem"));
        let config = self.config.to_string_lossy();
        self.run([
            "ca",
            "-batch",
            "-notext",
            "-in",
            &csr,
            "-out",
            &cert,
            "-cert",
            "ca.pem",
            "-keyfile",
            "ca.key",
            "-startdate",
            EXPIRED_FROM,
            "-enddate",
            EXPIRED_UNTIL,
            "-extfile",
            &config,
            "-extensions",
            "client",
        ])
    }

    fn run<'s>(&self, args: impl IntoIterator<Item = &'s str>) -> Result<()> {
        let args: Vec<&str> = args.into_iter().collect();
        let output = Command::new(&self.binary)
            .args(&args)
            .current_dir(self.dir)
            .env("OPENSSL_CONF", &self.config)
            .output()
            .with_context(|| {
                format!(
                    "running {:?} (install it: apt-get install openssl, or set OPENSSL)",
                    self.binary
                )
            })?;
        if !output.status.success() {
            bail!(
                "`openssl {}` failed ({}): {}",
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(())
    }
}
