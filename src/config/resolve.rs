//! Offline validation: every check that needs no network, reported all at
//! once with YAML paths and lines, and the resolved settings it yields.

use std::collections::{BTreeMap, HashSet};
use std::ffi::CString;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde_saphyr::Spanned;

use super::types::*;
use crate::policy::{BUFFER_ENV_VAR, Backoff, RefreshPolicy};
use crate::coordination::CoordinationSettings;
use crate::secret::Secret;
use crate::sink::{ExecSinkAction, FileFormat, SessionKey, WebhookSettings};
use crate::source::{ExecSettings, FileSourceSettings, HttpLoginSettings, OAuth2Settings};

/// Default total time for one token request.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default lifetime assumed when a response states no expiry.
pub const DEFAULT_FALLBACK_LIFETIME: Duration = Duration::from_secs(3600);
/// Environment variable with the key of the `session:` shorthand's store.
pub const SESSION_KEY_ENV_VAR: &str = "TOKENSYNC_SESSION_KEY";
/// Default permission bits of files written by a `file` sink.
pub const DEFAULT_FILE_MODE: u32 = 0o600;

/// One problem found in a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// YAML path, such as `tokens[0].source.client_secret_file`.
    pub path: String,
    pub line: Option<u64>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}: {}", self.path, self.message),
            None => write!(f, "{}: {}", self.path, self.message),
        }
    }
}

/// A configuration with every value checked and every secret read.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedConfig {
    pub listen_address: Option<String>,
    pub tokens: Vec<ResolvedToken>,
    pub api: Option<ResolvedApi>,
    pub proxies: Vec<ResolvedProxy>,
    /// Session stores by path, with their keys.
    pub stores: BTreeMap<PathBuf, SessionKeyEntry>,
    pub coordination: Option<CoordinationSettings>,
}

/// A session store key, compared on reload to tell a key change.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionKeyEntry(pub SessionKey);

/// One token, ready to build.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedToken {
    pub name: String,
    pub source: ResolvedSource,
    pub sinks: Vec<ResolvedSink>,
    pub policy: RefreshPolicy,
    pub backoff: Backoff,
    pub timeout: Duration,
    pub fallback_lifetime: Duration,
}

/// One source, ready to build.
#[derive(Debug, Clone, PartialEq)]
pub enum ResolvedSource {
    /// `oauth2_client_credentials` or `oauth2_refresh_token`.
    OAuth2 {
        grant: SourceType,
        settings: OAuth2Settings,
        /// The initial refresh token of a refresh grant.
        refresh_token: Option<Secret>,
        refresh_token_modified_at: Option<SystemTime>,
    },
    HttpLogin(HttpLoginSettings),
    Exec(ExecSettings),
    File(FileSourceSettings),
}

impl ResolvedSource {
    pub fn kind(&self) -> &'static str {
        match self {
            ResolvedSource::OAuth2 { grant, .. } => grant.as_str(),
            ResolvedSource::HttpLogin(_) => "http_login",
            ResolvedSource::Exec(_) => "exec",
            ResolvedSource::File(_) => "file",
        }
    }
}

/// One sink, ready to build.
#[derive(Debug, Clone, PartialEq)]
pub enum ResolvedSink {
    File { path: PathBuf, format: FileFormat, mode: u32 },
    SessionStore { path: PathBuf },
    Webhook(WebhookSettings),
    Exec { action: ExecSinkAction, timeout: Duration },
}

/// Listen address of the token API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiListen {
    Unix(PathBuf),
    Tcp(std::net::SocketAddr),
}

/// The token API, ready to start.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedApi {
    pub listen: ApiListen,
    /// `None` only for a Unix socket with `unix_socket_permissions_only`.
    pub bearer_token: Option<Secret>,
    pub socket_mode: u32,
}

/// One injecting proxy, ready to start.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedProxy {
    pub name: String,
    pub listen: std::net::SocketAddr,
    pub upstream: url::Url,
    pub token: String,
    pub ca_file: Option<PathBuf>,
    pub timeout: Duration,
    pub replay_body_limit: u64,
}

/// Checks a parsed configuration offline. `env` reads environment variables
/// (a parameter so that tests need not change the process environment).
pub fn resolve(config: &Config, env: &dyn Fn(&str) -> Option<String>) -> Result<ResolvedConfig, Vec<Problem>> {
    let mut checker = Checker { problems: Vec::new(), env };
    let resolved = checker.config(config);
    if checker.problems.is_empty() { Ok(resolved) } else { Err(checker.problems) }
}

pub(super) struct Checker<'a> {
    problems: Vec<Problem>,
    pub(super) env: &'a dyn Fn(&str) -> Option<String>,
}

