//! The `file` source: a token that another system writes to a file. The
//! file is read again when it changes and before the token expires.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use serde_json::Map;
use tokio::sync::watch;

use super::{BoxFuture, FailureReason, FetchRequest, Source, SourceError};
use crate::token::{Token, resolve_expiry};

/// How often the file's metadata is checked for a change.
const POLL_PERIOD: Duration = Duration::from_secs(1);

/// Settings of a `file` source.
#[derive(Clone, Debug, PartialEq)]
pub struct FileSourceSettings {
    pub path: PathBuf,
    /// Lifetime counted from the file's modification time, used when the
    /// token is not a JWT with an `exp` claim.
    pub lifetime: Option<Duration>,
}

/// A token source that reads a file.
#[derive(Debug)]
pub struct FileSource {
    settings: FileSourceSettings,
}

impl FileSource {
    pub fn new(settings: FileSourceSettings) -> Self {
        FileSource { settings }
    }

    async fn read(&self, request: FetchRequest<'_>) -> Result<Token, SourceError> {
        let name = request.token_name;
        let path = &self.settings.path;
        let fail = |reason, what: String| SourceError::new(reason, format!("token file {} for token `{name}`: {what}", path.display()));
        let text = tokio::fs::read_to_string(path).await.map_err(|error| fail(FailureReason::Connect, format!("cannot read: {error}")))?;
        let value = text.trim();
        if value.is_empty() {
            return Err(fail(FailureReason::InvalidResponse, "the file is empty".to_owned()));
        }

        let modified = tokio::fs::metadata(path).await.and_then(|metadata| metadata.modified()).ok();
        let written_at = modified.map(DateTime::<Utc>::from).unwrap_or(request.requested_at);
        let fallback = self.settings.lifetime.unwrap_or(request.fallback_lifetime);
        // With a configured lifetime, the expiry counts from when the file was written.
        let expiry = resolve_expiry(&Map::new(), value, written_at, fallback);
        let lifetime = expiry.expires_at.signed_duration_since(request.requested_at).to_std().unwrap_or(Duration::ZERO);
        if expiry.expires_at <= request.requested_at {
            return Err(fail(FailureReason::InvalidResponse, "the token in the file has expired; waiting for a new one".to_owned()));
        }
        let mut token = Token::from_expiry(value, "Bearer", request.requested_at, expiry);
        // The lifetime left from now, since the file may have been written long ago.
        token.lifetime = lifetime;
        Ok(token)
    }
}

impl Source for FileSource {
    fn kind(&self) -> &'static str {
        "file"
    }

    /// The file is read on each machine, so no other instance can share it.
    fn is_shared(&self) -> bool {
        false
    }

    fn fetch<'a>(&'a self, request: FetchRequest<'a>) -> BoxFuture<'a, Result<Token, SourceError>> {
        Box::pin(self.read(request))
    }

    fn watch_changes(&self) -> Option<watch::Receiver<u64>> {
        let (sender, receiver) = watch::channel(0);
        let path = self.settings.path.clone();
        tokio::spawn(async move {
            let stamp = |metadata: std::io::Result<std::fs::Metadata>| {
                metadata.ok().map(|metadata| (metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH), metadata.len()))
            };
            let mut last = stamp(std::fs::metadata(&path));
            let mut interval = tokio::time::interval(POLL_PERIOD);
            while !sender.is_closed() {
                interval.tick().await;
                let now = stamp(tokio::fs::metadata(&path).await);
                if now != last {
                    last = now;
                    sender.send_modify(|generation| *generation += 1);
                }
            }
        });
        Some(receiver)
    }
}
