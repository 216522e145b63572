//! Coordination of several tokensync instances that share tokens, through
//! Redis: one refresher per token at a time, and one shared, encrypted copy
//! of every token's state that the other instances adopt.
//!
//! Keys and channel, under the configured prefix (default `tokensync:`):
//!
//! - `{prefix}state:{token}`: a hash with `version`, `nonce` and `ciphertext`.
//!   The ciphertext is the token's state under AES-256-GCM with the
//!   coordination key. Its associated data is the token name and the version,
//!   so an entry moved to another token or replayed under a newer version
//!   fails authentication. Redis never receives a plaintext secret.
//! - `{prefix}lease:{token}`: the refresh lease, a random owner id set with
//!   `SET NX PX` and deleted or extended only by its owner (Lua scripts).
//! - `{prefix}updates`: a pub/sub channel carrying the name of each token
//!   whose state was written.
//!
//! Every write is a compare-and-set on `version` in one Lua script, which
//! also publishes the notice, so a write based on a stale read is rejected.
//! Redis runs scripts one at a time, so no other client sees a state
//! between the check and the write.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::Duration;

use aes_gcm::Aes256Gcm;
use chrono::Utc;
use futures_util::StreamExt;
use redis::aio::ConnectionManager;
use redis::{IntoConnectionInfo, Script};
use tokio::sync::{mpsc, watch};

use crate::secret::Secret;
use crate::sink::SessionKey;
use crate::sink::session_store::{EncryptedEntry, decrypt, encrypt};
use crate::token::Token;

/// Default prefix of every key and of the update channel.
pub const DEFAULT_KEY_PREFIX: &str = "tokensync:";
/// Default lease: how long a refresher may hold a token before another
/// instance may take over. It is extended while the request runs.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(15);
/// Default time limit of one Redis command.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// Values of `Coordinator::reported`.
const REPORTED_NOTHING: u8 = 0;
const REPORTED_UP: u8 = 1;
const REPORTED_DOWN: u8 = 2;
/// How often the connection is checked with `PING`.
const HEALTH_PERIOD: Duration = Duration::from_secs(1);

/// Policy for tokens with rotating refresh tokens while Redis is unreachable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhenUnavailable {
    /// Keep serving the current access token and do not refresh: a refresh
    /// here could race one on another instance and burn the grant.
    Hold,
    /// Refresh anyway; right for a single instance that uses Redis only to
    /// hand tokens over, or an issuer that does not rotate refresh tokens.
    Refresh,
}

impl WhenUnavailable {
    pub fn as_str(self) -> &'static str {
        match self {
            WhenUnavailable::Hold => "hold",
            WhenUnavailable::Refresh => "refresh",
        }
    }
}

/// Everything needed to connect to Redis.
#[derive(Clone, Debug, PartialEq)]
pub struct CoordinationSettings {
    /// `redis://HOST:PORT/DB` or `rediss://HOST:PORT/DB` (TLS), without a password.
    pub url: String,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// PEM file of the CA that signed the server certificate, for `rediss://`
    /// with a private CA; the system roots are used otherwise.
    pub ca_file: Option<PathBuf>,
    pub key_prefix: String,
    pub lease: Duration,
    pub when_unavailable: WhenUnavailable,
    /// The key that encrypts shared state; every instance needs the same one.
    pub key: SessionKey,
    /// Time limit of one Redis command.
    pub timeout: Duration,
}

/// Redis could not be reached or returned an error. The message names no
/// secret, because connection errors carry the host and port at most.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct CoordinationError(pub String);

impl From<redis::RedisError> for CoordinationError {
    fn from(error: redis::RedisError) -> Self {
        CoordinationError(format!("redis: {}", describe(&error)))
    }
}

/// A lease held by this process on one token.
#[derive(Clone, Debug)]
pub struct Lease {
    key: String,
    owner: String,
}

/// A token's shared state as read from Redis.
#[derive(Debug)]
pub struct SharedState {
    /// 0 when Redis stores no state for the token.
    pub version: u64,
    /// `None` when there is no state, or it does not decrypt.
    pub token: Option<Token>,
    /// True when a state exists but does not decrypt with this process's
    /// key: another instance uses another key, or the state was altered.
    pub undecryptable: bool,
}

