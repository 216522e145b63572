//! The `tokensync` command line: `run`, `check-config` and `demo`.

mod check;
mod daemon;
mod demo;
mod logging;
mod status;
mod token;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

pub use daemon::{DEFAULT_LISTEN_ADDRESS, Daemon, DaemonOptions};

/// Keeps API access tokens fresh, syncs them to their stores and exports its
/// state as Prometheus metrics.
#[derive(Debug, Parser)]
#[command(name = "tokensync", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon with a configuration file.
    Run {
        /// The YAML configuration file.
        #[arg(long, short = 'c', value_name = "FILE")]
        config: PathBuf,
        #[command(flatten)]
        listener: ListenerArgs,
        /// TLS and basic authentication for the metrics listener, in the
        /// Prometheus exporter-toolkit web configuration format.
        #[arg(long = "web.config.file", value_name = "FILE")]
        web_config_file: Option<PathBuf>,
        #[command(flatten)]
        log: LogArgs,
    },
    /// Validate a configuration file and print every problem with its line;
    /// offline unless --online is given.
    CheckConfig {
        /// The YAML configuration file.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Also request one token from every source and test-write every file sink.
        #[arg(long)]
        online: bool,
    },
    /// Run a self-contained demo: an embedded issuer on loopback that hands out
    /// 30-second tokens, two tokens synced to files, and the metrics listener.
    Demo {
        /// Address of the metrics listener, as HOST:PORT [default:
        /// 127.0.0.1:8417, or a free port when that one is taken].
        #[arg(long = "web.listen-address", value_name = "ADDR")]
        listen_address: Option<String>,
        #[command(flatten)]
        log: LogArgs,
        /// Stop after this long, as in 90s (default: run until interrupted).
        #[arg(long = "exit-after", value_name = "DURATION", value_parser = parse_duration)]
        exit_after: Option<Duration>,
    },
    /// Print the state of every token of a running daemon; exit status 1 when
    /// a token is not valid or needs re-authentication.
    Status {
        /// Base URL of the daemon's metrics listener.
        #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:8417")]
        url: String,
        /// Print the raw JSON document instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), as in `tokensync man | man -l -`.
    Man,
    /// Print the JSON Schema of the configuration file.
    Schema,
    /// Read or refresh a token through a running daemon's token API; prints the bare token.
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenAction {
    /// Print the current token (refreshed first if it has expired).
    Get {
        /// The token name.
        name: String,
        #[command(flatten)]
        args: TokenArgs,
    },
    /// Report the token as rejected, and print the new one.
    Refresh {
        /// The token name.
        name: String,
        #[command(flatten)]
        args: TokenArgs,
    },
}

/// Location and credentials of the token API for `tokensync token`.
#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    /// Read the API address and bearer token file from this daemon configuration.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The token API address: unix:///PATH or tcp://127.0.0.1:PORT.
    #[arg(long, value_name = "ADDR", env = "TOKENSYNC_API")]
    pub api: Option<String>,
    /// File holding the API bearer token.
    #[arg(long = "bearer-token-file", value_name = "FILE", env = "TOKENSYNC_API_TOKEN_FILE")]
    pub bearer_token_file: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct ListenerArgs {
    /// Address of the metrics listener, as HOST:PORT [default: the config's
    /// web.listen_address, else 127.0.0.1:8417].
    #[arg(long = "web.listen-address", value_name = "ADDR")]
    pub listen_address: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct LogArgs {
    /// Minimum log level: error, warn, info, debug or trace.
    #[arg(long = "log.level", value_name = "LEVEL", default_value = "info")]
    pub level: String,
    /// Log line format.
    #[arg(long = "log.format", value_name = "FORMAT", value_enum, default_value_t = LogFormat::Logfmt)]
    pub format: LogFormat,
}

/// Log line formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// `key=value` pairs, for people and logfmt parsers.
    Logfmt,
    /// One JSON object per line, for log pipelines.
    Json,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|error| format!("invalid duration `{text}`: {error}"))
}

/// Runs a parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::CheckConfig { file, online } => check::check_config(&file, online),
        Command::Run { config, listener, web_config_file, log } => {
            if let Err(message) = logging::init(&log) {
                eprintln!("tokensync: {message}");
                return ExitCode::from(2);
            }
            let options =
                DaemonOptions { config_path: config, listen_address: listener.listen_address, exit_after: None, web_config_file };
            runtime_then(|| daemon::run(options))
        }
        Command::Status { url, json } => current_thread(status::run(&url, json)),
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "tokensync", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::Schema => {
            println!("{:#}", crate::config::json_schema());
            ExitCode::SUCCESS
        }
        Command::Man => {
            let command = <Cli as clap::CommandFactory>::command();
            match clap_mangen::Man::new(command).render(&mut std::io::stdout()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("tokensync: cannot write the manual page: {error}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Token { action } => {
            let (name, args, refresh) = match action {
                TokenAction::Get { name, args } => (name, args, false),
                TokenAction::Refresh { name, args } => (name, args, true),
            };
            current_thread(async move { token::run(args, name, refresh).await.map(|()| ExitCode::SUCCESS) })
        }
        Command::Demo { listen_address, log, exit_after } => {
            if let Err(message) = logging::init(&log) {
                eprintln!("tokensync: {message}");
                return ExitCode::from(2);
            }
            runtime_then(|| demo::run(listen_address, exit_after))
        }
    }
}

/// Runs a client command on a single-threaded runtime; an error is printed
/// to standard error and gives exit status 1.
fn current_thread(main: impl std::future::Future<Output = Result<ExitCode, String>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("tokensync: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(main) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("tokensync: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Starts a multi-threaded tokio runtime and runs `main` on it.
fn runtime_then<F, Fut>(main: F) -> ExitCode
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("tokensync: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(main()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            // The logger is installed before the runtime starts, so the
            // error reaches standard error in the chosen log format.
            tracing::error!("{message}");
            ExitCode::FAILURE
        }
    }
}
