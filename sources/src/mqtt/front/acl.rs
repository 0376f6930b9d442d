//! Which topics a client may publish to.

use crate::mqtt::{Acl, TopicTemplate};

/// The topic rules of one broker source.
#[derive(Debug)]
pub struct TopicPolicy {
    pub acl: Acl,
    pub templates: Vec<TopicTemplate>,
    pub max_topic_length: usize,
}

/// Why a topic was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicRefusal {
    TooLong,
    NotOwn,
}

impl TopicPolicy {
    /// The name the ACL compares a client's topics with: `None` when the
    /// ACL is off.
    pub fn identity<'c>(&self, client_id: &'c str, username: Option<&'c str>) -> Option<&'c str> {
        match self.acl {
            Acl::None => None,
            Acl::Username => Some(username.unwrap_or("")),
            Acl::ClientId => Some(client_id),
        }
    }

    /// Checks a topic published by the client named `identity`: the first
    /// template that matches it (as the decoder picks it) must have
    /// `identity` as its `{device}` level.
    pub fn check(&self, topic: &[u8], identity: Option<&str>) -> Result<(), TopicRefusal> {
        if topic.len() > self.max_topic_length {
            return Err(TopicRefusal::TooLong);
        }
        let Some(identity) = identity else {
            return Ok(());
        };
        if identity.is_empty() {
            return Err(TopicRefusal::NotOwn);
        }
        let topic = std::str::from_utf8(topic).map_err(|_| TopicRefusal::NotOwn)?;
        let own = self
            .templates
            .iter()
            .find_map(|t| t.matches(topic))
            .is_some_and(|m| m.device == Some(identity));
        if own {
            Ok(())
        } else {
            Err(TopicRefusal::NotOwn)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(acl: Acl) -> TopicPolicy {
        TopicPolicy {
            acl,
            templates: ["sensors/{device}/telemetry", "plant/+/{device}/#"]
                .iter()
                .map(|t| TopicTemplate::parse(t).unwrap())
                .collect(),
            max_topic_length: 40,
        }
    }

    #[test]
    fn own_topics_only() {
        let p = policy(Acl::Username);
        let me = p.identity("client-9", Some("dev-1"));
        assert_eq!(me, Some("dev-1"));
        assert_eq!(p.check(b"sensors/dev-1/telemetry", me), Ok(()));
        assert_eq!(p.check(b"plant/hall/dev-1/a/b", me), Ok(()));
        assert_eq!(
            p.check(b"sensors/dev-2/telemetry", me),
            Err(TopicRefusal::NotOwn)
        );
        assert_eq!(p.check(b"sensors/dev-1", me), Err(TopicRefusal::NotOwn));
        assert_eq!(p.check(b"elsewhere", me), Err(TopicRefusal::NotOwn));
        assert_eq!(
            p.check(b"sensors/dev-1/telemetry/and/much/more/xyz", me),
            Err(TopicRefusal::TooLong)
        );
        let p = policy(Acl::ClientId);
        let me = p.identity("dev-2", Some("dev-1"));
        assert_eq!(p.check(b"sensors/dev-2/telemetry", me), Ok(()));
        assert_eq!(
            p.check(b"sensors/dev-1/telemetry", me),
            Err(TopicRefusal::NotOwn)
        );
        let p = policy(Acl::ClientId);
        assert_eq!(
            p.check(b"sensors//telemetry", p.identity("", None)),
            Err(TopicRefusal::NotOwn),
            "an empty name owns nothing"
        );
    }

    #[test]
    fn without_acl_only_the_length_counts() {
        let p = policy(Acl::None);
        let me = p.identity("dev-1", None);
        assert_eq!(me, None);
        assert_eq!(p.check(b"anything/at/all", me), Ok(()));
        assert_eq!(p.check(&[b'a'; 41], me), Err(TopicRefusal::TooLong));
    }
}
