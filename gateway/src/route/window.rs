//! Tumbling windows per device and field, closed by record time (no I/O).
//!
//! - A record at `ts` belongs to the window `[start, start + size)` with
//!   `start = floor(ts / size) * size` (aligned to the Unix epoch).
//! - The route's *watermark* is the highest timestamp of the records it
//!   has read (selected by the route or not, reported by the deadband or not).
//!   A window closes, and its aggregates are emitted, as soon as the
//!   watermark reaches its end.
//! - A record whose window has already closed is *late*. If the watermark
//!   is less than `end + grace`, it goes into a late window of its own for
//!   the same interval (one output record marked `late = true`, emitted
//!   when the watermark reaches `end + grace`); otherwise it is counted
//!   (`too_late`) and dropped.
//! - Windows close after each record, so the output does not depend on how
//!   the input was batched: after a crash and restart the route emits
//!   exactly what an uninterrupted run would have.
//! - **On the clock too.** When no record moves the watermark, it moves
//!   with wall time: the route notes the wall time at which its watermark
//!   last advanced (the *anchor*), and the watermark's estimate at wall
//!   time `now` is `watermark + (now - anchor)`. When the estimate reaches
//!   a window's `end + grace`, the window (late or not) is closed and
//!   emitted ([`Windows::close_by_clock`]), so a device that stops reporting
//!   does not hold its last window open. A record that arrives afterwards
//!   for a window closed this way is too late (counted and dropped). The
//!   estimate follows the devices' own clock, so a device whose clock is off
//!   by minutes, or a replay of old readings, is not cut short. The anchor
//!   is part of the durable state, so a window due while Ferry was stopped
//!   is emitted when it starts again, once.
//! - Only numbers are aggregated (integers as floats); NaN and infinities
//!   are counted (`not_finite`) and skipped; strings and booleans are
//!   ignored. Output fields are `FIELD_AGG` (`temperature_mean`), fields in
//!   name order, aggregates in configured order; `count` is an integer,
//!   the others floats; `stddev` is the population standard deviation.

use std::collections::BTreeMap;
use std::sync::Arc;

use ferry_core::record::{Millis, Record, Value};
use serde::{Deserialize, Serialize};

use super::config::{Aggregate, WindowConfig};

/// Running aggregates of one field (Welford's algorithm for the variance).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Acc {
    n: u64,
    mean: f64,
    m2: f64,
    sum: f64,
    min: f64,
    max: f64,
    first: f64,
    last: f64,
}

impl Acc {
    fn push(&mut self, x: f64) {
        if self.n == 0 {
            self.min = x;
            self.max = x;
            self.first = x;
        }
        self.n += 1;
        let d = x - self.mean;
        self.mean += d / self.n as f64;
        self.m2 += d * (x - self.mean);
        self.sum += x;
        self.min = self.min.min(x);
        self.max = self.max.max(x);
        self.last = x;
    }

    fn get(&self, a: Aggregate) -> Value {
        match a {
            Aggregate::Count => Value::Int(self.n as i64),
            Aggregate::Min => Value::Float(self.min),
            Aggregate::Max => Value::Float(self.max),
            Aggregate::Mean => Value::Float(self.mean),
            Aggregate::Sum => Value::Float(self.sum),
            Aggregate::First => Value::Float(self.first),
            Aggregate::Last => Value::Float(self.last),
            Aggregate::Stddev => Value::Float((self.m2 / self.n as f64).sqrt()),
        }
    }
}

/// (window start, late, device).
type Key = (Millis, bool, String);

/// The open windows and the watermark: the durable state of a window step.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Windows {
    watermark: Option<Millis>,
    /// (watermark, wall time at which the route first saw it).
    #[serde(default)]
    anchor: Option<(Millis, Millis)>,
    /// Every window with `end + grace` at or before this (record time) has
    /// been closed by the clock.
    #[serde(default)]
    closed: Option<Millis>,
    /// Open windows, with each field's aggregates.
    open: Vec<(Key, BTreeMap<String, Acc>)>,
    #[serde(skip)]
    index: BTreeMap<Key, usize>,
}

/// What a window step did with a value it did not aggregate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skipped {
    TooLate,
    NotFinite,
}

impl Windows {
    /// Rebuilds the lookup after loading.
    pub fn reindex(&mut self) {
        self.index = self
            .open
            .iter()
            .enumerate()
            .map(|(i, (k, _))| (k.clone(), i))
            .collect();
    }

