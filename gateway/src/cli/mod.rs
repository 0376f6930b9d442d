//! The `ferry` command line: `run`, `validate`, `print-config`,
//! `modbus probe`, and the API's commands `query`, `status` and `tail`
//! (`api.rs`, which talks to a running daemon's API).
//!
//! Exit codes (sysexits): 0 success; 64 (`EX_USAGE`) for a config with
//! problems, each printed on its own line as
//! `ferry: config error: FILE:LINE: KEY.PATH: message`, and for a config path
//! that is not a regular file or is over 1 MiB (refused unread,
//! [`Config::load_with_warnings`]); 66 (`EX_NOINPUT`) for a config file that
//! cannot be opened (missing, not permitted); 1 when the daemon fails at run time
//! (`ferry: error: ...`); 2 for a bad command line (clap's usage errors).
//!
//! `run` parses and checks the whole config before it builds the runtime, so
//! nothing is bound or opened for a config that will not run.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

mod api;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::config::{Config, ConfigWarnings, LoadError, LogLevel, DEFAULT_NAME, DEFAULT_TOML};

/// Exit code for a config with problems (`EX_USAGE`).
pub const EXIT_CONFIG: u8 = 64;
/// Exit code for a config file that cannot be read (`EX_NOINPUT`).
pub const EXIT_NO_INPUT: u8 = 66;
/// Exit code when the daemon fails while running.
pub const EXIT_RUNTIME: u8 = 1;
/// Exit code when the store cannot be written at start: a read-only file
/// system or a directory without write permission (`EX_CANTCREAT`).
pub const EXIT_CANT_CREATE: u8 = 73;

/// Ferry: an edge gateway that stores every reading durably and forwards
/// batches to AWS IoT Core.
#[derive(Debug, Parser)]
#[command(name = "ferry", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway until SIGTERM or SIGINT.
    Run {
        /// The config file; without it, the embedded default
        /// (see `ferry print-config`).
        #[arg(long, short, value_name = "PATH")]
        config: Option<PathBuf>,
    },
    /// Check a config file: print every problem, exit 64 if there is any.
    Validate {
        /// The config file.
        #[arg(long = "config", short, value_name = "PATH", conflicts_with = "path")]
        config: Option<PathBuf>,
        /// The config file (instead of --config).
        #[arg(value_name = "PATH", required_unless_present = "config")]
        path: Option<PathBuf>,
    },
    /// Print the embedded default config, commented: a reference to start from.
    PrintConfig,
    /// Check the store (with the daemon stopped); exit 1 if problems remain.
    Fsck {
        /// The config file naming the store's data_dir; without it, the
        /// embedded default.
        #[arg(long, short, value_name = "PATH")]
        config: Option<PathBuf>,
        /// Fix what can be fixed: remove what does not decode, move cursors
        /// beyond the head back, compact the file.
        #[arg(long)]
        repair: bool,
    },
    /// Query the running daemon's stored readings (through its API).
    Query(api::QueryArgs),
    /// The running daemon's sources and uplinks (through its API).
    Status(api::ApiArgs),
    /// Print the latest stored records, then follow new ones.
    Tail(api::TailArgs),
    /// Modbus tools.
    Modbus {
        #[command(subcommand)]
        command: ModbusCommand,
    },
    /// Fleet management through the device shadow.
    Fleet {
        #[command(subcommand)]
        command: FleetCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// What the fleet asked last, what runs, and why they differ (read from
    /// the state directory; the daemon need not run).
    Status {
        /// The local config file (with its [fleet] table).
        #[arg(long, short, value_name = "PATH")]
        config: PathBuf,
    },
}

/// Parses the command line and runs it; what `main` calls.
pub fn main() -> ExitCode {
    run_command(Cli::parse().command)
}

