//! What the ingest writer tells a secondary index, so the index is written in
//! the writer's own transactions (no extra fsync) and stays consistent with
//! the log across crashes. The query index (`crate::query`) implements it.

use redb::WriteTransaction;

use super::{Heads, StoreError};

/// Called by the writer, in this order, for each write transaction:
/// `begin`, then `record` for each record appended, then `finish` just
/// before the commit; `abort` if the transaction does not commit.
pub trait IndexHook: Send + Sync + std::fmt::Debug {
    /// A transaction begins; `committed` are the heads committed before it.
    /// (The previous transaction either committed or was reported by
    /// [`IndexHook::abort`].)
    fn begin(&self, tx: &WriteTransaction, committed: Heads) -> Result<(), StoreError>;
    /// The record `seq`, encoded as stored, was appended in this transaction.
    fn record(&self, seq: u64, encoded: &[u8]);
    /// Writes what the index wants durable. `first_record` is the first
    /// sequence number still stored after this transaction's evictions.
    /// Returns whether it wrote anything (so the transaction must commit).
    fn finish(&self, tx: &WriteTransaction, first_record: u64) -> Result<bool, StoreError>;
    /// The transaction begun last will not commit.
    fn abort(&self);
    /// The writer is about to wait for the store's write lock (`true`), or
    /// has it (`false`): an index replaying the log in transactions of its
    /// own lets the writer go first.
    fn wants_write(&self, _wants: bool) {}
}
