//! When a device's unacknowledged publishes ask ingest for a commit before
//! the commit interval ends.
//!
//! A device that waits for its acknowledgements before it publishes more
//! (its in-flight window is full: one message for `mosquitto_pub -l` and
//! most scripts, 20 for paho's and mosquitto's clients) would get one
//! window through per commit interval, 80 messages a second at 250 ms. A
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
//! a device is *ack-clocked* for as long as it answers its
//! acknowledgements that fast; once it has been quiet that long again, it
//! is waiting for us, and a commit is asked for. A device on its own
//! schedule was publishing at its pace when its acknowledgements went out,
//! or publishes later than [`ANSWERED`] after them, and is never asked for.
//!
//! The first time it is, the publishes it left unacknowledged are taken
//! for its window; from then on, while it is ack-clocked, a commit is asked
//! for as soon as half of that window waits, so the device sends the rest
//! of its window while the commit runs (as the subscriber source does with
//! half its broker's `broker_inflight`). A window of one asks with every
//! publish.
//!
//! Gaps that span acknowledgements going out are the front's time, not
//! the device's, and do not count towards its pace.

use std::time::Duration;

use tokio::time::Instant;

/// A publish this soon after the device's acknowledgements went out came
/// in answer to them: a round trip over Wi-Fi, or a busy client's event
/// loop. (A device must also have been quiet before them to become
/// ack-clocked, so a periodic device publishing by chance soon after its
/// acknowledgements is not taken for one.)
pub(super) const ANSWERED: Duration = Duration::from_millis(20);

/// The shortest quiet time after which an ack-clocked device is taken to
/// wait for its acknowledgements.
pub(super) const STALL: Duration = Duration::from_millis(2);

/// One connection's publishing pace.
#[derive(Debug, Default)]
pub(super) struct Pace {
    /// When the device last published (QoS 1 or 2).
    last: Option<Instant>,
    /// A moving average of its gaps between publishes, acknowledgements
    /// not between them.
    gap: Option<Duration>,
    /// The acknowledgements the device's clocking was last judged by.
    judged: Option<Instant>,
    clocked: bool,
    /// The publishes unacknowledged when it last waited for us.
    window: Option<usize>,
}

impl Pace {
    /// QoS 1 or 2 publishes read at `now`; the device's acknowledgements
    /// last went out at `acked` (`None`: never).
    pub(super) fn published(&mut self, now: Instant, acked: Option<Instant>) {
        let since_ack = acked.filter(|&a| self.last.is_some_and(|l| a >= l));
        if let (Some(last), None) = (self.last, since_ack) {
            let g = now.saturating_duration_since(last);
            self.gap = Some(self.gap.map_or(g, |avg| (avg * 7 + g) / 8));
        }
        if let Some(a) = acked {
            if self.judged != Some(a) {
                // The first publish since these acknowledgements: clocked
                // if it answered them, and the device was quiet before
                // them (or clocked already: one that keeps half its
                // window in flight is still publishing when the first half
                // is acknowledged).
                self.judged = Some(a);
                let waited = self
                    .last
                    .is_some_and(|l| a.saturating_duration_since(l) >= self.quiet());
                let answered = now.saturating_duration_since(a) <= ANSWERED;
                self.clocked = answered && (waited || self.clocked);
            }
        }
        self.last = Some(now);
    }

    /// How long the device must be quiet to be waiting for us: [`STALL`],
    /// or three of its gaps if longer.
    fn quiet(&self) -> Duration {
        self.gap.map_or(STALL, |g| (g * 3).max(STALL))
    }

    /// The device waited for us with `unacked` publishes unacknowledged.
    pub(super) fn waited(&mut self, unacked: usize) {
        self.window = Some(unacked);
    }

    /// Whether `unacked` publishes of an ack-clocked device are half its
    /// window: a commit is asked for with them.
    pub(super) fn presses(&self, unacked: usize) -> bool {
        self.clocked && self.window.is_some_and(|w| unacked >= (w / 2).max(1))
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
    fn once_a_window_is_known_half_of_it_presses() {
        let mut pace = Pace::default();
        let t = Instant::now();
        pace.published(t, None);
        assert!(!pace.presses(20), "not clocked");
        pace.published(t + ms(6), Some(t + ms(5)));
        assert!(!pace.presses(20), "no window known");
        pace.waited(20);
        assert!(!pace.presses(9));
        assert!(pace.presses(10));
        // Publishes late after its next acknowledgements: on its own again.
        let late = t + ms(30) + ANSWERED + ms(1);
        pace.published(late, Some(t + ms(30)));
        assert!(!pace.presses(20));
        // A window of one presses with every publish.
        pace.published(late + ms(11), Some(late + ms(10)));
        pace.waited(1);
        assert!(pace.presses(1));
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
        assert!(!pace.presses(100));
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