/// Runs one command.
pub fn run_command(command: Command) -> ExitCode {
    match command {
        Command::PrintConfig => {
            let written = std::io::stdout().write_all(DEFAULT_TOML.as_bytes());
            match written {
                // `ferry print-config | head` is fine.
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    eprintln!("ferry: error: cannot print the config: {e}");
                    ExitCode::from(EXIT_RUNTIME)
                }
                _ => ExitCode::SUCCESS,
            }
        }
        Command::Validate { config, path } => {
            let Some(path) = config.or(path) else {
                unreachable!("clap requires --config or PATH");
            };
            match load(Some(&path)) {
                Ok(_) => {
                    println!("config OK: {}", path.display());
                    ExitCode::SUCCESS
                }
                Err(code) => code,
            }
        }
        Command::Query(args) => api::query(args),
        Command::Status(args) => api::status(args),
        Command::Tail(args) => api::tail(args),
        Command::Modbus {
            command: ModbusCommand::Probe(args),
        } => modbus_probe(args),
        Command::Fleet {
            command: FleetCommand::Status { config },
        } => match load(Some(&config)) {
            Ok(config) => {
                print!("{}", crate::fleet::status_text(&config));
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Fsck { config, repair } => match load(config.as_deref()) {
            Ok(config) => fsck(&config, repair),
            Err(code) => code,
        },
        Command::Run { config: path } => match load(path.as_deref()) {
            Ok(config) => run_daemon(config, path),
            Err(code) => code,
        },
    }
}

/// Loads and checks the config (the embedded default without a path),
/// printing warnings; on failure prints every problem and returns the exit
/// code.
fn load(path: Option<&Path>) -> Result<Config, ExitCode> {
    let loaded = match path {
        Some(path) => Config::load_with_warnings(path),
        None => Config::from_toml_with_warnings(DEFAULT_TOML, Path::new(DEFAULT_NAME))
            .map_err(LoadError::Invalid),
    };
    match loaded {
        Ok((config, warnings)) => {
            print_warnings(&warnings);
            Ok(config)
        }
        Err(e) => {
            eprintln!("{e}");
            Err(ExitCode::from(match e {
                LoadError::Unreadable { .. } => EXIT_NO_INPUT,
                LoadError::Invalid(_) => EXIT_CONFIG,
            }))
        }
    }
}

/// `ferry fsck`: prints the report; exit 0 when the store is (now) sound.
fn fsck(config: &Config, repair: bool) -> ExitCode {
    let path = crate::store::Store::file_in(&config.gateway.data_dir);
    if !path.exists() {
        eprintln!("ferry: error: no store at {}", path.display());
        return ExitCode::from(EXIT_RUNTIME);
    }
    match crate::store::fsck::fsck(&path, repair) {
        Ok(report) => {
            println!("{}: {report}", path.display());
            if report.problems() == 0 || !report.repaired.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_RUNTIME)
            }
        }
        Err(e) => {
            eprintln!("ferry: error: {e}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

fn print_warnings(warnings: &ConfigWarnings) {
    if !warnings.warnings.is_empty() {
        eprintln!("{warnings}");
    }
}

/// Arenas glibc's malloc may keep, unless the operator chose
/// (`MALLOC_ARENA_MAX`, or `glibc.malloc.arena_max` in `GLIBC_TUNABLES`).
///
/// glibc gives threads that contend for malloc arenas of their own, up to
/// eight per core, and each keeps what was freed in it: with the daemon's
/// threads (runtime, writer, rumqttd's) that memory only grows as load moves
/// between them. Two arenas: 20.4 MiB RSS after 3 minutes at 1,000
/// records/s instead of 24.4 MiB (anonymous 9.7 instead of 13.6 MiB), at no
/// CPU cost measurable at that rate (`BENCHMARKS.md`, "Daemon").
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn limit_malloc_arenas() {
    const ARENAS: libc::c_int = 2;
    let chosen = std::env::var_os("MALLOC_ARENA_MAX").is_some()
        || std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("glibc.malloc.arena_max"));
    if !chosen {
        // SAFETY: mallopt only sets a malloc parameter, and this runs before
        // the daemon starts any thread.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, ARENAS) };
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}

/// Builds the runtime, starts logging, and runs the daemon to its end;
/// `path` is read again on SIGHUP.
fn run_daemon(config: Config, path: Option<PathBuf>) -> ExitCode {
    limit_malloc_arenas();
    crate::contain::install_hook();
    let log = init_tracing(config.gateway.log_level);
    // With [fleet], the fleet's config over the local file (logged).
    let config = crate::fleet::at_start(config, path.as_deref());
    let reload = crate::daemon::reload::ReloadContext { path, log };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("ferry")
        .enable_all()
        .build();
    let result = match runtime {
        Ok(runtime) => runtime.block_on(crate::daemon::run(config, reload)),
        Err(e) => Err(anyhow::Error::new(e).context("cannot start the async runtime")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<crate::fleet::RestartRequested>() => {
            eprintln!("ferry: {e}; exit {}", crate::fleet::EXIT_RESTART);
            ExitCode::from(crate::fleet::EXIT_RESTART)
        }
        Err(e) => {
            eprintln!("ferry: error: {e:#}");
            ExitCode::from(if store_unwritable(&e) {
                EXIT_CANT_CREATE
            } else {
                EXIT_RUNTIME
            })
        }
    }
}

/// Whether `e` comes from a store (or data directory) the file system will
/// not let Ferry write.
fn store_unwritable(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<crate::store::StoreError>()
            .is_some_and(crate::store::StoreError::is_unwritable)
            || cause.downcast_ref::<std::io::Error>().is_some_and(|io| {
                matches!(
                    io.kind(),
                    std::io::ErrorKind::ReadOnlyFilesystem | std::io::ErrorKind::PermissionDenied
                )
            })
    })
}

/// Logs to stderr, one line per event, without colours unless stderr is a
/// terminal; under systemd, with each line's priority for the journal
/// (`journal.rs`). The filter is
/// `RUST_LOG` when set and valid, else `level`, which a reload can change.
///
/// The embedded broker's own logging (rumqttd) is off by default: it logs
/// every device connection at info and routine disconnects as errors, and
/// Ferry's broker source reports what matters (listening, bind failures,
/// dead letters) itself. `RUST_LOG=info,rumqttd=info` shows it.
fn init_tracing(level: LogLevel) -> crate::daemon::reload::LogControl {
    use tracing_subscriber::layer::SubscriberExt;
    let (filter, from_env) = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => match EnvFilter::try_new(&spec) {
            Ok(filter) => (filter, true),
            Err(e) => {
                eprintln!("ferry: warning: ignoring RUST_LOG={spec:?}: {e}");
                (crate::daemon::reload::filter_for(level), false)
            }
        },
        _ => (crate::daemon::reload::filter_for(level), false),
    };
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let lines = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    // Under systemd: priorities journald understands, no time of our own.
    let lines: Box<dyn tracing_subscriber::Layer<_> + Send + Sync> =
        if crate::daemon::journal::stderr_is_journal() {
            let format = tracing_subscriber::fmt::format()
                .without_time()
                .with_ansi(false);
            Box::new(
                lines
                    .with_ansi(false)
                    .event_format(crate::daemon::journal::JournalFormat(format)),
            )
        } else {
            Box::new(lines.with_ansi(std::io::stderr().is_terminal()))
        };
    let subscriber = tracing_subscriber::registry().with(filter).with(lines);
    // Only fails if a subscriber is already set (in tests): keep that one.
    match tracing::subscriber::set_global_default(subscriber) {
        Ok(()) => crate::daemon::reload::LogControl::new(handle, from_env),
        Err(_) => crate::daemon::reload::LogControl::none(),
    }
}

#[derive(Debug, Subcommand)]
pub enum ModbusCommand {
    /// Read registers once and print them raw and decoded as every type in
    /// all four byte/word orders, to find the register map of a device.
    Probe(ProbeArgs),
}

/// What `ferry modbus probe` reads, and from where.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["tcp", "serial"])))]
pub struct ProbeArgs {
    /// A Modbus TCP device: HOST:PORT (HOST alone means port 502).
    #[arg(long, value_name = "HOST:PORT")]
    pub tcp: Option<String>,
    /// A serial port (Modbus RTU), such as /dev/ttyUSB0.
    #[arg(long, value_name = "PATH")]
    pub serial: Option<PathBuf>,
    /// Serial: bits per second.
    #[arg(long, default_value_t = 9600)]
    pub baud: u32,
    /// Serial: parity.
    #[arg(long, default_value = "even", value_parser = ["none", "even", "odd"])]
    pub parity: String,
    /// Serial: data bits.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u8).range(5..=8))]
    pub data_bits: u8,
    /// Serial: stop bits.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=2))]
    pub stop_bits: u8,
    /// The unit (slave) id.
    #[arg(long, default_value_t = 1)]
    pub unit: u8,
    /// The table.
    #[arg(long, default_value = "holding", value_parser = ["holding", "input", "coil", "discrete_input"])]
    pub table: String,
    /// The first address, 0-based as sent on the wire (register 40001 is holding 0).
    #[arg(long)]
    pub address: u16,
    /// How many registers (1 to 125) or bits (1 to 2000).
    #[arg(long, default_value_t = 8)]
    pub count: u16,
    /// How long to wait for the answer.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub timeout: std::time::Duration,
}

/// `ferry modbus probe`: prints the report, or the error and exits 1.
fn modbus_probe(args: ProbeArgs) -> ExitCode {
    use ferry_sources::modbus::{probe, Parity, ProbeRequest, SerialSettings, Table, Target};
    let target = match (args.tcp, args.serial) {
        (Some(address), _) => match ferry_sources::modbus::split_host_port(&address) {
            Ok((host, port)) if host.contains(':') => Target::Tcp(format!("[{host}]:{port}")),
            Ok((host, port)) => Target::Tcp(format!("{host}:{port}")),
            Err(why) => {
                eprintln!("ferry: error: --tcp {address}: {why}");
                return ExitCode::from(2);
            }
        },
        (None, Some(path)) => Target::Serial(SerialSettings {
            path,
            baud: args.baud,
            parity: match args.parity.as_str() {
                "none" => Parity::None,
                "odd" => Parity::Odd,
                _ => Parity::Even,
            },
            data_bits: args.data_bits,
            stop_bits: args.stop_bits,
        }),
        (None, None) => unreachable!("clap requires --tcp or --serial"),
    };
    let table = match args.table.as_str() {
        "input" => Table::Input,
        "coil" => Table::Coil,
        "discrete_input" => Table::DiscreteInput,
        _ => Table::Holding,
    };
    let request = ProbeRequest {
        target,
        unit: args.unit,
        table,
        address: args.address,
        count: args.count,
        timeout: args.timeout,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let result = match runtime {
        Ok(runtime) => runtime.block_on(probe(request)).map_err(anyhow::Error::new),
        Err(e) => Err(anyhow::Error::new(e).context("cannot start the async runtime")),
    };
    match result {
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ferry: error: {e:#}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}
