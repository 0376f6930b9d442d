//! Password files in mosquitto's format, as `mosquitto_passwd` writes them.
//!
//! One `username:hash` a line; blank lines and lines starting with `#` are
//! skipped. Two hashes are read:
//!
//! - `$7$ITERATIONS$SALT$HASH`: PBKDF2-HMAC-SHA512 (mosquitto 2's default),
//! - `$6$SALT$HASH`: SHA-512 of the password followed by the salt (older
//!   mosquitto, and `mosquitto_passwd -H sha512`),
//!
//! salt and hash in standard base64. Plain-text passwords are refused: the
//! file is for hashes only (`mosquitto_passwd -U FILE` hashes a plain file).
//! Hashes are compared in constant time.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;

/// Most PBKDF2 iterations accepted; more would let a file make each
/// connection cost seconds of CPU.
const MAX_ITERATIONS: u32 = 1_000_000;

/// One user's hash.
#[derive(Clone, PartialEq, Eq)]
enum Hash {
    Pbkdf2Sha512 {
        iterations: u32,
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
    Sha512 {
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
}

impl Hash {
    fn parse(text: &str) -> Result<Hash, String> {
        let b64 = |part: &str, what: &str| {
            STANDARD
                .decode(part)
                .map_err(|e| format!("the {what} is not base64: {e}"))
        };
        let parts: Vec<&str> = text.split('$').collect();
        match parts.as_slice() {
            ["", "7", iterations, salt, hash] => {
                let iterations: u32 = iterations
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_ITERATIONS).contains(n))
                    .ok_or_else(|| {
                        format!("iterations `{iterations}` is not 1 to {MAX_ITERATIONS}")
                    })?;
                let hash = b64(hash, "hash")?;
                if hash.len() != 64 {
                    return Err(format!("the hash is {} bytes, not 64", hash.len()));
                }
                Ok(Hash::Pbkdf2Sha512 {
                    iterations,
                    salt: b64(salt, "salt")?,
                    hash,
                })
            }
            ["", "6", salt, hash] => {
                let hash = b64(hash, "hash")?;
                if hash.len() != 64 {
                    return Err(format!("the hash is {} bytes, not 64", hash.len()));
                }
                Ok(Hash::Sha512 {
                    salt: b64(salt, "salt")?,
                    hash,
                })
            }
            ["", kind, ..] => Err(format!(
                "unknown hash `${kind}$`; expected `$7$` (PBKDF2-SHA512) or `$6$` (SHA-512) \
                 as mosquitto_passwd writes them"
            )),
            _ => Err("not a hash (a plain-text password?); hash the file with \
                      `mosquitto_passwd -U FILE`"
                .to_owned()),
        }
    }

    fn verify(&self, password: &[u8]) -> bool {
        match self {
            Hash::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            } => {
                let mut out = [0u8; 64];
                pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, *iterations, &mut out);
                out.ct_eq(hash).into()
            }
            Hash::Sha512 { salt, hash } => {
                let mut h = Sha512::new();
                h.update(password);
                h.update(salt);
                h.finalize().as_slice().ct_eq(hash).into()
            }
        }
    }
}

/// The users of a password file.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Passwords {
    users: HashMap<String, Hash>,
}

impl fmt::Debug for Passwords {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Passwords")
            .field("users", &self.users.len())
            .finish()
    }
}

/// Why a login was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoginError {
    /// The CONNECT carried no username or no password.
    NoCredentials,
    /// The username is not in the file.
    UnknownUser,
    /// The password does not match.
    BadPassword,
}

impl LoginError {
    /// A short fixed label, for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            LoginError::NoCredentials => "no_credentials",
            LoginError::UnknownUser => "unknown_user",
            LoginError::BadPassword => "bad_password",
        }
    }
}

impl Passwords {
    /// Reads `path` (a regular file of at most
    /// [`MAX_PASSWORD_FILE_BYTES`](ferry_core::files::MAX_PASSWORD_FILE_BYTES));
    /// an error names the file and line.
    pub fn load(path: &Path) -> Result<Passwords, String> {
        use ferry_core::files::{read_text, MAX_PASSWORD_FILE_BYTES};
        let text = read_text(path, MAX_PASSWORD_FILE_BYTES)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Passwords::parse(&text).map_err(|e| format!("{}:{e}", path.display()))
    }

