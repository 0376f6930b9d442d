//! Batches sized to the link: its recent throughput, measured from PUBACKs,
//! and the batch size and bytes in flight that follow from it. Plain state
//! over the instants the caller passes in, tested without a clock or a
//! network.
//!
//! **The measure.** Each PUBACK is a sample: the batch's bytes over the time
//! the link spent on it, from the later of its publish and the PUBACK before
//! it (when batches queue behind each other, the link works on one once the
//! one before is through; when the link was idle, from the publish). Idle
//! time is not counted, so a trickle of small batches does not read as a
//! slow link, and PUBACKs that come in one burst do not read as a fast one:
//! the rate is the sum of the recent samples' bytes over the sum of their
//! times ([`SAMPLES`] at most, none older than [`SAMPLE_AGE`]). A small
//! batch on a long round trip measures the round trip more than the link,
//! which errs on the side of small batches; the next ones are larger and
//! measure better.
//!
//! **What follows from it.** A batch should cross in [`CROSS_TIME`] at that
//! rate (so a connection that lives a few seconds still has batches
//! acknowledged and moves its cursor), between [`FLOOR`] (the billed 5 KB
//! unit: a smaller batch costs as much) and `max_batch_bytes`. At most
//! [`INFLIGHT_TIME`] of the link is in flight (at least two batches), so what
//! a dropped connection sends again, and what waits ahead of a PINGREQ, stays
//! bounded. Before the first PUBACK nothing is known: batches start at the
//! floor, two in flight, and only two are encoded from a read
//! ([`LinkPace::measured`]), like TCP's slow start.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// How long a batch should take to cross the link.
pub const CROSS_TIME: Duration = Duration::from_secs(2);
/// How much of the link may be in flight.
pub const INFLIGHT_TIME: Duration = Duration::from_secs(4);
/// The smallest batch the pace asks for (IoT Core bills by 5 KB).
pub const FLOOR: usize = 5 * 1024;
/// Samples the rate is taken over, at most.
pub const SAMPLES: usize = 16;
/// Samples older than this are dropped.
pub const SAMPLE_AGE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy)]
struct Sample {
    bytes: u64,
    busy: Duration,
    at: Instant,
}

/// One uplink's measure of its link; it outlives connections (the link is
/// the same after a reconnect).
#[derive(Debug, Default)]
pub struct LinkPace {
    samples: VecDeque<Sample>,
    /// The last PUBACK on the current connection.
    last_ack: Option<Instant>,
}

impl LinkPace {
    pub fn new() -> Self {
        LinkPace::default()
    }

    /// A batch of `bytes` published at `sent` was acknowledged at `now`.
    pub fn acked(&mut self, bytes: usize, sent: Instant, now: Instant) {
        let from = self.last_ack.map_or(sent, |last| last.max(sent));
        self.last_ack = Some(self.last_ack.map_or(now, |last| last.max(now)));
        self.samples.push_back(Sample {
            bytes: bytes as u64,
            busy: now.saturating_duration_since(from),
            at: now,
        });
        while self.samples.len() > SAMPLES
            || self
                .samples
                .front()
                .is_some_and(|s| now.saturating_duration_since(s.at) > SAMPLE_AGE)
        {
            self.samples.pop_front();
        }
    }

    /// A new connection: its first PUBACK is timed from its publish.
    pub fn reconnected(&mut self) {
        self.last_ack = None;
    }

    /// Whether any recent PUBACK measured the link.
    pub fn measured(&self) -> bool {
        !self.samples.is_empty()
    }

    /// The link's recent throughput in bytes per second, if measured.
    pub fn bytes_per_second(&self) -> Option<f64> {
        if self.samples.is_empty() {
            return None;
        }
        let bytes: u64 = self.samples.iter().map(|s| s.bytes).sum();
        let busy: Duration = self.samples.iter().map(|s| s.busy).sum();
        // PUBACKs within a millisecond of each other: a fast link, not an
        // infinite one.
        Some(bytes as f64 / busy.max(Duration::from_millis(1)).as_secs_f64())
    }

    /// The size a batch should have: [`CROSS_TIME`] of the link, at least
    /// [`FLOOR`], at most `max` (which wins over the floor).
    pub fn batch_bytes(&self, max: usize) -> usize {
        let floor = FLOOR.min(max);
        match self.bytes_per_second() {
            None => floor,
            Some(rate) => {
                (rate * CROSS_TIME.as_secs_f64()).clamp(floor as f64, max as f64) as usize
            }
        }
    }

