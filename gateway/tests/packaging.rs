//! The .deb's inputs, checked without building it: the cargo-deb metadata
//! names files that exist, the maintainer scripts are valid shell with the
//! place for cargo-deb's snippets, and the conffile is a valid config whose
//! commented-out uplink is valid too once filled in. Building the packages,
//! lintian, installing and purging are `packaging/build-debs.sh` and
//! `packaging/install-test.sh`, run by `.ci/run`.

use std::path::{Path, PathBuf};
use std::process::Command;

use ferry_gateway::config::Config;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn deb_metadata() -> toml::Table {
    let manifest: toml::Table =
        toml::from_str(&std::fs::read_to_string(root().join("gateway/Cargo.toml")).unwrap())
            .unwrap();
    manifest["package"]["metadata"]["deb"]
        .as_table()
        .unwrap()
        .clone()
}

fn gateway_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

#[test]
fn the_metadata_installs_what_the_issue_lists() {
    let deb = deb_metadata();
    assert_eq!(deb["name"].as_str(), Some("ferry"));
    let assets: Vec<(String, String, String)> = deb["assets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let a = a.as_array().unwrap();
            let s = |i: usize| a[i].as_str().unwrap().to_owned();
            (s(0), s(1), s(2))
        })
        .collect();
    let dest = |d: &str| assets.iter().find(|a| a.1 == d).cloned();
    assert_eq!(
        dest("usr/bin/"),
        Some((
            "target/release/ferry".into(),
            "usr/bin/".into(),
            "755".into()
        ))
    );
    assert!(dest("etc/ferry/ferry.toml").is_some());
    assert!(dest("usr/share/ferry/grafana-dashboard.json").is_some());
    for (src, _, _) in &assets {
        if src.starts_with("target/") || src.contains('*') {
            continue;
        }
        assert!(gateway_path(src).is_file(), "asset {src} is missing");
    }
    assert_eq!(
        deb["conf-files"].as_array().unwrap()[0].as_str(),
        Some("/etc/ferry/ferry.toml")
    );
    let units = deb["systemd-units"].as_table().unwrap();
    let unit_dir = gateway_path(units["unit-scripts"].as_str().unwrap());
    assert!(unit_dir.join("ferry.service").is_file());
    assert_eq!(units["enable"].as_bool(), Some(true));
    assert!(deb["depends"].as_str().unwrap().contains("$auto"));
    assert!(gateway_path(deb["changelog"].as_str().unwrap()).is_file());
}

#[test]
fn maintainer_scripts_are_valid_and_keep_data_until_purge() {
    let dir = gateway_path(deb_metadata()["maintainer-scripts"].as_str().unwrap());
    for name in ["postinst", "postrm"] {
        let path = dir.join(name);
        let text = std::fs::read_to_string(&path).unwrap();
        // cargo-deb replaces every occurrence, comments included.
        assert_eq!(text.matches("#DEBHELPER#").count(), 1, "{name}");
        assert!(text.contains("\n#DEBHELPER#\n"), "{name}");
        let check = Command::new("sh").arg("-n").arg(&path).output().unwrap();
        assert!(
            check.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&check.stderr)
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o111, 0o111, "{name} is not executable");
    }
    let postinst = std::fs::read_to_string(dir.join("postinst")).unwrap();
    assert!(postinst.contains("adduser --system"));
    assert!(postinst.contains("install -d -o ferry -g ferry -m 0750 /var/lib/ferry"));
    let postrm = std::fs::read_to_string(dir.join("postrm")).unwrap();
    let purge = postrm.split("if [ \"$1\" = \"purge\" ]").nth(1).unwrap();
    assert!(purge.contains("rm -rf /var/lib/ferry"));
}

#[test]
fn the_conffile_is_valid_and_sends_nothing_until_the_uplink_is_filled_in() {
    let path = root().join("packaging/ferry.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let config = Config::load(&path).unwrap();
    assert!(config.uplinks.is_empty());
    assert_eq!(config.gateway.data_dir, Path::new("/var/lib/ferry"));
    assert_eq!(
        config.metrics.listen,
        Some("127.0.0.1:9108".parse().unwrap())
    );

    // Uncommented, with the files where the comments say, it is valid.
    let pki = ferry_testkit::Pki::generate("ferry").unwrap();
    let enabled: String = text
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(rest) if l.starts_with("# [uplinks") || is_key(rest) => rest.to_owned(),
            _ => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
        .replace("/etc/ferry/AmazonRootCA1.pem", pki.ca.to_str().unwrap())
        .replace(
            "/etc/ferry/device.pem.crt",
            pki.client.cert.to_str().unwrap(),
        )
        .replace(
            "/etc/ferry/private.pem.key",
            pki.client.key.to_str().unwrap(),
        );
    let config =
        Config::from_toml(&enabled, &path).unwrap_or_else(|e| panic!("{e}\n---\n{enabled}"));
    let uplink = &config.uplinks["iot_core"];
    assert!(uplink.endpoint.ends_with("amazonaws.com:8883"));
    assert!(!uplink.plaintext);
}

/// `key = value`, as a commented-out setting (not prose) reads.
fn is_key(line: &str) -> bool {
    line.split_once(" = ").is_some_and(|(k, _)| {
        !k.is_empty() && k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
    })
}
