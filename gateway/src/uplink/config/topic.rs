//! Checks of uplink topic and client id templates against IoT Core's limits.
//!
//! Templates keep their placeholders; the uplink renders them per batch.
//! What can be known here is checked here: the placeholders, wildcards, the
//! Basic Ingest prefix, and the length and slash count with `{gateway}` and
//! `{source}` filled in. `{device}` is only known at run time, so it counts
//! as empty here and the uplink must check the rendered topic.

/// The placeholders a topic may hold.
pub const TOPIC_PLACEHOLDERS: [&str; 3] = ["gateway", "device", "source"];

/// IoT Core's topic limits, not counting a Basic Ingest prefix.
pub const MAX_TOPIC_BYTES: usize = 256;
/// IoT Core's limit on forward slashes in a topic, not counting a Basic
/// Ingest prefix.
pub const MAX_TOPIC_SLASHES: usize = 7;

/// The `$aws/rules/RULE_NAME/` prefix of a Basic Ingest topic.
const BASIC_INGEST: &str = "$aws/rules/";

/// A topic or client id template split into text and placeholders.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Part<'a> {
    Text(&'a str),
    Placeholder(&'a str),
}

/// Splits a template at its `{name}` placeholders.
pub(crate) fn parse_template(template: &str) -> Result<Vec<Part<'_>>, String> {
    let mut parts = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find(['{', '}']) {
        if rest.as_bytes()[open] == b'}' {
            return Err("unbalanced '}'; placeholders are written {name}".to_owned());
        }
        if open > 0 {
            parts.push(Part::Text(&rest[..open]));
        }
        let after = &rest[open + 1..];
        let close = after
            .find(['{', '}'])
            .filter(|&i| after.as_bytes()[i] == b'}')
            .ok_or("unbalanced '{'; placeholders are written {name}")?;
        parts.push(Part::Placeholder(&after[..close]));
        rest = &after[close + 1..];
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest));
    }
    Ok(parts)
}

/// Renders a template, each placeholder by `fill` (which knows them all).
pub(crate) fn render(parts: &[Part<'_>], fill: impl Fn(&str) -> String) -> String {
    parts
        .iter()
        .map(|p| match p {
            Part::Text(t) => (*t).to_owned(),
            Part::Placeholder(name) => fill(name),
        })
        .collect()
}

/// Everything wrong with an uplink topic template, given the gateway id and
/// the longest source name the uplink forwards.
pub(crate) fn check_topic(template: &str, gateway: &str, longest_source: &str) -> Vec<String> {
    let mut problems = Vec::new();
    if template.is_empty() {
        return vec!["must not be empty".to_owned()];
    }
    if template.contains(['+', '#']) {
        problems.push("must not contain the MQTT wildcards '+' or '#'".to_owned());
    }
    if template.contains('\0') {
        problems.push("must not contain a NUL character".to_owned());
    }
    let parts = match parse_template(template) {
        Ok(parts) => parts,
        Err(e) => {
            problems.push(e);
            return problems;
        }
    };
    for p in &parts {
        if let Part::Placeholder(name) = p {
            if !TOPIC_PLACEHOLDERS.contains(name) {
                problems.push(format!(
                    "unknown placeholder {{{name}}}; known: {{gateway}}, {{device}}, {{source}}"
                ));
            }
        }
    }
    if !problems.is_empty() {
        return problems;
    }
    let rendered = render(&parts, |name| match name {
        "gateway" => gateway.to_owned(),
        "source" => longest_source.to_owned(),
        _ => String::new(),
    });
    let counted = match rendered.strip_prefix(BASIC_INGEST) {
        Some(rest) => match basic_ingest_rest(template, rest) {
            Ok(rest) => rest,
            Err(e) => return vec![e],
        },
        None if rendered.starts_with('$') => {
            return vec![
                "topics starting with '$' are reserved; the only one allowed is a Basic \
                 Ingest topic $aws/rules/RULE_NAME/..."
                    .to_owned(),
            ]
        }
        None => &rendered,
    };
    if counted.len() > MAX_TOPIC_BYTES {
        problems.push(format!(
            "is {} bytes long with {{gateway}} and {{source}} filled in; \
             IoT Core allows {MAX_TOPIC_BYTES} (not counting a Basic Ingest prefix)",
            counted.len()
        ));
    }
    let slashes = counted.matches('/').count();
    if slashes > MAX_TOPIC_SLASHES {
        problems.push(format!(
            "has {slashes} slashes; \
             IoT Core allows {MAX_TOPIC_SLASHES} (not counting a Basic Ingest prefix)"
        ));
    }
    problems
}

/// For a Basic Ingest topic (`rest` follows `$aws/rules/`): checks the rule
/// name and returns the part IoT Core's limits apply to.
fn basic_ingest_rest<'a>(template: &str, rest: &'a str) -> Result<&'a str, String> {
    let (rule, counted) = rest.split_once('/').unwrap_or((rest, ""));
    // The rule name must be literal text in the template.
    let literal = template
        .strip_prefix(BASIC_INGEST)
        .is_some_and(|t| t.starts_with(rule) && !t[..rule.len()].contains('{'));
    let valid = !rule.is_empty()
        && rule.len() <= 128
        && rule.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !literal || !valid {
        return Err(format!(
            "Basic Ingest topic needs a rule name of letters, digits and '_' \
             after $aws/rules/, got {rule:?}"
        ));
    }
    Ok(counted)
}

/// What is wrong with a client id template, if anything.
pub(crate) fn check_client_id(template: &str, gateway: &str) -> Result<(), String> {
    let parts = parse_template(template)?;
    for p in &parts {
        if let Part::Placeholder(name) = p {
            if *name != "gateway" {
                return Err(format!(
                    "unknown placeholder {{{name}}}; known: {{gateway}}"
                ));
            }
        }
    }
    let id = expand_gateway(template, gateway);
    if id.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if id.len() > 128 {
        return Err(format!(
            "is {} bytes long with {{gateway}} filled in; IoT Core allows 128",
            id.len()
        ));
    }
    Ok(())
}

/// `template` with `{gateway}` replaced by the gateway id.
pub(crate) fn expand_gateway(template: &str, gateway: &str) -> String {
    template.replace("{gateway}", gateway)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_split_at_placeholders() {
        assert_eq!(
            parse_template("a/{gateway}/b").unwrap(),
            vec![
                Part::Text("a/"),
                Part::Placeholder("gateway"),
                Part::Text("/b")
            ]
        );
        assert!(parse_template("a/{gateway/b").is_err());
        assert!(parse_template("a/gateway}/b").is_err());
        assert!(parse_template("a/{{gateway}}").is_err());
    }

    #[test]
    fn basic_ingest_prefix_is_not_counted() {
        let t = "$aws/rules/my_rule/a/b/c/d/e/f/g/h";
        assert_eq!(check_topic(t, "gw", "src"), Vec::<String>::new());
        let t = "a/b/c/d/e/f/g/h/i";
        assert_eq!(check_topic(t, "gw", "src").len(), 1);
        assert_eq!(check_topic("$aws/rules/{gateway}/x", "gw", "s").len(), 1);
        assert_eq!(check_topic("$aws/things/x/shadow", "gw", "s").len(), 1);
    }
}
