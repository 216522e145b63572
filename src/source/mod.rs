//! Sources: how a token is obtained: OAuth2 grants, a generic HTTP login,
//! a credential command or a file written by another system.
//!
//! A [`Source`] performs one token request and returns a [`Token`] or a
//! [`SourceError`] classified by a closed set of [`FailureReason`]s. Sources
//! know nothing of the engine, sinks, metrics or HTTP serving.

mod exec;
mod file;
mod http_login;
mod oauth2;
mod transport;
pub mod response;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};

pub use exec::{ExecSettings, ExecSource, INHERITED_VARIABLES, inherited_environment, parse_lenient_time};
pub use file::{FileSource, FileSourceSettings};
pub use http_login::{HttpLogin, HttpLoginSettings, RequestTemplate};
pub use oauth2::{AuthMethod, ClientCredentials, OAuth2Settings, RefreshTokenGrant, build_http_client, install_crypto_provider};

use crate::token::Token;

/// A boxed future, so that sources and sinks can be used as trait objects.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Inputs of one token request.
#[derive(Clone, Copy, Debug)]
pub struct FetchRequest<'a> {
    /// The configured token name, for messages.
    pub token_name: &'a str,
    /// The token held now, if any; its refresh token is used for a refresh grant.
    pub current: Option<&'a Token>,
    /// When the request is sent; a relative `expires_in` counts from here.
    pub requested_at: DateTime<Utc>,
    /// Lifetime assumed when the response states no expiry.
    pub fallback_lifetime: Duration,
}

/// A way to obtain tokens from an issuer.
pub trait Source: Send + Sync + 'static {
    /// Returns the source type, such as `oauth2_client_credentials`.
    fn kind(&self) -> &'static str;

    /// Requests one token.
    fn fetch<'a>(&'a self, request: FetchRequest<'a>) -> BoxFuture<'a, Result<Token, SourceError>>;

    /// Returns when the configured initial credential (such as a refresh token
    /// file) last changed, if the source has one. A session-store entry saved
    /// after this time is preferred over the configured value.
    fn seed_modified_at(&self) -> Option<SystemTime> {
        None
    }

    /// Returns whether instances on other machines obtain the same token
    /// from this source, so that coordination through Redis applies.
    fn is_shared(&self) -> bool {
        true
    }

    /// Returns whether each refresh spends the refresh token it presents.
    /// Two refreshes at once then make the issuer see a reused one.
    fn rotates_refresh_tokens(&self) -> bool {
        false
    }

    /// Returns a channel whose value changes when the token may have changed
    /// outside tokensync (a rewritten token file, say), so the engine reads
    /// it at once. Called once per token, inside the tokio runtime.
    fn watch_changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
}

/// Cause of a failed token request. The set is closed because it is used as a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FailureReason {
    /// The request or the response body timed out.
    Timeout,
    /// No connection could be made (refused, DNS, TLS handshake).
    Connect,
    /// The issuer refused the grant or the client; retrying will not help.
    Rejected,
    /// HTTP 429 or `slow_down`.
    RateLimited,
    /// HTTP 5xx or `temporarily_unavailable`.
    ServerError,
    /// The response could not be parsed or lacks required fields.
    InvalidResponse,
}

impl FailureReason {
    /// Every reason, in metric-label order.
    pub const ALL: [FailureReason; 6] = [
        FailureReason::Timeout,
        FailureReason::Connect,
        FailureReason::Rejected,
        FailureReason::RateLimited,
        FailureReason::ServerError,
        FailureReason::InvalidResponse,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::Timeout => "timeout",
            FailureReason::Connect => "connect",
            FailureReason::Rejected => "rejected",
            FailureReason::RateLimited => "rate_limited",
            FailureReason::ServerError => "server_error",
            FailureReason::InvalidResponse => "invalid_response",
        }
    }
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed token request. The message never contains a secret: response
/// bodies pass through [`response::sanitize_body`] first.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct SourceError {
    pub reason: FailureReason,
    pub message: String,
    /// HTTP status, when a response arrived.
    pub status: Option<u16>,
    /// Delay the issuer asked for with `Retry-After`.
    pub retry_after: Option<Duration>,
}

impl SourceError {
    pub fn new(reason: FailureReason, message: impl Into<String>) -> Self {
        SourceError { reason, message: message.into(), status: None, retry_after: None }
    }
}
