//! Fuzzes `tokensync::source::response::interpret` with an arbitrary HTTP
//! status, `Retry-After` header and body.
//!
//! Input format, chosen so that seeds stay readable: the first line contains
//! the status and, after one space, the `Retry-After` value. Everything after
//! the first newline is the body. A status that is not a number in 0..=65535 is
//! taken as 200, an empty `Retry-After` as no header, and an input without a
//! newline as a body with status 200. Example: `429 30\n{"error":"slow_down"}`.
//!
//! Besides panics, the target checks two contracts. A token's expiry is always
//! after its request time and at most `MAX_LIFETIME` later. An error message
//! never quotes 16 consecutive characters of a run of 16 or more token-like
//! characters in the body, except in the `error` value, which `interpret`
//! quotes verbatim.

#![no_main]

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use chrono::DateTime;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tokensync::source::response::{RawResponse, interpret, parse_body};
use tokensync::token::MAX_LIFETIME;

const TOKEN_NAME: &str = "fuzz";
/// Length of the token-like runs that `sanitize_body` redacts.
const REDACT_RUN_CHARS: usize = 16;
/// Characters of a body excerpt before `sanitize_body` cuts it and adds `...`.
const EXCERPT_CHARS: usize = 200;
/// 2026-01-01T12:00:00Z, the request and current time of every call.
const EPOCH_SECONDS: u64 = 1_767_268_800;

fuzz_target!(|input: &[u8]| {
    let (status, retry_after, body) = split_input(input);
    let requested_at = DateTime::from_timestamp(EPOCH_SECONDS as i64, 0).unwrap();
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(EPOCH_SECONDS);
    let response = RawResponse { status, retry_after: retry_after.as_deref(), body };

    match interpret(TOKEN_NAME, response, requested_at, Duration::from_secs(3600), now) {
        Ok(parsed) => {
            let token = parsed.token;
            assert!(!token.access_token.is_empty(), "an empty access token was accepted");
            assert!(token.expires_at > requested_at, "expiry {} is not after the request", token.expires_at);
            assert!(token.lifetime <= MAX_LIFETIME, "lifetime {:?} exceeds the ceiling", token.lifetime);
        }
        Err(error) => {
            assert_eq!(error.status, Some(status));
            let message = without_deliberate_quotes(&error.message, body);
            if let Some(window) = quoted_body_run(&message, body) {
                panic!("the message quotes `{window}` from the body: {}", error.message);
            }
        }
    }
});

/// Splits an input into status, `Retry-After` value and body.
fn split_input(input: &[u8]) -> (u16, Option<String>, &[u8]) {
    let Some(newline) = input.iter().position(|byte| *byte == b'\n') else {
        return (200, None, input);
    };
    let header = String::from_utf8_lossy(&input[..newline]);
    let (status, retry_after) = header.split_once(' ').unwrap_or((&header, ""));
    let status = status.trim().parse().unwrap_or(200);
    let retry_after = (!retry_after.is_empty()).then(|| retry_after.to_owned());
    (status, retry_after, &input[newline + 1..])
}

/// Removes what the message adds to the body on purpose: the `error` value,
/// which `interpret` quotes verbatim, and the `...` that marks a cut excerpt.
/// Without the latter, a short run at the cut plus `...` could match a long
/// run elsewhere in the body.
fn without_deliberate_quotes(message: &str, body: &[u8]) -> String {
    let fields = parse_body(body);
    let code = fields
        .as_ref()
        .and_then(|fields| fields.get("error"))
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|code| !code.is_empty());
    let message = match code {
        Some(code) => message.replacen(&format!(" {code} for token `{TOKEN_NAME}`"), " <error> for token", 1),
        None => message.to_owned(),
    };
    without_cut_marker(&message)
}

/// Drops the `...` after an excerpt that `sanitize_body` cut at 200 characters.
fn without_cut_marker(message: &str) -> String {
    let Some((head, excerpt)) = message.split_once("(body: ") else {
        return message.to_owned();
    };
    let excerpt = excerpt.strip_suffix(')').unwrap_or(excerpt);
    match excerpt.strip_suffix("...") {
        Some(cut) if excerpt.chars().count() == EXCERPT_CHARS + 3 => format!("{head}(body: {cut})"),
        _ => message.to_owned(),
    }
}

fn is_token_like(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"-._~+/=".contains(&byte)
}

/// Returns every 16-character window of every token-like run of 16 or more characters.
fn long_run_windows(bytes: &[u8]) -> HashSet<&[u8]> {
    bytes
        .split(|byte| !is_token_like(*byte))
        .filter(|run| run.len() >= REDACT_RUN_CHARS)
        .flat_map(|run| run.windows(REDACT_RUN_CHARS))
        .collect()
}

/// Returns a window of a long body run that `message` quotes, if any.
fn quoted_body_run(message: &str, body: &[u8]) -> Option<String> {
    let forbidden = long_run_windows(body);
    long_run_windows(message.as_bytes())
        .into_iter()
        .find(|window| forbidden.contains(window))
        .map(|window| String::from_utf8_lossy(window).into_owned())
}
