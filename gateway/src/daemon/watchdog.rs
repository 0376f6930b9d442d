//! The systemd watchdog and the status line.
//!
//! One task ([`run`]) wakes every `period`:
//! - it pings the watchdog (`WATCHDOG=1`) only while the ingest writer is
//!   alive: its loop turns at least once a second, idle or not, and bumps a
//!   heartbeat; a heartbeat older than `stall` means ingest is stuck (a hung
//!   fsync, a deadlock, a task that died), the pings stop, and systemd kills
//!   and restarts Ferry `WatchdogSec=` after the last one
//!   (`Restart=on-failure` covers a watchdog timeout);
//! - it rebuilds the status line and, when it changed, publishes it to
//!   `/readyz` and sends it as `STATUS=`.
//!
//! A runtime so blocked that this task cannot run stops the pings too.
//!
//! Timing for `WatchdogSec=T` ([`Timing::for_timeout`]): a tick every T/4
//! (at most every 5 s, for the status), a stall limit of T/2 (at least 3 s,
//! three of the writer's idle heartbeats). So a stuck writer is restarted
//! between T and 1.5 T after it stopped, and one late tick never costs a
//! restart.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use super::notify::{Notifier, State};
use super::status::StatusSource;

/// How often the status is refreshed without a watchdog.
pub const STATUS_PERIOD: Duration = Duration::from_secs(5);

/// The shortest stall limit: three of the writer's idle heartbeats.
const MIN_STALL: Duration = Duration::from_secs(3);

/// How often the loop runs and how old the writer's heartbeat may get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub period: Duration,
    pub stall: Duration,
}

impl Timing {
    /// The timing for systemd's watchdog timeout (`None`: no watchdog).
    pub fn for_timeout(timeout: Option<Duration>) -> Timing {
        match timeout {
            None => Timing {
                period: STATUS_PERIOD,
                stall: MIN_STALL.max(2 * STATUS_PERIOD),
            },
            Some(t) => Timing {
                period: (t / 4).min(STATUS_PERIOD),
                stall: (t / 2).max(MIN_STALL),
            },
        }
    }
}

/// Judges whether the ingest writer is alive from its heartbeat.
pub struct Watchdog {
    heartbeat: watch::Receiver<Instant>,
    stall: Duration,
    stalled: bool,
}

impl Watchdog {
    pub fn new(heartbeat: watch::Receiver<Instant>, stall: Duration) -> Watchdog {
        Watchdog {
            heartbeat,
            stall,
            stalled: false,
        }
    }

    /// Whether the writer's loop turned within the stall limit; logs when
    /// that changes.
    pub fn check(&mut self) -> bool {
        let age = self.heartbeat.borrow().elapsed();
        let alive = age <= self.stall;
        if !alive && !self.stalled {
            error!(
                stalled_for = ?age,
                "the ingest writer is stuck: no more watchdog pings, systemd will restart ferry"
            );
        } else if alive && self.stalled {
            info!("the ingest writer runs again; watchdog pings resume");
        }
        self.stalled = !alive;
        alive
    }
}

