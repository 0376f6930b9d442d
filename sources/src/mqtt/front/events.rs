//! What the embedded broker reports about its clients, for metrics.
//!
//! Like the Modbus sources' observer: the gateway implements
//! [`BrokerObserver`] where its metrics are declared. Events are rare
//! (connections, refusals, limits), never one per accepted message.

use super::passwd::LoginError;

/// Receives a broker source's events.
pub trait BrokerObserver: Send + Sync {
    fn event(&self, source: &str, event: BrokerEvent);
}

/// A limit a client ran into.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Limit {
    /// `max_connections`: a client was refused.
    Connections,
    /// `max_topic_length`: a publish was dropped.
    TopicLength,
    /// `max_payload`: a payload became an `oversize` dead letter, or (past
    /// twice the limit) its connection was closed.
    Payload,
    /// `max_fields`: a payload became a `too_many_fields` dead letter.
    Fields,
    /// A device through the front waited before more of its packets were
    /// read: its publishes waiting for their commit filled its window.
    Backlog,
    /// The front's accept failed for want of a file descriptor (`EMFILE`,
    /// `ENFILE`): it waits with a back-off, the device waits in the backlog.
    Descriptors,
    /// The front's accept failed otherwise.
    AcceptError,
    /// A SUBSCRIBE past the front's most distinct filters was refused.
    Subscriptions,
    /// A socket was closed at once: too many clients (or too many from its
    /// address) were logging in.
    PreLogin,
}

impl Limit {
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Connections => "connections",
            Limit::TopicLength => "topic_length",
            Limit::Payload => "payload",
            Limit::Fields => "fields",
            Limit::Backlog => "backlog",
            Limit::Descriptors => "descriptors",
            Limit::AcceptError => "accept_error",
            Limit::Subscriptions => "subscriptions",
            Limit::PreLogin => "pre_login",
        }
    }
}

/// What the ACL refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Denied {
    /// A publish outside the client's own topics (dropped).
    Publish,
    /// A subscription (refused in the SUBACK).
    Subscribe,
    /// A CONNECT whose will topic is outside the client's own topics.
    Will,
}

impl Denied {
    pub fn as_str(self) -> &'static str {
        match self {
            Denied::Publish => "publish",
            Denied::Subscribe => "subscribe",
            Denied::Will => "will",
        }
    }
}

/// Something that happened at the embedded broker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BrokerEvent {
    /// A client was accepted (CONNACK 0).
    Connected,
    /// An accepted client's connection ended.
    Disconnected,
    /// A CONNECT was refused for its credentials (CONNACK 4 or 5).
    LoginRefused(LoginError),
    /// A TLS handshake failed (no or a bad client certificate, a client
    /// speaking plain MQTT to the TLS port, ...).
    TlsFailed,
    /// The ACL refused something.
    Denied(Denied),
    /// A limit was hit.
    Limit(Limit),
}

/// An observer that ignores everything.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoBrokerObserver;

impl BrokerObserver for NoBrokerObserver {
    fn event(&self, _source: &str, _event: BrokerEvent) {}
}
