//! What the front does with a device's publish: decoded (a record, or a
//! dead letter with its reason) and handed to ingest, whose commit the
//! device's acknowledgement waits for.

use std::sync::Arc;

use ferry_core::record::DeadLetter;
use ferry_core::sink::{Item, Sink};

use crate::mqtt::decode::MessageDecoder;
use crate::mqtt::log::DeadLetterLog;
use crate::mqtt::payload::Reject;

use super::events::{BrokerEvent, BrokerObserver, Limit};

/// Ingest, as the front's connections share it.
pub struct Intake {
    pub decoder: MessageDecoder,
    pub sink: Sink,
    dead: DeadLetterLog,
    observer: Arc<dyn BrokerObserver>,
}

impl Intake {
    pub fn new(decoder: MessageDecoder, sink: Sink, observer: Arc<dyn BrokerObserver>) -> Intake {
        Intake {
            decoder,
            sink,
            dead: DeadLetterLog::default(),
            observer,
        }
    }

    /// The item a publish becomes; a dead letter is logged and, for a
    /// limit, counted.
    pub fn item(&self, topic: &[u8], payload: &[u8]) -> Item {
        let topic = String::from_utf8_lossy(topic);
        let item = self.decoder.decode(&topic, payload);
        if let Item::Dead(d) = &item {
            observe_dead(&self.dead, &*self.observer, d);
        }
        item
    }
}

/// Logs a dead letter and counts the limit it stands for, if any.
pub(crate) fn observe_dead(log: &DeadLetterLog, observer: &dyn BrokerObserver, d: &DeadLetter) {
    log.log(d);
    let limit = match d.kind {
        Reject::OVERSIZE => Some(Limit::Payload),
        Reject::TOO_MANY_FIELDS => Some(Limit::Fields),
        Reject::TOPIC_TOO_LONG => Some(Limit::TopicLength),
        _ => None,
    };
    if let Some(limit) = limit {
        observer.event(&d.source, BrokerEvent::Limit(limit));
    }
}
