//! Local history queries: a per-series index over the log, and the engine
//! that answers range, latest and list queries from it.
//!
//! # The index
//! One entry per series (device + field) per minute — never one per
//! reading, which would multiply the bytes written per reading (see
//! DESIGN.md). Each entry is a [`block::Block`]: the minute's rollup
//! (count, min, max, sum, first, last) and its points (sequence number,
//! timestamp, value; delta-encoded, a few bytes each), so long ranges read
//! one small header per minute and raw ranges never touch the log.
//!
//! | table           | key                          | value                      |
//! |-----------------|------------------------------|----------------------------|
//! | `index_minutes` | (minute start ms, series)    | a block                    |
//! | `index_hours`   | (series, hour start ms)      | the hour's block headers   |
//! | `index_series`  | series                       | (first, last) minute       |
//! | `index_expiry`  | (max seq, series, minute)    | `()`                       |
//! | `meta`          | `index.through`, `index.version` | `u64`                  |
//!
//! Blocks are keyed minute first: the blocks a minute closes (one per
//! series) are neighbours, so writing them rewrites a few B-tree pages, not
//! one page per series. A long query reads a series' minutes through its
//! hour directories (`index_hours`, one entry per series per hour, written
//! once the series has moved on to a later hour and kept in step with every
//! later write of a block of that hour), and minute by minute in an hour
//! without one (the current hour). `index_series` bounds where to look.
//!
//! A series key is `device name id << 32 | field name id` (the ids of the
//! store's `names` table). Every value is indexed as stored: integers
//! exactly (also above 2^53), floats, booleans, strings; `min`, `max`, `sum`
//! are `f64` over the numeric values (see [`block`]). An index of another
//! format version (version 1 held numbers only, series first) is dropped
//! and rebuilt from the log at open.
//!
//! # How it is written
//! The ingest writer feeds every record it appends to the index
//! ([`crate::store::IndexHook`]) inside its own write transaction. Each
//! series' current minute is kept in memory; a block is written when the
//! series moves on to the next minute, and every open minute that received
//! points at least every `flush_interval` (60 s), always inside a commit
//! the writer makes anyway: the index adds no fsync. `index.through` (the
//! sequence number every persisted block is complete through) is written
//! in the same transaction, so the index is exactly as durable as the log.
//! The open minutes in memory are bounded by bytes (`memory_budget`,
//! `store.index_memory`): past it every one is written at the next commit
//! and dropped after it; a later point of a dropped minute starts a bucket
//! that is merged with its block when written (and by queries).
//! `ferry_query_index_lag_records` counts the stored records the index has
//! not taken in (nonzero only while it catches up), and
//! `ferry_query_index_unpersisted_records` what a restart would replay.
//!
//! # Repair
//! The log after `index.through` is replayed (all of it for a new, deleted
//! or other-format index), merging into the persisted blocks by sequence
//! number, so a crash or a deleted index is repaired from the log. The
//! daemon replays in the background beside ingest (`replay.rs`: one
//! transaction per `catch_up_chunk` records, each committing its progress;
//! the writer's transactions leave the log to it until it is caught up);
//! [`Index::open`] replays before it returns. Catching up, an open minute is
//! written once its new points are as many as those persisted, so a flood
//! that puts millions of points in one minute is rewritten a bounded number
//! of times, and the replay is linear in the log. Until it has caught up,
//! queries say how many stored records they did not see (`View::lag`).
//! A failed commit drops the in-memory state and replays from the log too.
//!
//! # Retention
//! When retention evicts records, the blocks whose every point is before the
//! first stored record are deleted in the same transaction (found through
//! `index_expiry`), and an hour directory with its last block; queries drop
//! points of partly evicted blocks (and skip directory entries of evicted
//! ones), and never show a record that is not committed yet.
//!
//! # Reading
//! A query reads the persisted blocks in one read transaction and merges
//! the in-memory minutes of its series by sequence number. A series'
//! hours are walked lazily within its extent (a reading in 1970 and one
//! in 9999 cost a query time, never memory), and an engine made
//! [`Engine::cancellable`] asks its token before each series, hour and
//! block: the API cancels it when the request is gone.
//!
//! # Files
//! | file | what |
//! | --- | --- |
//! | `block.rs` | a block: rollup and points, their encoding |
//! | `bounds.rs` | the query range of times, bucket arithmetic within it |
//! | `layout.rs` | the index tables and `meta` keys, hour directories, series keys |
//! | `memory.rs` | the open minutes in memory, what they cost, adding a record |
//! | `index.rs` | [`Index`]: options, open, views, progress, the writer's hook |
//! | `flush.rs` | writing what is due, directories, retention, `index.through` |
//! | `catch_up.rs` | applying the log after `applied`: at open, at each transaction |
//! | `replay.rs` | the replay in the background, beside ingest |
//! | `engine.rs` | [`Engine`]: series lists, device pages, range queries |
//! | `range.rs` | a range query's series, raw or in buckets |
//! | `scan.rs` | reading one series: blocks merged with memory, in order |

pub mod block;
pub mod bounds;
mod catch_up;
mod engine;
mod flush;
mod index;
mod layout;
mod memory;
mod range;
mod replay;
mod scan;

pub use block::{Point, Rollup};
pub use engine::{DeviceInfo, DevicesPage, Engine, QueryError, SeriesInfo};
pub use index::{Index, IndexOptions};
pub use layout::{bucket_of, hour_of, SeriesKey, BUCKET_MS, HOUR_MS};
pub use memory::SourceSeen;
pub use range::{Bucket, Series};
pub use replay::Replay;

#[cfg(test)]
mod tests;
