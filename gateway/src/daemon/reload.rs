//! SIGHUP: read the config file again and apply what can change in place.
//!
//! The new file is checked as `ferry validate` checks it, and the TLS files
//! of every uplink to restart are loaded; if anything is wrong, the problems
//! are logged and nothing changes (a bad config never stops a running
//! gateway). Otherwise:
//!
//! | part | on reload |
//! | --- | --- |
//! | `gateway.log_level` | applied (unless `RUST_LOG` is set, which wins) |
//! | an existing `[uplinks.NAME]` whose keys, or whose `ca`/`cert`/`key` files' contents, changed | that uplink drains its in-flight batches and starts again with the new settings, from its cursor; the others keep running |
//! | `[[pipeline]]` and `[devices.NAME]` | applied together, as one: every submission after the reload goes through the new steps with the new registry, none through a mix |
//! | an existing `[routes.NAME]`: `sources`, `devices`, `fields`, `batch_records`, the `deadband` (added, removed or changed: its state is the last reported values, valid under any threshold), the window's `aggregates` and `grace` | applied from the route's next batch; its state is kept |
//! | a route's `window` added or removed, or its `size` changed | not applied (the route's other changes are): the open windows in the stored state are intervals of the old size, and the route's stream would change meaning under its uplink; logged as needing a restart |
//! | an uplink or a route added or removed, an uplink's `route`, `gateway.id`, `gateway.data_dir`, `[store]`, `[sources]`, `[metrics]`, `[api]`, `[fleet]` | not applied: logged as needing a restart, the running value is kept |
//!
//! With `[fleet]`, the config read is the local file with the fleet's config
//! from the state directory over it ([`crate::fleet::load_effective`]), and a
//! config from the fleet is applied through [`apply_config`] like a reload.
//!
//! Why the others need a restart: the embedded broker cannot release its
//! port while the process lives; the store and its retention are opened with
//! the set of uplinks and routes whose unconsumed records they protect (so
//! adding, removing or re-routing an uplink, or adding a route, needs a
//! restart); the metrics endpoint and the gateway id are bound into every
//! running part.
//!
//! A window size change needs more than a restart to be meaningful: the
//! route's state holds windows of the old size. After a restart with a new
//! size, the open windows of the old size are closed as they fall due and
//! new ones are of the new size; for a clean cut, rename the route.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;
use tracing::{error, info, warn};
use tracing_subscriber::{reload, EnvFilter, Registry};

use super::uplinks::Uplinks;
use crate::config::{Config, LogLevel, RouteConfig, UplinkConfig};
use crate::metrics::{ConfigMetrics, PipelineMetrics};
use crate::pipeline::Pipeline;
use crate::uplink::Settings;

/// What the daemon needs to reload: where the config came from, and the
/// log filter to change.
pub struct ReloadContext {
    /// The config file; `None` when running on the embedded default (a
    /// SIGHUP then has nothing to read).
    pub path: Option<PathBuf>,
    pub log: LogControl,
}

/// Changes the log level of the running process.
pub struct LogControl {
    handle: Option<reload::Handle<EnvFilter, Registry>>,
    /// `RUST_LOG` is set: it wins over `gateway.log_level`.
    from_env: bool,
}

impl LogControl {
    pub fn new(handle: reload::Handle<EnvFilter, Registry>, from_env: bool) -> LogControl {
        LogControl {
            handle: Some(handle),
            from_env,
        }
    }

    /// A control that changes nothing (logging set up elsewhere, as in tests).
    pub fn none() -> LogControl {
        LogControl {
            handle: None,
            from_env: false,
        }
    }

    /// Sets the level; an error says why it was not.
    pub fn set(&self, level: LogLevel) -> Result<(), String> {
        if self.from_env {
            return Err("RUST_LOG is set and takes precedence".to_owned());
        }
        let Some(handle) = &self.handle else {
            return Err("logging is not Ferry's own".to_owned());
        };
        handle
            .reload(filter_for(level))
            .map_err(|e| format!("cannot change the log filter: {e}"))
    }
}

/// The log filter for `level`: the embedded broker's own logs stay off (see
/// `cli.rs`).
pub fn filter_for(level: LogLevel) -> EnvFilter {
    EnvFilter::new(format!("{},rumqttd=off", level.as_str()))
}

