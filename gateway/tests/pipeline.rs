//! The pipeline: each step with exact outputs and its edge cases (missing
//! field, wrong type, division by zero, NaN), config errors with their key
//! and line, and the task between the sources and ingest.

use std::path::Path;
use std::sync::Arc;

use ferry_core::record::{Record, Value};
use ferry_core::sink::Item;
use ferry_gateway::config::Config;
use ferry_gateway::metrics::IngestMetrics;
use ferry_gateway::metrics::{PipelineMetrics, StepLabels};
use ferry_gateway::pipeline::{spawn_pipeline, Outcome, Pipeline};
use ferry_gateway::store::{Store, StoreOptions, Writer, WriterSettings};

const SOURCES: &str = "[sources.local]\ntype = \"mqtt_broker\"\n[sources.plc]\ntype = \"mqtt_broker\"\nlisten = \"127.0.0.1:1884\"\n";

fn pipeline(steps: &str) -> Arc<Pipeline> {
    let text = format!("{SOURCES}{steps}");
    let config = Config::from_toml(&text, Path::new("t.toml")).unwrap_or_else(|e| panic!("{e}"));
    Pipeline::new(&config.pipeline, PipelineMetrics::new())
}

fn problems(steps: &str) -> Vec<(Option<usize>, String, String)> {
    let text = format!("{SOURCES}{steps}");
    match Config::from_toml(&text, Path::new("t.toml")) {
        Ok(_) => panic!("expected errors:\n{text}"),
        Err(e) => e
            .errors
            .into_iter()
            .map(|e| (e.line, e.key, e.message))
            .collect(),
    }
}

fn rec(device: &str, fields: &[(&str, Value)]) -> Record {
    Record {
        ts: 1_000,
        source: "local".into(),
        device: device.into(),
        fields: fields
            .iter()
            .map(|(n, v)| (Box::from(*n), v.clone()))
            .collect(),
    }
}

fn reading() -> Record {
    rec(
        "7",
        &[
            ("voltage", Value::Int(230)),
            ("current", Value::Float(2.5)),
            ("temperature", Value::Int(110)),
            ("status", Value::Str("ok".into())),
        ],
    )
}

fn fields(r: &Record) -> Vec<(String, Value)> {
    r.fields
        .iter()
        .map(|(n, v)| (n.to_string(), v.clone()))
        .collect()
}

fn f(name: &str, v: Value) -> (String, Value) {
    (name.to_owned(), v)
}

fn counter(p: &Pipeline, family: &str, step: &str, reason: &str) -> u64 {
    let labels = StepLabels::new(step, reason);
    let m = p.metrics();
    match family {
        "dropped" => m.records_dropped.get_or_create(&labels).get(),
        _ => m.errors.get_or_create(&labels).get(),
    }
}

#[test]
fn filter_keeps_true_drops_false_and_counts_each_reason() {
    let p = pipeline("[[pipeline]]\nfilter = \"temperature > -40 && temperature < 150\"\n");
    let mut r = reading();
    assert_eq!(p.apply(&mut r), Outcome::Keep);
    assert_eq!(r, reading(), "a filter does not change the record");
    let mut hot = rec("7", &[("temperature", Value::Float(151.0))]);
    assert_eq!(p.apply(&mut hot), Outcome::Drop);
    // Missing field and wrong type: dropped, counted under their reason.
    let mut missing = rec("7", &[("voltage", Value::Int(1))]);
    assert_eq!(p.apply(&mut missing), Outcome::Drop);
    let mut text = rec("7", &[("temperature", Value::Str("hot".into()))]);
    assert_eq!(p.apply(&mut text), Outcome::Drop);
    // NaN compares false.
    let mut nan = rec("7", &[("temperature", Value::Float(f64::NAN))]);
    assert_eq!(p.apply(&mut nan), Outcome::Drop);
    assert_eq!(counter(&p, "dropped", "0_filter", "filtered"), 2);
    assert_eq!(counter(&p, "dropped", "0_filter", "missing_field"), 1);
    assert_eq!(counter(&p, "dropped", "0_filter", "wrong_type"), 1);
    assert_eq!(counter(&p, "errors", "0_filter", "missing_field"), 1);
    assert_eq!(p.metrics().records_in.get(), 5);
    assert_eq!(p.metrics().records_out_dropped.get(), 4);
}

