//! Runs the gateway: opens the store, starts ingest, sources and uplinks, and
//! drains them in order on SIGTERM/SIGINT.
//!
//! Shutdown order, each step bounded in time:
//! 1. sources stop taking messages (a subscriber acknowledges what is committed);
//! 2. ingest commits what it holds (it ends when the last source's sink is gone);
//! 3. uplinks stop publishing and wait for the PUBACKs in flight (`drain_timeout`),
//!    then their last cursor moves are committed;
//! 4. the process exits 0.
//!
//! Under systemd (`Type=notify`, see `notify.rs`): `READY=1` once the store is
//! open, the sources are started and the uplinks run (the query index
//! replays the log in the background, `query/replay.rs`: readiness does not
//! wait for it); `WATCHDOG=1` while the
//! ingest writer is alive and `STATUS=` as it changes (`watchdog.rs`);
//! `STOPPING=1` when shutdown begins. SIGHUP reloads the config file
//! (`reload.rs`) between `RELOADING=1` and `READY=1`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ferry_core::sink::Sink;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::{Config, RouteConfig, SourceConfig, UplinkConfig};
use crate::metrics::{
    self, BrokerMetrics, IngestMetrics, ModbusMetrics, PipelineMetrics, UplinkMetrics,
};
use crate::notify::{Notifier, State};
use crate::pipeline::{spawn_pipeline_with, Pipeline};
use crate::query::{Index, IndexOptions};
use crate::reload::{self, ReloadContext, Uplinks};
use crate::route;
use crate::status::StatusSource;
use crate::store::{Retention, Store, StoreOptions, Stream, Writer, WriterSettings};
use crate::uplink::{self, batch::Topic, Settings};
use crate::watchdog::{self, Timing, Watchdog};

/// Submissions the pipeline task holds before sources wait.
const PIPELINE_QUEUE: usize = 16;

/// How long sources get to stop before ingest is closed regardless.
const SOURCE_STOP_GRACE: Duration = Duration::from_secs(5);

