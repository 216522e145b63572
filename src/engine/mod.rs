//! The engine: stores every token, refreshes each one before it expires (and
//! at once when it is found expired), and syncs each new token to its sinks.
//!
//! Per token, one scheduler task sleeps until the planned refresh time and
//! one worker task per sink writes each new token, retrying with backoff
//! until it succeeds or a newer token supersedes it. Refreshes are
//! single-flight: concurrent callers of one token share one upstream request.
//! Reads ([`Engine::token`]) take no lock.

mod observer;
mod refresh;
mod shared;
mod status;
mod tasks;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use chrono::{DateTime, Utc};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

pub use observer::{LeaseResult, NoopObserver, Observer};
pub use status::{SinkStatus, TokenCoordination, TokenState, TokenStatus, Trigger};

use crate::clock::{Clock, SystemClock};
use crate::coordination::Coordinator;
use crate::policy::{Backoff, RefreshPolicy};
use crate::sink::{SessionStore, Sink, SinkError, SyncFailureReason};
use crate::source::{FailureReason, Source, SourceError};
use crate::secret::Secret;
use crate::token::Token;

/// A rejection reported without the rejected token is taken to concern a
/// token older than a refresh that finished less than this long ago.
pub const REPORT_GRACE: Duration = Duration::from_secs(2);

/// Everything the engine needs to manage one token.
#[derive(Clone)]
pub struct TokenSpec {
    pub name: String,
    /// `None` for a token that the application obtains and hands in with
    /// [`Engine::sync_token`].
    pub source: Option<Arc<dyn Source>>,
    pub sinks: Vec<Arc<dyn Sink>>,
    /// The session store to restore from at start and to persist rotated
    /// refresh tokens to before they are used. It is usually also in `sinks`.
    pub session_store: Option<SessionStore>,
    pub policy: RefreshPolicy,
    pub backoff: Backoff,
    pub fallback_lifetime: Duration,
}

impl TokenSpec {
    /// Creates a spec with the default policy, no sinks and no session store.
    pub fn new(name: impl Into<String>, source: Option<Arc<dyn Source>>) -> Self {
        TokenSpec {
            name: name.into(),
            source,
            sinks: Vec::new(),
            session_store: None,
            policy: RefreshPolicy::default(),
            backoff: Backoff::default(),
            fallback_lifetime: Duration::from_secs(3600),
        }
    }
}

/// Errors returned to callers of the engine, by what the caller should do.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// No token of that name is configured: check the name.
    #[error("unknown token `{0}`")]
    UnknownToken(String),
    /// A token of that name is configured already.
    #[error("token `{0}` is configured twice")]
    DuplicateToken(String),
    /// The token request failed. A `rejected` reason needs a person; the
    /// other reasons are transient, so retrying can help.
    #[error("refreshing token `{name}` failed ({reason}): {message}")]
    Refresh { name: String, reason: FailureReason, message: String, retry_after: Option<Duration> },
    /// The token has no source, so only the application can replace it.
    #[error("token `{0}` has expired and has no source; hand in a new one with sync_token")]
    NoSource(String),
    /// The engine is shutting down or the token was removed.
    #[error("token `{0}` was removed or the engine is stopping")]
    Stopped(String),
    /// Redis is unreachable and the token rotates its refresh token, so it
    /// is not refreshed until coordination is back.
    #[error("token `{name}` is not refreshed while coordination is unavailable: {message}")]
    CoordinationUnavailable { name: String, message: String },
}

impl EngineError {
    fn from_source(name: &str, error: &SourceError) -> Self {
        EngineError::Refresh {
            name: name.to_owned(),
            reason: error.reason,
            message: error.message.clone(),
            retry_after: error.retry_after,
        }
    }
}

/// Options for [`Engine::new`].
pub struct EngineOptions {
    pub clock: Arc<dyn Clock>,
    pub observer: Arc<dyn Observer>,
    /// Coordination with other instances through Redis; `None` for a
    /// process that refreshes its tokens alone.
    pub coordinator: Option<Arc<Coordinator>>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions { clock: Arc::new(SystemClock), observer: Arc::new(NoopObserver), coordinator: None }
    }
}