/// Outcome of a compare-and-set write.
#[derive(Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Written as this version.
    Written(u64),
    /// Another instance wrote first, and Redis now stores this version.
    Conflict(u64),
}

/// Notification from the coordinator to the engine.
#[derive(Debug, PartialEq, Eq)]
pub enum Notice {
    /// Another instance (or this one) wrote the token's state.
    Updated(String),
    /// Notices may have been missed (the subscription was re-established):
    /// re-read every token.
    Resync,
}

/// Compare-and-set of a token's state, publishing a notice on success.
/// KEYS[1] state key; ARGV: expected version, new version, nonce,
/// ciphertext, channel, token name. Returns {written (0 or 1), version}.
const WRITE_SCRIPT: &str = r"
local current = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if current ~= tonumber(ARGV[1]) then
  return {0, current}
end
redis.call('HSET', KEYS[1], 'version', ARGV[2], 'nonce', ARGV[3], 'ciphertext', ARGV[4])
redis.call('PUBLISH', ARGV[5], ARGV[6])
return {1, tonumber(ARGV[2])}
";

/// Deletes the lease KEYS[1] only if ARGV[1] owns it.
const RELEASE_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Extends the lease KEYS[1] to ARGV[2] ms only if ARGV[1] owns it.
const RENEW_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

/// The connection to Redis shared by every token of one process.
pub struct Coordinator {
    client: redis::Client,
    commands: ConnectionManager,
    cipher: Aes256Gcm,
    prefix: String,
    lease: Duration,
    timeout: Duration,
    when_unavailable: WhenUnavailable,
    instance: String,
    up: watch::Sender<bool>,
    write_script: Script,
    release_script: Script,
    renew_script: Script,
    started: AtomicBool,
    /// Connection state last logged: nothing, up or down.
    reported: AtomicU8,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator").field("prefix", &self.prefix).field("instance", &self.instance).finish_non_exhaustive()
    }
}

