//! A config from the fleet, merged with the operator's local file.
//!
//! The fleet sends a whole config in TOML (`state.desired.config`, a string):
//! every section Ferry has, but not what is the machine's own. Those keys stay
//! in the local file (`/etc/ferry/ferry.toml`) and a fleet config that sets
//! one is refused with its key path:
//!
//! - `[fleet]`: which uplink carries the shadow, probation, reporting;
//! - `gateway.id` and `gateway.data_dir`: the gateway's identity and where
//!   its store is;
//! - `ca`, `cert` and `key` of every uplink: the certificates and keys on
//!   this machine.
//!
//! The merge: the fleet's config, plus those keys from the local file (for
//! an uplink, the local file's `ca`/`cert`/`key` of the uplink of the same
//! name). The result is checked whole by the loader `ferry validate` uses.

use ferry_core::report::KeyPath;

/// A problem that refuses a fleet config before the loader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub key: String,
    pub message: String,
}

const LOCAL_GATEWAY_KEYS: [&str; 2] = ["id", "data_dir"];
const LOCAL_UPLINK_KEYS: [&str; 3] = ["ca", "cert", "key"];

/// Merges `fleet` (TOML text) with the local config's table `local`.
/// Returns the merged TOML text, or every local-only key the fleet set.
pub fn merge(local: &toml::Table, fleet: &str) -> Result<String, Vec<Refusal>> {
    let mut table: toml::Table = toml::from_str(fleet).map_err(|e| {
        vec![Refusal {
            key: String::new(),
            message: format!(
                "invalid TOML: {}",
                ferry_core::report::one_line(e.message())
            ),
        }]
    })?;
    let mut refused = Vec::new();
    let local_only = |key: KeyPath| Refusal {
        key: key.to_string(),
        message: "is set in the local config only (/etc/ferry/ferry.toml), never by the fleet"
            .to_owned(),
    };
    if table.contains_key("fleet") {
        refused.push(local_only(KeyPath::root("fleet")));
    }
    if let Some(toml::Value::Table(g)) = table.get("gateway") {
        for k in LOCAL_GATEWAY_KEYS {
            if g.contains_key(k) {
                refused.push(local_only(KeyPath::root("gateway").key(k)));
            }
        }
    }
    if let Some(toml::Value::Table(uplinks)) = table.get("uplinks") {
        for (name, u) in uplinks {
            if let toml::Value::Table(u) = u {
                for k in LOCAL_UPLINK_KEYS {
                    if u.contains_key(k) {
                        refused.push(local_only(KeyPath::root("uplinks").key(name).key(k)));
                    }
                }
            }
        }
    }
    if !refused.is_empty() {
        return Err(refused);
    }
    if let Some(f) = local.get("fleet") {
        table.insert("fleet".to_owned(), f.clone());
    }
    if let Some(toml::Value::Table(lg)) = local.get("gateway") {
        let g = table
            .entry("gateway")
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if let toml::Value::Table(g) = g {
            for k in LOCAL_GATEWAY_KEYS {
                if let Some(v) = lg.get(k) {
                    g.insert(k.to_owned(), v.clone());
                }
            }
        }
    }
    let local_uplinks = match local.get("uplinks") {
        Some(toml::Value::Table(u)) => Some(u),
        _ => None,
    };
    if let (Some(toml::Value::Table(uplinks)), Some(lu)) = (table.get_mut("uplinks"), local_uplinks)
    {
        for (name, u) in uplinks.iter_mut() {
            let (toml::Value::Table(u), Some(toml::Value::Table(l))) = (u, lu.get(name)) else {
                continue;
            };
            for k in LOCAL_UPLINK_KEYS {
                if let Some(v) = l.get(k) {
                    u.insert(k.to_owned(), v.clone());
                }
            }
        }
    }
    toml::to_string(&table).map_err(|e| {
        vec![Refusal {
            key: String::new(),
            message: format!("cannot be written back as TOML: {e}"),
        }]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCAL: &str = r#"
[gateway]
id = "pi-7"
data_dir = "/var/lib/ferry"

[uplinks.iot]
endpoint = "a.example:8883"
ca = "/etc/ferry/ca.pem"
cert = "/etc/ferry/cert.pem"
key = "/etc/ferry/key.pem"

[fleet]
uplink = "iot"
"#;

    fn local() -> toml::Table {
        toml::from_str(LOCAL).unwrap()
    }

    #[test]
    fn local_keys_come_from_the_local_file() {
        let fleet =
            "[gateway]\nlog_level = \"debug\"\n[uplinks.iot]\nendpoint = \"b.example:8883\"\n";
        let merged: toml::Table = toml::from_str(&merge(&local(), fleet).unwrap()).unwrap();
        let expected: toml::Table = toml::from_str(
            r#"
[gateway]
id = "pi-7"
data_dir = "/var/lib/ferry"
log_level = "debug"
[uplinks.iot]
endpoint = "b.example:8883"
ca = "/etc/ferry/ca.pem"
cert = "/etc/ferry/cert.pem"
key = "/etc/ferry/key.pem"
[fleet]
uplink = "iot"
"#,
        )
        .unwrap();
        assert_eq!(merged, expected);
    }

    #[test]
    fn the_fleet_may_not_set_local_keys() {
        let fleet = "[fleet]\nuplink = \"x\"\n[gateway]\ndata_dir = \"/tmp\"\n\
                     [uplinks.iot]\nendpoint = \"b:1\"\nkey = \"/tmp/k\"\n";
        let keys: Vec<String> = merge(&local(), fleet)
            .unwrap_err()
            .into_iter()
            .map(|r| r.key)
            .collect();
        assert_eq!(keys, ["fleet", "gateway.data_dir", "uplinks.iot.key"]);
    }

    #[test]
    fn bad_toml_is_one_refusal() {
        let r = merge(&local(), "[gateway\n").unwrap_err();
        assert_eq!(r.len(), 1);
        assert!(r[0].message.starts_with("invalid TOML: "), "{r:?}");
    }
}
