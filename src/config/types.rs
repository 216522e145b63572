//! The configuration file's types. Key names are a contract: tests, docs and
//! examples rely on them. Unknown keys are errors.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer};
use serde_saphyr::Spanned;

/// The whole configuration file.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub web: WebConfig,
    #[serde(default)]
    pub defaults: Defaults,
    /// Shorthand for one encrypted session store used by every token.
    #[schemars(with = "Option<SessionShorthand>")]
    pub session: Option<Spanned<SessionShorthand>>,
    #[serde(default)]
    #[schemars(with = "Vec<TokenConfig>")]
    pub tokens: Vec<Spanned<TokenConfig>>,
    /// The token API listener; absent means no token API.
    #[schemars(with = "Option<ApiConfig>")]
    pub api: Option<Spanned<ApiConfig>>,
    /// Reverse proxies that inject a token into every request.
    #[serde(default)]
    #[schemars(with = "Vec<ProxyConfig>")]
    pub proxies: Vec<Spanned<ProxyConfig>>,
    /// Coordination with other instances that manage the same tokens;
    /// absent means this instance refreshes its tokens alone.
    #[schemars(with = "Option<CoordinationConfig>")]
    pub coordination: Option<Spanned<CoordinationConfig>>,
}

/// Coordination through Redis: one lease per token, shared encrypted state.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CoordinationConfig {
    /// `redis`, the only kind.
    #[schemars(with = "String")]
    pub kind: Spanned<String>,
    /// `redis://HOST:PORT/DB`, or `rediss://` for TLS; no password here.
    #[schemars(with = "String")]
    pub url: Spanned<String>,
    /// ACL user name, for Redis 6 and later.
    #[schemars(with = "Option<String>")]
    pub username: Option<Spanned<String>>,
    /// File holding the Redis password.
    #[schemars(with = "Option<String>")]
    pub password_file: Option<Spanned<String>>,
    /// PEM file of the CA that signed the Redis server certificate.
    #[schemars(with = "Option<String>")]
    pub ca_file: Option<Spanned<String>>,
    /// Prefix of every key and channel, `tokensync:` by default.
    #[schemars(with = "Option<String>")]
    pub key_prefix: Option<Spanned<String>>,
    /// How long a refresher holds a token's lease (15s by default); it is
    /// extended while the request runs and expires if the process dies.
    pub lease: Option<DurationValue>,
    /// Time limit of one Redis command (2s by default).
    pub timeout: Option<DurationValue>,
    /// `hold` (the default) or `refresh`: whether tokens with rotating
    /// refresh tokens refresh while Redis is unreachable.
    #[schemars(with = "Option<String>")]
    pub when_unavailable: Option<Spanned<String>>,
    /// File with the key that encrypts the shared state; every instance
    /// needs the same one. Defaults to the `session:` key.
    #[schemars(with = "Option<String>")]
    pub key_file: Option<Spanned<String>>,
    /// Environment variable holding that key, instead of `key_file`.
    #[schemars(with = "Option<String>")]
    pub key_env: Option<Spanned<String>>,
}

/// The token API: `GET /v1/tokens/{name}` and `POST /v1/tokens/{name}/refresh`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// `unix:///run/tokensync/api.sock` or `tcp://127.0.0.1:PORT` (loopback only).
    #[schemars(with = "String")]
    pub listen: Spanned<String>,
    /// File holding the bearer token that clients must send.
    #[schemars(with = "Option<String>")]
    pub bearer_token_file: Option<Spanned<String>>,
    /// Serve a Unix socket without a bearer token, relying on the socket's
    /// file permissions alone. Must be set explicitly; ignored for TCP.
    #[serde(default)]
    pub unix_socket_permissions_only: bool,
    /// Octal permission bits of the Unix socket, such as `"0600"` (the default).
    #[schemars(with = "Option<String>")]
    pub socket_mode: Option<Spanned<String>>,
}

/// A reverse proxy that injects `Authorization: Bearer <token>`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    /// `HOST:PORT` to listen on.
    #[schemars(with = "String")]
    pub listen: Spanned<String>,
    /// Base URL requests are forwarded to; the request path is appended.
    #[schemars(with = "String")]
    pub upstream: Spanned<String>,
    /// Name of the token to inject.
    #[schemars(with = "String")]
    pub token: Spanned<String>,
    #[schemars(with = "Option<String>")]
    pub ca_file: Option<Spanned<String>>,
    /// Total time for one upstream request.
    pub timeout: Option<DurationValue>,
    /// Largest request body, in bytes, kept in memory so that a request
    /// rejected with 401 can be sent again with a new token (default 1 MiB).
    #[schemars(with = "Option<u64>")]
    pub replay_body_limit: Option<Spanned<u64>>,
}

/// One templated HTTP request of an `http_login` source.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestConfig {
    /// HTTP method, `POST` by default.
    #[schemars(with = "Option<String>")]
    pub method: Option<Spanned<String>>,
    #[schemars(with = "String")]
    pub url: Spanned<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The JSON body; string values may use `${ENV_VAR}` and `${file:PATH}`.
    pub body: Option<serde_json::Value>,
}

