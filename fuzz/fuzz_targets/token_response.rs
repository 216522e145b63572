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
//! quotes verbatim, and in identifier words such as `error_description`,
//! which the sanitizer keeps.

#![no_main]

use std::time::{Duration, SystemTime};

use chrono::DateTime;
use libfuzzer_sys::fuzz_target;
use tokensync::source::response::{RawResponse, interpret, parse_body};
use tokensync::token::MAX_LIFETIME;

#[path = "../../tests/support/body_quotes.rs"]
mod body_quotes;
use body_quotes::{quoted_body_run, without_deliberate_quotes};

const TOKEN_NAME: &str = "fuzz";
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
            let message = without_deliberate_quotes(&error.message, TOKEN_NAME, parse_body(body).as_ref());
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
