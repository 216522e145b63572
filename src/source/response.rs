//! Parsing and classifying token endpoint responses (RFC 6749 section 5).
//!
//! Pure functions: the body is parsed by its content, whatever the
//! `Content-Type` claims: JSON first, then form encoding. A response is a
//! success when it has a non-empty `access_token` and no non-empty `error`,
//! whatever its status.

use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::{FailureReason, SourceError};
use crate::secret::Secret;
use crate::token::{ExpiryWarning, Token, resolve_expiry};

/// Largest response body read from a token endpoint.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Most characters of a response body quoted in a log line or error.
const BODY_EXCERPT_CHARS: usize = 200;
/// Runs of token-like characters at least this long are redacted from excerpts.
const REDACT_RUN_CHARS: usize = 16;
/// Longest `Retry-After` honoured; longer requests are cut to this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// OAuth2 error codes that mean the grant or the client was refused.
const REJECTION_CODES: [&str; 7] = [
    "invalid_grant",
    "invalid_client",
    "unauthorized_client",
    "unsupported_grant_type",
    "invalid_scope",
    "access_denied",
    "invalid_request",
];

/// A successful response, with warnings about its expiry fields.
#[derive(Debug)]
pub struct Parsed {
    pub token: Token,
    pub warnings: Vec<ExpiryWarning>,
}

/// Everything about one HTTP response that classification needs.
#[derive(Clone, Copy, Debug)]
pub struct RawResponse<'a> {
    pub status: u16,
    pub retry_after: Option<&'a str>,
    pub body: &'a [u8],
}

/// Turns a token endpoint response into a token or a classified error.
pub fn interpret(
    token_name: &str,
    response: RawResponse<'_>,
    requested_at: DateTime<Utc>,
    fallback_lifetime: Duration,
    now: SystemTime,
) -> Result<Parsed, SourceError> {
    interpret_redacting(token_name, response, requested_at, fallback_lifetime, now, &[])
}

/// Like [`interpret`], and removes every value in `known_secrets` (the
/// client secret and tokens the request carried) from error messages, since
/// an issuer may echo them in its error body.
pub fn interpret_redacting(
    token_name: &str,
    response: RawResponse<'_>,
    requested_at: DateTime<Utc>,
    fallback_lifetime: Duration,
    now: SystemTime,
    known_secrets: &[&str],
) -> Result<Parsed, SourceError> {
    let fields = parse_body(response.body);
    let status = response.status;
    let retry_after = response.retry_after.and_then(|value| parse_retry_after(value, now));

    let error_code = fields
        .as_ref()
        .and_then(|fields| fields.get("error"))
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|code| !code.is_empty());
    let access_token = fields
        .as_ref()
        .and_then(|fields| fields.get("access_token"))
        .and_then(Value::as_str)
        .filter(|token| !token.is_empty());

    if let (Some(fields), Some(access_token), None) = (&fields, access_token, error_code) {
        return Ok(build_token(fields, access_token, requested_at, fallback_lifetime));
    }

    let reason = classify(status, error_code, fields.is_some());
    let detail = match (error_code, &fields) {
        // A standard code is quoted as is; anything else may be an echoed
        // credential, so it goes through the same redaction as the body.
        (Some(code), _) if is_plain_error_code(code) && !known_secrets.contains(&code) => code.to_owned(),
        (Some(code), _) => sanitize_body_redacting(code.as_bytes(), known_secrets),
        (None, Some(_)) => "no access_token in the response".to_owned(),
        (None, None) => "unparsable body".to_owned(),
    };
    let hint = match reason {
        FailureReason::Rejected => "the issuer refused the grant or the client; check the credentials, a new grant may be needed",
        FailureReason::RateLimited => "the issuer asks to slow down",
        FailureReason::ServerError => "the issuer failed",
        FailureReason::InvalidResponse => "check token_url; the endpoint did not answer like an OAuth2 token endpoint",
        FailureReason::Timeout | FailureReason::Connect => "the issuer could not be reached",
    };
    let message = format!(
        "token endpoint returned {status} {detail} for token `{token_name}`: {hint} (body: {})",
        sanitize_body_redacting(response.body, known_secrets)
    );
    Err(SourceError { reason, message, status: Some(status), retry_after })
}

/// Returns true for an error code of the shape of RFC 6749's codes: up to
/// 40 lower-case letters and underscores, no digits.
fn is_plain_error_code(code: &str) -> bool {
    code.len() <= 40 && code.bytes().all(|byte| byte.is_ascii_lowercase() || byte == b'_')
}

