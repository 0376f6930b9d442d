//! Queries over the index: series lists, latest values, range queries raw
//! or in buckets of a step. Results never include a record that is not
//! committed yet or has been evicted by retention.

use std::collections::BTreeSet;
use std::ops::ControlFlow;
use std::sync::Arc;

use ferry_core::record::Millis;
use redb::{AccessGuard, ReadOnlyTable, ReadTransaction};
use thiserror::Error;

use super::block::{union_by_seq, Block, Header, Point, Rollup};
use super::bounds::{bucket_start, clamp_time};
use super::index::{Index, View};
use super::layout::{
    bucket_of, hour_of, series_ids, series_key, Directory, SeriesKey, BLOCKS, BUCKET_MS, HOURS,
    HOUR_MS, SERIES,
};
use super::memory::OpenBucket;
use crate::store::codec::DecodeError;
use crate::store::{Store, StoreError};

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

/// One output bucket of a range query: `ts` is its start.
#[derive(Debug, Clone, PartialEq)]
pub struct Bucket {
    pub ts: Millis,
    pub rollup: Rollup,
}

/// A series' answer to a range query.
#[derive(Debug, Clone, PartialEq)]
pub enum Series {
    /// Every point, by timestamp (then sequence number).
    Raw(Vec<Point>),
    /// Buckets with at least one point, by start.
    Buckets(Vec<Bucket>),
}

