//! One group commit's transaction: cursor moves, route commits, evictions,
//! the records and dead letters, names and accounts; undone in memory if it
//! fails.

use std::sync::Arc;

use ferry_core::record::DeadLetter;
use redb::ReadableTable;
use tracing::warn;

use super::batch::Batch;
use super::handles::RouteCommit;
use super::state::{Disposition, WriterState, Written, USAGE_SAVE_INTERVAL};
use crate::store::limits;
use crate::store::names::KNOWN_SERIES;
use crate::store::retention::{entry_bytes, WhenFull};
use crate::store::route_retention;
use crate::store::{
    codec, Heads, StoreError, Stream, CURSORS, DEAD, META, NAMES, RECORDS, ROUTE_STATE,
};

impl WriterState {
    /// Writes the batch in one durable transaction.
    pub(super) fn commit(&mut self, batch: &mut Batch) -> Result<Written, StoreError> {
        let started = std::time::Instant::now();
        let known = self.names.len();
        let (usage, consumers, episode) = (self.usage, self.consumers.clone(), self.episode);
        let routes = self.routes.clone();
        let result = self.write(batch, known);
        match &result {
            Ok(w) => {
                self.metrics
                    .commit_duration
                    .observe(started.elapsed().as_secs_f64());
                let added = !self.registry.pending().is_empty();
                let stored_any = matches!(w.records, Disposition::Stored)
                    && w.refused.len() < batch.records.len();
                let (series, devices) = self.registry.committed(stored_any, &w.refused);
                self.metrics.series_forgotten.inc_by(series);
                self.metrics.devices_forgotten.inc_by(devices);
                if added || series > 0 {
                    self.store
                        .names()
                        .publish_devices(Arc::new(self.registry.devices_map(&self.names)));
                }
                self.metrics.devices.set(self.registry.devices() as i64);
                self.metrics.series.set(self.registry.series() as i64);
            }
            Err(e) => {
                if e.needs_reopen() {
                    // redb refuses all work after an I/O error until reopened;
                    // the next commit tries again either way.
                    if let Err(e) = self.store.reopen() {
                        warn!(error = %e, "cannot reopen the store yet");
                    }
                }
                // Undo what the failed transaction would have done.
                if let Some(index) = &self.index {
                    index.abort();
                }
                for name in self.names.drain(known..) {
                    self.ids.remove(&name);
                }
                self.registry.aborted();
                self.usage = usage;
                self.consumers = consumers;
                self.routes = routes;
                self.episode = episode;
            }
        }
        result
    }

    fn write(&mut self, batch: &Batch, known: usize) -> Result<Written, StoreError> {
        let mut heads = self.store.heads();
        let tx = self.begin(heads)?;
        let mut refused = Vec::new();
        let (disposition, evicted_any) = {
            self.write_moves(&tx, batch)?;
            let mut records = tx.open_table(RECORDS)?;
            let mut dead = tx.open_table(DEAD)?;
            let (disposition, evicted_any) =
                self.make_room(&tx, &mut records, &mut dead, heads, batch.records.len())?;
            if matches!(disposition, Disposition::Held) {
                // Nothing of the batch is written; its cursor moves and evictions are.
            } else {
                if matches!(disposition, Disposition::Stored) {
                    self.append_records(&mut records, batch, &mut heads, &mut refused)?;
                }
                self.append_dead(&mut dead, batch, &refused, &mut heads)?;
            }
            self.write_names_and_accounts(&tx, known, heads, evicted_any)?;
            (disposition, evicted_any)
        };
        let index_wrote = match &self.index {
            Some(index) => index.finish(&tx, self.usage.first_record)?,
            None => false,
        };
        if batch.writes_nothing() && !evicted_any && !index_wrote {
            tx.abort()?;
        } else {
            tx.commit()?;
        }
        Ok(Written {
            heads,
            records: disposition,
            refused,
        })
    }

