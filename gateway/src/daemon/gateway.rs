//! The running gateway, in three calls: [`Gateway::start`] opens the store
//! and starts every part, [`Gateway::run`] serves until shutdown (reloading
//! on request), [`Gateway::drain`] stops the parts in order.
//!
//! Every task the gateway starts runs on one [`TaskTracker`] (awaited by
//! `drain`: nothing outlives the gateway), and every part's cancellation
//! token is a child of one root token, cancelled part by part in the
//! drain's order (the module doc of `daemon` gives it and why).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ferry_core::sink::Sink;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use super::families::Families;
use super::notify::{Notifier, State};
use super::reload::{self, Live, ReloadContext};
use super::sources::Sources;
use super::status::StatusSource;
use super::uplinks::{self, Uplinks};
use super::watchdog::{self, Timing, Watchdog};
use crate::api::{ApiContext, RequestLimits};
use crate::config::{Config, RouteConfig, UplinkConfig};
use crate::metrics::{PipelineMetrics, QueryMetrics};
use crate::pipeline::{spawn_pipeline_with, Pipeline};
use crate::query::{Engine, Index, IndexOptions, Replay};
use crate::route;
use crate::store::{RouteCommits, Store, StoreOptions, Stream, Writer, WriterSettings};
use crate::uplink;

/// Submissions the pipeline task holds before sources wait.
const PIPELINE_QUEUE: usize = 16;

/// How long sources get to stop before ingest is closed regardless.
const SOURCE_STOP_GRACE: Duration = Duration::from_secs(5);

/// How long readiness waits for an embedded broker to accept connections.
const BROKER_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The gateway between [`Gateway::start`] and [`Gateway::drain`].
pub struct Gateway {
    config: Config,
    reload: ReloadContext,
    notifier: Option<Arc<Notifier>>,
    store: Store,
    tracker: TaskTracker,
    /// The root of the token tree: cancelled last, it stops the listeners.
    root: CancellationToken,
    sources_cancel: CancellationToken,
    routes_cancel: CancellationToken,
    supervisor_cancel: CancellationToken,
    sources: Sources,
    pipeline: JoinHandle<()>,
    routes: Vec<JoinHandle<()>>,
    live: Live,
    replay: Option<Replay>,
    ingest: JoinHandle<()>,
    supervisor: JoinHandle<()>,
    /// Why the run ended, if it was not asked to.
    failure: Option<anyhow::Error>,
    /// With `[fleet]`: the agent's requests, and what serving them needs.
    fleet: Option<(crate::fleet::Fleet, mpsc::Receiver<crate::fleet::Request>)>,
    fleet_cancel: CancellationToken,
}

