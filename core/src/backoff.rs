//! Capped exponential backoff with jitter: one policy for every retry loop
//! (the uplinks' and the MQTT subscriber's reconnects, the accept loops'
//! pauses, the Modbus circuit breaker).
//!
//! The ceiling starts at `min`, doubles with every failed attempt and stops
//! at `max`. A reconnect waits uniformly in `[min / 10, ceiling]` ("full
//! jitter", so a thousand gateways that lost the same link do not come back
//! in step, with a floor so that a run of unlucky draws cannot spin). A
//! circuit breaker waits in the upper half of its ceiling
//! ([`Backoff::upper_half`]): a failing device is never polled faster than
//! half its backed-off interval.

use std::time::Duration;

/// Where in `[0, ceiling]` a delay is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Jitter {
    /// `[min / 10, ceiling]`.
    Full,
    /// `[ceiling / 2, ceiling]`.
    UpperHalf,
}

/// The delays between the attempts of one retry loop.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
    jitter: Jitter,
}

impl Backoff {
    /// Full jitter from `min` up to `max` (a `max` below `min` is `min`).
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max: max.max(min),
            attempt: 0,
            jitter: Jitter::Full,
        }
    }

    /// Delays in the upper half of the ceiling, for a circuit breaker.
    pub fn upper_half(mut self) -> Backoff {
        self.jitter = Jitter::UpperHalf;
        self
    }

    /// The longest the next delay can be.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.min.saturating_mul(factor).min(self.max)
    }

    /// The failed attempts since the last [`Backoff::reset`].
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// The delay before the next attempt, drawn with `rng`; counts an attempt.
    pub fn next_delay(&mut self, rng: &mut fastrand::Rng) -> Duration {
        self.next_with(rng.f64())
    }

    /// The delay before the next attempt for a draw `rand` in `[0, 1)`;
    /// counts an attempt.
    pub fn next_with(&mut self, rand: f64) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let rand = rand.clamp(0.0, 1.0);
        match self.jitter {
            Jitter::Full => ceiling.mul_f64(rand).max(self.min / 10),
            Jitter::UpperHalf => {
                let half = ceiling / 2;
                half + (ceiling - half).mul_f64(rand)
            }
        }
    }

    /// After a success: the next failure starts again from `min`.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn ceilings_double_up_to_the_cap_and_reset() {
        let mut b = Backoff::new(S, 60 * S);
        let ceilings: Vec<u64> = (0..9)
            .map(|_| {
                let c = b.ceiling().as_secs();
                b.next_with(0.5);
                c
            })
            .collect();
        assert_eq!(ceilings, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(b.next_with(0.5), 30 * S);
        assert_eq!(b.next_with(0.0), Duration::from_millis(100));
        b.reset();
        assert_eq!(b.ceiling(), S);
        let mut rng = fastrand::Rng::with_seed(1);
        for _ in 0..100 {
            b.next_delay(&mut rng);
        }
        assert_eq!(b.ceiling(), 60 * S, "no overflow");
    }

    #[test]
    fn delays_are_jittered_within_the_ceiling() {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut b = Backoff::new(S, 60 * S);
        for _ in 0..6 {
            b.next_delay(&mut rng);
        }
        let delays: Vec<Duration> = (0..1000).map(|_| b.next_delay(&mut rng)).collect();
        assert!(delays.iter().all(|d| *d <= 60 * S && *d >= S / 10));
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

    #[test]
    fn a_breaker_waits_in_the_upper_half() {
        let mut b = Backoff::new(S, 8 * S).upper_half();
        assert_eq!(b.next_with(0.0), S / 2);
        assert_eq!(b.next_with(0.999_999_999), 2 * S - Duration::from_nanos(1));
        assert_eq!(b.next_with(0.5), 3 * S);
        assert_eq!(b.attempts(), 3);
    }
}
