//! The poller of one link: picks the device due first, reads it, hands the
//! record to ingest, records the outcome in the [`Schedule`].
//!
//! # One poll
//!
//! The device's planned requests are sent one after the other. Each field is
//! decoded from the answer of its request; the record holds the fields that
//! were read, timestamped when the poll started. A field whose request failed,
//! or whose value cannot be stored (NaN, ...), is left out: no substitute
//! value is ever stored. Each failure is counted (see [`PollEvent`]) and
//! logged with the device, table, addresses and fields it concerns.
//!
//! - An exception answer leaves those fields out; the poll goes on and the
//!   link is kept. Exceptions 0x0A/0x0B (a gateway cannot reach the device)
//!   count as the device failing, like a timeout.
//! - A bad answer (garbage, wrong length) leaves those fields out; the poll
//!   goes on.
//! - A timeout or a link failure ends the poll (the device is likely gone:
//!   sending its other requests would hold the link for nothing).
//!
//! The device is *answering* if it answered at least one request and none
//! timed out; otherwise it is backed off (see [`Schedule`]).
//!
//! # Handing over to ingest
//!
//! The record is submitted to the [`Sink`], which waits while ingest is full
//! (back-pressure slows polling rather than growing memory). The poller does
//! not wait for the commit: the receipt goes to a watcher task, so a slow
//! fsync never delays the next request on the bus. A reading whose commit
//! fails is not read again; it is logged by the watcher and counted by ingest.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use ferry_core::record::{now_millis, Record, Value};
use ferry_core::sink::{Item, Receipt, Sink};
use ferry_core::text::escape;

use super::config::DeviceSpec;
use super::events::{DeviceObserver, PollEvent};
use super::link::{Data, Link, ReadError};
use super::plan::Request;
use super::register::range;
use super::schedule::Schedule;
use super::ModbusError;

/// A device as its poller holds it.
/// How long a poll's record may wait for its commit. A Modbus reading is
/// acknowledged to nobody, so it rides a commit within a second instead of
/// forcing one per poll: devices spread over the second would otherwise
/// cost one fsync (about 15 KB written on redb) per reading.
pub const COMMIT_DELAY: std::time::Duration = std::time::Duration::from_secs(1);

pub(crate) struct Device {
    pub(crate) spec: Arc<DeviceSpec>,
    pub(crate) observer: Arc<dyn DeviceObserver>,
    /// Failures logged so far, to log the 1st, 2nd, 4th, 8th... at `warn`.
    failures: u64,
}

impl Device {
    pub(crate) fn new(spec: DeviceSpec, observer: Arc<dyn DeviceObserver>) -> Device {
        Device {
            spec: Arc::new(spec),
            observer,
            failures: 0,
        }
    }

    /// Logs a failed poll; the message may quote what the device answered,
    /// so it is escaped ([`escape`]).
    fn log_failure(&mut self, source: &str, message: &str) {
        self.failures += 1;
        let count = self.failures;
        let device = &*self.spec.name;
        if count.is_power_of_two() {
            warn!(
                source,
                device,
                count,
                "{}: {}",
                escape(device),
                escape(message)
            );
        } else {
            debug!(
                source,
                device,
                count,
                "{}: {}",
                escape(device),
                escape(message)
            );
        }
    }
}

/// Polls the devices of one link until cancelled.
pub(crate) struct Poller {
    pub(crate) source: Arc<str>,
    pub(crate) link: Link,
    pub(crate) devices: Vec<Device>,
    pub(crate) schedule: Schedule,
    pub(crate) sink: Sink,
    pub(crate) receipts: mpsc::Sender<(Arc<str>, Receipt)>,
    pub(crate) rng: fastrand::Rng,
}

impl Poller {
    pub(crate) async fn run(mut self, cancel: CancellationToken) -> Result<(), ModbusError> {
        while let Some((i, due)) = self.schedule.next() {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return Ok(()),
                _ = sleep_until(due) => {}
            }
            let device = &mut self.devices[i];
            let polled = tokio::select! {
                biased;
                _ = cancel.cancelled() => return Ok(()),
                polled = poll(&mut self.link, device, &self.source) => polled,
            };
            let change = self
                .schedule
                .record(i, polled.answering, Instant::now(), &mut self.rng);
            let name = &*device.spec.name;
            if change.missed > 0 {
                device.observer.event(PollEvent::Missed(change.missed));
                debug!(source = %self.source, device = name, missed = change.missed, "polls skipped: the link was busy");
            }
            match change.up {
                Some(true) => {
                    info!(source = %self.source, device = name, "{name}: answering again");
                    device.observer.event(PollEvent::Up(true));
                }
                Some(false) => {
                    warn!(source = %self.source, device = name, "{name}: not answering; backing off (next try in {})",
                        humantime::format_duration(round_ms(change.next_in)));
                    device.observer.event(PollEvent::Up(false));
                }
                None => {}
            }
            let Some(record) = polled.record else {
                continue;
            };
            let name = device.spec.name.clone();
            let submitted = tokio::select! {
                biased;
                _ = cancel.cancelled() => return Ok(()),
                r = self.sink.submit_within(vec![Item::Record(record)], Some(COMMIT_DELAY)) => r,
            };
            let receipt = submitted.map_err(|_| ModbusError::SinkClosed)?;
            self.receipts
                .send((name, receipt))
                .await
                .map_err(|_| ModbusError::SinkClosed)?;
        }
        Ok(())
    }
}

