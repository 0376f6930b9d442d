//! Copying one seq-keyed stream out of a damaged file: in contained chunks,
//! keeping keys that increase and values that decode, probing past what
//! does not read.

use redb::{Database, ReadOnlyDatabase, ReadableDatabase, TableDefinition};
use tracing::warn;

use super::SalvageReport;
use crate::contain::contained_quietly as contained;
use crate::store::StoreError;

/// Chunk of entries read per contained scope (and written per transaction).
const CHUNK: usize = 10_000;
/// Probes spent finding the rest of one table past damaged pages.
const PROBE_BUDGET: u32 = 1_024;

pub(super) struct Copied {
    pub(super) kept: u64,
    pub(super) lost: u64,
    /// The last key kept (0 if none).
    pub(super) head: u64,
}

/// One contained read of up to [`CHUNK`] entries of `table` from `start`.
enum Chunk {
    /// Entries read, and whether the table ended after them.
    Read(Vec<(u64, Vec<u8>)>, bool),
    /// The read failed (or panicked) after these entries.
    Failed(Vec<(u64, Vec<u8>)>, String),
}

fn read_chunk(db: &ReadOnlyDatabase, table: &str, start: u64, max: usize) -> Chunk {
    let mut out = Vec::new();
    let result = contained(|| -> Result<bool, String> {
        let tx = db.begin_read().map_err(|e| e.to_string())?;
        let t = match tx.open_table(TableDefinition::<u64, &[u8]>::new(table)) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(true),
            Err(e) => return Err(e.to_string()),
        };
        let mut iter = t.range(start..).map_err(|e| e.to_string())?;
        while out.len() < max {
            match iter.next() {
                None => return Ok(true),
                Some(entry) => {
                    let (k, v) = entry.map_err(|e| e.to_string())?;
                    out.push((k.value(), v.value().to_vec()));
                }
            }
        }
        Ok(false)
    });
    match result {
        Ok(Ok(ended)) => Chunk::Read(out, ended),
        Ok(Err(e)) => Chunk::Failed(out, e),
        Err(p) => Chunk::Failed(out, p.to_string()),
    }
}

/// Whether a read of `table` from `start` gets past damage: `Some(None)` the
/// table ends there, `Some(Some(k))` its first entry from there has key `k`,
/// `None` the read fails.
fn probe(db: &ReadOnlyDatabase, table: &str, start: u64) -> Option<Option<u64>> {
    match read_chunk(db, table, start, 1) {
        Chunk::Read(v, _) => Some(v.first().map(|(k, _)| *k)),
        Chunk::Failed(..) => None,
    }
}

/// Copies a seq-keyed stream, skipping past what does not read.
pub(super) fn copy_stream(
    db: &ReadOnlyDatabase,
    to: &Database,
    table: &str,
    valid: &dyn Fn(&[u8]) -> bool,
    known_head: u64,
    report: &mut SalvageReport,
    probe_deadline: std::time::Instant,
) -> Result<Copied, StoreError> {
    let mut copied = Copied {
        kept: 0,
        lost: 0,
        head: 0,
    };
    let mut keys = Keys::default();
    let mut start = 0u64;
    let mut probes = Probes {
        count: 0,
        deadline: probe_deadline,
    };
    loop {
        let (entries, outcome) = match read_chunk(db, table, start, CHUNK) {
            Chunk::Read(v, ended) => (v, Ok(ended)),
            Chunk::Failed(v, e) => (v, Err(e)),
        };
        // Keys must increase: an entry out of order among its neighbours is
        // a damaged key (a spike above the next one, or a dip below the last
        // kept). The last entry of a chunk that did not end is judged with
        // the next chunk.
        let judged = match outcome {
            Ok(false) if !entries.is_empty() => entries.len() - 1,
            _ => entries.len(),
        };
        let batch = keys.judge(&entries[..], judged, known_head, valid, &mut copied);
        if !batch.is_empty() {
            write_batch(to, table, &batch)?;
            copied.kept += batch.len() as u64;
        }
        let resume = keys.seen.map_or(start, |l| l.saturating_add(1)).max(start);
        match outcome {
            Ok(true) => break,
            Ok(false) if resume > start => {
                start = resume;
                continue;
            }
            // No progress in a full chunk: keys out of order throughout.
            Ok(false) => {}
            Err(e) => {
                warn!(table, after = ?keys.seen, error = %e,
                    "salvage: a read failed; looking for the rest of the table");
            }
        }
        match skip_damage(db, table, resume, &mut probes) {
            Some(Some(next)) => {
                report.unreadable.push(format!(
                    "table {table}: keys {resume}..{next} (damaged pages skipped)"
                ));
                start = next;
                // Keys before `next` are behind us now.
                keys.seen = Some(next - 1);
            }
            Some(None) => {
                report.unreadable.push(format!(
                    "table {table}: keys from {resume} (damaged pages at its end)"
                ));
                break;
            }
            None => {
                report.unreadable.push(format!(
                    "table {table}: keys from {resume} (gave up after {} probes)",
                    probes.count
                ));
                break;
            }
        }
    }
    copied.head = keys.last.unwrap_or(0);
    copied.lost = copied
        .lost
        .saturating_add(known_head.saturating_sub(copied.head));
    Ok(copied)
}

