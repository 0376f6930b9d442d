//! The filters devices subscribed to through the front: a device's publish
//! is handed to the broker only when one of them (or its retain flag) needs
//! it, so telemetry nobody subscribes to goes from the front to the store
//! and never through the broker's log.
//!
//! A filter is held while a connection that subscribed to it is open, and
//! for good (until unsubscribed) once a persistent session (clean session
//! off) subscribed to it: the broker queues messages for that session
//! while its device is away.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Most distinct filters held; a SUBSCRIBE past it is refused.
pub const MAX_FILTERS: usize = 4096;

/// The subscribed filters of one front, each with how many hold it.
#[derive(Debug, Default)]
pub struct Subscriptions {
    filters: Mutex<HashMap<String, usize>>,
    /// Filters held: 0 lets a publish skip the lock.
    held: AtomicUsize,
}

impl Subscriptions {
    /// Holds `filter` once more; `false` (and nothing held) if
    /// [`MAX_FILTERS`] distinct filters are held already.
    pub fn add(&self, filter: &str) -> bool {
        let mut filters = self.filters.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = filters.get_mut(filter) {
            *n += 1;
            return true;
        }
        if filters.len() >= MAX_FILTERS {
            return false;
        }
        filters.insert(filter.to_owned(), 1);
        self.held.store(filters.len(), Ordering::Release);
        true
    }

    /// Lets go of `filter` once.
    pub fn remove(&self, filter: &str) {
        let mut filters = self.filters.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = filters.get_mut(filter) {
            *n -= 1;
            if *n == 0 {
                filters.remove(filter);
            }
        }
        self.held.store(filters.len(), Ordering::Release);
    }

    /// Whether a subscription matches `topic`.
    pub fn wanted(&self, topic: &[u8]) -> bool {
        if self.held.load(Ordering::Acquire) == 0 {
            return false;
        }
        let Ok(topic) = std::str::from_utf8(topic) else {
            return false;
        };
        let filters = self.filters.lock().unwrap_or_else(|e| e.into_inner());
        filters.keys().any(|f| matches(f, topic))
    }
}

/// Whether the MQTT filter `filter` matches `topic` (MQTT 3.1.1, 4.7):
/// `+` one level, `#` the rest (the parent level too), and a topic that
/// starts with `$` only by a filter that starts with it too.
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && !filter.starts_with('$') {
        return false;
    }
    let mut levels = topic.split('/');
    for f in filter.split('/') {
        match (f, levels.next()) {
            ("#", _) => return true,
            ("+", Some(_)) => {}
            (f, Some(t)) if f == t => {}
            _ => return false,
        }
    }
    levels.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_as_mqtt_says() {
        for (filter, topic, want) in [
            ("a/b", "a/b", true),
            ("a/b", "a/b/c", false),
            ("a/+", "a/b", true),
            ("a/+", "a", false),
            ("a/+", "a/", true),
            ("+/+", "/b", true),
            ("a/#", "a", true),
            ("a/#", "a/b/c", true),
            ("#", "a/b", true),
            ("#", "$SYS/x", false),
            ("+/x", "$SYS/x", false),
            ("$SYS/#", "$SYS/x", true),
            ("a/+/c", "a/b/c", true),
            ("a/+/c", "a/b/d", false),
        ] {
            assert_eq!(matches(filter, topic), want, "{filter} on {topic}");
        }
    }

    #[test]
    fn a_filter_counts_its_holders() {
        let s = Subscriptions::default();
        assert!(!s.wanted(b"a/b"));
        assert!(s.add("a/+"));
        assert!(s.add("a/+"));
        assert!(s.wanted(b"a/b"));
        s.remove("a/+");
        assert!(s.wanted(b"a/b"));
        s.remove("a/+");
        assert!(!s.wanted(b"a/b"));
        s.remove("never/held");
        assert!(!s.wanted(b"never/held"));
    }

    #[test]
    fn distinct_filters_are_capped() {
        let s = Subscriptions::default();
        for i in 0..MAX_FILTERS {
            assert!(s.add(&format!("f/{i}")));
        }
        assert!(!s.add("one/more"));
        assert!(s.add("f/0"), "a held filter can be held again");
    }
}