    /// Parses a file's text; an error starts with its line number.
    pub fn parse(text: &str) -> Result<Passwords, String> {
        let mut users = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let n = i + 1;
            let (user, hash) = line
                .split_once(':')
                .ok_or_else(|| format!("{n}: expected `username:hash`"))?;
            if user.is_empty() {
                return Err(format!("{n}: the username is empty"));
            }
            let shown = ferry_core::text::excerpt(user);
            let hash = Hash::parse(hash).map_err(|e| format!("{n}: user {shown}: {e}"))?;
            if users.insert(user.to_owned(), hash).is_some() {
                return Err(format!("{n}: user {shown} is listed twice"));
            }
        }
        Ok(Passwords { users })
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Checks a CONNECT's credentials.
    pub fn check(&self, username: Option<&str>, password: Option<&[u8]>) -> Result<(), LoginError> {
        let (Some(user), Some(password)) = (username, password) else {
            return Err(LoginError::NoCredentials);
        };
        let hash = self.users.get(user).ok_or(LoginError::UnknownUser)?;
        if hash.verify(password) {
            Ok(())
        } else {
            Err(LoginError::BadPassword)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Written by mosquitto_passwd 2.0 (`-b FILE dev1 secret`, then with
    // `-H sha512`).
    const PBKDF2: &str = "dev1:$7$101$pyrkg5dD69seFMeA$34BXkNNZCjo5VqNgu+98SMTP6rsj4PkbeENqCOS82Ca01Wum92dNASxAR5x13/7NXQQHEeFPrn+TujzedWbZVg==";
    const SHA512: &str = "dev2:$6$GpOBKR7/iPs4c23J$BKkJfFIIpVWooD5O59arflgydf8rpLh1dqqsmDNTeC7/dm5S6/1a9BXhZ0rKU5hgxO/qVSFjNgiJEIxiIJZtVw==";

    #[test]
    fn mosquitto_hashes_verify() {
        let p = Passwords::parse(&format!("# devices\n\n{PBKDF2}\r\n{SHA512}\n")).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p.check(Some("dev1"), Some(b"secret")), Ok(()));
        assert_eq!(p.check(Some("dev2"), Some(b"secret")), Ok(()));
        assert_eq!(
            p.check(Some("dev1"), Some(b"Secret")),
            Err(LoginError::BadPassword)
        );
        assert_eq!(
            p.check(Some("dev2"), Some(b"secret ")),
            Err(LoginError::BadPassword)
        );
        assert_eq!(
            p.check(Some("dev3"), Some(b"secret")),
            Err(LoginError::UnknownUser)
        );
        assert_eq!(p.check(Some("dev1"), None), Err(LoginError::NoCredentials));
        assert_eq!(p.check(None, None), Err(LoginError::NoCredentials));
        assert_eq!(format!("{p:?}"), "Passwords { users: 2 }");
    }

    #[test]
    fn bad_lines_name_their_line() {
        let err = |text: &str| Passwords::parse(text).unwrap_err();
        assert_eq!(
            err(&format!("{PBKDF2}\nbob:hunter2")),
            "2: user \"bob\": not a hash (a plain-text password?); hash the file with \
             `mosquitto_passwd -U FILE`"
        );
        assert_eq!(err("nocolon"), "1: expected `username:hash`");
        assert_eq!(err(":$6$a$b"), "1: the username is empty");
        assert!(err("a:$5$x$y").starts_with("1: user \"a\": unknown hash `$5$`"));
        assert!(err("a:$7$0$AAAA$AAAA").contains("iterations `0`"));
        assert!(err("a:$6$AAAA$AAAA").contains("the hash is 3 bytes, not 64"));
        assert!(err("a:$6$AAAA$!!").contains("the hash is not base64"));
        assert_eq!(
            err(&format!("{PBKDF2}\n{}", PBKDF2)),
            "2: user \"dev1\" is listed twice"
        );
    }
}
