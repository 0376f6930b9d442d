//! The query engine's face: series lists, device pages, latest values, and
//! range queries raw or in buckets of a step (`range.rs`), read through
//! `scan.rs`. Results never include a record that is not committed yet or
//! has been evicted by retention.

use std::collections::BTreeSet;
use std::ops::ControlFlow;
use std::sync::Arc;

use ferry_core::record::Millis;
use thiserror::Error;

use super::block::{Point, Rollup};
use super::bounds::clamp_time;
use super::index::{Index, View};
use super::layout::{series_ids, series_key, SeriesKey};
use super::range::{RangeQuery, Series};
use super::scan::{scan, Piece, Tables};
use crate::store::codec::DecodeError;
use crate::store::{Cancel, Store, StoreError};

/// An error answering a query.
#[derive(Debug, Error)]
pub enum QueryError {
    #[error("the result would hold more than {limit} points: narrow the range, or ask for buckets with a larger step")]
    TooManyPoints { limit: usize },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("an index block does not decode: {0}")]
    Decode(#[from] DecodeError),
    #[error("the step must be at least 1 ms, got {step}")]
    Step { step: i64 },
    #[error("a bucket of {step} ms does not fit the range of times")]
    Overflow { step: i64 },
    /// The engine's cancel flag was raised (its request is gone)
    /// before the answer was complete.
    #[error("cancelled: the request is gone")]
    Cancelled,
}

impl From<redb::StorageError> for QueryError {
    fn from(e: redb::StorageError) -> Self {
        QueryError::Store(e.into())
    }
}
impl From<redb::TableError> for QueryError {
    fn from(e: redb::TableError) -> Self {
        QueryError::Store(e.into())
    }
}

/// What is known of one series.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesInfo {
    pub device: Arc<str>,
    pub field: Arc<str>,
    pub first_ts: Millis,
    /// The latest reading (by timestamp).
    pub last: Point,
}

/// Answers queries from the index.
#[derive(Clone)]
pub struct Engine {
    store: Store,
    index: Arc<Index>,
    /// Cancels every read of this engine (see [`Engine::cancellable`]).
    cancel: Option<Cancel>,
}

impl Engine {
    pub fn new(store: Store, index: Arc<Index>) -> Engine {
        Engine {
            store,
            index,
            cancel: None,
        }
    }

    /// This engine, its reads ending with [`QueryError::Cancelled`] once
    /// `cancel` is: every loop over series, hours and blocks asks before
    /// each step, so a read ends within one block's decoding (or one hour's
    /// lookups) of the cancel, however much it had left to read. What the
    /// API gives each request, cancelled when the request is gone.
    pub fn cancellable(&self, cancel: Cancel) -> Engine {
        Engine {
            cancel: Some(cancel),
            ..self.clone()
        }
    }