fn round_ms(d: std::time::Duration) -> std::time::Duration {
    std::time::Duration::from_millis(d.as_millis() as u64)
}

/// The outcome of one poll.
pub(crate) struct Polled {
    /// The device answered (see the module doc).
    pub(crate) answering: bool,
    /// The record, if any field was read.
    pub(crate) record: Option<Record>,
}

/// Polls `device` once over `link`; see the module doc.
pub(crate) async fn poll(link: &mut Link, device: &mut Device, source: &Arc<str>) -> Polled {
    let ts = now_millis();
    let spec = device.spec.clone();
    let mut values: Vec<Option<Value>> = vec![None; spec.fields.len()];
    let mut answered = false;
    let mut failed = false;
    for request in &spec.requests {
        let read = link
            .read(
                spec.unit,
                request.table,
                request.start,
                request.count,
                spec.timeout,
            )
            .await;
        match read {
            Ok((data, round_trip)) => {
                answered = true;
                device.observer.event(PollEvent::Answered { round_trip });
                decode(device, source, request, &data, &mut values);
            }
            Err(e) => {
                match &e {
                    ReadError::Exception { code, round_trip } => {
                        device.observer.event(PollEvent::Exception {
                            code: *code,
                            round_trip: *round_trip,
                        });
                        // 0x0A/0x0B: a gateway answered that the device did not.
                        if matches!(code, 0x0A | 0x0B) {
                            failed = true;
                        } else {
                            answered = true;
                        }
                    }
                    other => {
                        if let Some(kind) = other.failure() {
                            device.observer.event(PollEvent::Failed(kind));
                        }
                        failed |= matches!(other, ReadError::Timeout(_) | ReadError::Link(_));
                    }
                }
                let message = format!(
                    "{} {} ({}): {e}",
                    request.table,
                    range(request.start, request.count),
                    names(&spec, request),
                );
                device.log_failure(source, &message);
                if matches!(e, ReadError::Timeout(_) | ReadError::Link(_)) {
                    break;
                }
            }
        }
    }
    let fields: Vec<(Box<str>, Value)> = spec
        .fields
        .iter()
        .zip(values)
        .filter_map(|(f, v)| v.map(|v| (f.name.clone(), v)))
        .collect();
    let missing = spec.fields.len() - fields.len();
    device.observer.event(PollEvent::Polled {
        fields: fields.len(),
        missing,
    });
    let record = (!fields.is_empty()).then(|| Record {
        ts,
        source: source.clone(),
        device: (*spec.name).into(),
        fields,
    });
    Polled {
        answering: answered && !failed,
        record,
    }
}

/// Decodes the fields `request` read into `values`.
fn decode(
    device: &mut Device,
    source: &str,
    request: &Request,
    data: &Data,
    values: &mut [Option<Value>],
) {
    let spec = device.spec.clone();
    for &i in &request.fields {
        let field = &spec.fields[i];
        let offset = usize::from(field.address - request.start);
        let decoded = match data {
            Data::Bits(bits) => Ok(field.decode_bit(bits[offset])),
            Data::Words(words) => {
                field.decode_words(&words[offset..offset + usize::from(field.count)])
            }
        };
        match decoded {
            Ok(v) => values[i] = Some(v),
            Err(e) => {
                device.observer.event(PollEvent::BadValue);
                let message = format!(
                    "{} {} (`{}`, {}): {e}",
                    field.table,
                    range(field.address, field.count),
                    field.name,
                    field.kind
                );
                device.log_failure(source, &message);
            }
        }
    }
}

/// The names of the fields `request` reads, at most a few.
fn names(spec: &DeviceSpec, request: &Request) -> String {
    const SHOWN: usize = 4;
    let mut out: Vec<&str> = request
        .fields
        .iter()
        .take(SHOWN)
        .map(|&i| &*spec.fields[i].name)
        .collect();
    let more = request.fields.len().saturating_sub(SHOWN);
    let more = format!("and {more} more");
    if request.fields.len() > SHOWN {
        out.push(&more);
    }
    out.join(", ")
}
