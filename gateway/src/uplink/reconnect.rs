//! When the uplink dials again after a connection ended: the backoff of the
//! expensive connects (TCP + TLS + MQTT CONNECT), cut short by cheap
//! reachability probes of the endpoint (a plain TCP connect, closed at once).
//!
//! No I/O here: the run loop asks [`Reconnect::next`] what to do, carries it
//! out, and reports what happened ([`Reconnect::probed`],
//! [`Reconnect::failed`]), so the schedule is tested with plain values.
//!
//! The rules:
//! - After a failure the next connect is due after a capped exponential
//!   delay with full jitter ([`Backoff`]); a connection that had reached
//!   CONNACK starts the backoff again from `reconnect_min`.
//! - Two connects start at least [`MIN_CONNECT_GAP`] apart (IoT Core takes
//!   one CONNECT per second per client id), whatever the backoff draws.
//! - With probes on, the endpoint is probed at once after a failure and then
//!   every `probe_interval` (each interval drawn in its upper half, so a
//!   fleet's probes do not line up) until one answers. A connect starts only
//!   when the latest probe since the failure answered: no TLS handshake is
//!   spent on a link that does not carry a TCP connect, and none hangs in a
//!   blackhole.
//! - A probe that answers after a probe failed (the link came back) resets
//!   the backoff: the connect is due within a quarter of `probe_interval`
//!   (jittered, again for the fleet), and at least [`MIN_CONNECT_GAP`] after
//!   the last one. So the link's return is noticed within `probe_interval`
//!   however long the outage and however far the backoff had grown.
//! - A probe that answers without one failing before it (a bad
//!   certificate, a broker that refuses the client) resets nothing: the
//!   backoff grows as without probes, with one probe per connect.

use std::time::Duration;

use ferry_core::backoff::Backoff;
use tokio::time::Instant;

/// The least time between the starts of two connects of one uplink: IoT
/// Core accepts one CONNECT per second per client id.
pub const MIN_CONNECT_GAP: Duration = Duration::from_secs(1);

/// What the run loop should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Dial the broker (the attempt is counted as started now).
    Connect,
    /// Start a probe now; report its result with [`Reconnect::probed`].
    Probe,
    /// Nothing until this time (or until a probe's result comes in).
    WaitUntil(Instant),
}

/// What the probes since the last failure say about the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    /// No probe has answered or failed since the last failure.
    Unknown,
    /// The latest probe answered.
    Up,
    /// The latest probe failed (refused, unreachable, timed out).
    Down,
}

/// The reconnect schedule of one uplink; see the module docs.
#[derive(Debug, Clone)]
pub struct Reconnect {
    backoff: Backoff,
    /// `None`: no probes, the backoff alone decides.
    probe_interval: Option<Duration>,
    last_attempt: Option<Instant>,
    /// The earliest the next connect may start.
    due: Instant,
    next_probe: Instant,
    link: Link,
    /// When the probe whose result set `link` started: results of probes
    /// started earlier are stale and ignored.
    link_probe: Option<Instant>,
}

impl Reconnect {
    /// A schedule whose first connect is due at `now` (after a probe, with
    /// probes on). `probe_interval` zero turns probes off.
    pub fn new(
        reconnect_min: Duration,
        reconnect_max: Duration,
        probe_interval: Duration,
        now: Instant,
    ) -> Reconnect {
        Reconnect {
            backoff: Backoff::new(reconnect_min, reconnect_max),
            probe_interval: (!probe_interval.is_zero()).then_some(probe_interval),
            last_attempt: None,
            due: now,
            next_probe: now,
            link: Link::Unknown,
            link_probe: None,
        }
    }

    /// Whether probes are on.
    pub fn probing(&self) -> bool {
        self.probe_interval.is_some()
    }

    /// What to do at `now`; `rand` in `[0, 1)` jitters the next probe.
    pub fn next(&mut self, now: Instant, rand: f64) -> Action {
        let may_connect = self.probe_interval.is_none() || self.link == Link::Up;
        if may_connect && now >= self.due {
            self.last_attempt = Some(now);
            return Action::Connect;
        }
        let Some(interval) = self.probe_interval else {
            return Action::WaitUntil(self.due);
        };
        if may_connect {
            // The endpoint answered since the failure: nothing more to learn
            // from probing until the connect (a rejected certificate waits
            // out its backoff with one probe, not one a second).
            return Action::WaitUntil(self.due);
        }
        if now >= self.next_probe {
            self.next_probe = now + interval.mul_f64(0.5 + 0.5 * rand.clamp(0.0, 1.0));
            return Action::Probe;
        }
        Action::WaitUntil(self.next_probe)
    }

    /// A probe started at `started` has answered (`ok`) or failed, at `now`;
    /// `rand` in `[0, 1)` jitters the connect a returning link allows.
    /// Returns whether the result was taken (`false`: a newer probe's result
    /// is already in, or probes are off).
    pub fn probed(&mut self, started: Instant, now: Instant, ok: bool, rand: f64) -> bool {
        let Some(interval) = self.probe_interval else {
            return false;
        };
        if self.link_probe.is_some_and(|newer| started < newer) {
            return false;
        }
        let came_back = ok && self.link == Link::Down;
        self.link = if ok { Link::Up } else { Link::Down };
        self.link_probe = Some(started);
        if came_back {
            self.backoff.reset();
            let soon = now + (interval / 4).mul_f64(rand.clamp(0.0, 1.0));
            self.due = self.after_gap(soon);
        }
        true
    }

    /// The connect last started has failed, or its connection ended, at
    /// `now`: `was_connected` if it had reached CONNACK. `rand` in `[0, 1)`
    /// draws the backoff. Returns how long until the next connect is due by
    /// the backoff (sooner if a probe sees the link come back).
    pub fn failed(&mut self, now: Instant, was_connected: bool, rand: f64) -> Duration {
        if was_connected {
            self.backoff.reset();
        }
        let delay = self.backoff.next_with(rand);
        self.due = self.after_gap(now + delay);
        self.link = Link::Unknown;
        self.link_probe = None;
        self.next_probe = now;
        self.due - now
    }

    /// `at`, or the earliest time [`MIN_CONNECT_GAP`] after the last connect.
    fn after_gap(&self, at: Instant) -> Instant {
        match self.last_attempt {
            Some(last) => at.max(last + MIN_CONNECT_GAP),
            None => at,
        }
    }
}

#[cfg(test)]
mod tests;
