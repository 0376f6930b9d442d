//! Writing the index: what is due of the open minutes in memory, the hour
//! directories of hours series have left, retention's deletions and
//! `index.through`, inside a write transaction of the writer or a replay.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;

use ferry_core::record::Millis;
use redb::{ReadableTable, Table, WriteTransaction};
use tracing::warn;

use super::block::{union_by_seq, Block, PointBuf};
use super::index::Index;
use super::layout::{
    hour_of, Directory, SeriesKey, BLOCKS, BUCKET_MS, EXPIRY, HOURS, HOUR_MS, META_THROUGH, SERIES,
};
use super::memory::{memory_use, OpenBucket, State};
use crate::store::{StoreError, META};

impl Index {
    /// Writes what is due of the in-memory buckets, retention's deletions
    /// and `index.through`. `force` writes every bucket with points not
    /// persisted yet.
    ///
    /// Catching up (not live), a still-open bucket is written once its new
    /// points are at least as many as those already persisted (and an
    /// eighth of `catch_up_chunk`): the block's size at least doubles
    /// between two writes, so each point is rewritten at most a few times
    /// however many share its minute, and a replay is linear in the log
    /// (writing every open block at every chunk, as before, rewrote a
    /// flood's minute once per chunk: quadratic), while `index.through`
    /// still moves on as chunks commit.
    pub(super) fn finish_inner(
        &self,
        tx: &WriteTransaction,
        first_record: u64,
        force: bool,
    ) -> Result<bool, StoreError> {
        let mut guard = self.lock();
        let state = &mut *guard;
        let mut t = Tables {
            blocks: tx.open_table(BLOCKS)?,
            hours: tx.open_table(HOURS)?,
            series: tx.open_table(SERIES)?,
            extent: HashMap::new(),
            dirs: HashMap::new(),
            expiry: tx.open_table(EXPIRY)?,
        };
        let mut wrote = t.expire(&mut state.series, first_record)?;
        // Over the memory budget: write every open minute now, so the next
        // transaction drops them from memory. Catching up, open minutes are
        // written as they grow (see `finish_inner`), not all at every chunk.
        let (bytes, _) = memory_use(&state.series);
        let flush_all = force
            || bytes > self.opts.memory_budget
            || (state.live && state.last_flush.elapsed() >= self.opts.flush_interval);
        if flush_all {
            state.last_flush = Instant::now();
        }
        let catching_up = !state.live;
        let min_new = (self.opts.catch_up_chunk / 8).max(1);
        for (&s, buckets) in &mut state.series {
            for (&b, ob) in buckets.iter_mut() {
                let grown = catching_up
                    && (self.opts.rewrite_open_each_chunk || {
                        let persisted = ob.points.len().saturating_sub(ob.dirty_points);
                        ob.dirty_points >= persisted.max(min_new)
                    });
                if ob.dirty_since.is_none() || !(ob.closed || flush_all || grown) {
                    continue;
                }
                t.write_bucket(s, b, ob, first_record, &mut state.buf, &mut state.seals)?;
                wrote = true;
            }
        }
        t.seal_hours(state)?;
        wrote |= t.write(&mut state.buf)?;
        let through = state
            .series
            .values()
            .flat_map(|m| m.values())
            .filter_map(|ob| ob.dirty_since)
            .min()
            .map_or(state.applied, |d| d - 1);
        if through != state.pending.unwrap_or(state.persisted) {
            tx.open_table(META)?.insert(META_THROUGH, through)?;
            wrote = true;
        }
        state.pending = Some(through);
        Ok(wrote)
    }
}