    /// Begins the commit's write transaction (telling the index, whose
    /// readers yield to it) and the index's part of it.
    fn begin(&self, heads: Heads) -> Result<redb::WriteTransaction, StoreError> {
        if let Some(index) = &self.index {
            index.wants_write(true);
        }
        let tx = self.store.db().and_then(|db| Ok(db.begin_write()?));
        if let Some(index) = &self.index {
            index.wants_write(false);
        }
        let tx = tx?;
        if let Some(index) = &self.index {
            index.begin(&tx, heads)?;
        }
        Ok(tx)
    }

    /// Moves the batch's cursors and writes its route commits (each moving
    /// its route's cursor).
    fn write_moves(
        &mut self,
        tx: &redb::WriteTransaction,
        batch: &Batch,
    ) -> Result<(), StoreError> {
        let mut cursors = tx.open_table(CURSORS)?;
        for (name, &seq) in &batch.cursors {
            let old = cursors.get(&**name)?.map(|v| v.value()).unwrap_or(0);
            if seq > old {
                cursors.insert(&**name, seq)?;
            }
            if let Some(pos) = self.consumers.get_mut(name) {
                *pos = (*pos).max(seq);
            }
            self.routes.move_cursor(name, seq);
        }
        for (rc, _) in &batch.routes {
            let head = self.write_route(tx, rc)?;
            let name: Arc<str> = format!("route.{}", rc.route).into();
            let old = cursors.get(&*name)?.map(|v| v.value()).unwrap_or(0);
            if rc.through > old {
                cursors.insert(&*name, rc.through)?;
            }
            if let Some(pos) = self.consumers.get_mut(&name) {
                *pos = (*pos).max(rc.through);
            }
            self.route_heads.push((rc.route.clone(), head));
        }
        Ok(())
    }

    /// Evicts what retention asks for, then decides what becomes of the
    /// batch's `n` records; returns that and whether anything was evicted.
    fn make_room(
        &mut self,
        tx: &redb::WriteTransaction,
        records: &mut redb::Table<u64, &'static [u8]>,
        dead: &mut redb::Table<u64, &'static [u8]>,
        heads: Heads,
        n: usize,
    ) -> Result<(Disposition, bool), StoreError> {
        let mut evicted_any = self.evict_dead(dead)?;
        evicted_any |= self.evict_aged(tx, records)?;
        let avg = if heads.records >= self.usage.first_record {
            self.usage.record_bytes / (heads.records - self.usage.first_record + 1)
        } else {
            64
        };
        let incoming = avg * n as u64;
        let (evicted, room) = self.evict_for_budget(tx, records, incoming)?;
        evicted_any |= evicted;
        let disposition = if n == 0 || room {
            Disposition::Stored
        } else {
            match self.retention.when_full {
                WhenFull::DropNewest => Disposition::Dropped,
                _ => Disposition::Held,
            }
        };
        Ok((disposition, evicted_any))
    }

    /// Appends the batch's records (those the name limits refuse go to
    /// `refused`, as dead letters), interning their names.
    fn append_records(
        &mut self,
        records: &mut redb::Table<u64, &'static [u8]>,
        batch: &Batch,
        heads: &mut Heads,
        refused: &mut Vec<(usize, DeadLetter)>,
    ) -> Result<(), StoreError> {
        for (i, r) in batch.records.iter().enumerate() {
            let device = self.ids.get(&*r.device).copied();
            let ids = &self.ids;
            let field_ids = r.fields.iter().map(|(n, _)| ids.get(&**n).copied());
            let first = self.usage.first_record;
            if let Some((kind, reason)) = self.registry.check(r, device, field_ids, first) {
                refused.push((i, limits::dead_letter(r, kind, reason)));
                continue;
            }
            let source = self.intern(&r.source);
            let device = self.intern(&r.device);
            let mut buf = std::mem::take(&mut self.buf);
            buf.clear();
            codec::put_record_header(&mut buf, r.ts, source, device, r.fields.len());
            let seq = heads.records + 1;
            for (name, value) in &r.fields {
                let id = self.intern(name);
                self.registry.add(device, id, seq);
                codec::put_field(&mut buf, id, value);
            }
            heads.records = seq;
            records.insert(heads.records, buf.as_slice())?;
            if let Some(index) = &self.index {
                index.record(heads.records, &buf);
            }
            self.usage.record_bytes += entry_bytes(buf.len());
            self.buf = buf;
        }
        Ok(())
    }

