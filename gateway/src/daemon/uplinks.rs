//! The running uplinks, each with its own cancellation (a child of the
//! daemon's), so that a reload can restart one while the others run on.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use super::reload::tls_files_digest;
use crate::config::Config;
use crate::metrics::UplinkMetrics;
use crate::store::{Cursors, Store};
use crate::uplink::control::ControlLink;
use crate::uplink::{self, Settings};

/// Resolves every uplink's config into run settings, loading TLS material,
/// each with the digest of its TLS files ([`tls_files_digest`]).
pub fn settings(config: &Config) -> anyhow::Result<Vec<(Settings, u64)>> {
    let mut out = Vec::new();
    for (name, u) in &config.uplinks {
        let digest = tls_files_digest(u);
        let s = Settings::from_config(name, u, &config.gateway.id)
            .with_context(|| format!("uplink {name}"))?;
        out.push((s, digest));
    }
    Ok(out)
}

/// The running uplinks.
pub struct Uplinks {
    running: BTreeMap<String, Running>,
    store: Store,
    cursors: Cursors,
    metrics: UplinkMetrics,
    names: watch::Sender<Vec<Arc<str>>>,
    tracker: TaskTracker,
    cancel: CancellationToken,
    /// The uplink whose connection also carries the control plane, and its link.
    control: Option<(String, ControlLink)>,
}

struct Running {
    digest: u64,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

impl Uplinks {
    /// No uplinks yet; the receiver follows the names of those running.
    /// Each uplink runs on `tracker`, cancelled with `cancel` or on its own.
    pub fn new(
        store: Store,
        cursors: Cursors,
        metrics: UplinkMetrics,
        tracker: TaskTracker,
        cancel: CancellationToken,
    ) -> (Uplinks, watch::Receiver<Vec<Arc<str>>>) {
        let (names, names_rx) = watch::channel(Vec::new());
        let uplinks = Uplinks {
            running: BTreeMap::new(),
            store,
            cursors,
            metrics,
            names,
            tracker,
            cancel,
            control: None,
        };
        (uplinks, names_rx)
    }

    /// The uplink `name`'s connection carries `link` from its next start.
    pub fn set_control(&mut self, name: &str, link: ControlLink) {
        self.control = Some((name.to_owned(), link));
    }

    /// Starts an uplink; `digest` is its [`tls_files_digest`].
    pub fn start(&mut self, mut settings: Settings, digest: u64) {
        if let Some((name, link)) = &self.control {
            if *name == settings.name {
                settings.control = Some(link.clone());
            }
        }
        let name = settings.name.clone();
        info!(uplink = %name, endpoint = %format!("{}:{}", settings.host, settings.port), "starting uplink");
        let cancel = self.cancel.child_token();
        let task = self.tracker.spawn(uplink::run(
            settings,
            self.store.clone(),
            self.cursors.clone(),
            self.metrics.clone(),
            cancel.clone(),
        ));
        self.running.insert(
            name,
            Running {
                digest,
                cancel,
                task,
            },
        );
        self.names
            .send_replace(self.running.keys().map(|n| n.as_str().into()).collect());
    }

    /// The TLS digest the uplink `name` runs with, if it runs.
    pub fn digest(&self, name: &str) -> Option<u64> {
        self.running.get(name).map(|r| r.digest)
    }

    /// Stops the uplink of the same name (draining what is in flight) and
    /// starts it again with `settings`.
    pub async fn restart(&mut self, settings: Settings, digest: u64) {
        if let Some(old) = self.running.remove(&settings.name) {
            old.cancel.cancel();
            let _ = old.task.await;
        }
        self.start(settings, digest);
    }

    /// Stops every uplink, each draining what it has in flight.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        for (_, r) in self.running {
            let _ = r.task.await;
        }
    }
}
