//! What a panic costs.
//!
//! Ferry is built with `panic = "unwind"`, but the daemon installs a panic
//! hook ([`install_hook`]) that aborts the process for a panic anywhere
//! except inside a *contained* scope. A panic outside one means an invariant
//! of the ingest writer, a source or an uplink no longer holds; the process
//! aborts, as `panic = "abort"` did, and systemd starts it again from what
//! is durable. That stays the rule for every task and thread of the daemon,
//! including tokio's (tokio would otherwise catch a task's panic and let the
//! rest of the daemon run on without it).
//!
//! A contained scope is work on behalf of one outside request whose failure
//! must cost that request only: handling one API request ([`Contained`]), or
//! reading a file that may be damaged ([`contained`]). A panic there unwinds
//! to the scope's boundary, which returns it as a [`Panicked`] error; the
//! caller answers, counts and logs it, and the daemon runs on. Such a scope
//! must not hold a lock or state that other work shares across the panic
//! (the store writer never runs in one).
//!
//! Outside the daemon (tests, `ferry fsck`) no hook is installed and panics
//! behave as Rust's default; the boundaries still catch them.

use std::cell::Cell;
use std::future::Future;
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Once;
use std::task::{Context, Poll};

thread_local! {
    /// How many contained scopes this thread is inside.
    static DEPTH: Cell<u32> = const { Cell::new(0) };
    /// How many of them expect panics and report them themselves
    /// ([`contained_quietly`]).
    static QUIET: Cell<u32> = const { Cell::new(0) };
}

/// A panic caught at a contained scope's boundary, with its message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("panicked: {message}")]
pub struct Panicked {
    pub message: String,
}

impl Panicked {
    fn from_payload(payload: &(dyn std::any::Any + Send)) -> Panicked {
        let message = if let Some(s) = payload.downcast_ref::<&str>() {
            (*s).to_owned()
        } else if let Some(s) = payload.downcast_ref::<String>() {
            s.clone()
        } else {
            "a panic without a message".to_owned()
        };
        Panicked { message }
    }
}

/// Whether this thread is inside a contained scope now.
pub fn is_contained() -> bool {
    DEPTH.with(|d| d.get() > 0)
}

/// Installs the daemon's panic hook (once; later calls do nothing): the
/// default report (message and location on stderr, which the journal
/// keeps), then an abort unless the panic is in a contained scope.
pub fn install_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let report = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !QUIET.with(|q| q.get() > 0) {
                report(info);
            }
            if !is_contained() {
                std::process::abort();
            }
        }));
    });
}

/// Marks this thread as inside a contained scope until dropped (also when
/// the scope unwinds).
struct Scope;

impl Scope {
    fn enter() -> Scope {
        DEPTH.with(|d| d.set(d.get().saturating_add(1)));
        Scope
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
    }
}

/// Runs `f` as a contained scope: a panic in it is returned as
/// [`Panicked`] instead of ending the process. `f` must leave nothing that
/// other work shares half-changed when it panics (see the module docs).
pub fn contained<R>(f: impl FnOnce() -> R) -> Result<R, Panicked> {
    let _scope = Scope::enter();
    panic::catch_unwind(AssertUnwindSafe(f)).map_err(|p| Panicked::from_payload(&*p))
}

/// [`contained`] for work that expects panics by the thousand and reports
/// each as its own result (salvaging a damaged file probes it until reads
/// succeed): the daemon's hook does not print them.
pub fn contained_quietly<R>(f: impl FnOnce() -> R) -> Result<R, Panicked> {
    QUIET.with(|q| q.set(q.get().saturating_add(1)));
    struct Unquiet;
    impl Drop for Unquiet {
        fn drop(&mut self) {
            QUIET.with(|q| q.set(q.get().saturating_sub(1)));
        }
    }
    let _unquiet = Unquiet;
    contained(f)
}

/// A future polled as a contained scope: it resolves to `Err(Panicked)` if
/// a poll of `inner` panicked (the inner future is dropped then, and never
/// polled again). Work it hands to other tasks or threads is not contained
/// by it; wrap that work in [`contained`] where it runs.
pub struct Contained<F> {
    inner: Option<Pin<Box<F>>>,
}

impl<F: Future> Contained<F> {
    pub fn new(inner: F) -> Contained<F> {
        Contained {
            inner: Some(Box::pin(inner)),
        }
    }
}

impl<F: Future> Future for Contained<F> {
    type Output = Result<F::Output, Panicked>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(Err(Panicked {
                message: "polled after it panicked".to_owned(),
            }));
        };
        match contained(|| inner.as_mut().poll(cx)) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(out)) => {
                self.inner = None;
                Poll::Ready(Ok(out))
            }
            Err(p) => {
                self.inner = None;
                Poll::Ready(Err(p))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_in_a_contained_scope_is_an_error_with_its_message() {
        let r: Result<(), Panicked> = contained(|| panic!("bad range {}", 7));
        assert_eq!(r.unwrap_err().message, "bad range 7");
        assert!(!is_contained(), "the scope ends with the panic");
        assert_eq!(contained(|| 5), Ok(5));
    }

    #[test]
    fn scopes_nest_and_end() {
        contained(|| {
            assert!(is_contained());
            let inner: Result<(), _> = contained(|| panic!("inner"));
            assert!(inner.is_err());
            assert!(is_contained(), "still inside the outer scope");
        })
        .unwrap();
        assert!(!is_contained());
    }

    #[tokio::test]
    async fn a_contained_future_turns_its_panic_into_an_error() {
        let ok = Contained::new(async { 3 }).await;
        assert_eq!(ok, Ok(3));
        let failed = Contained::new(async {
            tokio::task::yield_now().await;
            let v: Vec<u8> = Vec::new();
            v[usize::from(v.is_empty())]
        })
        .await;
        assert!(failed.unwrap_err().message.contains("index out of bounds"));
        assert!(!is_contained());
    }
}
