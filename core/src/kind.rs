//! Dead-letter kinds as data: a kind is a short label (`not_json`,
//! `too_many_devices`, ...) chosen by whoever rejects a reading, and used as
//! a metric label and in the API. The store keeps the label as text and
//! reads it back through [`intern`], so it needs no list of the sources'
//! kinds.
//!
//! A kind read back from a file is outside input: only a label of at most
//! [`MAX_KIND_BYTES`] lowercase ASCII letters, digits and `_` is kept, and at
//! most [`MAX_KINDS`] distinct ones are interned for the life of the
//! process (each is leaked once: a few hundred bytes in all); anything else
//! reads back as [`OTHER`].

use std::collections::BTreeSet;
use std::sync::Mutex;

/// What a kind that cannot be kept reads back as.
pub const OTHER: &str = "other";

/// The longest kind kept.
pub const MAX_KIND_BYTES: usize = 32;

/// The most distinct kinds kept in one process (Ferry's sources and store
/// use 14).
pub const MAX_KINDS: usize = 64;

/// The process's kinds.
static KINDS: Interner = Interner::new();

/// Whether `s` is a well-formed kind.
pub fn is_valid(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_KIND_BYTES
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// The `'static` label equal to `s`, or [`OTHER`] when `s` is not a
/// well-formed kind or [`MAX_KINDS`] others are already kept.
pub fn intern(s: &str) -> &'static str {
    KINDS.intern(s)
}

/// A bounded set of interned kinds.
struct Interner(Mutex<BTreeSet<&'static str>>);

impl Interner {
    const fn new() -> Interner {
        Interner(Mutex::new(BTreeSet::new()))
    }

    fn intern(&self, s: &str) -> &'static str {
        if !is_valid(s) {
            return OTHER;
        }
        // A poisoned lock only means another thread panicked while holding
        // it; the set itself is always whole.
        let mut kinds = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(k) = kinds.get(s) {
            return k;
        }
        if kinds.len() >= MAX_KINDS {
            return OTHER;
        }
        let k: &'static str = Box::leak(s.into());
        kinds.insert(k);
        k
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_read_back_as_themselves_and_the_rest_as_other() {
        let a = intern("not_json");
        assert_eq!(a, "not_json");
        // The same label is interned once.
        assert!(std::ptr::eq(a, intern("not_json")));
        for bad in ["", "Not_Json", "a-b", "é", &"x".repeat(MAX_KIND_BYTES + 1)] {
            assert_eq!(intern(bad), OTHER, "{bad:?}");
        }
        assert_eq!(intern(&"x".repeat(MAX_KIND_BYTES)).len(), MAX_KIND_BYTES);
    }

    #[test]
    fn at_most_max_kinds_are_kept() {
        let kinds = Interner::new();
        for i in 0..MAX_KINDS {
            assert_eq!(kinds.intern(&format!("k{i}")), format!("k{i}"));
        }
        assert_eq!(kinds.intern("k0"), "k0");
        assert_eq!(kinds.intern("one_too_many"), OTHER);
        assert_eq!(kinds.0.lock().unwrap().len(), MAX_KINDS);
    }
}
