//! Scheduling under controlled time: paused tokio time drives the timers,
//! and a manual wall clock drives expiry, because paused tokio time does not
//! move the wall clock. The source is an in-process fake with no network.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use tokensync::clock::{Clock, ManualClock};
use tokensync::engine::{Engine, EngineOptions, TokenSpec, TokenState, Trigger};
use tokensync::source::{BoxFuture, FailureReason, FetchRequest, Source, SourceError};
use tokensync::Token;

mod common;
use common::Recorder;

/// Hands out `tok-N` tokens of a fixed lifetime, or fails while `failing` is set.
struct FakeSource {
    lifetime: Duration,
    issued: AtomicU64,
    failing: std::sync::atomic::AtomicBool,
}

impl Source for FakeSource {
    fn kind(&self) -> &'static str {
        "fake"
    }

    fn fetch<'a>(&'a self, request: FetchRequest<'a>) -> BoxFuture<'a, Result<Token, SourceError>> {
        Box::pin(async move {
            if self.failing.load(Ordering::SeqCst) {
                return Err(SourceError::new(FailureReason::Connect, "issuer down"));
            }
            let n = self.issued.fetch_add(1, Ordering::SeqCst) + 1;
            Ok(Token::bearer(format!("tok-{n}"), request.requested_at, self.lifetime))
        })
    }
}

fn start() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-01-01T12:00:00Z").unwrap().with_timezone(&Utc)
}

struct Harness {
    engine: Engine,
    clock: Arc<ManualClock>,
    source: Arc<FakeSource>,
    recorder: Arc<Recorder>,
}

fn harness(lifetime: Duration) -> Harness {
    let clock = Arc::new(ManualClock::new(start()));
    let recorder = Arc::new(Recorder::default());
    let engine = Engine::new(EngineOptions { clock: clock.clone() as Arc<dyn Clock>, observer: recorder.clone(), coordinator: None });
    let source = Arc::new(FakeSource { lifetime, issued: AtomicU64::new(0), failing: false.into() });
    let mut spec = TokenSpec::new("api", Some(source.clone() as Arc<dyn Source>));
    spec.policy.jitter = 0.0;
    engine.add_token(spec).unwrap();
    Harness { engine, clock, source, recorder }
}

/// Advances tokio time and the wall clock together, one second at a time.
async fn advance(harness: &Harness, seconds: u64) {
    for _ in 0..seconds {
        harness.clock.advance(TimeDelta::seconds(1));
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    tokio::task::yield_now().await;
}

#[tokio::test(start_paused = true)]
async fn one_hour_token_refreshed_at_48_minutes() {
    let harness = harness(Duration::from_secs(3600));
    advance(&harness, 1).await;
    assert_eq!(harness.source.issued.load(Ordering::SeqCst), 1);
    let requested_at = harness.engine.token("api").unwrap().requested_at;
    let next = harness.engine.status()[0].next_refresh_at.unwrap();
    assert_eq!(next - requested_at, TimeDelta::minutes(48), "refresh planned at 48 min of 60");

    advance(&harness, 47 * 60).await;
    assert_eq!(harness.source.issued.load(Ordering::SeqCst), 1, "no refresh before 48 min");
    advance(&harness, 60).await;
    assert_eq!(harness.source.issued.load(Ordering::SeqCst), 2, "refreshed at 48 min");
    assert_eq!(harness.recorder.refreshes("api", Trigger::Proactive), 1);
    assert_eq!(harness.recorder.refreshes("api", Trigger::Reactive), 0);
    harness.engine.shutdown();
}

#[tokio::test(start_paused = true)]
async fn suspend_past_expiry_refreshes_reactively() {
    let harness = harness(Duration::from_secs(60));
    advance(&harness, 1).await;
    assert_eq!(harness.source.issued.load(Ordering::SeqCst), 1);

    // A suspend: the wall clock jumps two hours while monotonic time does not move.
    harness.clock.advance(TimeDelta::hours(2));
    assert_eq!(harness.engine.status()[0].state, TokenState::Expired);
    // The clock-jump watchdog checks every 5 s of monotonic time.
    advance(&harness, 6).await;

    assert_eq!(harness.source.issued.load(Ordering::SeqCst), 2, "refreshed at once after the jump");
    assert_eq!(harness.recorder.refreshes("api", Trigger::Reactive), 1);
    assert_eq!(harness.engine.status()[0].state, TokenState::Valid);
    harness.engine.shutdown();
}

#[tokio::test(start_paused = true)]
async fn retries_continue_after_expiry() {
    let harness = harness(Duration::from_secs(60));
    advance(&harness, 1).await;
    harness.source.failing.store(true, Ordering::SeqCst);

    // Refresh due at 48 s; retries back off (full jitter, at most 5 min apart).
    advance(&harness, 15 * 60).await;
    let failures = harness.recorder.failures("api", FailureReason::Connect);
    assert!(failures >= 4, "retries go on after expiry: {failures}");
    assert!(failures <= 60, "backoff limits retries: {failures}");
    assert_eq!(harness.engine.status()[0].state, TokenState::Expired);
    assert!(harness.recorder.refreshes("api", Trigger::Reactive) >= 1, "attempts after expiry are reactive");

    harness.source.failing.store(false, Ordering::SeqCst);
    advance(&harness, 5 * 60 + 1).await;
    let status = &harness.engine.status()[0];
    assert_eq!(status.state, TokenState::Valid, "recovers once the issuer is back");
    assert_eq!(status.consecutive_failures, 0);
    harness.engine.shutdown();
}
