//! The checks `ferry run` would otherwise only meet when it starts: every
//! listener on an address of its own, a `data_dir` that is (or can be made)
//! a directory, an uplink's TLS files that load. They run in the loader
//! that `ferry validate`, `ferry run` and a reload share, so what validate
//! passes, run starts, and both report a problem the same way
//! (`FILE:LINE: key.path: message`, exit 64).

use std::net::SocketAddr;
use std::path::Path;

use ferry_core::files::kind;
use ferry_core::text::escape_to;

use super::UplinkConfig;
use ferry_core::report::{KeyPath, Report};

/// Who listens where: a key path, what it is in words, and the address.
pub(crate) struct Listener {
    pub(crate) key: KeyPath,
    pub(crate) what: String,
    pub(crate) addr: SocketAddr,
}

/// Whether binding `a` and `b` in one process conflicts: the same port,
/// and the same address, or one of them every address (`0.0.0.0` takes
/// every IPv4 address, `[::]` every address, IPv4 too, as Linux binds it
/// without `IPV6_V6ONLY`; an IPv4-mapped IPv6 address is its IPv4 address).
/// Port 0 asks for a free port: never a conflict.
pub(crate) fn overlap(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() != b.port() || a.port() == 0 {
        return false;
    }
    // An IPv4-mapped IPv6 address (`[::ffff:127.0.0.1]`) is the IPv4 one.
    let covers = |wide: SocketAddr, other: SocketAddr| {
        wide.ip().is_unspecified() && (wide.is_ipv6() || other.ip().to_canonical().is_ipv4())
    };
    a.ip().to_canonical() == b.ip().to_canonical() || covers(a, b) || covers(b, a)
}

/// Errors at each listener whose address another one (earlier in the
/// list) already takes.
pub(crate) fn check_listeners(listeners: &[Listener], report: &mut Report) {
    for (i, l) in listeners.iter().enumerate() {
        let Some(first) = listeners[..i].iter().find(|f| overlap(f.addr, l.addr)) else {
            continue;
        };
        let message = if first.addr == l.addr {
            format!("{} is already the listen address of {}", l.addr, first.what)
        } else {
            format!(
                "{} overlaps {}, the listen address of {}; give each listener its own port",
                l.addr, first.addr, first.what
            )
        };
        report.error(l.key.clone(), message);
    }
}

/// Checks that `dir` (`gateway.data_dir`) is a directory or can be created
/// as one: not a device, a file or a dangling symlink, and no part of its
/// path a file. (Whether it is writable is the store's to say when it
/// opens: a read-only file system is a run-time fault, exit 73.)
pub(crate) fn check_data_dir(at: KeyPath, dir: &Path, report: &mut Report) {
    if dir.as_os_str().is_empty() {
        report.error(at, "must not be empty");
        return;
    }
    let text = dir.display().to_string();
    let shown = escape_to(&text, 256);
    if text.contains('\0') {
        report.error(at, format!("{shown} contains a NUL byte"));
        return;
    }
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(meta) => report.error(
            at,
            format!(
                "{shown} is {}, not a directory; name a directory for the store",
                kind(&meta.file_type())
            ),
        ),
        Err(e) if missing(&e) => {
            if std::fs::symlink_metadata(dir).is_ok() {
                report.error(
                    at,
                    format!("{shown} is a symbolic link to something that does not exist"),
                );
                return;
            }
            // Missing: created at start, if its nearest existing ancestor
            // is a directory.
            let mut up = dir.parent();
            while let Some(parent) = up {
                let parent = if parent.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    parent
                };
                match std::fs::metadata(parent) {
                    Ok(meta) if meta.is_dir() => return,
                    Ok(meta) => {
                        report.error(
                            at,
                            format!(
                                "{shown} cannot be created: {} is {}, not a directory",
                                escape_to(&parent.display().to_string(), 256),
                                kind(&meta.file_type())
                            ),
                        );
                        return;
                    }
                    Err(e) if missing(&e) => up = parent.parent(),
                    Err(e) => {
                        report.error(at, format!("{shown} cannot be created: {e}"));
                        return;
                    }
                }
            }
        }
        Err(e) => report.error(at, format!("{shown} cannot be used: {e}")),
    }
}

