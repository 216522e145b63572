//! HTTP serving. This module is the metrics listener: `/metrics`, the
//! status page `/`, `/-/healthy`, `/-/ready` and `POST /-/reload`; [`api`]
//! is the token API and [`proxy`] the injecting reverse proxy. They read the
//! engine and the metrics; the engine imports nothing of them.

pub mod api;
pub mod proxy;

use std::fmt::Write as _;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot};

use crate::engine::{Engine, TokenState, TokenStatus};
use crate::metrics::{Metrics, OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE};

/// A reload request from `POST /-/reload`, answered with the outcome.
pub type ReloadRequest = oneshot::Sender<Result<String, String>>;

/// State shared by the handlers.
#[derive(Clone)]
pub struct AppState {
    pub engine: Engine,
    pub metrics: Arc<Metrics>,
    /// Channel to the daemon for reload requests; `None` when reloading is not supported.
    pub reload: Option<mpsc::Sender<ReloadRequest>>,
}

/// Builds the router of the metrics listener.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(status_page))
        .route("/metrics", get(metrics))
        .route("/-/healthy", get(healthy))
        .route("/-/ready", get(ready))
        .route("/-/reload", post(reload))
        .with_state(state)
}

async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|value| value.to_str().ok()).unwrap_or("");
    let openmetrics = accept.contains("application/openmetrics-text");
    let (body, content_type) = if openmetrics {
        (state.metrics.encode_openmetrics(), OPENMETRICS_CONTENT_TYPE)
    } else {
        (state.metrics.encode_text(), TEXT_CONTENT_TYPE)
    };
    match body {
        Ok(body) => ([(header::CONTENT_TYPE, HeaderValue::from_static(content_type))], body).into_response(),
        Err(_) => {
            tracing::error!("encoding the metrics failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "encoding the metrics failed\n").into_response()
        }
    }
}

async fn healthy() -> &'static str {
    "tokensync is healthy\n"
}

/// Ready once every token has held a valid token at least once since start;
/// see [`Engine::is_ready`].
async fn ready(State(state): State<AppState>) -> Response {
    if state.engine.is_ready() {
        (StatusCode::OK, "tokensync is ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "tokensync is not ready: some tokens were never obtained\n").into_response()
    }
}

async fn reload(State(state): State<AppState>) -> Response {
    let Some(sender) = state.reload else {
        return (StatusCode::NOT_IMPLEMENTED, "reloading is not supported here\n").into_response();
    };
    let (reply, outcome) = oneshot::channel();
    if sender.send(reply).await.is_err() {
        return (StatusCode::SERVICE_UNAVAILABLE, "tokensync is shutting down\n").into_response();
    }
    match outcome.await {
        Ok(Ok(summary)) => (StatusCode::OK, format!("{summary}\n")).into_response(),
        Ok(Err(error)) => (StatusCode::INTERNAL_SERVER_ERROR, format!("reload failed; the previous configuration stays active: {error}\n")).into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "tokensync is shutting down\n").into_response(),
    }
}

async fn status_page(State(state): State<AppState>) -> Html<String> {
    let now = state.engine.clock().now();
    Html(render_status(&state.engine.status(), now))
}

/// Renders the status page. It shows timing facts and sanitized error
/// messages, never a token.
pub fn render_status(statuses: &[TokenStatus], now: DateTime<Utc>) -> String {
    let mut html = String::from(concat!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
        "<meta http-equiv=\"refresh\" content=\"5\"><title>tokensync</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}",
        "td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}",
        ".valid{color:#070}.expired,.missing,.reauth{color:#b00}</style></head><body>",
        "<h1>tokensync</h1><p><a href=\"/metrics\">metrics</a> · <a href=\"/-/ready\">ready</a></p>",
        "<table><thead><tr><th>token</th><th>source</th><th>state</th><th>expires in</th>",
        "<th>last refresh</th><th>next refresh</th><th>consecutive failures</th><th>last error</th>",
        "<th>sinks</th></tr></thead><tbody>\n"
    ));
    for status in statuses {
        let state = status.state.as_str();
        let reauth = if status.reauth_required { " <span class=\"reauth\">(re-authentication required)</span>" } else { "" };
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td class=\"{state}\">{state}{reauth}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>",
            escape(&status.name),
            status.source_kind.unwrap_or("application"),
            status.expires_at.map_or("-".to_owned(), |at| relative(at, now)),
            status.last_success_at.map_or("never".to_owned(), |at| relative(at, now)),
            status.next_refresh_at.filter(|_| status.source_kind.is_some()).map_or("-".to_owned(), |at| relative(at, now)),
            status.consecutive_failures,
            status.last_error.as_deref().map_or("-".to_owned(), escape),
        );
        if status.sinks.is_empty() {
            html.push_str("none (memory only)");
        }
        for sink in &status.sinks {
            let last = sink.last_success_at.map_or("never".to_owned(), |at| relative(at, now));
            let failure = sink.last_failure.map_or(String::new(), |reason| format!(", failing: {reason}"));
            let _ = write!(html, "{}: synced {last}{failure}<br>", escape(&sink.id));
        }
        html.push_str("</td></tr>\n");
    }
    if statuses.is_empty() {
        html.push_str("<tr><td colspan=\"9\">no tokens configured</td></tr>\n");
    }
    let valid = statuses.iter().filter(|status| status.state == TokenState::Valid).count();
    let _ = write!(
        html,
        "</tbody></table><p>{valid} of {} tokens valid at {}.</p></body></html>\n",
        statuses.len(),
        now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    html
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
