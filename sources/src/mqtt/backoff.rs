//! Reconnection delays: capped exponential backoff with full jitter.

use std::time::Duration;

/// The delay before each reconnection attempt: uniform in `[0, ceiling]`,
/// where the ceiling starts at `min`, doubles with every failed attempt and
/// stops at `max` ("full jitter": many gateways that lost the same broker do
/// not all come back at the same instant).
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max: max.max(min),
            attempt: 0,
        }
    }

    /// The ceiling of the next delay.
    pub(crate) fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt).unwrap_or(u32::MAX);
        self.min.saturating_mul(factor).min(self.max)
    }

    /// The delay before the next attempt, counting the attempt.
    pub(crate) fn next_delay(&mut self, rng: &mut fastrand::Rng) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1).min(32);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rng.u64(0..=nanos))
    }

    /// A connection succeeded: start over from `min`.
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn ceiling_doubles_up_to_max() {
        let mut b = Backoff::new(S, 60 * S);
        let mut rng = fastrand::Rng::with_seed(1);
        let mut ceilings = Vec::new();
        for _ in 0..9 {
            ceilings.push(b.ceiling().as_secs());
            b.next_delay(&mut rng);
        }
        assert_eq!(ceilings, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        for _ in 0..100 {
            b.next_delay(&mut rng);
        }
        assert_eq!(b.ceiling(), 60 * S);
        b.reset();
        assert_eq!(b.ceiling(), S);
    }

    #[test]
    fn delays_are_jittered_within_the_ceiling() {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut b = Backoff::new(S, 60 * S);
        for _ in 0..6 {
            b.next_delay(&mut rng);
        }
        // Ceiling now 60s: delays spread over [0, 60s].
        let delays: Vec<Duration> = (0..1000).map(|_| b.next_delay(&mut rng)).collect();
        assert!(delays.iter().all(|d| *d <= 60 * S));
        assert!(delays.iter().any(|d| *d < 10 * S));
        assert!(delays.iter().any(|d| *d > 50 * S));
    }

    #[test]
    fn max_below_min_is_min() {
        let mut b = Backoff::new(10 * S, S);
        assert_eq!(b.ceiling(), 10 * S);
        b.next_delay(&mut fastrand::Rng::with_seed(3));
        assert_eq!(b.ceiling(), 10 * S);
    }
}
