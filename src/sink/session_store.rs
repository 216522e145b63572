//! The encrypted session store: one file with the state of every token that
//! uses it, so that tokens and rotated refresh tokens survive a restart.
//!
//! File format (JSON): `{"format": "tokensync-session-store", "version": 1,
//! "entries": {NAME: {"nonce": B64, "ciphertext": B64}}}`. Each entry is the
//! token's state encrypted with AES-256-GCM under a random 96-bit nonce drawn
//! for every write, with the token name as associated data, so an entry
//! cannot be moved to another name unnoticed. Entries that fail to decrypt
//! are kept byte for byte when the file is rewritten.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use super::{Sink, SinkError, SyncFailureReason, write_atomic};
use crate::secret::Secret;
use crate::source::BoxFuture;
use crate::token::{ExpirySource, Token};

const FORMAT_NAME: &str = "tokensync-session-store";
const FORMAT_VERSION: u32 = 1;
const FILE_MODE: u32 = 0o600;

/// A 256-bit AES key, zeroized on drop.
#[derive(Clone)]
pub struct SessionKey(Zeroizing<[u8; 32]>);

impl PartialEq for SessionKey {
    /// Compares in constant time, as [`crate::Secret`] does, so that a
    /// reload's key comparison leaks nothing about the key.
    fn eq(&self, other: &Self) -> bool {
        self.0.iter().zip(other.0.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

impl Eq for SessionKey {}

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey(***)")
    }
}

impl SessionKey {
    /// Parses a key written as 64 hex digits or as base64 of 32 bytes.
    /// Surrounding whitespace is ignored. The error never quotes the input.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let bytes = Zeroizing::new(if text.len() == 64 && text.bytes().all(|byte| byte.is_ascii_hexdigit()) {
            hex::decode(text).map_err(|_| "invalid hex in session key".to_owned())?
        } else {
            BASE64
                .decode(text)
                .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(text))
                .map_err(|_| "session key is neither 64 hex digits nor base64".to_owned())?
        });
        let key: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| format!("session key must be 32 bytes, found {}", bytes.len()))?;
        Ok(SessionKey(Zeroizing::new(key)))
    }

    /// Draws a random key.
    pub fn generate() -> Self {
        SessionKey(Zeroizing::new(rand::random()))
    }

    /// Returns the AES-256-GCM cipher of this key.
    pub(crate) fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new_from_slice(self.0.as_slice()).expect("the key is 32 bytes")
    }

    /// Returns the key as base64, for writing a new key file.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(BASE64.encode(self.0.as_slice()))
    }
}

#[derive(Serialize, Deserialize)]
struct StoreFile {
    format: String,
    version: u32,
    entries: BTreeMap<String, EncryptedEntry>,
}

/// One encrypted token state: base64 nonce and ciphertext.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct EncryptedEntry {
    pub(crate) nonce: String,
    pub(crate) ciphertext: String,
}

/// The plaintext of one entry; zeroized on drop.
#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
struct PlainEntry {
    access_token: String,
    token_type: String,
    requested_at_ms: i64,
    expires_at_ms: i64,
    refresh_token: Option<String>,
    scope: Option<String>,
    saved_at_ms: i64,
}

/// A token restored from the store, with the time it was saved.
#[derive(Clone, Debug)]
pub struct StoredToken {
    pub token: Token,
    pub saved_at: DateTime<Utc>,
}

/// Something wrong found when opening a store. The token it concerns is
/// requested anew; the bytes stay in the file until that token is replaced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadProblem {
    /// The token name, or `None` when the whole file is unreadable.
    pub token: Option<String>,
    pub message: String,
}

/// An encrypted session store file, shared by every token that uses it.
#[derive(Clone)]
pub struct SessionStore {
    inner: Arc<Inner>,
}

struct Inner {
    id: String,
    path: PathBuf,
    cipher: Aes256Gcm,
    state: Mutex<State>,
}