/// Runs until SIGTERM or SIGINT, then shuts down gracefully; SIGHUP
/// reloads the config.
pub async fn run(config: Config, reload: ReloadContext) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    // Installed first: SIGHUP's default action would end the process.
    let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(1);
    match signal(SignalKind::hangup()) {
        Ok(mut hup) => {
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    // One pending reload is enough: it reads the latest file.
                    let _ = reload_tx.try_send(());
                }
            });
        }
        Err(e) => warn!(error = %e, "cannot handle SIGHUP; reloading is not possible"),
    }
    let shutdown = CancellationToken::new();
    let signals = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        info!("shutting down");
        signals.cancel();
    });
    run_until(config, reload, reload_rx, shutdown).await
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            // No signal handlers (unusual): only Ctrl-C through tokio's fallback.
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Runs until `shutdown` is cancelled; each message on `reloads` reloads
/// the config.
pub async fn run_until(
    config: Config,
    reload: ReloadContext,
    mut reloads: tokio::sync::mpsc::Receiver<()>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let notifier = Notifier::from_env().map(Arc::new);
    // Everything that can fail on the operator's input fails here, before a
    // port is bound or the store is touched.
    let uplinks = uplink_settings(&config)?;

    let data_dir = &config.gateway.data_dir;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("gateway.data_dir: cannot create {}", data_dir.display()))?;
    let store_path = Store::file_in(data_dir);
    let (store, opened) = Store::open_or_salvage(
        &store_path,
        &StoreOptions {
            cache_bytes: config.store.cache_size.as_u64() as usize,
        },
    )
    .map_err(|e| {
        let unwritable = e.is_unwritable();
        let e = anyhow::Error::new(e);
        if unwritable {
            e.context(format!(
                "the store {} cannot be written: its file system is read-only or the \
                 directory is not writable by this user (gateway.data_dir)",
                store_path.display()
            ))
        } else {
            e
        }
    })?;
    let heads = store.heads();
    info!(store = %store_path.display(), records = heads.records, dead_letters = heads.dead, "store open");
    // The query index replays the log where it is behind (all of it the
    // first time) in the background, beside ingest, which starts at once:
    // readiness does not wait for it, and queries say how far behind it is.
    let query_metrics = metrics::QueryMetrics::new();
    let index = Arc::new(
        Index::open_without_catch_up(
            &store,
            IndexOptions {
                metrics: query_metrics.clone(),
                memory_budget: config.store.index_memory.as_u64() as usize,
                ..IndexOptions::default()
            },
        )
        .context("query index")?,
    );
    // Before the writer's first transaction, so that it leaves the log to the replay.
    let replay = index.replay_in_background(&store);

    let mut registry = metrics::registry();
    metrics::register_build_info(&mut registry);
    let ingest_metrics = IngestMetrics::new();
    ingest_metrics.register(&mut registry);
    ingest_metrics.count_store_open(&opened);
    let uplink_metrics = UplinkMetrics::new();
    uplink_metrics.register(&mut registry);
    let modbus_metrics = Arc::new(ModbusMetrics::new());
    modbus_metrics.register(&mut registry);
    let broker_metrics = Arc::new(BrokerMetrics::new());
    broker_metrics.register(&mut registry);
    let pipeline_metrics = PipelineMetrics::new();
    pipeline_metrics.register(&mut registry);
    query_metrics.register(&mut registry);
    let api_metrics = metrics::ApiMetrics::new();
    api_metrics.register(&mut registry);
    let listener_metrics = metrics::ListenerMetrics::new();
    listener_metrics.register(&mut registry);
    let config_metrics = metrics::ConfigMetrics::new();
    config_metrics.register(&mut registry);

    let (ready_tx, ready_rx) = watch::channel(None);
    let http_cancel = CancellationToken::new();
    if let Some(addr) = config.metrics.listen {
        let listener = crate::http::bind(addr).await?;
        tokio::spawn(crate::http::serve(
            listener,
            Arc::new(registry),
            ready_rx,
            config.metrics.limits(),
            listener_metrics.clone(),
            http_cancel.clone(),
        ));
    }

    let api_listener = match config.api.listen {
        Some(addr) => Some(crate::api::bind(addr).await?),
        None => None,
    };

    let ingest = Writer::spawn(
        store.clone(),
        WriterSettings {
            commit_interval: config.store.commit_interval,
            commit_max_records: config.store.commit_max_records.get(),
            cursor_flush_interval: config.store.cursor_flush_interval,
            queue: config.store.queue.get(),
            retention: Retention {
                max_disk: config.store.max_disk.as_u64(),
                max_age: config.store.max_age,
                when_full: config.store.when_full,
            },
            // Retention keeps what these have not consumed of the raw stream:
            // the uplinks sending it, and the routes.
            consumers: config
                .uplinks
                .iter()
                .filter(|(_, u)| u.route.is_none())
                .map(|(name, _)| Arc::from(uplink::cursor_name(name)))
                .chain(
                    config
                        .routes
                        .keys()
                        .map(|r| Arc::from(route::cursor_name(r))),
                )
                .collect(),
            // ... and on route streams, what the uplinks sending them have not.
            route_consumers: config
                .uplinks
                .iter()
                .filter_map(|(name, u)| {
                    let route = u.route.as_deref()?;
                    Some((Arc::from(route), Arc::from(uplink::cursor_name(name))))
                })
                .collect(),
            index: Some(index.clone()),
            limits: crate::store::limits::Limits {
                max_devices: config.store.max_devices,
                max_series: config.store.max_series,
                max_fields_per_device: config.store.max_fields_per_device,
            },
        },
        ingest_metrics.clone(),
    );

    // The pipeline sits between the sources and ingest (with no steps it
    // only forwards, and a reload can give it some).
    let (pipeline_tx, pipeline_rx) =
        watch::channel(Pipeline::new(&config.pipeline, pipeline_metrics.clone()));
    // Its own queue is short: ingest's queue is where submissions wait, so
    // the pipeline adds little to what a broker source has acknowledged and
    // not yet committed.
    let (source_sink, pipeline_task) =
        spawn_pipeline_with(pipeline_rx, ingest.sink.clone(), PIPELINE_QUEUE);
    drop(ingest.sink);

    let sources_cancel = CancellationToken::new();
    let mut sources = JoinSet::new();
    let mut listening = Vec::new();
    for (name, source) in &config.sources {
        start_source(
            &mut sources,
            &mut listening,
            name,
            source,
            &config.gateway.id,
            source_sink.clone(),
            &modbus_metrics,
            &broker_metrics,
            sources_cancel.clone(),
        );
    }
    drop(source_sink);

    let (mut running_uplinks, uplink_names) = Uplinks::new(
        store.clone(),
        ingest.cursors.clone(),
        uplink_metrics.clone(),
    );
    for (settings, digest) in uplinks {
        running_uplinks.start(settings, digest);
    }
    drop(ingest.cursors);
    let routes_cancel = CancellationToken::new();
    let mut routes = Vec::new();
    let mut route_configs = BTreeMap::new();
    let clock = route::Clock::new();
    for (name, cfg) in &config.routes {
        let (tx, rx) = watch::channel(cfg.clone());
        route_configs.insert(name.clone(), tx);
        routes.push(route::spawn_route_with(
            name,
            rx,
            clock,
            store.clone(),
            ingest.routes.clone(),
            pipeline_metrics.clone(),
            routes_cancel.clone(),
        ));
    }
    drop(ingest.routes);
    let mut live = Live {
        uplinks: running_uplinks,
        pipeline: pipeline_tx,
        pipeline_metrics: pipeline_metrics.clone(),
        routes: route_configs,
        config_metrics,
    };
    if let Some(listener) = api_listener {
        let engine = crate::query::Engine::new(store.clone(), index);
        let ctx = crate::api::ApiContext::new(
            &config,
            engine,
            &ingest_metrics,
            &uplink_metrics,
            &api_metrics,
            uplink_names.clone(),
        );
        tokio::spawn(crate::api::serve_with(
            listener,
            Arc::new(ctx),
            config.api.limits(),
            listener_metrics.clone(),
            http_cancel.clone(),
        ));
    }
    // Ready once every embedded broker accepts connections (a source that
    // failed instead drops its sender and is reported below).
    for ready in listening {
        let _ = tokio::time::timeout(Duration::from_secs(30), ready).await;
    }
    let status = StatusSource {
        ingest: ingest_metrics,
        uplinks: uplink_metrics,
        uplink_names,
    };
    let line = status.line();
    ready_tx.send_replace(Some(line.as_str().into()));
    if let Some(n) = &notifier {
        n.notify(&[State::Ready, State::Status(&line)]);
    }
    info!(gateway = %config.gateway.id, sources = config.sources.len(), uplinks = config.uplinks.len(), "ferry running");
    let timing = Timing::for_timeout(notifier.as_ref().and_then(|n| n.watchdog_timeout()));
    let supervisor_cancel = CancellationToken::new();
    let supervisor = tokio::spawn(watchdog::run(
        notifier.clone(),
        Watchdog::new(ingest.heartbeat, timing.stall),
        status,
        ready_tx,
        timing.period,
        supervisor_cancel.clone(),
    ));

    // Run until asked to stop or a source fails for good; reload on SIGHUP.
    let mut config = config;
    let mut failure = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(()) = reloads.recv() => {
                if let Some(n) = &notifier {
                    n.notify(&[State::Reloading]);
                }
                reload_config(&reload, &mut config, &mut live).await;
                if let Some(n) = &notifier {
                    n.notify(&[State::Ready]);
                }
            }
            Some(done) = sources.join_next() => {
                match done {
                    Ok(Ok(())) => warn!("a source stopped on its own"),
                    Ok(Err(e)) => { error!(error = %e, "source failed"); failure = Some(e); }
                    Err(e) => { error!(error = %e, "source task panicked"); failure = Some(anyhow::anyhow!("source task panicked: {e}")); }
                }
                break;
            }
        }
    }
    if let Some(n) = &notifier {
        n.notify(&[State::Stopping, State::Status("stopping")]);
    }
    supervisor_cancel.cancel();
    let _ = supervisor.await;

    // 1. Sources.
    sources_cancel.cancel();
    let stopped = tokio::time::timeout(SOURCE_STOP_GRACE, async {
        while let Some(done) = sources.join_next().await {
            if let Ok(Err(e)) = done {
                warn!(error = %e, "source ended with an error");
            }
        }
    })
    .await;
    if stopped.is_err() {
        warn!("sources did not stop in time; closing ingest");
        sources.abort_all();
        while sources.join_next().await.is_some() {}
    }
    pipeline_task.await.context("pipeline")?;
    // Routes stop between commits; their state is committed with their output.
    routes_cancel.cancel();
    for task in routes {
        task.await.context("route")?;
    }
    // 3. Uplinks: drain what is in flight.
    live.uplinks.shutdown().await;
    // The index's replay stops after its chunk under way (what it
    // committed stays; the next start continues from it).
    if let Some(replay) = replay {
        let _ = tokio::task::spawn_blocking(move || replay.stop()).await;
    }
    // 2 and the last cursor moves: ingest ends after its final commit.
    ingest.task.await.context("ingest writer")?;
    http_cancel.cancel();
    let heads = store.heads();
    info!(records = heads.records, "ferry stopped");
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[allow(clippy::too_many_arguments)]
fn start_source(
    tasks: &mut JoinSet<anyhow::Result<()>>,
    #[cfg_attr(
        not(feature = "embedded-broker"),
        allow(unused_variables, clippy::ptr_arg)
    )]
    listening: &mut Vec<tokio::sync::oneshot::Receiver<std::net::SocketAddr>>,
    name: &str,
    source: &SourceConfig,
    gateway: &str,
    sink: Sink,
    modbus_metrics: &Arc<ModbusMetrics>,
    #[cfg_attr(not(feature = "embedded-broker"), allow(unused_variables))] broker_metrics: &Arc<
        BrokerMetrics,
    >,
    cancel: CancellationToken,
) {
    let name: Arc<str> = name.into();
    match source {
        #[cfg(feature = "embedded-broker")]
        SourceConfig::MqttBroker(cfg) => {
            let (cfg, observer) = (cfg.clone(), broker_metrics.clone());
            let (ready, ready_rx) = tokio::sync::oneshot::channel();
            listening.push(ready_rx);
            tasks.spawn(async move {
                ferry_sources::mqtt::run_broker_observed(
                    name.clone(),
                    cfg,
                    sink,
                    observer,
                    cancel,
                    Some(ready),
                )
                .await
                .with_context(|| format!("source {name}"))
            });
        }
        // The config loader refuses `mqtt_broker` in such a build.
        #[cfg(not(feature = "embedded-broker"))]
        SourceConfig::MqttBroker(_) => {
            tasks.spawn(async move {
                Err(anyhow::anyhow!(
                    "source {name}: this build of ferry has no embedded broker"
                ))
            });
        }
        SourceConfig::MqttSubscribe(cfg) => {
            let cfg = cfg.clone();
            let gateway = gateway.to_owned();
            tasks.spawn(async move {
                ferry_sources::mqtt::run_subscriber(name.clone(), &gateway, cfg, sink, cancel)
                    .await
                    .with_context(|| format!("source {name}"))
            });
        }
        SourceConfig::ModbusTcp(cfg) => {
            let (cfg, observer) = (cfg.clone(), modbus_metrics.clone());
            tasks.spawn(async move {
                ferry_sources::modbus::run_modbus_tcp(name.clone(), cfg, sink, observer, cancel)
                    .await
                    .with_context(|| format!("source {name}"))
            });
        }
        SourceConfig::ModbusRtu(cfg) => {
            let (cfg, observer) = (cfg.clone(), modbus_metrics.clone());
            tasks.spawn(async move {
                ferry_sources::modbus::run_modbus_rtu(name.clone(), cfg, sink, observer, cancel)
                    .await
                    .with_context(|| format!("source {name}"))
            });
        }
    }
}

