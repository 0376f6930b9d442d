//! Topic templates: which topics a source accepts and which device a topic
//! names.
//!
//! A template is an MQTT topic filter in which one whole level may be the
//! placeholder `{device}`: `sensors/{device}/telemetry` subscribes to
//! `sensors/+/telemetry` and reads the device from the second level. Other
//! levels may be literal, `+` (any one level) or, as the last level, `#` (any
//! number of levels, including none). A template without `{device}` is valid
//! when the payload names the device (`device_field`).

use std::fmt;

use thiserror::Error;

/// The placeholder that names the device level.
const DEVICE: &str = "{device}";

/// Why a template is not valid.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TemplateError {
    #[error("the template is empty")]
    Empty,
    #[error("`{{device}}` appears more than once")]
    DeviceTwice,
    #[error("level {level} (`{text}`): `{{device}}` must be a whole topic level")]
    PlaceholderNotWholeLevel { level: usize, text: String },
    #[error("level {level} (`{text}`): unknown placeholder; the only placeholder is `{{device}}`")]
    UnknownPlaceholder { level: usize, text: String },
    #[error("level {level} (`{text}`): `{wildcard}` must be a whole topic level")]
    WildcardNotWholeLevel {
        level: usize,
        text: String,
        wildcard: char,
    },
    #[error("`#` must be the last level")]
    HashNotLast,
    #[error("the template contains a NUL character")]
    Nul,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    Literal(Box<str>),
    Device,
    /// `+`: any one level.
    Plus,
    /// `#`: the rest of the topic, zero or more levels.
    Hash,
}

/// A parsed topic template such as `sensors/{device}/telemetry`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicTemplate {
    text: Box<str>,
    levels: Vec<Level>,
}

/// A topic that matched a template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicMatch<'t> {
    /// The `{device}` level of the topic, if the template has one. It may be
    /// empty (`sensors//telemetry`); the caller decides what that means.
    pub device: Option<&'t str>,
}

impl TopicTemplate {
    /// Parses a template, reporting the first problem found.
    pub fn parse(text: &str) -> Result<TopicTemplate, TemplateError> {
        if text.is_empty() {
            return Err(TemplateError::Empty);
        }
        if text.contains('\0') {
            return Err(TemplateError::Nul);
        }
        let parts: Vec<&str> = text.split('/').collect();
        let mut levels = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let level = i + 1;
            let parsed = match *part {
                DEVICE => {
                    if levels.contains(&Level::Device) {
                        return Err(TemplateError::DeviceTwice);
                    }
                    Level::Device
                }
                "+" => Level::Plus,
                "#" => {
                    if i + 1 != parts.len() {
                        return Err(TemplateError::HashNotLast);
                    }
                    Level::Hash
                }
                other => {
                    if other.contains(DEVICE) {
                        return Err(TemplateError::PlaceholderNotWholeLevel {
                            level,
                            text: other.to_owned(),
                        });
                    }
                    if other.contains(['{', '}']) {
                        return Err(TemplateError::UnknownPlaceholder {
                            level,
                            text: other.to_owned(),
                        });
                    }
                    if let Some(wildcard) = other.chars().find(|c| matches!(c, '+' | '#')) {
                        return Err(TemplateError::WildcardNotWholeLevel {
                            level,
                            text: other.to_owned(),
                            wildcard,
                        });
                    }
                    Level::Literal(other.into())
                }
            };
            levels.push(parsed);
        }
        Ok(TopicTemplate {
            text: text.into(),
            levels,
        })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the template names the device (has a `{device}` level).
    pub fn has_device(&self) -> bool {
        self.levels.contains(&Level::Device)
    }

    /// The MQTT subscription filter: `{device}` becomes `+`.
    pub fn filter(&self) -> String {
        let mut out = String::with_capacity(self.text.len());
        for (i, level) in self.levels.iter().enumerate() {
            if i > 0 {
                out.push('/');
            }
            match level {
                Level::Literal(s) => out.push_str(s),
                Level::Device | Level::Plus => out.push('+'),
                Level::Hash => out.push('#'),
            }
        }
        out
    }

