//! The `exec` source: runs a credential command and reads a token from its
//! standard output. Accepted shapes: a Kubernetes `ExecCredential`
//! (`status.token`, `status.expirationTimestamp`), an AWS
//! `credential_process` document (`AccessKeyId`, `SecretAccessKey`,
//! `SessionToken`, `Expiration`), an OAuth2 token response, and a bare token
//! on one line (its expiry from a JWT `exp` claim or `fallback_lifetime`).

use std::process::Stdio;
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use serde_json::{Map, Value};
use tokio::io::AsyncReadExt;

use super::response::{MAX_BODY_BYTES, sanitize_body_redacting};
use super::{BoxFuture, FailureReason, FetchRequest, Source, SourceError};
use crate::secret::Secret;
use crate::token::{Token, resolve_expiry};

/// Settings of an `exec` source.
#[derive(Clone, Debug, PartialEq)]
pub struct ExecSettings {
    /// The program and its arguments; no shell is involved.
    pub command: Vec<String>,
    /// Extra environment variables; values may be secrets.
    pub env: Vec<(String, Secret)>,
    /// Arguments that `${VAR}` expansion filled in. They may be secrets, so
    /// they are redacted from the command's stderr like `env` values.
    pub secret_arguments: Vec<Secret>,
    pub timeout: Duration,
}

/// A token source that runs a command.
#[derive(Debug)]
pub struct ExecSource {
    settings: ExecSettings,
}

impl ExecSource {
    pub fn new(settings: ExecSettings) -> Result<Self, String> {
        if settings.command.is_empty() {
            return Err("the command is empty".to_owned());
        }
        Ok(ExecSource { settings })
    }

    async fn run(&self, request: FetchRequest<'_>) -> Result<Token, SourceError> {
        let name = request.token_name;
        let program = &self.settings.command[0];
        let mut command = tokio::process::Command::new(program);
        command
            .args(&self.settings.command[1..])
            .env_clear()
            .envs(inherited_environment())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (key, value) in &self.settings.env {
            command.env(key, value.expose());
        }
        let mut child = command
            .spawn()
            .map_err(|error| SourceError::new(FailureReason::Connect, format!("cannot run {program} for token `{name}`: {error}")))?;

        let mut stdout = child.stdout.take().expect("stdout is piped");
        let mut stderr = child.stderr.take().expect("stderr is piped");
        let collect = async {
            let mut output = Vec::new();
            let mut errors = Vec::new();
            let limit = MAX_BODY_BYTES as u64 + 1;
            let mut stdout_limited = (&mut stdout).take(limit);
            let mut stderr_limited = (&mut stderr).take(limit);
            let (read_out, read_err) = tokio::join!(
                stdout_limited.read_to_end(&mut output),
                stderr_limited.read_to_end(&mut errors)
            );
            read_out.and(read_err)?;
            let status = child.wait().await?;
            Ok::<_, std::io::Error>((status, output, errors))
        };
        let (status, output, errors) = match tokio::time::timeout(self.settings.timeout, collect).await {
            Err(_) => {
                return Err(SourceError::new(
                    FailureReason::Timeout,
                    format!("{program} for token `{name}` did not finish within {:?}; it was killed", self.settings.timeout),
                ));
            }
            Ok(Err(error)) => {
                return Err(SourceError::new(FailureReason::Connect, format!("reading the output of {program} for token `{name}` failed: {error}")));
            }
            Ok(Ok(result)) => result,
        };

        let env_values = self.settings.env.iter().map(|(_, value)| value.expose());
        let known: Vec<&str> = env_values.chain(self.settings.secret_arguments.iter().map(Secret::expose)).collect();
        if !errors.is_empty() {
            tracing::info!(token = name, stderr = %sanitize_body_redacting(&errors, &known), "credential command wrote to stderr");
        }
        if !status.success() {
            let code = status.code().map_or("a signal".to_owned(), |code| format!("exit status {code}"));
            return Err(SourceError::new(
                FailureReason::ServerError,
                format!("{program} for token `{name}` failed with {code} (stderr: {})", sanitize_body_redacting(&errors, &known)),
            ));
        }
        if output.len() > MAX_BODY_BYTES {
            return Err(SourceError::new(FailureReason::InvalidResponse, format!("{program} for token `{name}` wrote more than {MAX_BODY_BYTES} bytes")));
        }
        parse_output(name, program, &output, request, &known)
    }
}

impl Source for ExecSource {
    fn kind(&self) -> &'static str {
        "exec"
    }

    fn fetch<'a>(&'a self, request: FetchRequest<'a>) -> BoxFuture<'a, Result<Token, SourceError>> {
        Box::pin(self.run(request))
    }
}