impl Gateway {
    /// Opens the store (salvaging a damaged one), starts ingest, the
    /// pipeline, the sources, the routes, the uplinks and the listeners,
    /// waits for the embedded brokers to accept connections, and reports
    /// ready (`READY=1` under systemd). Everything that can fail on the
    /// operator's input fails here, before a port is bound or the store is
    /// touched.
    pub async fn start(config: Config, reload: ReloadContext) -> anyhow::Result<Gateway> {
        let notifier = Notifier::from_env().map(Arc::new);
        let uplinks = uplinks::settings(&config)?;
        let (store, opened) = open_store(&config)?;
        let query_metrics = QueryMetrics::new();
        let (index, replay) = open_index(&store, &config, query_metrics.clone())?;
        let (registry, families) = Families::new(query_metrics);
        super::families::count_store_open(&families.ingest, &opened);

        let tracker = TaskTracker::new();
        let root = CancellationToken::new();
        let (ready_tx, ready_rx) = watch::channel(None);
        if let Some(addr) = config.metrics.listen {
            let listener = crate::http::bind(addr).await?;
            let serve = crate::http::serve(
                listener,
                Arc::new(registry),
                ready_rx,
                config.metrics.limits(),
                families.listener.clone(),
                root.child_token(),
            );
            tracker.spawn(serve);
        }
        let api_listener = match config.api.listen {
            Some(addr) => Some(crate::api::bind(addr).await?),
            None => None,
        };

        let ingest = Writer::spawn(
            store.clone(),
            writer_settings(&config, index.clone()),
            families.ingest.clone(),
        );
        let sources_cancel = root.child_token();
        let (mut sources, pipeline_tx, pipeline) =
            start_sources(&config, ingest.sink, &families, &tracker, &sources_cancel);
        let (mut running_uplinks, uplink_names) = Uplinks::new(
            store.clone(),
            ingest.cursors.clone(),
            families.uplink.clone(),
            tracker.clone(),
            root.child_token(),
        );
        let fleet_cancel = root.child_token();
        let fleet = start_fleet(
            &config,
            &mut running_uplinks,
            &store,
            &families,
            uplink_names.clone(),
            ingest.heartbeat.clone(),
        )
        .map(|(fleet, requests, agent)| {
            crate::fleet::spawn(agent, &tracker, fleet_cancel.child_token());
            (fleet, requests)
        });
        for (settings, digest) in uplinks {
            running_uplinks.start(settings, digest);
        }
        drop(ingest.cursors);

        let routes_cancel = root.child_token();
        let (routes, route_configs) = start_routes(
            &config,
            &store,
            &ingest.routes,
            &families.pipeline,
            &routes_cancel,
        );
        drop(ingest.routes);

        if let Some(listener) = api_listener {
            let engine = Engine::new(store.clone(), index);
            let ctx = api_context(&config, engine, &families, uplink_names.clone());
            let serve = crate::api::serve_with(
                listener,
                Arc::new(ctx),
                config.api.limits(),
                families.listener.clone(),
                root.child_token(),
            );
            tracker.spawn(serve);
        }
        wait_for_brokers(&mut sources).await;

        let status = StatusSource {
            ingest: families.ingest,
            uplinks: families.uplink,
            uplink_names,
        };
        let supervisor_cancel = root.child_token();
        let supervisor = report_ready(
            &notifier,
            status,
            ready_tx,
            ingest.heartbeat,
            &tracker,
            supervisor_cancel.clone(),
        );
        Ok(Gateway {
            config,
            reload,
            notifier,
            store,
            tracker,
            root,
            sources_cancel,
            routes_cancel,
            supervisor_cancel,
            sources,
            pipeline,
            routes,
            live: Live {
                uplinks: running_uplinks,
                pipeline: pipeline_tx,
                pipeline_metrics: families.pipeline,
                routes: route_configs,
                config_metrics: families.config,
            },
            replay,
            ingest: ingest.task,
            supervisor,
            failure: None,
            fleet,
            fleet_cancel,
        })
    }