struct State {
    entries: BTreeMap<String, EncryptedEntry>,
    restored: HashMap<String, StoredToken>,
    /// Request time of the newest token saved for each name, so that a
    /// slower writer of an older token cannot roll the entry back.
    newest: HashMap<String, DateTime<Utc>>,
}

impl std::fmt::Debug for SessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionStore").field("path", &self.inner.path).finish_non_exhaustive()
    }
}

impl SessionStore {
    /// Opens the store at `path` and decrypts what it can. A missing file is
    /// an empty store. Problems are returned for logging; none is fatal.
    pub fn open(path: &Path, key: &SessionKey) -> (SessionStore, Vec<LoadProblem>) {
        let cipher = key.cipher();
        let id = format!("session_store:{}", path.display());
        let mut problems = Vec::new();
        let mut entries = BTreeMap::new();
        let mut restored = HashMap::new();

        match std::fs::read(path) {
            Ok(bytes) => match serde_json::from_slice::<StoreFile>(&bytes) {
                Ok(file) if file.format == FORMAT_NAME && file.version == FORMAT_VERSION => {
                    for (name, entry) in &file.entries {
                        match decrypt(&cipher, name, name.as_bytes(), entry) {
                            Ok(stored) => {
                                restored.insert(name.clone(), stored);
                            }
                            Err(message) => problems.push(LoadProblem { token: Some(name.clone()), message }),
                        }
                    }
                    entries = file.entries;
                }
                Ok(file) => problems.push(LoadProblem {
                    token: None,
                    message: format!(
                        "session store {} has format `{}` version {}, expected `{FORMAT_NAME}` version {FORMAT_VERSION}; it is left untouched until a new token is obtained",
                        path.display(),
                        file.format,
                        file.version
                    ),
                }),
                Err(error) => problems.push(LoadProblem {
                    token: None,
                    message: format!(
                        "session store {} is not valid JSON ({error}); it is left untouched until a new token is obtained",
                        path.display()
                    ),
                }),
            },
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => problems.push(LoadProblem {
                token: None,
                message: format!("cannot read session store {}: {error}", path.display()),
            }),
        }

        let newest = restored.iter().map(|(name, stored)| (name.clone(), stored.token.requested_at)).collect();
        super::atomic::remove_stale_temp_files(path);
        let inner = Inner { id, path: path.to_owned(), cipher, state: Mutex::new(State { entries, restored, newest }) };
        (SessionStore { inner: Arc::new(inner) }, problems)
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Returns the token restored for `name` when the store was opened.
    pub fn restored(&self, name: &str) -> Option<StoredToken> {
        self.lock().restored.get(name).cloned()
    }

    /// Reads the file again and returns the entry of `name` when it decrypts
    /// and is newer than the one this process saved last, which means another
    /// process sharing the store wrote it. The entry is adopted as the newest.
    /// Blocking: call it from a blocking thread.
    pub fn reread(&self, name: &str) -> Option<StoredToken> {
        let bytes = std::fs::read(&self.inner.path).ok()?;
        let file: StoreFile = serde_json::from_slice(&bytes).ok()?;
        let entry = file.entries.get(name)?;
        let stored = decrypt(&self.inner.cipher, name, name.as_bytes(), entry).ok()?;
        let mut state = self.lock();
        if state.newest.get(name).is_some_and(|newest| stored.token.requested_at <= *newest) {
            return None;
        }
        state.newest.insert(name.to_owned(), stored.token.requested_at);
        state.entries.insert(name.to_owned(), entry.clone());
        Some(stored)
    }

    /// Encrypts `token` as the entry of `name` and rewrites the file atomically.
    /// A token requested before, or at the same time as, the one already
    /// saved for `name` is not written: two writers (the rotation write and the sink worker) may
    /// finish in either order, and the entry must never go back to an older
    /// refresh token. Blocking: call it from a blocking thread.
    pub fn save(&self, name: &str, token: &Token, now: DateTime<Utc>) -> Result<(), SinkError> {
        let mut state = self.lock();
        // An older token must not roll the entry back; the same token (a
        // restored one, or one the rotation write saved first) is there already.
        if state.newest.get(name).is_some_and(|newest| token.requested_at <= *newest) {
            return Ok(());
        }
        let entry = encrypt(&self.inner.cipher, name.as_bytes(), token, now).map_err(|message| SinkError {
            reason: SyncFailureReason::Encryption,
            message: format!("sink {}: {message}", self.inner.id),
        })?;
        state.entries.insert(name.to_owned(), entry);
        let file = StoreFile { format: FORMAT_NAME.to_owned(), version: FORMAT_VERSION, entries: state.entries.clone() };
        let bytes = serde_json::to_vec_pretty(&file).map_err(|error| SinkError {
            reason: SyncFailureReason::Io,
            message: format!("sink {}: cannot encode the store: {error}", self.inner.id),
        })?;
        write_atomic(&self.inner.path, &bytes, FILE_MODE).map_err(|error| {
            let mut sink_error = SinkError::io(&self.inner.id, "atomic write", &error);
            if error.kind() == io::ErrorKind::InvalidInput {
                sink_error.reason = SyncFailureReason::UnsafePath;
            }
            sink_error
        })?;
        state.newest.insert(name.to_owned(), token.requested_at);
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Sink for SessionStore {
    fn id(&self) -> &str {
        &self.inner.id
    }

    fn sync<'a>(&'a self, token_name: &'a str, token: &'a Token) -> BoxFuture<'a, Result<(), SinkError>> {
        let store = self.clone();
        let name = token_name.to_owned();
        let token = token.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || store.save(&name, &token, Utc::now()))
                .await
                .unwrap_or_else(|join_error| {
                    Err(SinkError { reason: SyncFailureReason::Io, message: format!("session store write task failed: {join_error}") })
                })
        })
    }
}

