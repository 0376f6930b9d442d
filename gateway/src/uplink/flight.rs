//! Which published batches the broker has acknowledged, and how far the
//! uplink's cursor may move: plain state, no I/O, tested with plain values.
//!
//! Records are read from the store in *windows* (a contiguous range of
//! sequence numbers), each encoded into one or more batches (one per topic,
//! and more when a batch fills). The cursor moves to the end of a window when
//! every batch of that window and of all windows before it is acknowledged,
//! whatever order the PUBACKs come in.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug)]
struct Window {
    end: u64,
    outstanding: usize,
}

#[derive(Debug, Clone, Copy)]
struct Sent {
    window_end: u64,
    at: Instant,
    records: usize,
    bytes: usize,
}

/// An acknowledged batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acked {
    /// When it was published.
    pub sent: Instant,
    pub latency: Duration,
    pub records: usize,
    /// Its payload's size.
    pub bytes: usize,
}

/// In-flight bookkeeping of one connection.
#[derive(Debug)]
pub struct Flight {
    windows: VecDeque<Window>,
    /// Published, waiting for the MQTT client to say which packet id it got.
    unassigned: VecDeque<Sent>,
    by_pkid: HashMap<u16, Sent>,
    acked: u64,
    /// When the broker last acknowledged a publish on this connection.
    last_ack: Option<Instant>,
    /// Payload bytes published and not yet acknowledged.
    inflight_bytes: usize,
}

impl Flight {
    /// Everything up to `acked` is already done.
    pub fn new(acked: u64) -> Self {
        Flight {
            windows: VecDeque::new(),
            unassigned: VecDeque::new(),
            by_pkid: HashMap::new(),
            acked,
            last_ack: None,
            inflight_bytes: 0,
        }
    }

    /// The cursor: every sequence number up to here is acknowledged.
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// The last sequence number read into a window.
    pub fn read_to(&self) -> u64 {
        self.windows.back().map_or(self.acked, |w| w.end)
    }

    /// A window ending at `end` was read and encoded into `batches` batches.
    /// A window with no batches (nothing in it for this uplink) is done as
    /// soon as those before it are. Returns the new cursor if it moved.
    pub fn add_window(&mut self, end: u64, batches: usize) -> Option<u64> {
        debug_assert!(end > self.read_to());
        self.windows.push_back(Window {
            end,
            outstanding: batches,
        });
        self.advance()
    }

    /// A batch of `window_end`'s window carrying `records` records in
    /// `bytes` of payload was handed to the MQTT client.
    pub fn published(&mut self, window_end: u64, records: usize, bytes: usize, now: Instant) {
        self.inflight_bytes += bytes;
        self.unassigned.push_back(Sent {
            window_end,
            at: now,
            records,
            bytes,
        });
    }

    /// The MQTT client sent the oldest unassigned publish with `pkid`.
    pub fn assigned(&mut self, pkid: u16) {
        if let Some(sent) = self.unassigned.pop_front() {
            self.by_pkid.insert(pkid, sent);
        }
    }

    /// The broker acknowledged `pkid`. Returns what it acknowledged (None
    /// for an unknown packet id) and the new cursor if it moved.
    pub fn ack(&mut self, pkid: u16, now: Instant) -> (Option<Acked>, Option<u64>) {
        let Some(sent) = self.by_pkid.remove(&pkid) else {
            return (None, None);
        };
        if let Some(w) = self.windows.iter_mut().find(|w| w.end == sent.window_end) {
            w.outstanding = w.outstanding.saturating_sub(1);
        }
        self.last_ack = Some(now);
        self.inflight_bytes = self.inflight_bytes.saturating_sub(sent.bytes);
        let acked = Acked {
            sent: sent.at,
            latency: now.saturating_duration_since(sent.at),
            records: sent.records,
            bytes: sent.bytes,
        };
        (Some(acked), self.advance())
    }

    fn advance(&mut self) -> Option<u64> {
        let before = self.acked;
        while let Some(w) = self.windows.front() {
            if w.outstanding > 0 {
                break;
            }
            self.acked = w.end;
            self.windows.pop_front();
        }
        (self.acked > before).then_some(self.acked)
    }

    /// Publishes not yet acknowledged.
    pub fn inflight(&self) -> usize {
        self.unassigned.len() + self.by_pkid.len()
    }

    /// Payload bytes of the publishes not yet acknowledged.
    pub fn inflight_bytes(&self) -> usize {
        self.inflight_bytes
    }