/// Whether a path is missing: not found, or a part of it not a directory
/// (the walk up then finds which).
fn missing(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR)
}

/// Loads an uplink's TLS files as `ferry run` does (PEM certificates and a
/// key that fit together), once each is readable ([`super::uplink_check`]
/// checked that); a problem is reported at
/// the key of the file at fault.
pub(crate) fn check_uplink_tls(at: &KeyPath, u: &UplinkConfig, report: &mut Report) {
    use crate::uplink::tls::{client_config, TlsError};
    let (Some(ca), Some(cert), Some(key)) = (&u.ca, &u.cert, &u.key) else {
        return;
    };
    if u.plaintext {
        return;
    }
    let Err(e) = client_config(ca, cert, key, &u.alpn) else {
        return;
    };
    let name = match &e {
        TlsError::Read { what, .. } | TlsError::NoCertificate { what, .. } => {
            if *what == "CA" {
                "ca"
            } else {
                "cert"
            }
        }
        TlsError::BadCa { .. } => "ca",
        TlsError::NoKey { .. } | TlsError::Mismatch(_) => "key",
    };
    report.error(at.key(name), e.to_string());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data_dir_problem(dir: &Path) -> Option<String> {
        let mut report = Report::default();
        check_data_dir(KeyPath::root("gateway").key("data_dir"), dir, &mut report);
        report.errors.first().map(|p| p.message.clone())
    }

    #[test]
    fn data_dirs_that_are_or_can_become_directories_pass() {
        let tmp = tempfile::tempdir().unwrap();
        let t = tmp.path();
        assert_eq!(data_dir_problem(t), None);
        assert_eq!(data_dir_problem(&t.join("new/deeper")), None);
        assert_eq!(data_dir_problem(Path::new("relative-missing")), None);
        let dangling = t.join("dangling");
        std::os::unix::fs::symlink(t.join("nowhere"), &dangling).unwrap();
        assert_eq!(
            data_dir_problem(&dangling),
            Some(format!(
                "{} is a symbolic link to something that does not exist",
                dangling.display()
            ))
        );
        assert_eq!(
            data_dir_problem(Path::new("/dev/null")),
            Some(
                "/dev/null is a character device, not a directory; name a directory for the store"
                    .to_owned()
            )
        );
        assert_eq!(
            data_dir_problem(Path::new("/dev/null/x/y")),
            Some(
                "/dev/null/x/y cannot be created: /dev/null is a character device, not a directory"
                    .to_owned()
            )
        );
        assert_eq!(
            data_dir_problem(Path::new("")),
            Some("must not be empty".to_owned())
        );
    }

    #[test]
    fn listeners_overlap_on_one_port_and_address_or_a_wildcard() {
        let a = |s: &str| s.parse().unwrap();
        assert!(overlap(a("127.0.0.1:1883"), a("127.0.0.1:1883")));
        assert!(overlap(a("0.0.0.0:1883"), a("127.0.0.1:1883")));
        assert!(overlap(a("127.0.0.1:1883"), a("0.0.0.0:1883")));
        assert!(overlap(a("[::]:1883"), a("127.0.0.1:1883")));
        assert!(overlap(a("[::1]:1883"), a("[::]:1883")));
        assert!(!overlap(a("0.0.0.0:1883"), a("[::1]:1883")));
        assert!(!overlap(a("127.0.0.1:1883"), a("127.0.0.2:1883")));
        assert!(!overlap(a("127.0.0.1:1883"), a("127.0.0.1:1884")));
        assert!(!overlap(a("127.0.0.1:0"), a("127.0.0.1:0")));
        assert!(overlap(a("[::ffff:127.0.0.1]:1883"), a("127.0.0.1:1883")));
        assert!(overlap(a("0.0.0.0:1883"), a("[::ffff:10.0.0.1]:1883")));
    }
}
