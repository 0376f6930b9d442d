//! Routes: what a routed uplink sends, computed from the stored records by
//! stateful steps, durably and exactly once.
//!
//! # How
//! A route reads the raw stream after its cursor (`route.NAME` in the
//! `cursors` table), selects records (`sources`, `devices`, `fields`),
//! applies its deadband and window steps ([`deadband`], [`window`]) and
//! hands the writer one [`RouteCommit`](crate::store::RouteCommit): the
//! output records, its new state (the deadband's last values, the open
//! windows and the watermark) and its new cursor. The writer commits the
//! three in one redb transaction (with its next group commit):
//!
//! | table              | key       | value                                  |
//! |--------------------|-----------|----------------------------------------|
//! | `route.NAME`       | seq `u64` | an output record (same codec as `records`) |
//! | `route_state`      | route name| the state, JSON ([`State`])            |
//! | `cursors`          | `route.NAME` | the last raw seq processed          |
//!
//! # Guarantees
//! - **Exactly once through a crash.** Output, state and cursor are in one
//!   transaction, so after a crash the route resumes from a cursor and a
//!   state that match the output already stored: nothing is emitted twice
//!   or lost. Steps are deterministic functions of the stored records (by
//!   record time) and windows close after each record, so the output does
//!   not depend on batching or restarts.
//! - **Windows close on the clock** when the records stop: once the route
//!   has read every stored record, a timer closes each window when the
//!   watermark's wall-time estimate passes its end + grace ([`window`]);
//!   that output is committed with the state like any other, so it too is
//!   emitted exactly once through a crash.
//! - **Reload.** A route's config can be replaced while it runs (SIGHUP,
//!   see `reload.rs`); it takes effect from the next batch.
//! - **Raw records stay.** A route only reads the raw stream; retention
//!   keeps the records a route has not processed as it keeps undelivered
//!   ones (the route's cursor is a protected consumer).
//! - An uplink with `route = "NAME"` sends the route's stream, at least
//!   once, with its own cursor on that stream.
//! - **Output is trimmed by retention** like raw records (`max_age`, the
//!   disk budget), after the raw records it summarises; entries an uplink
//!   has not sent go last (see `store::retention`).

pub mod config;
pub mod deadband;
mod task;
pub mod window;

use std::sync::Arc;

use ferry_core::record::{Millis, Record};
use serde::{Deserialize, Serialize};

pub use config::{Aggregate, DeadbandConfig, RouteConfig, WindowConfig};
pub use task::{cursor_name, spawn_route, spawn_route_with, Clock};

/// The durable state of a route.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub deadband: deadband::Deadband,
    pub windows: window::Windows,
}

/// Counts of what a route did not pass on, by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dropped {
    pub too_late: u64,
    pub not_finite: u64,
    /// Records stamped outside the times Ferry keeps (1970 to 9999 from
    /// every source; only a damaged record has another): not routed, so that
    /// one cannot move a window's watermark to the end of time.
    pub bad_time: u64,
}

/// A route's steps and state (no I/O: unit-tested with plain values).
#[derive(Clone, Debug)]
pub struct Route {
    pub name: Arc<str>,
    pub config: RouteConfig,
    pub state: State,
}

impl Route {
    pub fn new(name: &str, config: RouteConfig, state: State) -> Route {
        let mut state = state;
        state.windows.reindex();
        Route {
            name: name.into(),
            config,
            state,
        }
    }

    /// The state as stored.
    pub fn encode_state(&self) -> Vec<u8> {
        serde_json::to_vec(&self.state).expect("the route state serializes")
    }

    /// The state from its stored form.
    pub fn decode_state(bytes: &[u8]) -> Result<State, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// Notes that the route has read everything it has at wall time `wall`
    /// (anchors the windows' watermark: see [`window`]).
    pub fn anchor(&mut self, wall: Millis) {
        if self.config.window.is_some() {
            self.state.windows.anchor(wall);
        }
    }

    /// The wall time at which [`Route::tick`] next has a window to close.
    pub fn next_due(&self) -> Option<Millis> {
        let w = self.config.window.as_ref()?;
        self.state.windows.next_due(w)
    }

    /// Closes the windows due by wall time `now`; appends them to `out`.
    pub fn tick(&mut self, now: Millis, out: &mut Vec<Record>) {
        if let Some(w) = &self.config.window {
            self.state.windows.close_by_clock(w, &self.name, now, out);
        }
    }

    /// Processes one stored record; appends what it emits to `out`.
    pub fn push(&mut self, record: &Record, out: &mut Vec<Record>, dropped: &mut Dropped) {
        use crate::query::bounds::{MAX_TIME, MIN_TIME};
        if !(MIN_TIME..=MAX_TIME).contains(&record.ts) {
            dropped.bad_time += 1;
            return;
        }
        let c = &self.config;
        if let Some(w) = &c.window {
            self.state.windows.advance(w, &self.name, record.ts, out);
        }
        if !c.sources.is_empty() && !c.sources.iter().any(|s| **s == *record.source) {
            return;
        }
        if !c.devices.is_empty() && !c.devices.iter().any(|d| **d == *record.device) {
            return;
        }
        let mut r = record.clone();
        if !c.fields.is_empty() {
            r.fields
                .retain(|(n, _)| c.fields.iter().any(|f| **f == **n));
            if r.fields.is_empty() {
                return;
            }
        }
        if let Some(db) = &c.deadband {
            if !self
                .state
                .deadband
                .apply(db, &mut r, &mut || dropped.not_finite += 1)
            {
                return;
            }
        }
        match &c.window {
            Some(w) => self
                .state
                .windows
                .push(w, &self.name, &r, out, &mut |s| match s {
                    window::Skipped::TooLate => dropped.too_late += 1,
                    window::Skipped::NotFinite => dropped.not_finite += 1,
                }),
            None => out.push(r),
        }
    }
}
