//! A flag that stops a long read of the store or the index: the API gives
//! one to each request's reads and raises it when the request is gone.
//! Reads look at it between bounded steps (an atomic load: it costs them
//! nothing measurable).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A cancel flag, shared by its clones.
#[derive(Clone, Debug, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    pub fn new() -> Cancel {
        Cancel::default()
    }

    /// Raises the flag: the reads made with it stop at their next step.
    pub fn cancel(&self) {
        // A flag alone: no other memory is published through it.
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// A guard that raises the flag when dropped, unless disarmed first:
    /// held by the future of a request, it cancels the request's reads when
    /// the future is dropped unfinished.
    pub fn on_drop(&self) -> CancelOnDrop {
        CancelOnDrop(Some(self.clone()))
    }
}

/// See [`Cancel::on_drop`].
#[derive(Debug)]
pub struct CancelOnDrop(Option<Cancel>);

impl CancelOnDrop {
    /// Drops the guard without raising the flag.
    pub fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            c.cancel();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Cancel;

    #[test]
    fn the_guard_cancels_on_drop_unless_disarmed() {
        let c = Cancel::new();
        c.on_drop().disarm();
        assert!(!c.is_cancelled());
        drop(c.on_drop());
        assert!(c.is_cancelled());
        assert!(c.clone().is_cancelled());
    }
}