impl Coordinator {
    /// Prepares the connection without connecting: tokensync starts, and
    /// serves what it has, while Redis is down. Must be called inside a tokio
    /// runtime. Fails only on settings that cannot work (a bad URL or CA file).
    pub fn new(settings: &CoordinationSettings) -> Result<Arc<Coordinator>, String> {
        crate::source::install_crypto_provider();
        let info = settings
            .url
            .as_str()
            .into_connection_info()
            .map_err(|error| format!("invalid Redis URL: {}", describe(&error)))?;
        let mut redis_settings = info.redis_settings().clone();
        if let Some(username) = &settings.username {
            redis_settings = redis_settings.set_username(username);
        }
        if let Some(password) = &settings.password {
            redis_settings = redis_settings.set_password(password.expose());
        }
        let info = info.set_redis_settings(redis_settings);
        let client = match &settings.ca_file {
            Some(path) => {
                let root_cert = std::fs::read(path).map_err(|error| format!("cannot read {}: {error}", path.display()))?;
                let certificates = redis::TlsCertificates { client_tls: None, root_cert: Some(root_cert) };
                redis::Client::build_with_tls(info, certificates)
            }
            None => redis::Client::open(info),
        }
        .map_err(|error| format!("cannot set up the Redis client: {}", describe(&error)))?;

        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.timeout))
            .set_response_timeout(Some(settings.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let commands = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(|error| format!("cannot set up the Redis connection: {}", describe(&error)))?;

        Ok(Arc::new(Coordinator {
            client,
            commands,
            cipher: settings.key.cipher(),
            prefix: settings.key_prefix.clone(),
            lease: settings.lease,
            timeout: settings.timeout,
            when_unavailable: settings.when_unavailable,
            instance: instance_id(),
            up: watch::channel(false).0,
            write_script: Script::new(WRITE_SCRIPT),
            release_script: Script::new(RELEASE_SCRIPT),
            renew_script: Script::new(RENEW_SCRIPT),
            started: AtomicBool::new(false),
            reported: AtomicU8::new(REPORTED_NOTHING),
        }))
    }

    /// Returns the lease duration.
    pub fn lease_duration(&self) -> Duration {
        self.lease
    }

    pub fn when_unavailable(&self) -> WhenUnavailable {
        self.when_unavailable
    }

    /// Returns whether the last command or health check succeeded.
    pub fn is_up(&self) -> bool {
        *self.up.borrow()
    }

    /// Returns a receiver of [`Coordinator::is_up`] changes.
    pub fn watch_up(&self) -> watch::Receiver<bool> {
        self.up.subscribe()
    }

    /// Starts the health check and the subscription to update notices and
    /// returns the notices. Call once; later calls return `None`.
    pub fn start(self: &Arc<Self>) -> Option<mpsc::Receiver<Notice>> {
        if self.started.swap(true, Ordering::AcqRel) {
            return None;
        }
        let (sender, receiver) = mpsc::channel(1024);
        tokio::spawn(check_health(Arc::downgrade(self)));
        tokio::spawn(follow_updates(Arc::downgrade(self), sender));
        Some(receiver)
    }

    /// Checks that Redis responds and accepts the credentials.
    pub async fn ping(&self) -> Result<(), CoordinationError> {
        let _: String = self.run(redis::cmd("PING").query_async(&mut self.commands.clone())).await?;
        Ok(())
    }

    /// Tries to take the lease of `name`: `Ok(None)` when another instance holds it.
    pub async fn try_lease(&self, name: &str) -> Result<Option<Lease>, CoordinationError> {
        let key = self.key("lease", name);
        let owner = format!("{}:{}", self.instance, hex::encode(rand::random::<[u8; 8]>()));
        let mut command = redis::cmd("SET");
        command.arg(&key).arg(&owner).arg("NX").arg("PX").arg(millis(self.lease));
        let reply: Option<String> = self.run(command.query_async(&mut self.commands.clone())).await?;
        Ok(reply.map(|_| Lease { key, owner }))
    }

    /// Extends a lease; returns false when this process no longer owns it.
    pub async fn renew(&self, lease: &Lease) -> Result<bool, CoordinationError> {
        let mut invocation = self.renew_script.key(&lease.key);
        invocation.arg(&lease.owner).arg(millis(self.lease));
        let extended: i64 = self.run(invocation.invoke_async(&mut self.commands.clone())).await?;
        Ok(extended == 1)
    }

    /// Gives a lease back; a lease that expired or changed hands is left alone.
    pub async fn release(&self, lease: Lease) {
        let mut invocation = self.release_script.key(&lease.key);
        invocation.arg(&lease.owner);
        let outcome: Result<i64, _> = self.run(invocation.invoke_async(&mut self.commands.clone())).await;
        if let Err(error) = outcome {
            tracing::debug!(error = %error, "releasing a lease failed; it expires by itself");
        }
    }

    /// Reads a token's shared state.
    pub async fn read(&self, name: &str) -> Result<SharedState, CoordinationError> {
        let key = self.key("state", name);
        let mut connection = self.commands.clone();
        let (version, nonce, ciphertext): (Option<u64>, Option<String>, Option<String>) =
            self.run(redis::cmd("HMGET").arg(&key).arg("version").arg("nonce").arg("ciphertext").query_async(&mut connection)).await?;
        let Some(version) = version else { return Ok(SharedState { version: 0, token: None, undecryptable: false }) };
        let (Some(nonce), Some(ciphertext)) = (nonce, ciphertext) else {
            return Ok(SharedState { version, token: None, undecryptable: true });
        };
        let entry = EncryptedEntry { nonce, ciphertext };
        // The engine reports an undecryptable state, once per token.
        let token = decrypt(&self.cipher, name, &associated_data(name, version), &entry).ok().map(|stored| stored.token);
        let undecryptable = token.is_none();
        Ok(SharedState { version, token, undecryptable })
    }

    /// Writes `token` as the state following version `expected`. The write
    /// is rejected when Redis stores another version by then.
    pub async fn write(&self, name: &str, token: &Token, expected: u64) -> Result<WriteOutcome, CoordinationError> {
        let next = expected + 1;
        let entry = encrypt(&self.cipher, &associated_data(name, next), token, Utc::now()).map_err(CoordinationError)?;
        let mut invocation = self.write_script.key(self.key("state", name));
        invocation
            .arg(expected)
            .arg(next)
            .arg(&entry.nonce)
            .arg(&entry.ciphertext)
            .arg(self.channel())
            .arg(name);
        let (written, version): (i64, u64) = self.run(invocation.invoke_async(&mut self.commands.clone())).await?;
        Ok(if written == 1 { WriteOutcome::Written(version) } else { WriteOutcome::Conflict(version) })
    }

    /// Runs one command within the time limit and records whether Redis answered.
    async fn run<T>(&self, command: impl Future<Output = redis::RedisResult<T>>) -> Result<T, CoordinationError> {
        // Any error counts as down: a refused password or a read-only
        // replica stops coordination as surely as a lost connection.
        let outcome = match tokio::time::timeout(self.timeout, command).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(CoordinationError::from(error)),
            Err(_) => Err(CoordinationError(format!("redis: no answer within {}", humantime::format_duration(self.timeout)))),
        };
        let reachable = outcome.is_ok();
        self.up.send_if_modified(|up| std::mem::replace(up, reachable) != reachable);
        // Logged here rather than in the health check, so that the line
        // comes before anything the first command after a change leads to.
        let state = if reachable { REPORTED_UP } else { REPORTED_DOWN };
        if self.reported.swap(state, Ordering::AcqRel) != state {
            match &outcome {
                Ok(_) => tracing::info!("coordination through Redis is up"),
                Err(error) => tracing::warn!(error = %error, "coordination through Redis is down; tokens with rotating refresh tokens are held"),
            }
        }
        outcome
    }

    fn key(&self, kind: &str, name: &str) -> String {
        format!("{}{kind}:{name}", self.prefix)
    }

    fn channel(&self) -> String {
        format!("{}updates", self.prefix)
    }
}

