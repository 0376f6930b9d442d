//! `host:port` as an operator writes it: one parser for every address in the
//! config (an uplink's endpoint, a subscriber's broker, a Modbus device).
//!
//! The host is a DNS name (letters, digits, `.`, `-`, `_`; at most 253
//! bytes), an IPv4 address, or an IPv6 address in brackets (`[fd00::1]:502`).
//! The port is 1 to 65535; where a protocol has a usual port (Modbus: 502)
//! it may be left out. A URL (`mqtts://...`) is refused with a message that
//! says to drop the scheme.

use std::fmt;
use std::net::Ipv6Addr;

use crate::text::{escape_to, EXCERPT_MAX_CHARS};

/// A parsed `host:port`; IPv6 hosts are held without their brackets.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

/// Why a `host:port` was refused; its message, to follow the value quoted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostPortError {
    /// No `:port`, and the protocol has no usual port. Holds an example.
    NoPort(&'static str),
    /// A URL: `scheme://`.
    Scheme(&'static str),
    EmptyHost,
    /// `fd00::1:502`: which colon ends the host?
    UnbracketedIpv6,
    /// `[fd00::1:502`.
    UnbalancedBracket,
    /// Not a DNS name, an IPv4 address or a bracketed IPv6 address.
    BadHost(String),
    /// Not 1 to 65535.
    BadPort(String),
}

impl fmt::Display for HostPortError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPortError::NoPort(example) => {
                write!(f, "expected host:port, such as `{example}`")
            }
            HostPortError::Scheme(example) => {
                write!(f, "must be host:port without a scheme, such as `{example}`")
            }
            HostPortError::EmptyHost => f.write_str("the host is empty"),
            HostPortError::UnbracketedIpv6 => {
                f.write_str("an IPv6 address must be in brackets: `[fd00::1]:PORT`")
            }
            HostPortError::UnbalancedBracket => {
                f.write_str("unbalanced `[` around an IPv6 address")
            }
            HostPortError::BadHost(host) => write!(
                f,
                "`{}` is not a host name or an IP address",
                escape_to(host, EXCERPT_MAX_CHARS)
            ),
            HostPortError::BadPort(port) => write!(
                f,
                "`{}` is not a port number (1 to 65535)",
                escape_to(port, EXCERPT_MAX_CHARS)
            ),
        }
    }
}

impl std::error::Error for HostPortError {}

impl HostPort {
    /// Parses `s` (trimmed). `default_port` is the protocol's usual port, if
    /// it may be left out; `example` is shown when the port is missing.
    pub fn parse(
        s: &str,
        default_port: Option<u16>,
        example: &'static str,
    ) -> Result<HostPort, HostPortError> {
        let s = s.trim();
        if s.contains("://") {
            return Err(HostPortError::Scheme(example));
        }
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (v6, after) = rest
                .split_once(']')
                .ok_or(HostPortError::UnbalancedBracket)?;
            if v6.parse::<Ipv6Addr>().is_err() {
                return Err(HostPortError::BadHost(v6.to_owned()));
            }
            match after {
                "" => (v6, None),
                _ => match after.strip_prefix(':') {
                    Some(port) => (v6, Some(port)),
                    None => return Err(HostPortError::BadHost(s.to_owned())),
                },
            }
        } else {
            match s.rsplit_once(':') {
                Some((h, _)) if h.contains(':') => return Err(HostPortError::UnbracketedIpv6),
                Some((h, p)) => (h, Some(p)),
                None => (s, None),
            }
        };
        if host.is_empty() {
            return Err(HostPortError::EmptyHost);
        }
        if !host.contains(':') && !is_dns_name(host) {
            return Err(HostPortError::BadHost(host.to_owned()));
        }
        let port = match (port, default_port) {
            (Some(p), _) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| HostPortError::BadPort(p.to_owned()))?,
            (None, Some(default)) => default,
            (None, None) => return Err(HostPortError::NoPort(example)),
        };
        Ok(HostPort {
            host: host.to_owned(),
            port,
        })
    }
}

/// Letters, digits, `.`, `-` and `_`, at most 253 bytes (IPv4 addresses
/// are of this form too).
fn is_dns_name(host: &str) -> bool {
    host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

/// `host:port`, with an IPv6 host in brackets again.
impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<HostPort, HostPortError> {
        HostPort::parse(s, None, "localhost:1883")
    }

    fn ok(host: &str, port: u16) -> Result<HostPort, HostPortError> {
        Ok(HostPort {
            host: host.into(),
            port,
        })
    }

    #[test]
    fn names_and_addresses_with_ports() {
        assert_eq!(parse("localhost:1883"), ok("localhost", 1883));
        assert_eq!(parse(" 10.0.0.1:1 "), ok("10.0.0.1", 1));
        assert_eq!(parse("[::1]:1884"), ok("::1", 1884));
        assert_eq!(
            parse("abc-ats.iot.eu-west-1.amazonaws.com:8883"),
            ok("abc-ats.iot.eu-west-1.amazonaws.com", 8883)
        );
        assert_eq!(parse("[fd00::1]:502").unwrap().to_string(), "[fd00::1]:502");
        assert_eq!(parse("plc:502").unwrap().to_string(), "plc:502");
    }

    #[test]
    fn a_usual_port_may_be_left_out() {
        let modbus = |s| HostPort::parse(s, Some(502), "plc:502");
        assert_eq!(modbus("plc"), ok("plc", 502));
        assert_eq!(modbus("[fd00::1]"), ok("fd00::1", 502));
        assert_eq!(modbus("fd00::1"), Err(HostPortError::UnbracketedIpv6));
        assert_eq!(
            parse("localhost"),
            Err(HostPortError::NoPort("localhost:1883"))
        );
    }

    #[test]
    fn every_refusal_says_why() {
        let cases = [
            (
                "::1:1883",
                "an IPv6 address must be in brackets: `[fd00::1]:PORT`",
            ),
            (":1883", "the host is empty"),
            ("h:99999", "`99999` is not a port number (1 to 65535)"),
            ("h:0", "`0` is not a port number (1 to 65535)"),
            ("h:", "`` is not a port number (1 to 65535)"),
            ("[::1:1883", "unbalanced `[` around an IPv6 address"),
            ("[zz]:1", "`zz` is not a host name or an IP address"),
            ("[::1]x", "`[::1]x` is not a host name or an IP address"),
            ("a b:1", "`a b` is not a host name or an IP address"),
            (
                "mqtts://h:8883",
                "must be host:port without a scheme, such as `localhost:1883`",
            ),
        ];
        for (input, message) in cases {
            assert_eq!(parse(input).unwrap_err().to_string(), message, "{input}");
        }
        let long = format!("{}:1", "a".repeat(254));
        assert!(matches!(parse(&long), Err(HostPortError::BadHost(_))));
    }
}
