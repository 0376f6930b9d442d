//! How fast an uplink's backlog drains: the rate its cursor moves, the rate
//! records come in, and from those the time until the backlog is sent.
//! Plain state over samples the caller takes (about one a second), tested
//! with plain instants.
//!
//! Rates are in sequence numbers per second over the last [`WINDOW`]: the
//! cursor's (what the cloud acknowledged) and the stream head's (what was
//! stored). The backlog is the head less the cursor, so the estimate is
//! `backlog / (send rate - arrival rate)` when the backlog shrinks, none when
//! it does not (disconnected, or records come in as fast as they leave), and
//! zero when there is nothing to send.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// The span the rates are taken over.
pub const WINDOW: Duration = Duration::from_secs(10);

/// One sample of the cursor and the head.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    acked: u64,
    head: u64,
}

/// What [`DrainRate::sample`] tells.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Drain {
    /// Records stored and not yet acknowledged.
    pub backlog: u64,
    /// Records per second the cursor moved over the window.
    pub send_rate: f64,
    /// Records per second stored over the window.
    pub arrival_rate: f64,
    /// When the backlog will have been sent at these rates: zero when there
    /// is none, `None` when it is not shrinking.
    pub eta: Option<Duration>,
}

/// The samples of the last [`WINDOW`].
#[derive(Debug, Default)]
pub struct DrainRate {
    samples: VecDeque<Sample>,
}

impl DrainRate {
    pub fn new() -> Self {
        DrainRate::default()
    }

    /// A new connection: the rates start again from its first sample (what
    /// the link did before it, down or not, says nothing of it).
    pub fn clear(&mut self) {
        self.samples.clear();
    }

    /// Takes a sample: the cursor is at `acked`, the head at `head`.
    pub fn sample(&mut self, now: Instant, acked: u64, head: u64) -> Drain {
        // The oldest sample kept is the last one at least WINDOW old, so the
        // rates span the whole window once there is one.
        while self.samples.len() >= 2 && now.saturating_duration_since(self.samples[1].at) >= WINDOW
        {
            self.samples.pop_front();
        }
        self.samples.push_back(Sample {
            at: now,
            acked,
            head,
        });
        let first = self.samples[0];
        let span = now.saturating_duration_since(first.at).as_secs_f64();
        let per_second = |from: u64, to: u64| {
            if span > 0.0 {
                to.saturating_sub(from) as f64 / span
            } else {
                0.0
            }
        };
        let send_rate = per_second(first.acked, acked);
        let arrival_rate = per_second(first.head, head);
        let backlog = head.saturating_sub(acked);
        let eta = if backlog == 0 {
            Some(Duration::ZERO)
        } else if send_rate > arrival_rate {
            Duration::try_from_secs_f64(backlog as f64 / (send_rate - arrival_rate)).ok()
        } else {
            None
        };
        Drain {
            backlog,
            send_rate,
            arrival_rate,
            eta,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn a_backlog_draining_at_a_steady_rate() {
        let t = Instant::now();
        let mut d = DrainRate::new();
        // 10,000 records waiting, none coming in; the cursor moves 500 a second.
        let first = d.sample(t, 0, 10_000);
        assert_eq!(
            first,
            Drain {
                backlog: 10_000,
                send_rate: 0.0,
                arrival_rate: 0.0,
                eta: None
            },
            "one sample: no rate yet"
        );
        for i in 1..=4 {
            d.sample(t + s(i), 500 * i, 10_000);
        }
        let now = d.sample(t + s(5), 2_500, 10_000);
        assert_eq!(now.backlog, 7_500);
        assert_eq!(now.send_rate, 500.0);
        assert_eq!(now.eta, Some(s(15)));
    }

    #[test]
    fn new_records_slow_the_drain_and_can_stop_it() {
        let t = Instant::now();
        let mut d = DrainRate::new();
        d.sample(t, 0, 1_000);
        // Sent 100/s, stored 60/s: the backlog shrinks by 40/s.
        let now = d.sample(t + s(10), 1_000, 1_600);
        assert_eq!((now.send_rate, now.arrival_rate), (100.0, 60.0));
        assert_eq!(now.backlog, 600);
        assert_eq!(now.eta, Some(s(15)));
        // Then stored as fast as sent: not draining.
        let mut e = DrainRate::new();
        e.sample(t, 0, 1_000);
        let now = e.sample(t + s(10), 1_000, 2_000);
        assert_eq!(now.eta, None);
    }

    #[test]
    fn an_empty_backlog_is_drained_and_a_stopped_link_is_not_draining() {
        let t = Instant::now();
        let mut d = DrainRate::new();
        d.sample(t, 100, 100);
        assert_eq!(d.sample(t + s(1), 200, 200).eta, Some(Duration::ZERO));
        // The link stops: once the window holds no progress the rate is zero.
        for i in 2..=12 {
            d.sample(t + s(i), 200, 200 + 10 * (i - 1));
        }
        let now = d.sample(t + s(13), 200, 320);
        assert_eq!(now.send_rate, 0.0);
        assert_eq!(now.backlog, 120);
        assert_eq!(now.eta, None);
        // A new connection: its rates from its own samples only.
        d.clear();
        assert_eq!(d.sample(t + s(14), 200, 320).send_rate, 0.0);
        let now = d.sample(t + s(16), 300, 320);
        assert_eq!((now.send_rate, now.arrival_rate), (50.0, 0.0));
        assert_eq!(now.eta, Some(Duration::from_millis(400)));
    }

    #[test]
    fn the_rates_span_the_last_ten_seconds() {
        let t = Instant::now();
        let mut d = DrainRate::new();
        // 1,000/s for 20 s, then 100/s.
        for i in 0..=20 {
            d.sample(t + s(i), 1_000 * i, 1_000_000);
        }
        let mut now = d.sample(t + s(21), 20_100, 1_000_000);
        for i in 22..=31 {
            now = d.sample(t + s(i), 20_000 + 100 * (i - 20), 1_000_000);
        }
        // Ten seconds at 100/s since t+21, one more before it at 100/s.
        assert_eq!(now.send_rate, 100.0);
        assert_eq!(now.backlog, 1_000_000 - 21_100);
        assert_eq!(now.eta, Some(s(9_789)));
    }
}
