//! The `http_login` source: a generic JSON login endpoint. The token, its
//! expiry and an optional refresh token are read from the response with
//! JSON pointers (RFC 6901), so that APIs with their own login shape work
//! without code.

use std::time::{Duration, SystemTime};

use serde_json::{Map, Value};

use super::response::{parse_retry_after, sanitize_body_redacting};
use super::transport::{read_limited, transport_error};
use super::{BoxFuture, FailureReason, FetchRequest, Source, SourceError, build_http_client};
use crate::secret::Secret;
use crate::token::{Token, resolve_expiry};

/// Numbers below this many seconds (ten years) are lifetimes; larger ones are
/// epoch times.
const RELATIVE_LIMIT_SECONDS: f64 = 315_360_000.0;

/// One templated HTTP request. In `refresh` templates, the placeholders
/// `{{refresh_token}}` and `{{access_token}}` in header values and the body
/// are replaced by the current token's values.
#[derive(Clone, Debug, PartialEq)]
pub struct RequestTemplate {
    pub method: reqwest::Method,
    pub url: url::Url,
    /// Header values may carry credentials, so they are secrets.
    pub headers: Vec<(String, Secret)>,
    /// The request body (JSON text), sent with `Content-Type: application/json`.
    pub body: Option<Secret>,
}

/// Settings of an `http_login` source.
#[derive(Clone, Debug, PartialEq)]
pub struct HttpLoginSettings {
    pub login: RequestTemplate,
    /// Sent instead of `login` while a refresh token is held; a rejected
    /// refresh falls back to `login`.
    pub refresh: Option<RequestTemplate>,
    /// JSON pointer to the access token, such as `/data/accessToken`.
    pub token_pointer: String,
    /// JSON pointer to the expiry: relative seconds, epoch seconds or
    /// milliseconds, or RFC 3339. Without it, the JWT `exp` claim or the
    /// fallback lifetime is used.
    pub expiry_pointer: Option<String>,
    pub refresh_token_pointer: Option<String>,
    pub timeout: Duration,
    pub ca_file: Option<std::path::PathBuf>,
}

/// A token source that logs in with a templated HTTP request.
#[derive(Debug)]
pub struct HttpLogin {
    settings: HttpLoginSettings,
    client: reqwest::Client,
}

impl HttpLogin {
    pub fn new(settings: HttpLoginSettings) -> Result<Self, String> {
        let client = build_http_client(settings.timeout, settings.ca_file.as_deref())?;
        Ok(HttpLogin { settings, client })
    }

    async fn obtain(&self, request: FetchRequest<'_>) -> Result<Token, SourceError> {
        let current = request.current;
        if let (Some(template), Some(token)) = (&self.settings.refresh, current)
            && let Some(refresh_token) = &token.refresh_token
        {
            match self.send(request, template, Some((refresh_token, &token.access_token))).await {
                Err(error) if error.reason == FailureReason::Rejected => {
                    tracing::info!(token = request.token_name, "refresh request rejected; logging in again");
                }
                outcome => return outcome,
            }
        }
        self.send(request, &self.settings.login, None).await
    }

