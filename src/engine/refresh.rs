//! One refresh: the single-flight around it, the token request, storing the
//! result and planning the next attempt.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use tokio::sync::watch;

use super::{EngineError, Entry, FlightOutcome, Inner, Trigger, lock, shared, sync_outcome};
use crate::policy::{next_refresh, retry_delay};
use crate::source::{FailureReason, FetchRequest, SourceError};
use crate::token::Token;

/// Identical failures of one token are logged at most once per this period.
const REPEAT_LOG_PERIOD: Duration = Duration::from_secs(60);

/// Returns whether the configured initial refresh token was written after
/// `at`. An operator who writes a new one (after a new login) wants it used
/// over a stored or shared token obtained before.
pub(super) fn seed_written_after(entry: &Entry, at: DateTime<Utc>) -> bool {
    entry
        .spec
        .source
        .as_ref()
        .and_then(|source| source.seed_modified_at())
        .is_some_and(|modified| DateTime::<Utc>::from(modified) > at)
}

/// Uses a token restored from the session store, if there is one.
pub(super) fn restore(entry: &Entry, now: DateTime<Utc>) {
    let spec = &entry.spec;
    let Some(stored) = spec.session_store.as_ref().and_then(|store| store.restored(&spec.name)) else {
        return;
    };
    let mut token = stored.token;

    if seed_written_after(entry, stored.saved_at) {
        tracing::info!(token = %spec.name, "the configured refresh token is newer than the session store's; using the configured one");
        token.refresh_token = None;
    }

    let valid = !token.is_expired(now);
    tracing::info!(
        token = %spec.name,
        valid,
        expires_at = %token.expires_at.to_rfc3339(),
        "token restored from the session store"
    );
    let token = Arc::new(token);
    entry.current.store(Some(token.clone()));
    {
        let mut status = lock(&entry.status);
        status.ever_valid = valid;
        status.next_refresh_at = Some(if valid {
            next_refresh(token.requested_at, token.expires_at, &spec.policy, token.requested_at, now, rand::random())
        } else {
            now
        });
    }
    if valid {
        entry.published.send_replace(Some(token));
    }
}

/// Refreshes unless the token is in backoff after a failure, in which case
/// the last error is returned at once.
pub(super) async fn refresh_unless_backing_off(
    inner: &Arc<Inner>,
    entry: &Arc<Entry>,
    trigger: Trigger,
) -> Result<Arc<Token>, EngineError> {
    if entry.spec.source.is_none() {
        return Err(EngineError::NoSource(entry.spec.name.clone()));
    }
    let in_flight = lock(&entry.flight).is_some();
    if !in_flight {
        let now = inner.clock.now();
        let status = lock(&entry.status);
        let backing_off = status.consecutive_failures > 0 && status.next_refresh_at.is_some_and(|next| next > now);
        if backing_off {
            return Err(EngineError::Refresh {
                name: entry.spec.name.clone(),
                reason: status.last_failure.unwrap_or(FailureReason::ServerError),
                message: status.last_error.clone().unwrap_or_default(),
                retry_after: status.next_refresh_at.and_then(|next| (next - now).to_std().ok()),
            });
        }
    }
    refresh(inner, entry, trigger).await
}

/// Refreshes the token once, sharing the request with concurrent callers:
/// the first caller starts the request in its own task (so that a caller
/// that gives up does not cancel it) and every caller receives its outcome.
pub(super) async fn refresh(inner: &Arc<Inner>, entry: &Arc<Entry>, trigger: Trigger) -> Result<Arc<Token>, EngineError> {
    if entry.spec.source.is_none() {
        return Err(EngineError::NoSource(entry.spec.name.clone()));
    }
    let mut receiver = {
        let mut flight = lock(&entry.flight);
        match flight.as_ref() {
            Some(receiver) => receiver.clone(),
            None => {
                let (sender, receiver) = watch::channel(None);
                *flight = Some(receiver.clone());
                let (inner, entry) = (inner.clone(), entry.clone());
                tokio::spawn(async move {
                    let outcome = run_refresh(&inner, &entry, trigger).await;
                    // Send before clearing: a caller arriving in between
                    // receives this outcome instead of starting a new request.
                    sender.send_replace(Some(outcome));
                    *lock(&entry.flight) = None;
                    entry.wake.notify_one();
                });
                receiver
            }
        }
    };
    let name = entry.spec.name.clone();
    match receiver.wait_for(Option::is_some).await {
        Ok(outcome) => outcome.clone().unwrap_or(Err(EngineError::Stopped(name))),
        Err(_) => Err(EngineError::Stopped(name)),
    }
}

