//! The accept loop shared by the TCP listeners: optional TLS, a limit on
//! concurrent connections, header size and read timeouts, a deadline per
//! request, and graceful shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::web_config::WebConfig;

/// Limits applied to every connection of a listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once; further ones wait in the accept queue.
    pub max_connections: usize,
    /// Largest request head (request line and headers), in bytes.
    pub max_header_bytes: usize,
    /// Time allowed for a TLS handshake and for a request head to arrive.
    pub header_read_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_connections: 512, max_header_bytes: 16 * 1024, header_read_timeout: Duration::from_secs(10) }
    }
}

/// Time allowed for one request to the metrics listener or the token API,
/// including any refresh it waits for.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(30);

/// Returns 503 when a request runs past [`REQUEST_DEADLINE`].
pub async fn request_deadline(request: Request, next: Next) -> Response {
    match tokio::time::timeout(REQUEST_DEADLINE, next.run(request)).await {
        Ok(response) => response,
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "request timed out\n").into_response(),
    }
}

/// Rejects with 403 a request whose `Host` is a name other than `localhost`.
/// For listeners on loopback: a web page that rebinds its own DNS name to
/// 127.0.0.1 sends its name as `Host`, so it cannot read these responses.
/// IP literals pass, because rebinding needs a name.
pub async fn loopback_host_only(request: Request, next: Next) -> Response {
    match reject_foreign_host(&request) {
        Some(rejection) => rejection,
        None => next.run(request).await,
    }
}

/// Returns the 403 response of [`loopback_host_only`] when the request's
/// `Host` is a name other than `localhost`.
pub(crate) fn reject_foreign_host(request: &Request) -> Option<Response> {
    let host = match request.headers().get(axum::http::header::HOST) {
        Some(value) => value.to_str().unwrap_or("invalid"),
        None => request.uri().authority().map_or("", |authority| authority.as_str()),
    };
    (!host.is_empty() && !host_is_local(host)).then(|| {
        (StatusCode::FORBIDDEN, "this loopback listener only answers requests addressed to an IP address or localhost\n").into_response()
    })
}

/// Returns whether `host` (as in a `Host` header, with an optional port) is
/// an IP literal or `localhost`.
fn host_is_local(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(bracketed) => return bracketed.split(']').next().is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok()),
        None => host.rsplit_once(':').map_or(host, |(name, port)| if port.bytes().all(|byte| byte.is_ascii_digit()) { name } else { host }),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::Ipv4Addr>().is_ok()
}

/// Serves `router` on `listener` until `shutdown` completes, then waits up
/// to 5 s for open connections.
pub async fn serve(listener: TcpListener, router: Router, web: Option<Arc<WebConfig>>, limits: Limits, shutdown: impl Future<Output = ()>) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    // HTTP/1.1 only: the header timeout then runs from the first moment of a
    // connection, where protocol detection would wait without a limit.
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192));
    let builder = Arc::new(builder);
    tokio::pin!(shutdown);

    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(error = %error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let service = TowerToHyperService::new(router.clone());
        let builder = builder.clone();
        let tls = web.as_ref().and_then(|web| web.tls());
        let watcher = graceful.watcher();
        let handshake_timeout = limits.header_read_timeout;
        tokio::spawn(async move {
            let _permit = permit;
            match tls {
                None => {
                    let connection = builder.serve_connection(TokioIo::new(stream), service);
                    let _ = watcher.watch(connection).await;
                }
                Some(config) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(config);
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            let connection = builder.serve_connection(TokioIo::new(stream), service);
                            let _ = watcher.watch(connection).await;
                        }
                        Ok(Err(error)) => tracing::debug!(peer = %peer, error = %error, "TLS handshake failed"),
                        Err(_) => tracing::debug!(peer = %peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(Duration::from_secs(5), graceful.shutdown()).await.is_err() {
        tracing::warn!("connections still open 5 s after shutdown were closed");
    }
}
