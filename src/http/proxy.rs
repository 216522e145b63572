//! The injecting reverse proxy: forwards every request to an upstream with
//! `Authorization: Bearer <token>`, replacing whatever the client sent.
//!
//! When the upstream returns 401, the token is reported rejected (one shared
//! reactive refresh) and the request is sent once more with the new token,
//! provided its body could be kept in memory (up to `replay_body_limit`). A
//! second 401 goes back to the client: the proxy never loops. Bodies are
//! streamed in both directions; they and the Authorization header are never
//! logged.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::ResolvedProxy;
use crate::engine::Engine;
use crate::metrics::Metrics;
use crate::secret::Secret;
use crate::source::build_http_client;

/// Hop-by-hop headers (RFC 9110 section 7.6.1), never forwarded.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

#[derive(Clone)]
struct ProxyState {
    settings: Arc<ResolvedProxy>,
    engine: Engine,
    metrics: Arc<Metrics>,
    client: reqwest::Client,
}

/// Builds the router of one proxy.
pub fn router(settings: ResolvedProxy, engine: Engine, metrics: Arc<Metrics>) -> Result<Router, String> {
    let client = build_http_client(settings.timeout, settings.ca_file.as_deref())?;
    metrics.register_proxy(&settings.name);
    let state = ProxyState { settings: Arc::new(settings), engine, metrics, client };
    Ok(Router::new().fallback(forward).with_state(state))
}

/// Starts one proxy listener; it stops when `shutdown` turns true.
pub async fn serve(
    settings: &ResolvedProxy,
    engine: Engine,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<JoinHandle<()>, String> {
    // Proxies listen on loopback only; see `loopback_host_only`.
    let router = router(settings.clone(), engine, metrics)?.layer(axum::middleware::from_fn(super::server::loopback_host_only));
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|error| format!("cannot listen on {} for proxy `{}`: {error}", settings.listen, settings.name))?;
    tracing::info!(proxy = %settings.name, address = %settings.listen, upstream = %settings.upstream, "proxy listening");
    let stopped = async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    };
    Ok(tokio::spawn(super::server::serve(listener, router, None, super::server::Limits::default(), stopped)))
}

async fn forward(State(state): State<ProxyState>, request: Request) -> Response {
    let response = forward_inner(&state, request).await;
    state.metrics.record_proxy_request(&state.settings.name, response.status().as_u16());
    response
}

async fn forward_inner(state: &ProxyState, request: Request) -> Response {
    let settings = &state.settings;
    let (parts, body) = request.into_parts();
    let url = upstream_url(&settings.upstream, parts.uri.path(), parts.uri.query());
    let headers = forwarded_headers(&parts.headers);

    // A body is kept for a replay when its declared size fits the limit.
    let declared = parts.headers.get(header::CONTENT_LENGTH).and_then(|value| value.to_str().ok()).and_then(|value| value.parse::<u64>().ok());
    let chunked = parts.headers.contains_key(header::TRANSFER_ENCODING);
    let replayable = match (declared, chunked) {
        (Some(length), _) => length <= settings.replay_body_limit,
        (None, false) => true,
        (None, true) => false,
    };
    let mut buffered = None;
    let mut streamed = None;
    if replayable {
        match axum::body::to_bytes(body, settings.replay_body_limit as usize).await {
            Ok(bytes) => buffered = Some(bytes),
            Err(_) => return plain_error(StatusCode::BAD_REQUEST, "reading the request body failed"),
        }
    } else {
        streamed = Some(body);
    }

    let mut token = match state.engine.ensure_fresh(&settings.token).await {
        Ok(token) => token,
        Err(error) => {
            tracing::warn!(proxy = %settings.name, token = %settings.token, error = %error, "no valid token to inject");
            return plain_error(StatusCode::SERVICE_UNAVAILABLE, "tokensync has no valid token for this upstream now");
        }
    };

    for attempt in 0..2 {
        let body = match (&buffered, streamed.take()) {
            (Some(bytes), _) => reqwest::Body::from(bytes.clone()),
            (None, Some(body)) => reqwest::Body::wrap_stream(body.into_data_stream()),
            (None, None) => reqwest::Body::from(Vec::new()),
        };
        let authorization = format!("{} {}", token.token_type, token.access_token.expose());
        let upstream = state
            .client
            .request(parts.method.clone(), url.clone())
            .headers(headers.clone())
            .header(header::AUTHORIZATION, authorization)
            .body(body)
            .send()
            .await;
        let response = match upstream {
            Ok(response) => response,
            Err(error) => {
                let status = if error.is_timeout() { StatusCode::GATEWAY_TIMEOUT } else { StatusCode::BAD_GATEWAY };
                tracing::warn!(proxy = %settings.name, upstream = %settings.upstream, error = %error, "upstream request failed");
                return plain_error(status, "the upstream request failed");
            }
        };

        if response.status() != reqwest::StatusCode::UNAUTHORIZED {
            return into_response(response);
        }
        state.metrics.record_proxy_rejection(&settings.name);
        let rejected = Secret::new(token.access_token.expose());
        if attempt == 1 || buffered.is_none() {
            // Refresh for the next request, but pass this 401 on.
            tracing::info!(proxy = %settings.name, token = %settings.token, retried = attempt == 1, "upstream rejected the token");
            let (engine, name) = (state.engine.clone(), settings.token.clone());
            tokio::spawn(async move {
                let _ = engine.report_rejected(&name, Some(&rejected)).await;
            });
            return into_response(response);
        }
        tracing::info!(proxy = %settings.name, token = %settings.token, "upstream rejected the token; refreshing and retrying once");
        token = match state.engine.report_rejected(&settings.token, Some(&rejected)).await {
            Ok(token) => token,
            Err(_) => return into_response(response),
        };
    }
    plain_error(StatusCode::BAD_GATEWAY, "the upstream rejected the token twice")
}

