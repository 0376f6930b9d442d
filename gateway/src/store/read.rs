//! Reading the store: streams in order, one device's records, dead letters,
//! cursors, route heads and states.

use std::sync::Arc;

use ferry_core::record::{DeadLetter, Millis, Record};
use redb::{ReadableDatabase, TableDefinition};
use tracing::warn;

use super::codec::{self, DecodeError};
use super::Cancel;
use super::{
    last_key, route_retention, ReadStats, Store, StoreError, StoredDeadLetter, StoredRecord,
    Stream, CURSORS, DEAD, META, RECORDS, ROUTE_STATE,
};

/// How many records [`Store::read_device`] looks through between two
/// looks at its cancel flag.
pub const CANCEL_EVERY: usize = 4096;

impl Store {
    /// Reads up to `max` records with `seq > after` into `out`, in order.
    /// Records that fail to decode are skipped, logged and counted in the result.
    pub fn read_records(
        &self,
        after: u64,
        max: usize,
        out: &mut Vec<StoredRecord>,
    ) -> Result<ReadStats, StoreError> {
        self.read_stream(&Stream::Raw, after, max, out)
    }

    /// [`Store::read_records`] of any stream; a route's stream that has no
    /// output yet is empty.
    pub fn read_stream(
        &self,
        stream: &Stream,
        after: u64,
        max: usize,
        out: &mut Vec<StoredRecord>,
    ) -> Result<ReadStats, StoreError> {
        let tx = self.db()?.begin_read()?;
        let name = stream.table();
        let table = match tx.open_table(TableDefinition::<u64, &[u8]>::new(&name)) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => {
                return Ok(ReadStats {
                    last_seq: after,
                    undecodable: 0,
                })
            }
            Err(e) => return Err(e.into()),
        };
        let mut stats = ReadStats {
            last_seq: after,
            undecodable: 0,
        };
        for entry in table.range(after.saturating_add(1)..)?.take(max) {
            let (seq, bytes) = entry?;
            let seq = seq.value();
            stats.last_seq = seq;
            match self.decode_record(bytes.value()) {
                Ok(record) => out.push(StoredRecord { seq, record }),
                Err(e) => {
                    stats.undecodable += 1;
                    warn!(seq, error = %e, "skipping a stored record that does not decode");
                }
            }
        }
        Ok(stats)
    }

    /// The highest committed sequence number of `stream` (0 = empty).
    pub fn stream_head(&self, stream: &Stream) -> Result<u64, StoreError> {
        let Stream::Route(route) = stream else {
            return Ok(self.heads().records);
        };
        let known = self.route_heads_map().get(route).copied();
        if let Some(head) = known {
            return Ok(head);
        }
        let tx = self.db()?.begin_read()?;
        let name = stream.table();
        let head = match tx.open_table(TableDefinition::<u64, &[u8]>::new(&name)) {
            Ok(table) => last_key(&table)?,
            Err(redb::TableError::TableDoesNotExist(_)) => 0,
            Err(e) => return Err(e.into()),
        };
        // Retention may have emptied the stream; its head is kept in `meta`.
        let saved = tx
            .open_table(META)?
            .get(&*route_retention::head_key(route))?
            .map_or(0, |v| v.value());
        let head = head.max(saved);
        self.set_route_head(route, head);
        Ok(head)
    }

    fn route_heads_map(
        &self,
    ) -> std::sync::RwLockReadGuard<'_, std::collections::HashMap<Arc<str>, u64>> {
        self.inner
            .route_heads
            .read()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes a route stream's new head (by the writer, after its commit).
    pub(crate) fn set_route_head(&self, route: &Arc<str>, head: u64) {
        let mut map = self
            .inner
            .route_heads
            .write()
            .unwrap_or_else(|e| e.into_inner());
        let h = map.entry(route.clone()).or_insert(0);
        *h = (*h).max(head);
    }

    /// Up to `limit` records of `device`, looking through at most
    /// `max_scan` stored records: the first after `after`, or (no `after`)
    /// the newest; and the sequence number to continue after. Ends with
    /// [`StoreError::Cancelled`] within [`CANCEL_EVERY`] records of
    /// `cancel` being cancelled.
    pub fn read_device(
        &self,
        device: &str,
        after: Option<u64>,
        limit: usize,
        max_scan: usize,
        cancel: &Cancel,
    ) -> Result<(Vec<StoredRecord>, u64), StoreError> {
        let check = |looked: usize| {
            if looked % CANCEL_EVERY == 0 && cancel.is_cancelled() {
                Err(StoreError::Cancelled)
            } else {
                Ok(())
            }
        };
        let head = self.heads().records;
        let names = self.names().snapshot();
        let Some(id) = names.iter().position(|n| &**n == device) else {
            return Ok((Vec::new(), after.unwrap_or(head)));
        };
        let id = id as u32;
        // The device is in the record's header: no need to decode the others.
        let of_device = |bytes: &[u8]| {
            let mut r = codec::Reader::new(bytes);
            r.version().is_ok()
                && r.zvarint().is_ok()
                && r.id().is_ok()
                && r.id().is_ok_and(|d| d == id)
        };
        let tx = self.db()?.begin_read()?;
        let table = tx.open_table(RECORDS)?;
        let mut found: Vec<(u64, Vec<u8>)> = Vec::new();
        let next = match after {
            // Nothing after `after` yet (and `after + 1 ..= head` would be an
            // inverted range).
            Some(after) if after >= head => after,
            Some(after) => {
                let mut next = after;
                let range = table.range(after.saturating_add(1)..=head)?;
                for (looked, e) in range.take(max_scan).enumerate() {
                    check(looked)?;
                    let (seq, bytes) = e?;
                    next = seq.value();
                    if of_device(bytes.value()) {
                        found.push((next, bytes.value().to_vec()));
                        if found.len() == limit {
                            break;
                        }
                    }
                }
                next
            }
            None => {
                for (looked, e) in table.range(..=head)?.rev().take(max_scan).enumerate() {
                    check(looked)?;
                    let (seq, bytes) = e?;
                    if of_device(bytes.value()) {
                        found.push((seq.value(), bytes.value().to_vec()));
                        if found.len() == limit {
                            break;
                        }
                    }
                }
                found.reverse();
                head
            }
        };
        let mut out = Vec::with_capacity(found.len());
        for (seq, bytes) in found {
            match self.decode_record(&bytes) {
                Ok(record) => out.push(StoredRecord { seq, record }),
                Err(e) => {
                    warn!(seq, error = %e, "skipping a stored record that does not decode")
                }
            }
        }
        Ok((out, next))
    }

    /// The committed state of the route `name`, if it has committed any.
    pub fn route_state(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = self.db()?.begin_read()?;
        match tx.open_table(ROUTE_STATE) {
            Ok(table) => Ok(table.get(name)?.map(|v| v.value().to_vec())),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads up to `max` dead letters with `seq > after`, in order.
    pub fn read_dead(&self, after: u64, max: usize) -> Result<Vec<StoredDeadLetter>, StoreError> {
        let tx = self.db()?.begin_read()?;
        let table = tx.open_table(DEAD)?;
        let mut out = Vec::new();
        for entry in table.range(after.saturating_add(1)..)?.take(max) {
            let (seq, bytes) = entry?;
            match self.decode_dead(bytes.value()) {
                Ok(dead) => out.push(StoredDeadLetter {
                    seq: seq.value(),
                    dead,
                }),
                Err(e) => {
                    warn!(seq = seq.value(), error = %e, "skipping an undecodable dead letter")
                }
            }
        }
        Ok(out)
    }

    /// The committed position of the cursor `name` (0 if it has none yet).
    pub fn cursor(&self, name: &str) -> Result<u64, StoreError> {
        let tx = self.db()?.begin_read()?;
        let table = tx.open_table(CURSORS)?;
        Ok(table.get(name)?.map(|v| v.value()).unwrap_or(0))
    }

    /// The timestamp of the first record with `seq > after`, if any.
    pub fn first_ts_after(&self, after: u64) -> Result<Option<Millis>, StoreError> {
        let mut out = Vec::with_capacity(1);
        self.read_records(after, 1, &mut out)?;
        Ok(out.first().map(|r| r.record.ts))
    }

    /// The timestamp of the first record of `stream` with `seq > after`, if any.
    pub fn first_ts_in(&self, stream: &Stream, after: u64) -> Result<Option<Millis>, StoreError> {
        let mut out = Vec::with_capacity(1);
        self.read_stream(stream, after, 1, &mut out)?;
        Ok(out.first().map(|r| r.record.ts))
    }

    /// Decodes one stored record.
    pub fn decode_record(&self, bytes: &[u8]) -> Result<Record, DecodeError> {
        codec::decode_record(bytes, &self.inner.names.snapshot())
    }

    pub(crate) fn decode_dead(&self, bytes: &[u8]) -> Result<DeadLetter, DecodeError> {
        codec::decode_dead_letter(bytes, &self.inner.names.snapshot())
    }
}
