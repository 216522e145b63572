//! Refreshing a token that several instances share through Redis: take the
//! token's lease, adopt what another instance obtained in the meantime, and
//! write each new token to Redis before any sink receives it. Also the task
//! that adopts the tokens other instances obtain.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::{EngineError, Entry, FlightOutcome, Inner, LeaseResult, Trigger, lock, refresh};
use crate::coordination::{CoordinationError, Coordinator, Lease, Notice, SharedState, WhenUnavailable, WriteOutcome};
use crate::token::Token;

/// Delay before a token held while Redis is unreachable tries again.
const HOLD_RETRY: Duration = Duration::from_secs(2);
/// Delay before a token held because the shared state is in another key
/// tries again; fixing that takes an operator.
const FOREIGN_KEY_RETRY: Duration = Duration::from_secs(30);

/// The target of a refresh under a lease: Redis, as the version after `expected`.
pub(super) struct SharedWrite<'a> {
    coordinator: &'a Arc<Coordinator>,
    expected: u64,
}

/// Returns whether a token takes part in coordination.
pub(super) fn is_coordinated(entry: &Entry) -> bool {
    entry.spec.source.as_ref().is_some_and(|source| source.is_shared())
}

/// Returns whether the token rotates refresh tokens, by its source or
/// because its current token carries one (an `http_login` source, say).
fn rotates(entry: &Entry) -> bool {
    entry.spec.source.as_ref().is_some_and(|source| source.rotates_refresh_tokens())
        || entry.current.load().as_ref().is_some_and(|token| token.refresh_token.is_some())
}

/// Refreshes under the token's lease. While another instance has the lease,
/// waits for the token that instance obtains. Without Redis, refreshes
/// locally or keeps the current token, as configured.
pub(super) async fn coordinated_refresh(
    inner: &Arc<Inner>,
    entry: &Arc<Entry>,
    trigger: Trigger,
    coordinator: &Arc<Coordinator>,
) -> FlightOutcome {
    let name = &entry.spec.name;
    let started_with = entry.current.load_full();
    let lease = coordinator.lease_duration();
    let poll = (lease / 10).clamp(Duration::from_millis(100), Duration::from_secs(1));
    let deadline = Instant::now() + lease * 4;
    let mut reported_held = false;
    loop {
        match coordinator.try_lease(name).await {
            Ok(Some(lease)) => {
                inner.observer.lease_attempt(name, LeaseResult::Acquired);
                return refresh_under_lease(inner, entry, trigger, coordinator, lease, started_with.as_ref()).await;
            }
            Ok(None) => {
                if !reported_held {
                    inner.observer.lease_attempt(name, LeaseResult::Held);
                    tracing::debug!(token = %name, "another instance is refreshing this token; waiting for its result");
                    reported_held = true;
                }
                tokio::select! {
                    () = entry.adopted.notified() => {}
                    () = tokio::time::sleep(poll) => {}
                }
                if let Ok(state) = coordinator.read(name).await {
                    adopt_if_newer(inner, entry, state);
                }
                if let Some(token) = replacement(inner, entry, trigger, started_with.as_ref()) {
                    return Ok(token);
                }
                if Instant::now() > deadline {
                    return Err(EngineError::CoordinationUnavailable {
                        name: name.clone(),
                        message: format!(
                            "another instance has held the refresh lease for over {}",
                            humantime::format_duration(lease * 4)
                        ),
                    });
                }
            }
            Err(error) => {
                inner.observer.lease_attempt(name, LeaseResult::Error);
                return refresh_without_coordination(inner, entry, trigger, coordinator, Uncoordinated::Unreachable(error)).await;
            }
        }
    }
}

