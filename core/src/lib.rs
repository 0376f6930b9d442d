//! Ferry's shared core: what every component speaks.
//!
//! - [`record`]: the [`record::Record`] (one timestamped reading) and the
//!   [`record::DeadLetter`] (what could not become one, with the reason).
//! - [`sink`]: how a source hands records to the durable ingest and learns
//!   when they are committed.
//! - [`backoff`]: the one retry policy, capped exponential with jitter.
//! - [`hostport`]: `host:port` as the config writes it.
//! - [`kind`]: dead-letter kinds, kept as data.
//! - [`report`]: a config's problems, each at its key path.
//! - [`files`]: reading an operator's file with a size bound.
//! - [`text`]: putting outside text into logs and errors safely.

pub mod backoff;
pub mod files;
pub mod hostport;
pub mod kind;
pub mod record;
pub mod report;
pub mod sink;
pub mod text;
