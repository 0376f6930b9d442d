//! The control plane of an uplink's connection: what else than batches one
//! MQTT connection carries (the device shadow today; jobs and commands
//! later). A [`ControlLink`] given to an uplink makes its connection
//!
//! - subscribe to the link's topic filters on every connect (one SUBSCRIBE,
//!   QoS 1; IoT Core takes at most 8 filters in one and 50 per connection),
//!   hold batches until the SUBACK is in (at most [`SUBACK_WAIT`]), then
//!   publish the link's on-subscribed messages first (a request for state
//!   that changed while offline, which behind a backlog on a slow link would
//!   wait for all of it) and say so ([`Inbound::Subscribed`]);
//! - hand what arrives on them to the link's owner through a bounded channel
//!   (a publish larger than the link's limit, or one that finds the channel
//!   full, is dropped and counted: a flood never queues in memory);
//! - send the link's queued control publishes (QoS 1) before any batch, and
//!   during a drain too, so a control message is never stuck behind a
//!   backlog; they take their share of the uplink's rate limits, so the two
//!   together stay within the connection's limits (at most
//!   [`MAX_CONTROL_INFLIGHT`] unacknowledged); batch acknowledgements are
//!   counted for the owner ([`ControlLink::batch_acks`]).
//!
//! [`Track`] tells the acknowledgements of control publishes from those of
//! batches (the MQTT client reports packet ids in the order it was given the
//! publishes).

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, Notify};

/// The most control publishes queued; a newer one replaces the oldest.
pub const MAX_QUEUED: usize = 16;

/// Places of the inbound channel that publishes never take.
const RESERVED: usize = 4;

/// Control publishes unacknowledged at once, at most: within the MQTT
/// client's request channel (it has 8 places beyond the batches' window)
/// and well under the shadow service's 10 requests in flight per
/// connection.
pub const MAX_CONTROL_INFLIGHT: usize = 4;

/// What the connection tells the link's owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// Connected and subscribed (the SUBACK arrived); `refused` filters the
    /// broker would not grant (IoT Core refuses what the policy does not allow).
    Subscribed { refused: usize },
    /// A publish on one of the link's filters.
    Publish { topic: String, payload: Vec<u8> },
    /// A control publish was acknowledged (PUBACK).
    Acked,
    /// The connection ended.
    Disconnected,
}

/// A control message to publish (QoS 1, not retained).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outbound {
    pub topic: String,
    pub payload: Vec<u8>,
}

/// The link between an uplink's connection and the control plane's owner.
#[derive(Clone)]
pub struct ControlLink {
    inner: Arc<Inner>,
}

struct Inner {
    filters: Vec<String>,
    /// Published as soon as each SUBACK is in, before any batch.
    on_subscribed: Vec<Outbound>,
    max_inbound_bytes: usize,
    inbound: mpsc::Sender<Inbound>,
    outbound: Mutex<VecDeque<Outbound>>,
    wake: Notify,
    dropped_large: AtomicU64,
    dropped_full: AtomicU64,
    /// Batch PUBACKs on the connection: a draining link that acknowledges
    /// batches is alive even while a control publish waits behind them.
    batch_acks: AtomicU64,
}

impl ControlLink {
    /// A link subscribing to `filters`, taking publishes of at most
    /// `max_inbound_bytes`; the receiver gets what arrives, up to
    /// `capacity` publishes queued.
    pub fn new(
        filters: Vec<String>,
        max_inbound_bytes: usize,
        capacity: usize,
    ) -> (ControlLink, mpsc::Receiver<Inbound>) {
        ControlLink::with_on_subscribed(filters, Vec::new(), max_inbound_bytes, capacity)
    }

    /// Like [`ControlLink::new`], with messages published on every connect
    /// as soon as the SUBACK is in, ahead of every batch (a request for
    /// state that changed while offline: behind a backlog on a slow link
    /// it would wait for the whole backlog).
    pub fn with_on_subscribed(
        filters: Vec<String>,
        on_subscribed: Vec<Outbound>,
        max_inbound_bytes: usize,
        capacity: usize,
    ) -> (ControlLink, mpsc::Receiver<Inbound>) {
        let (tx, rx) = mpsc::channel(capacity + RESERVED);
        let link = ControlLink {
            inner: Arc::new(Inner {
                filters,
                on_subscribed,
                max_inbound_bytes,
                inbound: tx,
                outbound: Mutex::new(VecDeque::new()),
                wake: Notify::new(),
                dropped_large: AtomicU64::new(0),
                dropped_full: AtomicU64::new(0),
                batch_acks: AtomicU64::new(0),
            }),
        };
        (link, rx)
    }

