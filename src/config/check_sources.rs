//! Validation of token sources.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use serde_saphyr::Spanned;

use super::resolve::{Checker, ResolvedSource, expand_env, line_of};
use super::types::{AuthMethodConfig, RequestConfig, SourceConfig, SourceType};
use crate::secret::Secret;
use crate::source::{AuthMethod, ExecSettings, FileSourceSettings, HttpLoginSettings, OAuth2Settings, RequestTemplate};

impl Checker<'_> {
    pub(super) fn source(&mut self, source: &Spanned<SourceConfig>, path: &str, timeout: Duration) -> Option<ResolvedSource> {
        let config = &source.value;
        self.foreign_source_keys(source, path);
        match config.kind {
            SourceType::Oauth2ClientCredentials | SourceType::Oauth2RefreshToken => self.oauth2(source, path, timeout),
            SourceType::HttpLogin => self.http_login(source, path, timeout),
            SourceType::Exec => {
                let Some(command) = &config.command else {
                    self.problem(format!("{path}.command"), line_of(source), "command is missing: list the program and its arguments");
                    return None;
                };
                if command.value.is_empty() || command.value[0].is_empty() {
                    self.problem(format!("{path}.command"), line_of(command), "command is empty");
                    return None;
                }
                let mut arguments = Vec::new();
                let mut secret_arguments = Vec::new();
                for (index, argument) in command.value.iter().enumerate() {
                    match expand_env(argument, self.env) {
                        Ok(expanded) => {
                            if expanded != *argument {
                                secret_arguments.push(Secret::new(expanded.clone()));
                            }
                            arguments.push(expanded);
                        }
                        Err(message) => self.problem(format!("{path}.command[{index}]"), line_of(command), message),
                    }
                }
                let mut env = Vec::new();
                for (key, value) in &config.env {
                    match expand_env(value, self.env) {
                        Ok(value) => env.push((key.clone(), Secret::new(value))),
                        Err(message) => self.problem(format!("{path}.env.{key}"), line_of(source), message),
                    }
                }
                Some(ResolvedSource::Exec(ExecSettings { command: arguments, env, secret_arguments, timeout }))
            }
            SourceType::File => {
                let Some(file) = &config.path else {
                    self.problem(format!("{path}.path"), line_of(source), "path is missing: name the token file");
                    return None;
                };
                let target = PathBuf::from(self.expand(file, &format!("{path}.path"))?);
                Some(ResolvedSource::File(FileSourceSettings { path: target, lifetime: config.lifetime.map(|value| value.0) }))
            }
        }
    }

    /// Reports keys set on a source type they do not belong to.
    fn foreign_source_keys(&mut self, source: &Spanned<SourceConfig>, path: &str) {
        let config = &source.value;
        let oauth2 = matches!(config.kind, SourceType::Oauth2ClientCredentials | SourceType::Oauth2RefreshToken);
        let kind = config.kind;
        let keys: [(&str, bool, bool); 20] = [
            ("token_url", config.token_url.is_some(), oauth2),
            ("client_id", config.client_id.is_some(), oauth2),
            ("client_secret", config.client_secret.is_some(), oauth2),
            ("client_secret_file", config.client_secret_file.is_some(), oauth2),
            ("auth_method", config.auth_method != AuthMethodConfig::default(), oauth2),
            ("scopes", !config.scopes.is_empty(), oauth2),
            ("extra_params", !config.extra_params.is_empty(), oauth2),
            ("ca_file", config.ca_file.is_some(), oauth2 || kind == SourceType::HttpLogin),
            ("refresh_token", config.refresh_token.is_some(), kind == SourceType::Oauth2RefreshToken),
            ("refresh_token_file", config.refresh_token_file.is_some(), kind == SourceType::Oauth2RefreshToken),
            ("login", config.login.is_some(), kind == SourceType::HttpLogin),
            ("refresh", config.refresh.is_some(), kind == SourceType::HttpLogin),
            ("token_pointer", config.token_pointer.is_some(), kind == SourceType::HttpLogin),
            ("expiry_pointer", config.expiry_pointer.is_some(), kind == SourceType::HttpLogin),
            ("refresh_token_pointer", config.refresh_token_pointer.is_some(), kind == SourceType::HttpLogin),
            ("command", config.command.is_some(), kind == SourceType::Exec),
            ("env", !config.env.is_empty(), kind == SourceType::Exec),
            ("path", config.path.is_some(), kind == SourceType::File),
            ("lifetime", config.lifetime.is_some(), kind == SourceType::File),
            ("type", true, true),
        ];
        for (key, present, allowed) in keys {
            if present && !allowed {
                self.problem(format!("{path}.{key}"), line_of(source), format!("{key} does not belong to a source of type {}", kind.as_str()));
            }
        }
    }

    fn oauth2(&mut self, source: &Spanned<SourceConfig>, path: &str, timeout: Duration) -> Option<ResolvedSource> {
        let config = &source.value;
        let line = line_of(source);
        let refresh_grant = config.kind == SourceType::Oauth2RefreshToken;

        let token_url = match &config.token_url {
            None => {
                self.problem(format!("{path}.token_url"), line, "token_url is missing");
                None
            }
            Some(url) => self.url(url, &format!("{path}.token_url")),
        };
        let client_id = match &config.client_id {
            None => {
                self.problem(format!("{path}.client_id"), line, "client_id is missing");
                None
            }
            Some(id) => self.expand(id, &format!("{path}.client_id")),
        };

        let client_secret = match (&config.client_secret, &config.client_secret_file) {
            (Some(_), Some(file)) => {
                self.problem(format!("{path}.client_secret_file"), line_of(file), "set client_secret or client_secret_file, not both");
                None
            }
            (Some(inline), None) => self.expand(inline, &format!("{path}.client_secret")).map(Secret::new),
            (None, Some(file)) => self.secret_file(file, &format!("{path}.client_secret_file")).map(|(secret, _)| secret),
            (None, None) if refresh_grant => None,
            (None, None) => {
                self.problem(
                    format!("{path}.client_secret"),
                    line,
                    "client_secret or client_secret_file is required for oauth2_client_credentials",
                );
                None
            }
        };

        let (refresh_token, refresh_token_modified_at) = if refresh_grant {
            self.initial_refresh_token(config, path, line)?
        } else {
            (None, None)
        };
        let ca_file = self.readable_file(config.ca_file.as_ref(), &format!("{path}.ca_file"));

        let mut scopes = Vec::new();
        for scope in &config.scopes {
            match expand_env(scope, self.env) {
                Ok(scope) => scopes.push(scope),
                Err(message) => self.problem(format!("{path}.scopes"), line, message),
            }
        }
        let mut extra_params = Vec::new();
        for (key, value) in &config.extra_params {
            match expand_env(value, self.env) {
                Ok(value) => extra_params.push((key.clone(), Secret::new(value))),
                Err(message) => self.problem(format!("{path}.extra_params.{key}"), line, message),
            }
        }

        // A refresh grant without a client secret is a public client, which
        // sends only its client_id.
        if !refresh_grant && client_secret.is_none() {
            return None;
        }
        let auth_method = match config.auth_method {
            AuthMethodConfig::ClientSecretBasic => AuthMethod::ClientSecretBasic,
            AuthMethodConfig::ClientSecretPost => AuthMethod::ClientSecretPost,
        };
        let settings = OAuth2Settings {
            token_url: token_url?,
            client_id: client_id?,
            client_secret,
            auth_method,
            scopes,
            extra_params,
            timeout,
            ca_file: ca_file?,
        };
        Some(ResolvedSource::OAuth2 { grant: config.kind, settings, refresh_token, refresh_token_modified_at })
    }

    /// Reads the initial refresh token of a refresh grant; `None` after a problem.
    #[allow(clippy::type_complexity)]
    fn initial_refresh_token(
        &mut self,
        config: &SourceConfig,
        path: &str,
        line: Option<u64>,
    ) -> Option<(Option<Secret>, Option<SystemTime>)> {
        match (&config.refresh_token, &config.refresh_token_file) {
            (Some(_), Some(file)) => {
                self.problem(format!("{path}.refresh_token_file"), line_of(file), "set refresh_token or refresh_token_file, not both");
                None
            }
            (Some(inline), None) => self.expand(inline, &format!("{path}.refresh_token")).map(|token| (Some(Secret::new(token)), None)),
            (None, Some(file)) => self
                .secret_file(file, &format!("{path}.refresh_token_file"))
                .map(|(secret, modified)| (Some(secret), modified)),
            (None, None) => {
                self.problem(
                    format!("{path}.refresh_token"),
                    line,
                    "refresh_token or refresh_token_file is required for oauth2_refresh_token",
                );
                None
            }
        }
    }

    /// Checks an optional file is readable. `Some(None)` when absent,
    /// `None` after a problem.
    pub(super) fn readable_file(&mut self, file: Option<&Spanned<String>>, path: &str) -> Option<Option<PathBuf>> {
        let Some(file) = file else { return Some(None) };
        let expanded = PathBuf::from(self.expand(file, path)?);
        match std::fs::read(&expanded) {
            Ok(_) => Some(Some(expanded)),
            Err(error) => {
                self.problem(path, line_of(file), format!("cannot read {}: {error}", expanded.display()));
                None
            }
        }
    }

    fn http_login(&mut self, source: &Spanned<SourceConfig>, path: &str, timeout: Duration) -> Option<ResolvedSource> {
        let config = &source.value;
        let Some(login) = &config.login else {
            self.problem(format!("{path}.login"), line_of(source), "login is missing: describe the login request (url, method, headers, body)");
            return None;
        };
        let login = self.request_template(login, &format!("{path}.login"));
        let refresh = match &config.refresh {
            Some(refresh) => Some(self.request_template(refresh, &format!("{path}.refresh"))?),
            None => None,
        };
        let token_pointer = match &config.token_pointer {
            Some(pointer) => self.pointer(pointer, &format!("{path}.token_pointer")),
            None => {
                self.problem(format!("{path}.token_pointer"), line_of(source), "token_pointer is missing, as in /access_token or /data/accessToken");
                None
            }
        };
        let expiry_pointer = match &config.expiry_pointer {
            Some(pointer) => Some(self.pointer(pointer, &format!("{path}.expiry_pointer"))?),
            None => None,
        };
        let refresh_token_pointer = match &config.refresh_token_pointer {
            Some(pointer) => Some(self.pointer(pointer, &format!("{path}.refresh_token_pointer"))?),
            None => None,
        };
        if refresh.is_some() && refresh_token_pointer.is_none() {
            self.problem(format!("{path}.refresh"), line_of(source), "a refresh request needs refresh_token_pointer to find the refresh token");
        }
        let ca_file = self.readable_file(config.ca_file.as_ref(), &format!("{path}.ca_file"))?;
        Some(ResolvedSource::HttpLogin(HttpLoginSettings {
            login: login?,
            refresh,
            token_pointer: token_pointer?,
            expiry_pointer,
            refresh_token_pointer,
            timeout,
            ca_file,
        }))
    }

    fn pointer(&mut self, pointer: &Spanned<String>, path: &str) -> Option<String> {
        if pointer.value.is_empty() || pointer.value.starts_with('/') {
            Some(pointer.value.clone())
        } else {
            self.problem(path, line_of(pointer), format!("invalid JSON pointer `{}`: it must start with `/`, as in /data/accessToken", pointer.value));
            None
        }
    }

    fn request_template(&mut self, request: &Spanned<RequestConfig>, path: &str) -> Option<RequestTemplate> {
        let config = &request.value;
        let method = match &config.method {
            None => reqwest::Method::POST,
            Some(method) => match reqwest::Method::from_bytes(method.value.to_ascii_uppercase().as_bytes()) {
                Ok(parsed) => parsed,
                Err(_) => {
                    self.problem(format!("{path}.method"), line_of(method), format!("invalid HTTP method `{}`", method.value));
                    return None;
                }
            },
        };
        let url = self.url(&config.url, &format!("{path}.url"));
        let mut headers = Vec::new();
        for (name, value) in &config.headers {
            match expand_env(value, self.env) {
                Ok(value) => headers.push((name.clone(), Secret::new(value))),
                Err(message) => self.problem(format!("{path}.headers.{name}"), line_of(request), message),
            }
        }
        let body = match &config.body {
            None => None,
            Some(body) => match expand_json(body, self.env) {
                Ok(value) => Some(Secret::new(value.to_string())),
                Err(message) => {
                    self.problem(format!("{path}.body"), line_of(request), message);
                    return None;
                }
            },
        };
        Some(RequestTemplate { method, url: url?, headers, body })
    }
}

/// Expands `${...}` in every string of a JSON value.
fn expand_json(value: &serde_json::Value, env: &dyn Fn(&str) -> Option<String>) -> Result<serde_json::Value, String> {
    use serde_json::Value;
    Ok(match value {
        Value::String(text) => Value::String(expand_env(text, env)?),
        Value::Array(items) => Value::Array(items.iter().map(|item| expand_json(item, env)).collect::<Result<_, _>>()?),
        Value::Object(fields) => Value::Object(
            fields
                .iter()
                .map(|(key, item)| Ok((key.clone(), expand_json(item, env)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}
