//! Range queries: a series' readings in a range of times, raw or in
//! buckets of a step, within a limit on the points (or buckets) of all the
//! series of one query.

use std::ops::ControlFlow;

use ferry_core::record::Millis;

use super::block::{Point, Rollup};
use super::bounds::bucket_start;
use super::engine::QueryError;
use super::index::View;
use super::layout::{bucket_of, SeriesKey, BUCKET_MS};
use super::scan::{scan, Piece, Tables};

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

/// One range query over its series, `from < to`, both within the query
/// range; `total` counts the points (or buckets) of the series answered so
/// far, against `limit`.
pub(super) struct RangeQuery<'v> {
    pub(super) view: &'v View,
    pub(super) t: &'v Tables,
    pub(super) from: Millis,
    pub(super) to: Millis,
    pub(super) limit: usize,
    pub(super) total: usize,
}

impl RangeQuery<'_> {
    /// Every point of series `s` in the range.
    pub(super) fn raw(&mut self, s: SeriesKey) -> Result<Series, QueryError> {
        let (view, t, from, to, limit) = (self.view, self.t, self.from, self.to, self.limit);
        let (b0, b1) = (bucket_of(from), bucket_of(to - 1));
        let total = &mut self.total;
        let mut points = Vec::new();
        let mut over = false;
        scan(
            view,
            t,
            s,
            from,
            to,
            b0,
            b1,
            false,
            |_| true,
            |_, piece| {
                if let Piece::Points(p) = piece {
                    *total += p.len();
                    if *total > limit {
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
        Ok(Series::Raw(points))
    }

    /// Series `s` in buckets of `step` ms (at least 1) aligned to multiples
    /// of `step` since the epoch.
    pub(super) fn buckets(&mut self, s: SeriesKey, step: i64) -> Result<Series, QueryError> {
        let (view, t, from, to, limit) = (self.view, self.t, self.from, self.to, self.limit);
        let (b0, b1) = (bucket_of(from), bucket_of(to - 1));
        let total = &mut self.total;
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
        let mut add = |ts: Millis, r: &Rollup, buckets: &mut Vec<Bucket>| match buckets.last_mut() {
            Some(last) if last.ts == ts => {
                last.rollup.merge(r);
                true
            }
            _ => {
                *total += 1;
                if *total > limit {
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
            view,
            t,
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
        Ok(Series::Buckets(buckets))
    }
}
