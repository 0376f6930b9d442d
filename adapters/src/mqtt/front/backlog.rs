//! Back-pressure from ingest to the devices, through the front.
//!
//! rumqttd acknowledges a device's message as soon as it is in its log, and
//! its log keeps only the last `buffer` bytes: when ingest falls further
//! behind than that, the oldest acknowledged messages are gone (an
//! `overrun`). Devices connected through the front can be slowed instead:
//! the front counts the bytes of every PUBLISH it relays into rumqttd, the
//! forwarder counts the bytes it takes out of rumqttd's link, and while the
//! difference is over half of `buffer` the front stops reading from its
//! devices. Their TCP windows fill, their publishes wait unacknowledged, and
//! nothing is dropped.
//!
//! Sizes are counted as rumqttd's log counts them (4 + topic + payload).
//! Each connection checks before each read, so the backlog can pass the
//! limit by one read (at most 64 KiB) per busy connection; half of `buffer`
//! leaves the other half for that. A message counted on one side only (one
//! rumqttd refused, or one lost all the same) would leave the difference
//! too high for good; so when a device has waited [`RESYNC`] while the
//! forwarder sat idle on its link, the difference is taken as such a drift
//! and dropped.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;

/// How long a paused device waits before an idle forwarder means the
/// backlog's count has drifted.
pub const RESYNC: Duration = Duration::from_secs(1);

/// The bytes relayed into the embedded broker and not yet taken out.
#[derive(Debug)]
pub struct Backlog {
    relayed: AtomicU64,
    taken: AtomicU64,
    /// The most that may be relayed and not taken before devices wait.
    limit: u64,
    /// The forwarder waits on its link with nothing held.
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
            limit: (buffer / 2).max(1),
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

    /// Bytes relayed and not yet taken.
    pub fn behind(&self) -> u64 {
        self.relayed
            .load(Ordering::Acquire)
            .saturating_sub(self.taken.load(Ordering::Acquire))
    }

    /// The most that may be behind before devices wait.
    pub fn limit(&self) -> u64 {
        self.limit
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

    /// The forwarder has taken what it could: devices waiting for room are
    /// let go if there is some.
    pub fn wake(&self) {
        if self.behind() <= self.limit {
            self.room.notify_waiters();
        }
    }

    /// Whether the forwarder waits on its link with nothing held.
    pub fn set_idle(&self, idle: bool) {
        self.idle.store(idle, Ordering::Release);
    }

    /// Waits until the backlog is at most the limit.
    pub async fn room(&self) {
        loop {
            let notified = self.room.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if self.behind() <= self.limit {
                return;
            }
            let taken = self.taken.load(Ordering::Acquire);
            if tokio::time::timeout(RESYNC, notified).await.is_err()
                && self.idle.load(Ordering::Acquire)
                && self.taken.load(Ordering::Acquire) == taken
            {
                self.drop_drift();
            }
        }
    }

    /// Forgets what is counted as relayed and not taken: the forwarder has
    /// had nothing to take for a while, so the broker holds none of it.
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
    async fn a_device_waits_until_the_forwarder_takes_enough() {
        let b = Arc::new(Backlog::new(1000));
        assert_eq!(b.limit(), 500);
        b.relayed(500);
        b.room().await; // at the limit: no wait
        b.relayed(101);
        let waiter = tokio::spawn({
            let b = b.clone();
            async move { b.room().await }
        });
        // Taken but still over: the waiter stays.
        b.taken(50);
        b.wake();
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        b.taken(51);
        b.wake();
        waiter.await.unwrap();
        assert_eq!(b.behind(), 500);
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
        assert_eq!(b.behind(), 2000);
        // Idle forwarder and no progress for RESYNC: the count drifted.
        b.set_idle(true);
        waiter.await.unwrap();
        assert_eq!(b.behind(), 0);
        b.relayed(10);
        assert_eq!(b.behind(), 10);
    }
}