/// Joins the upstream base URL with the request path and query.
fn upstream_url(base: &url::Url, path: &str, query: Option<&str>) -> url::Url {
    let mut url = base.clone();
    let joined = format!("{}/{}", base.path().trim_end_matches('/'), path.trim_start_matches('/'));
    url.set_path(&joined);
    url.set_query(query);
    url
}

/// Copies request headers, minus hop-by-hop ones, `Host` and any
/// client-sent `Authorization`.
fn forwarded_headers(incoming: &HeaderMap) -> reqwest::header::HeaderMap {
    let mut outgoing = reqwest::header::HeaderMap::new();
    let listed = connection_listed(incoming);
    for (name, value) in incoming {
        let lower = name.as_str();
        if HOP_BY_HOP.contains(&lower) || listed.contains(&lower.to_owned()) || lower == "host" || lower == "authorization" || lower == "content-length" {
            continue;
        }
        outgoing.append(name.clone(), value.clone());
    }
    outgoing
}

/// Returns the header names listed in `Connection`, lower-cased.
fn connection_listed(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .collect()
}

fn into_response(upstream: reqwest::Response) -> Response {
    let status = upstream.status();
    let listed = connection_listed(upstream.headers());
    let mut builder = Response::builder().status(status.as_u16());
    for (name, value) in upstream.headers() {
        let lower = name.as_str();
        if HOP_BY_HOP.contains(&lower) || listed.contains(&lower.to_owned()) || lower == "content-length" {
            continue;
        }
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name.as_ref()), HeaderValue::from_bytes(value.as_bytes())) {
            builder = builder.header(name, value);
        }
    }
    builder
        .body(Body::from_stream(upstream.bytes_stream()))
        .unwrap_or_else(|_| plain_error(StatusCode::BAD_GATEWAY, "invalid upstream response"))
}

fn plain_error(status: StatusCode, message: &str) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], format!("tokensync proxy: {message}\n")).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_paths_and_queries() {
        let base: url::Url = "http://127.0.0.1:9000/api/".parse().unwrap();
        assert_eq!(upstream_url(&base, "/v1/items", Some("a=1")).as_str(), "http://127.0.0.1:9000/api/v1/items?a=1");
        let bare: url::Url = "http://127.0.0.1:9000".parse().unwrap();
        assert_eq!(upstream_url(&bare, "/x", None).as_str(), "http://127.0.0.1:9000/x");
    }

    #[test]
    fn drops_hop_by_hop_and_authorization() {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer client-sent"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("close, x-private"));
        headers.insert("x-private", HeaderValue::from_static("1"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        headers.insert(header::HOST, HeaderValue::from_static("example"));
        let forwarded = forwarded_headers(&headers);
        assert!(forwarded.get("authorization").is_none());
        assert!(forwarded.get("connection").is_none());
        assert!(forwarded.get("x-private").is_none());
        assert!(forwarded.get("host").is_none());
        assert_eq!(forwarded.get("x-kept").unwrap(), "1");
    }
}