/// With the lease taken: re-reads the shared state, adopts a token another
/// instance obtained meanwhile, and otherwise refreshes, keeping the lease
/// alive until the new token is written.
async fn refresh_under_lease(
    inner: &Arc<Inner>,
    entry: &Arc<Entry>,
    trigger: Trigger,
    coordinator: &Arc<Coordinator>,
    lease: Lease,
    started_with: Option<&Arc<Token>>,
) -> FlightOutcome {
    let name = &entry.spec.name;
    let state = match coordinator.read(name).await {
        Ok(state) => state,
        Err(error) => {
            coordinator.release(lease).await;
            return refresh_without_coordination(inner, entry, trigger, coordinator, Uncoordinated::Unreachable(error)).await;
        }
    };
    if state.undecryptable {
        coordinator.release(lease).await;
        return refresh_without_coordination(inner, entry, trigger, coordinator, Uncoordinated::ForeignKey(state.version)).await;
    }
    let mut expected = state.version;
    if !adopt_if_newer(inner, entry, state) && entry.needs_publish.load(Ordering::Acquire) {
        expected = publish_current(coordinator, entry, expected).await.unwrap_or(expected);
    }
    if let Some(token) = replacement(inner, entry, trigger, started_with) {
        coordinator.release(lease).await;
        return Ok(token);
    }

    let renewal = tokio::spawn(keep_alive(coordinator.clone(), lease.clone()));
    let outcome = refresh::fetch(inner, entry, trigger, Some(SharedWrite { coordinator, expected })).await;
    renewal.abort();
    coordinator.release(lease).await;
    outcome
}

/// Extends the lease every third of its duration while a request runs, so
/// that a slow issuer does not let another instance in. A killed process
/// stops extending it, and the lease expires.
async fn keep_alive(coordinator: Arc<Coordinator>, lease: Lease) {
    let period = coordinator.lease_duration() / 3;
    loop {
        tokio::time::sleep(period).await;
        match coordinator.renew(&lease).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!("the refresh lease expired during the request; the write to Redis will tell whether another instance took over");
                return;
            }
            Err(error) => tracing::debug!(error = %error, "extending the refresh lease failed"),
        }
    }
}

/// Reason a refresh cannot go through Redis.
enum Uncoordinated {
    /// Redis is unreachable or refused a command.
    Unreachable(CoordinationError),
    /// Redis stores a state of this version that this process cannot decrypt.
    ForeignKey(u64),
}

/// Without usable coordination: a token that rotates refresh tokens is held,
/// because a refresh here could present a refresh token another instance
/// already used, and issuers with reuse detection then revoke the grant.
/// While Redis is unreachable, `when_unavailable: refresh` lifts the hold.
/// Any other token refreshes locally.
async fn refresh_without_coordination(
    inner: &Arc<Inner>,
    entry: &Arc<Entry>,
    trigger: Trigger,
    coordinator: &Arc<Coordinator>,
    cause: Uncoordinated,
) -> FlightOutcome {
    let name = &entry.spec.name;
    let (hold, message, retry) = match &cause {
        Uncoordinated::Unreachable(error) => (
            coordinator.when_unavailable() == WhenUnavailable::Hold,
            format!("{error}; holding the current token until coordination is back"),
            HOLD_RETRY,
        ),
        Uncoordinated::ForeignKey(version) => (
            true,
            format!(
                "the shared state in Redis (version {version}) does not decrypt with this instance's coordination key; \
                 every instance needs the same key, and this token is not refreshed here until they match"
            ),
            FOREIGN_KEY_RETRY,
        ),
    };
    if rotates(entry) && hold {
        let now = inner.clock.now();
        let mut status = lock(&entry.status);
        if !status.coordination_hold {
            match &cause {
                Uncoordinated::Unreachable(error) => tracing::warn!(
                    token = %name,
                    error = %error,
                    "Redis is unreachable; this token rotates its refresh token, so it is not refreshed until coordination is back"
                ),
                Uncoordinated::ForeignKey(_) => tracing::error!(token = %name, "{message}"),
            }
        }
        status.coordination_hold = true;
        status.last_error = Some(message.clone());
        status.next_refresh_at = Some(now + chrono::TimeDelta::from_std(retry).unwrap_or_default());
        return Err(EngineError::CoordinationUnavailable { name: name.clone(), message });
    }
    let outcome = refresh::fetch(inner, entry, trigger, None).await;
    if let (Uncoordinated::Unreachable(_), Ok(token)) = (&cause, &outcome)
        && token.refresh_token.is_some()
    {
        // Redis still stores the refresh token this one replaced. A state
        // in another key is never overwritten, because the other instances
        // use it.
        entry.needs_publish.store(true, Ordering::Release);
    }
    outcome
}

