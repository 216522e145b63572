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
}

/// An observer that ignores every event.
#[derive(Debug, Default)]
pub struct NoopObserver;

impl Observer for NoopObserver {}