/// What a reload does with a new, valid config.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The config to run from now on: the new one where it can be applied,
    /// the running one elsewhere.
    pub config: Config,
    /// The new log level, if it changed.
    pub log_level: Option<LogLevel>,
    /// Uplinks whose keys changed: restarted with their new settings.
    pub restart: BTreeSet<String>,
    /// `[[pipeline]]` or `[devices]` changed: the pipeline is replaced.
    pub pipeline: bool,
    /// Routes whose config changes in place, with the config they run now.
    pub routes: BTreeMap<String, RouteConfig>,
    /// What changed but needs a restart of Ferry; kept as it runs.
    pub kept: Vec<String>,
}

/// Compares the running config with a new one.
pub fn plan(running: &Config, new: Config) -> Plan {
    let mut config = running.clone();
    let mut kept = Vec::new();
    let mut log_level = None;
    if new.gateway.log_level != running.gateway.log_level {
        log_level = Some(new.gateway.log_level);
        config.gateway.log_level = new.gateway.log_level;
    }
    if new.gateway.id != running.gateway.id {
        kept.push("gateway.id".to_owned());
    }
    if new.gateway.data_dir != running.gateway.data_dir {
        kept.push("gateway.data_dir".to_owned());
    }
    if new.store != running.store {
        kept.push("[store]".to_owned());
    }
    if new.metrics != running.metrics {
        kept.push("[metrics]".to_owned());
    }
    if new.api != running.api {
        kept.push("[api]".to_owned());
    }
    if new.fleet != running.fleet {
        kept.push("[fleet]".to_owned());
    }
    let pipeline = new.pipeline != running.pipeline;
    if pipeline {
        config.pipeline = new.pipeline.clone();
    }
    kept.extend(changed_keys(&running.sources, &new.sources, "sources"));
    let mut routes = BTreeMap::new();
    for name in changed_keys(&running.routes, &new.routes, "") {
        let name = &name[1..];
        match (running.routes.get(name), new.routes.get(name)) {
            (Some(old), Some(cfg)) => {
                let (merged, window_kept) = route_in_place(old, cfg);
                if let Some(what) = window_kept {
                    kept.push(format!("routes.{name}.window{what}"));
                }
                if merged != *old {
                    config.routes.insert(name.to_owned(), merged.clone());
                    routes.insert(name.to_owned(), merged);
                }
            }
            (Some(_), None) => kept.push(format!("routes.{name} (removed)")),
            _ => kept.push(format!("routes.{name} (added)")),
        }
    }
    let mut restart = BTreeSet::new();
    for name in running.uplinks.keys().chain(new.uplinks.keys()) {
        match (running.uplinks.get(name), new.uplinks.get(name)) {
            // Which stream it reads is also what retention protects for it.
            (Some(old), Some(cfg)) if old.route != cfg.route => {
                kept.push(format!("uplinks.{name}.route"));
            }
            (Some(old), Some(cfg)) if old != cfg => {
                config.uplinks.insert(name.clone(), cfg.clone());
                restart.insert(name.clone());
            }
            (Some(_), None) => kept.push(format!("uplinks.{name} (removed)")),
            (None, Some(_)) => kept.push(format!("uplinks.{name} (added)")),
            _ => {}
        }
    }
    kept.dedup();
    Plan {
        config,
        log_level,
        restart,
        pipeline,
        routes,
        kept,
    }
}

/// What of `new` a running route can take: everything but a window added,
/// removed or resized (then the old window is kept, and what was not
/// applied is returned as a key suffix).
fn route_in_place(old: &RouteConfig, new: &RouteConfig) -> (RouteConfig, Option<&'static str>) {
    let mut merged = new.clone();
    let kept = match (&old.window, &new.window) {
        (Some(a), Some(b)) if a.size != b.size => Some(".size"),
        (None, Some(_)) => Some(" (added)"),
        (Some(_), None) => Some(" (removed)"),
        _ => None,
    };
    if kept.is_some() {
        merged.window = old.window.clone();
    }
    (merged, kept)
}

/// `section.NAME` for every entry added, removed or changed.
fn changed_keys<T: PartialEq>(
    old: &BTreeMap<String, T>,
    new: &BTreeMap<String, T>,
    section: &str,
) -> Vec<String> {
    let names: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    names
        .into_iter()
        .filter(|name| old.get(*name) != new.get(*name))
        .map(|name| format!("{section}.{name}"))
        .collect()
}