/// Encrypts a token's state under a fresh random nonce; `aad` binds the
/// ciphertext to where it is stored (the token name, for the session store).
pub(crate) fn encrypt(cipher: &Aes256Gcm, aad: &[u8], token: &Token, now: DateTime<Utc>) -> Result<EncryptedEntry, String> {
    let plain = PlainEntry {
        access_token: token.access_token.expose().to_owned(),
        token_type: token.token_type.clone(),
        requested_at_ms: token.requested_at.timestamp_millis(),
        expires_at_ms: token.expires_at.timestamp_millis(),
        refresh_token: token.refresh_token.as_ref().map(|secret| secret.expose().to_owned()),
        scope: token.scope.clone(),
        saved_at_ms: now.timestamp_millis(),
    };
    let bytes = Zeroizing::new(serde_json::to_vec(&plain).map_err(|error| format!("cannot encode the entry: {error}"))?);
    let nonce: [u8; 12] = rand::random();
    let ciphertext = cipher
        .encrypt(Nonce::from_slice(&nonce), Payload { msg: &bytes, aad })
        .map_err(|_| "AES-GCM encryption failed".to_owned())?;
    Ok(EncryptedEntry { nonce: BASE64.encode(nonce), ciphertext: BASE64.encode(ciphertext) })
}