    /// Appends the batch's dead letters, then the refused records'.
    fn append_dead(
        &mut self,
        dead: &mut redb::Table<u64, &'static [u8]>,
        batch: &Batch,
        refused: &[(usize, DeadLetter)],
        heads: &mut Heads,
    ) -> Result<(), StoreError> {
        for d in batch.dead.iter().chain(refused.iter().map(|(_, d)| d)) {
            let source = self.intern(&d.source);
            let mut buf = std::mem::take(&mut self.buf);
            buf.clear();
            codec::put_dead_letter(&mut buf, d, source);
            heads.dead += 1;
            dead.insert(heads.dead, buf.as_slice())?;
            self.usage.dead_bytes += entry_bytes(buf.len());
            self.buf = buf;
        }
        Ok(())
    }

    /// Writes the new and forgotten series, the names interned since
    /// `known` (publishing them to readers) and, when due, the byte
    /// accounts.
    fn write_names_and_accounts(
        &mut self,
        tx: &redb::WriteTransaction,
        known: usize,
        heads: Heads,
        evicted_any: bool,
    ) -> Result<(), StoreError> {
        if self.registry.forgotten().next().is_some() || !self.registry.pending().is_empty() {
            let mut series = tx.open_table(KNOWN_SERIES)?;
            // Forgotten first: a series forgotten and stored again in the
            // same transaction stays.
            for s in self.registry.forgotten() {
                series.remove(s)?;
            }
            for &s in self.registry.pending() {
                series.insert(s, ())?;
            }
        }
        if self.names.len() > known {
            let mut names = tx.open_table(NAMES)?;
            for (id, name) in self.names.iter().enumerate().skip(known) {
                names.insert(id as u32, &**name)?;
            }
            // Readers must know the names before the records that use them commit.
            self.store.names().publish(Arc::new(self.names.clone()));
        }
        if self.usage.first_record == 0 {
            self.usage.first_record = 1;
        }
        if evicted_any || self.usage_saved.elapsed() >= USAGE_SAVE_INTERVAL {
            let mut meta = tx.open_table(META)?;
            meta.insert("usage.record_bytes", self.usage.record_bytes)?;
            meta.insert("usage.dead_bytes", self.usage.dead_bytes)?;
            meta.insert("usage.as_of_record", heads.records)?;
            meta.insert("usage.as_of_dead", heads.dead)?;
            drop(meta);
            self.routes.save(tx)?;
            self.usage_saved = std::time::Instant::now();
        }
        Ok(())
    }

    /// Appends a route's outputs to its stream and replaces its state;
    /// returns the stream's new head.
    fn write_route(
        &mut self,
        tx: &redb::WriteTransaction,
        rc: &RouteCommit,
    ) -> Result<u64, StoreError> {
        let name = Stream::Route(rc.route.clone()).table();
        let mut table = tx.open_table(redb::TableDefinition::<u64, &[u8]>::new(&name))?;
        let mut meta = tx.open_table(META)?;
        let head_key = route_retention::head_key(&rc.route);
        // The saved head too: eviction may have emptied the stream.
        let mut head = table
            .last()?
            .map_or(0, |(k, _)| k.value())
            .max(meta.get(&*head_key)?.map_or(0, |v| v.value()));
        for r in &rc.outputs {
            let source = self.intern(&r.source);
            let device = self.intern(&r.device);
            let mut buf = std::mem::take(&mut self.buf);
            buf.clear();
            codec::put_record_header(&mut buf, r.ts, source, device, r.fields.len());
            for (field, value) in &r.fields {
                let id = self.intern(field);
                codec::put_field(&mut buf, id, value);
            }
            head += 1;
            table.insert(head, buf.as_slice())?;
            let bytes = entry_bytes(buf.len());
            self.routes.added(&rc.route, bytes);
            self.usage.route_bytes += bytes;
            self.buf = buf;
        }
        if !rc.outputs.is_empty() {
            meta.insert(&*head_key, head)?;
        }
        tx.open_table(ROUTE_STATE)?
            .insert(&*rc.route, rc.state.as_slice())?;
        Ok(head)
    }
}