/// Resolves every uplink's config into run settings, loading TLS material,
/// each with the digest of its TLS files.
fn uplink_settings(config: &Config) -> anyhow::Result<Vec<(Settings, u64)>> {
    let mut out = Vec::new();
    for (name, u) in &config.uplinks {
        let digest = reload::tls_files_digest(u);
        let s = settings(name, u, &config.gateway.id).with_context(|| format!("uplink {name}"))?;
        out.push((s, digest));
    }
    Ok(out)
}

/// What a reload can change in the running daemon.
struct Live {
    uplinks: Uplinks,
    pipeline: watch::Sender<Arc<Pipeline>>,
    pipeline_metrics: PipelineMetrics,
    /// Each route's config, followed by its task.
    routes: BTreeMap<String, watch::Sender<RouteConfig>>,
    config_metrics: metrics::ConfigMetrics,
}

/// SIGHUP: reads the config file again and applies what can change in
/// place (see `reload.rs`); a config with any problem changes nothing.
async fn reload_config(ctx: &ReloadContext, running: &mut Config, live: &mut Live) {
    let uplinks = &mut live.uplinks;
    let Some(path) = &ctx.path else {
        warn!("reload: running on the embedded default config; there is no file to read again");
        live.config_metrics.reloaded("no_file");
        return;
    };
    info!(config = %path.display(), "reloading the config");
    let new = match Config::load_with_warnings(path) {
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
    let plan = reload::plan(running, new);
    // Load every uplink to restart before stopping any: all or nothing.
    let mut restarts = Vec::new();
    for (name, u) in &plan.config.uplinks {
        let digest = reload::tls_files_digest(u);
        if !plan.restart.contains(name) && uplinks.digest(name) == Some(digest) {
            continue;
        }
        match settings(name, u, &plan.config.gateway.id) {
            Ok(s) => restarts.push((s, digest)),
            Err(e) => {
                error!(uplink = %name, error = %format!("{e:#}"), "reload: cannot load the uplink; still running with the previous config");
                live.config_metrics.reloaded("refused");
                return;
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
    live.config_metrics.reloaded("applied");
    *running = plan.config;
}

fn settings(name: &str, u: &UplinkConfig, gateway: &str) -> anyhow::Result<Settings> {
    let (host, port) = u
        .endpoint
        .rsplit_once(':')
        .and_then(|(h, p)| {
            Some((
                h.trim_matches(|c| c == '[' || c == ']'),
                p.parse::<u16>().ok()?,
            ))
        })
        .with_context(|| format!("endpoint `{}` is not host:port", u.endpoint))?;
    let tls = if u.plaintext {
        warn!(
            uplink = name,
            "plaintext MQTT: for tests only, never toward the cloud"
        );
        None
    } else {
        let (Some(ca), Some(cert), Some(key)) = (&u.ca, &u.cert, &u.key) else {
            anyhow::bail!("ca, cert and key are required unless plaintext = true");
        };
        Some(uplink::tls::client_config(ca, cert, key, &u.alpn)?)
    };
    let client_id = u.client_id_for(gateway);
    Ok(Settings {
        name: name.to_owned(),
        gateway: gateway.to_owned(),
        client_id,
        host: host.to_owned(),
        port,
        tls,
        topic: Topic::parse(&u.topic, gateway).map_err(anyhow::Error::msg)?,
        encoding: u.encoding,
        max_batch_bytes: u.max_batch_bytes.as_u64() as usize,
        max_batch_age: u.max_batch_age,
        max_inflight: usize::from(u.max_inflight.get()),
        publishes_per_second: u.max_publishes_per_second.get(),
        bytes_per_second: u.max_bytes_per_second.as_u64(),
        keep_alive: u.keep_alive,
        connect_timeout: u.connect_timeout,
        puback_timeout: u.puback_timeout,
        reconnect_min: u.reconnect_min,
        reconnect_max: u.reconnect_max,
        drain_timeout: Duration::from_secs(5),
        sources: u.sources.clone(),
        window_records: 2048,
        stream: match &u.route {
            Some(r) => Stream::Route(r.as_str().into()),
            None => Stream::Raw,
        },
    })
}
