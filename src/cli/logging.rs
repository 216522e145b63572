//! Log setup: `tracing` with logfmt or JSON lines on standard error.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use super::{LogArgs, LogFormat};

/// Installs the global subscriber. `RUST_LOG`, when set, takes precedence
/// over `--log.level` for fine-grained filters.
pub fn init(args: &LogArgs) -> Result<(), String> {
    let level = args.level.to_ascii_lowercase();
    if !["error", "warn", "info", "debug", "trace"].contains(&level.as_str()) {
        return Err(format!("invalid --log.level `{}`: use error, warn, info, debug or trace", args.level));
    }
    // Dependencies log at their own level; only tokensync follows --log.level
    // below info, so that trace output stays about tokensync.
    let default_filter = format!("warn,tokensync={level}");
    let filter = EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new(default_filter));

    let registry = tracing_subscriber::registry().with(filter);
    let result = match args.format {
        LogFormat::Logfmt => registry.with(tracing_logfmt::builder().layer().with_writer(std::io::stderr)).try_init(),
        LogFormat::Json => registry
            .with(tracing_subscriber::fmt::layer().json().flatten_event(true).with_current_span(false).with_writer(std::io::stderr))
            .try_init(),
    };
    result.map_err(|error| format!("cannot install the logger: {error}"))
}
