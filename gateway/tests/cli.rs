//! The `ferry` binary's config commands: `print-config`, `validate`, and
//! `run` refusing a bad config before it opens anything.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn ferry(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run ferry")
}

fn repo_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(name)
}

fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[test]
fn print_config_prints_the_default_file_exactly() {
    let out = ferry(&["print-config"]);
    assert!(out.status.success());
    let file = std::fs::read(repo_file("config/default.toml")).unwrap();
    assert_eq!(out.stdout, file);
    assert!(out.stderr.is_empty());
}

#[test]
fn validate_a_good_file() {
    let path = repo_file("config/default.toml");
    let path = path.to_str().unwrap();
    for args in [
        ["validate", "--config", path].as_slice(),
        &["validate", path],
    ] {
        let out = ferry(args);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert_eq!(stdout(&out), format!("config OK: {path}\n"));
        assert_eq!(stderr(&out), "");
    }
}

#[test]
fn validate_a_bad_file_prints_every_problem_and_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[gateway]\nid = \"a b\"\n\n[store]\ncommit_interval = \"soon\"\n\n\
         [sources.local]\ntype = \"mqtt_broker\"\n\n[uplinks.cloud]\n\
         endpoint = \"127.0.0.1:8883\"\nmax_inflight = 101\n",
    )
    .unwrap();
    let out = ferry(&["validate", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64));
    assert_eq!(stdout(&out), "");
    let p = path.display();
    let expected = [
        format!("ferry: config error: {p}:2: gateway.id: invalid gateway id \"a b\": must not contain whitespace or any of / + # {{ }}"),
        format!("ferry: config error: {p}:5: store.commit_interval: invalid value: string \"soon\", expected a duration like \"10ms\", \"30s\" or \"2m\""),
        format!("ferry: config error: {p}:10: uplinks.cloud.ca: missing field `ca` (required unless plaintext = true)"),
        format!("ferry: config error: {p}:10: uplinks.cloud.cert: missing field `cert` (required unless plaintext = true)"),
        format!("ferry: config error: {p}:10: uplinks.cloud.key: missing field `key` (required unless plaintext = true)"),
        format!("ferry: config error: {p}:12: uplinks.cloud.max_inflight: must be between 1 and 100 (the IoT Core limit), got 101"),
    ];
    assert_eq!(stderr(&out), expected.join("\n") + "\n");
}

#[test]
fn validate_a_syntax_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[sources.local]\ntype = mqtt_broker\n").unwrap();
    let out = ferry(&["validate", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64));
    let err = stderr(&out);
    let prefix = format!("ferry: config error: {}:2: invalid TOML: ", path.display());
    assert!(err.starts_with(&prefix), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn validate_a_missing_file_exits_66() {
    let out = ferry(&["validate", "--config", "/nonexistent/ferry.toml"]);
    assert_eq!(out.status.code(), Some(66));
    assert_eq!(
        stderr(&out),
        "ferry: config error: /nonexistent/ferry.toml: cannot read: No such file or directory (os error 2)\n"
    );
}

#[test]
fn validate_the_iot_core_example_reports_only_its_missing_certificates() {
    let path = repo_file("config/iot-core.toml");
    let out = ferry(&["validate", path.to_str().unwrap()]);
    let missing: Vec<(&str, &str)> = [
        ("ca", "/etc/ferry/AmazonRootCA1.pem"),
        ("cert", "/etc/ferry/device.pem.crt"),
        ("key", "/etc/ferry/private.pem.key"),
    ]
    .into_iter()
    .filter(|(_, f)| !Path::new(f).exists())
    .collect();
    if missing.is_empty() {
        return; // This machine has them.
    }
    assert_eq!(out.status.code(), Some(64));
    let err = stderr(&out);
    let got: Vec<&str> = err.lines().collect();
    assert_eq!(got.len(), missing.len(), "{err}");
    for (line, (key, file)) in got.iter().zip(&missing) {
        assert!(
            line.ends_with(&format!(": uplinks.iot_core.{key}: file not found: {file}")),
            "{line}"
        );
    }
}

#[test]
fn validate_warns_about_a_readable_key_and_still_passes() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    // Real PEM: validate loads the files as run does.
    let pki = ferry_testkit::Pki::generate("gw-cli").unwrap();
    let mut files = Vec::new();
    for (name, mode, from) in [
        ("ca.pem", 0o644, &pki.ca),
        ("c.crt", 0o644, &pki.client.cert),
        ("k.key", 0o640, &pki.client.key),
        ("k2.key", 0o604, &pki.client.key),
    ] {
        let path = dir.path().join(name);
        std::fs::copy(from, &path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        files.push(path);
    }
    let config = dir.path().join("ferry.toml");
    let write = |key: &Path| {
        std::fs::write(
            &config,
            format!(
                "[sources.local]\ntype = \"mqtt_broker\"\n[uplinks.cloud]\nendpoint = \"h:8883\"\n\
                 ca = {:?}\ncert = {:?}\nkey = {key:?}\n",
                files[0], files[1]
            ),
        )
        .unwrap();
    };
    let c = config.to_str().unwrap();
    write(&files[2]);
    let out = ferry(&["validate", c]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stderr(&out), "");
    write(&files[3]);
    let out = ferry(&["validate", c]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), format!("config OK: {c}\n"));
    assert_eq!(
        stderr(&out),
        format!(
            "ferry: config warning: {c}:7: uplinks.cloud.key: private key {} is readable by every user (mode 604); chmod 600 it\n",
            files[3].display()
        )
    );
}

