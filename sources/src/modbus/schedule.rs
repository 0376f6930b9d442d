//! When each device of one link is polled next: plain data and arithmetic
//! on instants, no I/O, so it is tested with made-up times.
//!
//! Each device has its own grid of poll times, `interval` apart, starting at
//! a random phase within the first interval (so devices configured alike do
//! not all fire at once). The link polls whichever device is due first.
//!
//! - **Answering**: the next poll is the next tick of the grid. A poll that
//!   starts late (the link was busy) still happens, at most one interval
//!   late; ticks further behind are skipped and counted as missed, never
//!   made up in a burst.
//! - **Failing** (timeout, link down): the device is backed off, a circuit
//!   breaker: its next attempt is after a delay whose ceiling starts at its
//!   interval and doubles with each failure up to `backoff_max`, jittered in
//!   the upper half of the ceiling. Meanwhile the other devices have the
//!   link. The first poll that answers closes the breaker: the grid restarts
//!   from that moment.

use std::time::Duration;

use ferry_core::backoff::Backoff;
use tokio::time::Instant;

#[derive(Clone, Debug)]
struct Slot {
    due: Instant,
    interval: Duration,
    /// Open while the device fails: the ceiling starts at its interval.
    breaker: Backoff,
}

/// What recording a poll changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Change {
    /// Ticks skipped because the poll ended more than an interval late.
    pub missed: u32,
    /// `Some(false)` on the first failure, `Some(true)` on the first answer
    /// after failures.
    pub up: Option<bool>,
    /// How long until the next poll of this device.
    pub next_in: Duration,
}

/// The poll times of a link's devices.
#[derive(Clone, Debug)]
pub struct Schedule {
    slots: Vec<Slot>,
}

impl Schedule {
    /// A schedule for devices polled every `intervals[i]`, starting at `now`
    /// plus a random phase.
    pub fn new(
        intervals: &[Duration],
        backoff_max: Duration,
        now: Instant,
        rng: &mut fastrand::Rng,
    ) -> Schedule {
        let slots = intervals
            .iter()
            .map(|&interval| Slot {
                due: now + jitter(interval, rng),
                interval,
                breaker: Backoff::new(interval, backoff_max).upper_half(),
            })
            .collect();
        Schedule { slots }
    }

    /// The device due first (the lowest index among equals) and when.
    pub fn next(&self) -> Option<(usize, Instant)> {
        self.slots
            .iter()
            .enumerate()
            .min_by_key(|(i, s)| (s.due, *i))
            .map(|(i, s)| (i, s.due))
    }

    /// Whether device `i` is backed off.
    pub fn is_down(&self, i: usize) -> bool {
        self.slots[i].breaker.attempts() > 0
    }

    /// Records that a poll of device `i` ended at `now`, answered or failed.
    pub fn record(
        &mut self,
        i: usize,
        answered: bool,
        now: Instant,
        rng: &mut fastrand::Rng,
    ) -> Change {
        let slot = &mut self.slots[i];
        let mut change = Change {
            missed: 0,
            up: None,
            next_in: Duration::ZERO,
        };
        if answered {
            if slot.breaker.attempts() > 0 {
                slot.breaker.reset();
                change.up = Some(true);
                slot.due = now + slot.interval;
            } else {
                let next = slot.due + slot.interval;
                if next + slot.interval <= now {
                    let behind = now - next;
                    let ticks = behind.as_nanos() / slot.interval.as_nanos().max(1);
                    change.missed = u32::try_from(ticks).unwrap_or(u32::MAX);
                    slot.due = next + slot.interval * change.missed;
                } else {
                    slot.due = next;
                }
            }
        } else {
            if slot.breaker.attempts() == 0 {
                change.up = Some(false);
            }
            slot.due = now + slot.breaker.next_delay(rng);
        }
        change.next_in = slot.due.saturating_duration_since(now);
        change
    }
}

