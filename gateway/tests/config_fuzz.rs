//! The config loader against mangled input: whatever the bytes, it returns
//! a config or a list of errors, each naming where; it never panics.
//! Bounded: a fixed number of mutations from a fixed seed, so a failure
//! reproduces.

use std::path::Path;

use ferry_gateway::config::Config;

const SEEDS: [&str; 2] = [
    include_str!("../../config/default.toml"),
    include_str!("../../config/iot-core.toml"),
];

/// Pieces that steer mutations toward the parser's interesting paths.
const TOKENS: [&str; 16] = [
    "[",
    "]",
    "[[",
    "\"",
    "=",
    "\n",
    "{",
    "}",
    ",",
    "0",
    "-1",
    "1e999",
    "\"1x\"",
    "[sources.x]",
    "type = \"mqtt_subscribe\"",
    "\u{1F600}",
];

fn mutate(rng: &mut fastrand::Rng, text: &str) -> String {
    let mut bytes = text.as_bytes().to_vec();
    for _ in 0..rng.usize(1..8) {
        let at = rng.usize(0..=bytes.len());
        match rng.u8(0..4) {
            0 if !bytes.is_empty() => {
                let end = (at + rng.usize(1..40)).min(bytes.len());
                bytes.drain(at.min(end)..end);
            }
            1 => {
                let t = TOKENS[rng.usize(0..TOKENS.len())];
                bytes.splice(at..at, t.bytes());
            }
            2 if at < bytes.len() => bytes[at] = rng.u8(..),
            _ => {
                // Duplicate a line elsewhere: duplicate keys and tables.
                let s = String::from_utf8_lossy(&bytes).into_owned();
                let lines: Vec<&str> = s.lines().collect();
                if !lines.is_empty() {
                    let line = lines[rng.usize(0..lines.len())];
                    bytes.splice(at..at, format!("\n{line}\n").into_bytes());
                }
            }
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

#[test]
fn mangled_configs_give_errors_never_panics() {
    let mut rng = fastrand::Rng::with_seed(0xF3_77_1E);
    let mut rejected = 0;
    for i in 0..2_000 {
        let text = mutate(&mut rng, SEEDS[i % SEEDS.len()]);
        match Config::from_toml(&text, Path::new("fuzz.toml")) {
            Ok(_) => {}
            Err(errors) => {
                rejected += 1;
                let shown = errors.to_string();
                assert!(
                    shown
                        .lines()
                        .all(|l| l.starts_with("ferry: config error: fuzz.toml")
                            || l.starts_with("ferry: config warning: fuzz.toml")),
                    "every line names the file:\n{shown}\n--- input:\n{text}"
                );
            }
        }
    }
    assert!(
        rejected > 500,
        "the mutations reach the error paths ({rejected})"
    );
}
