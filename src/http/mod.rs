//! HTTP serving. This module is the metrics listener: `/metrics`, the
//! status page `/` and its data `/api/v1/status`, `/-/healthy`, `/-/ready`
//! and `POST /-/reload`; [`api`]
//! is the token API and [`proxy`] the injecting reverse proxy. They read the
//! engine and the metrics; the engine imports nothing of them.

pub mod api;
pub mod proxy;
pub mod server;
pub mod status;
pub mod web_config;

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use tokio::sync::{mpsc, oneshot};

use crate::engine::Engine;
use crate::metrics::{Metrics, OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE};

/// A reload request from `POST /-/reload`, replied to with the outcome.
pub type ReloadRequest = oneshot::Sender<Result<String, String>>;

/// State shared by the handlers.
#[derive(Clone)]
pub struct AppState {
    pub engine: Engine,
    pub metrics: Arc<Metrics>,
    /// Channel to the daemon for reload requests; `None` when reloading is not supported.
    pub reload: Option<mpsc::Sender<ReloadRequest>>,
}

/// Builds the router of the metrics listener. With a web configuration
/// that names users, every route needs HTTP basic authentication.
pub fn router(state: AppState, web: Option<Arc<web_config::WebConfig>>) -> Router {
    let router = Router::new()
        .route("/", get(status_page))
        .route("/api/v1/status", get(status_json))
        .route("/metrics", get(metrics))
        .route("/-/healthy", get(healthy))
        .route("/-/ready", get(ready))
        .route("/-/reload", post(reload))
        .with_state(state)
        .layer(axum::middleware::from_fn(server::request_deadline));
    match web {
        Some(web) => router.layer(axum::middleware::from_fn_with_state(web, basic_auth)),
        None => router,
    }
}

async fn basic_auth(State(web): State<Arc<web_config::WebConfig>>, request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    if !web.requires_auth() {
        return next.run(request).await;
    }
    let header = request.headers().get(header::AUTHORIZATION).and_then(|value| value.to_str().ok());
    if web.authorize(header).await {
        return next.run(request).await;
    }
    (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Basic realm=\"tokensync\"")], "unauthorized\n").into_response()
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

async fn reload(State(state): State<AppState>, headers: HeaderMap) -> Response {
    // Browsers send `Origin` with every cross-site POST; tools such as curl
    // and promtool do not. A web page must not trigger reloads.
    if headers.contains_key(header::ORIGIN) {
        return (StatusCode::FORBIDDEN, "reload requests from web pages are not accepted\n").into_response();
    }
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
    Html(status::render_page(&state.engine.status(), state.engine.coordination_up(), now))
}

async fn status_json(State(state): State<AppState>) -> Response {
    let now = state.engine.clock().now();
    let body = status::status_json(&state.engine.status(), state.engine.coordination_up(), now).to_string();
    ([(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "no-store")], body).into_response()
}
