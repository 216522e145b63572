//! The check that an error message quotes no secret from a response body:
//! no part of a long token-like run may appear in it. Shared by
//! `tests/policy_props.rs` and the `token_response` fuzz target, so both
//! follow the same model of `sanitize_body`.

use std::collections::HashSet;

use serde_json::{Map, Value};

/// Length of the token-like runs that `sanitize_body` redacts from excerpts.
pub const REDACT_RUN_CHARS: usize = 16;
/// Characters of a body excerpt before `sanitize_body` cuts it and adds `...`.
pub const EXCERPT_CHARS: usize = 200;

/// Returns true for the characters that `sanitize_body` treats as token-like.
fn is_token_like(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"-._~+/=".contains(&byte)
}

/// Returns every window of `REDACT_RUN_CHARS` characters inside a token-like
/// run of at least that length. A message that contains one of them quotes
/// part of a value that the sanitizer must redact.
pub fn long_run_windows(bytes: &[u8]) -> HashSet<Vec<u8>> {
    bytes
        .split(|byte| !is_token_like(*byte))
        .filter(|run| run.len() >= REDACT_RUN_CHARS)
        // The sanitizer keeps identifier words such as `error_description`.
        .filter(|run| !run.iter().all(|byte| byte.is_ascii_lowercase() || *byte == b'_'))
        .flat_map(|run| run.windows(REDACT_RUN_CHARS).map(<[u8]>::to_vec))
        .collect()
}

/// Returns the first window of a long body run that `message` quotes.
pub fn quoted_body_run(message: &str, body: &[u8]) -> Option<String> {
    let forbidden = long_run_windows(body);
    long_run_windows(message.as_bytes())
        .into_iter()
        .find(|window| forbidden.contains(window))
        .map(|window| String::from_utf8_lossy(&window).into_owned())
}

/// Removes what the message adds to the body on purpose: the `error` value,
/// which `interpret` quotes verbatim, and the `...` that marks a cut excerpt.
/// Without the latter, a short run at the cut plus `...` could match a long
/// run elsewhere in the body. `fields` is the parsed body and `token_name`
/// the name passed to `interpret`.
pub fn without_deliberate_quotes(message: &str, token_name: &str, fields: Option<&Map<String, Value>>) -> String {
    let code = fields
        .and_then(|fields| fields.get("error"))
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|code| !code.is_empty());
    let message = match code {
        Some(code) => message.replacen(&format!(" {code} for token `{token_name}`"), " <error> for token", 1),
        None => message.to_owned(),
    };
    without_cut_marker(&message)
}

/// Drops the `...` after an excerpt that `sanitize_body` cut at
/// `EXCERPT_CHARS` characters.
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
