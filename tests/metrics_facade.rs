//! The `metrics` facade observer, recorded by metrics-util's debugging recorder.
#![cfg(feature = "metrics-facade")]

use std::sync::Arc;
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tokensync::engine::{Engine, EngineOptions, TokenSpec};
use tokensync::metrics_facade::FacadeObserver;
use tokensync::source::{BoxFuture, FailureReason, FetchRequest, Source, SourceError};
use tokensync::Token;

/// Succeeds once, then fails with `connect`.
struct OnceSource(std::sync::atomic::AtomicBool);

impl Source for OnceSource {
    fn kind(&self) -> &'static str {
        "once"
    }

    fn fetch<'a>(&'a self, request: FetchRequest<'a>) -> BoxFuture<'a, Result<Token, SourceError>> {
        Box::pin(async move {
            if self.0.swap(true, std::sync::atomic::Ordering::SeqCst) {
                Err(SourceError::new(FailureReason::Connect, "down"))
            } else {
                Ok(Token::bearer("facade-token", request.requested_at, Duration::from_secs(3600)))
            }
        })
    }
}

#[test]
fn facade_records_engine_events() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let observer = Arc::new(FacadeObserver);
            let engine = Engine::new(EngineOptions { observer: observer.clone(), ..EngineOptions::default() });
            engine.add_token(TokenSpec::new("embedded", Some(Arc::new(OnceSource(false.into()))))).unwrap();
            engine.ensure_fresh("embedded").await.unwrap();
            let _ = engine.refresh_now("embedded").await;
            observer.record_state(&engine);
            engine.shutdown();
        });
    });

    let snapshot = snapshotter.snapshot().into_vec();
    let value = |name: &str, labels: &[(&str, &str)]| {
        snapshot.iter().find_map(|(key, _, _, value)| {
            let key = key.key();
            let matches = key.name() == name
                && labels.iter().all(|(label, expected)| key.labels().any(|found| found.key() == *label && found.value() == *expected));
            matches.then_some(value)
        })
    };
    assert_eq!(value("tokensync_refreshes_total", &[("token", "embedded"), ("trigger", "initial")]), Some(&DebugValue::Counter(1)));
    assert_eq!(value("tokensync_refreshes_total", &[("token", "embedded"), ("trigger", "manual")]), Some(&DebugValue::Counter(1)));
    assert_eq!(value("tokensync_refreshes_total", &[("token", "embedded"), ("trigger", "reactive")]), Some(&DebugValue::Counter(0)));
    assert_eq!(value("tokensync_refresh_failures_total", &[("token", "embedded"), ("reason", "connect")]), Some(&DebugValue::Counter(1)));
    let Some(DebugValue::Histogram(samples)) = value("tokensync_refresh_duration_seconds", &[("token", "embedded")]) else {
        panic!("no refresh duration histogram")
    };
    assert_eq!(samples.len(), 2);
    let Some(DebugValue::Gauge(valid)) = value("tokensync_token_valid", &[("token", "embedded")]) else { panic!("no validity gauge") };
    assert_eq!(valid.into_inner(), 1.0);
    let last_success = value("tokensync_last_refresh_success_timestamp_seconds", &[("token", "embedded")]);
    assert!(matches!(last_success, Some(DebugValue::Gauge(_))), "the facade lacks a gauge that /metrics has");
}