/// Returns the line of a spanned value, when the parser knew it.
pub(super) fn line_of<T>(spanned: &Spanned<T>) -> Option<u64> {
    Some(spanned.referenced.line()).filter(|line| *line > 0)
}

impl Checker<'_> {
    pub(super) fn problem(&mut self, path: impl Into<String>, line: Option<u64>, message: impl Into<String>) {
        self.problems.push(Problem { path: path.into(), line, message: message.into() });
    }

    fn config(&mut self, config: &Config) -> ResolvedConfig {
        let mut stores = BTreeMap::new();
        let base_policy = self.base_policy(config);
        let backoff = self.backoff(&config.defaults.backoff, Backoff::default(), "defaults.backoff", None);
        let timeout = config.defaults.timeout.map_or(DEFAULT_TIMEOUT, |value| value.0);
        let fallback = config.defaults.fallback_lifetime.map_or(DEFAULT_FALLBACK_LIFETIME, |value| value.0);
        self.positive(timeout, "defaults.timeout", None);
        self.positive(fallback, "defaults.fallback_lifetime", None);

        let shorthand_store = config.session.as_ref().and_then(|session| self.session_shorthand(session, &mut stores));
        let listen_address = config.web.listen_address.as_ref().map(|address| address.value.clone());

        let mut names = HashSet::new();
        let mut tokens = Vec::new();
        for (index, token) in config.tokens.iter().enumerate() {
            let path = format!("tokens[{index}]");
            let name = &token.value.name;
            if name.value.is_empty() || !name.value.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
                self.problem(format!("{path}.name"), line_of(name), format!(
                    "invalid token name `{}`: use letters, digits, `-`, `_` and `.`", name.value
                ));
            }
            if !names.insert(name.value.clone()) {
                self.problem(format!("{path}.name"), line_of(name), format!("token name `{}` is used twice", name.value));
            }
            let defaults = TokenDefaults { policy: base_policy, backoff, timeout, fallback };
            if let Some(resolved) = self.token(token, &path, defaults, shorthand_store.as_deref(), &mut stores) {
                tokens.push(resolved);
            }
        }
        if config.tokens.is_empty() {
            self.problem("tokens", None, "no tokens are configured; add at least one under `tokens:`");
        }
        let api = config.api.as_ref().and_then(|api| self.api(api));
        let proxies = self.proxies(&config.proxies, &names, timeout);
        self.port_clashes(config.web.listen_address.as_ref(), api.as_ref(), &proxies);
        let session_key = config.session.as_ref().and(shorthand_store.as_ref()).and_then(|path| stores.get(path)).cloned();
        let coordination = config.coordination.as_ref().and_then(|coordination| self.coordination(coordination, session_key));
        ResolvedConfig { listen_address, tokens, api, proxies, stores, coordination }
    }

    /// Computes the policy every token starts from: built-in defaults, then the
    /// buffer env var, then the `session:` shorthand, then `defaults.refresh`.
    fn base_policy(&mut self, config: &Config) -> RefreshPolicy {
        let mut policy = RefreshPolicy::default();
        if let Some(minutes) = (self.env)(BUFFER_ENV_VAR) {
            match minutes.trim().parse::<u64>() {
                Ok(minutes) => policy.buffer = Duration::from_secs(minutes * 60),
                Err(_) => self.problem(
                    format!("${BUFFER_ENV_VAR}"),
                    None,
                    format!("environment variable {BUFFER_ENV_VAR} must be a whole number of minutes, found `{minutes}`"),
                ),
            }
        }
        if let Some(minutes) = config.session.as_ref().and_then(|session| session.value.token_refresh_buffer.as_ref()) {
            policy.buffer = Duration::from_secs(u64::from(minutes.value) * 60);
        }
        self.policy(&config.defaults.refresh, policy, "defaults.refresh")
    }

    fn policy(&mut self, config: &RefreshConfig, base: RefreshPolicy, path: &str) -> RefreshPolicy {
        let mut policy = base;
        if let Some(buffer) = config.buffer {
            policy.buffer = buffer.0;
        }
        if let Some(fraction) = &config.lifetime_fraction {
            if !(fraction.value > 0.0 && fraction.value <= 1.0) {
                self.problem(format!("{path}.lifetime_fraction"), line_of(fraction), format!(
                    "lifetime_fraction must be above 0 and at most 1, found {}", fraction.value
                ));
            }
            policy.lifetime_fraction = fraction.value;
        }
        if let Some(jitter) = &config.jitter {
            if !(0.0..=1.0).contains(&jitter.value) {
                self.problem(format!("{path}.jitter"), line_of(jitter), format!(
                    "jitter must be between 0 and 1, found {}", jitter.value
                ));
            }
            policy.jitter = jitter.value;
        }
        if let Some(interval) = config.min_interval {
            policy.min_interval = interval.0;
        }
        policy
    }

    fn backoff(&mut self, config: &BackoffConfig, base: Backoff, path: &str, line: Option<u64>) -> Backoff {
        let backoff = Backoff {
            initial: config.initial.map_or(base.initial, |value| value.0),
            max: config.max.map_or(base.max, |value| value.0),
        };
        self.positive(backoff.initial, &format!("{path}.initial"), line);
        if backoff.max < backoff.initial {
            self.problem(format!("{path}.max"), line, format!(
                "backoff.max ({}) is shorter than backoff.initial ({})",
                humantime::format_duration(backoff.max),
                humantime::format_duration(backoff.initial)
            ));
        }
        backoff
    }

    pub(super) fn positive(&mut self, duration: Duration, path: &str, line: Option<u64>) {
        if duration.is_zero() {
            self.problem(path, line, "must be longer than zero");
        }
    }

    fn session_shorthand(
        &mut self,
        session: &Spanned<SessionShorthand>,
        stores: &mut BTreeMap<PathBuf, SessionKeyEntry>,
    ) -> Option<PathBuf> {
        let path = PathBuf::from(self.expand(&session.value.save_file, "session.save_file")?);
        self.writable_parent(&path, "session.save_file", line_of(&session.value.save_file));
        let key = match &session.value.key_file {
            Some(key_file) => self.key_from_file(key_file, "session.key_file"),
            None => match (self.env)(SESSION_KEY_ENV_VAR) {
                Some(text) => self.parse_key(&text, "session", line_of(session), &format!("environment variable {SESSION_KEY_ENV_VAR}")),
                None => {
                    self.problem("session", line_of(session), format!(
                        "no session key: set session.key_file or the environment variable {SESSION_KEY_ENV_VAR}"
                    ));
                    None
                }
            },
        }?;
        stores.insert(path.clone(), SessionKeyEntry(key));
        Some(path)
    }

    fn token(
        &mut self,
        token: &Spanned<TokenConfig>,
        path: &str,
        defaults: TokenDefaults,
        shorthand_store: Option<&Path>,
        stores: &mut BTreeMap<PathBuf, SessionKeyEntry>,
    ) -> Option<ResolvedToken> {
        let config = &token.value;
        let policy = self.policy(&config.refresh, defaults.policy, &format!("{path}.refresh"));
        let backoff = self.backoff(&config.backoff, defaults.backoff, &format!("{path}.backoff"), line_of(token));
        let timeout = config.timeout.map_or(defaults.timeout, |value| value.0);
        let fallback_lifetime = config.fallback_lifetime.map_or(defaults.fallback, |value| value.0);
        self.positive(timeout, &format!("{path}.timeout"), line_of(token));
        self.positive(fallback_lifetime, &format!("{path}.fallback_lifetime"), line_of(token));

        let source = self.source(&config.source, &format!("{path}.source"), timeout);

        let mut sinks = Vec::new();
        let mut seen = HashSet::new();
        for (index, sink) in config.sinks.iter().enumerate() {
            let sink_path = format!("{path}.sinks[{index}]");
            if let Some(resolved) = self.sink(sink, &sink_path, stores) {
                let target = match &resolved {
                    ResolvedSink::File { path, .. } | ResolvedSink::SessionStore { path } => path.display().to_string(),
                    ResolvedSink::Webhook(settings) => settings.url.to_string(),
                    ResolvedSink::Exec { action, .. } => format!("{action:?}"),
                };
                if !seen.insert(target.clone()) {
                    self.problem(sink_path, line_of(sink), format!("{target} is used by two sinks of this token"));
                    continue;
                }
                sinks.push(resolved);
            }
        }
        if let Some(store) = shorthand_store
            && seen.insert(store.display().to_string())
        {
            sinks.push(ResolvedSink::SessionStore { path: store.to_owned() });
        }

        Some(ResolvedToken {
            name: config.name.value.clone(),
            source: source?,
            sinks,
            policy,
            backoff,
            timeout,
            fallback_lifetime,
        })
    }

    pub(super) fn url(&mut self, url: &Spanned<String>, path: &str) -> Option<url::Url> {
        let text = self.expand(url, path)?;
        match url::Url::parse(&text) {
            Ok(parsed) if matches!(parsed.scheme(), "http" | "https") && parsed.host().is_some() => Some(parsed),
            Ok(parsed) => {
                self.problem(path, line_of(url), format!("invalid URL `{text}`: the scheme must be http or https with a host, found `{}`", parsed.scheme()));
                None
            }
            Err(error) => {
                self.problem(path, line_of(url), format!("invalid URL `{text}`: {error}"));
                None
            }
        }
    }

    pub(super) fn expand(&mut self, value: &Spanned<String>, path: &str) -> Option<String> {
        match expand_env(&value.value, self.env) {
            Ok(text) => Some(text),
            Err(message) => {
                self.problem(path, line_of(value), message);
                None
            }
        }
    }

    /// Reads a secret file, trimming one trailing newline.
    pub(super) fn secret_file(&mut self, file: &Spanned<String>, path: &str) -> Option<(Secret, Option<SystemTime>)> {
        let target = PathBuf::from(self.expand(file, path)?);
        match std::fs::read_to_string(&target) {
            Ok(text) => {
                let value = text.trim_end_matches(['\n', '\r']);
                if value.is_empty() {
                    self.problem(path, line_of(file), format!("{} is empty", target.display()));
                    return None;
                }
                let modified = std::fs::metadata(&target).and_then(|metadata| metadata.modified()).ok();
                Some((Secret::new(value), modified))
            }
            Err(error) => {
                self.problem(path, line_of(file), format!("cannot read {}: {error}", target.display()));
                None
            }
        }
    }

    pub(super) fn key_from_file(&mut self, file: &Spanned<String>, path: &str) -> Option<SessionKey> {
        let (secret, _) = self.secret_file(file, path)?;
        self.parse_key(secret.expose(), path, line_of(file), &file.value)
    }

    pub(super) fn parse_key(&mut self, text: &str, path: &str, line: Option<u64>, origin: &str) -> Option<SessionKey> {
        match SessionKey::parse(text) {
            Ok(key) => Some(key),
            Err(message) => {
                self.problem(path, line, format!("{message} (in {origin}); generate one with `head -c 32 /dev/urandom | base64`"));
                None
            }
        }
    }

    /// Checks that the directory that will hold `target` exists and is writable.
    pub(super) fn writable_parent(&mut self, target: &Path, path: &str, line: Option<u64>) {
        let directory = match target.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        if !directory.is_dir() {
            self.problem(path, line, format!("directory {} does not exist", directory.display()));
            return;
        }
        let Ok(c_path) = CString::new(directory.as_os_str().as_bytes()) else {
            self.problem(path, line, "the path contains a NUL byte");
            return;
        };
        // SAFETY: `c_path` is a valid NUL-terminated string that outlives the call.
        let writable = unsafe { libc::access(c_path.as_ptr(), libc::W_OK) } == 0;
        if !writable {
            self.problem(path, line, format!("directory {} is not writable by this user", directory.display()));
        }
    }
}