/// Decrypts what [`encrypt`] wrote with the same `aad`; `name` is for messages.
pub(crate) fn decrypt(cipher: &Aes256Gcm, name: &str, aad: &[u8], entry: &EncryptedEntry) -> Result<StoredToken, String> {
    let nonce = BASE64.decode(&entry.nonce).map_err(|_| format!("entry `{name}` has an invalid nonce"))?;
    if nonce.len() != 12 {
        return Err(format!("entry `{name}` has a nonce of {} bytes, expected 12", nonce.len()));
    }
    let ciphertext = BASE64.decode(&entry.ciphertext).map_err(|_| format!("entry `{name}` has invalid base64"))?;
    let plaintext = Zeroizing::new(
        cipher
            .decrypt(Nonce::from_slice(&nonce), Payload { msg: &ciphertext, aad })
            .map_err(|_| {
                format!("entry `{name}` failed authentication: the key is wrong or the file was modified; a new token will be requested")
            })?,
    );
    let plain: PlainEntry = serde_json::from_slice(&plaintext).map_err(|_| format!("entry `{name}` decrypted to an invalid record"))?;

    let time = |millis: i64| DateTime::from_timestamp_millis(millis).ok_or_else(|| format!("entry `{name}` has a time out of range"));
    let requested_at = time(plain.requested_at_ms)?;
    let expires_at = time(plain.expires_at_ms)?;
    let saved_at = time(plain.saved_at_ms)?;
    let lifetime = expires_at.signed_duration_since(requested_at).to_std().unwrap_or(Duration::ZERO);
    let token = Token {
        access_token: Secret::new(plain.access_token.clone()),
        token_type: plain.token_type.clone(),
        requested_at,
        expires_at,
        lifetime,
        expiry_source: ExpirySource::Stored,
        refresh_token: plain.refresh_token.clone().map(Secret::new),
        scope: plain.scope.clone(),
    };
    Ok(StoredToken { token, saved_at })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(access: &str, refresh: Option<&str>) -> Token {
        let requested_at = Utc::now();
        Token {
            access_token: Secret::new(access),
            token_type: "Bearer".into(),
            requested_at,
            expires_at: requested_at + chrono::TimeDelta::minutes(5),
            lifetime: Duration::from_secs(300),
            expiry_source: ExpirySource::ExpiresIn,
            refresh_token: refresh.map(Secret::new),
            scope: None,
        }
    }

    #[test]
    fn key_parses_hex_and_base64() {
        let hex_key = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        assert!(SessionKey::parse(hex_key).is_ok());
        assert!(SessionKey::parse(&format!("{hex_key}\n")).is_ok());
        let base64_key = BASE64.encode([7u8; 32]);
        assert!(SessionKey::parse(&base64_key).is_ok());
        let error = SessionKey::parse(&BASE64.encode([7u8; 16])).unwrap_err();
        assert!(error.contains("32 bytes"), "{error}");
        assert_eq!(format!("{:?}", SessionKey::generate()), "SessionKey(***)");
    }

    #[test]
    fn round_trip_restores_token() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("session.json");
        let key = SessionKey::generate();
        let (store, problems) = SessionStore::open(&path, &key);
        assert!(problems.is_empty());
        store.save("billing", &token("at-1", Some("rt-1")), Utc::now()).unwrap();

        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("at-1"), "the access token is stored in plaintext: {text}");
        assert!(!text.contains("rt-1"), "the refresh token is stored in plaintext: {text}");

        let (reopened, problems) = SessionStore::open(&path, &key);
        assert!(problems.is_empty(), "{problems:?}");
        let restored = reopened.restored("billing").unwrap();
        assert_eq!(restored.token.access_token.expose(), "at-1");
        assert_eq!(restored.token.refresh_token.unwrap().expose(), "rt-1");
    }

    #[test]
    fn wrong_key_keeps_entry_bytes() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("session.json");
        let (store, _) = SessionStore::open(&path, &SessionKey::generate());
        store.save("billing", &token("at-1", None), Utc::now()).unwrap();

        let (other, problems) = SessionStore::open(&path, &SessionKey::generate());
        assert_eq!(problems.len(), 1);
        assert!(problems[0].message.contains("failed authentication"), "{}", problems[0].message);
        assert!(other.restored("billing").is_none());

        let before: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        other.save("reports", &token("at-2", None), Utc::now()).unwrap();
        let after: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(before["entries"]["billing"], after["entries"]["billing"]);
    }

    #[test]
    fn moved_entry_fails_authentication() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("session.json");
        let key = SessionKey::generate();
        let (store, _) = SessionStore::open(&path, &key);
        store.save("billing", &token("at-1", None), Utc::now()).unwrap();

        let mut file: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let entry = file["entries"]["billing"].take();
        file["entries"] = serde_json::json!({ "reports": entry });
        std::fs::write(&path, serde_json::to_vec(&file).unwrap()).unwrap();

        let (reopened, problems) = SessionStore::open(&path, &key);
        assert_eq!(problems.len(), 1);
        assert!(reopened.restored("reports").is_none());
    }
}
