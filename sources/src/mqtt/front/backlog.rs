//! Back-pressure from ingest to the devices, through the front.
//!
//! rumqttd acknowledges a device's message as soon as it is in its log, and
//! its log keeps only the last `buffer` bytes: when ingest falls further
//! behind than that, the oldest acknowledged messages are gone (an
//! `overrun`). And what Ferry has taken from the log but not committed yet
//! waits in memory (in ingest's queue while the store is slow or full). So
//! the front counts the bytes of every PUBLISH it relays into rumqttd, the
//! forwarder counts the bytes it takes out of rumqttd's link and, once
//! ingest has answered for them (committed, or refused), the bytes it is
//! done with; and the front stops reading from its devices while more than
//! half of `buffer` waits in rumqttd, or more than `buffer` is relayed and
//! not yet answered for. Devices' TCP windows fill, their publishes wait
//! unacknowledged, nothing is dropped, and what was acknowledged and not
//! yet stored (what a power cut can take) stays within `buffer`.
//!
//! Sizes are counted as rumqttd's log counts them (4 + topic + payload).
//! Each connection checks before each read, so the backlog can pass a
//! limit by one read (at most 64 KiB) per busy connection; the other half
//! of `buffer` leaves room for that. A message counted on one side only
//! (one rumqttd refused, or one lost all the same) would leave the count
//! too high for good; so when a device has waited [`RESYNC`] while the
//! forwarder sat idle on its link with nothing waiting in ingest, the
//! difference is taken as such a drift and dropped.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;

/// How long a paused device waits before an idle forwarder means the
/// backlog's count has drifted.
pub const RESYNC: Duration = Duration::from_secs(1);

/// The bytes relayed into the embedded broker, taken out of it, and done
/// with (answered for by ingest).
#[derive(Debug)]
pub struct Backlog {
    relayed: AtomicU64,
    taken: AtomicU64,
    done: AtomicU64,
    /// The most that may wait in the broker before devices wait.
    broker_limit: u64,
    /// The most that may be relayed and not yet done with.
    limit: u64,
    /// The forwarder waits on its link.
    idle: AtomicBool,
    room: Notify,
    resync: Mutex<()>,
}

impl Backlog {
    /// A backlog for a broker whose log keeps `buffer` bytes.
    pub fn new(buffer: u64) -> Backlog {
        Backlog {
            relayed: AtomicU64::new(0),
            taken: AtomicU64::new(0),
            done: AtomicU64::new(0),
            broker_limit: (buffer / 2).max(1),
            limit: buffer.max(1),
            idle: AtomicBool::new(false),
            room: Notify::new(),
            resync: Mutex::new(()),
        }
    }

    /// The size of a message in rumqttd's log, or `None` for one that is
    /// not counted: `$` topics, which Ferry's `#` subscription does not
    /// receive.
    pub fn size(topic: &[u8], payload_len: usize) -> Option<u64> {
        (topic.first() != Some(&b'$')).then(|| 4 + topic.len() as u64 + payload_len as u64)
    }

    fn load(c: &AtomicU64) -> u64 {
        c.load(Ordering::Acquire)
    }

    /// Bytes relayed and not yet taken out of the broker.
    pub fn in_broker(&self) -> u64 {
        Self::load(&self.relayed).saturating_sub(Self::load(&self.taken))
    }

    /// Bytes relayed and not yet done with.
    pub fn behind(&self) -> u64 {
        Self::load(&self.relayed).saturating_sub(Self::load(&self.done))
    }

    /// Whether devices should wait.
    pub fn over(&self) -> bool {
        self.in_broker() > self.broker_limit || self.behind() > self.limit
    }

    /// Whether more than half of what devices may have outstanding waits
    /// for ingest: its commit should not wait for the interval.
    pub fn pressing(&self) -> bool {
        self.behind() > self.limit / 2
    }

    /// The front relayed `bytes` into the broker.
    pub fn relayed(&self, bytes: u64) {
        if bytes > 0 {
            self.relayed.fetch_add(bytes, Ordering::AcqRel);
        }
    }

