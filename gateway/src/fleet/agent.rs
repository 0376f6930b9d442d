//! The fleet agent: one task per gateway with `[fleet]`. It reads the shadow
//! messages the fleet uplink's connection hands it, decides with
//! [`Machine`], has the daemon apply, commit or roll back ([`Request`]),
//! watches the probation, and reports.
//!
//! - On every connect the connection publishes `/get` as soon as the
//!   SUBACK is in, before any batch ([`get_on_connect`]): a change made while
//!   the gateway was offline arrives in the answer, even behind a backlog.
//! - `/get/accepted` and `/update/delta` carry the desired config and the
//!   version; both go through [`Machine::on_desired`].
//! - Probation: after an apply, the fleet uplink must be connected when the
//!   probation ends and have had a publish acknowledged since the apply (the
//!   `pending` report is one: it goes out as soon as the new session is up),
//!   and the ingest writer's heartbeat must be at most 3 s old. A probation
//!   a restart of the daemon interrupted to apply the config whole starts
//!   again after it.
//!   Otherwise the daemon returns to the last good config, and the agent
//!   reports `rolled_back` with the reason once the connection is back.
//! - Reports (`state.reported`) go out on change, at most one per
//!   `report_interval`; while disconnected the latest waits.
//! - Bounded: messages over the connection's limit are dropped there; over
//!   `max_messages_per_second` here; a document that is not what it should
//!   be is counted as invalid and ignored.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::config::FleetConfig;
use super::state::{ApplyState, Decision, Desired, Machine, Status};
use super::Request;
use crate::metrics::{FleetMetrics, UplinkMetrics};
use crate::store::Store;
use crate::uplink::control::{ControlLink, Inbound, Outbound};

/// Errors carried in a report, at most (each cut to [`MAX_ERROR_CHARS`]):
/// the shadow's state holds 8 KB, desired and reported together.
const MAX_REPORTED_ERRORS: usize = 8;
const MAX_ERROR_CHARS: usize = 300;

/// What the agent needs.
pub struct Agent {
    pub config: FleetConfig,
    pub thing: String,
    pub link: ControlLink,
    pub inbound: mpsc::Receiver<Inbound>,
    pub requests: mpsc::Sender<Request>,
    pub status: Option<Status>,
    pub store: Store,
    pub data_dir: std::path::PathBuf,
    pub uplink_metrics: UplinkMetrics,
    pub uplink_names: watch::Receiver<Vec<Arc<str>>>,
    /// The ingest writer's heartbeat (at least one a second while it runs).
    pub ingest_heartbeat: watch::Receiver<Instant>,
    pub metrics: FleetMetrics,
}

/// The oldest the ingest writer's heartbeat may be for a probation to pass:
/// three of its idle heartbeats, as the watchdog judges it.
const INGEST_STALL: Duration = Duration::from_secs(3);

/// The `/get` the fleet uplink publishes on every connect, before any
/// batch: a change made while the gateway was offline comes in its answer.
pub fn get_on_connect(thing: &str, shadow: &str) -> Outbound {
    Outbound {
        topic: format!("{}get", prefix(thing, shadow)),
        payload: json!({"clientToken": "ferry-get"}).to_string().into_bytes(),
    }
}

/// The topic prefix of a named shadow.
pub fn prefix(thing: &str, shadow: &str) -> String {
    format!("$aws/things/{thing}/shadow/name/{shadow}/")
}

/// The topics the fleet uplink subscribes to (5 of the 8 one SUBSCRIBE may
/// carry at IoT Core, and of its 50 per connection).
pub fn filters(thing: &str, shadow: &str) -> Vec<String> {
    let p = prefix(thing, shadow);
    [
        "get/accepted",
        "get/rejected",
        "update/accepted",
        "update/rejected",
        "update/delta",
    ]
    .iter()
    .map(|t| format!("{p}{t}"))
    .collect()
}

struct Probation {
    until: Instant,
    desired: Desired,
    acked: bool,
    /// Batch acknowledgements before the probation (or the last reconnect
    /// in it): more at its end count as publishes acknowledged too.
    batch_acks: u64,
}

impl Probation {
    fn new(until: Instant, desired: Desired, link: &ControlLink) -> Probation {
        Probation {
            until,
            desired,
            acked: false,
            batch_acks: link.batch_acks(),
        }
    }

