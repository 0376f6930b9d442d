//! Deciding whether a store file is sound before anything reads it, and
//! salvaging what reads from one that is not.
//!
//! # The verdict ([`assess`])
//! One path, shared by the daemon's start ([`Store::open_or_salvage`]) and
//! `ferry fsck`:
//! 1. an empty (0-byte) file is damage, never silently initialised;
//! 2. redb opens the file, with its integrity check
//!    (`Builder::set_check_integrity_on_open`: the checksum of every page of
//!    the committed trees, and the allocator state rebuilt) when the check
//!    is due (below); a file redb reports `Corrupted`, not a redb file, or
//!    short, is damaged; one in use, not permitted or of a newer format is
//!    an error for the operator;
//! 3. Ferry's own checks: the format version (an unknown older one is
//!    damage; a newer one is refused by [`Store::open`](super::Store::open)
//!    as before), the streams' first and last keys readable and in order,
//!    the names dense (id = position, as the codec needs), every `meta`
//!    account readable. These read a few pages and run at every open.
//!
//! Every step runs in a [`contained`](crate::contain::contained) scope: redb
//! may panic on a damaged page it trusts, and such a panic is a verdict
//! ("damaged"), not the end of the daemon.
//!
//! # When the full check runs
//! The integrity check reads the whole file. Measured (release, 2-core Xeon
//! VM, SSD): 78 MB store (1.46 M records) 0.22–0.27 s; 1.1 GB store 2.2 s
//! with the file in the page cache, 10.1 s cold. An SD card reads several
//! times slower than that disk, so a store at the default 2 GiB budget
//! would add the better part of a minute to every start, systemd restart
//! and upgrade. A plain open of a cleanly closed file takes 6–10 ms.
//!
//! So the full check runs when the file is not known to be as redb last left
//! it: when Ferry closed it cleanly it writes `ferry.redb.clean` beside it
//! (the file's length, modification time and inode); every open removes
//! that record first (durably) and trusts the file without the full check
//! only if the record was there and still matches. So the check runs after
//! a crash, `kill -9`, power cut or a panic-abort (no record), after the file
//! was written by anything else (truncated, edited: length or mtime differ),
//! on the first start of this version, and always in `ferry fsck`. After an
//! unclean stop redb repairs the file at open anyway, which reads all of it
//! (measured: plain open 0.20 s on the 78 MB store and 3.2 s cold on the
//! 1.1 GB one, against 0.21 s and 10.1 s with the check), so the check costs
//! little extra where it runs most. Damage that keeps length and mtime (bit
//! rot on a card) is found when it is read: a read in a contained scope
//! fails that request; a panic elsewhere aborts the daemon, whose next
//! start, finding no clean record, runs the check and sets the file aside:
//! one restart, never a crash loop.
//!
//! # Salvage ([`salvage`])
//! A damaged file is renamed `ferry.redb.corrupt-<unix time>` (kept, never
//! changed) and a fresh store is written at the old path with what reads
//! from it: names (by id), records, dead letters and route output streams
//! (with their original sequence numbers, so uplink cursors stay
//! meaningful), cursors, route states and route heads. The damaged file is
//! read without trusting it: through a read-only backend that reads zeros
//! past its end (a truncated file reads as far as it goes) and does not need
//! redb's recovery, each table in chunks in contained scopes. Where a read
//! panics or fails, the rest of the table is found again by probing further
//! keys (doubling, then bisecting back to the first key that reads), so one
//! damaged page costs the records on it, not the ones after it. Entries are
//! kept only if they decode (with their names: a record naming a lost name
//! is lost) and their keys increase. The fresh store's heads are at least
//! the highest sequence number known to have existed (the damaged file's
//! last keys, cursors, accounts), so no sequence number is used twice.
//! What was lost is counted as the sequence numbers missing between and
//! after the salvaged ones; a page whose bytes were changed yet still decode
//! is kept as read (redb's checksums say that the file is damaged, not
//! which entry).
//!
//! # A lost header or root
//! A file whose first 64 bytes are lost (magic number, page size, region
//! layout: constants, and counts its length gives) is read through a
//! rebuilt header (`damaged.rs`); its commit slots, each checksummed, give
//! the roots. Measured on a 5,000-record store (69 pages of 4 KiB, debug
//! build): 64 garbage bytes, 0 records salvaged before, all 5,000 after;
//! the first 512 bytes zeroed (the commit slots too) and the pages holding
//! the roots: 0 records (so is one of three pages zeroed: the data tree's
//! root, the records table's root, and a branch above it), where zeroing
//! any other page costs its ~130 records.
//!
//! Not done: a raw scan of pages for the record encoding, for files whose
//! roots are gone. It could be bounded (one pass over the file's pages,
//! each parsed as a redb leaf of `u64` keys and byte values, every entry
//! kept only if it decodes with the names found the same way), but not
//! sound from the pages alone: a leaf does not say which table it belongs
//! to, and route output streams hold the same encoding under their own
//! sequence numbers (one would be taken for a raw record with the same
//! number); redb writes copies, so freed pages still hold older versions
//! of leaves, and with the `meta` table lost nothing says which records
//! retention had evicted (they would come back), nor which names a lost
//! names page held. Doing it soundly needs a mark in Ferry's own encoding
//! (the stream in each record) or a table-of-tables copy kept elsewhere.
//!
//! # Files
//! | file | job |
//! | --- | --- |
//! | `assess.rs` | the verdict ([`assess`]): redb's check and Ferry's |
//! | `aside.rs` | moving a damaged file aside and salvaging it ([`set_aside_and_salvage`]) |
//! | `copy.rs` | the salvage ([`salvage`]): names, small tables, streams, floors |
//! | `stream.rs` | one stream copied in contained chunks, probing past damage |
//! | `damaged.rs` | the read-only backend a damaged file is read through |
//! | `report.rs` | [`SalvageReport`] |

mod aside;
mod assess;
mod copy;
mod damaged;
mod report;
mod stream;

pub use aside::{aside_path, set_aside_and_salvage};
pub use assess::{assess, Check, Verdict};
pub use copy::salvage;
pub use report::SalvageReport;

/// `meta` keys: the highest sequence number known to have been used in each
/// stream, written by a salvage (the fresh store's heads are at least these).
pub(crate) const FLOOR_RECORDS: &str = "floor.records";
pub(crate) const FLOOR_DEAD: &str = "floor.dead";
