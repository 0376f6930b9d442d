//! Which sequence numbers arrived: the check behind "every acknowledged record arrived
//! at least once".

use std::fmt;
use std::ops::Range;

use anyhow::{bail, Context, Result};

/// How many missing ranges [`SeqTracker`]'s `Display` lists before it says "…".
const SHOWN_RANGES: usize = 10;

/// Tracks sequence numbers seen against an expected range: which are missing, how many
/// came more than once (at-least-once delivery allows that) and how many lie outside.
#[derive(Debug, Clone)]
pub struct SeqTracker {
    expected: Range<u64>,
    seen: Vec<bool>,
    distinct: u64,
    duplicates: u64,
    outside: u64,
}

impl SeqTracker {
    /// Expects every number in `expected`.
    pub fn new(expected: Range<u64>) -> Self {
        let len = usize::try_from(expected.end.saturating_sub(expected.start))
            .expect("the expected range fits in memory");
        SeqTracker {
            expected,
            seen: vec![false; len],
            distinct: 0,
            duplicates: 0,
            outside: 0,
        }
    }

    /// Records one arrival of `seq`.
    pub fn record(&mut self, seq: u64) {
        if !self.expected.contains(&seq) {
            self.outside += 1;
            return;
        }
        let slot = &mut self.seen[(seq - self.expected.start) as usize];
        if *slot {
            self.duplicates += 1;
        } else {
            *slot = true;
            self.distinct += 1;
        }
    }

    /// Whether every expected number has arrived.
    pub fn is_complete(&self) -> bool {
        self.distinct == self.seen.len() as u64
    }

    /// The range this tracker expects.
    pub fn expected(&self) -> &Range<u64> {
        &self.expected
    }

    /// How many distinct expected numbers arrived.
    pub fn distinct(&self) -> u64 {
        self.distinct
    }

    /// How many arrivals repeated a number already seen.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// How many arrivals lay outside the expected range.
    pub fn outside(&self) -> u64 {
        self.outside
    }

    /// The expected numbers not seen yet, as ranges.
    pub fn missing(&self) -> Vec<Range<u64>> {
        let mut ranges: Vec<Range<u64>> = Vec::new();
        for (i, _) in self.seen.iter().enumerate().filter(|(_, seen)| !**seen) {
            let seq = self.expected.start + i as u64;
            match ranges.last_mut() {
                Some(last) if last.end == seq => last.end += 1,
                _ => ranges.push(seq..seq + 1),
            }
        }
        ranges
    }
}

impl fmt::Display for SeqTracker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} of {:?} seen, {} duplicates, {} outside the range",
            self.distinct, self.expected, self.duplicates, self.outside
        )?;
        let missing = self.missing();
        if !missing.is_empty() {
            let count: u64 = missing.iter().map(|r| r.end - r.start).sum();
            write!(f, "; {count} missing:")?;
            for r in missing.iter().take(SHOWN_RANGES) {
                if r.end - r.start == 1 {
                    write!(f, " {}", r.start)?;
                } else {
                    write!(f, " {}..{}", r.start, r.end)?;
                }
            }
            if missing.len() > SHOWN_RANGES {
                write!(f, " …")?;
            }
        }
        Ok(())
    }
}

/// The `seq` of every record in an uplink payload in the JSON batch format: an array of
/// flat record objects (or one object), each with an unsigned integer `seq`.
pub fn json_record_seqs(payload: &[u8]) -> Result<Vec<u64>> {
    let value: serde_json::Value =
        serde_json::from_slice(payload).context("the payload is not JSON")?;
    let records = match &value {
        serde_json::Value::Array(records) => records.as_slice(),
        serde_json::Value::Object(_) => std::slice::from_ref(&value),
        _ => bail!("the payload is neither a JSON array nor an object"),
    };
    records
        .iter()
        .enumerate()
        .map(|(i, record)| {
            record
                .get("seq")
                .and_then(serde_json::Value::as_u64)
                .with_context(|| format!("record {i} has no unsigned integer `seq`"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracks_missing_duplicates_and_strays() {
        let mut t = SeqTracker::new(10..20);
        for seq in [10, 11, 11, 15, 19, 25] {
            t.record(seq);
        }
        assert!(!t.is_complete());
        assert_eq!(t.distinct(), 4);
        assert_eq!(t.duplicates(), 1);
        assert_eq!(t.outside(), 1);
        assert_eq!(t.missing(), vec![12..15, 16..19]);
        assert_eq!(
            t.to_string(),
            "4 of 10..20 seen, 1 duplicates, 1 outside the range; 6 missing: 12..15 16..19"
        );
        for seq in [12, 13, 14, 16, 17, 18] {
            t.record(seq);
        }
        assert!(t.is_complete());
        assert!(t.missing().is_empty());
    }

    #[test]
    fn empty_range_is_complete() {
        assert!(SeqTracker::new(5..5).is_complete());
    }

    #[test]
    fn reads_seqs_from_json_batches() {
        let batch = br#"[{"seq":1,"device":"a"},{"seq":2,"device":"b"}]"#;
        assert_eq!(json_record_seqs(batch).unwrap(), vec![1, 2]);
        assert_eq!(json_record_seqs(br#"{"seq":7}"#).unwrap(), vec![7]);
        assert!(json_record_seqs(br#"[{"seq":-1}]"#).is_err());
        assert!(json_record_seqs(b"not json").is_err());
    }
}
