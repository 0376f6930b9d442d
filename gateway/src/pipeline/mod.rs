//! The pipeline: ordered, stateless steps applied to every record before it
//! is stored (filter, select/remove, rename/add/copy, math, enrich).
//!
//! # Where it runs
//! A task between the sources and ingest ([`spawn_pipeline`]): sources
//! submit to the pipeline's [`Sink`](ferry_core::sink::Sink); the task
//! applies the steps to each submission's records and forwards the
//! submission, with its receipt, to the ingest writer. So a source is still
//! acknowledged only after its (transformed) records are committed, and a
//! submission whose records were all filtered out is acknowledged too (it
//! is committed empty). Dead letters pass through unchanged. The daemon
//! starts the task even with no steps (it then only forwards), so a reload
//! (SIGHUP) can replace the steps and the device registry in place: the new
//! pipeline applies whole from the next submission on.
//!
//! # What each step does with a record it cannot handle
//! Counted in `ferry_pipeline_errors_total{step,reason}`, never a panic:
//! - `filter`: a condition that cannot be evaluated (a missing field, a
//!   wrong type) drops the record, like a false one; drops are counted in
//!   `ferry_pipeline_records_dropped_total{step,reason}` with reason
//!   `filtered` or the error's reason. NaN compares false.
//! - `math`: an expression that cannot be evaluated, or whose result is
//!   NaN or infinite (`x / 0`, `sqrt(-1)`), leaves the field unset (an
//!   existing field keeps its value) and the record goes on.
//! - `rename`/`copy` of a missing field, `remove` of one, and `enrich` of a
//!   device not in the registry change nothing and are not errors.
//! - A record left with no fields is still stored (it has a timestamp
//!   and a device).

pub mod config;
mod expr;
mod step;
mod task;

pub use config::{Action, PipelineConfig, Step};
pub use expr::{EvalError, Expression};
pub use step::{Outcome, Pipeline};
pub use task::{spawn_pipeline, spawn_pipeline_with};