#[test]
fn filter_sees_integers_as_numbers_and_device_source_ts() {
    let p = pipeline(
        "[[pipeline]]\nfilter = \"voltage == 230 && voltage / 100 > 2.2 && device == \\\"7\\\" && source == \\\"local\\\" && ts == 1000\"\n",
    );
    assert_eq!(p.apply(&mut reading()), Outcome::Keep);
    let mut other = reading();
    other.device = "8".into();
    assert_eq!(p.apply(&mut other), Outcome::Drop);
}

#[test]
fn a_filter_that_is_not_a_condition_drops_as_wrong_type() {
    let p = pipeline("[[pipeline]]\nname = \"num\"\nfilter = \"voltage + 1\"\n");
    assert_eq!(p.apply(&mut reading()), Outcome::Drop);
    assert_eq!(counter(&p, "dropped", "num", "wrong_type"), 1);
}

#[test]
fn select_remove_rename_add_copy_give_exact_fields() {
    let p = pipeline(
        "[[pipeline]]\nselect = [\"voltage\", \"current\", \"status\", \"absent\"]\n\
         [[pipeline]]\nremove = [\"status\", \"absent\"]\n\
         [[pipeline]]\nrename = { voltage = \"volts\", absent = \"x\" }\n\
         [[pipeline]]\nadd = { unit = \"V\", phase = 3, calibrated = true, gain = 1.5 }\n\
         [[pipeline]]\ncopy = { amps = \"current\", nothing = \"absent\" }\n",
    );
    let mut r = reading();
    assert_eq!(p.apply(&mut r), Outcome::Keep);
    assert_eq!(
        fields(&r),
        vec![
            f("volts", Value::Int(230)),
            f("current", Value::Float(2.5)),
            f("calibrated", Value::Bool(true)),
            f("gain", Value::Float(1.5)),
            f("phase", Value::Int(3)),
            f("unit", Value::Str("V".into())),
            f("amps", Value::Float(2.5)),
        ]
    );
    assert_eq!(p.metrics().records_out_dropped.get(), 0);
}

#[test]
fn add_overwrites_an_existing_field_in_place() {
    let p = pipeline("[[pipeline]]\nadd = { voltage = 0 }\n");
    let mut r = reading();
    p.apply(&mut r);
    assert_eq!(r.fields[0], ("voltage".into(), Value::Int(0)));
    assert_eq!(r.fields.len(), 4);
}

#[test]
fn math_computes_in_floats_with_functions() {
    let p = pipeline(
        "[[pipeline]]\nmath = { power = \"voltage * current / 1000\", \
         v = \"round(sqrt(abs(-16)) * 10) / 10 + max(1, 2) + min(3, 4) + log(1) + log(100, 10) + ln(1) + log10(1000) + pow(2, 3)\", \
         level = \"int(temperature / 100)\", hot = \"temperature > 100\", label = \"status + \\\"!\\\"\" }\n",
    );
    let mut r = reading();
    p.apply(&mut r);
    assert_eq!(r.field("power"), Some(&Value::Float(0.575)));
    assert_eq!(
        r.field("v"),
        Some(&Value::Float(4.0 + 2.0 + 3.0 + 0.0 + 2.0 + 0.0 + 3.0 + 8.0))
    );
    assert_eq!(r.field("level"), Some(&Value::Int(1)));
    assert_eq!(r.field("hot"), Some(&Value::Bool(true)));
    assert_eq!(r.field("label"), Some(&Value::Str("ok!".into())));
}

