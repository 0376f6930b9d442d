//! The gateway's one-line status, for `systemctl status` (`STATUS=`) and
//! `/readyz`.
//!
//! The line is derived from the metrics, so it never says something the
//! metrics do not: records stored (the head sequence number), then each
//! uplink's state and backlog, e.g.
//! `12840 records stored; uplink iot_core connected, backlog 0` or
//! `12840 records stored; uplink iot_core disconnected, backlog 5120 (oldest 3m 12s)`
//! or, while a backlog drains,
//! `...; uplink iot_core connected, backlog 5120 (oldest 3m 12s), sending 120.0/s, drains in 43s`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::metrics::{IngestMetrics, UplinkMetrics};

/// What the status line is made of.
#[derive(Clone)]
pub struct StatusSource {
    pub ingest: IngestMetrics,
    pub uplinks: UplinkMetrics,
    /// The names of the running uplinks (they change on reload).
    pub uplink_names: watch::Receiver<Vec<Arc<str>>>,
}

impl StatusSource {
    /// The status line, from the metrics as they are now.
    pub fn line(&self) -> String {
        let mut line = format!("{} records stored", self.ingest.head_seq.get());
        let names = self.uplink_names.borrow().clone();
        if names.is_empty() {
            line.push_str("; no uplink");
        }
        for name in names {
            let label = UplinkMetrics::label(&name);
            let state = if self.uplinks.connected.get_or_create(&label).get() > 0 {
                "connected"
            } else {
                "disconnected"
            };
            let backlog = self.uplinks.backlog_records.get_or_create(&label).get();
            line.push_str(&format!("; uplink {name} {state}, backlog {backlog}"));
            let age = self.uplinks.oldest_unsent_age.get_or_create(&label).get();
            if backlog > 0 && age >= 1.0 {
                let age = Duration::from_secs(age as u64);
                line.push_str(&format!(" (oldest {})", humantime::format_duration(age)));
            }
            let rate = self.uplinks.send_rate.get_or_create(&label).get();
            let eta = self.uplinks.drain_eta.get_or_create(&label).get();
            if backlog > 0 && rate > 0.0 && eta.is_finite() && eta > 0.0 {
                let eta = Duration::from_secs(eta.round() as u64);
                line.push_str(&format!(
                    ", sending {rate:.1}/s, drains in {}",
                    humantime::format_duration(eta)
                ));
            }
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_names_every_uplink_and_its_backlog() {
        let (names_tx, uplink_names) = watch::channel(Vec::new());
        let source = StatusSource {
            ingest: IngestMetrics::new(),
            uplinks: UplinkMetrics::new(),
            uplink_names,
        };
        source.ingest.head_seq.set(12840);
        assert_eq!(source.line(), "12840 records stored; no uplink");

        names_tx.send_replace(vec!["a".into(), "b".into()]);
        let (a, b) = (UplinkMetrics::label("a"), UplinkMetrics::label("b"));
        source.uplinks.connected.get_or_create(&a).set(1);
        source.uplinks.backlog_records.get_or_create(&b).set(5120);
        source
            .uplinks
            .oldest_unsent_age
            .get_or_create(&b)
            .set(192.4);
        assert_eq!(
            source.line(),
            "12840 records stored; uplink a connected, backlog 0; \
             uplink b disconnected, backlog 5120 (oldest 3m 12s)"
        );
        // Draining: the rate and the time to go.
        source.uplinks.connected.get_or_create(&b).set(1);
        source.uplinks.send_rate.get_or_create(&b).set(120.04);
        source.uplinks.drain_eta.get_or_create(&b).set(42.6);
        assert_eq!(
            source.line(),
            "12840 records stored; uplink a connected, backlog 0; \
             uplink b connected, backlog 5120 (oldest 3m 12s), sending 120.0/s, drains in 43s"
        );
        // Not shrinking: no estimate.
        source
            .uplinks
            .drain_eta
            .get_or_create(&b)
            .set(f64::INFINITY);
        assert!(
            source.line().ends_with("(oldest 3m 12s)"),
            "{}",
            source.line()
        );
    }
}
