//! The YAML configuration: its types, parsing with line numbers, offline
//! validation, and the engine token specs it builds.
//!
//! Loading has three steps. [`parse`] checks the structure (types, unknown
//! keys, duration syntax) and stops at the first error, with its line.
//! [`resolve`] checks everything else that can be checked offline (URLs,
//! readable secret files, key lengths, writable sink directories) and reports
//! every problem at once, each with its YAML path and line. [`build`] turns
//! the resolved tokens into [`TokenSpec`](crate::engine::TokenSpec)s.

mod build;
mod check_coordination;
mod check_listeners;
mod check_sinks;
mod check_sources;
mod resolve;
mod types;

pub use build::{BuiltTokens, StoreCache, build};
pub use check_listeners::{DEFAULT_REPLAY_BODY_LIMIT, DEFAULT_SOCKET_MODE, listeners_clash};
pub use check_sinks::DEFAULT_SINK_TIMEOUT;
pub use resolve::{
    ApiListen, Problem, ResolvedApi, ResolvedConfig, ResolvedProxy, ResolvedSink, ResolvedSource, ResolvedToken, expand_env, resolve,
};
pub use types::*;

use std::fmt;
use std::path::Path;

/// The configuration could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub origin: String,
    pub line: Option<u64>,
    pub column: Option<u64>,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (Some(line), Some(column)) => write!(f, "{}:{line}:{column}: {}", self.origin, self.message),
            (Some(line), None) => write!(f, "{}:{line}: {}", self.origin, self.message),
            _ => write!(f, "{}: {}", self.origin, self.message),
        }
    }
}

impl std::error::Error for ParseError {}

/// Largest configuration file accepted, in bytes: room for about 400,000
/// one-line tokens.
pub const MAX_CONFIG_BYTES: u64 = 64 * 1024 * 1024;
/// Most YAML nodes (maps, sequences, scalars) in a configuration: about 12
/// per token, so room for some 300,000 tokens. The parser's other budgets
/// (nesting depth, aliases) stay at their defaults.
const MAX_CONFIG_NODES: usize = 4_000_000;

/// Reads and parses a configuration file.
pub fn load(path: &Path) -> Result<Config, ParseError> {
    let origin = path.display().to_string();
    let error = |message: String| ParseError { origin: origin.clone(), line: None, column: None, message };
    let metadata = std::fs::metadata(path).map_err(|io_error| error(format!("cannot read the file: {io_error}")))?;
    if metadata.len() > MAX_CONFIG_BYTES {
        return Err(error(format!("the file is {} bytes; the limit is {MAX_CONFIG_BYTES}", metadata.len())));
    }
    let text = std::fs::read_to_string(path).map_err(|io_error| error(format!("cannot read the file: {io_error}")))?;
    parse(&text, &origin)
}

/// Parses configuration text; `origin` names it in errors.
///
/// Error messages do not quote the offending source line, because a config
/// may hold a secret inline on it.
pub fn parse(text: &str, origin: &str) -> Result<Config, ParseError> {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_nodes = MAX_CONFIG_NODES;
    budget.max_events = 2 * MAX_CONFIG_NODES;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    serde_saphyr::from_str_with_options::<Config>(text, options).map_err(|error| {
        let location = error.location();
        ParseError {
            origin: origin.to_owned(),
            line: location.map(|location| location.line()).filter(|line| *line > 0),
            column: location.map(|location| location.column()).filter(|column| *column > 0),
            message: first_line(&error.without_snippet().to_string()),
        }
    })
}

/// Returns the JSON Schema of the configuration file, generated from the
/// types; `config/tokensync.schema.json` is its checked-in copy.
pub fn json_schema() -> serde_json::Value {
    let schema = schemars::schema_for!(Config);
    let mut value = serde_json::to_value(schema).unwrap_or_default();
    if let Some(object) = value.as_object_mut() {
        object.insert("title".to_owned(), "tokensync configuration".into());
    }
    value
}

/// Keeps the first line of a message, without the parser's own
/// "at line N, column M" suffix, which the error's prefix already gives.
fn first_line(message: &str) -> String {
    let line = message.lines().next().unwrap_or(message).trim();
    match line.rfind(" at line ") {
        Some(at) if line[at..].contains(", column ") => line[..at].trim_end().to_owned(),
        _ => line.to_owned(),
    }
}
