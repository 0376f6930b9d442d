//! [`SalvageReport`]: what a salvage read from a damaged file, and what it
//! could not.

use std::fmt;

/// What a salvage read from a damaged file.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SalvageReport {
    pub names: u64,
    pub names_lost: u64,
    pub records: u64,
    /// Sequence numbers known to have existed that were not salvaged.
    pub records_lost: u64,
    pub dead_letters: u64,
    pub dead_letters_lost: u64,
    pub route_records: u64,
    pub route_records_lost: u64,
    pub cursors: u64,
    pub route_states: u64,
    /// What could not be read (a table, a range of keys, the whole file).
    pub unreadable: Vec<String>,
}

impl fmt::Display for SalvageReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "salvaged {} records ({} lost), {} dead letters ({} lost), {} route records ({} lost), \
             {} names ({} lost), {} cursors, {} route states",
            self.records,
            self.records_lost,
            self.dead_letters,
            self.dead_letters_lost,
            self.route_records,
            self.route_records_lost,
            self.names,
            self.names_lost,
            self.cursors,
            self.route_states
        )?;
        if !self.unreadable.is_empty() {
            write!(f, "; could not read: {}", self.unreadable.join("; "))?;
        }
        Ok(())
    }
}