/// Associated data of a shared state: it binds the ciphertext to the token
/// name and the version.
fn associated_data(name: &str, version: u64) -> Vec<u8> {
    format!("tokensync-shared-state\0{name}\0{version}").into_bytes()
}

/// Describes a Redis error in at most 200 characters. Redis error replies
/// and I/O errors name no credential; the connection URL is never included.
fn describe(error: &redis::RedisError) -> String {
    let text = error.to_string();
    match text.char_indices().nth(200) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text,
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// `HOST:PID`, so that an operator can tell which instance holds a lease.
fn instance_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host = host.trim();
    format!("{}:{}", if host.is_empty() { "unknown" } else { host }, std::process::id())
}

/// Pings Redis every [`HEALTH_PERIOD`], which keeps `up` current between commands.
async fn check_health(coordinator: std::sync::Weak<Coordinator>) {
    let mut interval = tokio::time::interval(HEALTH_PERIOD);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let Some(coordinator) = coordinator.upgrade() else { return };
        // `run` records and logs the outcome.
        let _ = coordinator.ping().await;
    }
}

/// Subscribes to the update channel and forwards each notice, subscribing
/// again after a lost connection (followed by a [`Notice::Resync`]).
async fn follow_updates(coordinator: std::sync::Weak<Coordinator>, notices: mpsc::Sender<Notice>) {
    loop {
        let Some((client, channel, timeout)) =
            coordinator.upgrade().map(|coordinator| (coordinator.client.clone(), coordinator.channel(), coordinator.timeout))
        else {
            return;
        };
        let subscribed = tokio::time::timeout(timeout, async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            redis::RedisResult::Ok(pubsub)
        })
        .await;
        match subscribed {
            Ok(Ok(pubsub)) => {
                if notices.send(Notice::Resync).await.is_err() {
                    return;
                }
                let mut messages = pubsub.into_on_message();
                loop {
                    // Stop with the engine, even while no message arrives.
                    let message = tokio::select! {
                        message = messages.next() => message,
                        () = notices.closed() => return,
                    };
                    let Some(message) = message else { break };
                    let Ok(name) = message.get_payload::<String>() else { continue };
                    if notices.send(Notice::Updated(name)).await.is_err() {
                        return;
                    }
                }
                tracing::debug!("the Redis subscription ended; subscribing again");
            }
            Ok(Err(error)) => tracing::debug!(error = %CoordinationError::from(error), "subscribing to Redis failed"),
            Err(_) => tracing::debug!("subscribing to Redis timed out"),
        }
        if notices.is_closed() {
            return;
        }
        tokio::time::sleep(HEALTH_PERIOD).await;
    }
}
