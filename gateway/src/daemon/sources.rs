//! Starting each `[sources.NAME]`: the embedded broker, the subscriber,
//! the Modbus pollers. Each runs until its token is cancelled, on the
//! daemon's task tracker, in a set the run loop watches: a source that
//! ends on its own stops the gateway.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use ferry_core::sink::Sink;
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::SourceConfig;
use crate::metrics::{BrokerMetrics, ModbusMetrics};

/// The running sources.
pub struct Sources {
    pub tasks: JoinSet<anyhow::Result<()>>,
    /// Each embedded broker's name and its signal that it accepts
    /// connections (dropped unsent if it failed to).
    pub listening: Vec<(Arc<str>, oneshot::Receiver<SocketAddr>)>,
    tracker: TaskTracker,
    gateway: String,
    modbus_metrics: Arc<ModbusMetrics>,
    #[cfg_attr(not(feature = "embedded-broker"), allow(dead_code))]
    broker_metrics: Arc<BrokerMetrics>,
}

impl Sources {
    pub fn new(
        tracker: TaskTracker,
        gateway: &str,
        modbus_metrics: Arc<ModbusMetrics>,
        broker_metrics: Arc<BrokerMetrics>,
    ) -> Sources {
        Sources {
            tasks: JoinSet::new(),
            listening: Vec::new(),
            tracker,
            gateway: gateway.to_owned(),
            modbus_metrics,
            broker_metrics,
        }
    }

    /// Starts the source `name`, submitting to `sink`, until `cancel`.
    pub fn start(
        &mut self,
        name: &str,
        source: &SourceConfig,
        sink: Sink,
        cancel: CancellationToken,
    ) {
        let name: Arc<str> = name.into();
        match source {
            #[cfg(feature = "embedded-broker")]
            SourceConfig::MqttBroker(cfg) => {
                let (ready, ready_rx) = oneshot::channel();
                self.listening.push((name.clone(), ready_rx));
                let run = ferry_sources::mqtt::run_broker_observed(
                    name.clone(),
                    cfg.clone(),
                    sink,
                    self.broker_metrics.clone(),
                    cancel,
                    Some(ready),
                );
                self.spawn(name, run);
            }
            // The config loader refuses `mqtt_broker` in such a build.
            #[cfg(not(feature = "embedded-broker"))]
            SourceConfig::MqttBroker(_) => {
                drop((sink, cancel));
                let run = async {
                    Err(std::io::Error::other(
                        "this build of ferry has no embedded broker",
                    ))
                };
                self.spawn(name, run);
            }
            SourceConfig::MqttSubscribe(cfg) => {
                let (cfg, gateway, n) = (cfg.clone(), self.gateway.clone(), name.clone());
                let run = async move {
                    ferry_sources::mqtt::run_subscriber(n, &gateway, cfg, sink, cancel).await
                };
                self.spawn(name, run);
            }
            SourceConfig::ModbusTcp(cfg) => {
                let observer = self.modbus_metrics.clone();
                let run = ferry_sources::modbus::run_modbus_tcp(
                    name.clone(),
                    cfg.clone(),
                    sink,
                    observer,
                    cancel,
                );
                self.spawn(name, run);
            }
            SourceConfig::ModbusRtu(cfg) => {
                let observer = self.modbus_metrics.clone();
                let run = ferry_sources::modbus::run_modbus_rtu(
                    name.clone(),
                    cfg.clone(),
                    sink,
                    observer,
                    cancel,
                );
                self.spawn(name, run);
            }
        }
    }

    fn spawn<E>(
        &mut self,
        name: Arc<str>,
        run: impl Future<Output = Result<(), E>> + Send + 'static,
    ) where
        E: std::error::Error + Send + Sync + 'static,
    {
        let run = async move { run.await.with_context(|| format!("source {name}")) };
        self.tasks.spawn(self.tracker.track_future(run));
    }
}
