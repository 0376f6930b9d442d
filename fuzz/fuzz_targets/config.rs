//! The config loader on a TOML text: the entry point `ferry validate` uses
//! after reading the file (`Config::from_toml_with_warnings`).
//!
//! Beyond "no panic": a refused config has at least one error; each problem
//! is one line (key and message free of line breaks, so the
//! `FILE:LINE: key.path: message` report stays one problem per line) and
//! names a line that exists in the text. And bounded: however long a value
//! or a key in the text, a message is at most `MESSAGE_MAX_CHARS` (+ `…`),
//! and neither a message nor a key holds a control character (a value
//! quoted in a message is an escaped excerpt).
#![no_main]

use std::path::Path;

use ferry_core::text::MESSAGE_MAX_CHARS;
use ferry_gateway::config::{Config, ConfigError};
use libfuzzer_sys::fuzz_target;

fn check(e: &ConfigError, lines: usize, text: &str) {
    assert!(!e.message.is_empty(), "{e:?}");
    assert!(!e.message.contains('\n'), "{e:?}\n--- text:\n{text}");
    assert!(!e.key.contains('\n'), "{e:?}\n--- text:\n{text}");
    assert!(
        e.message.chars().count() <= MESSAGE_MAX_CHARS + 1,
        "{} chars: {e:?}",
        e.message.chars().count()
    );
    assert!(!e.message.chars().any(char::is_control), "{e:?}");
    assert!(!e.key.chars().any(char::is_control), "{e:?}");
    if let Some(line) = e.line {
        assert!((1..=lines).contains(&line), "line {line} of {lines}: {e:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // A position just past a final line break is on the line after it.
    let lines = text.split('\n').count();
    match Config::from_toml_with_warnings(text, Path::new("fuzz.toml")) {
        Ok((config, warnings)) => {
            assert!(!config.sources.is_empty());
            for w in &warnings.warnings {
                check(w, lines, text);
            }
            let _ = warnings.to_string();
        }
        Err(errors) => {
            assert!(!errors.errors.is_empty(), "refused without an error");
            for e in errors.errors.iter().chain(&errors.warnings) {
                check(e, lines, text);
            }
            let shown = errors.to_string();
            assert_eq!(
                shown.lines().count(),
                errors.errors.len() + errors.warnings.len(),
                "{shown}"
            );
        }
    }
});