    /// The config the gateway runs with (changed by reloads).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Serves until `shutdown` is cancelled or a source fails for good;
    /// each message on `reloads` reloads the config.
    pub async fn run(&mut self, shutdown: CancellationToken, mut reloads: mpsc::Receiver<()>) {
        let (fleet, mut fleet_requests) = match self.fleet.take() {
            Some((f, rx)) => (Some(f), Some(rx)),
            None => (None, None),
        };
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(request) = next_request(&mut fleet_requests) => {
                    let Some(f) = &fleet else { continue };
                    if crate::fleet::serve(request, f, &self.reload, &mut self.config, &mut self.live).await {
                        self.failure = Some(crate::fleet::RestartRequested.into());
                        break;
                    }
                }
                Some(()) = reloads.recv() => {
                    self.notify(&[State::Reloading]);
                    reload::apply(&self.reload, &mut self.config, &mut self.live).await;
                    self.notify(&[State::Ready]);
                }
                Some(done) = self.sources.tasks.join_next() => {
                    match done {
                        Ok(Ok(())) => warn!("a source stopped on its own"),
                        Ok(Err(e)) => {
                            error!(error = %e, "source failed");
                            self.failure = Some(e);
                        }
                        Err(e) => {
                            error!(error = %e, "source task panicked");
                            self.failure = Some(anyhow::anyhow!("source task panicked: {e}"));
                        }
                    }
                    break;
                }
            }
        }
    }

    /// Stops every part in order, each bounded in time, and returns the
    /// failure that ended the run, if any.
    pub async fn drain(mut self) -> anyhow::Result<()> {
        self.notify(&[State::Stopping, State::Status("stopping")]);
        self.fleet_cancel.cancel();
        self.supervisor_cancel.cancel();
        let _ = self.supervisor.await;

        // 1. Sources.
        self.sources_cancel.cancel();
        let tasks = &mut self.sources.tasks;
        let stopped = tokio::time::timeout(SOURCE_STOP_GRACE, async {
            while let Some(done) = tasks.join_next().await {
                if let Ok(Err(e)) = done {
                    warn!(error = %e, "source ended with an error");
                }
            }
        })
        .await;
        if stopped.is_err() {
            warn!("sources did not stop in time; closing ingest");
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
        self.pipeline.await.context("pipeline")?;
        // Routes stop between commits; their state is committed with their output.
        self.routes_cancel.cancel();
        for task in self.routes {
            task.await.context("route")?;
        }
        // 3. Uplinks: drain what is in flight.
        self.live.uplinks.shutdown().await;
        // The index's replay stops after its chunk under way (what it
        // committed stays; the next start continues from it).
        if let Some(replay) = self.replay {
            let _ = tokio::task::spawn_blocking(move || replay.stop()).await;
        }
        // 2 and the last cursor moves: ingest ends after its final commit.
        self.ingest.await.context("ingest writer")?;
        // Last, the listeners; then nothing the gateway started is left.
        self.root.cancel();
        self.tracker.close();
        self.tracker.wait().await;
        let heads = self.store.heads();
        info!(records = heads.records, "ferry stopped");
        match self.failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn notify(&self, states: &[State<'_>]) {
        if let Some(n) = &self.notifier {
            n.notify(states);
        }
    }
}

/// With `[fleet]`: the fleet uplink's control link (its connection
/// subscribes to the shadow's topics) and the agent to start. Returns what
/// the run loop needs to serve the agent, and the agent.
fn start_fleet(
    config: &Config,
    uplinks: &mut Uplinks,
    store: &Store,
    families: &Families,
    uplink_names: watch::Receiver<Vec<Arc<str>>>,
    ingest_heartbeat: watch::Receiver<tokio::time::Instant>,
) -> Option<(
    crate::fleet::Fleet,
    mpsc::Receiver<crate::fleet::Request>,
    crate::fleet::Agent,
)> {
    use crate::fleet;
    let f = config.fleet.as_ref()?;
    let thing = f.thing(&config.uplinks, &config.gateway.id);
    let (link, inbound) = crate::uplink::control::ControlLink::with_on_subscribed(
        fleet::filters(&thing, &f.shadow),
        vec![fleet::get_on_connect(&thing, &f.shadow)],
        fleet::MAX_MESSAGE_BYTES as usize,
        64,
    );
    uplinks.set_control(&f.uplink, link.clone());
    let dir = fleet::StateDir::new(&config.gateway.data_dir);
    let (requests, requests_rx) = mpsc::channel(4);
    let agent = fleet::Agent {
        config: f.clone(),
        thing,
        link,
        inbound,
        requests,
        status: dir.status(),
        store: store.clone(),
        data_dir: config.gateway.data_dir.clone(),
        uplink_metrics: families.uplink.clone(),
        uplink_names,
        ingest_heartbeat,
        metrics: families.fleet.clone(),
    };
    Some((
        fleet::Fleet {
            dir,
            metrics: families.fleet.clone(),
        },
        requests_rx,
        agent,
    ))
}

async fn next_request(
    rx: &mut Option<mpsc::Receiver<crate::fleet::Request>>,
) -> Option<crate::fleet::Request> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Opens the query index on `store`, and starts its replay of the log
/// where it is behind (all of it the first time) in the background, beside
/// ingest: readiness does not wait for it, and queries say how far behind it
/// is. Before the writer's first transaction, so that the writer leaves the
/// log to the replay.
fn open_index(
    store: &Store,
    config: &Config,
    metrics: QueryMetrics,
) -> anyhow::Result<(Arc<Index>, Option<Replay>)> {
    let options = IndexOptions {
        metrics,
        memory_budget: usize::try_from(config.store.index_memory.as_u64()).unwrap_or(usize::MAX),
        ..IndexOptions::default()
    };
    let index = Arc::new(Index::open_without_catch_up(store, options).context("query index")?);
    let replay = index.replay_in_background(store);
    Ok((index, replay))
}

/// Starts the pipeline in front of ingest's `sink` (with no steps it only
/// forwards, and a reload can give it some), then every source in front of
/// the pipeline, each with a child of `cancel`. The pipeline's own queue is
/// short: ingest's queue is where submissions wait, so the pipeline adds
/// little to what a broker source has acknowledged and not yet committed.
fn start_sources(
    config: &Config,
    sink: Sink,
    families: &Families,
    tracker: &TaskTracker,
    cancel: &CancellationToken,
) -> (Sources, watch::Sender<Arc<Pipeline>>, JoinHandle<()>) {
    let pipeline = Pipeline::new(&config.pipeline, families.pipeline.clone());
    let (pipeline_tx, pipeline_rx) = watch::channel(pipeline);
    let (source_sink, task) = spawn_pipeline_with(pipeline_rx, sink, PIPELINE_QUEUE);
    let mut sources = Sources::new(
        tracker.clone(),
        &config.gateway.id,
        families.modbus.clone(),
        families.broker.clone(),
    );
    for (name, source) in &config.sources {
        sources.start(name, source, source_sink.clone(), cancel.child_token());
    }
    (sources, pipeline_tx, task)
}

/// Starts every route, each with its config behind a watch (a reload
/// sends it a new one) and its token a child of `cancel`.
fn start_routes(
    config: &Config,
    store: &Store,
    commits: &RouteCommits,
    metrics: &PipelineMetrics,
    cancel: &CancellationToken,
) -> (
    Vec<JoinHandle<()>>,
    BTreeMap<String, watch::Sender<RouteConfig>>,
) {
    let mut routes = Vec::new();
    let mut configs = BTreeMap::new();
    let clock = route::Clock::new();
    for (name, cfg) in &config.routes {
        let (tx, rx) = watch::channel(cfg.clone());
        configs.insert(name.clone(), tx);
        routes.push(route::spawn_route_with(
            name,
            rx,
            clock,
            store.clone(),
            commits.clone(),
            metrics.clone(),
            cancel.child_token(),
        ));
    }
    (routes, configs)
}

/// What the API serves: the store through `engine`, the config's
/// sources and uplinks, and the metrics it reads its status from.
fn api_context(
    config: &Config,
    engine: Engine,
    families: &Families,
    uplink_names: watch::Receiver<Vec<Arc<str>>>,
) -> ApiContext {
    let stream = |u: &UplinkConfig| match &u.route {
        Some(r) => Stream::Route(r.as_str().into()),
        None => Stream::Raw,
    };
    ApiContext {
        engine,
        gateway: config.gateway.id.clone(),
        token: config.api.token.clone(),
        max_points: config.api.max_points.get(),
        sources: (config.sources.iter())
            .map(|(name, s)| (name.clone(), s.type_name()))
            .collect(),
        ingest: families.ingest.clone(),
        uplinks: families.uplink.clone(),
        uplink_names,
        uplink_streams: (config.uplinks.iter())
            .map(|(name, u)| (name.clone(), stream(u)))
            .collect(),
        limits: RequestLimits::of(&config.api),
        metrics: families.api.clone(),
    }
}

/// Creates `gateway.data_dir` if needed and opens the store in it, salvaging
/// a damaged one.
fn open_store(config: &Config) -> anyhow::Result<(Store, crate::store::Opened)> {
    let data_dir = &config.gateway.data_dir;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("gateway.data_dir: cannot create {}", data_dir.display()))?;
    let store_path = Store::file_in(data_dir);
    let (store, opened) = Store::open_or_salvage(&store_path, &StoreOptions::from(&config.store))
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
    Ok((store, opened))
}

/// The `[store]` settings, and what the writer must know of the rest:
/// retention keeps what the uplinks sending the raw stream and the routes
/// have not consumed of it, and on each route's stream what the uplinks
/// sending it have not.
fn writer_settings(config: &Config, index: Arc<Index>) -> WriterSettings {
    let consumers = config
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
        .collect();
    let route_consumers = config
        .uplinks
        .iter()
        .filter_map(|(name, u)| {
            let route = u.route.as_deref()?;
            Some((Arc::from(route), Arc::from(uplink::cursor_name(name))))
        })
        .collect();
    WriterSettings {
        consumers,
        route_consumers,
        index: Some(index),
        ..WriterSettings::from(&config.store)
    }
}

/// Reports ready (the status line to `/metrics`' readiness and `READY=1`
/// to systemd), then starts the supervisor: the watchdog's pings while
/// ingest is alive, and the status line as it changes.
fn report_ready(
    notifier: &Option<Arc<Notifier>>,
    status: StatusSource,
    ready: watch::Sender<Option<Arc<str>>>,
    heartbeat: watch::Receiver<tokio::time::Instant>,
    tracker: &TaskTracker,
    cancel: CancellationToken,
) -> JoinHandle<()> {
    let line = status.line();
    ready.send_replace(Some(line.as_str().into()));
    if let Some(n) = notifier {
        n.notify(&[State::Ready, State::Status(&line)]);
    }
    let timing = Timing::for_timeout(notifier.as_ref().and_then(|n| n.watchdog_timeout()));
    tracker.spawn(watchdog::run(
        notifier.clone(),
        Watchdog::new(heartbeat, timing.stall),
        status,
        ready,
        timing.period,
        cancel,
    ))
}

/// Ready once every embedded broker accepts connections; a source that
/// failed instead drops its sender and is reported by the run loop.
async fn wait_for_brokers(sources: &mut Sources) {
    for (name, ready) in sources.listening.drain(..) {
        if tokio::time::timeout(BROKER_READY_TIMEOUT, ready)
            .await
            .is_err()
        {
            warn!(
                source = %name,
                "the embedded broker does not accept connections after {}s; reporting ready without it",
                BROKER_READY_TIMEOUT.as_secs()
            );
        }
    }
}
