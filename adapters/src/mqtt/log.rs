//! Logging of dead letters without flooding the journal.

use tracing::{debug, warn};

use crate::record::DeadLetter;

use super::payload::Reject;

/// Logs dead letters: the 1st, 2nd, 4th, 8th, ... of each kind at `warn`
/// (with the running count), the others at `debug`. A device that sends
/// garbage a thousand times a second produces a handful of lines, not a
/// thousand; every dead letter is still stored with its reason.
#[derive(Debug, Default)]
pub(crate) struct DeadLetterLog {
    counts: [u64; Reject::KINDS.len()],
}

impl DeadLetterLog {
    pub(crate) fn log(&mut self, dead: &DeadLetter) {
        let i = Reject::KINDS
            .iter()
            .position(|k| *k == dead.kind)
            .unwrap_or(0);
        self.counts[i] += 1;
        let count = self.counts[i];
        if count.is_power_of_two() {
            warn!(
                source = %dead.source,
                topic = %dead.origin,
                kind = dead.kind,
                count,
                "dead letter: {}",
                dead.reason
            );
        } else {
            debug!(
                source = %dead.source,
                topic = %dead.origin,
                kind = dead.kind,
                count,
                "dead letter: {}",
                dead.reason
            );
        }
    }
}