    /// Adds `r`; appends the windows it closes to `out`; reports skipped values.
    pub fn push(
        &mut self,
        cfg: &WindowConfig,
        route: &Arc<str>,
        r: &Record,
        out: &mut Vec<Record>,
        skipped: &mut impl FnMut(Skipped),
    ) {
        let size = cfg.size.as_millis() as Millis;
        let grace = cfg.grace.as_millis() as Millis;
        let wm = self.watermark.map_or(r.ts, |w| w.max(r.ts));
        self.watermark = Some(wm);
        let start = r.ts.div_euclid(size) * size;
        let end = start + size;
        let late = end <= wm;
        let clock_closed = self.closed.is_some_and(|c| end + grace <= c);
        if clock_closed || (late && wm >= end + grace) {
            skipped(Skipped::TooLate);
        } else {
            let key = (start, late, r.device.to_string());
            let i = match self.index.get(&key) {
                Some(&i) => i,
                None => {
                    self.open.push((key.clone(), BTreeMap::new()));
                    self.index.insert(key, self.open.len() - 1);
                    self.open.len() - 1
                }
            };
            let fields = &mut self.open[i].1;
            for (name, v) in &r.fields {
                let x = match v {
                    Value::Int(i) => *i as f64,
                    Value::Float(f) if f.is_finite() => *f,
                    Value::Float(_) => {
                        skipped(Skipped::NotFinite);
                        continue;
                    }
                    Value::Bool(_) | Value::Str(_) => continue,
                };
                match fields.get_mut(&**name) {
                    Some(acc) => acc.push(x),
                    None => {
                        let mut acc = Acc::default();
                        acc.push(x);
                        fields.insert(name.to_string(), acc);
                    }
                }
            }
        }
        self.close(cfg, route, wm, out);
    }

    /// Moves the watermark to `ts` if later (every record the route reads
    /// does, whether or not it is aggregated); emits what that closes.
    pub fn advance(
        &mut self,
        cfg: &WindowConfig,
        route: &Arc<str>,
        ts: Millis,
        out: &mut Vec<Record>,
    ) {
        let wm = self.watermark.map_or(ts, |w| w.max(ts));
        self.watermark = Some(wm);
        self.close(cfg, route, wm, out);
    }

    /// Notes that the route has read what it has at wall time `wall`: if
    /// the watermark moved since the last note, it is anchored there.
    pub fn anchor(&mut self, wall: Millis) {
        if let Some(wm) = self.watermark {
            if self.anchor.map(|(at, _)| at) != Some(wm) {
                self.anchor = Some((wm, wall));
            }
        }
    }

    /// The watermark's estimate at wall time `now` (see the module docs).
    fn estimate(&self, now: Millis) -> Option<Millis> {
        self.anchor
            .map(|(wm, wall)| wm.saturating_add(now.saturating_sub(wall).max(0)))
    }

    /// The wall time at which the clock closes the next window, if any is open.
    pub fn next_due(&self, cfg: &WindowConfig) -> Option<Millis> {
        let size = cfg.size.as_millis() as Millis;
        let grace = cfg.grace.as_millis() as Millis;
        let (wm, wall) = self.anchor?;
        // Keys are in start order: the first open window ends first.
        let (start, _, _) = self.index.keys().next()?;
        Some(wall + (start + size + grace - wm).max(0))
    }

    /// Closes, by wall time `now`, every window whose `end + grace` the
    /// watermark's estimate has reached; appends them to `out`.
    pub fn close_by_clock(
        &mut self,
        cfg: &WindowConfig,
        route: &Arc<str>,
        now: Millis,
        out: &mut Vec<Record>,
    ) {
        let Some(est) = self.estimate(now) else {
            return;
        };
        let size = cfg.size.as_millis() as Millis;
        let grace = cfg.grace.as_millis() as Millis;
        let due: Vec<Key> = self
            .index
            .keys()
            .take_while(|(start, _, _)| start + size + grace <= est)
            .cloned()
            .collect();
        if due.is_empty() {
            return;
        }
        self.closed = Some(self.closed.map_or(est, |c| c.max(est)));
        self.emit(cfg, route, due, out);
    }

    /// Emits, in (start, late, device) order, every window due at `wm`.
    fn close(&mut self, cfg: &WindowConfig, route: &Arc<str>, wm: Millis, out: &mut Vec<Record>) {
        let size = cfg.size.as_millis() as Millis;
        let grace = cfg.grace.as_millis() as Millis;
        let due: Vec<Key> = self
            .index
            .keys()
            .take_while(|(start, _, _)| start + size <= wm)
            .filter(|(start, late, _)| !late || start + size + grace <= wm)
            .cloned()
            .collect();
        self.emit(cfg, route, due, out);
    }

    /// Emits the windows `due` (in key order) and forgets them.
    fn emit(&mut self, cfg: &WindowConfig, route: &Arc<str>, due: Vec<Key>, out: &mut Vec<Record>) {
        if due.is_empty() {
            return;
        }
        let mut taken: Vec<Option<(Key, BTreeMap<String, Acc>)>> = std::mem::take(&mut self.open)
            .into_iter()
            .map(Some)
            .collect();
        for key in &due {
            let i = self.index.remove(key).expect("indexed");
            let (key, fields) = taken[i].take().expect("open window");
            let mut rec = Record {
                ts: key.0,
                source: route.clone(),
                device: key.2.as_str().into(),
                fields: Vec::with_capacity(fields.len() * cfg.aggregates.len() + 1),
            };
            for (name, acc) in &fields {
                for a in &cfg.aggregates {
                    rec.fields
                        .push((format!("{name}_{}", a.as_str()).into(), acc.get(*a)));
                }
            }
            if key.1 {
                rec.fields.push(("late".into(), Value::Bool(true)));
            }
            out.push(rec);
        }
        self.open = taken.into_iter().flatten().collect();
        self.reindex();
    }
}
