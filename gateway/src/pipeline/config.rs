//! `[[pipeline]]` steps and the `[devices.NAME]` registry they enrich from.
//!
//! Each `[[pipeline]]` table is one step and holds exactly one of `filter`,
//! `select`, `remove`, `rename`, `add`, `copy`, `math`, `enrich`, plus
//! optionally `name` (the metric label; default `"<index>_<kind>"`),
//! `sources` and `devices` (the step applies only to records from those;
//! default: all). Expressions are compiled here, so a bad one is reported
//! with its key and line by `ferry validate` like every other problem.

use std::collections::{BTreeMap, BTreeSet};

use ferry_core::record::Value;
use serde::Deserialize;

use super::Expression;
use ferry_core::report::{typed, KeyPath, Report};

/// The pipeline: ordered steps, and the device registry.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PipelineConfig {
    /// The steps, in the order they apply.
    pub steps: Vec<Step>,
    /// `[devices.NAME]`: static metadata per device, for `enrich`.
    pub devices: BTreeMap<String, Vec<(Box<str>, Value)>>,
}

/// One checked step.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    /// The metric label.
    pub name: String,
    /// Only records from these sources; empty = all.
    pub sources: Vec<String>,
    /// Only records from these devices; empty = all.
    pub devices: Vec<String>,
    pub action: Action,
}

/// What a step does.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Keep the record only if the expression is true.
    Filter(Expression),
    /// Keep only these fields.
    Select(Vec<String>),
    /// Drop these fields.
    Remove(Vec<String>),
    /// (old, new): rename a field.
    Rename(Vec<(String, String)>),
    /// (field, constant): set a field to a constant.
    Add(Vec<(String, Value)>),
    /// (new, from): set a field to a copy of another.
    Copy(Vec<(String, String)>),
    /// (field, expression): set a field to the expression's value.
    Math(Vec<(String, Expression)>),
    /// Add these keys of the device's registry entry (empty = all).
    Enrich(Vec<String>),
}

impl Action {
    /// The step kind, as written in the config.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Filter(_) => "filter",
            Action::Select(_) => "select",
            Action::Remove(_) => "remove",
            Action::Rename(_) => "rename",
            Action::Add(_) => "add",
            Action::Copy(_) => "copy",
            Action::Math(_) => "math",
            Action::Enrich(_) => "enrich",
        }
    }
}

/// A `[[pipeline]]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    /// The step's name in metrics. Default: `"<index>_<kind>"`.
    name: Option<String>,
    /// Apply only to records of these sources. Default: all.
    #[serde(default)]
    sources: Vec<String>,
    /// Apply only to records of these devices. Default: all.
    #[serde(default)]
    devices: Vec<String>,
    /// A condition; records for which it is false (or cannot be evaluated) are dropped.
    filter: Option<String>,
    /// The fields to keep.
    select: Option<Vec<String>>,
    /// The fields to drop.
    remove: Option<Vec<String>>,
    /// `{ old = "new" }`.
    rename: Option<BTreeMap<String, String>>,
    /// `{ field = constant }`.
    add: Option<BTreeMap<String, toml::Value>>,
    /// `{ new = "existing" }`.
    copy: Option<BTreeMap<String, String>>,
    /// `{ field = "expression" }`.
    math: Option<BTreeMap<String, String>>,
    /// Registry keys to add (`[]` = all).
    enrich: Option<Vec<String>>,
}

/// A TOML scalar as a field value.
fn scalar(v: &toml::Value) -> Option<Value> {
    match v {
        toml::Value::String(s) => Some(Value::Str(s.as_str().into())),
        toml::Value::Integer(i) => Some(Value::Int(*i)),
        toml::Value::Float(f) if f.is_finite() => Some(Value::Float(*f)),
        toml::Value::Boolean(b) => Some(Value::Bool(*b)),
        _ => None,
    }
}

