//! Interned names: every device, source and field name is stored once in the
//! `names` table and referred to by a small integer in records.

use std::sync::{Arc, RwLock};

/// The id → name table, shared by the writer (which appends) and readers.
///
/// Readers only meet ids of committed records, and the writer publishes a
/// name before the record that uses it commits, so a reader always finds it.
#[derive(Debug, Default)]
pub struct Names {
    all: RwLock<Arc<Vec<Arc<str>>>>,
}

impl Names {
    pub fn new(all: Vec<Arc<str>>) -> Self {
        Names {
            all: RwLock::new(Arc::new(all)),
        }
    }

    /// The names as they are now: a cheap, consistent snapshot.
    pub fn snapshot(&self) -> Arc<Vec<Arc<str>>> {
        self.all.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Publishes the names a writer has added (their ids are their indices).
    pub(crate) fn publish(&self, all: Arc<Vec<Arc<str>>>) {
        *self.all.write().unwrap_or_else(|e| e.into_inner()) = all;
    }
}