    /// The forwarder took `bytes` from the broker.
    pub fn taken(&self, bytes: u64) {
        if bytes > 0 {
            self.taken.fetch_add(bytes, Ordering::AcqRel);
        }
    }

    /// Ingest answered for `bytes` the forwarder took: they no longer wait
    /// in memory, and devices waiting for that room are let go.
    pub fn done(&self, bytes: u64) {
        if bytes > 0 {
            self.done.fetch_add(bytes, Ordering::AcqRel);
            self.wake();
        }
    }

    /// Something moved: devices waiting for room are let go if there is
    /// some.
    pub fn wake(&self) {
        if !self.over() {
            self.room.notify_waiters();
        }
    }

    /// Whether the forwarder waits on its link.
    pub fn set_idle(&self, idle: bool) {
        self.idle.store(idle, Ordering::Release);
    }

    /// Waits until devices may send again.
    pub async fn room(&self) {
        loop {
            let notified = self.room.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if !self.over() {
                return;
            }
            let done = Self::load(&self.done);
            if tokio::time::timeout(RESYNC, notified).await.is_err()
                && self.idle.load(Ordering::Acquire)
                && Self::load(&self.done) == done
                && Self::load(&self.taken) == done
            {
                self.drop_drift();
            }
        }
    }

    /// Forgets what is counted as relayed and not done with: the forwarder
    /// has had nothing to take for a while and ingest holds nothing of
    /// it, so none of it is anywhere.
    fn drop_drift(&self) {
        let _one = self.resync.lock().unwrap_or_else(|e| e.into_inner());
        let drift = self.behind();
        if drift > 0 {
            self.relayed.fetch_sub(drift, Ordering::AcqRel);
            tracing::debug!(
                drift,
                "device front: bytes counted as relayed never reached Ferry; forgotten"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn sizes_are_counted_as_rumqttd_counts_them() {
        assert_eq!(
            Backlog::size(b"sensors/a/telemetry", 100),
            Some(4 + 19 + 100)
        );
        assert_eq!(Backlog::size(b"$SYS/broker", 10), None);
        assert_eq!(Backlog::size(b"", 10), Some(14));
    }

    #[tokio::test]
    async fn a_device_waits_until_the_broker_is_drained_and_ingest_is_done() {
        let b = Arc::new(Backlog::new(1000));
        b.relayed(500);
        assert!(!b.over(), "half of the buffer in the broker: no wait");
        b.relayed(101);
        assert!(b.over());
        let waiter = tokio::spawn({
            let b = b.clone();
            async move { b.room().await }
        });
        // Taken out of the broker, but ingest still holds it all: the
        // broker's half is fine, the whole is not over `buffer` either.
        b.taken(601);
        b.wake();
        waiter.await.unwrap();
        assert_eq!((b.in_broker(), b.behind()), (0, 601));
        // More relayed while ingest holds the first: over the whole limit.
        b.relayed(400);
        b.taken(400);
        assert!(b.over(), "1,001 bytes not done with");
        let waiter = tokio::spawn({
            let b = b.clone();
            async move { b.room().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        b.done(601);
        waiter.await.unwrap();
        assert_eq!(b.behind(), 400);
    }

    #[tokio::test(start_paused = true)]
    async fn a_count_that_drifted_is_dropped_once_the_forwarder_is_idle() {
        let b = Arc::new(Backlog::new(1000));
        b.relayed(2000);
        // Busy forwarder (ingest full): the device keeps waiting.
        let waiter = tokio::spawn({
            let b = b.clone();
            async move { b.room().await }
        });
        tokio::time::sleep(RESYNC * 3).await;
        assert!(!waiter.is_finished());
        // Idle on its link, but ingest still holds what it took: no drift.
        b.taken(300);
        b.set_idle(true);
        tokio::time::sleep(RESYNC * 3).await;
        assert!(!waiter.is_finished());
        assert_eq!(b.behind(), 2000);
        // Ingest answered for it, and nothing moves for RESYNC: drift.
        b.done(300);
        waiter.await.unwrap();
        assert_eq!(b.behind(), 0);
        b.relayed(10);
        assert_eq!(b.behind(), 10);
    }
}
