//! Reading one series from a [`View`]: its index buckets in order, the
//! persisted blocks (through the hour directories, or minute by minute)
//! merged with the in-memory buckets, each given as a rollup or as its
//! visible points.

use std::collections::BTreeMap;
use std::ops::ControlFlow;

use ferry_core::record::Millis;
use redb::{AccessGuard, ReadOnlyTable, ReadTransaction};

use super::block::{union_by_seq, Block, Header, Point, Rollup};
use super::bounds::clamp_time;
use super::engine::QueryError;
use super::index::View;
use super::layout::{
    bucket_of, hour_of, Directory, SeriesKey, BLOCKS, BUCKET_MS, HOURS, HOUR_MS, SERIES,
};
use super::memory::OpenBucket;
use crate::store::Cancel;

/// The index tables in a read transaction, and the flag that cancels
/// the reads made through them (its request is gone).
pub(super) struct Tables {
    pub(super) blocks: ReadOnlyTable<(i64, u64), &'static [u8]>,
    pub(super) hours: ReadOnlyTable<(u64, i64), &'static [u8]>,
    pub(super) series: ReadOnlyTable<u64, (i64, i64)>,
    cancel: Option<Cancel>,
}

impl Tables {
    pub(super) fn open(
        tx: &ReadTransaction,
        cancel: Option<&Cancel>,
    ) -> Result<Tables, QueryError> {
        Ok(Tables {
            blocks: tx.open_table(BLOCKS)?,
            hours: tx.open_table(HOURS)?,
            series: tx.open_table(SERIES)?,
            cancel: cancel.cloned(),
        })
    }

    /// `Err(Cancelled)` once the flag is raised: every loop over
    /// blocks, hours or series asks before each step, so a cancelled read
    /// ends within one step (one block decoded, or one hour's lookups).
    pub(super) fn check(&self) -> Result<(), QueryError> {
        match &self.cancel {
            Some(c) if c.is_cancelled() => Err(QueryError::Cancelled),
            _ => Ok(()),
        }
    }
}