    async fn send(
        &self,
        request: FetchRequest<'_>,
        template: &RequestTemplate,
        current: Option<(&Secret, &Secret)>,
    ) -> Result<Token, SourceError> {
        let fill = |text: &str| match current {
            Some((refresh_token, access_token)) => text
                .replace("{{refresh_token}}", refresh_token.expose())
                .replace("{{access_token}}", access_token.expose()),
            None => text.to_owned(),
        };
        let headers: Vec<(&str, String)> = template.headers.iter().map(|(name, value)| (name.as_str(), fill(value.expose()))).collect();
        let request_body = template.body.as_ref().map(|body| fill(body.expose()));
        let mut builder = self.client.request(template.method.clone(), template.url.clone()).header("Accept", "application/json");
        for (name, value) in &headers {
            builder = builder.header(*name, value.as_str());
        }
        if let Some(request_body) = &request_body {
            builder = builder.header("Content-Type", "application/json").body(request_body.clone());
        }

        let name = request.token_name;
        let url = &template.url;
        let response = builder.send().await.map_err(|error| transport_error(name, url, &error))?;
        let (status, retry_after, body) = read_limited(response, name, url).await?;

        // Everything secret this request carried, so an echo in an error body is removed.
        let mut known: Vec<String> = headers.into_iter().map(|(_, value)| value).collect();
        if let Some(request_body) = &request_body
            && let Ok(document) = serde_json::from_str::<Value>(request_body)
        {
            collect_strings(&document, &mut known);
        }
        if let Some((refresh_token, access_token)) = current {
            known.push(refresh_token.expose().to_owned());
            known.push(access_token.expose().to_owned());
        }
        let known: Vec<&str> = known.iter().map(String::as_str).collect();

        if !(200..300).contains(&status) {
            return Err(status_error(name, url, status, retry_after.as_deref(), &body, &known));
        }
        let Ok(document) = serde_json::from_slice::<Value>(&body) else {
            return Err(invalid(name, url, status, "the body is not JSON", &body, &known));
        };
        let access_token = match document.pointer(&self.settings.token_pointer) {
            Some(Value::String(token)) if !token.is_empty() => token.clone(),
            _ => {
                let what = format!("no non-empty string at {}", self.settings.token_pointer);
                return Err(invalid(name, url, status, &what, &body, &known));
            }
        };

        let mut fields = Map::new();
        if let Some(pointer) = &self.settings.expiry_pointer {
            match document.pointer(pointer) {
                Some(value) => {
                    let key = if is_relative(value) { "expires_in" } else { "expires_at" };
                    fields.insert(key.to_owned(), value.clone());
                }
                None => tracing::warn!(token = name, pointer = %pointer, "login response has no expiry at the configured pointer"),
            }
        }
        let expiry = resolve_expiry(&fields, &access_token, request.requested_at, request.fallback_lifetime);
        for warning in &expiry.warnings {
            tracing::warn!(token = name, "login response from {url}: {warning}");
        }
        let refresh_token = self
            .settings
            .refresh_token_pointer
            .as_deref()
            .and_then(|pointer| document.pointer(pointer))
            .and_then(Value::as_str)
            .filter(|token| !token.is_empty())
            .map(Secret::new)
            .or_else(|| current.map(|(refresh_token, _)| refresh_token.clone()));

        let mut token = Token::from_expiry(access_token, "Bearer", request.requested_at, expiry);
        token.refresh_token = refresh_token;
        Ok(token)
    }
}

impl Source for HttpLogin {
    fn kind(&self) -> &'static str {
        "http_login"
    }

    fn fetch<'a>(&'a self, request: FetchRequest<'a>) -> BoxFuture<'a, Result<Token, SourceError>> {
        Box::pin(self.obtain(request))
    }
}

/// Returns true for a number (or numeric string) small enough to be a
/// lifetime in seconds rather than an epoch time.
fn is_relative(value: &Value) -> bool {
    let number = match value {
        Value::Number(number) => number.as_f64(),
        Value::String(text) => text.trim().parse::<f64>().ok(),
        _ => None,
    };
    number.is_some_and(|number| number < RELATIVE_LIMIT_SECONDS)
}

/// Collects every string of a JSON value (the request body's credentials).
fn collect_strings(value: &Value, into: &mut Vec<String>) {
    match value {
        Value::String(text) => into.push(text.clone()),
        Value::Array(items) => items.iter().for_each(|item| collect_strings(item, into)),
        Value::Object(fields) => fields.values().for_each(|item| collect_strings(item, into)),
        _ => {}
    }
}

fn status_error(name: &str, url: &url::Url, status: u16, retry_after: Option<&str>, body: &[u8], known: &[&str]) -> SourceError {
    let reason = match status {
        429 => FailureReason::RateLimited,
        408 => FailureReason::Timeout,
        500..=599 => FailureReason::ServerError,
        400..=499 => FailureReason::Rejected,
        _ => FailureReason::InvalidResponse,
    };
    SourceError {
        reason,
        message: format!("login endpoint {url} returned {status} for token `{name}` (body: {})", sanitize_body_redacting(body, known)),
        status: Some(status),
        retry_after: retry_after.and_then(|value| parse_retry_after(value, SystemTime::now())),
    }
}

fn invalid(name: &str, url: &url::Url, status: u16, what: &str, body: &[u8], known: &[&str]) -> SourceError {
    SourceError {
        reason: FailureReason::InvalidResponse,
        message: format!("login endpoint {url} returned {what} for token `{name}` (body: {})", sanitize_body_redacting(body, known)),
        status: Some(status),
        retry_after: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn relative_or_absolute() {
        assert!(is_relative(&json!(3600)));
        assert!(is_relative(&json!("3600")));
        assert!(!is_relative(&json!(1_767_272_400)));
        assert!(!is_relative(&json!(1_767_272_400_000_i64)));
        assert!(!is_relative(&json!("2026-01-01T12:00:00+01:00")));
    }
}