#[test]
fn validate_needs_a_file() {
    let out = ferry(&["validate"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn run_refuses_a_bad_config_before_opening_anything() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("ferry.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\ndata_dir = {data:?}\n[sources.local]\ntype = \"mqtt_broker\"\n\
             listen = \"127.0.0.1:0\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n[store]\nqueue = 0\n"
        ),
    )
    .unwrap();
    let out = ferry(&["run", "--config", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64));
    assert_eq!(
        stderr(&out),
        format!(
            "ferry: config error: {}:9: store.queue: invalid value: integer `0`, expected an integer of at least 1\n",
            config.display()
        )
    );
    assert!(
        !data.exists(),
        "nothing may be created for a config that does not run"
    );
    let out = ferry(&["run", "--config", "/nonexistent/ferry.toml"]);
    assert_eq!(out.status.code(), Some(66));
}

mod fsck {
    use std::process::Command;
    use std::sync::Arc;

    use ferry_core::record::{Record, Value};
    use ferry_core::sink::Item;
    use ferry_gateway::metrics::IngestMetrics;
    use ferry_gateway::store::{Store, StoreOptions, Writer, WriterSettings};
    use std::time::Duration;

    fn ferry(args: &[&str]) -> (i32, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code().unwrap(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    #[tokio::test]
    async fn fsck_reports_a_sound_store_and_refuses_one_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let config = dir.path().join("ferry.toml");
        std::fs::write(
            &config,
            format!(
                "[gateway]\ndata_dir = \"{}\"\n[sources.local]\ntype = \"mqtt_broker\"\n",
                data.display()
            ),
        )
        .unwrap();
        let cfg = config.to_str().unwrap();
        let (code, _, err) = ferry(&["fsck", "--config", cfg]);
        assert_eq!(code, 1);
        assert!(err.contains("no store at"), "{err}");

        std::fs::create_dir_all(&data).unwrap();
        let store = Store::open(&Store::file_in(&data), &StoreOptions::default()).unwrap();
        let ingest = Writer::spawn(
            store.clone(),
            WriterSettings::default().with_commit_interval(Duration::from_millis(10)),
            IngestMetrics::new(),
        );
        let record = Record {
            ts: 1,
            source: Arc::from("local"),
            device: "7".into(),
            fields: vec![("v".into(), Value::Int(1))],
        };
        ingest
            .sink
            .submit_and_wait(vec![Item::Record(record); 10])
            .await
            .unwrap();
        // In use by a running writer: a clear refusal, nothing touched.
        let (code, _, err) = ferry(&["fsck", "--config", cfg]);
        assert_eq!(code, 1);
        assert!(err.contains("ferry: error: cannot open store"), "{err}");
        drop(ingest.sink);
        drop(ingest.cursors);
        ingest.task.await.unwrap();
        drop(store);

        let (code, out, err) = ferry(&["fsck", "--config", cfg]);
        assert_eq!(code, 0, "{err}");
        assert!(
            out.contains("records: 10 (seq 1..=10), dead letters: 0"),
            "{out}"
        );
        assert!(out.trim_end().ends_with("store OK"), "{out}");
    }
}