/// Environment variables a credential command inherits from tokensync. The
/// rest (which may hold tokensync's own secrets) is withheld; the source's
/// `env` adds what a command needs.
pub const INHERITED_VARIABLES: [&str; 14] = [
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ", "TMPDIR", "SSL_CERT_FILE", "SSL_CERT_DIR", "HTTP_PROXY",
    "HTTPS_PROXY", "NO_PROXY", "CREDENTIALS_DIRECTORY",
];

/// Returns the inherited variables that are set.
pub fn inherited_environment() -> Vec<(String, std::ffi::OsString)> {
    INHERITED_VARIABLES
        .iter()
        .filter_map(|name| std::env::var_os(name).map(|value| ((*name).to_owned(), value)))
        .collect()
}

/// Parses a command's output in one of the accepted shapes.
fn parse_output(name: &str, program: &str, output: &[u8], request: FetchRequest<'_>, known: &[&str]) -> Result<Token, SourceError> {
    let invalid = |what: &str| {
        let excerpt = sanitize_body_redacting(output, known);
        SourceError::new(FailureReason::InvalidResponse, format!("{program} for token `{name}` wrote {what} (output: {excerpt})"))
    };
    let Ok(Value::Object(document)) = serde_json::from_slice::<Value>(output) else {
        return plain_token(output, request).ok_or_else(|| invalid("neither a JSON object nor a single token line"));
    };

    let (access_token, token_type, expiry) = if let Some(status) = document.get("status").and_then(Value::as_object) {
        let token = status.get("token").and_then(Value::as_str).ok_or_else(|| invalid("an ExecCredential without status.token"))?;
        (token.to_owned(), "Bearer".to_owned(), status.get("expirationTimestamp"))
    } else if document.contains_key("AccessKeyId") {
        // The whole credential is the secret a consumer needs.
        let mut credential = Map::new();
        for key in ["Version", "AccessKeyId", "SecretAccessKey", "SessionToken", "Expiration"] {
            if let Some(value) = document.get(key) {
                credential.insert(key.to_owned(), value.clone());
            }
        }
        (Value::Object(credential).to_string(), "aws_credentials".to_owned(), document.get("Expiration"))
    } else if let Some(token) = document.get("access_token").and_then(Value::as_str) {
        let expiry = resolve_expiry(&document, token, request.requested_at, request.fallback_lifetime);
        let token_type = document.get("token_type").and_then(Value::as_str).unwrap_or("Bearer").to_owned();
        return Ok(Token::from_expiry(token, token_type, request.requested_at, expiry));
    } else {
        return Err(invalid("neither an ExecCredential, an AWS credential nor an OAuth2 token response"));
    };
    if access_token.is_empty() {
        return Err(invalid("an empty token"));
    }

    let mut fields = Map::new();
    if let Some(at) = expiry.and_then(Value::as_str).and_then(parse_lenient_time) {
        fields.insert("expires_at".to_owned(), Value::String(at.to_rfc3339()));
    }
    let resolved = resolve_expiry(&fields, &access_token, request.requested_at, request.fallback_lifetime);
    Ok(Token::from_expiry(access_token, token_type, request.requested_at, resolved))
}

/// Accepts output that is one line of token characters, as printed by tools
/// like `gcloud auth print-access-token`. The expiry comes from a JWT `exp`
/// claim, else the fallback lifetime.
fn plain_token(output: &[u8], request: FetchRequest<'_>) -> Option<Token> {
    let text = std::str::from_utf8(output).ok()?.trim();
    let token_like = !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_alphanumeric() || b"-._~+/=".contains(&byte));
    if !token_like {
        return None;
    }
    let expiry = resolve_expiry(&Map::new(), text, request.requested_at, request.fallback_lifetime);
    Some(Token::from_expiry(text, "Bearer", request.requested_at, expiry))
}

/// Parses RFC 3339, and the variants credential tools write: a trailing
/// ` UTC` or `UTC` instead of `Z`, and a space instead of `T`.
pub fn parse_lenient_time(text: &str) -> Option<DateTime<Utc>> {
    let text = text.trim();
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Some(at.with_timezone(&Utc));
    }
    let naive = text.strip_suffix("UTC").map(str::trim_end).unwrap_or(text);
    for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(at) = NaiveDateTime::parse_from_str(naive, format) {
            return Some(at.and_utc());
        }
    }
    DateTime::parse_from_rfc3339(&text.replacen(' ', "T", 1)).ok().map(|at| at.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn lenient_time_variants() {
        let expected = at("2026-01-01T11:00:00Z");
        for text in [
            "2026-01-01T11:00:00Z",
            "2026-01-01T12:00:00+01:00",
            "2026-01-01T11:00:00 UTC",
            "2026-01-01T11:00:00UTC",
            "2026-01-01 11:00:00 UTC",
            "2026-01-01 12:00:00+01:00",
            "2026-01-01T11:00:00.000Z",
        ] {
            assert_eq!(parse_lenient_time(text), Some(expected), "{text}");
        }
        assert_eq!(parse_lenient_time("tomorrow"), None);
    }
}
