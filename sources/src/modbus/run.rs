//! The entry points: a source's devices grouped into links, one poller task
//! per link, one watcher of commit receipts.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use ferry_core::sink::{Receipt, Sink};

use super::config::{DeviceSpec, RtuSourceConfig, TcpSourceConfig};
use super::events::ModbusObserver;
use super::link::{Link, Target};
use super::poll::{Device, Poller};
use super::schedule::Schedule;
use super::ModbusError;

/// Receipts in flight per source before pollers wait.
const RECEIPTS: usize = 256;

/// Polls the devices of a `modbus_tcp` source until `cancel` fires.
///
/// Devices at different addresses are polled concurrently, each address over
/// one connection; devices sharing an address (behind a TCP-to-RTU gateway)
/// take turns on it. Fails only on an invalid config or when ingest shuts
/// down; unreachable devices are retried forever, backed off.
pub async fn run_modbus_tcp(
    name: Arc<str>,
    cfg: TcpSourceConfig,
    sink: Sink,
    observer: Arc<dyn ModbusObserver>,
    cancel: CancellationToken,
) -> Result<(), ModbusError> {
    let devices = cfg.devices().map_err(ModbusError::Config)?;
    let mut links: Vec<(String, Vec<DeviceSpec>)> = Vec::new();
    for device in devices {
        let address = device.address.clone().unwrap_or_default();
        match links.iter_mut().find(|(a, _)| *a == address) {
            Some((_, list)) => list.push(device),
            None => links.push((address, vec![device])),
        }
    }
    let links = links
        .into_iter()
        .map(|(address, devices)| (Link::new(Target::Tcp(address), cfg.request_gap), devices))
        .collect();
    run_links(name, links, cfg.backoff_max, sink, observer, cancel).await
}

/// Polls the devices on a `modbus_rtu` bus until `cancel` fires: one request
/// at a time with `request_gap` between them; a device that stops answering
/// is backed off so that the others keep their poll rate. Fails only on an
/// invalid config or when ingest shuts down; a port that cannot be opened is
/// retried, backed off.
pub async fn run_modbus_rtu(
    name: Arc<str>,
    cfg: RtuSourceConfig,
    sink: Sink,
    observer: Arc<dyn ModbusObserver>,
    cancel: CancellationToken,
) -> Result<(), ModbusError> {
    let devices = cfg.devices().map_err(ModbusError::Config)?;
    let link = Link::new(Target::Serial(cfg.serial()), cfg.gap());
    run_links(
        name,
        vec![(link, devices)],
        cfg.backoff_max,
        sink,
        observer,
        cancel,
    )
    .await
}

async fn run_links(
    name: Arc<str>,
    links: Vec<(Link, Vec<DeviceSpec>)>,
    backoff_max: std::time::Duration,
    sink: Sink,
    observer: Arc<dyn ModbusObserver>,
    cancel: CancellationToken,
) -> Result<(), ModbusError> {
    let (receipts, receipts_rx) = mpsc::channel(RECEIPTS);
    let watcher = tokio::spawn(watch_receipts(name.clone(), receipts_rx));
    let stop = cancel.child_token();
    let mut tasks = JoinSet::new();
    let mut rng = fastrand::Rng::new();
    let (n_links, mut n_devices) = (links.len(), 0);
    for (link, specs) in links {
        n_devices += specs.len();
        let intervals: Vec<_> = specs.iter().map(|d| d.interval).collect();
        let devices = specs
            .into_iter()
            .map(|spec| {
                let observer = observer.device(&name, &spec.name);
                Device::new(spec, observer)
            })
            .collect();
        let poller = Poller {
            source: name.clone(),
            link,
            devices,
            schedule: Schedule::new(&intervals, backoff_max, Instant::now(), &mut rng),
            sink: sink.clone(),
            receipts: receipts.clone(),
            rng: rng.fork(),
        };
        tasks.spawn(poller.run(stop.clone()));
    }
    drop((sink, receipts));
    info!(source = %name, devices = n_devices, links = n_links, "polling Modbus devices");
    let mut result = Ok(());
    while let Some(done) = tasks.join_next().await {
        let failure = match done {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => e,
            Err(e) => {
                error!(source = %name, "Modbus poller task failed: {e}");
                ModbusError::SinkClosed
            }
        };
        stop.cancel();
        if !cancel.is_cancelled() && result.is_ok() {
            result = Err(failure);
        }
    }
    if let Err(e) = watcher.await {
        error!(source = %name, "receipt watcher failed: {e}");
    }
    result
}

/// Waits for each submission's commit and logs the ones that failed (the
/// 1st, 2nd, 4th...); ingest counts them.
async fn watch_receipts(source: Arc<str>, mut rx: mpsc::Receiver<(Arc<str>, Receipt)>) {
    let mut failed = 0u64;
    while let Some((device, receipt)) = rx.recv().await {
        if let Err(e) = receipt.committed().await {
            failed += 1;
            if failed.is_power_of_two() {
                warn!(source = %source, device = %device, count = failed, "a reading of {device} was not stored: {e}");
            }
        }
    }
}