/// A random phase in `[0, interval)`.
fn jitter(interval: Duration, rng: &mut fastrand::Rng) -> Duration {
    let nanos = u64::try_from(interval.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(rng.u64(0..nanos.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn schedule(intervals: &[Duration], max: Duration) -> (Schedule, Instant, fastrand::Rng) {
        let mut rng = fastrand::Rng::with_seed(5);
        let t0 = Instant::now();
        (Schedule::new(intervals, max, t0, &mut rng), t0, rng)
    }

    #[test]
    fn phases_are_spread_within_the_first_interval() {
        let (s, t0, _) = schedule(&[1000 * MS; 50], 60_000 * MS);
        let phases: Vec<Duration> = s.slots.iter().map(|s| s.due - t0).collect();
        assert!(phases.iter().all(|p| *p < 1000 * MS));
        assert!(phases.iter().any(|p| *p < 200 * MS));
        assert!(phases.iter().any(|p| *p > 800 * MS));
    }

    #[test]
    fn an_answering_device_keeps_its_grid() {
        let (mut s, _, mut rng) = schedule(&[100 * MS], 1000 * MS);
        let (_, first) = s.next().unwrap();
        let c = s.record(0, true, first + 5 * MS, &mut rng);
        assert_eq!(
            c,
            Change {
                missed: 0,
                up: None,
                next_in: 95 * MS
            }
        );
        assert_eq!(s.next().unwrap().1, first + 100 * MS);
        // Late by 70 ms (the link was busy): polled at once, same grid.
        let c = s.record(0, true, first + 170 * MS, &mut rng);
        assert_eq!(c.missed, 0);
        assert_eq!(s.next().unwrap().1, first + 200 * MS);
        // Ended 2.5 intervals after its tick: two ticks skipped, the latest
        // passed one is polled now.
        let c = s.record(0, true, first + 450 * MS, &mut rng);
        assert_eq!(c.missed, 1);
        assert_eq!(s.next().unwrap().1, first + 400 * MS);
    }

    #[test]
    fn a_failing_device_backs_off_and_recovers() {
        let (mut s, t0, mut rng) = schedule(&[100 * MS], 1000 * MS);
        let mut now = t0;
        let mut delays = Vec::new();
        for n in 0..8 {
            let c = s.record(0, false, now, &mut rng);
            assert_eq!(c.up, if n == 0 { Some(false) } else { None });
            delays.push(c.next_in);
            now = s.next().unwrap().1;
        }
        let ceilings = [100, 200, 400, 800, 1000, 1000, 1000, 1000];
        for (d, c) in delays.iter().zip(ceilings) {
            assert!(
                *d >= c * MS / 2 && *d <= c * MS,
                "{d:?} not in the upper half of {c}ms"
            );
        }
        assert!(s.is_down(0));
        let c = s.record(0, true, now, &mut rng);
        assert_eq!(
            c,
            Change {
                missed: 0,
                up: Some(true),
                next_in: 100 * MS
            }
        );
        assert!(!s.is_down(0));
    }

    #[test]
    fn the_earliest_due_goes_first() {
        let (mut s, t0, mut rng) = schedule(&[100 * MS, 100 * MS], 1000 * MS);
        let mut order = Vec::new();
        for _ in 0..6 {
            let (i, due) = s.next().unwrap();
            order.push(i);
            s.record(i, true, due.max(t0), &mut rng);
        }
        // Alternating: neither starves the other.
        assert!(order.windows(2).all(|w| w[0] != w[1]), "{order:?}");
    }

    #[test]
    fn backoff_never_polls_faster_than_the_interval_allows() {
        let mut rng = fastrand::Rng::with_seed(1);
        let mut breaker = Backoff::new(500 * MS, 100 * MS).upper_half();
        for _ in 1..40 {
            let d = breaker.next_delay(&mut rng);
            assert!(d >= 250 * MS && d <= 500 * MS);
        }
    }
}