/// Writes a new token to Redis. On a conflict, another instance wrote
/// first (the lease expired during a slow request): its token is adopted
/// so every instance serves the same one. Returns the token to use.
pub(super) async fn publish(shared: &SharedWrite<'_>, inner: &Arc<Inner>, entry: &Arc<Entry>, token: Arc<Token>) -> Arc<Token> {
    let name = &entry.spec.name;
    match shared.coordinator.write(name, &token, shared.expected).await {
        Ok(WriteOutcome::Written(version)) => {
            entry.shared_version.store(version, Ordering::Release);
            entry.needs_publish.store(false, Ordering::Release);
            token
        }
        Ok(WriteOutcome::Conflict(version)) => {
            tracing::warn!(
                token = %name,
                expected = shared.expected,
                found = version,
                "another instance wrote this token to Redis during the refresh; using its token"
            );
            match shared.coordinator.read(name).await {
                Ok(SharedState { version, token: Some(theirs), .. }) if !theirs.is_expired(inner.clock.now()) => {
                    entry.shared_version.store(version, Ordering::Release);
                    Arc::new(theirs)
                }
                _ => token,
            }
        }
        Err(error) => {
            tracing::warn!(token = %name, error = %error, "writing the new token to Redis failed; it is written when coordination is back");
            if token.refresh_token.is_some() {
                entry.needs_publish.store(true, Ordering::Release);
            }
            token
        }
    }
}

/// Writes the current token, obtained while Redis was unreachable, as the
/// version after `expected`. Returns the new version.
async fn publish_current(coordinator: &Coordinator, entry: &Entry, expected: u64) -> Option<u64> {
    let current = entry.current.load_full()?;
    match coordinator.write(&entry.spec.name, &current, expected).await {
        Ok(WriteOutcome::Written(version)) => {
            entry.shared_version.store(version, Ordering::Release);
            entry.needs_publish.store(false, Ordering::Release);
            tracing::info!(token = %entry.spec.name, version, "wrote the token obtained while coordination was down to Redis");
            Some(version)
        }
        Ok(WriteOutcome::Conflict(_)) | Err(_) => None,
    }
}

/// For a rejected refresh token: returns the shared token when it carries
/// another refresh token, which means this instance lost a race. The write
/// of the retry's result then follows that token's version, so that it does
/// not conflict with the state it builds on.
pub(super) async fn newer_shared_token(shared: &mut SharedWrite<'_>, entry: &Entry, presented: Option<&Token>) -> Option<Token> {
    let presented = presented?.refresh_token.as_ref()?;
    let state = shared.coordinator.read(&entry.spec.name).await.ok()?;
    let token = state.token?;
    if token.refresh_token.as_ref()? == presented {
        return None;
    }
    shared.expected = state.version;
    entry.shared_version.store(state.version, Ordering::Release);
    Some(token)
}

/// Uses the shared token when it is newer than the current one. An expired
/// one still replaces the current token, because its refresh token is the
/// newest. Returns true when the current token was replaced.
fn adopt_if_newer(inner: &Inner, entry: &Entry, state: SharedState) -> bool {
    let Some(token) = state.token else { return false };

    // After a new login, the state is not adopted: the next refresh here
    // uses the new refresh token and writes the result.
    if refresh::seed_written_after(entry, token.requested_at) {
        entry.shared_version.store(state.version, Ordering::Release);
        return false;
    }

    let seen = entry.shared_version.swap(state.version, Ordering::AcqRel);
    let current = entry.current.load_full();
    let differs = |current: &Token| token.access_token != current.access_token || token.refresh_token != current.refresh_token;
    // Versions order the writes of one Redis without relying on clocks.
    // Request times decide only when this process has seen no version yet
    // (its current token may be a restored one) or when the version went
    // back (Redis lost its data).
    let newer = match &current {
        None => true,
        Some(current) if seen == 0 || state.version < seen => token.requested_at > current.requested_at && differs(current),
        Some(current) => state.version > seen && differs(current),
    };
    if !newer {
        return false;
    }

    let now = inner.clock.now();
    let message = if token.is_expired(now) {
        "adopted the refresh token another instance obtained; its access token has expired, so a refresh follows"
    } else {
        "adopted the token another instance obtained"
    };
    tracing::info!(
        token = %entry.spec.name,
        version = state.version,
        expiry = %token.expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "{message}"
    );

    let token = Arc::new(token);
    if token.is_expired(now) {
        entry.current.store(Some(token));
    } else {
        refresh::store_token(entry, token, now);
    }
    lock(&entry.status).adopted = true;
    entry.needs_publish.store(false, Ordering::Release);
    entry.adopted.notify_waiters();
    true
}