    /// A publish was acknowledged since the probation began (since the last
    /// reconnect in it): a control publish, or a batch.
    fn acknowledged(&self, link: &ControlLink) -> bool {
        self.acked || link.batch_acks() > self.batch_acks
    }
}

/// Starts the agent; it ends with `cancel`.
pub fn spawn(
    agent: Agent,
    tracker: &tokio_util::task::TaskTracker,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tracker.spawn(run(agent, cancel))
}

async fn run(mut a: Agent, cancel: CancellationToken) {
    let prefix = prefix(&a.thing, &a.config.shadow);
    let mut machine = Machine::new(a.status.clone());
    let mut connected = false;
    let mut probation: Option<Probation> = None;
    let mut report_due = true;
    let mut last_report: Option<Instant> = None;
    let mut tokens = Tokens::new(a.config.max_messages_per_second);
    let mut requests_sent = 0u64;
    let mut dropped = (0, 0);
    // A probation that a restart of the daemon interrupted (to apply a
    // config whole) starts again.
    if let Some(s) = a.status.as_ref().filter(|s| s.state == ApplyState::Pending) {
        let dir = super::StateDir::new(&a.data_dir);
        if let Ok(Some(config)) = dir.config() {
            let desired = Desired::new(s.version, config);
            if desired.sha256 == s.sha256 {
                machine.resume();
                a.metrics.probation.set(1);
                info!(
                    version = s.version,
                    "fleet: restarted to apply the config whole; in probation again"
                );
                probation = Some(Probation::new(
                    Instant::now() + a.config.probation,
                    desired,
                    &a.link,
                ));
            }
        }
    }
    info!(thing = %a.thing, shadow = %a.config.shadow, uplink = %a.config.uplink, "fleet agent running");
    loop {
        // In a probation the report goes at once: its acknowledgement is
        // what the probation waits for.
        let report_at = if report_due && connected {
            match (&probation, last_report) {
                (Some(p), _) if !p.acked => Some(Instant::now()),
                (_, Some(t)) => Some(t + a.config.report_interval),
                (_, None) => Some(Instant::now()),
            }
        } else {
            None
        };
        let probation_end = probation.as_ref().map(|p| p.until);
        tokio::select! {
            _ = cancel.cancelled() => break,
            ev = a.inbound.recv() => {
                let Some(ev) = ev else { break };
                match ev {
                    Inbound::Subscribed { refused } => {
                        // The connection has sent the /get already
                        // (`get_on_connect`).
                        connected = true;
                        if refused > 0 {
                            warn!(refused, thing = %a.thing, "fleet: the broker refused shadow subscriptions; the thing's policy must allow them (README, \"Managing a fleet\")");
                        }
                        if probation.is_some() {
                            report_due = true;
                        }
                    }
                    Inbound::Disconnected => {
                        connected = false;
                        // Acknowledgements of an earlier session do not count.
                        if let Some(p) = &mut probation {
                            p.acked = false;
                            p.batch_acks = a.link.batch_acks();
                        }
                    }
                    Inbound::Acked => {
                        if let Some(p) = &mut probation {
                            p.acked = true;
                        }
                    }
                    Inbound::Publish { topic, payload } => {
                        dropped = count_dropped(&a, dropped);
                        if !tokens.take(Instant::now()) {
                            a.metrics.message("rate_limited");
                            continue;
                        }
                        let Some(kind) = topic.strip_prefix(prefix.as_str()) else {
                            a.metrics.message("invalid");
                            continue;
                        };
                        let desired = match shadow_message(kind, &payload) {
                            Ok(Some(d)) => d,
                            Ok(None) => { a.metrics.message("taken"); continue; }
                            Err(why) => {
                                warn!(topic = %topic, "fleet: ignoring a shadow message: {why}");
                                a.metrics.message("invalid");
                                continue;
                            }
                        };
                        let decision = machine.on_desired(desired.0, desired.1);
                        if handle(&mut a, &mut machine, decision, &mut probation).await {
                            report_due = true;
                        }
                    }
                }
            }
            _ = sleep_until_opt(probation_end) => {
                let Some(p) = probation.take() else { continue };
                a.metrics.probation.set(0);
                let mut status = machine.status().cloned().unwrap_or_else(|| pending_status(&p.desired));
                let ingest_age = a.ingest_heartbeat.borrow().elapsed();
                let acknowledged = p.acknowledged(&a.link);
                let reply = if connected && acknowledged && ingest_age <= INGEST_STALL {
                    status.state = ApplyState::Applied;
                    status.good_sha256 = Some(p.desired.sha256.clone());
                    ask(&a.requests, |reply| Request::Commit { status: status.clone(), config: p.desired.config.clone(), reply }).await
                } else {
                    status.state = ApplyState::RolledBack;
                    let probation = humantime::format_duration(a.config.probation);
                    status.errors = vec![if connected && acknowledged {
                        format!(
                            "ingest: the writer has not committed for {}s at the end of the probation of {probation}; the last good config runs",
                            ingest_age.as_secs()
                        )
                    } else {
                        format!(
                            "uplinks.{}: {} within the probation of {probation}; the last good config runs",
                            a.config.uplink,
                            if connected { "no publish acknowledged" } else { "not connected" },
                        )
                    }];
                    ask(&a.requests, |reply| Request::RollBack { status: status.clone(), reply }).await
                };
                let next = machine.finished(reply.unwrap_or(status));
                if let Some(d) = next {
                    handle(&mut a, &mut machine, d, &mut probation).await;
                }
                report_due = true;
            }
            _ = sleep_until_opt(report_at) => {
                dropped = count_dropped(&a, dropped);
                let report = reported(&a, machine.status());
                let token = format!("ferry-report-{requests_sent}");
                requests_sent += 1;
                let body = json!({"state": {"reported": report}, "clientToken": token});
                a.link.send(Outbound { topic: format!("{prefix}update"), payload: body.to_string().into_bytes() });
                a.metrics.reports.inc();
                last_report = Some(Instant::now());
                report_due = false;
            }
        }
    }
    debug!("fleet agent stopped");
}