    /// The most bytes to have in flight: [`INFLIGHT_TIME`] of the link, and
    /// at least two batches.
    pub fn inflight_bytes(&self, max_batch: usize) -> usize {
        let two = self.batch_bytes(max_batch).saturating_mul(2);
        match self.bytes_per_second() {
            None => two,
            Some(rate) => {
                let of_link = rate * INFLIGHT_TIME.as_secs_f64();
                if of_link >= usize::MAX as f64 {
                    usize::MAX
                } else {
                    (of_link as usize).max(two)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB: usize = 1024;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn rate(p: &LinkPace) -> f64 {
        let r = p.bytes_per_second().expect("measured");
        // To the byte per second: the arithmetic is exact up to float noise.
        r.round()
    }

    #[test]
    fn before_any_puback_batches_start_at_the_floor_two_in_flight() {
        let p = LinkPace::new();
        assert!(!p.measured());
        assert_eq!(p.bytes_per_second(), None);
        assert_eq!(p.batch_bytes(128 * KIB), FLOOR);
        assert_eq!(p.inflight_bytes(128 * KIB), 2 * FLOOR);
        // A max_batch_bytes below the floor wins.
        assert_eq!(p.batch_bytes(2 * KIB), 2 * KIB);
        assert_eq!(p.inflight_bytes(2 * KIB), 4 * KIB);
    }

    #[test]
    fn queued_batches_are_timed_from_the_puback_before_them() {
        // A 20 kB/s link: three 10,000-byte batches published at once cross
        // one after the other, 0.5 s each.
        let t = Instant::now();
        let mut p = LinkPace::new();
        p.acked(10_000, t, t + ms(500));
        p.acked(10_000, t, t + ms(1000));
        p.acked(10_000, t, t + ms(1500));
        assert_eq!(rate(&p), 20_000.0);
        // Two seconds of it: 40,000 bytes a batch, four seconds in flight.
        assert_eq!(p.batch_bytes(128 * KIB), 40_000);
        assert_eq!(p.inflight_bytes(128 * KIB), 80_000);
    }

    #[test]
    fn idle_time_between_batches_does_not_count() {
        // 1,000-byte batches, each alone on the link for 10 ms, a second apart.
        let t = Instant::now();
        let mut p = LinkPace::new();
        for i in 0..5 {
            let sent = t + Duration::from_secs(i);
            p.acked(1_000, sent, sent + ms(10));
        }
        assert_eq!(rate(&p), 100_000.0);
        assert_eq!(p.batch_bytes(128 * KIB), 128 * KIB, "capped at max");
    }

    #[test]
    fn a_burst_of_pubacks_is_not_a_fast_link() {
        // Two batches of 5,000 bytes acknowledged in one burst after 1 s: the
        // second's sample takes no time, but the pair still reads 10 kB/s.
        let t = Instant::now();
        let mut p = LinkPace::new();
        p.acked(5_000, t, t + ms(1000));
        p.acked(5_000, t, t + ms(1000));
        assert_eq!(rate(&p), 10_000.0);
        assert_eq!(p.batch_bytes(128 * KIB), 20_000);
        // PUBACKs all at once, nothing else known: a fast link, not infinity.
        let mut q = LinkPace::new();
        q.acked(5_000, t, t);
        assert_eq!(rate(&q), 5_000_000.0);
        assert_eq!(q.inflight_bytes(128 * KIB), 20_000_000);
    }

    #[test]
    fn the_rate_follows_the_recent_samples_only() {
        let t = Instant::now();
        let mut p = LinkPace::new();
        // A fast link first: 100 kB/s.
        for i in 0..SAMPLES as u64 {
            p.acked(10_000, t, t + ms(100 * (i + 1)));
        }
        assert_eq!(rate(&p), 100_000.0);
        // It slows to 5 kB/s: once SAMPLES new samples are in, the old are gone.
        let slow = t + Duration::from_secs(2);
        for i in 0..SAMPLES as u64 {
            p.acked(5_000, slow, slow + Duration::from_secs(i + 1));
        }
        assert_eq!(rate(&p), 5_000.0);
        assert_eq!(p.batch_bytes(128 * KIB), 10_000);
        // And a sample older than SAMPLE_AGE goes, whatever the count.
        let mut q = LinkPace::new();
        q.acked(1_000, t, t + ms(100));
        let later = t + SAMPLE_AGE + Duration::from_secs(1);
        q.acked(1_000, later, later + ms(200));
        assert_eq!(rate(&q), 5_000.0);
    }

    #[test]
    fn a_reconnect_times_the_first_puback_from_its_publish() {
        let t = Instant::now();
        let mut p = LinkPace::new();
        p.acked(10_000, t, t + ms(500));
        p.reconnected();
        // Published before the last PUBACK of the old connection is
        // impossible on the new one; from its own publish: 10,000 in 0.5 s.
        let sent = t + Duration::from_secs(10);
        p.acked(10_000, sent, sent + ms(500));
        assert_eq!(rate(&p), 20_000.0);
    }

    #[test]
    fn a_slow_link_gets_batches_that_cross_in_two_seconds() {
        // 20 kB/s, batches published back to back: every one crosses within
        // CROSS_TIME of the PUBACK before it once the pace has a measure.
        let rate = 20_000.0;
        let t0 = Instant::now();
        let mut p = LinkPace::new();
        let mut link_free = t0;
        for _ in 0..50 {
            let size = p.batch_bytes(128 * KIB);
            let cross = Duration::from_secs_f64(size as f64 / rate);
            let sent = link_free;
            link_free += cross;
            assert!(cross <= CROSS_TIME + ms(1), "{size} bytes take {cross:?}");
            p.acked(size, sent, link_free);
        }
        assert_eq!(p.batch_bytes(128 * KIB), 40_000);
    }
}