/// Runs one refresh, coordinated with other instances when Redis is configured.
async fn run_refresh(inner: &Arc<Inner>, entry: &Arc<Entry>, trigger: Trigger) -> FlightOutcome {
    match inner.coordinator.clone().filter(|_| shared::is_coordinated(entry)) {
        Some(coordinator) => shared::coordinated_refresh(inner, entry, trigger, &coordinator).await,
        None => fetch(inner, entry, trigger, None).await,
    }
}

/// Requests a token from the source and records the outcome. With `shared`,
/// the new token is written to Redis before anything else reads it.
pub(super) async fn fetch(
    inner: &Arc<Inner>,
    entry: &Arc<Entry>,
    trigger: Trigger,
    mut shared: Option<shared::SharedWrite<'_>>,
) -> FlightOutcome {
    let spec = &entry.spec;
    let source = spec.source.as_ref().ok_or_else(|| EngineError::NoSource(spec.name.clone()))?;
    let current = entry.current.load_full();
    let requested_at = inner.clock.now();
    lock(&entry.status).last_attempt_at = Some(requested_at);

    let started = Instant::now();
    let request = FetchRequest {
        token_name: &spec.name,
        current: current.as_deref(),
        requested_at,
        fallback_lifetime: spec.fallback_lifetime,
    };
    let mut result = source.fetch(request).await;
    let mut presented = current.clone();

    // A rejected refresh token may have been rotated by another instance
    // (through Redis) or another process that shares the session store: use
    // the newer one before giving up.
    let rejected = matches!(&result, Err(error) if error.reason == FailureReason::Rejected);
    let newer = if rejected {
        let from_redis = match &mut shared {
            Some(shared) => shared::newer_shared_token(shared, entry, current.as_deref()).await,
            None => None,
        };
        match from_redis {
            Some(newer) => Some(newer),
            None => newer_stored_token(entry, current.as_deref()).await,
        }
    } else {
        None
    };
    if let Some(newer) = newer {
        tracing::info!(token = %spec.name, "another instance or process stored a newer refresh token; retrying with it");
        let newer = Arc::new(newer);
        entry.current.store(Some(newer.clone()));
        let retry = FetchRequest { current: Some(&newer), ..request };
        result = source.fetch(retry).await;
        presented = Some(newer);
    }
    let duration = started.elapsed();

    match result {
        Ok(token) => {
            let rotated = token.refresh_token.is_some()
                && presented.as_ref().and_then(|current| current.refresh_token.as_ref()) != token.refresh_token.as_ref();
            let fetched = Arc::new(token);
            let token = match &shared {
                Some(shared) => shared::publish(shared, inner, entry, fetched.clone()).await,
                None => fetched.clone(),
            };
            if rotated {
                persist_rotation(inner, entry, &token).await;
            }
            let now = inner.clock.now();
            store_token(entry, token.clone(), now);
            if !Arc::ptr_eq(&token, &fetched) {
                // A lost write to Redis: the other instance's token is served.
                lock(&entry.status).adopted = true;
            }
            lock(&entry.log_limiter).reset();
            // Field names are a documented contract (docs/logs.md).
            tracing::info!(
                token = %spec.name,
                trigger = %trigger,
                expiry = %token.expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                lifetime_s = token.lifetime.as_secs(),
                expiry_source = %token.expiry_source,
                duration_ms = duration.as_millis() as u64,
                "token refreshed"
            );
            inner.observer.refresh_finished(&spec.name, trigger, duration, Ok(()));
            Ok(token)
        }
        Err(error) => {
            let delay = record_failure(inner, entry, &error);
            log_failure(entry, trigger, &error, delay, duration);
            inner.observer.refresh_finished(&spec.name, trigger, duration, Err(error.reason));
            Err(EngineError::from_source(&spec.name, &error))
        }
    }
}

/// Reads the session store again and returns its entry for this token when
/// it carries a refresh token other than the one just presented.
async fn newer_stored_token(entry: &Entry, presented: Option<&Token>) -> Option<Token> {
    let store = entry.spec.session_store.clone()?;
    let presented_refresh = presented.and_then(|token| token.refresh_token.clone())?;
    let name = entry.spec.name.clone();
    let stored = tokio::task::spawn_blocking(move || store.reread(&name)).await.ok()??;
    let stored_refresh = stored.token.refresh_token.as_ref()?;
    (*stored_refresh != presented_refresh).then_some(stored.token)
}

