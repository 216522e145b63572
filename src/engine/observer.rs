//! The engine's outgoing events. The metrics module implements [`Observer`];
//! the engine imports nothing of Prometheus.

use std::time::Duration;

use super::Trigger;
use crate::sink::SyncFailureReason;
use crate::source::FailureReason;

/// Receives the engine's events. Every method has an empty default.
pub trait Observer: Send + Sync + 'static {
    /// Called when a token is registered with these sink ids.
    fn token_added(&self, _name: &str, _sink_ids: &[String]) {}

    /// Called when a token is removed; its series should disappear.
    fn token_removed(&self, _name: &str, _sink_ids: &[String]) {}

    /// Called when a token request finishes.
    fn refresh_finished(&self, _name: &str, _trigger: Trigger, _duration: Duration, _outcome: Result<(), FailureReason>) {}

    /// Called when a sync attempt finishes.
    fn sync_finished(&self, _name: &str, _sink_id: &str, _outcome: Result<(), SyncFailureReason>) {}

    /// Called when Redis becomes reachable or unreachable, and once at start
    /// when coordination is configured.
    fn coordination_changed(&self, _up: bool) {}

    /// Called after each attempt to take a token's refresh lease.
    fn lease_attempt(&self, _name: &str, _result: LeaseResult) {}
}

/// Outcome of an attempt to take a refresh lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseResult {
    /// This instance may refresh.
    Acquired,
    /// Another instance holds the lease; this one waits for its token.
    Held,
    /// Redis could not be reached.
    Error,
}

impl LeaseResult {
    /// Every result, in metric-label order.
    pub const ALL: [LeaseResult; 3] = [LeaseResult::Acquired, LeaseResult::Held, LeaseResult::Error];

    pub fn as_str(self) -> &'static str {
        match self {
            LeaseResult::Acquired => "acquired",
            LeaseResult::Held => "held",
            LeaseResult::Error => "error",
        }
    }
}

/// An observer that ignores every event.
#[derive(Debug, Default)]
pub struct NoopObserver;

impl Observer for NoopObserver {}