/// The token engine. Cheap to clone; clones share the same tokens.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    tokens: ArcSwap<HashMap<String, Arc<Entry>>>,
    /// Serializes changes to the token set; reads go through `tokens`.
    changes: Mutex<()>,
    clock: Arc<dyn Clock>,
    observer: Arc<dyn Observer>,
    /// Bumped when the wall clock jumps, so schedulers recompute their sleeps.
    clock_jumps: watch::Sender<u64>,
    watchdog: Mutex<Option<JoinHandle<()>>>,
    coordinator: Option<Arc<Coordinator>>,
    /// The task that adopts tokens other instances wrote.
    follower: Mutex<Option<JoinHandle<()>>>,
}

/// One managed token.
struct Entry {
    spec: TokenSpec,
    current: ArcSwapOption<Token>,
    status: Mutex<EntryStatus>,
    /// The refresh in progress, if any; its receiver yields the outcome.
    flight: Mutex<Option<watch::Receiver<Option<FlightOutcome>>>>,
    /// The newest token, for the sink workers.
    published: watch::Sender<Option<Arc<Token>>>,
    /// Wakes the scheduler after a refresh planned a new time.
    wake: Notify,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    log_limiter: Mutex<refresh::LogLimiter>,
    /// Version of the shared state (in Redis) that `current` came from or
    /// was compared with; 0 without coordination.
    shared_version: AtomicU64,
    /// Set when a token obtained here could not be written to Redis; it is
    /// written when coordination is back, before anything else replaces it.
    needs_publish: AtomicBool,
    /// Wakes a refresh waiting for another instance's lease.
    adopted: Notify,
}

type FlightOutcome = Result<Arc<Token>, EngineError>;

#[derive(Default)]
struct EntryStatus {
    last_success_at: Option<DateTime<Utc>>,
    last_attempt_at: Option<DateTime<Utc>>,
    next_refresh_at: Option<DateTime<Utc>>,
    consecutive_failures: u32,
    last_failure: Option<FailureReason>,
    last_error: Option<String>,
    retry_after: Option<Duration>,
    reauth_required: bool,
    ever_valid: bool,
    /// Not refreshed because Redis is unreachable and the token rotates.
    coordination_hold: bool,
    /// The current token came from the shared state.
    adopted: bool,
    sinks: Vec<SinkStatus>,
}

impl Engine {
    /// Creates an engine with no tokens. Must be called inside a tokio runtime.
    pub fn new(options: EngineOptions) -> Self {
        let (clock_jumps, _) = watch::channel(0);
        let inner = Arc::new(Inner {
            tokens: ArcSwap::from_pointee(HashMap::new()),
            changes: Mutex::new(()),
            clock: options.clock,
            observer: options.observer,
            clock_jumps,
            watchdog: Mutex::new(None),
            coordinator: options.coordinator,
            follower: Mutex::new(None),
        });
        let watchdog = tokio::spawn(tasks::watch_clock_jumps(Arc::downgrade(&inner)));
        *lock(&inner.watchdog) = Some(watchdog);
        if let Some(coordinator) = &inner.coordinator
            && let Some(notices) = coordinator.start()
        {
            let follower = tokio::spawn(shared::follow(Arc::downgrade(&inner), notices, coordinator.watch_up()));
            *lock(&inner.follower) = Some(follower);
        }
        Engine { inner }
    }

    /// Registers a token and starts refreshing and syncing it. A token found
    /// in the session store is used at once: a valid one is synced without a
    /// token request, and its refresh token is used for the next refresh.
    pub fn add_token(&self, spec: TokenSpec) -> Result<(), EngineError> {
        self.add_tokens(vec![spec])
    }

    /// Registers several tokens with one update of the token map, which
    /// matters for thousands of tokens: each update copies the map. On a
    /// duplicate name nothing is added.
    pub fn add_tokens(&self, specs: Vec<TokenSpec>) -> Result<(), EngineError> {
        let _guard = lock(&self.inner.changes);
        let mut tokens = HashMap::clone(&self.inner.tokens.load());
        let mut names = std::collections::HashSet::new();
        for spec in &specs {
            if tokens.contains_key(&spec.name) || !names.insert(spec.name.clone()) {
                return Err(EngineError::DuplicateToken(spec.name.clone()));
            }
        }
        for spec in specs {
            let entry = self.start_token(spec);
            tokens.insert(entry.spec.name.clone(), entry);
        }
        self.inner.tokens.store(Arc::new(tokens));
        Ok(())
    }