#[derive(Clone, Copy)]
struct TokenDefaults {
    policy: RefreshPolicy,
    backoff: Backoff,
    timeout: Duration,
    fallback: Duration,
}

/// Replaces each `${NAME}` with the environment variable `NAME` and each
/// `${file:PATH}` with the file's contents (one trailing newline removed);
/// `$${` is a literal `${`. An unset variable or unreadable file is an error.
pub fn expand_env(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut output = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('$') {
        output.push_str(&rest[..start]);
        let after = &rest[start..];
        if let Some(escaped) = after.strip_prefix("$${") {
            output.push_str("${");
            rest = escaped;
        } else if let Some(body) = after.strip_prefix("${") {
            let end = body.find('}').ok_or_else(|| "unclosed `${`: write `${NAME}`, or `$${` for a literal".to_owned())?;
            let name = &body[..end];
            if let Some(file) = name.strip_prefix("file:") {
                let contents = std::fs::read_to_string(file).map_err(|error| format!("cannot read {file} for `${{file:...}}`: {error}"))?;
                output.push_str(contents.trim_end_matches(['\n', '\r']));
                rest = &body[end + 1..];
                continue;
            }
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("invalid environment variable name `{name}` in `${{...}}`"));
            }
            let value = env(name).ok_or_else(|| format!("environment variable {name} is not set"))?;
            output.push_str(&value);
            rest = &body[end + 1..];
        } else {
            output.push('$');
            rest = &after[1..];
        }
    }
    output.push_str(rest);
    Ok(output)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "SECRET" => Some("s3cr3t".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expand_env_cases() {
        assert_eq!(expand_env("${SECRET}", &env).unwrap(), "s3cr3t");
        assert_eq!(expand_env("a-${SECRET}-b", &env).unwrap(), "a-s3cr3t-b");
        assert_eq!(expand_env("$${SECRET}", &env).unwrap(), "${SECRET}");
        assert_eq!(expand_env("cost $5", &env).unwrap(), "cost $5");
        assert_eq!(expand_env("${EMPTY}", &env).unwrap(), "");
        assert_eq!(expand_env("${MISSING}", &env).unwrap_err(), "environment variable MISSING is not set");
        assert!(expand_env("${SECRET", &env).unwrap_err().contains("unclosed"));
        assert!(expand_env("${BAD-NAME}", &env).unwrap_err().contains("invalid environment variable name"));
    }
}