/// Writes a rotated refresh token to the session store before the new access
/// token is handed out, so that a crash cannot lose the only valid one.
async fn persist_rotation(inner: &Arc<Inner>, entry: &Arc<Entry>, token: &Arc<Token>) {
    let Some(store) = entry.spec.session_store.clone() else { return };
    let (name, token_copy, now) = (entry.spec.name.clone(), Token::clone(token), inner.clock.now());
    let outcome = tokio::task::spawn_blocking(move || store.save(&name, &token_copy, now))
        .await
        .unwrap_or_else(|join_error| {
            Err(crate::sink::SinkError {
                reason: crate::sink::SyncFailureReason::Io,
                message: format!("session store write task failed: {join_error}"),
            })
        });
    if let Err(error) = &outcome {
        tracing::error!(
            token = %entry.spec.name,
            error = %error,
            "persisting the rotated refresh token failed; it is held in memory and the write is retried"
        );
    }
    if let Some(store) = &entry.spec.session_store {
        let sink_id = format!("session_store:{}", store.path().display());
        if let Some(index) = entry.spec.sinks.iter().position(|sink| sink.id() == sink_id) {
            entry.record_sync(index, inner.clock.now(), &outcome);
            inner.observer.sync_finished(&entry.spec.name, &sink_id, sync_outcome(&outcome));
        }
    }
}

/// Stores a new token, plans its proactive refresh and hands it to the sinks.
pub(super) fn store_token(entry: &Entry, token: Arc<Token>, now: DateTime<Utc>) {
    let spec = &entry.spec;
    entry.current.store(Some(token.clone()));
    {
        let mut status = lock(&entry.status);
        let last_attempt = status.last_attempt_at.unwrap_or(token.requested_at).max(token.requested_at);
        status.last_success_at = Some(now);
        status.consecutive_failures = 0;
        status.last_failure = None;
        status.last_error = None;
        status.retry_after = None;
        status.reauth_required = false;
        status.coordination_hold = false;
        status.adopted = false;
        status.ever_valid |= !token.is_expired(now);
        status.next_refresh_at =
            Some(next_refresh(token.requested_at, token.expires_at, &spec.policy, last_attempt, now, rand::random()));
    }
    entry.published.send_replace(Some(token));
    entry.wake.notify_one();
}

/// Records a failure and plans the retry; returns the delay until it.
fn record_failure(inner: &Inner, entry: &Entry, error: &SourceError) -> Duration {
    let spec = &entry.spec;
    let now = inner.clock.now();
    let mut status = lock(&entry.status);
    status.consecutive_failures = status.consecutive_failures.saturating_add(1);
    status.last_failure = Some(error.reason);
    status.last_error = Some(error.message.clone());
    status.retry_after = error.retry_after;

    let delay = if error.reason == FailureReason::Rejected {
        // Retrying will not help until a person acts; do not hammer the issuer.
        status.reauth_required = true;
        spec.backoff.max
    } else {
        retry_delay(status.consecutive_failures, &spec.backoff, rand::random())
    };
    let delay = delay.max(error.retry_after.unwrap_or(Duration::ZERO));
    status.next_refresh_at = Some(now + TimeDelta::from_std(delay).unwrap_or(TimeDelta::days(1)));
    delay
}

/// Logs a failure, at most once per [`REPEAT_LOG_PERIOD`] for identical ones.
fn log_failure(entry: &Entry, trigger: Trigger, error: &SourceError, delay: Duration, duration: Duration) {
    let Some(suppressed) = lock(&entry.log_limiter).admit(error) else { return };
    let (failures, expiry) = {
        let status = lock(&entry.status);
        let expiry = entry.current.load().as_ref().map(|token| token.expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        (status.consecutive_failures, expiry)
    };
    // Field names are a documented contract (docs/logs.md).
    tracing::warn!(
        token = %entry.spec.name,
        trigger = %trigger,
        reason = %error.reason,
        expiry = expiry.as_deref().unwrap_or("none"),
        duration_ms = duration.as_millis() as u64,
        status = error.status,
        consecutive_failures = failures,
        retry_in_ms = delay.as_millis() as u64,
        suppressed,
        error = %error.message,
        "token refresh failed"
    );
}

/// Rate limit for identical failure logs of one token.
#[derive(Default)]
pub(super) struct LogLimiter {
    last: Option<(FailureReason, String, Instant)>,
    suppressed: u64,
}

impl LogLimiter {
    /// Returns `Some(suppressed count)` when this failure should be logged.
    fn admit(&mut self, error: &SourceError) -> Option<u64> {
        let now = Instant::now();
        if let Some((reason, message, logged_at)) = &self.last
            && *reason == error.reason
            && *message == error.message
            && now.duration_since(*logged_at) < REPEAT_LOG_PERIOD
        {
            self.suppressed += 1;
            return None;
        }
        let suppressed = std::mem::take(&mut self.suppressed);
        self.last = Some((error.reason, error.message.clone(), now));
        Some(suppressed)
    }

    fn reset(&mut self) {
        self.last = None;
        self.suppressed = 0;
    }
}
