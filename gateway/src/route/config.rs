//! `[routes.NAME]`: what an uplink with `route = "NAME"` sends, computed
//! from the stored stream by stateful, durable steps (see `route/`).
//!
//! Steps apply in a fixed order: select (`sources`, `devices`, `fields`),
//! then `deadband`, then `window`.

use std::collections::BTreeSet;
use std::num::NonZeroUsize;
use std::time::Duration;

use serde::Deserialize;

use ferry_core::report::{KeyPath, Report};

/// `[routes.NAME]`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Only records of these sources. Default: `[]` (all).
    #[serde(default)]
    pub sources: Vec<String>,
    /// Only records of these devices. Default: `[]` (all).
    #[serde(default)]
    pub devices: Vec<String>,
    /// Only these fields (a record left with none is not passed on).
    /// Default: `[]` (all).
    #[serde(default)]
    pub fields: Vec<String>,
    /// Report a field only when it moved enough. Default: none.
    pub deadband: Option<DeadbandConfig>,
    /// Aggregate into tumbling windows. Default: none.
    pub window: Option<WindowConfig>,
    /// Stored records read and processed per commit. 1 to 100,000.
    /// Default: `4096`.
    #[serde(default = "default_batch")]
    pub batch_records: NonZeroUsize,
}

fn default_batch() -> NonZeroUsize {
    NonZeroUsize::new(4096).expect("nonzero")
}

/// `deadband = { absolute = 0.5, relative = 0.01, heartbeat = "5m" }`:
/// a numeric field is reported when it differs from the last reported
/// value by more than `absolute`, or by more than `relative` × |last|
/// (either, when both are set), or when `heartbeat` has passed (by record
/// time) since it was last reported. Strings and booleans are reported
/// when they change. The first value of a field is always reported.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DeadbandConfig {
    /// Threshold in the field's unit. At least 0.
    pub absolute: Option<f64>,
    /// Threshold as a fraction of the last reported value (0.01 = 1%). At least 0.
    pub relative: Option<f64>,
    /// Report anyway after this long. Default: none.
    #[serde(default, with = "humantime_serde")]
    pub heartbeat: Option<Duration>,
}

/// `window = { size = "1m", aggregates = ["min", "max", "mean"], grace = "10s" }`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WindowConfig {
    /// The window length, aligned to the Unix epoch. 1s to 1d.
    #[serde(with = "humantime_serde")]
    pub size: Duration,
    /// Aggregates per numeric field; output fields are named `FIELD_AGG`.
    /// Default: `["count", "min", "max", "mean"]`.
    #[serde(default = "default_aggregates")]
    pub aggregates: Vec<Aggregate>,
    /// How long (by record time) after a window closed a late record is
    /// still aggregated, into a window of its own marked `late = true`;
    /// later ones are counted and dropped. 0s to 1d. Default: `"0s"`.
    #[serde(default, with = "humantime_serde")]
    pub grace: Duration,
}

fn default_aggregates() -> Vec<Aggregate> {
    vec![
        Aggregate::Count,
        Aggregate::Min,
        Aggregate::Max,
        Aggregate::Mean,
    ]
}

/// One aggregate of a window.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Aggregate {
    Count,
    Min,
    Max,
    Mean,
    Sum,
    First,
    Last,
    Stddev,
}

impl Aggregate {
    pub fn as_str(self) -> &'static str {
        match self {
            Aggregate::Count => "count",
            Aggregate::Min => "min",
            Aggregate::Max => "max",
            Aggregate::Mean => "mean",
            Aggregate::Sum => "sum",
            Aggregate::First => "first",
            Aggregate::Last => "last",
            Aggregate::Stddev => "stddev",
        }
    }
}

impl RouteConfig {
    pub(crate) fn check(&self, at: &KeyPath, sources: &BTreeSet<String>, report: &mut Report) {
        for (i, s) in self.sources.iter().enumerate() {
            if !sources.contains(s) {
                report.error(at.key("sources").index(i), format!("no source named {s:?}"));
            }
        }
        report.int_in(
            at.key("batch_records"),
            self.batch_records.get() as u64,
            1,
            100_000,
        );
        if let Some(d) = &self.deadband {
            let at = at.key("deadband");
            for (key, v) in [("absolute", d.absolute), ("relative", d.relative)] {
                if v.is_some_and(|v| !(v.is_finite() && v >= 0.0)) {
                    report.error(at.key(key), "must be a finite number of at least 0");
                }
            }
            if d.absolute.is_none() && d.relative.is_none() && d.heartbeat.is_none() {
                report.error(at, "set at least one of absolute, relative, heartbeat");
            }
        }
        if let Some(w) = &self.window {
            let at = at.key("window");
            let day = Duration::from_secs(86_400);
            report.duration_in(at.key("size"), w.size, Duration::from_secs(1), day);
            if w.size.subsec_nanos() != 0 {
                report.error(at.key("size"), "must be a whole number of seconds");
            }
            report.duration_in(at.key("grace"), w.grace, Duration::ZERO, day);
            if w.aggregates.is_empty() {
                report.error(at.key("aggregates"), "name at least one aggregate");
            }
        }
    }
}
