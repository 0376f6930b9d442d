//! One session per client id (MQTT 3.1.1, 3.1.4-2): a client that connects
//! under the id of a connected one ends the older session.
//!
//! rumqttd does this for the connections it has, but a device that only
//! publishes has none there (`inner.rs`), so the front keeps the sessions
//! itself: the older one stops reading, its publishes already handed to
//! ingest are still acknowledged as they commit, and then it closes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use tokio_util::sync::CancellationToken;

/// The front's sessions by client id (at most `max_connections`).
#[derive(Debug, Default)]
pub struct Sessions {
    next: AtomicU64,
    by_client: Mutex<HashMap<Box<str>, (u64, CancellationToken)>>,
}

/// A session's place in [`Sessions`], given up when dropped.
pub(super) struct Session<'a> {
    sessions: &'a Sessions,
    client: Box<str>,
    id: u64,
}

impl Sessions {
    /// Registers `client`'s session, which `stop` ends; a session under
    /// the same id is ended. `None` for an empty client id (each is a
    /// client of its own).
    pub(super) fn begin(&self, client: &str, stop: CancellationToken) -> Option<Session<'_>> {
        if client.is_empty() {
            return None;
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let older = self
            .lock()
            .insert(client.into(), (id, stop))
            .map(|(_, stop)| stop);
        if let Some(older) = older {
            older.cancel();
        }
        Some(Session {
            sessions: self,
            client: client.into(),
            id,
        })
    }

    /// Sessions registered.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none is.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, (u64, CancellationToken)>> {
        self.by_client.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        let mut by_client = self.sessions.lock();
        if by_client
            .get(&self.client)
            .is_some_and(|(id, _)| *id == self.id)
        {
            by_client.remove(&self.client);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_session_ends_the_first_and_outlives_it() {
        let sessions = Sessions::default();
        let (first, second) = (CancellationToken::new(), CancellationToken::new());
        let a = sessions.begin("dev-1", first.clone()).unwrap();
        assert!(!first.is_cancelled());
        let b = sessions.begin("dev-1", second.clone()).unwrap();
        assert!(first.is_cancelled(), "taken over");
        drop(a);
        assert_eq!(sessions.len(), 1, "the older one's end leaves the newer");
        let third = CancellationToken::new();
        let c = sessions.begin("dev-1", third).unwrap();
        assert!(second.is_cancelled());
        drop(b);
        drop(c);
        assert!(sessions.is_empty());
    }

    #[test]
    fn empty_ids_and_other_ids_are_their_own() {
        let sessions = Sessions::default();
        let (a, b) = (CancellationToken::new(), CancellationToken::new());
        assert!(sessions.begin("", a.clone()).is_none());
        let _one = sessions.begin("dev-1", b.clone()).unwrap();
        let _two = sessions.begin("dev-2", CancellationToken::new()).unwrap();
        assert!(!a.is_cancelled() && !b.is_cancelled());
        assert_eq!(sessions.len(), 2);
    }
}
