//! Snapshots of the engine's state, read by the metrics collector, the status
//! page and embedders. They hold timing facts and never a secret.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::sink::SyncFailureReason;
use crate::source::FailureReason;
use crate::token::ExpirySource;

/// Cause of a refresh attempt; used as the `trigger` metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Trigger {
    /// The first token of a process, and retries until one was obtained.
    Initial,
    /// Scheduled before expiry.
    Proactive,
    /// The token was found expired when needed, or a consumer reported it rejected.
    Reactive,
    /// Requested by an operator or the application.
    Manual,
}

impl Trigger {
    pub const ALL: [Trigger; 4] = [Trigger::Initial, Trigger::Proactive, Trigger::Reactive, Trigger::Manual];

    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Initial => "initial",
            Trigger::Proactive => "proactive",
            Trigger::Reactive => "reactive",
            Trigger::Manual => "manual",
        }
    }
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a usable token is held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenState {
    /// No token has been obtained or restored yet.
    Missing,
    Valid,
    Expired,
}

impl TokenState {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenState::Missing => "missing",
            TokenState::Valid => "valid",
            TokenState::Expired => "expired",
        }
    }
}

/// One token's state at the time of the snapshot.
#[derive(Clone, Debug)]
pub struct TokenStatus {
    pub name: String,
    /// The source type, or `None` for a token the application feeds itself.
    pub source_kind: Option<&'static str>,
    pub state: TokenState,
    pub expires_at: Option<DateTime<Utc>>,
    pub lifetime: Option<Duration>,
    pub expiry_source: Option<ExpirySource>,
    pub last_success_at: Option<DateTime<Utc>>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub next_refresh_at: Option<DateTime<Utc>>,
    pub consecutive_failures: u32,
    pub last_failure: Option<FailureReason>,
    /// The last failure's message; sanitized, never a secret.
    pub last_error: Option<String>,
    /// The issuer rejected the grant or the client; a person must act.
    pub reauth_required: bool,
    pub sinks: Vec<SinkStatus>,
    /// `None` unless the token is coordinated with other instances.
    pub coordination: Option<TokenCoordination>,
}

/// A coordinated token's relation to its shared state in Redis.
#[derive(Clone, Debug)]
pub struct TokenCoordination {
    /// The version of the shared state last read or written; 0 before any.
    pub shared_version: u64,
    /// The current token came from another instance, not from a request here.
    pub adopted: bool,
    /// Not refreshed, because Redis is unreachable or the shared state is
    /// in another key.
    pub held: bool,
}

/// One sink's state at the time of the snapshot.
#[derive(Clone, Debug)]
pub struct SinkStatus {
    pub id: String,
    pub last_success_at: Option<DateTime<Utc>>,
    pub consecutive_failures: u32,
    pub last_failure: Option<SyncFailureReason>,
    pub last_error: Option<String>,
}