    /// Creates a token's entry, restores it, and starts its tasks.
    fn start_token(&self, spec: TokenSpec) -> Arc<Entry> {
        if spec.sinks.is_empty() {
            tracing::debug!(token = %spec.name, "token has no sinks; it is held in memory only");
        }

        let entry = Arc::new(Entry::new(spec));
        let now = self.inner.clock.now();
        refresh::restore(&entry, now);

        let sink_ids: Vec<String> = entry.spec.sinks.iter().map(|sink| sink.id().to_owned()).collect();
        self.inner.observer.token_added(&entry.spec.name, &sink_ids);

        let mut handles = Vec::new();
        for (index, sink) in entry.spec.sinks.iter().enumerate() {
            let worker = tasks::sink_worker(self.inner.clone(), entry.clone(), sink.clone(), index);
            handles.push(tokio::spawn(worker));
        }
        if entry.spec.source.is_some() {
            handles.push(tokio::spawn(tasks::scheduler(self.inner.clone(), entry.clone())));
        }
        *lock(&entry.tasks) = handles;
        entry
    }

    /// Stops and removes a token. Its files stay where they are.
    pub fn remove_token(&self, name: &str) -> Result<(), EngineError> {
        let _guard = lock(&self.inner.changes);
        let mut tokens = HashMap::clone(&self.inner.tokens.load());
        let entry = tokens.remove(name).ok_or_else(|| EngineError::UnknownToken(name.to_owned()))?;
        self.inner.tokens.store(Arc::new(tokens));
        entry.shut_down();
        let sink_ids: Vec<String> = entry.spec.sinks.iter().map(|sink| sink.id().to_owned()).collect();
        self.inner.observer.token_removed(name, &sink_ids);
        tracing::info!(token = name, "token removed");
        Ok(())
    }