/// Returns the current token when it replaced the one the refresh started
/// with and is unexpired, so that no request is needed. An operator's manual
/// refresh always makes a request.
fn replacement(inner: &Inner, entry: &Entry, trigger: Trigger, started_with: Option<&Arc<Token>>) -> Option<Arc<Token>> {
    if trigger == Trigger::Manual {
        return None;
    }
    let current = entry.current.load_full()?;
    let replaced = started_with.is_none_or(|started| !Arc::ptr_eq(started, &current));
    (replaced && !current.is_expired(inner.clock.now())).then_some(current)
}

/// Adopts the tokens other instances write, reports coordination changes,
/// and resumes held tokens when Redis is back.
pub(super) async fn follow(inner: Weak<Inner>, mut notices: mpsc::Receiver<Notice>, mut up: watch::Receiver<bool>) {
    if let Some(inner) = inner.upgrade() {
        inner.observer.coordination_changed(*up.borrow_and_update());
    }
    loop {
        tokio::select! {
            notice = notices.recv() => {
                let (Some(notice), Some(inner)) = (notice, inner.upgrade()) else { return };
                handle_notice(&inner, notice).await;
            }
            changed = up.changed() => {
                let Some(inner) = inner.upgrade() else { return };
                if changed.is_err() {
                    return;
                }
                let is_up = *up.borrow_and_update();
                inner.observer.coordination_changed(is_up);
                if is_up {
                    resume(&inner).await;
                }
            }
        }
    }
}

async fn handle_notice(inner: &Arc<Inner>, notice: Notice) {
    let Some(coordinator) = inner.coordinator.clone() else { return };
    let tokens = inner.tokens.load();
    let entries: Vec<Arc<Entry>> = match &notice {
        Notice::Updated(name) => tokens.get(name).cloned().into_iter().collect(),
        Notice::Resync => tokens.values().cloned().collect(),
    };
    // NOTE: a resync reads the tokens one after another, and the caller
    // handles no up/down change meanwhile. With many thousands of tokens,
    // that takes seconds; the reads are not batched.
    for entry in entries.into_iter().filter(|entry| is_coordinated(entry)) {
        // A refresh in progress reads the state itself; wake it.
        if lock(&entry.flight).is_some() {
            entry.adopted.notify_waiters();
            continue;
        }
        if let Ok(state) = coordinator.read(&entry.spec.name).await {
            adopt_if_newer(inner, &entry, state);
        }
    }
}

/// Redis is back: writes tokens obtained without it, and retries held
/// tokens at once.
async fn resume(inner: &Arc<Inner>) {
    let Some(coordinator) = inner.coordinator.clone() else { return };
    let now = inner.clock.now();
    let tokens = inner.tokens.load_full();
    for entry in tokens.values() {
        if entry.needs_publish.load(Ordering::Acquire)
            && let Ok(Some(lease)) = coordinator.try_lease(&entry.spec.name).await
        {
            if let Ok(state) = coordinator.read(&entry.spec.name).await
                && !state.undecryptable
            {
                let version = state.version;
                if !adopt_if_newer(inner, entry, state) {
                    publish_current(&coordinator, entry, version).await;
                }
            }
            coordinator.release(lease).await;
        }
        let mut status = lock(&entry.status);
        if std::mem::take(&mut status.coordination_hold) {
            status.next_refresh_at = Some(now);
            drop(status);
            entry.wake.notify_one();
        }
    }
}
