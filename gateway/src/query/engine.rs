//! Queries over the index: series lists, latest values, range queries raw
//! or in buckets of a step. Results never include a record that is not
//! committed yet or has been evicted by retention.

use std::collections::BTreeSet;
use std::ops::ControlFlow;
use std::sync::Arc;

use ferry_adapters::record::Millis;
use thiserror::Error;

use super::block::{union_by_seq, Block, Point, Rollup};
use super::index::{bucket_of, series_ids, series_key, Index, SeriesKey, View, BLOCKS, BUCKET_MS};
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
#[derive(Debug, Clone, Copy, PartialEq)]
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
        let blocks = view.tx.open_table(BLOCKS)?;
        let mut keys = BTreeSet::new();
        let (lo, hi) = match device_id {
            Some(d) => (series_key(d, 0), series_key(d, u32::MAX)),
            None => (0, u64::MAX),
        };
        let mut next = Some(lo);
        while let Some(s0) = next.filter(|s| *s <= hi) {
            match blocks.range((s0, i64::MIN)..=(hi, i64::MAX))?.next() {
                Some(e) => {
                    let s = e?.0.value().0;
                    keys.insert(s);
                    next = s.checked_add(1);
                }
                None => break,
            }
        }
        keys.extend(view.memory.keys().filter(|k| (lo..=hi).contains(*k)));
        let names = self.store.names().snapshot();
        let mut out = Vec::new();
        for s in keys {
            let (first, last) = (
                edge(&view, &blocks, s, false)?,
                edge(&view, &blocks, s, true)?,
            );
            let (Some(first), Some(last)) = (first, last) else {
                continue;
            };
            let (d, f) = series_ids(s);
            let (Some(device), Some(field)) = (names.get(d as usize), names.get(f as usize)) else {
                continue;
            };
            out.push(SeriesInfo {
                device: device.clone(),
                field: field.clone(),
                first_ts: first.first_ts,
                last: Point {
                    seq: last.last_seq,
                    ts: last.last_ts,
                    value: last.last,
                },
            });
        }
        out.sort_by(|a, b| (&a.device, &a.field).cmp(&(&b.device, &b.field)));
        Ok(out)
    }

    /// The readings of each series with `from <= ts < to`: raw, or with
    /// `step` (ms) in buckets aligned to multiples of `step` since the epoch.
    /// Fails when all series together would return more than `limit`
    /// points or buckets.
    pub fn range(
        &self,
        series: &[SeriesKey],
        from: Millis,
        to: Millis,
        step: Option<i64>,
        limit: usize,
    ) -> Result<Vec<Series>, QueryError> {
        self.range_counted(series, from, to, step, limit)
    }

    fn range_counted(
        &self,
        series: &[SeriesKey],
        from: Millis,
        to: Millis,
        step: Option<i64>,
        limit: usize,
    ) -> Result<Vec<Series>, QueryError> {
        let view = self.index.view(&self.store, Some(series))?;
        let blocks = view.tx.open_table(BLOCKS)?;
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
                    let key = |ts: Millis| ts.div_euclid(step) * step;
                    // A whole block serves from its header when it lies in
                    // the range and in one output bucket.
                    let whole = |b: Millis| {
                        b >= from && b + BUCKET_MS <= to && key(b) == key(b + BUCKET_MS - 1)
                    };
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
                            buckets.push(Bucket { ts, rollup: *r });
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
                            let ok = match piece {
                                Piece::Rollup(r) => add(key(b), &r, &mut buckets),
                                Piece::Points(p) => p
                                    .iter()
                                    .all(|p| add(key(p.ts), &Rollup::of(p), &mut buckets)),
                            };
                            if ok {
                                ControlFlow::Continue(())
                            } else {
                                over = true;
                                ControlFlow::Break(())
                            }
                        },
                    )?;
                    if over {
                        return Err(QueryError::TooManyPoints { limit });
                    }
                    out.push(Series::Buckets(buckets));
                }
            }
        }
        Ok(out)
    }
}

/// The rollup of a series' first (or last) non-empty index bucket.
fn edge(
    view: &View,
    blocks: &redb::ReadOnlyTable<(u64, i64), &'static [u8]>,
    s: SeriesKey,
    last: bool,
) -> Result<Option<Rollup>, QueryError> {
    let mut found = None;
    scan(
        view,
        blocks,
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

/// Visits series `s`'s index buckets `b0..=b1` in order (reversed with
/// `rev`), merging persisted blocks with the in-memory buckets. A block is
/// given as its header's rollup when `need_points` says so is enough and
/// every point of it is visible; otherwise as its points with
/// `from <= ts < to` that are committed and not evicted, by timestamp.
#[allow(clippy::too_many_arguments)]
fn scan(
    view: &View,
    blocks: &redb::ReadOnlyTable<(u64, i64), &'static [u8]>,
    s: SeriesKey,
    from: Millis,
    to: Millis,
    b0: Millis,
    b1: Millis,
    rev: bool,
    need_points: impl Fn(Millis) -> bool,
    mut f: impl FnMut(Millis, Piece) -> ControlFlow<()>,
) -> Result<(), QueryError> {
    let visible =
        |p: &Point| p.seq >= view.first_record && p.seq <= view.head && p.ts >= from && p.ts < to;
    let finish = |mut points: Vec<Point>| {
        points.retain(visible);
        points.sort_by_key(|p| (p.ts, p.seq));
        points
    };
    let empty = Default::default();
    let memory = view.memory.get(&s).unwrap_or(&empty);
    let mut mem = memory.range(b0..=b1);
    let mut disk = blocks.range((s, b0)..=(s, b1))?;
    let mut next_mem = if rev { mem.next_back() } else { mem.next() };
    let mut next_disk = if rev { disk.next_back() } else { disk.next() }.transpose()?;
    loop {
        let mk = next_mem.map(|(b, _)| *b);
        let dk = next_disk.as_ref().map(|(k, _)| k.value().1);
        let take_mem = match (mk, dk) {
            (None, None) => return Ok(()),
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(m), Some(d)) => {
                if rev {
                    m >= d
                } else {
                    m <= d
                }
            }
        };
        let (b, piece) = if take_mem {
            let (b, ob) = next_mem.expect("checked");
            let points = if Some(*b) == dk {
                let (_, v) = next_disk.take().expect("checked");
                next_disk = if rev { disk.next_back() } else { disk.next() }.transpose()?;
                union_by_seq(&Block::decode(v.value())?.points, &ob.points)
            } else {
                ob.points.clone()
            };
            next_mem = if rev { mem.next_back() } else { mem.next() };
            (*b, Piece::Points(finish(points)))
        } else {
            let (k, v) = next_disk.take().expect("checked");
            next_disk = if rev { disk.next_back() } else { disk.next() }.transpose()?;
            let b = k.value().1;
            let h = Block::decode_header(v.value())?;
            let complete = h.min_seq >= view.first_record && h.max_seq <= view.head;
            if complete && !need_points(b) {
                (b, Piece::Rollup(h.rollup))
            } else {
                (b, Piece::Points(finish(Block::decode(v.value())?.points)))
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