    /// Returns the names of all tokens, sorted.
    pub fn token_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.inner.tokens.load().keys().cloned().collect();
        names.sort();
        names
    }

    /// Returns the current token, valid or not, without taking a lock.
    /// Cheap enough to call on every request; see [`Engine::ensure_fresh`] for
    /// a token that is guaranteed unexpired.
    pub fn token(&self, name: &str) -> Option<Arc<Token>> {
        self.inner.tokens.load().get(name).and_then(|entry| entry.current.load_full())
    }

    /// Returns an unexpired token, refreshing it first (reactively) when the
    /// current one has expired. During backoff after a failure, the last
    /// error is returned without a new request, to spare the issuer.
    pub async fn ensure_fresh(&self, name: &str) -> Result<Arc<Token>, EngineError> {
        let entry = self.entry(name)?;
        let current = entry.current.load_full();
        if let Some(token) = &current
            && !token.is_expired(self.inner.clock.now())
        {
            return Ok(token.clone());
        }
        // The first token of a process counts as `initial`, also when a consumer requests it.
        let trigger = if current.is_none() && lock(&entry.status).last_success_at.is_none() {
            Trigger::Initial
        } else {
            Trigger::Reactive
        };
        refresh::refresh_unless_backing_off(&self.inner, &entry, trigger).await
    }

    /// Forces one reactive refresh: call it when an API rejected the token
    /// (HTTP 401). Concurrent calls share one request. During backoff after
    /// a failure, the last error is returned without a new request.
    pub async fn invalidate(&self, name: &str) -> Result<Arc<Token>, EngineError> {
        let entry = self.entry(name)?;
        refresh::refresh_unless_backing_off(&self.inner, &entry, Trigger::Reactive).await
    }

    /// Handles a consumer's report that a token was rejected (HTTP 401).
    ///
    /// When the report names the rejected access token and the engine has
    /// a different, unexpired one, that newer token is returned without a
    /// request: the report is about a token that was replaced already. A
    /// report without a token counts as covered by a refresh that finished
    /// less than [`REPORT_GRACE`] ago. Otherwise this is
    /// [`Engine::invalidate`]: one shared reactive refresh.
    pub async fn report_rejected(&self, name: &str, rejected: Option<&Secret>) -> Result<Arc<Token>, EngineError> {
        let entry = self.entry(name)?;
        let now = self.inner.clock.now();
        if let Some(current) = entry.current.load_full()
            && !current.is_expired(now)
        {
            let replaced = match rejected {
                Some(rejected) => *rejected != current.access_token,
                None => lock(&entry.status).last_success_at.is_some_and(|at| {
                    now.signed_duration_since(at).to_std().is_ok_and(|age| age < REPORT_GRACE)
                }),
            };
            if replaced {
                return Ok(current);
            }
        }
        refresh::refresh_unless_backing_off(&self.inner, &entry, Trigger::Reactive).await
    }

    /// Refreshes now on an operator's request, even during backoff.
    pub async fn refresh_now(&self, name: &str) -> Result<Arc<Token>, EngineError> {
        let entry = self.entry(name)?;
        refresh::refresh(&self.inner, &entry, Trigger::Manual).await
    }

    /// Clears `reauth_required` and retries at once, as after a config
    /// reload that left the token unchanged: the operator may have fixed the
    /// credential behind an unchanged file name.
    pub fn clear_reauth(&self, name: &str) -> Result<(), EngineError> {
        let entry = self.entry(name)?;
        let mut status = lock(&entry.status);
        if status.reauth_required {
            status.reauth_required = false;
            status.next_refresh_at = Some(self.inner.clock.now());
            drop(status);
            entry.wake.notify_one();
        }
        Ok(())
    }

    /// Stores a token that the application obtained itself (for example
    /// right after its own login) and syncs it to the token's sinks.
    pub fn sync_token(&self, name: &str, token: Token) -> Result<(), EngineError> {
        let entry = self.entry(name)?;
        refresh::store_token(&entry, Arc::new(token), self.inner.clock.now());
        Ok(())
    }

    /// Returns a snapshot of every token's state, sorted by name.
    pub fn status(&self) -> Vec<TokenStatus> {
        let now = self.inner.clock.now();
        let tokens = self.inner.tokens.load();
        let coordinated = |entry: &Entry| self.inner.coordinator.is_some() && shared::is_coordinated(entry);
        let mut statuses: Vec<TokenStatus> = tokens.values().map(|entry| entry.snapshot(now, coordinated(entry))).collect();
        statuses.sort_by(|a, b| a.name.cmp(&b.name));
        statuses
    }

    /// Returns true once every token has held a valid token at least once
    /// since start (a restored valid token counts). It stays true afterwards,
    /// so an issuer outage shows in metrics and alerts, not in readiness.
    pub fn is_ready(&self) -> bool {
        self.inner.tokens.load().values().all(|entry| lock(&entry.status).ever_valid)
    }

    /// Returns whether Redis responds, or `None` without coordination.
    pub fn coordination_up(&self) -> Option<bool> {
        self.inner.coordinator.as_ref().map(|coordinator| coordinator.is_up())
    }

    /// Returns the wall clock the engine uses.
    pub fn clock(&self) -> Arc<dyn Clock> {
        self.inner.clock.clone()
    }

    /// Stops every task, letting syncs in progress finish for up to
    /// `deadline`; what is still running then is cancelled. A cancelled file
    /// write leaves the previous file intact, since writes are atomic.
    pub async fn shutdown_gracefully(&self, deadline: Duration) {
        let handles: Vec<JoinHandle<()>> = {
            let _guard = lock(&self.inner.changes);
            let tokens = self.inner.tokens.load();
            tokens
                .values()
                .flat_map(|entry| {
                    entry.stop.send_replace(true);
                    lock(&entry.tasks).drain(..).collect::<Vec<_>>()
                })
                .collect()
        };
        let aborts: Vec<_> = handles.iter().map(JoinHandle::abort_handle).collect();
        let all = async {
            for handle in handles {
                let _ = handle.await;
            }
        };
        if tokio::time::timeout(deadline, all).await.is_err() {
            tracing::warn!(deadline_ms = deadline.as_millis() as u64, "syncs still running at the shutdown deadline were cancelled");
            aborts.iter().for_each(tokio::task::AbortHandle::abort);
        }
        self.shutdown();
    }

    /// Stops every task at once. Tokens already written stay in their sinks.
    pub fn shutdown(&self) {
        let _guard = lock(&self.inner.changes);
        for entry in self.inner.tokens.load().values() {
            entry.shut_down();
        }
        if let Some(watchdog) = lock(&self.inner.watchdog).take() {
            watchdog.abort();
        }
        if let Some(follower) = lock(&self.inner.follower).take() {
            follower.abort();
        }
    }

    fn entry(&self, name: &str) -> Result<Arc<Entry>, EngineError> {
        self.inner.tokens.load().get(name).cloned().ok_or_else(|| EngineError::UnknownToken(name.to_owned()))
    }
}

