//! The `file` sink: the token as a file, replaced atomically.

use std::io;
use std::path::PathBuf;

use chrono::SecondsFormat;
use zeroize::Zeroizing;

use super::{Sink, SinkError, SyncFailureReason, write_atomic};
use crate::source::BoxFuture;
use crate::token::Token;

/// Content format of the file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FileFormat {
    /// The access token alone, with no trailing newline.
    #[default]
    Raw,
    /// `{"access_token", "token_type", "expires_at"}`, the expiry in RFC 3339.
    Json,
}

/// Writes each new token to one file.
#[derive(Debug)]
pub struct FileSink {
    id: String,
    path: PathBuf,
    format: FileFormat,
    mode: u32,
}

impl FileSink {
    /// Creates the sink and removes temporary files a killed process left
    /// next to `path`.
    pub fn new(path: PathBuf, format: FileFormat, mode: u32) -> Self {
        super::atomic::remove_stale_temp_files(&path);
        FileSink { id: format!("file:{}", path.display()), path, format, mode }
    }

    fn render(&self, token: &Token) -> Zeroizing<Vec<u8>> {
        match self.format {
            FileFormat::Raw => Zeroizing::new(token.access_token.expose().as_bytes().to_vec()),
            FileFormat::Json => {
                let value = serde_json::json!({
                    "access_token": token.access_token.expose(),
                    "token_type": token.token_type,
                    "expires_at": token.expires_at.to_rfc3339_opts(SecondsFormat::Secs, true),
                });
                let mut bytes = serde_json::to_vec(&value).unwrap_or_default();
                bytes.push(b'\n');
                Zeroizing::new(bytes)
            }
        }
    }
}

impl Sink for FileSink {
    fn id(&self) -> &str {
        &self.id
    }

    fn sync<'a>(&'a self, _token_name: &'a str, token: &'a Token) -> BoxFuture<'a, Result<(), SinkError>> {
        let contents = self.render(token);
        let path = self.path.clone();
        let mode = self.mode;
        Box::pin(async move {
            let result = tokio::task::spawn_blocking(move || write_atomic(&path, &contents, mode))
                .await
                .unwrap_or_else(|join_error| Err(io::Error::other(join_error.to_string())));
            result.map_err(|error| {
                let mut sink_error = SinkError::io(&self.id, "atomic write", &error);
                if error.kind() == io::ErrorKind::InvalidInput {
                    sink_error.reason = SyncFailureReason::UnsafePath;
                }
                sink_error
            })
        })
    }
}
