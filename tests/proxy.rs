//! The injecting proxy against a mock issuer and a mock upstream.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokensync::config::ResolvedProxy;
use tokensync::engine::{Engine, EngineOptions, TokenSpec};
use tokensync::metrics::Metrics;
use tokensync::source::{ClientCredentials, Source};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

struct Issuer(AtomicU64);

impl Respond for Issuer {
    fn respond(&self, _request: &Request) -> ResponseTemplate {
        let n = self.0.fetch_add(1, Ordering::SeqCst);
        ResponseTemplate::new(200).set_body_json(serde_json::json!({"access_token": format!("at-{n}"), "expires_in": 3600}))
    }
}

struct Setup {
    base: String,
    client: reqwest::Client,
    issuer: MockServer,
    upstream: MockServer,
    metrics: Arc<Metrics>,
}

async fn setup(replay_body_limit: u64) -> Setup {
    let issuer = MockServer::start().await;
    Mock::given(method("POST")).respond_with(Issuer(AtomicU64::new(1))).mount(&issuer).await;
    let upstream = MockServer::start().await;

    let settings = common::oauth2_settings(&format!("{}/token", issuer.uri()));
    let source: Arc<dyn Source> = Arc::new(ClientCredentials::new(settings).unwrap());
    let metrics = Metrics::new();
    let engine = Engine::new(EngineOptions { observer: metrics.clone(), ..EngineOptions::default() });
    let mut spec = TokenSpec::new("billing", Some(source));
    spec.policy.min_interval = Duration::from_millis(10);
    engine.add_token(spec).unwrap();
    engine.ensure_fresh("billing").await.unwrap();

    let proxy = ResolvedProxy {
        name: "billing-api".into(),
        listen: "127.0.0.1:0".parse().unwrap(),
        upstream: format!("{}/api", upstream.uri()).parse().unwrap(),
        token: "billing".into(),
        ca_file: None,
        timeout: Duration::from_secs(5),
        replay_body_limit,
    };
    let router = tokensync::http::proxy::router(proxy, engine, metrics.clone()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let client = tokensync::source::build_http_client(Duration::from_secs(10), None).unwrap();
    Setup { base, client, issuer, upstream, metrics }
}

fn authorization(request: &Request) -> String {
    request.headers.get("authorization").map(|value| value.to_str().unwrap().to_owned()).unwrap_or_default()
}

#[tokio::test]
async fn proxy_injects_and_replaces_authorization() {
    let setup = setup(1024).await;
    Mock::given(method("GET"))
        .and(path("/api/items"))
        .and(header("authorization", "Bearer at-1"))
        .respond_with(ResponseTemplate::new(200).set_body_string("items").insert_header("x-upstream", "yes"))
        .mount(&setup.upstream)
        .await;

    let response = setup
        .client
        .get(format!("{}/items?page=2", setup.base))
        .header("authorization", "Bearer client-sent")
        .header("x-custom", "kept")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-upstream"], "yes");
    assert_eq!(response.text().await.unwrap(), "items");

    let requests = setup.upstream.received_requests().await.unwrap();
    assert_eq!(requests.len(), 1);
    assert_eq!(authorization(&requests[0]), "Bearer at-1", "the client's header is replaced");
    assert_eq!(requests[0].url.query(), Some("page=2"));
    assert_eq!(requests[0].headers["x-custom"], "kept");
}

#[tokio::test]
async fn proxy_retries_replayable_body_once() {
    let setup = setup(1024).await;
    Mock::given(method("POST"))
        .and(header("authorization", "Bearer at-1"))
        .respond_with(ResponseTemplate::new(401).insert_header("www-authenticate", "Bearer error=\"invalid_token\""))
        .mount(&setup.upstream)
        .await;
    Mock::given(method("POST"))
        .and(header("authorization", "Bearer at-2"))
        .respond_with(ResponseTemplate::new(201).set_body_string("created"))
        .mount(&setup.upstream)
        .await;

    let response = setup.client.post(format!("{}/orders", setup.base)).body("order-body").send().await.unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(response.text().await.unwrap(), "created");

    let requests = setup.upstream.received_requests().await.unwrap();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[1].body, b"order-body", "the body is replayed");
    assert_eq!(setup.issuer.received_requests().await.unwrap().len(), 2, "one reactive refresh");
    let exposition = setup.metrics.encode_text().unwrap();
    assert_eq!(common::sample(&exposition, "tokensync_proxy_upstream_rejections_total", &[("proxy", "billing-api")]), Some(1.0));
    assert_eq!(common::sample(&exposition, "tokensync_proxy_requests_total", &[("proxy", "billing-api"), ("code", "201")]), Some(1.0));
}

#[tokio::test]
async fn proxy_does_not_loop_on_second_401() {
    let setup = setup(1024).await;
    Mock::given(method("GET")).respond_with(ResponseTemplate::new(401)).mount(&setup.upstream).await;

    let response = setup.client.get(format!("{}/items", setup.base)).send().await.unwrap();
    assert_eq!(response.status(), 401, "the second 401 reaches the client");
    assert_eq!(setup.upstream.received_requests().await.unwrap().len(), 2, "one retry, no loop");
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_streams_large_body_without_retry() {
    let setup = setup(16).await;
    Mock::given(method("PUT")).respond_with(ResponseTemplate::new(401)).mount(&setup.upstream).await;

    let body = "x".repeat(4096);
    let response = setup.client.put(format!("{}/upload", setup.base)).body(body.clone()).send().await.unwrap();
    assert_eq!(response.status(), 401, "a body over the replay limit is not retried");
    let requests = setup.upstream.received_requests().await.unwrap();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].body.len(), 4096, "the body is streamed whole");

    // The rejection still refreshes the token, in the background, for the next request.
    assert!(common::eventually(Duration::from_secs(2), || {
        futures_requests(&setup.issuer) >= 2
    })
    .await);
}

/// Counts the issuer's requests without awaiting (for `eventually`).
fn futures_requests(server: &MockServer) -> usize {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(server.received_requests())).map_or(0, |requests| requests.len())
}