/// A piece of a series in one index bucket.
pub(super) enum Piece {
    /// The whole block, known from its header.
    Rollup(Rollup),
    /// The points in range, by timestamp.
    Points(Vec<Point>),
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
/// up to 60 blocks), else minute by minute. The hours are visited lazily
/// (an extent of millennia, one reading in 1970 and one in 9999, costs
/// time, never memory), and `t`'s cancel flag is asked before each hour and each
/// block (`QueryError::Cancelled`).
#[allow(clippy::too_many_arguments)]
pub(super) fn scan(
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
    let series = Scanner {
        view,
        t,
        s,
        from,
        to,
    };
    let empty = Default::default();
    let memory = view.memory.get(&s).unwrap_or(&empty);
    // The index holds minutes within the query range only: clamped, a
    // damaged extent cannot overflow the hour arithmetic below.
    let extent = t
        .series
        .get(s)?
        .map(|v| v.value())
        .map(|(a, z)| (clamp_time(a).max(b0), clamp_time(z).min(b1)))
        .filter(|(a, z)| a <= z);
    for h in hours(memory, b0, b1, extent, rev) {
        t.check()?;
        let (lo, hi) = (h.max(b0), h.saturating_add(HOUR_MS - BUCKET_MS).min(b1));
        if lo > hi {
            continue;
        }
        let disk = match extent.filter(|(a, z)| *a <= hi && *z >= lo) {
            Some((a, z)) => series.persisted(h, lo.max(a), hi.min(z))?,
            None => Vec::new(),
        };
        let mut slots = merge(memory, lo, hi, disk);
        if rev {
            slots.reverse();
        }
        for (b, slot) in slots {
            t.check()?;
            let Some(piece) = series.piece(b, slot, &need_points)? else {
                continue;
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

/// The hours that may hold buckets of a series in `b0..=b1`, in order
/// (reversed with `rev`), each once: those of its in-memory buckets and
/// every hour of its persisted `extent` (minutes, within `b0..=b1` and
/// the query range). Lazy: only the memory's hours are collected.
fn hours(
    memory: &BTreeMap<Millis, OpenBucket>,
    b0: Millis,
    b1: Millis,
    extent: Option<(Millis, Millis)>,
    rev: bool,
) -> impl Iterator<Item = Millis> {
    let mut mem: Vec<Millis> = memory.range(b0..=b1).map(|(b, _)| hour_of(*b)).collect();
    mem.dedup();
    if rev {
        mem.reverse();
    }
    // Within the query range, the hours' arithmetic fits an i64.
    let (first, last) = extent.map_or((0, -HOUR_MS), |(a, z)| (hour_of(a), hour_of(z)));
    let n = (last - first) / HOUR_MS + 1;
    let disk = (0..n).map(move |i| {
        if rev {
            last - i * HOUR_MS
        } else {
            first + i * HOUR_MS
        }
    });
    let before = move |x: Millis, y: Millis| if rev { x > y } else { x < y };
    let (mut mem, mut disk) = (mem.into_iter().peekable(), disk.peekable());
    std::iter::from_fn(move || match (mem.peek().copied(), disk.peek().copied()) {
        (None, None) => None,
        (Some(m), Some(d)) if m == d => {
            mem.next();
            disk.next()
        }
        (Some(m), d) if d.is_none_or(|d| before(m, d)) => mem.next(),
        _ => disk.next(),
    })
}

/// Merges the memory's buckets `lo..=hi` with the persisted blocks of the
/// same hour (`disk`, by minute), by bucket.
fn merge<'a>(
    memory: &'a BTreeMap<Millis, OpenBucket>,
    lo: Millis,
    hi: Millis,
    disk: Vec<(Millis, Disk<'a>)>,
) -> Vec<(Millis, Slot<'a>)> {
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
    slots
}

/// The series a [`scan`] reads, and the range of times it shows.
struct Scanner<'v> {
    view: &'v View,
    t: &'v Tables,
    s: SeriesKey,
    from: Millis,
    to: Millis,
}

impl<'v> Scanner<'v> {
    /// The points that are committed, not evicted and in range, by
    /// timestamp (then sequence number).
    fn finish(&self, mut points: Vec<Point>) -> Vec<Point> {
        let view = self.view;
        points.retain(|p: &Point| {
            p.seq >= view.first_record && p.seq <= view.head && p.ts >= self.from && p.ts < self.to
        });
        points.sort_by_key(|p| (p.ts, p.seq));
        points
    }

    /// The points of the persisted block of minute `b`.
    fn block_points(&self, b: Millis, disk: &Disk<'_>) -> Result<Option<Vec<Point>>, QueryError> {
        Ok(match disk {
            Disk::Bytes(v) => Some(Block::decode(v.value())?.points),
            Disk::Header(_) => match self.t.blocks.get((b, self.s))? {
                Some(v) => Some(Block::decode(v.value())?.points),
                None => None,
            },
        })
    }

    /// The persisted blocks of hour `h` with minutes `lo..=hi`: from the
    /// hour's directory when it is sealed, else minute by minute.
    fn persisted(
        &self,
        h: Millis,
        lo: Millis,
        hi: Millis,
    ) -> Result<Vec<(Millis, Disk<'v>)>, QueryError> {
        let mut disk = Vec::new();
        match self.t.hours.get((self.s, h))? {
            Some(v) => disk.extend(
                Directory::decode(h, v.value())?
                    .0
                    .into_iter()
                    .filter(|(b, _)| (lo..=hi).contains(b))
                    .map(|(b, hd)| (b, Disk::Header(hd))),
            ),
            None => {
                for m in (bucket_of(lo)..=hi).step_by(BUCKET_MS as usize) {
                    if let Some(v) = self.t.blocks.get((m, self.s))? {
                        disk.push((m, Disk::Bytes(v)));
                    }
                }
            }
        }
        Ok(disk)
    }

    /// What bucket `b` shows; `None` for an evicted block, or one gone
    /// since its directory was read.
    fn piece(
        &self,
        b: Millis,
        slot: Slot<'_>,
        need_points: impl Fn(Millis) -> bool,
    ) -> Result<Option<Piece>, QueryError> {
        let view = self.view;
        Ok(Some(match slot {
            Slot::Memory(ob, None) => Piece::Points(self.finish(ob.points.to_vec())),
            Slot::Memory(ob, Some(d)) => {
                let old = self.block_points(b, &d)?.unwrap_or_default();
                Piece::Points(self.finish(union_by_seq(&old, &ob.points.to_vec())))
            }
            Slot::Disk(d) => {
                let h = match &d {
                    Disk::Header(h) => h.clone(),
                    Disk::Bytes(v) => Block::decode_header(v.value())?,
                };
                if h.max_seq < view.first_record {
                    return Ok(None); // evicted
                }
                let complete = h.min_seq >= view.first_record && h.max_seq <= view.head;
                if complete && !need_points(b) {
                    Piece::Rollup(h.rollup)
                } else {
                    match self.block_points(b, &d)? {
                        Some(p) => Piece::Points(self.finish(p)),
                        None => return Ok(None),
                    }
                }
            }
        }))
    }
}