/// The metrics listener.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebConfig {
    /// `HOST:PORT`; the `--web.listen-address` flag takes precedence.
    #[schemars(with = "Option<String>")]
    pub listen_address: Option<Spanned<String>>,
}

/// Settings that every token inherits unless it overrides them.
#[derive(Debug, Default, Deserialize, JsonSchema)]
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
#[derive(Debug, Default, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshConfig {
    pub buffer: Option<DurationValue>,
    #[schemars(with = "Option<f64>")]
    pub lifetime_fraction: Option<Spanned<f64>>,
    #[schemars(with = "Option<f64>")]
    pub jitter: Option<Spanned<f64>>,
    pub min_interval: Option<DurationValue>,
}

/// Retry backoff settings; see [`crate::policy::Backoff`].
#[derive(Debug, Default, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BackoffConfig {
    pub initial: Option<DurationValue>,
    pub max: Option<DurationValue>,
}

/// `session: {save_file, token_refresh_buffer, key_file}`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionShorthand {
    #[schemars(with = "String")]
    pub save_file: Spanned<String>,
    /// Default refresh buffer, in minutes.
    #[schemars(with = "Option<u32>")]
    pub token_refresh_buffer: Option<Spanned<u32>>,
    /// Key file; without it the key comes from `TOKENSYNC_SESSION_KEY`.
    #[schemars(with = "Option<String>")]
    pub key_file: Option<Spanned<String>>,
}

/// One managed token.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    #[schemars(with = "SourceConfig")]
    pub source: Spanned<SourceConfig>,
    #[serde(default)]
    #[schemars(with = "Vec<SinkConfig>")]
    pub sinks: Vec<Spanned<SinkConfig>>,
    #[serde(default)]
    pub refresh: RefreshConfig,
    #[serde(default)]
    pub backoff: BackoffConfig,
    pub timeout: Option<DurationValue>,
    pub fallback_lifetime: Option<DurationValue>,
}

/// The source types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SourceType {
    Oauth2ClientCredentials,
    Oauth2RefreshToken,
    HttpLogin,
    Exec,
    File,
}

impl SourceType {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceType::Oauth2ClientCredentials => "oauth2_client_credentials",
            SourceType::Oauth2RefreshToken => "oauth2_refresh_token",
            SourceType::HttpLogin => "http_login",
            SourceType::Exec => "exec",
            SourceType::File => "file",
        }
    }
}

/// Client authentication method at the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethodConfig {
    #[default]
    ClientSecretBasic,
    ClientSecretPost,
}

/// A token source. One flat struct serves every type, so that every key
/// keeps its line number. Validation reports keys that do not belong to the type.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    #[serde(rename = "type")]
    pub kind: SourceType,
    #[schemars(with = "Option<String>")]
    pub token_url: Option<Spanned<String>>,
    #[schemars(with = "Option<String>")]
    pub client_id: Option<Spanned<String>>,
    /// Inline secret, usually `${ENV_VAR}`.
    #[schemars(with = "Option<String>")]
    pub client_secret: Option<Spanned<String>>,
    #[schemars(with = "Option<String>")]
    pub client_secret_file: Option<Spanned<String>>,
    #[serde(default)]
    pub auth_method: AuthMethodConfig,
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Extra form parameters, such as `audience` or `resource`.
    #[serde(default)]
    pub extra_params: BTreeMap<String, String>,
    #[schemars(with = "Option<String>")]
    pub ca_file: Option<Spanned<String>>,
    /// `oauth2_refresh_token` only: the initial refresh token, usually `${ENV_VAR}`.
    #[schemars(with = "Option<String>")]
    pub refresh_token: Option<Spanned<String>>,
    /// `oauth2_refresh_token` only: a file holding the initial refresh token.
    #[schemars(with = "Option<String>")]
    pub refresh_token_file: Option<Spanned<String>>,
    /// `http_login` only: the login request.
    #[schemars(with = "Option<RequestConfig>")]
    pub login: Option<Spanned<RequestConfig>>,
    /// `http_login` only: the request sent while a refresh token is held.
    #[schemars(with = "Option<RequestConfig>")]
    pub refresh: Option<Spanned<RequestConfig>>,
    /// `http_login` only: JSON pointer to the access token.
    #[schemars(with = "Option<String>")]
    pub token_pointer: Option<Spanned<String>>,
    /// `http_login` only: JSON pointer to the expiry.
    #[schemars(with = "Option<String>")]
    pub expiry_pointer: Option<Spanned<String>>,
    /// `http_login` only: JSON pointer to a refresh token.
    #[schemars(with = "Option<String>")]
    pub refresh_token_pointer: Option<Spanned<String>>,
    /// `exec` only: the program and its arguments.
    #[schemars(with = "Option<Vec<String>>")]
    pub command: Option<Spanned<Vec<String>>>,
    /// `exec` only: extra environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// `file` only: the token file.
    #[schemars(with = "Option<String>")]
    pub path: Option<Spanned<String>>,
    /// `file` only: lifetime from the file's modification time, when the token is no JWT.
    pub lifetime: Option<DurationValue>,
}

