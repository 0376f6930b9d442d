//! Collecting problems while a config is checked: key paths, errors and
//! warnings, and the small range checks every section uses. Each component
//! checks its own config into a [`Report`]; the gateway's config loader
//! gives every problem its line in the file.

use std::fmt;

use serde::de::DeserializeOwned;

use crate::text::{bound_message, excerpt, EXCERPT_MAX_CHARS};
use std::time::Duration;

/// One step of a key path: a table key or an array index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// Where a value lives in the document, e.g. `uplinks.iot_core.alpn[0]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyPath(pub Vec<Seg>);

impl KeyPath {
    /// The path of a top-level key.
    pub fn root(key: &str) -> KeyPath {
        KeyPath(vec![Seg::Key(key.to_owned())])
    }

    /// This path extended by a table key.
    pub fn key(&self, key: &str) -> KeyPath {
        let mut p = self.clone();
        p.0.push(Seg::Key(key.to_owned()));
        p
    }

    /// This path extended by an array index.
    pub fn index(&self, index: usize) -> KeyPath {
        let mut p = self.clone();
        p.0.push(Seg::Index(index));
        p
    }

    /// This path extended by `rel`, a path below it.
    pub fn child(&self, rel: &KeyPath) -> KeyPath {
        let mut p = self.clone();
        p.0.extend(rel.0.iter().cloned());
        p
    }