    /// Matches a concrete topic (no wildcards) against the template, with
    /// MQTT's filter rules. `None` if it does not match.
    pub fn matches<'t>(&self, topic: &'t str) -> Option<TopicMatch<'t>> {
        // MQTT: a wildcard in the first level does not match topics that
        // start with `$` (`$SYS/...`).
        if topic.starts_with('$') && !matches!(self.levels.first(), Some(Level::Literal(_))) {
            return None;
        }
        let mut device = None;
        let mut parts = topic.split('/');
        for level in &self.levels {
            if *level == Level::Hash {
                // `a/#` matches `a`, `a/b`, `a/b/c`.
                return Some(TopicMatch { device });
            }
            let part = parts.next()?;
            match level {
                Level::Literal(s) if **s == *part => {}
                Level::Literal(_) => return None,
                Level::Plus => {}
                Level::Device => device = Some(part),
                Level::Hash => unreachable!("handled above"),
            }
        }
        if parts.next().is_some() {
            return None;
        }
        Some(TopicMatch { device })
    }
}

impl fmt::Display for TopicTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> TopicTemplate {
        TopicTemplate::parse(s).unwrap()
    }

    #[test]
    fn filter_replaces_device_with_plus() {
        assert_eq!(
            t("sensors/{device}/telemetry").filter(),
            "sensors/+/telemetry"
        );
        assert_eq!(t("{device}").filter(), "+");
        assert_eq!(t("a/+/{device}/#").filter(), "a/+/+/#");
        assert_eq!(
            t("plant/line-7/telemetry").filter(),
            "plant/line-7/telemetry"
        );
        assert_eq!(t("#").filter(), "#");
    }

    #[test]
    fn matches_and_extracts_device() {
        let tpl = t("sensors/{device}/telemetry");
        assert_eq!(
            tpl.matches("sensors/pump-1/telemetry"),
            Some(TopicMatch {
                device: Some("pump-1")
            })
        );
        assert_eq!(tpl.matches("sensors/pump-1/status"), None);
        assert_eq!(tpl.matches("sensors/pump-1"), None);
        assert_eq!(tpl.matches("sensors/pump-1/telemetry/x"), None);
        assert_eq!(tpl.matches("other/pump-1/telemetry"), None);
        // An empty device level matches; the decoder rejects it.
        assert_eq!(
            tpl.matches("sensors//telemetry"),
            Some(TopicMatch { device: Some("") })
        );
    }

    #[test]
    fn plus_and_hash_levels() {
        let tpl = t("site/+/{device}/#");
        assert_eq!(tpl.matches("site/a/dev/x/y").unwrap().device, Some("dev"));
        assert_eq!(tpl.matches("site/a/dev").unwrap().device, Some("dev"));
        assert_eq!(tpl.matches("site/a"), None);
        let no_device = t("telemetry/#");
        assert_eq!(
            no_device.matches("telemetry/anything/here"),
            Some(TopicMatch { device: None })
        );
        assert!(!no_device.has_device());
        assert!(tpl.has_device());
    }

    #[test]
    fn leading_wildcards_skip_dollar_topics() {
        assert_eq!(t("#").matches("$SYS/broker/uptime"), None);
        assert_eq!(t("{device}/x").matches("$SYS/x"), None);
        assert!(t("#").matches("a/b").is_some());
        assert_eq!(
            t("$SYS/{device}").matches("$SYS/x").unwrap().device,
            Some("x")
        );
    }

    #[test]
    fn bad_templates_are_explained() {
        assert_eq!(TopicTemplate::parse(""), Err(TemplateError::Empty));
        assert_eq!(
            TopicTemplate::parse("a/{device}/{device}"),
            Err(TemplateError::DeviceTwice)
        );
        assert_eq!(
            TopicTemplate::parse("sensors/dev-{device}/t"),
            Err(TemplateError::PlaceholderNotWholeLevel {
                level: 2,
                text: "dev-{device}".into()
            })
        );
        assert_eq!(
            TopicTemplate::parse("sensors/{foo}/t"),
            Err(TemplateError::UnknownPlaceholder {
                level: 2,
                text: "{foo}".into()
            })
        );
        assert_eq!(
            TopicTemplate::parse("a/#/b"),
            Err(TemplateError::HashNotLast)
        );
        assert_eq!(
            TopicTemplate::parse("a/b+/c"),
            Err(TemplateError::WildcardNotWholeLevel {
                level: 2,
                text: "b+".into(),
                wildcard: '+'
            })
        );
        assert_eq!(
            TopicTemplate::parse("a/b#"),
            Err(TemplateError::WildcardNotWholeLevel {
                level: 2,
                text: "b#".into(),
                wildcard: '#'
            })
        );
        assert_eq!(TopicTemplate::parse("a\0b"), Err(TemplateError::Nul));
        assert_eq!(
            TemplateError::UnknownPlaceholder {
                level: 2,
                text: "{foo}".into()
            }
            .to_string(),
            "level 2 (`{foo}`): unknown placeholder; the only placeholder is `{device}`"
        );
    }
}
