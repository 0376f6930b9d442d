//! The wait before a connect: carries out the [`Reconnect`] schedule, with
//! the endpoint's reachability probes (a plain TCP connect to `host:port`,
//! closed at once: no TLS, nothing the broker counts as a connection
//! attempt of the client id).

use std::time::Duration;

use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::reconnect::{Action, Reconnect};
use crate::metrics::{UplinkLabel, UplinkMetrics};

/// Probes outstanding at once, at most (each ends within its timeout).
const MAX_PROBES: usize = 16;

/// Where and how the probes go.
pub(crate) struct Probes<'a> {
    pub name: &'a str,
    pub host: &'a str,
    pub port: u16,
    /// How long a probe may wait for the TCP handshake.
    pub timeout: Duration,
    pub metrics: &'a UplinkMetrics,
    pub label: &'a UplinkLabel,
    /// Called every second while waiting (the backlog gauges grow while the
    /// link is down).
    pub every_second: &'a (dyn Fn() + Sync),
}

impl Probes<'_> {
    /// Waits until the schedule says connect (`true`) or `cancel` fires
    /// (`false`), running the probes it asks for meanwhile.
    pub(crate) async fn wait_to_connect(
        &self,
        schedule: &mut Reconnect,
        rng: &mut fastrand::Rng,
        cancel: &CancellationToken,
    ) -> bool {
        // Dropped on return: probes still outstanding are aborted.
        let mut probes: JoinSet<(Instant, bool)> = JoinSet::new();
        let mut failed_in_a_row = 0u32;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let at = match schedule.next(Instant::now(), rng.f64()) {
                Action::Connect => return true,
                Action::Probe => {
                    if probes.len() < MAX_PROBES {
                        self.metrics.probes.get_or_create(self.label).inc();
                        probes.spawn(probe(self.host.to_owned(), self.port, self.timeout));
                    }
                    continue;
                }
                Action::WaitUntil(at) => at,
            };
            tokio::select! {
                _ = cancel.cancelled() => return false,
                _ = tokio::time::sleep_until(at) => {}
                _ = tick.tick() => (self.every_second)(),
                Some(done) = probes.join_next(), if !probes.is_empty() => {
                    // A probe task only ends by returning (aborts happen on drop).
                    let Ok((started, ok)) = done else { continue };
                    if !ok {
                        self.metrics.probe_failures.get_or_create(self.label).inc();
                    }
                    // A stale result (a newer probe's is in) says nothing new.
                    if schedule.probed(started, Instant::now(), ok, rng.f64()) {
                        self.log(ok, &mut failed_in_a_row);
                    }
                }
            }
        }
    }
}

impl Probes<'_> {
    /// Logs the first failure of a run, and the answer that ends one.
    fn log(&self, ok: bool, failed_in_a_row: &mut u32) {
        let endpoint = format!("{}:{}", self.host, self.port);
        if ok {
            if *failed_in_a_row > 0 {
                info!(uplink = %self.name, %endpoint, failed_probes = *failed_in_a_row,
                      "uplink endpoint answers again");
            }
            *failed_in_a_row = 0;
            return;
        }
        *failed_in_a_row += 1;
        if *failed_in_a_row == 1 {
            warn!(uplink = %self.name, %endpoint,
                  "uplink endpoint does not answer a TCP connect; probing until it does");
        } else {
            debug!(uplink = %self.name, failed_probes = *failed_in_a_row, "probe failed");
        }
    }
}

/// One probe: whether a TCP connection to `host:port` opened within
/// `timeout`. It is closed at once. Returns when it started, and the answer.
async fn probe(host: String, port: u16, timeout: Duration) -> (Instant, bool) {
    let started = Instant::now();
    let connect = TcpStream::connect((host.as_str(), port));
    let ok = matches!(tokio::time::timeout(timeout, connect).await, Ok(Ok(_)));
    (started, ok)
}