/// A digest of the contents of an uplink's TLS files, to notice a
/// certificate replaced under the same name. Files are read as loading
/// reads them (regular files, bounded); unreadable ones digest as empty
/// (loading them reports the error).
pub fn tls_files_digest(cfg: &UplinkConfig) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for path in [&cfg.ca, &cfg.cert, &cfg.key].into_iter().flatten() {
        path.hash(&mut h);
        ferry_core::files::read_bounded(path, ferry_core::files::MAX_FILE_BYTES)
            .unwrap_or_default()
            .hash(&mut h);
    }
    h.finish()
}

/// What a reload can change in the running daemon.
pub struct Live {
    pub uplinks: Uplinks,
    pub pipeline: watch::Sender<Arc<Pipeline>>,
    pub pipeline_metrics: PipelineMetrics,
    /// Each route's config, followed by its task.
    pub routes: BTreeMap<String, watch::Sender<RouteConfig>>,
    pub config_metrics: ConfigMetrics,
}

/// SIGHUP: reads the config file again and applies what can change in
/// place (see the module doc); a config with any problem changes nothing.
pub async fn apply(ctx: &ReloadContext, running: &mut Config, live: &mut Live) {
    let Some(path) = &ctx.path else {
        warn!("reload: running on the embedded default config; there is no file to read again");
        live.config_metrics.reloaded("no_file");
        return;
    };
    info!(config = %path.display(), "reloading the config");
    let new = match crate::fleet::load_effective(path) {
        Ok((new, warnings)) => {
            for line in warnings.to_string().lines() {
                warn!("reload: {}", line.trim_start_matches("ferry: "));
            }
            new
        }
        Err(e) => {
            // One event per problem, as `ferry validate` prints them.
            for line in e.to_string().lines() {
                error!("reload: {}", line.trim_start_matches("ferry: "));
            }
            error!("reload: the config has problems; still running with the previous one");
            live.config_metrics.reloaded("refused");
            return;
        }
    };
    let result = if apply_config(ctx, running, live, new).await.is_ok() {
        "applied"
    } else {
        "refused"
    };
    live.config_metrics.reloaded(result);
}

