//! One MQTT message → one [`Item`]: a record, or a dead letter with the reason.

use std::sync::Arc;

use ferry_core::record::{now_millis, DeadLetter, Record};
use ferry_core::sink::Item;

use super::payload::{check_device, decode_payload, PayloadOptions, Reject};
use super::topic::TopicTemplate;

/// Turns a source's messages into items: matches the topic to a template,
/// decodes the payload, and picks the device and time.
///
/// The device comes from the payload's `device_field` when configured and
/// present, otherwise from the topic's `{device}` level. The time comes from
/// `timestamp_field` when configured and present, otherwise it is the time of
/// receipt.
#[derive(Debug, Clone)]
pub struct MessageDecoder {
    source: Arc<str>,
    templates: Vec<TopicTemplate>,
    options: PayloadOptions,
}

impl MessageDecoder {
    pub fn new(source: Arc<str>, templates: Vec<TopicTemplate>, options: PayloadOptions) -> Self {
        MessageDecoder {
            source,
            templates,
            options,
        }
    }

    /// The source's name.
    pub fn source(&self) -> &Arc<str> {
        &self.source
    }

    /// The distinct MQTT subscription filters of the templates, in order.
    pub fn filters(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::with_capacity(self.templates.len());
        for t in &self.templates {
            let f = t.filter();
            if !out.contains(&f) {
                out.push(f);
            }
        }
        out
    }

    /// Decodes one message.
    pub fn decode(&self, topic: &str, payload: &[u8]) -> Item {
        match self.try_decode(topic, payload) {
            Ok(record) => Item::Record(record),
            Err(r) => Item::Dead(DeadLetter::new(
                self.source.clone(),
                topic,
                r.kind,
                r.reason,
                payload,
            )),
        }
    }

    /// Decodes one message, or says why it cannot be.
    pub fn try_decode(&self, topic: &str, payload: &[u8]) -> Result<Record, Reject> {
        let matched = self
            .templates
            .iter()
            .find_map(|t| t.matches(topic))
            .ok_or_else(|| {
                Reject::new(
                    Reject::UNKNOWN_TOPIC,
                    format!("topic `{topic}` matches none of the source's topic templates"),
                )
            })?;
        let decoded = decode_payload(payload, &self.options)?;
        let device = match (decoded.device, matched.device) {
            (Some(d), _) => d,
            (None, Some(level)) => {
                check_device(level).map_err(|why| {
                    Reject::new(
                        Reject::BAD_DEVICE,
                        format!("topic `{topic}`: the `{{device}}` level {why}"),
                    )
                })?;
                level.into()
            }
            (None, None) => {
                let field = self.options.device_field.as_deref().unwrap_or_default();
                return Err(Reject::new(
                    Reject::BAD_DEVICE,
                    format!("device field `{field}` is missing and the topic names no device"),
                ));
            }
        };
        Ok(Record {
            ts: decoded.ts.unwrap_or_else(now_millis),
            source: self.source.clone(),
            device,
            fields: decoded.fields,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::record::Value;

    fn decoder(topics: &[&str], device_field: Option<&str>) -> MessageDecoder {
        MessageDecoder::new(
            "local".into(),
            topics
                .iter()
                .map(|t| TopicTemplate::parse(t).unwrap())
                .collect(),
            PayloadOptions {
                device_field: device_field.map(Into::into),
                timestamp_field: Some("ts".into()),
                ..PayloadOptions::default()
            },
        )
    }

    #[test]
    fn record_from_topic_device() {
        let d = decoder(&["sensors/{device}/telemetry"], None);
        let r = d
            .try_decode(
                "sensors/pump-1/telemetry",
                br#"{"ts": 1700000000, "v": 1.5}"#,
            )
            .unwrap();
        assert_eq!(
            r,
            Record {
                ts: 1_700_000_000_000,
                source: "local".into(),
                device: "pump-1".into(),
                fields: vec![("v".into(), Value::Float(1.5))],
            }
        );
    }

    #[test]
    fn payload_device_wins_and_topic_is_the_fallback() {
        let d = decoder(&["sensors/{device}/telemetry", "bulk/#"], Some("device_id"));
        let r = d
            .try_decode("sensors/gw/telemetry", br#"{"device_id": 7, "v": 1}"#)
            .unwrap();
        assert_eq!(&*r.device, "7");
        let r = d
            .try_decode("sensors/gw/telemetry", br#"{"v": 1}"#)
            .unwrap();
        assert_eq!(&*r.device, "gw");
        assert_eq!(
            d.try_decode("bulk/x", br#"{"v": 1}"#).unwrap_err(),
            Reject::new(
                Reject::BAD_DEVICE,
                "device field `device_id` is missing and the topic names no device"
            )
        );
    }

    #[test]
    fn dead_letters() {
        let d = decoder(&["sensors/{device}/telemetry"], None);
        match d.decode("other/x", b"{}") {
            Item::Dead(dl) => {
                assert_eq!(dl.kind, Reject::UNKNOWN_TOPIC);
                assert_eq!(
                    &*dl.reason,
                    "topic `other/x` matches none of the source's topic templates"
                );
                assert_eq!(&*dl.origin, "other/x");
                assert_eq!(&*dl.source, "local");
                assert_eq!(dl.payload, b"{}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            d.try_decode("sensors//telemetry", br#"{"v": 1}"#)
                .unwrap_err(),
            Reject::new(
                Reject::BAD_DEVICE,
                "topic `sensors//telemetry`: the `{device}` level is empty"
            )
        );
        assert_eq!(
            d.try_decode("sensors/x/telemetry", b"nope")
                .unwrap_err()
                .kind,
            Reject::NOT_JSON
        );
    }

    #[test]
    fn filters_are_distinct() {
        let d = decoder(&["a/{device}", "b/{device}/#", "a/+"], Some("id"));
        assert_eq!(d.filters(), ["a/+", "b/+/#"]);
    }
}
