//! The `ferry` command line: `run`, `validate`, `print-config`.
//!
//! Exit codes (sysexits): 0 success; 64 (`EX_USAGE`) for a config with
//! problems, each printed on its own line as
//! `ferry: config error: FILE:LINE: KEY.PATH: message`; 66 (`EX_NOINPUT`) for
//! a config file that cannot be read; 1 when the daemon fails at run time
//! (`ferry: error: ...`); 2 for a bad command line (clap's usage errors).
//!
//! `run` parses and checks the whole config before it builds the runtime, so
//! nothing is bound or opened for a config that will not run.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::config::{Config, ConfigWarnings, LoadError, DEFAULT_NAME, DEFAULT_TOML};

/// Exit code for a config with problems (`EX_USAGE`).
pub const EXIT_CONFIG: u8 = 64;
/// Exit code for a config file that cannot be read (`EX_NOINPUT`).
pub const EXIT_NO_INPUT: u8 = 66;
/// Exit code when the daemon fails while running.
pub const EXIT_RUNTIME: u8 = 1;

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
        Command::Run { config } => match load(config.as_deref()) {
            Ok(config) => run_daemon(config),
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

fn print_warnings(warnings: &ConfigWarnings) {
    if !warnings.warnings.is_empty() {
        eprintln!("{warnings}");
    }
}

/// Builds the runtime, starts logging, and runs the daemon to its end.
fn run_daemon(config: Config) -> ExitCode {
    init_tracing(config.gateway.log_level.as_str());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("ferry")
        .enable_all()
        .build();
    let result = match runtime {
        Ok(runtime) => runtime.block_on(crate::daemon::run(config)),
        Err(e) => Err(anyhow::Error::new(e).context("cannot start the async runtime")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferry: error: {e:#}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

/// Logs to stderr, one line per event, without colours unless stderr is a
/// terminal. The filter is `RUST_LOG` when set and valid, else `level`.
///
/// The embedded broker's own logging (rumqttd) is off by default: it logs
/// every device connection at info and routine disconnects as errors, and
/// Ferry's broker source reports what matters (listening, bind failures,
/// dead letters) itself. `RUST_LOG=info,rumqttd=info` shows it.
fn init_tracing(level: &str) {
    let level = &format!("{level},rumqttd=off");
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => EnvFilter::try_new(&spec).unwrap_or_else(|e| {
            eprintln!("ferry: warning: ignoring RUST_LOG={spec:?}: {e}");
            EnvFilter::new(level)
        }),
        _ => EnvFilter::new(level),
    };
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .finish();
    // Only fails if a subscriber is already set (in tests): keep that one.
    let _ = tracing::subscriber::set_global_default(subscriber);
}
