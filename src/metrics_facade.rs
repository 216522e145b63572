//! The engine's events through the [`metrics`] facade, for applications
//! that embed the engine and already install a `metrics` recorder. Names and
//! labels are those of `/metrics` (see docs/metrics.md).
//!
//! Counters and the refresh histogram follow the events. The state gauges
//! that `/metrics` computes at scrape time are set by
//! [`FacadeObserver::record_state`], which the application calls when it
//! wants them current (before its own scrape, say).
//!
//! ```
//! use std::sync::Arc;
//! use tokensync::metrics_facade::FacadeObserver;
//! use tokensync::{Engine, EngineOptions};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let observer = Arc::new(FacadeObserver);
//! let engine = Engine::new(EngineOptions { observer: observer.clone(), ..EngineOptions::default() });
//! // ... add tokens; every refresh now increments
//! // `tokensync_refreshes_total{token, trigger}` in the installed recorder.
//! observer.record_state(&engine);
//! # engine.shutdown();
//! # }
//! ```

use std::time::Duration;

use crate::engine::{Engine, LeaseResult, Observer, TokenState, Trigger};
use crate::sink::SyncFailureReason;
use crate::source::FailureReason;

/// An [`Observer`] that records through the `metrics` facade.
#[derive(Debug, Default, Clone, Copy)]
pub struct FacadeObserver;

impl FacadeObserver {
    /// Sets the per-token state gauges from a snapshot of `engine`.
    pub fn record_state(&self, engine: &Engine) {
        let now = engine.clock().now();
        for status in engine.status() {
            let token = status.name.clone();
            let valid = if status.state == TokenState::Valid { 1.0 } else { 0.0 };
            metrics::gauge!("tokensync_token_valid", "token" => token.clone()).set(valid);
            metrics::gauge!("tokensync_token_reauth_required", "token" => token.clone()).set(if status.reauth_required { 1.0 } else { 0.0 });
            metrics::gauge!("tokensync_consecutive_refresh_failures", "token" => token.clone()).set(f64::from(status.consecutive_failures));
            if let Some(expires_at) = status.expires_at {
                let seconds = |at: chrono::DateTime<chrono::Utc>| at.timestamp_millis() as f64 / 1000.0;
                metrics::gauge!("tokensync_token_expiry_timestamp_seconds", "token" => token.clone()).set(seconds(expires_at));
                let left = (expires_at - now).num_milliseconds() as f64 / 1000.0;
                metrics::gauge!("tokensync_token_time_to_expiry_seconds", "token" => token.clone()).set(left);
            }
            if let Some(lifetime) = status.lifetime {
                metrics::gauge!("tokensync_token_lifetime_seconds", "token" => token).set(lifetime.as_secs_f64());
            }
        }
    }
}

impl Observer for FacadeObserver {
    fn token_added(&self, name: &str, _sink_ids: &[String]) {
        // Registers every series at 0, as `/metrics` does, so rates see the first event.
        for trigger in Trigger::ALL {
            metrics::counter!("tokensync_refreshes_total", "token" => name.to_owned(), "trigger" => trigger.as_str()).absolute(0);
        }
        for reason in FailureReason::ALL {
            metrics::counter!("tokensync_refresh_failures_total", "token" => name.to_owned(), "reason" => reason.as_str()).absolute(0);
        }
    }

    fn refresh_finished(&self, name: &str, trigger: Trigger, duration: Duration, outcome: Result<(), FailureReason>) {
        metrics::counter!("tokensync_refreshes_total", "token" => name.to_owned(), "trigger" => trigger.as_str()).increment(1);
        metrics::histogram!("tokensync_refresh_duration_seconds", "token" => name.to_owned()).record(duration.as_secs_f64());
        if let Err(reason) = outcome {
            metrics::counter!("tokensync_refresh_failures_total", "token" => name.to_owned(), "reason" => reason.as_str()).increment(1);
        }
    }

    fn sync_finished(&self, name: &str, sink_id: &str, outcome: Result<(), SyncFailureReason>) {
        metrics::counter!("tokensync_syncs_total", "token" => name.to_owned(), "sink" => sink_id.to_owned()).increment(1);
        if let Err(reason) = outcome {
            metrics::counter!(
                "tokensync_sync_failures_total",
                "token" => name.to_owned(),
                "sink" => sink_id.to_owned(),
                "reason" => reason.as_str()
            )
            .increment(1);
        }
    }

    fn coordination_changed(&self, up: bool) {
        metrics::gauge!("tokensync_coordination_up").set(if up { 1.0 } else { 0.0 });
    }

    fn lease_attempt(&self, name: &str, result: LeaseResult) {
        metrics::counter!("tokensync_lease_acquisitions_total", "token" => name.to_owned(), "result" => result.as_str()).increment(1);
    }
}