/// Classifies a failed response by its OAuth2 error code, else by its status.
fn classify(status: u16, error_code: Option<&str>, parsed: bool) -> FailureReason {
    if status == 429 {
        return FailureReason::RateLimited;
    }
    match error_code {
        Some("slow_down") => return FailureReason::RateLimited,
        Some("temporarily_unavailable" | "server_error") => return FailureReason::ServerError,
        Some(code) if REJECTION_CODES.contains(&code) => return FailureReason::Rejected,
        _ => {}
    }
    match status {
        500..=599 => FailureReason::ServerError,
        401 | 403 => FailureReason::Rejected,
        400 if parsed => FailureReason::Rejected,
        408 => FailureReason::Timeout,
        _ => FailureReason::InvalidResponse,
    }
}

fn build_token(
    fields: &Map<String, Value>,
    access_token: &str,
    requested_at: DateTime<Utc>,
    fallback_lifetime: Duration,
) -> Parsed {
    let expiry = resolve_expiry(fields, access_token, requested_at, fallback_lifetime);
    let token_type = fields
        .get("token_type")
        .and_then(Value::as_str)
        .filter(|kind| !kind.trim().is_empty())
        .map(|kind| if kind.eq_ignore_ascii_case("bearer") { "Bearer".to_owned() } else { kind.to_owned() })
        .unwrap_or_else(|| "Bearer".to_owned());
    let refresh_token = fields
        .get("refresh_token")
        .and_then(Value::as_str)
        .filter(|token| !token.is_empty())
        .map(Secret::new);
    let scope = fields.get("scope").and_then(Value::as_str).map(str::to_owned);

    let token = Token {
        access_token: Secret::new(access_token),
        token_type,
        requested_at,
        expires_at: expiry.expires_at,
        lifetime: expiry.lifetime,
        expiry_source: expiry.source,
        refresh_token,
        scope,
    };
    Parsed { token, warnings: expiry.warnings }
}

/// Parses a body as a JSON object, else as form fields when they look like a
/// token response (they contain `access_token` or `error`).
pub fn parse_body(body: &[u8]) -> Option<Map<String, Value>> {
    if let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(body) {
        return Some(fields);
    }
    let text = std::str::from_utf8(body).ok()?.trim();
    if text.is_empty() || text.starts_with('<') || !text.contains('=') {
        return None;
    }
    let fields: Map<String, Value> = url::form_urlencoded::parse(text.as_bytes())
        .map(|(key, value)| (key.into_owned(), Value::String(value.into_owned())))
        .collect();
    (fields.contains_key("access_token") || fields.contains_key("error")).then_some(fields)
}

/// Parses `Retry-After` as delay seconds or an HTTP-date.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let delay = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => httpdate::parse_http_date(value).ok()?.duration_since(now).unwrap_or(Duration::ZERO),
    };
    Some(delay.min(MAX_RETRY_AFTER))
}

/// Returns at most 200 characters of a body for a log line, with control
/// characters replaced and every run of 16 or more token-like characters
/// (letters, digits and `-._~+/=`) replaced by `[redacted]`, except runs of
/// only lower-case letters and underscores, such as `error_description`.
pub fn sanitize_body(body: &[u8]) -> String {
    sanitize_body_redacting(body, &[])
}