/// Runs until `cancel` fires: pings the watchdog while ingest is alive and
/// publishes the status line (to `status`, and as `STATUS=`) when it
/// changes.
pub async fn run(
    notifier: Option<Arc<Notifier>>,
    mut watchdog: Watchdog,
    source: StatusSource,
    status: watch::Sender<Option<Arc<str>>>,
    period: Duration,
    cancel: CancellationToken,
) {
    let pings = notifier
        .as_ref()
        .is_some_and(|n| n.watchdog_timeout().is_some());
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = cancel.cancelled() => return,
        }
        let alive = watchdog.check();
        let line: Arc<str> = source.line().into();
        let changed = status.borrow().as_deref() != Some(&*line);
        if changed {
            status.send_replace(Some(line.clone()));
        }
        if let Some(n) = &notifier {
            let mut states = Vec::with_capacity(2);
            if pings && alive {
                states.push(State::Watchdog);
            }
            if changed {
                states.push(State::Status(&line));
            }
            if !states.is_empty() {
                n.notify(&states);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{IngestMetrics, UplinkMetrics};
    use crate::store::{Store, StoreOptions, Writer, WriterSettings};
    use std::os::unix::net::UnixDatagram;

    fn status_source() -> StatusSource {
        StatusSource {
            ingest: IngestMetrics::new(),
            uplinks: UplinkMetrics::new(),
            uplink_names: watch::channel(Vec::new()).1,
        }
    }

    /// The notifications waiting on `socket`, without waiting.
    fn drain(socket: &UnixDatagram) -> Vec<String> {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = socket.recv(&mut buf) {
            out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        out
    }

    #[test]
    fn timing_follows_the_watchdog_timeout() {
        let s = Duration::from_secs;
        assert_eq!(
            Timing::for_timeout(Some(s(30))),
            Timing {
                period: s(5),
                stall: s(15)
            }
        );
        let short = Timing::for_timeout(Some(Duration::from_millis(400)));
        assert_eq!(short.period, Duration::from_millis(100));
        assert_eq!(short.stall, MIN_STALL);
        assert_eq!(Timing::for_timeout(None).period, STATUS_PERIOD);
    }

    #[tokio::test(start_paused = true)]
    async fn pings_stop_when_the_heartbeat_stops() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let manager = UnixDatagram::bind(&path).unwrap();
        manager.set_nonblocking(true).unwrap();
        let period = Duration::from_secs(1);
        let notifier = Arc::new(Notifier::connect(path.as_os_str(), Some(4 * period)).unwrap());
        let (beat, heartbeat) = watch::channel(Instant::now());
        let (status, mut status_rx) = watch::channel(None);
        let cancel = CancellationToken::new();
        let task = tokio::spawn(run(
            Some(notifier),
            Watchdog::new(heartbeat, 2 * period),
            status_source(),
            status,
            period,
            cancel.clone(),
        ));
        // First tick: alive, and the status is new.
        status_rx.changed().await.unwrap();
        assert_eq!(
            drain(&manager),
            ["WATCHDOG=1\nSTATUS=0 records stored; no uplink\n"]
        );
        // The writer beats every tick: a ping each time, the status unchanged.
        for _ in 0..5 {
            tokio::time::sleep(period).await;
            beat.send_replace(Instant::now());
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(period / 2).await;
        let pings = drain(&manager);
        assert!(pings.len() >= 4, "{pings:?}");
        assert!(pings.iter().all(|p| p == "WATCHDOG=1\n"), "{pings:?}");
        // The writer stops: once the heartbeat is older than the stall
        // limit, no more pings.
        tokio::time::sleep(2 * period).await;
        drain(&manager);
        tokio::time::sleep(10 * period).await;
        assert_eq!(drain(&manager), Vec::<String>::new());
        // It beats again: pings resume.
        beat.send_replace(Instant::now());
        tokio::time::sleep(period).await;
        assert_eq!(drain(&manager), ["WATCHDOG=1\n"]);
        cancel.cancel();
        task.await.unwrap();
    }

    #[test]
    fn a_writer_blocked_in_its_commit_stops_the_pings() {
        // A real writer on a real store, blocked for real: a write
        // transaction held elsewhere makes its commit wait (redb allows one
        // writer at a time), as a hung fsync would.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(&Store::file_in(dir.path()), &StoreOptions::default()).unwrap();
            let ingest = Writer::spawn(
                store.clone(),
                WriterSettings::default().with_commit_interval(Duration::from_millis(10)),
                IngestMetrics::new(),
            );
            let stall = Duration::from_millis(1500);
            let mut watchdog = Watchdog::new(ingest.heartbeat.clone(), stall);
            let mut heartbeat = ingest.heartbeat.clone();

            // Idle, the writer still beats about once a second.
            let started = std::time::Instant::now();
            heartbeat.changed().await.unwrap();
            heartbeat.changed().await.unwrap();
            assert!(started.elapsed() < Duration::from_secs(3));
            assert!(watchdog.check());

            let held = store.db().unwrap().begin_write().unwrap();
            let record = ferry_core::record::Record {
                ts: 1,
                source: "s".into(),
                device: "d".into(),
                fields: vec![("v".into(), ferry_core::record::Value::Int(1))],
            };
            let sink = ingest.sink.clone();
            let submit = tokio::spawn(async move {
                sink.submit_and_wait(vec![ferry_core::sink::Item::Record(record)])
                    .await
            });
            // Wait until the heartbeat is stale: the writer is in its commit.
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while watchdog.check() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the writer kept beating"
                );
                tokio::time::timeout(stall, heartbeat.changed()).await.ok();
            }
            // Released, the commit completes and the writer beats again.
            drop(held);
            submit.await.unwrap().unwrap();
            heartbeat.changed().await.unwrap();
            assert!(watchdog.check());
        });
    }
}