impl Series {
    pub fn len(&self) -> usize {
        match self {
            Series::Raw(p) => p.len(),
            Series::Buckets(b) => b.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
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

/// A piece of a series in one index bucket.
enum Piece {
    /// The whole block, known from its header.
    Rollup(Rollup),
    /// The points in range, by timestamp.
    Points(Vec<Point>),
}

/// Answers queries from the index.
#[derive(Clone)]
pub struct Engine {
    store: Store,
    index: Arc<Index>,
}

impl Engine {
    pub fn new(store: Store, index: Arc<Index>) -> Engine {
        Engine { store, index }
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
        let t = Tables::open(&view.tx)?;
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
        let blocks = Tables::open(&view.tx)?;
        let mut out = Vec::with_capacity(series.len());
        let mut total = 0usize;
        for &s in series {
            if from >= to {
                out.push(match step {
                    Some(_) => Series::Buckets(Vec::new()),
                    None => Series::Raw(Vec::new()),
                });
                continue;
            }
            // `from < to`, both within the query range.
            let (b0, b1) = (bucket_of(from), bucket_of(to - 1));
            match step {
                None => {
                    let mut points = Vec::new();
                    let mut over = false;
                    scan(
                        &view,
                        &blocks,
                        s,
                        from,
                        to,
                        b0,
                        b1,
                        false,
                        |_| true,
                        |_, piece| {
                            if let Piece::Points(p) = piece {
                                total += p.len();
                                if total > limit {
                                    over = true;
                                    return ControlFlow::Break(());
                                }
                                points.extend(p);
                            }
                            ControlFlow::Continue(())
                        },
                    )?;
                    if over {
                        return Err(QueryError::TooManyPoints { limit });
                    }
                    out.push(Series::Raw(points));
                }
                Some(step) => {
                    let key = |ts: Millis| bucket_start(ts, step);
                    // A whole block serves from its header when it lies in
                    // the range and in one output bucket.
                    let whole = |b: Millis| {
                        b >= from
                            && b.saturating_add(BUCKET_MS) <= to
                            && matches!(
                                (key(b), key(b.saturating_add(BUCKET_MS - 1))),
                                (Some(x), Some(y)) if x == y
                            )
                    };
                    let mut overflow = false;
                    let mut buckets: Vec<Bucket> = Vec::new();
                    let mut over = false;
                    let mut add = |ts: Millis, r: &Rollup, buckets: &mut Vec<Bucket>| match buckets
                        .last_mut()
                    {
                        Some(last) if last.ts == ts => {
                            last.rollup.merge(r);
                            true
                        }
                        _ => {
                            total += 1;
                            if total > limit {
                                return false;
                            }
                            buckets.push(Bucket {
                                ts,
                                rollup: r.clone(),
                            });
                            true
                        }
                    };
                    scan(
                        &view,
                        &blocks,
                        s,
                        from,
                        to,
                        b0,
                        b1,
                        false,
                        |b| !whole(b),
                        |b, piece| {
                            let mut add_at = |ts: Millis, r: &Rollup| match key(ts) {
                                Some(k) => add(k, r, &mut buckets),
                                None => {
                                    overflow = true;
                                    false
                                }
                            };
                            let ok = match piece {
                                Piece::Rollup(r) => add_at(b, &r),
                                Piece::Points(p) => p.iter().all(|p| add_at(p.ts, &Rollup::of(p))),
                            };
                            if ok {
                                ControlFlow::Continue(())
                            } else {
                                over = true;
                                ControlFlow::Break(())
                            }
                        },
                    )?;
                    if overflow {
                        return Err(QueryError::Overflow { step });
                    }
                    if over {
                        return Err(QueryError::TooManyPoints { limit });
                    }
                    out.push(Series::Buckets(buckets));
                }
            }
        }
        Ok((out, view.lag))
    }
}

/// The index tables in a read transaction.
struct Tables {
    blocks: ReadOnlyTable<(i64, u64), &'static [u8]>,
    hours: ReadOnlyTable<(u64, i64), &'static [u8]>,
    series: ReadOnlyTable<u64, (i64, i64)>,
}

impl Tables {
    fn open(tx: &ReadTransaction) -> Result<Tables, QueryError> {
        Ok(Tables {
            blocks: tx.open_table(BLOCKS)?,
            hours: tx.open_table(HOURS)?,
            series: tx.open_table(SERIES)?,
        })
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

/// A persisted block as found: its header (from the hour's directory) or
/// its bytes (read minute by minute in an hour without one).
enum Disk<'a> {
    Header(Header),
    Bytes(AccessGuard<'a, &'static [u8]>),
}

/// One index bucket of a series: in memory (and maybe on disk), or on disk.
enum Slot<'a> {
    Memory(&'a OpenBucket, Option<Disk<'a>>),
    Disk(Disk<'a>),
}

/// Visits series `s`'s index buckets `b0..=b1` in order (reversed with
/// `rev`), merging persisted blocks with the in-memory buckets. A block is
/// given as its header's rollup when `need_points` says so is enough and
/// every point of it is visible; otherwise as its points with
/// `from <= ts < to` that are committed and not evicted, by timestamp.
///
/// Persisted blocks are looked for only within the series' extent, an hour
/// at a time: through the hour's directory when it is sealed (one read for
/// up to 60 blocks), else minute by minute.
#[allow(clippy::too_many_arguments)]
fn scan(
    view: &View,
    t: &Tables,
    s: SeriesKey,
    from: Millis,
    to: Millis,
    b0: Millis,
    b1: Millis,
    rev: bool,
    need_points: impl Fn(Millis) -> bool,
    mut f: impl FnMut(Millis, Piece) -> ControlFlow<()>,
) -> Result<(), QueryError> {
    if b0 > b1 {
        return Ok(()); // an empty range (and `range(b0..=b1)` would panic)
    }
    let visible =
        |p: &Point| p.seq >= view.first_record && p.seq <= view.head && p.ts >= from && p.ts < to;
    let finish = |mut points: Vec<Point>| {
        points.retain(visible);
        points.sort_by_key(|p| (p.ts, p.seq));
        points
    };
    let block_points = |b: Millis, disk: &Disk<'_>| -> Result<Option<Vec<Point>>, QueryError> {
        Ok(match disk {
            Disk::Bytes(v) => Some(Block::decode(v.value())?.points),
            Disk::Header(_) => match t.blocks.get((b, s))? {
                Some(v) => Some(Block::decode(v.value())?.points),
                None => None,
            },
        })
    };
    let empty = Default::default();
    let memory = view.memory.get(&s).unwrap_or(&empty);
    let extent = t
        .series
        .get(s)?
        .map(|v| v.value())
        .map(|(a, z)| (a.max(b0), z.min(b1)))
        .filter(|(a, z)| a <= z);
    let mut hours: BTreeSet<Millis> = memory.range(b0..=b1).map(|(b, _)| hour_of(*b)).collect();
    if let Some((a, z)) = extent {
        hours.extend((hour_of(a)..=z).step_by(HOUR_MS as usize));
    }
    let ordered: Box<dyn Iterator<Item = &Millis>> = if rev {
        Box::new(hours.iter().rev())
    } else {
        Box::new(hours.iter())
    };
    for &h in ordered {
        let (lo, hi) = (h.max(b0), h.saturating_add(HOUR_MS - BUCKET_MS).min(b1));
        if lo > hi {
            continue;
        }
        let mut disk: Vec<(Millis, Disk<'_>)> = Vec::new();
        if let Some((a, z)) = extent.filter(|(a, z)| *a <= hi && *z >= lo) {
            let (lo, hi) = (lo.max(a), hi.min(z));
            match t.hours.get((s, h))? {
                Some(v) => disk.extend(
                    Directory::decode(h, v.value())?
                        .0
                        .into_iter()
                        .filter(|(b, _)| (lo..=hi).contains(b))
                        .map(|(b, hd)| (b, Disk::Header(hd))),
                ),
                None => {
                    for m in (bucket_of(lo)..=hi).step_by(BUCKET_MS as usize) {
                        if let Some(v) = t.blocks.get((m, s))? {
                            disk.push((m, Disk::Bytes(v)));
                        }
                    }
                }
            }
        }
        // Merge with the memory's buckets of the hour, by bucket.
        let mut slots: Vec<(Millis, Slot<'_>)> = Vec::with_capacity(disk.len() + 1);
        let mut mem = memory.range(lo..=hi).peekable();
        let mut disk = disk.into_iter().peekable();
        loop {
            let (mk, dk) = (mem.peek().map(|(b, _)| **b), disk.peek().map(|(b, _)| *b));
            match (mk, dk) {
                (None, None) => break,
                (Some(m), d) if d.is_none_or(|d| m <= d) => {
                    let (_, ob) = mem.next().expect("peeked");
                    let on_disk = (d == Some(m)).then(|| disk.next().expect("peeked").1);
                    slots.push((m, Slot::Memory(ob, on_disk)));
                }
                _ => {
                    let (b, d) = disk.next().expect("peeked");
                    slots.push((b, Slot::Disk(d)));
                }
            }
        }
        if rev {
            slots.reverse();
        }
        for (b, slot) in slots {
            let piece = match slot {
                Slot::Memory(ob, None) => Piece::Points(finish(ob.points.to_vec())),
                Slot::Memory(ob, Some(d)) => {
                    let old = block_points(b, &d)?.unwrap_or_default();
                    Piece::Points(finish(union_by_seq(&old, &ob.points.to_vec())))
                }
                Slot::Disk(d) => {
                    let h = match &d {
                        Disk::Header(h) => h.clone(),
                        Disk::Bytes(v) => Block::decode_header(v.value())?,
                    };
                    if h.max_seq < view.first_record {
                        continue; // evicted
                    }
                    let complete = h.min_seq >= view.first_record && h.max_seq <= view.head;
                    if complete && !need_points(b) {
                        Piece::Rollup(h.rollup)
                    } else {
                        match block_points(b, &d)? {
                            Some(p) => Piece::Points(finish(p)),
                            None => continue,
                        }
                    }
                }
            };
            if matches!(&piece, Piece::Points(p) if p.is_empty()) {
                continue;
            }
            if f(b, piece).is_break() {
                return Ok(());
            }
        }
    }
    Ok(())
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
        if with_fields && !page.is_empty() {
            let ids: Vec<u32> = page.iter().map(|(_, e)| e.id).collect();
            let view = self.index.view_devices(&self.store, &ids)?;
            let t = Tables::open(&view.tx)?;
            let names = self.store.names().snapshot();
            for (out, (_, e)) in devices.iter_mut().zip(&page) {
                out.fields = fields_of(&view, &t, &names, e.id, &out.device)?;
            }
        }
        Ok(DevicesPage { devices, next })
    }

    /// Each field's series of `device`, by field name (empty for a device
    /// without stored records); copies only its in-memory buckets.
    pub fn device_fields(&self, device: &str) -> Result<Vec<SeriesInfo>, QueryError> {
        let Some(entry) = self.store.names().devices().get(device).copied() else {
            return Ok(Vec::new());
        };
        let view = self.index.view_devices(&self.store, &[entry.id])?;
        let t = Tables::open(&view.tx)?;
        let names = self.store.names().snapshot();
        fields_of(&view, &t, &names, entry.id, &Arc::from(device))
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
        let Some(field) = names.get(series_ids(s).1 as usize) else {
            continue;
        };
        out.extend(series_info(view, t, s, device, field)?);
    }
    out.sort_by(|a, b| a.field.cmp(&b.field));
    Ok(out)
}