/// `[devices.NAME]`: tables of scalars.
pub(crate) fn build_devices(
    value: Option<toml::Value>,
    at: &KeyPath,
    report: &mut Report,
) -> BTreeMap<String, Vec<(Box<str>, Value)>> {
    let mut out = BTreeMap::new();
    let Some(value) = value else { return out };
    let toml::Value::Table(table) = value else {
        report.error(
            at.clone(),
            "expected devices as tables, like [devices.NAME]",
        );
        return out;
    };
    for (name, entry) in table {
        let at = at.key(&name);
        let toml::Value::Table(entry) = entry else {
            report.error(at, "expected a table of metadata, like site = \"plant-a\"");
            continue;
        };
        let mut fields = Vec::new();
        for (key, v) in entry {
            match scalar(&v) {
                Some(v) => fields.push((Box::from(key.as_str()), v)),
                None => report.error(
                    at.key(&key),
                    "expected a string, integer, finite float or boolean",
                ),
            }
        }
        out.insert(name, fields);
    }
    out
}

/// `[[pipeline]]`: the checked steps.
pub(crate) fn build_steps(
    value: Option<toml::Value>,
    at: &KeyPath,
    sources: &BTreeSet<String>,
    report: &mut Report,
) -> Vec<Step> {
    let mut out = Vec::new();
    let Some(value) = value else { return out };
    let toml::Value::Array(items) = value else {
        report.error(at.clone(), "expected an array of tables, like [[pipeline]]");
        return out;
    };
    let mut names = BTreeSet::new();
    for (i, item) in items.into_iter().enumerate() {
        let at = at.index(i);
        let Some(raw) = typed::<RawStep>(item, &at, report) else {
            continue;
        };
        if let Some(step) = check_step(raw, i, &at, sources, report) {
            if !names.insert(step.name.clone()) {
                report.error(
                    at.key("name"),
                    format!("step name {:?} is used twice", step.name),
                );
            }
            out.push(step);
        }
    }
    out
}

fn check_step(
    raw: RawStep,
    index: usize,
    at: &KeyPath,
    sources: &BTreeSet<String>,
    report: &mut Report,
) -> Option<Step> {
    for (i, s) in raw.sources.iter().enumerate() {
        if !sources.contains(s) {
            report.error(at.key("sources").index(i), format!("no source named {s:?}"));
        }
    }
    let present = [
        raw.filter.is_some(),
        raw.select.is_some(),
        raw.remove.is_some(),
        raw.rename.is_some(),
        raw.add.is_some(),
        raw.copy.is_some(),
        raw.math.is_some(),
        raw.enrich.is_some(),
    ]
    .into_iter()
    .filter(|p| *p)
    .count();
    if present != 1 {
        report.error(
            at.clone(),
            format!(
                "a step holds exactly one of filter, select, remove, rename, add, copy, math, enrich; found {present}"
            ),
        );
        return None;
    }
    let errors = report.errors.len();
    let mut actions: Vec<Action> = Vec::new();
    if let Some(text) = raw.filter {
        match Expression::compile(&text) {
            Ok(e) => actions.push(Action::Filter(e)),
            Err(e) => report.error(at.key("filter"), e),
        }
    }
    if let Some(fields) = raw.select {
        actions.push(Action::Select(fields));
    }
    if let Some(fields) = raw.remove {
        actions.push(Action::Remove(fields));
    }
    if let Some(map) = raw.rename {
        actions.push(Action::Rename(map.into_iter().collect()));
    }
    if let Some(map) = raw.add {
        let mut fields = Vec::new();
        for (k, v) in map {
            match scalar(&v) {
                Some(v) => fields.push((k, v)),
                None => report.error(
                    at.key("add").key(&k),
                    "expected a string, integer, finite float or boolean",
                ),
            }
        }
        actions.push(Action::Add(fields));
    }
    if let Some(map) = raw.copy {
        actions.push(Action::Copy(map.into_iter().collect()));
    }
    if let Some(map) = raw.math {
        let mut fields = Vec::new();
        for (k, text) in map {
            match Expression::compile(&text) {
                Ok(e) => fields.push((k, e)),
                Err(e) => report.error(at.key("math").key(&k), e),
            }
        }
        actions.push(Action::Math(fields));
    }
    if let Some(keys) = raw.enrich {
        actions.push(Action::Enrich(keys));
    }
    if report.errors.len() > errors {
        return None;
    }
    let action = actions.pop()?;
    Some(Step {
        name: raw
            .name
            .unwrap_or_else(|| format!("{index}_{}", action.kind())),
        sources: raw.sources,
        devices: raw.devices,
        action,
    })
}