    /// This path extended by the path `serde_path_to_error` found an error at.
    pub fn join(&self, path: &serde_path_to_error::Path) -> KeyPath {
        use serde_path_to_error::Segment;
        let mut p = self.clone();
        for seg in path.iter() {
            match seg {
                Segment::Map { key } => p.0.push(Seg::Key(key.clone())),
                Segment::Seq { index } => p.0.push(Seg::Index(*index)),
                Segment::Enum { .. } | Segment::Unknown => {}
            }
        }
        p
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Index(n) => write!(f, "[{n}]")?,
                Seg::Key(k) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    let bare = !k.is_empty()
                        && k.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
                    if bare && k.len() <= EXCERPT_MAX_CHARS {
                        f.write_str(k)?;
                    } else {
                        f.write_str(&excerpt(k))?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// A problem before its line is looked up.
#[derive(Clone, Debug)]
pub struct Problem {
    pub path: KeyPath,
    pub message: String,
}

/// `key.path: message`, or the message alone at the empty path.
impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.0.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// The errors a check reports below the empty key path, as
/// `key.path: message` lines: what a component's own errors carry when it
/// refuses its config at run time, outside the config loader.
pub fn problem_lines(check: impl FnOnce(&KeyPath, &mut Report)) -> Vec<String> {
    let mut report = Report::default();
    check(&KeyPath::default(), &mut report);
    report.errors.iter().map(ToString::to_string).collect()
}

/// The errors and warnings found so far.
#[derive(Debug, Default)]
pub struct Report {
    pub errors: Vec<Problem>,
    pub warnings: Vec<Problem>,
    /// Keys already reported as invalid (and replaced by their defaults):
    /// problems at or below them are not reported again.
    suppressed: Vec<KeyPath>,
}

impl Report {
    /// From now on, problems at or below `path` are not reported.
    pub fn suppress(&mut self, path: KeyPath) {
        self.suppressed.push(path);
    }

    /// Whether `path` was reported invalid (and holds its default now).
    pub fn is_suppressed(&self, path: &KeyPath) -> bool {
        self.suppressed.iter().any(|s| path.0.starts_with(&s.0))
    }

    pub fn error(&mut self, path: KeyPath, message: impl Into<String>) {
        if self.is_suppressed(&path) {
            return;
        }
        self.errors.push(Problem {
            path,
            message: one_line(&message.into()),
        });
    }

    pub fn warn(&mut self, path: KeyPath, message: impl Into<String>) {
        if self.is_suppressed(&path) {
            return;
        }
        self.warnings.push(Problem {
            path,
            message: one_line(&message.into()),
        });
    }

    /// Errors unless `min <= value <= max`.
    pub fn duration_in(&mut self, path: KeyPath, value: Duration, min: Duration, max: Duration) {
        if value < min || value > max {
            self.error(
                path,
                format!(
                    "must be between {} and {}, got {}",
                    fmt_duration(min),
                    fmt_duration(max),
                    fmt_duration(value)
                ),
            );
        }
    }

    /// Errors unless `value <= max`, and says so when the number written
    /// overflowed (a size parses to 16EiB, saturated, when its number and
    /// unit do not fit in 64 bits: `"99999999999999999999EiB"`). Returns
    /// whether it is within.
    pub fn size_at_most(&mut self, path: KeyPath, value: u64, max: u64) -> bool {
        if value == u64::MAX {
            self.error(
                path,
                format!(
                    "is too large: the size overflows 16EiB; at most {}",
                    fmt_bytes(max)
                ),
            );
            false
        } else if value > max {
            self.error(
                path,
                format!(
                    "must be at most {}, got {}",
                    fmt_bytes(max),
                    fmt_bytes(value)
                ),
            );
            false
        } else {
            true
        }
    }

    /// Errors unless `min <= value <= max`.
    pub fn int_in(&mut self, path: KeyPath, value: u64, min: u64, max: u64) {
        if value < min || value > max {
            self.error(
                path,
                format!("must be between {min} and {max}, got {value}"),
            );
        }
    }
}

/// A message on one line: a multi-line message (TOML syntax errors carry
/// some) has its lines joined with "; ". Bounded too, whoever wrote it: a
/// value quoted in it is cut to an excerpt, control characters are escaped
/// ([`crate::text::bound_message`]), so a 1 MB value in the file
/// is not a 1 MB error line.
pub fn one_line(message: &str) -> String {
    if !message.contains('\n') {
        return bound_message(message.trim());
    }
    let joined = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    bound_message(&joined)
}

/// A duration the way a config file writes it: `10ms`, `1s`, `2m`.
pub fn fmt_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string().replace(' ', "")
}

/// A byte size the way a config file writes it: `128KiB`, `4MiB`, `1000B`.
pub fn fmt_bytes(n: u64) -> String {
    const UNITS: [(u64, &str); 5] = [
        (1 << 50, "PiB"),
        (1 << 40, "TiB"),
        (1 << 30, "GiB"),
        (1 << 20, "MiB"),
        (1 << 10, "KiB"),
    ];
    for (size, unit) in UNITS {
        if n >= size && n % size == 0 {
            return format!("{}{unit}", n / size);
        }
    }
    format!("{n}B")
}

/// Checks a configured name (of a source or an uplink): 1 to 64 bytes of
/// `a-z`, `0-9`, `_` and `-`. Names end up in metric labels and store keys.
pub fn check_name(report: &mut Report, path: KeyPath, what: &str, name: &str) {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if !ok {
        report.error(
            path,
            format!(
                "invalid {what} name {}: use 1 to 64 characters of a-z, 0-9, '_' and '-'",
                excerpt(name)
            ),
        );
    }
}

/// Deserializes a `T` from `value`; each problem is reported at `at` joined
/// with the path inside `value` where it was found.
///
/// serde stops at the first problem, so to find them all, the key at fault is
/// taken out and the rest tried again. What is left (with defaults for the
/// keys taken out) is returned so the other keys can still be checked; later
/// problems about the keys taken out are not reported. `None` when nothing
/// usable is left (a required key is missing or was taken out).
pub fn typed<T: DeserializeOwned>(
    mut value: toml::Value,
    at: &KeyPath,
    report: &mut Report,
) -> Option<T> {
    let mut removed: Vec<String> = Vec::new();
    loop {
        let e = match serde_path_to_error::deserialize::<_, T>(value.clone()) {
            Ok(v) => return Some(v),
            Err(e) => e,
        };
        let message = friendlier(e.inner().message());
        let missing = message
            .strip_prefix("missing field `")
            .and_then(|m| m.split('`').next());
        if missing.is_some_and(|m| removed.iter().any(|r| r == m)) {
            return None;
        }
        let path = at.join(e.path());
        let key = match path.0.get(at.0.len()) {
            Some(Seg::Key(key)) => key.clone(),
            _ => {
                report.error(path, message);
                return None;
            }
        };
        report.error(path, message);
        let toml::Value::Table(table) = &mut value else {
            return None;
        };
        table.remove(&key)?;
        report.suppress(at.key(&key));
        removed.push(key);
    }
}

/// serde's and the value crates' messages, in an operator's words.
fn friendlier(message: &str) -> String {
    const REWRITES: [(&str, &str); 11] = [
        (
            "expected parsable string",
            "expected a size like \"64KiB\" or \"4MiB\"",
        ),
        (
            "expected a duration",
            "expected a duration like \"10ms\", \"30s\" or \"2m\"",
        ),
        (
            "invalid socket address syntax",
            "expected an IP address and port like \"127.0.0.1:9108\"",
        ),
        (
            "expected a nonzero usize",
            "expected an integer of at least 1",
        ),
        (
            "expected a nonzero u32",
            "expected an integer of at least 1",
        ),
        (
            "expected a nonzero u16",
            "expected an integer of at least 1",
        ),
        ("expected usize", "expected an integer"),
        ("expected u64", "expected an integer"),
        ("expected u16", "expected an integer"),
        ("expected u8", "expected an integer"),
        ("expected i64", "expected an integer"),
    ];
    let mut out = message.to_owned();
    for (from, to) in REWRITES {
        out = out.replace(from, to);
    }
    out
}
