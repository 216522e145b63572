//! The status page and its JSON data. Both show timing facts, sink states
//! and sanitized error messages, never a token.
//!
//! The page is rendered complete on the server, so it works without
//! JavaScript; its script then polls `/api/v1/status` every two seconds and
//! counts the expiry down every second.

use std::fmt::Write as _;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};

use crate::engine::{TokenState, TokenStatus};

const SCRIPT: &str = include_str!("status.js");

/// Builds the JSON document of `/api/v1/status`.
pub fn status_json(statuses: &[TokenStatus], coordination_up: Option<bool>, now: DateTime<Utc>) -> Value {
    let time = |at: Option<DateTime<Utc>>| at.map(|at| at.to_rfc3339_opts(SecondsFormat::Millis, true));
    let tokens: Vec<Value> = statuses
        .iter()
        .map(|status| {
            let sinks: Vec<Value> = status
                .sinks
                .iter()
                .map(|sink| {
                    json!({
                        "id": sink.id,
                        "last_success": time(sink.last_success_at),
                        "consecutive_failures": sink.consecutive_failures,
                        "last_failure_reason": sink.last_failure.map(|reason| reason.as_str()),
                        "last_error": sink.last_error,
                    })
                })
                .collect();
            json!({
                "name": status.name,
                "source": status.source_kind.unwrap_or("application"),
                "state": status.state.as_str(),
                "expires_at": time(status.expires_at),
                "expires_in_seconds": status.expires_at.map(|at| (at - now).num_milliseconds() as f64 / 1000.0),
                "lifetime_seconds": status.lifetime.map(|lifetime| lifetime.as_secs_f64()),
                "expiry_source": status.expiry_source.map(|source| source.as_str()),
                "last_refresh": time(status.last_success_at),
                "last_attempt": time(status.last_attempt_at),
                "next_refresh": time(status.next_refresh_at.filter(|_| status.source_kind.is_some())),
                "consecutive_failures": status.consecutive_failures,
                "last_failure_reason": status.last_failure.map(|reason| reason.as_str()),
                "last_error": status.last_error,
                "reauth_required": status.reauth_required,
                "sinks": sinks,
                "coordination": status.coordination.as_ref().map(|coordination| json!({
                    "shared_version": coordination.shared_version,
                    "adopted": coordination.adopted,
                    "held": coordination.held,
                })),
            })
        })
        .collect();
    json!({
        "now": now.to_rfc3339_opts(SecondsFormat::Millis, true),
        "coordination": coordination_up.map(|up| json!({"up": up})),
        "tokens": tokens,
    })
}

/// Renders the status page.
pub fn render_page(statuses: &[TokenStatus], coordination_up: Option<bool>, now: DateTime<Utc>) -> String {
    let mut html = String::from(concat!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
        "<meta name=\"viewport\" content=\"width=device-width\"><link rel=\"icon\" href=\"data:,\"><title>tokensync</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}",
        "td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}",
        ".valid{color:#070}.expired,.missing,.reauth,.failing{color:#b00}</style></head><body>",
        "<h1>tokensync</h1><p><a href=\"/metrics\">metrics</a> · <a href=\"/api/v1/status\">status JSON</a>",
        " · <a href=\"/-/ready\">ready</a></p>",
        "<table><thead><tr><th>token</th><th>source</th><th>state</th><th>expires in</th>",
        "<th>last refresh</th><th>next refresh</th><th>consecutive failures</th><th>last error</th>",
        "<th>sinks</th></tr></thead><tbody id=\"tokens\">\n"
    ));
    for status in statuses {
        render_row(&mut html, status, now);
    }
    if statuses.is_empty() {
        html.push_str("<tr><td colspan=\"9\">no tokens configured</td></tr>\n");
    }
    let valid = statuses.iter().filter(|status| status.state == TokenState::Valid).count();
    let _ = write!(
        html,
        "</tbody></table><p id=\"summary\">{valid} of {} tokens valid at {}.{}</p><script>{SCRIPT}</script></body></html>\n",
        statuses.len(),
        now.to_rfc3339_opts(SecondsFormat::Secs, true),
        coordination_summary(coordination_up)
    );
    html
}

/// Returns the summary's sentence on coordination. The page's script
/// writes the same one.
fn coordination_summary(coordination_up: Option<bool>) -> &'static str {
    match coordination_up {
        None => "",
        Some(true) => " Coordination through Redis: up.",
        Some(false) => " Coordination through Redis: down; tokens with rotating refresh tokens are held.",
    }
}

fn render_row(html: &mut String, status: &TokenStatus, now: DateTime<Utc>) {
    let state = status.state.as_str();
    let reauth = if status.reauth_required { " <span class=\"reauth\">(re-authentication required)</span>" } else { "" };
    let expires = status.expires_at.map(|at| at.to_rfc3339_opts(SecondsFormat::Millis, true)).unwrap_or_default();
    let last = status.last_success_at.map(|at| at.to_rfc3339_opts(SecondsFormat::Millis, true)).unwrap_or_default();
    let _ = write!(
        html,
        "<tr data-token=\"{name}\" data-expires-at=\"{expires}\" data-last-refresh=\"{last}\"><td>{name}</td><td>{source}</td>\
         <td class=\"{state}\">{state}{reauth}</td><td class=\"expires-in\">{expires_in}</td><td>{last_refresh}</td><td>{next}</td>\
         <td>{failures}</td><td>{error}</td><td>",
        name = escape(&status.name),
        source = status.source_kind.unwrap_or("application"),
        expires_in = status.expires_at.map_or("-".to_owned(), |at| relative(at, now)),
        last_refresh = status.last_success_at.map_or("never".to_owned(), |at| relative(at, now)),
        next = status.next_refresh_at.filter(|_| status.source_kind.is_some()).map_or("-".to_owned(), |at| relative(at, now)),
        failures = status.consecutive_failures,
        error = status.last_error.as_deref().map_or("-".to_owned(), escape),
    );
    if status.sinks.is_empty() {
        html.push_str("none (memory only)");
    }
    for sink in &status.sinks {
        let last = sink.last_success_at.map_or("never".to_owned(), |at| relative(at, now));
        let failure = sink.last_failure.map_or(String::new(), |reason| format!(", <span class=\"failing\">failing: {reason}</span>"));
        let _ = write!(html, "<div>{}: synced {last}{failure}</div>", escape(&sink.id));
    }
    html.push_str("</td></tr>\n");
}

/// Formats `at` relative to `now`, as "in 4m 10s" or "12s ago".
fn relative(at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let seconds = (at - now).num_seconds();
    let span = humantime::format_duration(std::time::Duration::from_secs(seconds.unsigned_abs())).to_string();
    if seconds >= 0 { format!("in {span}") } else { format!("{span} ago") }
}

fn escape(text: &str) -> String {
    let mut output = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '<' => output.push_str("&lt;"),
            '>' => output.push_str("&gt;"),
            '&' => output.push_str("&amp;"),
            '"' => output.push_str("&quot;"),
            '\'' => output.push_str("&#39;"),
            _ => output.push(character),
        }
    }
    output
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_in_names() {
        assert_eq!(escape("<b>\"x\"&'"), "&lt;b&gt;&quot;x&quot;&amp;&#39;");
    }
}
