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

use crate::engine::{Engine, LeaseResult, Observer, Trigger};
use crate::metrics::TOKEN_GAUGES;
use crate::sink::SyncFailureReason;
use crate::source::FailureReason;

/// An [`Observer`] that records through the `metrics` facade.
#[derive(Debug, Default, Clone, Copy)]
pub struct FacadeObserver;

impl FacadeObserver {
    /// Sets the per-token state gauges from a snapshot of `engine`: the same
    /// families, computed the same way, as `/metrics` at scrape time.
    pub fn record_state(&self, engine: &Engine) {
        let now = engine.clock().now();
        for status in engine.status() {
            for (name, _, value_of) in TOKEN_GAUGES {
                if let Some(value) = value_of(&status, now) {
                    metrics::gauge!(name, "token" => status.name.clone()).set(value);
                }
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
