//! The configuration file's types. Key names are a contract: tests, docs and
//! examples rely on them. Unknown keys are errors.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use serde_saphyr::Spanned;

/// The whole configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub web: WebConfig,
    #[serde(default)]
    pub defaults: Defaults,
    /// Shorthand for one encrypted session store used by every token.
    pub session: Option<Spanned<SessionShorthand>>,
    #[serde(default)]
    pub tokens: Vec<Spanned<TokenConfig>>,
}

/// The metrics listener.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebConfig {
    /// `HOST:PORT`; the `--web.listen-address` flag takes precedence.
    pub listen_address: Option<Spanned<String>>,
}

/// Settings that every token inherits unless it overrides them.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    #[serde(default)]
    pub refresh: RefreshConfig,
    #[serde(default)]
    pub backoff: BackoffConfig,
    /// Total time for one token request.
    pub timeout: Option<DurationValue>,
    /// Lifetime assumed when a response states no expiry.
    pub fallback_lifetime: Option<DurationValue>,
}

/// Refresh policy settings; see [`crate::policy::RefreshPolicy`].
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefreshConfig {
    pub buffer: Option<DurationValue>,
    pub lifetime_fraction: Option<Spanned<f64>>,
    pub jitter: Option<Spanned<f64>>,
    pub min_interval: Option<DurationValue>,
}

/// Retry backoff settings; see [`crate::policy::Backoff`].
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackoffConfig {
    pub initial: Option<DurationValue>,
    pub max: Option<DurationValue>,
}

/// `session: {save_file, token_refresh_buffer, key_file}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionShorthand {
    pub save_file: Spanned<String>,
    /// Default refresh buffer, in minutes.
    pub token_refresh_buffer: Option<Spanned<u32>>,
    /// Key file; without it the key comes from `TOKENSYNC_SESSION_KEY`.
    pub key_file: Option<Spanned<String>>,
}

/// One managed token.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    pub name: Spanned<String>,
    pub source: Spanned<SourceConfig>,
    #[serde(default)]
    pub sinks: Vec<Spanned<SinkConfig>>,
    #[serde(default)]
    pub refresh: RefreshConfig,
    #[serde(default)]
    pub backoff: BackoffConfig,
    pub timeout: Option<DurationValue>,
    pub fallback_lifetime: Option<DurationValue>,
}

/// The source types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceType {
    Oauth2ClientCredentials,
    Oauth2RefreshToken,
}

/// Client authentication method at the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethodConfig {
    #[default]
    ClientSecretBasic,
    ClientSecretPost,
}

/// A token source. One flat struct serves every type, so that every key
/// keeps its line number. Validation reports keys that do not belong to the type.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    #[serde(rename = "type")]
    pub kind: SourceType,
    pub token_url: Option<Spanned<String>>,
    pub client_id: Option<Spanned<String>>,
    /// Inline secret, usually `${ENV_VAR}`.
    pub client_secret: Option<Spanned<String>>,
    pub client_secret_file: Option<Spanned<String>>,
    #[serde(default)]
    pub auth_method: AuthMethodConfig,
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Extra form parameters, such as `audience` or `resource`.
    #[serde(default)]
    pub extra_params: BTreeMap<String, String>,
    pub ca_file: Option<Spanned<String>>,
    /// `oauth2_refresh_token` only: the initial refresh token, usually `${ENV_VAR}`.
    pub refresh_token: Option<Spanned<String>>,
    /// `oauth2_refresh_token` only: a file holding the initial refresh token.
    pub refresh_token_file: Option<Spanned<String>>,
}

/// The sink types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkType {
    File,
    SessionStore,
}

/// Content format of a file sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FileFormatConfig {
    #[default]
    Raw,
    Json,
}

/// A sink. One flat struct for every type, like [`SourceConfig`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    #[serde(rename = "type")]
    pub kind: SinkType,
    pub path: Spanned<String>,
    /// `file` only.
    pub format: Option<FileFormatConfig>,
    /// `file` only: octal permission bits as a string, such as `"0640"`.
    pub mode: Option<Spanned<String>>,
    /// `session_store` only: a file holding the key (base64 or hex).
    pub key_file: Option<Spanned<String>>,
    /// `session_store` only: the name of an environment variable holding the key.
    pub key_env: Option<Spanned<String>>,
}

/// A duration written as `500ms`, `30s`, `5m`, `1h` or `1h30m`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct DurationValue(pub Duration);

impl fmt::Debug for DurationValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for DurationValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Number(f64),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Text(text) => humantime::parse_duration(text.trim()).map(DurationValue).map_err(|_| {
                serde::de::Error::custom(format!("invalid duration `{text}`: use a number with a unit, as in 30s, 5m or 1h"))
            }),
            Raw::Number(number) => Err(serde::de::Error::custom(format!(
                "invalid duration {number}: a unit is required, as in {number}s or {number}m"
            ))),
        }
    }
}
