//! Deadband: report a field only when it moved enough (no I/O).
//!
//! Per device and field, the last *reported* value and its record time are
//! kept. A number is reported when there is no last value, when it differs
//! from the last by more than `absolute`, or by more than `relative` ×
//! |last| (either threshold, when both are set; with neither, any change),
//! or when `heartbeat` has passed since the last report (by record time).
//! A string or boolean is reported when it changed or on the heartbeat.
//! NaN and infinities are counted (`not_finite`) and not reported. The
//! output record has the reported fields only; a record with none is not
//! passed on.

use std::collections::BTreeMap;

use ferry_core::record::{Millis, Record, Value};
use serde::{Deserialize, Serialize};

use super::config::DeadbandConfig;

/// The last reported value of a field.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum Last {
    Num(f64),
    Bool(bool),
    Str(String),
}

/// The durable state of a deadband step: device → field → (value, ts).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Deadband {
    last: BTreeMap<String, BTreeMap<String, (Last, Millis)>>,
}

impl Deadband {
    /// Keeps the fields of `r` worth reporting; returns false if none is.
    /// `not_finite` is called for each NaN or infinite value.
    pub fn apply(
        &mut self,
        cfg: &DeadbandConfig,
        r: &mut Record,
        not_finite: &mut impl FnMut(),
    ) -> bool {
        let device = self.last.entry(r.device.to_string()).or_default();
        let heartbeat = cfg.heartbeat.map(|h| h.as_millis() as Millis);
        r.fields.retain(|(name, v)| {
            let now = match v {
                Value::Int(i) => Last::Num(*i as f64),
                Value::Float(f) if f.is_finite() => Last::Num(*f),
                Value::Float(_) => {
                    not_finite();
                    return false;
                }
                Value::Bool(b) => Last::Bool(*b),
                Value::Str(s) => Last::Str(s.to_string()),
            };
            let report = match device.get(&**name) {
                None => true,
                Some((last, at)) => {
                    heartbeat.is_some_and(|h| r.ts - at >= h) || moved(cfg, last, &now)
                }
            };
            if report {
                device.insert(name.to_string(), (now, r.ts));
            }
            report
        });
        !r.fields.is_empty()
    }
}

fn moved(cfg: &DeadbandConfig, last: &Last, now: &Last) -> bool {
    match (last, now) {
        (Last::Num(a), Last::Num(b)) => {
            let d = (b - a).abs();
            match (cfg.absolute, cfg.relative) {
                (None, None) => d > 0.0,
                (abs, rel) => abs.is_some_and(|t| d > t) || rel.is_some_and(|t| d > t * a.abs()),
            }
        }
        _ => last != now,
    }
}