impl Entry {
    fn new(spec: TokenSpec) -> Self {
        let sinks = spec
            .sinks
            .iter()
            .map(|sink| SinkStatus {
                id: sink.id().to_owned(),
                last_success_at: None,
                consecutive_failures: 0,
                last_failure: None,
                last_error: None,
            })
            .collect();
        Entry {
            current: ArcSwapOption::empty(),
            status: Mutex::new(EntryStatus { sinks, ..EntryStatus::default() }),
            flight: Mutex::new(None),
            published: watch::channel(None).0,
            wake: Notify::new(),
            stop: watch::channel(false).0,
            tasks: Mutex::new(Vec::new()),
            log_limiter: Mutex::new(refresh::LogLimiter::default()),
            shared_version: AtomicU64::new(0),
            needs_publish: AtomicBool::new(false),
            adopted: Notify::new(),
            spec,
        }
    }

    fn shut_down(&self) {
        self.stop.send_replace(true);
        for handle in lock(&self.tasks).drain(..) {
            handle.abort();
        }
    }

    fn snapshot(&self, now: DateTime<Utc>, coordinated: bool) -> TokenStatus {
        let token = self.current.load_full();
        let status = lock(&self.status);
        let state = match &token {
            None => TokenState::Missing,
            Some(token) if token.is_expired(now) => TokenState::Expired,
            Some(_) => TokenState::Valid,
        };
        TokenStatus {
            name: self.spec.name.clone(),
            source_kind: self.spec.source.as_ref().map(|source| source.kind()),
            state,
            expires_at: token.as_ref().map(|token| token.expires_at),
            lifetime: token.as_ref().map(|token| token.lifetime),
            expiry_source: token.as_ref().map(|token| token.expiry_source),
            last_success_at: status.last_success_at,
            last_attempt_at: status.last_attempt_at,
            next_refresh_at: status.next_refresh_at,
            consecutive_failures: status.consecutive_failures,
            last_failure: status.last_failure,
            last_error: status.last_error.clone(),
            reauth_required: status.reauth_required,
            sinks: status.sinks.clone(),
            coordination: coordinated.then(|| TokenCoordination {
                shared_version: self.shared_version.load(std::sync::atomic::Ordering::Acquire),
                adopted: status.adopted,
                held: status.coordination_hold,
            }),
        }
    }

    fn record_sync(&self, index: usize, now: DateTime<Utc>, outcome: &Result<(), SinkError>) {
        let mut status = lock(&self.status);
        let Some(sink) = status.sinks.get_mut(index) else { return };
        match outcome {
            Ok(()) => {
                sink.last_success_at = Some(now);
                sink.consecutive_failures = 0;
                sink.last_failure = None;
                sink.last_error = None;
            }
            Err(error) => {
                sink.consecutive_failures = sink.consecutive_failures.saturating_add(1);
                sink.last_failure = Some(error.reason);
                sink.last_error = Some(error.message.clone());
            }
        }
    }
}

/// Locks a std mutex, recovering from poisoning: every critical section
/// leaves the data consistent, so a panic elsewhere must not stop the engine.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Maps a sync outcome to its metric reason.
fn sync_outcome(outcome: &Result<(), SinkError>) -> Result<(), SyncFailureReason> {
    outcome.as_ref().map(|_| ()).map_err(|error| error.reason)
}