/// The index tables in a write transaction, with the directories and
/// series extents changed in it (written once, at the end).
struct Tables<'t> {
    blocks: Table<'t, (i64, u64), &'static [u8]>,
    hours: Table<'t, (u64, i64), &'static [u8]>,
    series: Table<'t, u64, (i64, i64)>,
    /// Series extents read or changed (`None`: no block).
    extent: HashMap<SeriesKey, (Option<(i64, i64)>, bool)>,
    /// Directories read or changed (`None`: to delete), and whether they exist.
    dirs: HashMap<(SeriesKey, Millis), Option<Directory>>,
    /// The blocks by `max seq`, for retention.
    expiry: Table<'t, (u64, u64, i64), ()>,
}

impl Tables<'_> {
    /// Retention: blocks wholly before the first stored record go, and a
    /// directory with the last of its blocks. Whether anything went.
    fn expire(
        &mut self,
        memory: &mut HashMap<SeriesKey, BTreeMap<Millis, OpenBucket>>,
        first_record: u64,
    ) -> Result<bool, StoreError> {
        let mut wrote = false;
        let expired: Vec<(u64, u64, i64)> = self
            .expiry
            .range(..(first_record, 0, i64::MIN))?
            .map(|e| e.map(|(k, _)| k.value()))
            .collect::<Result<_, _>>()?;
        let mut emptied = HashSet::new();
        for (max, s, b) in expired {
            self.expiry.remove((max, s, b))?;
            self.remove_block(s, b)?;
            emptied.insert((s, hour_of(b)));
            if let Some(ob) = memory.get_mut(&s).and_then(|m| m.get_mut(&b)) {
                ob.persisted_max = None;
            }
            wrote = true;
        }
        // A directory goes with the last of its blocks.
        for (s, h) in emptied {
            if let Some(dir) = self.dir(s, h)? {
                if dir.0.iter().all(|(_, hd)| hd.max_seq < first_record) {
                    self.dirs.insert((s, h), None);
                }
            }
        }
        Ok(wrote)
    }

    /// Writes the block of series `s`'s minute `b` from its open bucket
    /// (merged with the persisted block first, once), or removes it when
    /// retention left it no points; the series' extent, expiry entry and
    /// hour directory follow.
    fn write_bucket(
        &mut self,
        s: SeriesKey,
        b: Millis,
        ob: &mut OpenBucket,
        first_record: u64,
        buf: &mut Vec<u8>,
        seals: &mut HashSet<(SeriesKey, Millis)>,
    ) -> Result<(), StoreError> {
        if !ob.loaded {
            if let Some(v) = self.blocks.get((b, s))? {
                match Block::decode(v.value()) {
                    Ok(old) => {
                        ob.points =
                            PointBuf::from_points(&union_by_seq(&old.points, &ob.points.to_vec()));
                        ob.persisted_max = Some(old.max_seq);
                    }
                    Err(e) => warn!(series = s, bucket = b, error = %e,
                        "an index block does not decode: rewriting it from memory"),
                }
            }
            ob.loaded = true;
        }
        ob.points.retain(|p| p.seq >= first_record);
        if let Some(old) = ob.persisted_max.take() {
            self.expiry.remove((old, s, b))?;
        }
        match Block::from_points(ob.points.to_vec()) {
            Some(block) => {
                block.encode(buf);
                self.blocks.insert((b, s), buf.as_slice())?;
                self.expiry.insert((block.max_seq, s, b), ())?;
                ob.persisted_max = Some(block.max_seq);
                // The series moved on to a later hour: seal the last one.
                if let Some((_, last)) = self.extent(s)? {
                    if hour_of(last) < hour_of(b) {
                        seals.insert((s, hour_of(last)));
                    }
                }
                self.grow(s, b)?;
                if let Some(dir) = self.dir(s, hour_of(b))? {
                    dir.put(b, block.header());
                }
            }
            None => {
                self.remove_block(s, b)?;
                ob.closed = true;
            }
        }
        ob.dirty_since = None;
        ob.dirty_points = 0;
        Ok(())
    }

    /// Seals the hours series have left (writes their directories from the
    /// blocks), unless they still hold data not written yet (then at a
    /// later flush).
    fn seal_hours(&mut self, state: &mut State) -> Result<(), StoreError> {
        let seals: Vec<_> = state.seals.iter().copied().collect();
        for (s, h) in seals {
            let unwritten = state.series.get(&s).is_some_and(|m| {
                m.range(h..h + HOUR_MS)
                    .any(|(_, ob)| ob.dirty_since.is_some())
            });
            if unwritten {
                continue;
            }
            state.seals.remove(&(s, h));
            if self.dir(s, h)?.is_none() {
                let mut dir = Directory::default();
                for m in (h..h + HOUR_MS).step_by(BUCKET_MS as usize) {
                    if let Some(v) = self.blocks.get((m, s))? {
                        match Block::decode_header(v.value()) {
                            Ok(hd) => dir.0.push((m, hd)),
                            Err(e) => {
                                warn!(series = s, bucket = m, error = %e, "an index block does not decode: its hour stays unsealed");
                                dir.0.clear();
                                break;
                            }
                        }
                    }
                }
                if !dir.0.is_empty() {
                    self.dirs.insert((s, h), Some(dir));
                }
            }
        }
        Ok(())
    }

    fn extent(&mut self, s: SeriesKey) -> Result<Option<(i64, i64)>, StoreError> {
        if let Some((e, _)) = self.extent.get(&s) {
            return Ok(*e);
        }
        let e = self.series.get(s)?.map(|v| v.value());
        self.extent.insert(s, (e, false));
        Ok(e)
    }

    fn grow(&mut self, s: SeriesKey, b: Millis) -> Result<(), StoreError> {
        let e = self.extent(s)?;
        let new = e.map_or((b, b), |(f, l)| (f.min(b), l.max(b)));
        if Some(new) != e {
            self.extent.insert(s, (Some(new), true));
        }
        Ok(())
    }

    /// Removes the block of minute `b`; the extent's start moves past it.
    fn remove_block(&mut self, s: SeriesKey, b: Millis) -> Result<(), StoreError> {
        self.blocks.remove((b, s))?;
        if let Some((f, l)) = self.extent(s)? {
            if f == b {
                // A lower bound of the first block left: readers look on from it.
                let new = (f + BUCKET_MS <= l).then_some((f + BUCKET_MS, l));
                self.extent.insert(s, (new, true));
            }
        }
        Ok(())
    }

    /// The directory of `(s, h)`, if the hour is sealed.
    fn dir(&mut self, s: SeriesKey, h: Millis) -> Result<Option<&mut Directory>, StoreError> {
        if !self.dirs.contains_key(&(s, h)) {
            let dir = match self.hours.get((s, h))? {
                Some(v) => match Directory::decode(h, v.value()) {
                    Ok(d) => Some(d),
                    Err(e) => {
                        warn!(series = s, hour = h, error = %e, "an index directory does not decode: dropping it (the hour is read minute by minute)");
                        None
                    }
                },
                None => None,
            };
            match dir {
                Some(d) => self.dirs.insert((s, h), Some(d)),
                None => return Ok(None),
            };
        }
        Ok(self.dirs.get_mut(&(s, h)).and_then(Option::as_mut))
    }

    /// Writes what changed; whether anything did.
    fn write(mut self, buf: &mut Vec<u8>) -> Result<bool, StoreError> {
        let mut wrote = false;
        for ((s, h), dir) in std::mem::take(&mut self.dirs) {
            match dir {
                Some(dir) => {
                    dir.encode(h, buf);
                    self.hours.insert((s, h), buf.as_slice())?;
                }
                None => {
                    self.hours.remove((s, h))?;
                }
            }
            wrote = true;
        }
        for (s, (e, changed)) in std::mem::take(&mut self.extent) {
            if !changed {
                continue;
            }
            match e {
                Some(e) => self.series.insert(s, e)?,
                None => self.series.remove(s)?,
            };
            wrote = true;
        }
        Ok(wrote)
    }
}