/// Applies a new, valid config to the running daemon as a reload does (what
/// can change in place, see the module doc). Returns what changed but needs
/// a restart, or, if an uplink to restart cannot be loaded, why nothing
/// changed.
pub async fn apply_config(
    ctx: &ReloadContext,
    running: &mut Config,
    live: &mut Live,
    new: Config,
) -> Result<Vec<String>, String> {
    let plan = plan(running, new);
    // Load every uplink to restart before stopping any: all or nothing.
    let mut restarts = Vec::new();
    for (name, u) in &plan.config.uplinks {
        let digest = tls_files_digest(u);
        if !plan.restart.contains(name) && live.uplinks.digest(name) == Some(digest) {
            continue;
        }
        match Settings::from_config(name, u, &plan.config.gateway.id) {
            Ok(s) => restarts.push((s, digest)),
            Err(e) => {
                error!(uplink = %name, error = %format!("{e:#}"), "reload: cannot load the uplink; still running with the previous config");
                return Err(format!("uplinks.{name}: {e:#}"));
            }
        }
    }
    if let Some(level) = plan.log_level {
        match ctx.log.set(level) {
            Ok(()) => info!(log_level = level.as_str(), "reload: log level changed"),
            Err(why) => warn!(
                log_level = level.as_str(),
                "reload: log level not changed: {why}"
            ),
        }
    }
    for key in &plan.kept {
        warn!("reload: {key} changed, which needs a restart (systemctl restart ferry); running on with the previous value");
    }
    if plan.pipeline {
        let p = &plan.config.pipeline;
        live.pipeline
            .send_replace(Pipeline::new(p, live.pipeline_metrics.clone()));
        info!(
            steps = p.steps.len(),
            devices = p.devices.len(),
            "reload: pipeline and device registry replaced"
        );
    }
    for (name, cfg) in &plan.routes {
        if let Some(tx) = live.routes.get(name) {
            tx.send_replace(cfg.clone());
            info!(route = %name, "reload: route config applied from its next batch");
        }
    }
    let restarted: Vec<String> = restarts.iter().map(|(s, _)| s.name.clone()).collect();
    for (s, digest) in restarts {
        live.uplinks.restart(s, digest).await;
    }
    let routes: Vec<&String> = plan.routes.keys().collect();
    info!(restarted_uplinks = ?restarted, pipeline_replaced = plan.pipeline, routes_changed = ?routes, needs_restart = ?plan.kept, "config reloaded");
    *running = plan.config;
    Ok(plan.kept)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const BASE: &str = r#"
[gateway]
id = "g"
log_level = "info"

[sources.local]
type = "mqtt_broker"
listen = "127.0.0.1:0"

[uplinks.a]
endpoint = "127.0.0.1:1"
plaintext = true

[uplinks.b]
endpoint = "127.0.0.1:2"
plaintext = true
"#;

    fn config(text: &str) -> Config {
        Config::from_toml(text, Path::new("t.toml")).unwrap()
    }

    #[test]
    fn the_same_config_changes_nothing() {
        let running = config(BASE);
        let p = plan(&running, running.clone());
        assert_eq!(p.config, running);
        assert_eq!((p.log_level, p.restart.len(), p.kept.len()), (None, 0, 0));
        assert!(!p.pipeline && p.routes.is_empty());
    }

    #[test]
    fn log_level_and_changed_uplinks_apply_the_rest_is_kept() {
        let running = config(BASE);
        let new = config(
            &BASE
                .replace("log_level = \"info\"", "log_level = \"debug\"")
                .replace("127.0.0.1:2", "127.0.0.1:3")
                .replace("id = \"g\"", "id = \"h\"")
                .replace("127.0.0.1:0", "127.0.0.1:1884")
                .replace("[uplinks.a]", "[uplinks.c]"),
        );
        let p = plan(&running, new.clone());
        assert_eq!(p.log_level, Some(LogLevel::Debug));
        assert_eq!(p.restart, BTreeSet::from(["b".to_owned()]));
        assert_eq!(
            p.kept,
            [
                "gateway.id",
                "sources.local",
                "uplinks.a (removed)",
                "uplinks.c (added)"
            ]
        );
        // Applied: the level and uplink b; kept: everything else.
        assert_eq!(p.config.gateway.log_level, LogLevel::Debug);
        assert_eq!(p.config.gateway.id, "g");
        assert_eq!(p.config.uplinks["b"], new.uplinks["b"]);
        assert_eq!(p.config.uplinks["a"], running.uplinks["a"]);
        assert!(!p.config.uplinks.contains_key("c"));
        assert_eq!(p.config.sources, running.sources);
    }

    #[test]
    fn pipeline_and_route_changes_apply_a_window_resize_is_kept() {
        let routes = "[[pipeline]]\nfilter = \"t > 0\"\n[devices.7]\nsite = \"a\"\n\
            [routes.keep]\nfields = [\"t\"]\n\
            [routes.r]\ndeadband = { absolute = 1 }\nwindow = { size = \"1m\", grace = \"5s\" }\n\
            [routes.s]\nwindow = { size = \"1m\" }\n";
        let running = config(&format!("{BASE}{routes}"));
        let new = config(&format!(
            "{BASE}{}[routes.t]\n",
            routes
                .replace("site = \"a\"", "site = \"b\"")
                .replace(
                    "absolute = 1 }\nwindow = { size = \"1m\", grace = \"5s\"",
                    "absolute = 2 }\nwindow = { size = \"1m\", grace = \"9s\""
                )
                .replace(
                    "[routes.s]\nwindow = { size = \"1m\" }",
                    "[routes.s]\nfields = [\"t\"]\nwindow = { size = \"5m\" }"
                )
        ));
        let p = plan(&running, new.clone());
        assert!(p.pipeline);
        assert_eq!(p.config.pipeline, new.pipeline);
        // r: deadband and grace in place; s: its select, but not the resize.
        assert_eq!(p.routes.keys().collect::<Vec<_>>(), ["r", "s"]);
        assert_eq!(p.routes["r"], new.routes["r"]);
        assert_eq!(p.routes["s"].fields, ["t"]);
        assert_eq!(p.routes["s"].window, running.routes["s"].window);
        assert_eq!(p.config.routes["s"], p.routes["s"]);
        assert!(!p.config.routes.contains_key("t"));
        assert_eq!(p.kept, ["routes.s.window.size", "routes.t (added)"]);
    }

    #[test]
    fn a_replaced_certificate_changes_the_digest() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("cert.pem");
        std::fs::write(&cert, "one").unwrap();
        let mut cfg = config(BASE).uplinks["a"].clone();
        cfg.cert = Some(cert.clone());
        let before = tls_files_digest(&cfg);
        assert_eq!(before, tls_files_digest(&cfg));
        std::fs::write(&cert, "two").unwrap();
        assert_ne!(before, tls_files_digest(&cfg));
    }
}
