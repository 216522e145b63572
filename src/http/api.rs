//! The token API: a separate listener, on a Unix socket or loopback TCP,
//! that hands out tokens to local consumers.
//!
//! - `GET /v1/tokens/{name}`: the current token as JSON, or the bare token
//!   with `Accept: text/plain`. An expired token is refreshed first.
//! - `POST /v1/tokens/{name}/refresh`: the caller reports that the token was
//!   rejected (optionally naming it in `{"rejected_token": "..."}`); one
//!   shared reactive refresh follows, unless the token was replaced already.
//!
//! Every request needs `Authorization: Bearer <api token>`, except on a Unix
//! socket configured to rely on its file permissions alone.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::SecondsFormat;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{ApiListen, ResolvedApi};
use crate::engine::{Engine, EngineError};
use crate::metrics::Metrics;
use crate::secret::Secret;
use crate::token::Token;

/// Largest request body accepted by the token API.
const MAX_BODY_BYTES: usize = 16 * 1024;
/// `Retry-After` sent with a 503 when the engine gives no better estimate.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(5);

/// The handlers' state, behind one pointer so that a request clones no secret.
#[derive(Clone)]
struct ApiState(Arc<ApiShared>);

struct ApiShared {
    engine: Engine,
    metrics: Arc<Metrics>,
    bearer_token: Option<Secret>,
    /// Reject `Host` names other than `localhost` (TCP on loopback).
    loopback_hosts_only: bool,
}

/// Builds the token API router.
pub fn router(engine: Engine, metrics: Arc<Metrics>, bearer_token: Option<Secret>) -> Router {
    build_router(engine, metrics, bearer_token, false)
}

fn build_router(engine: Engine, metrics: Arc<Metrics>, bearer_token: Option<Secret>, loopback_hosts_only: bool) -> Router {
    let state = ApiState(Arc::new(ApiShared { engine, metrics, bearer_token, loopback_hosts_only }));
    // One middleware does what every request needs, since each layer costs
    // a boxed service clone per request.
    Router::new()
        .route("/v1/tokens/{name}", get(get_token))
        .route(
            "/v1/tokens/{name}/refresh",
            post(refresh_token).layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES)),
        )
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), guard_and_measure))
        .with_state(state)
}

/// Starts the token API listener; it stops when `shutdown` turns true.
pub async fn serve(
    api: &ResolvedApi,
    engine: Engine,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<JoinHandle<()>, String> {
    // TCP listens on loopback only; see `server::loopback_host_only`.
    let router = build_router(engine, metrics, api.bearer_token.clone(), matches!(api.listen, ApiListen::Tcp(_)));
    let stopped = async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    };
    match &api.listen {
        ApiListen::Tcp(address) => {
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .map_err(|error| format!("cannot listen on {address} for the token API: {error}"))?;
            tracing::info!(address = %address, "token API listening");
            Ok(tokio::spawn(super::server::serve(listener, router, None, super::server::Limits::default(), stopped)))
        }
        ApiListen::Unix(path) => {
            remove_stale_socket(path)?;
            let listener = tokio::net::UnixListener::bind(path)
                .map_err(|error| format!("cannot listen on {} for the token API: {error}", path.display()))?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(api.socket_mode))
                .map_err(|error| format!("cannot set the mode of {}: {error}", path.display()))?;
            tracing::info!(socket = %path.display(), mode = format!("{:o}", api.socket_mode), "token API listening");
            let path = path.clone();
            Ok(tokio::spawn(async move {
                if let Err(error) = axum::serve(listener, router).with_graceful_shutdown(stopped).await {
                    tracing::error!(error = %error, "the token API listener failed");
                }
                let _ = std::fs::remove_file(&path);
            }))
        }
    }
}

/// Removes a socket left by a previous run; refuses to remove anything else.
fn remove_stale_socket(path: &std::path::Path) -> Result<(), String> {
    match std::fs::symlink_metadata(path) {
        Ok(metadata) if metadata.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(|error| format!("cannot remove the old socket {}: {error}", path.display()))
        }
        Ok(_) => Err(format!("{} exists and is not a socket; remove it or choose another api.listen path", path.display())),
        Err(_) => Ok(()),
    }
}