    fn tables(&self, view: &View) -> Result<Tables, QueryError> {
        Tables::open(&view.tx, self.cancel.as_ref())
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn index(&self) -> &Arc<Index> {
        &self.index
    }

    /// The series of `device`'s `field`, if the names were ever stored.
    pub fn series_key(&self, device: &str, field: &str) -> Option<SeriesKey> {
        let names = self.store.names().snapshot();
        let id = |n: &str| names.iter().position(|x| &**x == n).map(|i| i as u32);
        Some(series_key(id(device)?, id(field)?))
    }

    /// The name of an interned id.
    pub fn name(&self, id: u32) -> Option<Arc<str>> {
        self.store.names().snapshot().get(id as usize).cloned()
    }

    /// Every series with a stored reading, by device then field, with its
    /// first timestamp and latest reading. With `device`, only its fields.
    pub fn list(&self, device: Option<&str>) -> Result<Vec<SeriesInfo>, QueryError> {
        let device_id = match device {
            Some(d) => {
                let names = self.store.names().snapshot();
                match names.iter().position(|x| &**x == d) {
                    Some(i) => Some(i as u32),
                    None => return Ok(Vec::new()),
                }
            }
            None => None,
        };
        let view = self.index.view(&self.store, None)?;
        let t = self.tables(&view)?;
        let (lo, hi) = match device_id {
            Some(d) => (series_key(d, 0), series_key(d, u32::MAX)),
            None => (0, u64::MAX),
        };
        let mut keys = BTreeSet::new();
        for e in t.series.range(lo..=hi)? {
            keys.insert(e?.0.value());
        }
        keys.extend(view.memory.keys().filter(|k| (lo..=hi).contains(*k)));
        let names = self.store.names().snapshot();
        let mut out = Vec::new();
        for s in keys {
            t.check()?;
            let (d, f) = series_ids(s);
            let (Some(device), Some(field)) = (names.get(d as usize), names.get(f as usize)) else {
                continue;
            };
            out.extend(series_info(&view, &t, s, device, field)?);
        }
        out.sort_by(|a, b| (&a.device, &a.field).cmp(&(&b.device, &b.field)));
        Ok(out)
    }

    /// The readings of each series with `from <= ts < to`: raw, or with
    /// `step` (ms, at least 1) in buckets aligned to multiples of `step`
    /// since the epoch. `from` and `to` are clamped to the query range
    /// ([`super::bounds`]); any `i64` is taken. Fails when all series
    /// together would return more than `limit` points or buckets.
    pub fn range(
        &self,
        series: &[SeriesKey],
        from: Millis,
        to: Millis,
        step: Option<i64>,
        limit: usize,
    ) -> Result<Vec<Series>, QueryError> {
        self.range_with_lag(series, from, to, step, limit)
            .map(|(out, _)| out)
    }

    /// [`Engine::range`], and how many stored records the index had not
    /// taken in when it read (0: the answer is complete; more while the
    /// index replays the log after a restart).
    pub fn range_with_lag(
        &self,
        series: &[SeriesKey],
        from: Millis,
        to: Millis,
        step: Option<i64>,
        limit: usize,
    ) -> Result<(Vec<Series>, u64), QueryError> {
        if let Some(step) = step.filter(|s| *s < 1) {
            return Err(QueryError::Step { step });
        }
        // Within the query range, no bucket computation below overflows.
        let (from, to) = (clamp_time(from), clamp_time(to));
        let view = self.index.view(&self.store, Some(series))?;
        let blocks = self.tables(&view)?;
        let mut out = Vec::with_capacity(series.len());
        let mut query = RangeQuery {
            view: &view,
            t: &blocks,
            from,
            to,
            limit,
            total: 0,
        };
        for &s in series {
            blocks.check()?;
            if from >= to {
                out.push(match step {
                    Some(_) => Series::Buckets(Vec::new()),
                    None => Series::Raw(Vec::new()),
                });
                continue;
            }
            // `from < to`, both within the query range.
            out.push(match step {
                None => query.raw(s)?,
                Some(step) => query.buckets(s, step)?,
            });
        }
        Ok((out, view.lag))
    }
}

/// The rollup of a series' first (or last) non-empty index bucket.
fn edge(view: &View, t: &Tables, s: SeriesKey, last: bool) -> Result<Option<Rollup>, QueryError> {
    let mut found = None;
    scan(
        view,
        t,
        s,
        Millis::MIN,
        Millis::MAX,
        Millis::MIN,
        Millis::MAX,
        last,
        |_| false,
        |_, piece| {
            found = match piece {
                Piece::Rollup(r) => Some(r),
                Piece::Points(p) => {
                    let mut it = p.iter();
                    it.next().map(|first| {
                        let mut r = Rollup::of(first);
                        it.for_each(|p| r.add(p));
                        r
                    })
                }
            };
            if found.is_some() {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        },
    )?;
    Ok(found)
}

/// One device of a [`DevicesPage`]: its name, how many fields it has
/// (the store's registry) and, when asked for, each field's series.
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    pub device: Arc<str>,
    pub field_count: u32,
    pub fields: Vec<SeriesInfo>,
}

/// A page of devices, by name, and the name to continue after.
#[derive(Debug, Clone)]
pub struct DevicesPage {
    pub devices: Vec<DeviceInfo>,
    /// The last device of the page when more follow it.
    pub next: Option<Arc<str>>,
    /// Stored records the index had not taken in when the page was read.
    pub lag: u64,
}

impl Engine {
    /// The devices named after `after`, in name order: at most `limit`,
    /// and, with `with_fields`, no more than `max_fields` fields in all
    /// after the first device (a device is never split). The store's
    /// registry of devices gives the names, so a page costs what it holds,
    /// not what the store holds.
    pub fn devices_page(
        &self,
        after: Option<&str>,
        limit: usize,
        with_fields: bool,
        max_fields: usize,
    ) -> Result<DevicesPage, QueryError> {
        use std::ops::Bound;
        let registry = self.store.names().devices();
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut range = registry
            .range::<str, _>((from, Bound::Unbounded))
            .peekable();
        let mut page = Vec::new();
        let mut fields = 0usize;
        while let Some((name, entry)) = range.peek() {
            if page.len() >= limit.max(1)
                || (with_fields && !page.is_empty() && fields + entry.fields as usize > max_fields)
            {
                break;
            }
            fields += entry.fields as usize;
            page.push(((*name).clone(), **entry));
            range.next();
        }
        let next = match range.peek() {
            Some(_) => page.last().map(|(n, _)| n.clone()),
            None => None,
        };
        let mut devices: Vec<DeviceInfo> = page
            .iter()
            .map(|(name, e)| DeviceInfo {
                device: name.clone(),
                field_count: e.fields,
                fields: Vec::new(),
            })
            .collect();
        let mut lag = self.index.lag(&self.store);
        if with_fields && !page.is_empty() {
            let ids: Vec<u32> = page.iter().map(|(_, e)| e.id).collect();
            let view = self.index.view_devices(&self.store, &ids)?;
            lag = view.lag;
            let t = self.tables(&view)?;
            let names = self.store.names().snapshot();
            for (out, (_, e)) in devices.iter_mut().zip(&page) {
                out.fields = fields_of(&view, &t, &names, e.id, &out.device)?;
            }
        }
        Ok(DevicesPage { devices, next, lag })
    }