#[test]
fn math_edge_cases_leave_the_field_unset_and_are_counted() {
    let p = pipeline(
        "[[pipeline]]\nname = \"m\"\nmath = { ratio = \"voltage / zero\", nan = \"sqrt(-1)\", \
         gone = \"absent * 2\", typed = \"status * 2\", voltage = \"voltage / 0\", ok = \"voltage * 2\" }\n",
    );
    let mut r = reading();
    r.fields.push(("zero".into(), Value::Int(0)));
    assert_eq!(p.apply(&mut r), Outcome::Keep);
    assert_eq!(r.field("ratio"), None);
    assert_eq!(r.field("nan"), None);
    assert_eq!(r.field("gone"), None);
    assert_eq!(r.field("typed"), None);
    assert_eq!(r.field("voltage"), Some(&Value::Int(230)), "kept its value");
    assert_eq!(r.field("ok"), Some(&Value::Float(460.0)));
    assert_eq!(counter(&p, "errors", "m", "not_finite"), 3);
    assert_eq!(counter(&p, "errors", "m", "missing_field"), 1);
    assert_eq!(counter(&p, "errors", "m", "wrong_type"), 1);
}

#[test]
fn math_expressions_of_one_step_see_the_record_before_the_step() {
    let p = pipeline(
        "[[pipeline]]\nmath = { a = \"voltage + 1\", voltage = \"0\", b = \"voltage\" }\n",
    );
    let mut r = reading();
    p.apply(&mut r);
    assert_eq!(r.field("a"), Some(&Value::Float(231.0)));
    assert_eq!(r.field("b"), Some(&Value::Float(230.0)));
    assert_eq!(r.field("voltage"), Some(&Value::Float(0.0)));
}

#[test]
fn enrich_adds_registry_metadata_and_ignores_unknown_devices() {
    let p = pipeline(
        "[devices.7]\nsite = \"plant-a\"\nline = 3\nunit = \"V\"\n\
         [[pipeline]]\nenrich = []\n[[pipeline]]\nname = \"some\"\nenrich = [\"site\"]\ndevices = [\"9\"]\n",
    );
    let mut r = reading();
    p.apply(&mut r);
    assert_eq!(
        fields(&r)[4..].to_vec(),
        vec![
            f("line", Value::Int(3)),
            f("site", Value::Str("plant-a".into())),
            f("unit", Value::Str("V".into())),
        ]
    );
    let mut unknown = rec("9", &[("x", Value::Int(1))]);
    p.apply(&mut unknown);
    assert_eq!(fields(&unknown), vec![f("x", Value::Int(1))]);
}

#[test]
fn steps_limited_to_sources_and_devices_skip_other_records() {
    let p = pipeline(
        "[[pipeline]]\nfilter = \"false\"\nsources = [\"plc\"]\n\
         [[pipeline]]\nadd = { tagged = true }\ndevices = [\"7\"]\n",
    );
    let mut r = reading();
    assert_eq!(p.apply(&mut r), Outcome::Keep);
    assert_eq!(r.field("tagged"), Some(&Value::Bool(true)));
    let mut other = rec("8", &[("x", Value::Int(1))]);
    p.apply(&mut other);
    assert_eq!(other.field("tagged"), None);
    let mut plc = reading();
    plc.source = "plc".into();
    assert_eq!(p.apply(&mut plc), Outcome::Drop);
}

#[test]
fn config_errors_name_the_key_and_line_all_at_once() {
    let errors = problems(
        "[[pipeline]]\nfilter = \"temperature > \"\n\
         [[pipeline]]\nmath = { power = \"voltage * (current\", ok = \"1\" }\n\
         [[pipeline]]\nselect = [\"a\"]\nremove = [\"b\"]\n\
         [[pipeline]]\nfilter = \"x = 3\"\n\
         [[pipeline]]\nfilter = \"true\"\nsources = [\"nope\"]\n\
         [[pipeline]]\nwhat = 1\n\
         [[pipeline]]\nadd = { x = [1] }\n",
    );
    let keys: Vec<(Option<usize>, &str)> =
        errors.iter().map(|(l, k, _)| (*l, k.as_str())).collect();
    assert_eq!(
        keys,
        vec![
            (Some(7), "pipeline[0].filter"),
            (Some(9), "pipeline[1].math.power"),
            (Some(10), "pipeline[2]"),
            (Some(14), "pipeline[3].filter"),
            (Some(17), "pipeline[4].sources[0]"),
            (Some(18), "pipeline[5]"),
            (Some(19), "pipeline[5].what"),
            (Some(21), "pipeline[6].add.x"),
        ],
        "{errors:#?}"
    );
    assert!(
        errors[0]
            .2
            .starts_with("invalid expression \"temperature > \""),
        "{}",
        errors[0].2
    );
    assert!(
        errors[1]
            .2
            .starts_with("invalid expression \"voltage * (current\""),
        "{}",
        errors[1].2
    );
    assert!(errors[2].2.contains("exactly one of"), "{}", errors[2].2);
    assert!(errors[3].2.contains("assignment"), "{}", errors[3].2);
}

