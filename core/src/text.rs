//! Text from outside (the network, a device, an operator's file), made safe
//! to write into a log line or an error message: control characters are
//! escaped, so a value cannot forge a log line (`\n`) or drive a terminal
//! (ESC), and its length is bounded, so a 50 MB value is not a 50 MB line.
//!
//! Every logged value that came from outside goes through [`escape`] (or is
//! formatted with `?`), and every error message that quotes one through
//! [`excerpt`]. Stored text (a dead letter's reason, served as JSON by the
//! API) keeps the raw value.

use std::fmt;

/// The most characters of a value [`escape`] writes before `…`.
pub const LOG_MAX_CHARS: usize = 512;

/// The most characters of a value [`excerpt`] quotes before `…`.
pub const EXCERPT_MAX_CHARS: usize = 64;

/// `text` as it is logged: backslashes, double quotes, control and other
/// non-printable characters escaped the way Rust writes them (`\n`,
/// `\u{1b}`), cut after [`LOG_MAX_CHARS`] characters with `…`.
pub fn escape(text: &str) -> Escaped<'_> {
    Escaped {
        text,
        max_chars: LOG_MAX_CHARS,
    }
}

/// [`escape`] with a limit of its own, e.g. for a path in a message.
pub fn escape_to(text: &str, max_chars: usize) -> Escaped<'_> {
    Escaped { text, max_chars }
}

/// `text` quoted in an error message: `"..."`, escaped as by [`escape`],
/// cut after [`EXCERPT_MAX_CHARS`] characters with `…` and then its length,
/// e.g. `"aaaa…" (52428800 bytes)`.
pub fn excerpt(text: &str) -> String {
    excerpt_to(text, EXCERPT_MAX_CHARS)
}

/// [`excerpt`] with a limit of its own (a path may be longer than a value).
pub fn excerpt_to(text: &str, max_chars: usize) -> String {
    let shown = Escaped { text, max_chars };
    if shown.cut() {
        format!("\"{shown}\" ({} bytes)", text.len())
    } else {
        format!("\"{shown}\"")
    }
}

/// The most characters of a message [`bound_message`] keeps before `…`.
pub const MESSAGE_MAX_CHARS: usize = 1024;

/// A message already written (by serde, a parser, a check) made safe to
/// print: every quoted value in it (`"..."` as `{:?}` writes it, or
/// `` `...` ``) is cut after [`EXCERPT_MAX_CHARS`] characters with `…`,
/// control characters left anywhere are escaped, and the whole is cut after
/// [`MESSAGE_MAX_CHARS`] characters. What the config checks apply to every
/// problem they report, whoever wrote its message.
pub fn bound_message(message: &str) -> String {
    let chars: Vec<char> = message.chars().collect();
    let mut out = String::with_capacity(message.len().min(MESSAGE_MAX_CHARS * 4));
    let mut shown = 0usize;
    let mut i = 0;
    while i < chars.len() {
        if shown >= MESSAGE_MAX_CHARS {
            out.push('…');
            break;
        }
        let c = chars[i];
        if c == '"' || c == '`' {
            // The quoted span: up to the closing quote (past `\"` escapes
            // in a `"` span), or the end of the message.
            let mut j = i + 1;
            while j < chars.len() && chars[j] != c {
                if c == '"' && chars[j] == '\\' {
                    j += 1;
                }
                j += 1;
            }
            let end = j.min(chars.len());
            out.push(c);
            for (n, &q) in chars[i + 1..end].iter().enumerate() {
                if n == EXCERPT_MAX_CHARS {
                    out.push('…');
                    break;
                }
                push_printable(&mut out, q);
            }
            if j < chars.len() {
                out.push(c);
            }
            shown += EXCERPT_MAX_CHARS.min(end - i) + 2;
            i = j + 1;
            continue;
        }
        push_printable(&mut out, c);
        shown += 1;
        i += 1;
    }
    // `shown` counts a quoted span by its excerpt; escapes and the last
    // span can take the text past the bound: cut it there.
    if let Some((at, _)) = out.char_indices().nth(MESSAGE_MAX_CHARS) {
        if !out[at..].starts_with('…') || out[at..].chars().count() > 1 {
            out.truncate(at);
            out.push('…');
        }
    }
    out
}