/// The sink types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SinkType {
    File,
    SessionStore,
    Webhook,
    Exec,
}

/// Content format of a file sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FileFormatConfig {
    #[default]
    Raw,
    Json,
}

/// A sink. One flat struct for every type, like [`SourceConfig`].
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    #[serde(rename = "type")]
    pub kind: SinkType,
    /// `file` and `session_store`: the target file.
    #[schemars(with = "Option<String>")]
    pub path: Option<Spanned<String>>,
    /// `file` only.
    pub format: Option<FileFormatConfig>,
    /// `file` only: octal permission bits as a string, such as `"0640"`.
    #[schemars(with = "Option<String>")]
    pub mode: Option<Spanned<String>>,
    /// `session_store` only: a file holding the key (base64 or hex).
    #[schemars(with = "Option<String>")]
    pub key_file: Option<Spanned<String>>,
    /// `session_store` only: the name of an environment variable holding the key.
    #[schemars(with = "Option<String>")]
    pub key_env: Option<Spanned<String>>,
    /// `webhook` only: where the token is POSTed.
    #[schemars(with = "Option<String>")]
    pub url: Option<Spanned<String>>,
    /// `webhook` only: extra request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// `webhook` only: extra CA certificates (PEM).
    #[schemars(with = "Option<String>")]
    pub ca_file: Option<Spanned<String>>,
    /// `webhook` and `exec`: time allowed for one delivery (default 10s).
    pub timeout: Option<DurationValue>,
    /// `exec` only: a program and arguments run with the token on standard input.
    #[schemars(with = "Option<Vec<String>>")]
    pub command: Option<Spanned<Vec<String>>>,
    /// `exec` only: signal the process whose pid this file holds, instead of a command.
    #[schemars(with = "Option<String>")]
    pub pid_file: Option<Spanned<String>>,
    /// `exec` with `pid_file`: the signal name, `HUP` by default.
    #[schemars(with = "Option<String>")]
    pub signal: Option<Spanned<String>>,
}

/// A duration written as `500ms`, `30s`, `5m`, `1h` or `1h30m`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct DurationValue(pub Duration);

impl fmt::Debug for DurationValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl JsonSchema for DurationValue {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A duration with a unit, such as 500ms, 30s, 5m, 1h or 1h30m.",
            "pattern": "^\\s*([0-9]+\\s*[a-zA-Z]+\\s*)+$"
        })
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

/// Prints `***` for a value that may hold a secret, and `None` for an absent one.
struct Redacted<'a, T>(&'a Option<T>);

impl<T> fmt::Debug for Redacted<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() { "Some(***)" } else { "None" })
    }
}

/// Prints a map's keys with every value as `***`.
struct RedactedMap<'a>(&'a BTreeMap<String, String>);

impl fmt::Debug for RedactedMap<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.0.keys().map(|key| (key, "***"))).finish()
    }
}

// The raw configuration may hold inline secrets, so `Debug` prints every
// field that can carry one as `***`.
impl fmt::Debug for SourceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SourceConfig")
            .field("kind", &self.kind)
            .field("token_url", &self.token_url.as_ref().map(|url| &url.value))
            .field("client_id", &self.client_id.as_ref().map(|id| &id.value))
            .field("client_secret", &Redacted(&self.client_secret))
            .field("client_secret_file", &self.client_secret_file.as_ref().map(|file| &file.value))
            .field("auth_method", &self.auth_method)
            .field("scopes", &self.scopes)
            .field("extra_params", &RedactedMap(&self.extra_params))
            .field("refresh_token", &Redacted(&self.refresh_token))
            .field("refresh_token_file", &self.refresh_token_file.as_ref().map(|file| &file.value))
            .field("login", &self.login.as_ref().map(|login| &login.value))
            .field("refresh", &self.refresh.as_ref().map(|refresh| &refresh.value))
            .field("command", &self.command.as_ref().map(|command| &command.value))
            .field("env", &RedactedMap(&self.env))
            .field("path", &self.path.as_ref().map(|path| &path.value))
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for RequestConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestConfig")
            .field("method", &self.method.as_ref().map(|method| &method.value))
            .field("url", &self.url.value)
            .field("headers", &RedactedMap(&self.headers))
            .field("body", &Redacted(&self.body))
            .finish()
    }
}

impl fmt::Debug for SinkConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SinkConfig")
            .field("kind", &self.kind)
            .field("path", &self.path.as_ref().map(|path| &path.value))
            .field("url", &self.url.as_ref().map(|url| &url.value))
            .field("headers", &RedactedMap(&self.headers))
            .field("command", &self.command.as_ref().map(|command| &command.value))
            .field("pid_file", &self.pid_file.as_ref().map(|file| &file.value))
            .finish_non_exhaustive()
    }
}
