//! Token buckets for the cloud's per-connection limits (publishes per second
//! and bytes per second). Pure arithmetic on instants the caller passes in,
//! so it is tested without a clock.

use std::time::Duration;

use tokio::time::Instant;

/// A token bucket holding at most `burst` tokens, refilled at `rate` per second.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate_per_second: f64, burst: f64, now: Instant) -> Self {
        TokenBucket {
            rate: rate_per_second,
            burst,
            tokens: burst,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        self.at = now;
    }

    /// How long until `n` tokens are available (zero if they are now).
    /// A request larger than the burst waits until the bucket is full.
    pub fn wait_for(&mut self, n: f64, now: Instant) -> Duration {
        self.refill(now);
        let need = n.min(self.burst) - self.tokens;
        if need <= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(need / self.rate)
        }
    }

    /// Takes `n` tokens; the balance may go negative for a request larger than
    /// the burst, which then delays the ones after it.
    pub fn take(&mut self, n: f64, now: Instant) {
        self.refill(now);
        self.tokens -= n;
    }
}

/// Both limits of one connection.
#[derive(Debug, Clone)]
pub struct Limits {
    publishes: TokenBucket,
    bytes: TokenBucket,
}

impl Limits {
    /// Allows `publishes_per_second` and `bytes_per_second`, with one second
    /// of burst each.
    pub fn new(publishes_per_second: u32, bytes_per_second: u64, now: Instant) -> Self {
        Limits {
            publishes: TokenBucket::new(
                publishes_per_second as f64,
                publishes_per_second as f64,
                now,
            ),
            bytes: TokenBucket::new(bytes_per_second as f64, bytes_per_second as f64, now),
        }
    }

    /// How long until a publish of `len` bytes is allowed.
    pub fn wait_for(&mut self, len: usize, now: Instant) -> Duration {
        self.publishes
            .wait_for(1.0, now)
            .max(self.bytes.wait_for(len as f64, now))
    }

    /// Counts a publish of `len` bytes.
    pub fn take(&mut self, len: usize, now: Instant) {
        self.publishes.take(1.0, now);
        self.bytes.take(len as f64, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_bucket_allows_a_burst_then_paces() {
        let t0 = Instant::now();
        let mut l = Limits::new(100, 1_000_000, t0);
        for _ in 0..100 {
            assert_eq!(l.wait_for(10, t0), Duration::ZERO);
            l.take(10, t0);
        }
        // The 101st publish in the same instant waits one token's time: 10 ms.
        assert_eq!(l.wait_for(10, t0), Duration::from_millis(10));
        assert_eq!(
            l.wait_for(10, t0 + Duration::from_millis(10)),
            Duration::ZERO
        );
    }

    #[test]
    fn the_byte_limit_paces_large_publishes() {
        let t0 = Instant::now();
        let mut l = Limits::new(100, 512 * 1024, t0);
        // Four 128 KiB publishes use the whole second's bytes.
        for _ in 0..4 {
            assert_eq!(l.wait_for(128 * 1024, t0), Duration::ZERO);
            l.take(128 * 1024, t0);
        }
        assert_eq!(l.wait_for(128 * 1024, t0), Duration::from_millis(250));
        // Over a long run the rate holds: 40 publishes of 128 KiB take ~9 s more.
        let mut now = t0;
        for _ in 0..40 {
            now += l.wait_for(128 * 1024, now);
            l.take(128 * 1024, now);
        }
        let secs = now.duration_since(t0).as_secs_f64();
        assert!((secs - 10.0).abs() < 0.01, "{secs}");
    }
}
