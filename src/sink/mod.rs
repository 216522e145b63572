//! Sinks: where each new token is written after a refresh: atomic files,
//! the encrypted session store, webhooks and commands.
//!
//! A [`Sink`] writes one token and reports a [`SinkError`] classified by a
//! closed set of [`SyncFailureReason`]s. Sinks know nothing of the engine,
//! sources, metrics or HTTP serving.

mod atomic;
mod exec;
mod file;
pub(crate) mod session_store;
mod webhook;

use std::fmt;
use std::io;

pub use atomic::write_atomic;
pub use exec::{ExecSink, ExecSinkAction};
pub use webhook::{WebhookSettings, WebhookSink};
pub use file::{FileFormat, FileSink};
pub use session_store::{LoadProblem, SessionKey, SessionStore, StoredToken};

use crate::source::BoxFuture;
use crate::token::Token;

/// A place that receives every new token.
pub trait Sink: Send + Sync + 'static {
    /// Returns a stable id used in logs and as the `sink` metric label: the sink
    /// type, a colon and its path, such as `file:/run/tokensync/billing.token`.
    fn id(&self) -> &str;

    /// Writes `token` for the token named `token_name`.
    fn sync<'a>(&'a self, token_name: &'a str, token: &'a Token) -> BoxFuture<'a, Result<(), SinkError>>;
}

/// Why a sync failed. The set is closed: it is used as a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SyncFailureReason {
    PermissionDenied,
    NoSpace,
    NotFound,
    /// The target is a symlink or not a regular file; tokensync never writes through it.
    UnsafePath,
    Encryption,
    Io,
    /// A webhook returned a status other than 2xx.
    HttpError,
    /// A webhook could not be reached.
    Connect,
    /// A webhook or a command did not finish in time.
    Timeout,
    /// A command exited with a failure, or a signal could not be sent.
    ExecFailed,
}

impl SyncFailureReason {
    /// Every reason, in metric-label order.
    pub const ALL: [SyncFailureReason; 10] = [
        SyncFailureReason::PermissionDenied,
        SyncFailureReason::NoSpace,
        SyncFailureReason::NotFound,
        SyncFailureReason::UnsafePath,
        SyncFailureReason::Encryption,
        SyncFailureReason::Io,
        SyncFailureReason::HttpError,
        SyncFailureReason::Connect,
        SyncFailureReason::Timeout,
        SyncFailureReason::ExecFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SyncFailureReason::PermissionDenied => "permission_denied",
            SyncFailureReason::NoSpace => "no_space",
            SyncFailureReason::NotFound => "not_found",
            SyncFailureReason::UnsafePath => "unsafe_path",
            SyncFailureReason::Encryption => "encryption",
            SyncFailureReason::Io => "io",
            SyncFailureReason::HttpError => "http_error",
            SyncFailureReason::Connect => "connect",
            SyncFailureReason::Timeout => "timeout",
            SyncFailureReason::ExecFailed => "exec_failed",
        }
    }

    /// Classifies an I/O error.
    pub fn from_io(error: &io::Error) -> Self {
        match error.kind() {
            io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => SyncFailureReason::PermissionDenied,
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => SyncFailureReason::NoSpace,
            io::ErrorKind::NotFound | io::ErrorKind::NotADirectory => SyncFailureReason::NotFound,
            _ => SyncFailureReason::Io,
        }
    }
}

impl fmt::Display for SyncFailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed sync. The message names the sink and never contains a token.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct SinkError {
    pub reason: SyncFailureReason,
    pub message: String,
}

impl SinkError {
    /// Builds an error from an I/O error met while doing `action` on `sink_id`.
    pub fn io(sink_id: &str, action: &str, error: &io::Error) -> Self {
        SinkError {
            reason: SyncFailureReason::from_io(error),
            message: format!("sink {sink_id}: {action} failed: {error}"),
        }
    }
}
