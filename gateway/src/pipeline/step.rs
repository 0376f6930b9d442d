//! Applying the configured steps to one record (no I/O: unit-tested with
//! plain values).

use std::collections::BTreeMap;
use std::sync::Arc;

use ferry_core::record::{Record, Value};
use prometheus_client::metrics::counter::Counter;

use super::config::{Action, PipelineConfig, Step};
use crate::metrics::{PipelineMetrics, StepLabels};

/// What became of a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Keep,
    Drop,
}

/// The compiled pipeline, shared by its task (and benchmarks).
pub struct Pipeline {
    steps: Vec<Compiled>,
    devices: BTreeMap<String, Vec<(Box<str>, Value)>>,
    metrics: PipelineMetrics,
}

struct Compiled {
    step: Step,
    /// `ferry_pipeline_records_dropped_total{step,reason="filtered"}`, resolved once.
    filtered: Counter,
}

impl Pipeline {
    pub fn new(config: &PipelineConfig, metrics: PipelineMetrics) -> Arc<Pipeline> {
        let steps = config
            .steps
            .iter()
            .map(|step| Compiled {
                filtered: metrics
                    .records_dropped
                    .get_or_create(&StepLabels::new(&step.name, "filtered"))
                    .clone(),
                step: step.clone(),
            })
            .collect();
        Arc::new(Pipeline {
            steps,
            devices: config.devices.clone(),
            metrics,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    pub fn metrics(&self) -> &PipelineMetrics {
        &self.metrics
    }

    /// Applies every step to `record` in order.
    pub fn apply(&self, record: &mut Record) -> Outcome {
        self.metrics.records_in.inc();
        for c in &self.steps {
            let step = &c.step;
            if !applies(step, record) {
                continue;
            }
            if self.apply_step(c, record) == Outcome::Drop {
                self.metrics.records_out_dropped.inc();
                return Outcome::Drop;
            }
        }
        Outcome::Keep
    }

    /// Applies the steps to each record of `records`, removing dropped ones.
    pub fn apply_all(&self, records: &mut Vec<Record>) {
        records.retain_mut(|r| self.apply(r) == Outcome::Keep);
    }

    fn apply_step(&self, c: &Compiled, record: &mut Record) -> Outcome {
        let step = &c.step;
        match &step.action {
            Action::Filter(expr) => match expr.eval_bool(record) {
                Ok(true) => return Outcome::Keep,
                Ok(false) => {
                    c.filtered.inc();
                }
                Err(e) => {
                    self.error(step, e.label());
                    self.metrics
                        .records_dropped
                        .get_or_create(&StepLabels::new(&step.name, e.label()))
                        .inc();
                }
            },
            Action::Select(keep) => record
                .fields
                .retain(|(n, _)| keep.iter().any(|k| **k == **n)),
            Action::Remove(drop) => record
                .fields
                .retain(|(n, _)| !drop.iter().any(|k| **k == **n)),
            Action::Rename(pairs) => {
                for (old, new) in pairs {
                    // In place; a field already named `new` is replaced.
                    if let Some(i) = position(record, old) {
                        let (_, v) = record.fields.remove(i);
                        match position(record, new) {
                            Some(j) => record.fields[j].1 = v,
                            None => record.fields.insert(i, (new.as_str().into(), v)),
                        }
                    }
                }
            }
            Action::Add(pairs) => {
                for (name, v) in pairs {
                    set(record, name, v.clone());
                }
            }
            Action::Copy(pairs) => {
                for (new, from) in pairs {
                    if let Some(v) = record.field(from).cloned() {
                        set(record, new, v);
                    }
                }
            }
            Action::Math(exprs) => {
                // Every expression sees the record as it was before the step.
                let results: Vec<_> = exprs.iter().map(|(_, e)| e.eval(record)).collect();
                for ((name, _), result) in exprs.iter().zip(results) {
                    match result {
                        Ok(v) => set(record, name, v),
                        Err(e) => self.error(step, e.label()),
                    }
                }
            }
            Action::Enrich(keys) => {
                if let Some(meta) = self.devices.get(&*record.device) {
                    for (k, v) in meta {
                        if keys.is_empty() || keys.iter().any(|x| **x == **k) {
                            set(record, k, v.clone());
                        }
                    }
                }
            }
        }
        match step.action {
            Action::Filter(_) => Outcome::Drop,
            _ => Outcome::Keep,
        }
    }

    fn error(&self, step: &Step, reason: &str) {
        self.metrics
            .errors
            .get_or_create(&StepLabels::new(&step.name, reason))
            .inc();
    }
}

/// Whether `step` is limited to other sources or devices than `record`'s.
fn applies(step: &Step, record: &Record) -> bool {
    (step.sources.is_empty() || step.sources.iter().any(|s| **s == *record.source))
        && (step.devices.is_empty() || step.devices.iter().any(|d| **d == *record.device))
}

fn position(record: &Record, name: &str) -> Option<usize> {
    record.fields.iter().position(|(n, _)| &**n == name)
}

/// Sets `name` to `value`, in place if the field exists, else at the end.
fn set(record: &mut Record, name: &str, value: Value) {
    match position(record, name) {
        Some(i) => record.fields[i].1 = value,
        None => record.fields.push((name.into(), value)),
    }
}
