//! The Modbus source tests' harness: a source started with a stand-in for
//! ingest that collects records and an observer that records poll events
//! ([`start_source`], [`stop_source`]), the records ([`collector`],
//! [`next_record`]) and the events with their time ([`Events`]). The
//! devices themselves (the pymodbus simulator, socat pty pairs) are
//! `ferry_testkit::modbus`.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_core::record::Record;
use ferry_core::sink::{Committed, Item, Sink};
use ferry_sources::modbus::{DeviceObserver, ModbusError, ModbusObserver, PollEvent};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;

/// A running source: its records, its events, its token and its task.
pub type Running = (
    mpsc::UnboundedReceiver<Record>,
    Events,
    CancellationToken,
    JoinHandle<Result<(), ModbusError>>,
);

/// Spawns the source `run` makes of a sink, an observer and a token, with a
/// [`collector`] and [`Events`].
pub fn start_source<F>(
    run: impl FnOnce(Sink, Arc<dyn ModbusObserver>, CancellationToken) -> F,
) -> Running
where
    F: Future<Output = Result<(), ModbusError>> + Send + 'static,
{
    let (sink, records) = collector();
    let events = Events::default();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(run(sink, Arc::new(events.clone()), cancel.clone()));
    (records, events, cancel, task)
}

/// Cancels a source and waits (at most `within`) for it to end cleanly.
pub async fn stop_source(
    cancel: CancellationToken,
    task: JoinHandle<Result<(), ModbusError>>,
    within: Duration,
) {
    cancel.cancel();
    timeout(within, task)
        .await
        .expect("the source stops when cancelled")
        .expect("source task")
        .expect("the source ends cleanly");
}

/// A stand-in for ingest: commits every submission at once and passes its
/// records on.
pub fn collector() -> (Sink, mpsc::UnboundedReceiver<Record>) {
    let (sink, mut rx) = Sink::channel(64);
    let (tx, records) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut seq = 0;
        while let Some(mut sub) = rx.recv().await {
            for item in std::mem::take(&mut sub.items) {
                match item {
                    Item::Record(r) => {
                        seq += 1;
                        let _ = tx.send(r);
                    }
                    Item::Dead(d) => panic!("a Modbus source sent a dead letter: {d:?}"),
                }
            }
            if let Some(done) = sub.done.take() {
                let _ = done.send(Ok(Committed {
                    last_seq: Some(seq),
                }));
            }
        }
    });
    (sink, records)
}

/// The next record (of `device`, if given) within `within`.
pub async fn next_record(
    records: &mut mpsc::UnboundedReceiver<Record>,
    device: Option<&str>,
    within: Duration,
) -> Record {
    let wait = async {
        loop {
            let r = records.recv().await.expect("the source stopped");
            if device.is_none_or(|d| &*r.device == d) {
                return r;
            }
        }
    };
    timeout(within, wait)
        .await
        .unwrap_or_else(|_| panic!("no record of {device:?} within {within:?}"))
}

/// The next record of `device` that holds `fields` fields (records polled
/// before a device recovered may hold fewer).
pub async fn next_full_record(
    records: &mut mpsc::UnboundedReceiver<Record>,
    device: &str,
    fields: usize,
    within: Duration,
) -> Record {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let r = next_record(records, Some(device), left).await;
        if r.fields.len() == fields {
            return r;
        }
    }
}

/// One recorded event.
#[derive(Clone, Debug)]
pub struct Seen {
    pub at: Instant,
    pub device: String,
    pub event: PollEvent,
}

/// An observer that keeps every event with its time.
#[derive(Clone, Default)]
pub struct Events(Arc<(Mutex<Vec<Seen>>, Notify)>);

struct DeviceEvents {
    device: String,
    all: Events,
}

impl ModbusObserver for Events {
    fn device(&self, _source: &str, device: &str) -> Arc<dyn DeviceObserver> {
        Arc::new(DeviceEvents {
            device: device.to_owned(),
            all: self.clone(),
        })
    }
}

impl DeviceObserver for DeviceEvents {
    fn event(&self, event: PollEvent) {
        self.all.0 .0.lock().unwrap().push(Seen {
            at: Instant::now(),
            device: self.device.clone(),
            event,
        });
        self.all.0 .1.notify_waiters();
    }
}

impl Events {
    /// Events of `device` since `from` that `pick` selects.
    pub fn count(&self, device: &str, from: Instant, pick: impl Fn(&PollEvent) -> bool) -> usize {
        self.0
             .0
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.device == device && s.at >= from && pick(&s.event))
            .count()
    }

    pub fn all(&self) -> Vec<Seen> {
        self.0 .0.lock().unwrap().clone()
    }

    /// Waits (without polling) until `done` holds, checked after each event;
    /// panics after `within`.
    pub async fn wait_until(&self, within: Duration, what: &str, done: impl Fn(&Events) -> bool) {
        let wait = async {
            loop {
                let notified = self.0 .1.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if done(self) {
                    return;
                }
                notified.await;
            }
        };
        if timeout(within, wait).await.is_err() {
            panic!("{what}: not within {within:?}; events: {:?}", self.all());
        }
    }
}