/// Like [`sanitize_body`], and first replaces every value in `known_secrets`
/// (of 4 or more characters) with `[redacted]`, whatever its length, before
/// the excerpt is cut.
pub fn sanitize_body_redacting(body: &[u8], known_secrets: &[&str]) -> String {
    let mut text = String::from_utf8_lossy(body).into_owned();
    for secret in known_secrets.iter().filter(|secret| secret.len() >= 4) {
        if text.contains(secret) {
            text = text.replace(secret, "[redacted]");
        }
    }
    let mut output = String::new();
    let mut run = String::new();
    let flush = |run: &mut String, output: &mut String| {
        // Words like `error_description` are kept: tokens mix cases or digits.
        let identifier = run.chars().all(|character| character.is_ascii_lowercase() || character == '_');
        if run.chars().count() >= REDACT_RUN_CHARS && !identifier {
            output.push_str("[redacted]");
        } else {
            output.push_str(run);
        }
        run.clear();
    };
    for character in text.chars() {
        if character.is_ascii_alphanumeric() || "-._~+/=".contains(character) {
            run.push(character);
            continue;
        }
        flush(&mut run, &mut output);
        output.push(if character.is_control() { ' ' } else { character });
    }
    flush(&mut run, &mut output);

    let output = output.split_whitespace().collect::<Vec<_>>().join(" ");
    if output.chars().count() > BODY_EXCERPT_CHARS {
        let cut: String = output.chars().take(BODY_EXCERPT_CHARS).collect();
        format!("{cut}...")
    } else {
        output
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_268_800)
    }

    fn run(status: u16, body: &str) -> Result<Parsed, SourceError> {
        let requested_at = DateTime::from_timestamp(1_767_268_800, 0).unwrap();
        let response = RawResponse { status, retry_after: None, body: body.as_bytes() };
        interpret("billing", response, requested_at, Duration::from_secs(3600), now())
    }

    #[test]
    fn success_cases() {
        let cases = [
            (200, r#"{"access_token":"AT","token_type":"bearer","expires_in":"3599"}"#),
            (200, "access_token=AT&token_type=Bearer&expires_in=3599"),
            (201, r#"{"access_token":"AT","expires_in":3599}"#),
            (400, r#"{"access_token":"AT","expires_in":3599,"error":""}"#),
        ];
        for (status, body) in cases {
            let parsed = run(status, body).unwrap_or_else(|error| panic!("{body}: {error}"));
            assert_eq!(parsed.token.access_token.expose(), "AT", "{body}");
            assert_eq!(parsed.token.token_type, "Bearer", "{body}");
            assert_eq!(parsed.token.lifetime, Duration::from_secs(3599), "{body}");
        }
    }

    #[test]
    fn failure_classification_table() {
        let cases = [
            (400, r#"{"error":"invalid_grant"}"#, FailureReason::Rejected),
            (401, r#"{"error":"invalid_client"}"#, FailureReason::Rejected),
            (200, r#"{"error":"invalid_grant"}"#, FailureReason::Rejected),
            (200, r#"{"error":"invalid_grant","access_token":"AT"}"#, FailureReason::Rejected),
            (400, r#"{"error":"slow_down"}"#, FailureReason::RateLimited),
            (429, r#"{"error":"invalid_request"}"#, FailureReason::RateLimited),
            (429, "Too Many Requests", FailureReason::RateLimited),
            (503, r#"{"error":"temporarily_unavailable"}"#, FailureReason::ServerError),
            (502, "<html><body>Bad Gateway</body></html>", FailureReason::ServerError),
            (500, "", FailureReason::ServerError),
            (200, "<html>login page</html>", FailureReason::InvalidResponse),
            (200, r#"{"token_type":"bearer"}"#, FailureReason::InvalidResponse),
            (200, r#"{"access_token":""}"#, FailureReason::InvalidResponse),
            (200, r#"["access_token"]"#, FailureReason::InvalidResponse),
            (404, "not found", FailureReason::InvalidResponse),
            (401, "unauthorized", FailureReason::Rejected),
            (408, "", FailureReason::Timeout),
        ];
        for (status, body, expected) in cases {
            let error = run(status, body).expect_err(body);
            assert_eq!(error.reason, expected, "status {status} body {body}");
            assert_eq!(error.status, Some(status));
        }
    }

    #[test]
    fn error_message_names_token_and_code() {
        let error = run(400, r#"{"error":"invalid_grant"}"#).unwrap_err();
        assert!(error.message.contains("400 invalid_grant for token `billing`"), "{}", error.message);
    }

    #[test]
    fn retry_after_seconds_and_date() {
        assert_eq!(parse_retry_after("30", now()), Some(Duration::from_secs(30)));
        let date = httpdate::fmt_http_date(now() + Duration::from_secs(90));
        assert_eq!(parse_retry_after(&date, now()), Some(Duration::from_secs(90)));
        let past = httpdate::fmt_http_date(now() - Duration::from_secs(90));
        assert_eq!(parse_retry_after(&past, now()), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now()), None);
        assert_eq!(parse_retry_after("999999999", now()), Some(MAX_RETRY_AFTER));
    }

    #[test]
    fn sanitize_removes_token_values() {
        let body = r#"{"error":"invalid_grant","refresh_token":"rt-6f1c2a9b8d7e4f3a2b1c"}"#;
        let excerpt = sanitize_body(body.as_bytes());
        assert!(!excerpt.contains("6f1c2a9b8d7e4f3a2b1c"), "{excerpt}");
        assert!(excerpt.contains("invalid_grant"), "{excerpt}");
        assert!(excerpt.contains("[redacted]"), "{excerpt}");
    }

    #[test]
    fn sanitize_removes_known_short_secrets() {
        let body = br#"{"error":"invalid_grant","error_description":"refresh token rt-42 is not valid"}"#;
        let excerpt = sanitize_body_redacting(body, &["rt-42", "abc"]);
        assert!(!excerpt.contains("rt-42"), "{excerpt}");
        assert!(excerpt.contains("[redacted]"), "{excerpt}");
        assert!(excerpt.contains("invalid_grant"), "{excerpt}");
    }

    #[test]
    fn sanitize_keeps_identifier_words() {
        let excerpt = sanitize_body(br#"{"error":"invalid_client","error_description":"client authentication failed"}"#);
        assert!(excerpt.contains("error_description"), "{excerpt}");
        assert!(!excerpt.contains("[redacted]"), "{excerpt}");
    }

    #[test]
    fn sanitize_limits_length() {
        let body = "word ".repeat(200);
        assert!(sanitize_body(body.as_bytes()).chars().count() <= 203);
        assert_eq!(sanitize_body(b"line\nbreak\r\x07"), "line break");
    }
}