    /// Each field's series of `device`, by field name (empty for a device
    /// without stored records), and the stored records the index had not
    /// taken in; copies only its in-memory buckets.
    pub fn device_fields(&self, device: &str) -> Result<(Vec<SeriesInfo>, u64), QueryError> {
        let Some(entry) = self.store.names().devices().get(device).copied() else {
            return Ok((Vec::new(), self.index.lag(&self.store)));
        };
        let view = self.index.view_devices(&self.store, &[entry.id])?;
        let t = self.tables(&view)?;
        let names = self.store.names().snapshot();
        let fields = fields_of(&view, &t, &names, entry.id, &Arc::from(device))?;
        Ok((fields, view.lag))
    }
}

/// Series `s`'s first timestamp and last point, if it has any.
fn series_info(
    view: &View,
    t: &Tables,
    s: SeriesKey,
    device: &Arc<str>,
    field: &Arc<str>,
) -> Result<Option<SeriesInfo>, QueryError> {
    let (Some(first), Some(last)) = (edge(view, t, s, false)?, edge(view, t, s, true)?) else {
        return Ok(None);
    };
    Ok(Some(SeriesInfo {
        device: device.clone(),
        field: field.clone(),
        first_ts: first.first_ts,
        last: Point {
            seq: last.last_seq,
            ts: last.last_ts,
            value: last.last,
        },
    }))
}

/// The series of device `id`, by field name.
fn fields_of(
    view: &View,
    t: &Tables,
    names: &[Arc<str>],
    id: u32,
    device: &Arc<str>,
) -> Result<Vec<SeriesInfo>, QueryError> {
    let (lo, hi) = (series_key(id, 0), series_key(id, u32::MAX));
    let mut keys = BTreeSet::new();
    for k in t.series.range(lo..=hi)? {
        keys.insert(k?.0.value());
    }
    keys.extend(view.memory.keys().filter(|k| (lo..=hi).contains(*k)));
    let mut out = Vec::with_capacity(keys.len());
    for s in keys {
        t.check()?;
        let Some(field) = names.get(series_ids(s).1 as usize) else {
            continue;
        };
        out.extend(series_info(view, t, s, device, field)?);
    }
    out.sort_by(|a, b| a.field.cmp(&b.field));
    Ok(out)
}