/// Acts on a decision; returns whether the status changed (a report is due).
async fn handle(
    a: &mut Agent,
    machine: &mut Machine,
    decision: Decision,
    probation: &mut Option<Probation>,
) -> bool {
    match decision {
        Decision::Ignore(why) => {
            debug!("fleet: desired config ignored: {why}");
            a.metrics.message("ignored");
            false
        }
        Decision::Queued => {
            a.metrics.message("taken");
            false
        }
        Decision::AlreadyRuns => {
            a.metrics.message("taken");
            true
        }
        Decision::Apply(d) => {
            a.metrics.message("taken");
            info!(version = d.version, sha256 = %d.sha256, "fleet: applying a config from the shadow");
            let desired = d.clone();
            let status = ask(&a.requests, |reply| Request::Apply { desired, reply })
                .await
                .unwrap_or_else(|| pending_status(&d));
            let pending = status.state == ApplyState::Pending;
            machine.applying(status);
            if pending {
                *probation = Some(Probation::new(
                    Instant::now() + a.config.probation,
                    d,
                    &a.link,
                ));
            } else if let Some(next) = machine.take_next() {
                Box::pin(handle(a, machine, next, probation)).await;
            }
            true
        }
    }
}

/// Counts what the connection dropped since `before` (too large, or a
/// flood); returns the new totals.
fn count_dropped(a: &Agent, before: (u64, u64)) -> (u64, u64) {
    let now = a.link.dropped();
    for (result, n) in [("too_large", now.0 - before.0), ("flood", now.1 - before.1)] {
        if n > 0 {
            a.metrics
                .messages
                .get_or_create(&crate::metrics::ResultLabel { result })
                .inc_by(n);
        }
    }
    now
}

fn pending_status(d: &Desired) -> Status {
    Status {
        version: d.version,
        sha256: d.sha256.clone(),
        state: ApplyState::Pending,
        errors: vec![],
        good_sha256: None,
        restart: false,
    }
}

async fn ask(
    requests: &mpsc::Sender<Request>,
    make: impl FnOnce(oneshot::Sender<Status>) -> Request,
) -> Option<Status> {
    let (tx, rx) = oneshot::channel();
    requests.send(make(tx)).await.ok()?;
    rx.await.ok()
}