/// Checks the `Host` and the bearer token, runs the request within
/// [`super::server::REQUEST_DEADLINE`], and records it in the metrics.
async fn guard_and_measure(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let endpoint = endpoint_name(request.method(), request.uri().path());
    let rejection = if state.0.loopback_hosts_only { super::server::reject_foreign_host(&request) } else { None };
    let response = if let Some(rejection) = rejection {
        rejection
    } else if authorized(&state.0.bearer_token, request.headers()) {
        super::server::request_deadline(request, next).await
    } else {
        let mut response = error(StatusCode::UNAUTHORIZED, "missing or invalid bearer token");
        response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        response
    };
    state.0.metrics.record_api_request(endpoint, response.status().as_u16(), started.elapsed());
    response
}

/// Returns the fixed endpoint label of a request.
fn endpoint_name(method: &axum::http::Method, path: &str) -> &'static str {
    let is_token_path = path.starts_with("/v1/tokens/");
    match (method.as_str(), is_token_path, path.ends_with("/refresh")) {
        ("GET", true, false) => "get_token",
        ("POST", true, true) => "refresh_token",
        _ => "other",
    }
}

fn authorized(expected: &Option<Secret>, headers: &HeaderMap) -> bool {
    let Some(expected) = expected else { return true };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(|value| Secret::new(value.trim()));
    presented.is_some_and(|presented| presented == *expected)
}

async fn get_token(State(state): State<ApiState>, Path(name): Path<String>, headers: HeaderMap) -> Response {
    respond(state.0.engine.ensure_fresh(&name).await, &name, &headers)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RefreshRequest {
    /// The access token the consumer saw rejected.
    rejected_token: Option<String>,
}

async fn refresh_token(State(state): State<ApiState>, Path(name): Path<String>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let report: RefreshRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RefreshRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(report) => report,
            Err(_) => return error(StatusCode::BAD_REQUEST, "invalid body: send nothing or {\"rejected_token\": \"...\"}"),
        }
    };
    let rejected = report.rejected_token.map(Secret::new);
    respond(state.0.engine.report_rejected(&name, rejected.as_ref()).await, &name, &headers)
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "not found: use GET /v1/tokens/{name} or POST /v1/tokens/{name}/refresh")
}

/// The JSON body of a token, with its fields in alphabetical order.
#[derive(Serialize)]
struct TokenBody<'a> {
    access_token: &'a str,
    expires_at: String,
    expires_in: i64,
    name: &'a str,
    token_type: &'a str,
}

fn respond(outcome: Result<Arc<Token>, EngineError>, name: &str, headers: &HeaderMap) -> Response {
    let token = match outcome {
        Ok(token) => token,
        Err(EngineError::UnknownToken(_)) => return error(StatusCode::NOT_FOUND, &format!("unknown token `{name}`")),
        Err(failure) => {
            let retry_after = match &failure {
                EngineError::Refresh { retry_after: Some(delay), .. } => *delay,
                _ => DEFAULT_RETRY_AFTER,
            };
            tracing::warn!(token = name, error = %failure, "token API could not serve a valid token");
            let mut response = error(StatusCode::SERVICE_UNAVAILABLE, &format!("no valid token `{name}` can be had now; retry later"));
            let seconds = retry_after.as_secs().max(1).to_string();
            if let Ok(value) = HeaderValue::from_str(&seconds) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            return response;
        }
    };

    let plain = headers
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|accept| accept.contains("text/plain") && !accept.contains("application/json"));
    let mut response = if plain {
        ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], token.access_token.expose().to_owned()).into_response()
    } else {
        let body = TokenBody {
            name,
            access_token: token.access_token.expose(),
            token_type: &token.token_type,
            expires_at: token.expires_at.to_rfc3339_opts(SecondsFormat::Secs, true),
            expires_in: token.time_to_expiry(chrono::Utc::now()).num_seconds().max(0),
        };
        match serde_json::to_vec(&body) {
            Ok(bytes) => ([(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
            Err(_) => return error(StatusCode::INTERNAL_SERVER_ERROR, "encoding the token failed"),
        }
    };
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Builds a JSON error response; `message` never contains a secret.
fn error(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({"error": status.canonical_reason().unwrap_or("error"), "message": message});
    (status, [(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "no-store")], body.to_string()).into_response()
}