    /// When the oldest unacknowledged publish was sent.
    pub fn oldest(&self) -> Option<Instant> {
        self.unassigned
            .iter()
            .chain(self.by_pkid.values())
            .map(|s| s.at)
            .min()
    }

    /// Since when the connection has shown no progress while publishes
    /// wait: the later of the oldest unacknowledged publish and the last
    /// PUBACK. A slow link that keeps acknowledging (one large batch after
    /// another at a few KB/s) is alive; one that acknowledges nothing is not.
    pub fn stalled_since(&self) -> Option<Instant> {
        let oldest = self.oldest()?;
        Some(self.last_ack.map_or(oldest, |ack| ack.max(oldest)))
    }

    /// The connection is gone: forget everything in flight; reading starts
    /// again after the cursor, so unacknowledged batches are sent again.
    pub fn reset(&mut self) {
        self.windows.clear();
        self.unassigned.clear();
        self.by_pkid.clear();
        self.last_ack = None;
        self.inflight_bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cursor_moves_only_over_fully_acknowledged_windows_in_order() {
        let t = Instant::now();
        let mut f = Flight::new(10);
        assert_eq!(f.add_window(20, 2), None);
        assert_eq!(f.add_window(30, 1), None);
        f.published(20, 5, 100, t);
        f.published(20, 5, 100, t);
        f.published(30, 5, 100, t);
        f.assigned(1);
        f.assigned(2);
        f.assigned(3);
        assert_eq!(f.inflight(), 3);
        assert_eq!(f.inflight_bytes(), 300);
        // The second window's batch is acknowledged first: no move.
        let later = t + Duration::from_millis(7);
        assert_eq!(
            f.ack(3, later),
            (
                Some(Acked {
                    sent: t,
                    latency: Duration::from_millis(7),
                    records: 5,
                    bytes: 100,
                }),
                None
            )
        );
        assert_eq!(f.ack(1, later).1, None);
        assert_eq!(f.ack(2, later).1, Some(30));
        assert_eq!(f.acked(), 30);
        assert_eq!(f.inflight(), 0);
        assert_eq!(f.inflight_bytes(), 0);
        assert_eq!(
            f.ack(2, later),
            (None, None),
            "a duplicate PUBACK is ignored"
        );
    }

    #[test]
    fn empty_windows_pass_when_their_turn_comes() {
        let t = Instant::now();
        let mut f = Flight::new(0);
        assert_eq!(f.add_window(5, 0), Some(5));
        f.add_window(9, 1);
        f.published(9, 4, 100, t);
        assert_eq!(f.add_window(12, 0), None, "behind an unacknowledged window");
        f.assigned(7);
        assert_eq!(f.ack(7, t).1, Some(12));
    }

    #[test]
    fn progress_not_age_decides_a_stall() {
        let t = Instant::now();
        let s = Duration::from_secs;
        let mut f = Flight::new(0);
        assert_eq!(f.stalled_since(), None, "nothing in flight");
        f.add_window(10, 1);
        f.add_window(20, 1);
        f.published(10, 10, 100, t);
        f.published(20, 10, 100, t);
        f.assigned(1);
        f.assigned(2);
        assert_eq!(f.stalled_since(), Some(t));
        // A slow link acknowledges the first after 13 s: the second, sent
        // at t, waits since then.
        f.ack(1, t + s(13));
        assert_eq!(f.stalled_since(), Some(t + s(13)));
        f.add_window(30, 1);
        f.published(30, 10, 100, t + s(20));
        f.assigned(3);
        assert_eq!(f.stalled_since(), Some(t + s(13)));
        f.ack(2, t + s(26));
        assert_eq!(f.stalled_since(), Some(t + s(26)));
        f.ack(3, t + s(27));
        assert_eq!(f.stalled_since(), None);
        f.reset();
        f.published(40, 1, 100, t + s(30));
        assert_eq!(f.stalled_since(), Some(t + s(30)));
    }

    #[test]
    fn a_reset_rewinds_reading_to_the_cursor() {
        let t = Instant::now();
        let mut f = Flight::new(3);
        f.add_window(8, 1);
        f.published(8, 5, 100, t);
        assert_eq!(f.oldest(), Some(t));
        f.reset();
        assert_eq!(f.read_to(), 3);
        assert_eq!(f.inflight(), 0);
        assert_eq!(f.inflight_bytes(), 0);
        assert_eq!(f.oldest(), None);
    }
}
