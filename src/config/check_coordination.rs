//! Offline checks of the `coordination:` section.

use std::path::PathBuf;

use serde_saphyr::Spanned;

use super::resolve::{Checker, SESSION_KEY_ENV_VAR, SessionKeyEntry, line_of};
use super::types::CoordinationConfig;
use crate::coordination::{CoordinationSettings, DEFAULT_KEY_PREFIX, DEFAULT_LEASE, DEFAULT_TIMEOUT, WhenUnavailable};

impl Checker<'_> {
    /// Checks the coordination settings. `session_key` is the key of the
    /// `session:` shorthand, used when the section names no key of its own.
    pub(super) fn coordination(
        &mut self,
        coordination: &Spanned<CoordinationConfig>,
        session_key: Option<SessionKeyEntry>,
    ) -> Option<CoordinationSettings> {
        let config = &coordination.value;
        let line = line_of(coordination);
        if config.kind.value != "redis" {
            self.problem("coordination.kind", line_of(&config.kind), format!("unknown kind `{}`: the only kind is `redis`", config.kind.value));
        }

        let url = self.expand(&config.url, "coordination.url");
        let url = url.and_then(|text| match url::Url::parse(&text) {
            Ok(parsed) if !matches!(parsed.scheme(), "redis" | "rediss") => {
                self.problem("coordination.url", line_of(&config.url), format!(
                    "the URL scheme must be `redis` or `rediss` (TLS), found `{}`", parsed.scheme()
                ));
                None
            }
            Ok(parsed) if parsed.password().is_some() => {
                self.problem("coordination.url", line_of(&config.url), "the URL contains a password: move it to password_file, so that it stays out of the configuration and of logs");
                None
            }
            Ok(parsed) if parsed.host_str().is_none_or(str::is_empty) => {
                self.problem("coordination.url", line_of(&config.url), "the URL names no host");
                None
            }
            Ok(_) => Some(text),
            Err(error) => {
                self.problem("coordination.url", line_of(&config.url), format!("invalid URL: {error}"));
                None
            }
        });

        let password = config.password_file.as_ref().and_then(|file| self.secret_file(file, "coordination.password_file"));
        let ca_file = config.ca_file.as_ref().and_then(|file| {
            let path = PathBuf::from(self.expand(file, "coordination.ca_file")?);
            if let Err(error) = std::fs::metadata(&path) {
                self.problem("coordination.ca_file", line_of(file), format!("cannot read {}: {error}", path.display()));
                return None;
            }
            Some(path)
        });

        let key_prefix = config.key_prefix.as_ref().map_or(DEFAULT_KEY_PREFIX.to_owned(), |prefix| prefix.value.clone());
        if key_prefix.chars().any(|c| c.is_whitespace() || c.is_control()) {
            let prefix_line = config.key_prefix.as_ref().and_then(line_of);
            self.problem("coordination.key_prefix", prefix_line, "the key prefix must not contain whitespace");
        }
        let lease = config.lease.map_or(DEFAULT_LEASE, |value| value.0);
        let timeout = config.timeout.map_or(DEFAULT_TIMEOUT, |value| value.0);
        self.positive(timeout, "coordination.timeout", line);
        if lease < std::time::Duration::from_secs(1) {
            self.problem("coordination.lease", line, "the lease must be at least 1s");
        } else if timeout >= lease {
            self.problem("coordination.timeout", line, "the Redis timeout must be shorter than the lease");
        }

        let when_unavailable = match config.when_unavailable.as_ref().map(|value| value.value.as_str()) {
            None | Some("hold") => WhenUnavailable::Hold,
            Some("refresh") => WhenUnavailable::Refresh,
            Some(other) => {
                let value_line = config.when_unavailable.as_ref().and_then(line_of);
                self.problem("coordination.when_unavailable", value_line, format!("unknown value `{other}`: use `hold` or `refresh`"));
                WhenUnavailable::Hold
            }
        };

        let key = match (&config.key_file, &config.key_env) {
            (Some(_), Some(env)) => {
                self.problem("coordination.key_env", line_of(env), "set key_file or key_env, not both");
                None
            }
            (Some(file), None) => self.key_from_file(file, "coordination.key_file"),
            (None, Some(env)) => match (self.env)(&env.value) {
                Some(text) => self.parse_key(&text, "coordination.key_env", line_of(env), &format!("environment variable {}", env.value)),
                None => {
                    self.problem("coordination.key_env", line_of(env), format!("environment variable {} is not set", env.value));
                    None
                }
            },
            (None, None) => match session_key {
                Some(entry) => Some(entry.0),
                None => match (self.env)(SESSION_KEY_ENV_VAR) {
                    Some(text) => self.parse_key(&text, "coordination", line, &format!("environment variable {SESSION_KEY_ENV_VAR}")),
                    None => {
                        self.problem("coordination", line, format!(
                            "no key to encrypt the shared state: set coordination.key_file, session.key_file or the environment variable {SESSION_KEY_ENV_VAR}"
                        ));
                        None
                    }
                },
            },
        };

        Some(CoordinationSettings {
            url: url?,
            username: config.username.as_ref().map(|name| name.value.clone()),
            password: match &config.password_file {
                Some(_) => Some(password?.0),
                None => None,
            },
            ca_file: match &config.ca_file {
                Some(_) => Some(ca_file?),
                None => None,
            },
            key_prefix,
            lease,
            when_unavailable,
            key: key?,
            timeout,
        })
    }
}