/// The desired config a shadow message on `PREFIX/kind` carries, as
/// (version, config), or `None` for a message that carries none (an answer
/// to a report). An error says why the message is not what it should be.
pub fn shadow_message(kind: &str, payload: &[u8]) -> Result<Option<(u64, Option<String>)>, String> {
    let doc: Value = serde_json::from_slice(payload).map_err(|e| format!("not JSON: {e}"))?;
    let version = || {
        doc.get("version")
            .and_then(Value::as_u64)
            .ok_or_else(|| "no version".to_owned())
    };
    let config = |v: Option<&Value>| -> Result<Option<String>, String> {
        match v {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(format!(
                "desired.config must be a string of TOML, not {}",
                json_type(other)
            )),
        }
    };
    match kind {
        "get/accepted" => {
            let desired = doc.pointer("/state/desired/config");
            Ok(Some((version()?, config(desired)?)))
        }
        "update/delta" => {
            let Some(c) = doc.pointer("/state/config") else {
                return Ok(None);
            };
            Ok(Some((version()?, config(Some(c))?)))
        }
        "get/rejected" | "update/rejected" => {
            let code = doc.get("code").and_then(Value::as_u64).unwrap_or(0);
            let message = doc.get("message").and_then(Value::as_str).unwrap_or("");
            if kind == "get/rejected" && code == 404 {
                debug!("fleet: no shadow yet: {message}");
            } else {
                warn!(
                    code,
                    "fleet: the shadow service refused a request ({kind}): {}",
                    ferry_core::text::excerpt(message)
                );
            }
            Ok(None)
        }
        _ => Ok(None),
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// `state.reported`: what runs, Ferry's build, and a status summary.
fn reported(a: &Agent, status: Option<&Status>) -> Value {
    let applied = match status {
        Some(s) => json!({
            "version": s.version,
            "sha256": s.sha256,
            "state": s.state.as_str(),
            "errors": s.errors.iter().take(MAX_REPORTED_ERRORS)
                .map(|e| e.chars().take(MAX_ERROR_CHARS).collect::<String>())
                .collect::<Vec<_>>(),
        }),
        None => Value::Null,
    };
    let mut uplinks = BTreeMap::new();
    for name in a.uplink_names.borrow().iter() {
        let label = UplinkMetrics::label(name);
        uplinks.insert(
            name.to_string(),
            json!({
                "connected": a.uplink_metrics.connected.get_or_create(&label).get() == 1,
                "backlog": a.uplink_metrics.backlog_records.get_or_create(&label).get(),
                "oldest_unsent_s": a.uplink_metrics.oldest_unsent_age.get_or_create(&label).get().round(),
            }),
        );
    }
    let store_bytes = std::fs::metadata(Store::file_in(&a.data_dir)).map_or(0, |m| m.len());
    json!({
        "applied": applied,
        "ferry": {"version": env!("CARGO_PKG_VERSION"), "arch": std::env::consts::ARCH},
        "status": {
            "records": a.store.heads().records,
            "store_bytes": store_bytes,
            "uplinks": uplinks,
        },
    })
}

/// At most `per_second` messages a second.
struct Tokens {
    per_second: u32,
    window: Option<Instant>,
    taken: u32,
}

impl Tokens {
    fn new(per_second: u32) -> Tokens {
        Tokens {
            per_second: per_second.max(1),
            window: None,
            taken: 0,
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        match self.window {
            Some(w) if now < w + Duration::from_secs(1) => {}
            _ => {
                self.window = Some(now);
                self.taken = 0;
            }
        }
        if self.taken >= self.per_second {
            return false;
        }
        self.taken += 1;
        true
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shadow_messages_yield_version_and_config() {
        let get = br#"{"state":{"desired":{"config":"a = 1"},"delta":{"config":"a = 1"}},"version":4,"metadata":{}}"#;
        assert_eq!(
            shadow_message("get/accepted", get),
            Ok(Some((4, Some("a = 1".to_owned()))))
        );
        let delta = br#"{"state":{"config":"b"},"version":6,"timestamp":1}"#;
        assert_eq!(
            shadow_message("update/delta", delta),
            Ok(Some((6, Some("b".to_owned()))))
        );
        assert_eq!(
            shadow_message("get/accepted", br#"{"state":{},"version":2}"#),
            Ok(Some((2, None)))
        );
        assert_eq!(
            shadow_message("update/delta", br#"{"state":{"other":1},"version":6}"#),
            Ok(None)
        );
        assert!(
            shadow_message("update/delta", br#"{"state":{"config":5},"version":6}"#)
                .unwrap_err()
                .contains("must be a string")
        );
        assert!(shadow_message("get/accepted", b"nope").is_err());
        assert!(shadow_message("get/accepted", br#"{"state":{}}"#).is_err());
    }

    #[test]
    fn the_rate_limit_refills_each_second() {
        let t0 = Instant::now();
        let mut t = Tokens::new(2);
        assert!(t.take(t0) && t.take(t0) && !t.take(t0));
        assert!(t.take(t0 + Duration::from_millis(1001)));
    }
}