/// The keys a stream's copy has met so far.
#[derive(Default)]
struct Keys {
    /// The first key read, while none was kept: what is lost before the
    /// first kept one counts from there.
    first_seen: Option<u64>,
    /// The last key kept, and the last key read in order (kept or not):
    /// reading resumes after the higher.
    last: Option<u64>,
    seen: Option<u64>,
}

impl Keys {
    /// The first `judged` of `entries` to keep: in order and `valid`; the
    /// keys missing before each kept one are counted in `copied.lost`.
    fn judge<'e>(
        &mut self,
        entries: &'e [(u64, Vec<u8>)],
        judged: usize,
        known_head: u64,
        valid: &dyn Fn(&[u8]) -> bool,
        copied: &mut Copied,
    ) -> Vec<(u64, &'e [u8])> {
        let mut batch: Vec<(u64, &[u8])> = Vec::new();
        for i in 0..judged {
            let (k, v) = &entries[i];
            // An entry with no next neighbour (the table's end, or damage
            // after it) cannot be judged by one. A stream's keys run on by
            // one (retention takes the oldest, so gaps are rare: what a
            // repair or an earlier salvage removed), so such an entry that
            // jumps past the key before it is taken only when a head the
            // store recorded elsewhere reaches it; a bit flipped in the last
            // key would otherwise give a record a seq it never had.
            let unvouched_jump = entries.get(i + 1).is_none()
                && self.seen.is_some_and(|l| *k > l.saturating_add(1))
                && *k > known_head;
            // Sequence numbers start at 1.
            let in_order = *k > 0
                && !unvouched_jump
                && self.seen.is_none_or(|l| *k > l)
                && entries.get(i + 1).is_none_or(|(n, _)| k < n);
            if !in_order {
                continue;
            }
            self.seen = Some(*k);
            if valid(v) {
                if let Some(l) = self.last {
                    copied.lost = copied.lost.saturating_add(k - l - 1);
                } else if let Some(first) = self.first_seen {
                    copied.lost = copied.lost.saturating_add(k - first);
                }
                self.last = Some(*k);
                batch.push((*k, v.as_slice()));
            } else if self.first_seen.is_none() && self.last.is_none() {
                self.first_seen = Some(*k);
            }
        }
        batch
    }
}

/// Writes one chunk's kept entries into the fresh store, in one transaction.
fn write_batch(to: &Database, table: &str, batch: &[(u64, &[u8])]) -> Result<(), StoreError> {
    let tx = to.begin_write()?;
    {
        let mut t = tx.open_table(TableDefinition::<u64, &[u8]>::new(table))?;
        for (k, v) in batch {
            t.insert(*k, *v)?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// The probes one table's salvage may still make: [`PROBE_BUDGET`] of
/// them, until the salvage's deadline (`PROBE_TIME` after it began).
struct Probes {
    count: u32,
    deadline: std::time::Instant,
}

impl Probes {
    /// Whether one more probe may be made (and counts it).
    fn take(&mut self) -> bool {
        if self.count >= PROBE_BUDGET || std::time::Instant::now() >= self.deadline {
            return false;
        }
        self.count += 1;
        true
    }
}

/// Finds where `table` reads again after damage at `from`: the lowest start
/// key past it from which a read succeeds and finds an entry
/// (`Some(Some(start))`), the table's end (`Some(None)`), or `None` when the
/// probe budget is spent.
fn skip_damage(
    db: &ReadOnlyDatabase,
    table: &str,
    from: u64,
    probes: &mut Probes,
) -> Option<Option<u64>> {
    // Doubling steps past the damage to a start that reads.
    let mut bad = from;
    let mut step = 1u64;
    let (good, found) = loop {
        if !probes.take() {
            return None;
        }
        let at = from.saturating_add(step);
        match probe(db, table, at) {
            Some(found) => break (at, found),
            None if at == u64::MAX => return Some(None),
            None => {
                bad = at;
                step = step.saturating_mul(2);
            }
        }
    };
    // Bisect back to the lowest start that reads.
    let (mut lo, mut hi, mut first) = (bad, good, found);
    while hi - lo > 1 {
        if !probes.take() {
            break;
        }
        let mid = lo + (hi - lo) / 2;
        match probe(db, table, mid) {
            Some(f) => {
                hi = mid;
                first = f;
            }
            None => lo = mid,
        }
    }
    Some(first.map(|_| hi))
}
