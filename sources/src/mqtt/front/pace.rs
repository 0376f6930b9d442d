//! When a device's unacknowledged publishes ask ingest for a commit before
//! the commit interval ends.
//!
//! A device that waits for its acknowledgements before it publishes more
//! (its in-flight window is full: one message for `mosquitto_pub -l` and
//! most scripts, 10 or 20 for MQTT libraries) would get one window through
//! per commit interval, 4 to 80 messages a second at 250 ms. (A full window
//! of 20 asks for a commit by its count alone: `relay.rs`, `FULL_WINDOW`.) A
//! device that publishes on its own schedule (a reading every 10 ms, or a
//! burst of fields every second) is not held by the interval and should
//! ride it: every commit asked for early is another ~30 KB written to the
//! SD card.
//!
//! The two cannot be told apart by how many publishes are unacknowledged
//! (a 100 Hz device pipelining its readings has 25 waiting at 250 ms), but
//! by when they publish: a device held by its window is quiet when its
//! acknowledgements go out (for [`STALL`] or three times its own gap
//! between publishes, whichever is longer), publishes again right after
//! them ([`ANSWERED`]), and goes quiet again once its window is full. Such
//! a device is *ack-clocked* until its next acknowledgements; once it has
//! been quiet that long again, it is waiting for us, and a commit is asked
//! for. A device on its own schedule was publishing at its pace when its
//! acknowledgements went out, or publishes later than [`ANSWERED`] after
//! them, and is not asked for; one misjudged (it published by chance right
//! after its acknowledgements) costs one early commit, judged again at the
//! next acknowledgements.
//!
//! A gap ended by a publish that answered acknowledgements is the front's
//! time, not the device's, and does not count towards its pace.

use std::time::Duration;

use tokio::time::Instant;

/// A publish this soon after the device's acknowledgements went out came
/// in answer to them: a round trip on a LAN, a client's event loop.
pub(super) const ANSWERED: Duration = Duration::from_millis(5);

/// The shortest quiet time after which an ack-clocked device is taken to
/// wait for its acknowledgements.
pub(super) const STALL: Duration = Duration::from_millis(2);

/// One connection's publishing pace.
#[derive(Debug, Default)]
pub(super) struct Pace {
    /// When the device last published (QoS 1 or 2).
    last: Option<Instant>,
    /// A moving average of its own gaps between publishes.
    gap: Option<Duration>,
    /// The acknowledgements the device's clocking was last judged by.
    judged: Option<Instant>,
    clocked: bool,
}

impl Pace {
    /// QoS 1 or 2 publishes read at `now`; the device's acknowledgements
    /// last went out at `acked` (`None`: never).
    pub(super) fn published(&mut self, now: Instant, acked: Option<Instant>) {
        // Acknowledgements since its last publish, and whether this
        // publish answered them.
        let fresh = acked.filter(|&a| self.last.is_some_and(|l| a >= l));
        let answered = fresh.is_some_and(|a| now.saturating_duration_since(a) <= ANSWERED);
        if let Some(a) = fresh.filter(|&a| self.judged != Some(a)) {
            self.judged = Some(a);
            let waited = self
                .last
                .is_some_and(|l| a.saturating_duration_since(l) >= self.quiet());
            self.clocked = waited && answered;
        }
        if let (Some(last), false) = (self.last, answered) {
            let g = now.saturating_duration_since(last);
            self.gap = Some(self.gap.map_or(g, |avg| (avg * 7 + g) / 8));
        }
        self.last = Some(now);
    }

    /// How long the device must be quiet to be waiting for us: [`STALL`],
    /// or three of its gaps if longer.
    fn quiet(&self) -> Duration {
        self.gap.map_or(STALL, |g| (g * 3).max(STALL))
    }

    /// When, if it stays quiet with publishes unacknowledged, the device is
    /// waiting for us; `None` for a device on its own schedule.
    pub(super) fn stalls_at(&self) -> Option<Instant> {
        if !self.clocked {
            return None;
        }
        self.last.map(|l| l + self.quiet())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Publishes every `period` ms from `start`, `n` of them, while commits
    /// every `interval` ms acknowledge them 5 ms after each interval ends.
    fn periodic(pace: &mut Pace, start: Instant, period: u64, interval: u64, n: u64) {
        for i in 0..n {
            let at = period * i;
            let commits = at.saturating_sub(5) / interval;
            let acked = (commits > 0).then(|| start + ms(commits * interval + 5));
            pace.published(start + ms(at), acked);
        }
    }

    #[test]
    fn a_device_never_acknowledged_rides_the_interval() {
        let mut pace = Pace::default();
        let t = Instant::now();
        for i in 0..20 {
            pace.published(t + Duration::from_micros(50 * i), None);
        }
        assert_eq!(pace.stalls_at(), None);
    }

    #[test]
    fn a_window_of_one_is_waiting_soon_after_its_publish() {
        let mut pace = Pace::default();
        let t = Instant::now();
        pace.published(t, None);
        // Acknowledged at 250 ms, publishes again 0.3 ms later, and so on.
        let mut now = t;
        for _ in 0..10 {
            let acked = now + ms(5);
            now = acked + Duration::from_micros(300);
            pace.published(now, Some(acked));
            assert_eq!(pace.stalls_at(), Some(now + STALL));
        }
    }

    #[test]
    fn a_full_window_is_waiting_once_its_burst_ends() {
        let mut pace = Pace::default();
        let t = Instant::now();
        let mut acked = None;
        let mut now = t;
        for _round in 0..5 {
            for i in 0..20 {
                now += Duration::from_micros(if i == 0 { 300 } else { 40 });
                pace.published(now, acked);
            }
            assert_eq!(pace.stalls_at(), acked.map(|_| now + STALL));
            acked = Some(now + ms(6));
            now += ms(6);
        }
    }

    #[test]
    fn a_periodic_device_is_not_waiting_even_right_after_an_acknowledgement() {
        let t = Instant::now();
        // 100 Hz, commits every 250 ms.
        let mut pace = Pace::default();
        periodic(&mut pace, t, 10, 250, 200);
        assert_eq!(pace.stalls_at(), None, "publishes 5 ms after its acks");

        // Its publish lands 1 ms after the acknowledgements of a commit,
        // which came while it was publishing at its pace.
        let mut pace = Pace::default();
        periodic(&mut pace, t, 10, 250, 100);
        let last = t + ms(990);
        pace.published(last + ms(10), Some(last + ms(9)));
        assert_eq!(pace.stalls_at(), None, "it was not waiting for them");

        // Commits as often as it publishes (10 ms): its gaps are its own
        // whenever its publish comes later than ANSWERED after them, and
        // once one is known it is not taken for waiting (before, one may
        // be: an early commit, judged again at the next acknowledgements).
        let mut pace = Pace::default();
        for i in 0..200u64 {
            let acked = (i > 0).then(|| t + ms(10 * i - 1 - i % 9));
            pace.published(t + ms(10 * i), acked);
            assert!(i < 10 || pace.stalls_at().is_none(), "publish {i}");
        }
    }

    #[test]
    fn a_burst_every_second_rides_the_interval() {
        let mut pace = Pace::default();
        let t = Instant::now();
        let mut acked = None;
        for s in 0..10u32 {
            for f in 0..3u32 {
                pace.published(t + ms(1000) * s + Duration::from_micros(100) * f, acked);
            }
            assert_eq!(pace.stalls_at(), None);
            acked = Some(t + ms(1000) * s + ms(250));
        }
    }
}