/// `c`, escaped if it is a control character.
fn push_printable(out: &mut String, c: char) {
    if c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    {
        out.extend(c.escape_debug());
    } else {
        out.push(c);
    }
}

/// See [`escape`]. `Display` writes the escaped, bounded text; `Debug`
/// the same in double quotes (as `{:?}` writes a `str`, so a log field
/// `client = ?escape(id)` reads `client="dev9"`).
#[derive(Clone, Copy)]
pub struct Escaped<'a> {
    text: &'a str,
    max_chars: usize,
}

impl Escaped<'_> {
    /// Whether the text is longer than what is shown.
    fn cut(&self) -> bool {
        self.text.chars().nth(self.max_chars).is_some()
    }
}

impl fmt::Debug for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use fmt::Write;
        for (i, c) in self.text.chars().enumerate() {
            if i == self.max_chars {
                return f.write_char('…');
            }
            match c {
                '\\' => f.write_str("\\\\")?,
                '"' => f.write_str("\\\"")?,
                // Printable text as it is (`escape_debug` also escapes `'`).
                '\'' => f.write_char(c)?,
                c => write!(f, "{}", c.escape_debug())?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        let forged = "a\nINFO ferry: forged\u{1b}[31m\r\t\0\u{7f}\u{2028}\u{202e}\\\"'é";
        assert_eq!(
            escape(forged).to_string(),
            "a\\nINFO ferry: forged\\u{1b}[31m\\r\\t\\0\\u{7f}\\u{2028}\\u{202e}\\\\\\\"'é"
        );
        let escaped = escape(forged).to_string();
        assert!(escaped.chars().all(|c| !c.is_control()), "{escaped}");
    }

    #[test]
    fn messages_are_bounded() {
        let long = "y".repeat(100_000);
        let m = format!("invalid value: string {long:?}, expected a size; `{long}` too\n\u{1b}[2J");
        assert_eq!(
            bound_message(&m),
            format!(
                "invalid value: string \"{y}…\", expected a size; `{y}…` too\\n\\u{{1b}}[2J",
                y = "y".repeat(64)
            )
        );
        let m = format!("{:?} and \"unterminated {long}", "a\"b");
        assert_eq!(
            bound_message(&m),
            format!("\"a\\\"b\" and \"unterminated {}…", "y".repeat(64 - 13))
        );
        assert_eq!(bound_message(&long).chars().count(), MESSAGE_MAX_CHARS + 1);
        // Quoted spans near the end, and escapes, stay within the bound.
        let near = format!(
            "{}`{}` `{}`",
            "x".repeat(1000),
            "y".repeat(500),
            "\u{1}".repeat(90)
        );
        let spans = format!("{}`{}`", "x".repeat(1000), "\u{7}".repeat(300));
        for m in [
            near,
            spans,
            format!("{}`{}`", "x".repeat(1020), "\u{1b}".repeat(200)),
        ] {
            let b = bound_message(&m);
            assert!(
                b.chars().count() <= MESSAGE_MAX_CHARS + 1,
                "{}",
                b.chars().count()
            );
            assert!(!b.chars().any(char::is_control));
        }
        assert_eq!(bound_message("plain `x` \"y\""), "plain `x` \"y\"");
    }

    #[test]
    fn long_values_are_cut() {
        let long = "x".repeat(50 << 20);
        let e = excerpt(&long);
        assert_eq!(e, format!("\"{}…\" (52428800 bytes)", "x".repeat(64)));
        assert_eq!(escape(&long).to_string().chars().count(), LOG_MAX_CHARS + 1);
        assert_eq!(excerpt("short"), "\"short\"");
        assert_eq!(excerpt(&"é".repeat(64)), format!("\"{}\"", "é".repeat(64)));
        assert_eq!(excerpt(""), "\"\"");
    }
}