/// The task: a submission is acknowledged after the commit with the
/// transformed records; one whose records were all dropped is acknowledged
/// too; dead letters pass.
#[tokio::test]
async fn the_task_forwards_transformed_submissions_and_acknowledges_after_commit() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("ferry.redb"), &StoreOptions::default()).unwrap();
    let ingest = Writer::spawn(
        store.clone(),
        WriterSettings::default().with_commit_interval(std::time::Duration::from_millis(10)),
        IngestMetrics::new(),
    );
    let p = pipeline("[[pipeline]]\nfilter = \"temperature < 150\"\n[[pipeline]]\nmath = { t2 = \"temperature * 2\" }\n");
    let (sink, task) = spawn_pipeline(p.clone(), ingest.sink.clone(), 16);
    drop(ingest.sink);
    let hot = rec("7", &[("temperature", Value::Int(200))]);
    let ok = rec("7", &[("temperature", Value::Int(20))]);
    let c1 = sink
        .submit_and_wait(vec![Item::Record(hot.clone()), Item::Record(ok)])
        .await
        .unwrap();
    assert_eq!(c1.last_seq, Some(1));
    let c2 = sink.submit_and_wait(vec![Item::Record(hot)]).await.unwrap();
    assert_eq!(c2.last_seq, None);
    let mut out = Vec::new();
    store.read_records(0, 10, &mut out).unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].record.field("t2"), Some(&Value::Float(40.0)));
    drop(sink);
    task.await.unwrap();
    drop(ingest.cursors);
    ingest.task.await.unwrap();
    assert_eq!(counter(&p, "dropped", "0_filter", "filtered"), 2);
}

/// `config/pipeline-example.toml` is valid but for the certificate files it
/// names, and its pipeline does what its comments say.
#[test]
fn the_pipeline_example_is_valid_but_for_its_certificate_files() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/pipeline-example.toml");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("/etc/ferry/", &format!("{}/", env!("CARGO_MANIFEST_DIR")))
        .replace("AmazonRootCA1.pem", "Cargo.toml")
        .replace("device.pem.crt", "Cargo.toml")
        .replace("private.pem.key", "Cargo.toml");
    let errors = match Config::from_toml(&text, &path) {
        Ok(_) => Vec::new(),
        Err(e) => e.errors.into_iter().map(|e| e.key).collect(),
    };
    // Cargo.toml is no PEM file: only the TLS loading (at start) would object.
    assert!(
        errors.iter().all(|k| k.starts_with("uplinks.")),
        "{errors:?}"
    );
    let without_uplink = text.split("[uplinks.iot_core]").next().unwrap();
    let config = Config::from_toml(without_uplink, &path).unwrap_or_else(|e| panic!("{e}"));
    let p = Pipeline::new(&config.pipeline, PipelineMetrics::new());
    let mut r = rec(
        "7",
        &[
            ("client_id", Value::Int(1)),
            ("voltage", Value::Int(230)),
            ("current", Value::Float(2.0)),
            ("temperature", Value::Int(20)),
        ],
    );
    assert_eq!(p.apply(&mut r), Outcome::Keep);
    assert_eq!(
        fields(&r),
        vec![
            f("voltage", Value::Int(230)),
            f("current", Value::Float(2.0)),
            f("temp_c", Value::Int(20)),
            f("power", Value::Float(0.46)),
            f("temp_f", Value::Float(68.0)),
            f("firmware", Value::Str("2.1".into())),
            f("line", Value::Int(7)),
            f("site", Value::Str("plant-a".into())),
        ]
    );
    assert!(config.routes.contains_key("minute"));
}
