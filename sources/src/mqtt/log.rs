//! Logging of dead letters without flooding the journal.

use std::sync::atomic::{AtomicU64, Ordering};

use tracing::{debug, warn};

use ferry_core::record::DeadLetter;
use ferry_core::text::escape;

use super::payload::Reject;

/// Logs dead letters: the 1st, 2nd, 4th, 8th, ... of each kind at `warn`
/// (with the running count), the others at `debug`. A device that sends
/// garbage a thousand times a second produces a handful of lines, not a
/// thousand; every dead letter is still stored with its reason.
///
/// The topic and the reason come from the device (the reason quotes a
/// payload excerpt or a field name): both are logged through
/// [`escape`], so a topic with a newline or an escape sequence cannot
/// write a line of its own; the stored reason keeps the raw text.
#[derive(Debug, Default)]
pub(crate) struct DeadLetterLog {
    counts: [AtomicU64; Reject::KINDS.len()],
}

impl DeadLetterLog {
    pub(crate) fn log(&self, dead: &DeadLetter) {
        let i = Reject::KINDS
            .iter()
            .position(|k| *k == dead.kind)
            .unwrap_or(0);
        let count = self.counts[i].fetch_add(1, Ordering::Relaxed) + 1;
        if count.is_power_of_two() {
            warn!(
                source = %dead.source,
                topic = %escape(&dead.origin),
                kind = dead.kind,
                count,
                "dead letter: {}",
                escape(&dead.reason)
            );
        } else {
            debug!(
                source = %dead.source,
                topic = %escape(&dead.origin),
                kind = dead.kind,
                count,
                "dead letter: {}",
                escape(&dead.reason)
            );
        }
    }
}