    /// The topic filters subscribed on every connect.
    pub fn filters(&self) -> &[String] {
        &self.inner.filters
    }

    /// Queues a control publish and wakes the connection. Returns whether an
    /// older one had to be dropped to make room.
    pub fn send(&self, message: Outbound) -> bool {
        let mut q = self
            .inner
            .outbound
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let dropped = q.len() >= MAX_QUEUED;
        if dropped {
            q.pop_front();
        }
        q.push_back(message);
        drop(q);
        self.inner.wake.notify_one();
        dropped
    }

    /// The next control publish, if any.
    pub(crate) fn next(&self) -> Option<Outbound> {
        let mut q = self
            .inner
            .outbound
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        q.pop_front()
    }

    /// Puts back a publish the client could not take yet.
    pub(crate) fn put_back(&self, message: Outbound) {
        let mut q = self
            .inner
            .outbound
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        q.push_front(message);
    }

    /// Resolves when a control publish is queued.
    pub(crate) async fn queued(&self) {
        self.inner.wake.notified().await
    }

    /// Hands an event to the owner, never waiting: a full channel drops it.
    pub(crate) fn tell(&self, event: Inbound) {
        if let Inbound::Publish { payload, .. } = &event {
            if payload.len() > self.inner.max_inbound_bytes {
                self.inner.dropped_large.fetch_add(1, Ordering::Relaxed);
                return;
            }
            // The last places are kept for what the connection itself says
            // (subscribed, acknowledged, disconnected): a flood of publishes
            // never hides those.
            if self.inner.inbound.capacity() <= RESERVED {
                self.inner.dropped_full.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        if self.inner.inbound.try_send(event).is_err() {
            self.inner.dropped_full.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A batch was acknowledged on the connection.
    pub(crate) fn count_ack(&self) {
        self.inner.batch_acks.fetch_add(1, Ordering::Relaxed);
    }

    /// Batch PUBACKs so far, over every connection.
    pub fn batch_acks(&self) -> u64 {
        self.inner.batch_acks.load(Ordering::Relaxed)
    }

    /// Publishes dropped: (larger than the limit, the channel full).
    pub fn dropped(&self) -> (u64, u64) {
        (
            self.inner.dropped_large.load(Ordering::Relaxed),
            self.inner.dropped_full.load(Ordering::Relaxed),
        )
    }
}

/// Subscribes to the link's filters (one SUBSCRIBE, QoS 1).
pub(crate) fn subscribe(
    client: &rumqttc::AsyncClient,
    link: &ControlLink,
) -> Result<(), rumqttc::ClientError> {
    if link.filters().is_empty() {
        return Ok(());
    }
    let filters = link
        .filters()
        .iter()
        .map(|f| rumqttc::SubscribeFilter::new(f.clone(), rumqttc::QoS::AtLeastOnce));
    client.try_subscribe_many(filters)
}

/// How long batches wait for the SUBACK after a connect, at most.
pub const SUBACK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// A SUBACK arrived: queues the link's on-subscribed messages first, and
/// says so to the link's owner.
pub(crate) fn on_suback(link: &ControlLink, ack: &rumqttc::SubAck) {
    {
        let mut q = link
            .inner
            .outbound
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for m in link.inner.on_subscribed.iter().rev() {
            q.push_front(m.clone());
        }
    }
    link.tell(subscribed(ack));
}

/// What a SUBACK says to the link's owner.
fn subscribed(ack: &rumqttc::SubAck) -> Inbound {
    let refused = ack
        .return_codes
        .iter()
        .filter(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
        .count();
    Inbound::Subscribed { refused }
}

/// Publishes the queued control messages (at most [`MAX_CONTROL_INFLIGHT`]
/// unacknowledged), ahead of batches, taking their
/// share of the rate limits (they go even when the limits are spent: there
/// are few, and a batch then waits for them). A message the client cannot
/// take now is put back for the next turn.
pub(crate) fn send_queued(
    client: &rumqttc::AsyncClient,
    link: &ControlLink,
    track: &mut Track,
    limits: &mut super::limiter::Limits,
    now: tokio::time::Instant,
) {
    while track.control_outstanding() < MAX_CONTROL_INFLIGHT {
        let Some(m) = link.next() else { return };
        let len = m.payload.len();
        match client.try_publish(
            m.topic.clone(),
            rumqttc::QoS::AtLeastOnce,
            false,
            m.payload.clone(),
        ) {
            Ok(()) => {
                track.sent(true);
                limits.take(len, now);
            }
            Err(_) => {
                link.put_back(m);
                return;
            }
        }
    }
}

/// Which packet ids belong to control publishes on one connection.
#[derive(Debug, Default)]
pub struct Track {
    /// Publishes handed to the client, oldest first: `true` for control.
    order: VecDeque<bool>,
    /// Control publishes in `order`.
    unassigned_control: usize,
    control: HashSet<u16>,
}

impl Track {
    /// A publish was handed to the MQTT client.
    pub fn sent(&mut self, control: bool) {
        self.order.push_back(control);
        self.unassigned_control += usize::from(control);
    }

    /// The client sent the oldest publish with `pkid`; true if it was a
    /// control publish (its acknowledgement is then the link's, not the
    /// batches').
    pub fn assigned(&mut self, pkid: u16) -> bool {
        let control = self.order.pop_front().unwrap_or(false);
        if control {
            self.unassigned_control -= 1;
            self.control.insert(pkid);
        }
        control
    }

    /// `pkid` was acknowledged; true if it was a control publish.
    pub fn acked(&mut self, pkid: u16) -> bool {
        self.control.remove(&pkid)
    }

    /// Control publishes handed to the client and not acknowledged yet.
    pub fn control_outstanding(&self) -> usize {
        self.control.len() + self.unassigned_control
    }

    /// A new connection: nothing is in flight.
    pub fn reset(&mut self) {
        self.order.clear();
        self.unassigned_control = 0;
        self.control.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_acks_are_told_from_batch_acks_by_packet_id() {
        let mut t = Track::default();
        t.sent(false);
        t.sent(true);
        t.sent(false);
        assert!(!t.assigned(1));
        assert!(t.assigned(2));
        assert!(!t.assigned(3));
        assert!(!t.acked(1));
        assert!(t.acked(2));
        assert!(!t.acked(2), "acknowledged once");
        assert!(!t.acked(3));
        assert_eq!(t.control_outstanding(), 0);
        t.sent(true);
        t.sent(false);
        assert_eq!(t.control_outstanding(), 1);
        assert!(t.assigned(4));
        assert_eq!(t.control_outstanding(), 1);
        t.reset();
        assert_eq!(t.control_outstanding(), 0);
    }

    #[tokio::test]
    async fn oversized_and_flooding_publishes_are_dropped_and_counted() {
        let (link, mut rx) = ControlLink::new(vec!["t".into()], 4, 1);
        let publish = |n: usize| Inbound::Publish {
            topic: "t".into(),
            payload: vec![0; n],
        };
        link.tell(publish(5));
        link.tell(publish(4));
        link.tell(publish(1));
        assert_eq!(link.dropped(), (1, 1));
        // What the connection says still gets through.
        link.tell(Inbound::Subscribed { refused: 0 });
        assert_eq!(rx.recv().await, Some(publish(4)));
        assert_eq!(rx.recv().await, Some(Inbound::Subscribed { refused: 0 }));
    }

    #[test]
    fn the_queue_keeps_the_newest() {
        let (link, _rx) = ControlLink::new(vec![], 4, 1);
        for i in 0..=MAX_QUEUED {
            let dropped = link.send(Outbound {
                topic: i.to_string(),
                payload: vec![],
            });
            assert_eq!(dropped, i == MAX_QUEUED);
        }
        assert_eq!(link.next().map(|o| o.topic), Some("1".to_owned()));
    }
}
