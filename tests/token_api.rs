//! The token API served in-process against a mock issuer: authentication,
//! formats, error codes and single-flight reports.

mod common;

use std::sync::Arc;
use std::time::Duration;

use tokensync::engine::{Engine, EngineOptions, TokenSpec};
use tokensync::metrics::Metrics;
use tokensync::source::{ClientCredentials, Source};
use tokensync::Secret;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

const API_TOKEN: &str = "api-bearer-0123456789abcdef";

/// Hands out `at-N`, after `delay`.
struct Issuer {
    next: std::sync::atomic::AtomicU64,
    delay: Duration,
    lifetime: u64,
}

impl Respond for Issuer {
    fn respond(&self, _request: &Request) -> ResponseTemplate {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        ResponseTemplate::new(200)
            .set_body_json(serde_json::json!({"access_token": format!("at-{n}"), "expires_in": self.lifetime}))
            .set_delay(self.delay)
    }
}

struct Api {
    base: String,
    client: reqwest::Client,
    engine: Engine,
    metrics: Arc<Metrics>,
    issuer: MockServer,
}

async fn start_api(delay: Duration, lifetime: u64) -> Api {
    let issuer = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(Issuer { next: 1.into(), delay, lifetime })
        .mount(&issuer)
        .await;
    let settings = common::oauth2_settings(&format!("{}/token", issuer.uri()));
    let source: Arc<dyn Source> = Arc::new(ClientCredentials::new(settings).unwrap());
    let metrics = Metrics::new();
    let engine = Engine::new(EngineOptions { observer: metrics.clone(), ..EngineOptions::default() });
    let mut spec = TokenSpec::new("billing", Some(source));
    spec.policy.min_interval = Duration::from_secs(60);
    engine.add_token(spec).unwrap();
    engine.ensure_fresh("billing").await.unwrap();

    let router = tokensync::http::api::router(engine.clone(), metrics.clone(), Some(Secret::new(API_TOKEN)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let client = tokensync::source::build_http_client(Duration::from_secs(10), None).unwrap();
    Api { base, client, engine, metrics, issuer }
}

impl Api {
    async fn issuer_requests(&self) -> usize {
        self.issuer.received_requests().await.unwrap().len()
    }
}

#[tokio::test]
async fn api_requires_bearer_token() {
    let api = start_api(Duration::ZERO, 3600).await;
    let url = format!("{}/v1/tokens/billing", api.base);

    let missing = api.client.get(&url).send().await.unwrap();
    assert_eq!(missing.status(), 401);
    assert_eq!(missing.headers()["www-authenticate"], "Bearer");
    let body = missing.text().await.unwrap();
    assert!(!body.contains("at-1"), "{body}");

    let wrong = api.client.get(&url).bearer_auth("wrong").send().await.unwrap();
    assert_eq!(wrong.status(), 401);
    let prefix = api.client.get(&url).bearer_auth(&API_TOKEN[..10]).send().await.unwrap();
    assert_eq!(prefix.status(), 401);

    let right = api.client.get(&url).bearer_auth(API_TOKEN).send().await.unwrap();
    assert_eq!(right.status(), 200);
    assert_eq!(right.headers()["cache-control"], "no-store");
    let body: serde_json::Value = right.json().await.unwrap();
    assert_eq!(body["access_token"], "at-1");
    assert_eq!(body["token_type"], "Bearer");
    assert!(body["expires_in"].as_i64().unwrap() > 3500);

    let exposition = api.metrics.encode_text().unwrap();
    assert_eq!(common::sample(&exposition, "tokensync_api_requests_total", &[("endpoint", "get_token"), ("code", "401")]), Some(3.0));
    assert_eq!(common::sample(&exposition, "tokensync_api_requests_total", &[("endpoint", "get_token"), ("code", "200")]), Some(1.0));
}

#[tokio::test]
async fn api_serves_plain_text() {
    let api = start_api(Duration::ZERO, 3600).await;
    let response = api
        .client
        .get(format!("{}/v1/tokens/billing", api.base))
        .bearer_auth(API_TOKEN)
        .header("Accept", "text/plain")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "at-1");
}

#[tokio::test]
async fn api_unknown_token_is_404() {
    let api = start_api(Duration::ZERO, 3600).await;
    let response = api.client.get(format!("{}/v1/tokens/nope", api.base)).bearer_auth(API_TOKEN).send().await.unwrap();
    assert_eq!(response.status(), 404);
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().contains("unknown token `nope`"));
}

#[tokio::test]
async fn api_unavailable_is_503_with_retry_after() {
    let api = start_api(Duration::ZERO, 1).await;
    api.issuer.reset().await;
    Mock::given(method("POST")).respond_with(ResponseTemplate::new(503)).mount(&api.issuer).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let response = api.client.get(format!("{}/v1/tokens/billing", api.base)).bearer_auth(API_TOKEN).send().await.unwrap();
    assert_eq!(response.status(), 503);
    let retry_after: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry_after >= 1);
    let body = response.text().await.unwrap();
    assert!(!body.contains("at-1"), "{body}");
}

#[tokio::test]
async fn thousand_reports_cause_one_request() {
    let api = start_api(Duration::from_millis(300), 3600).await;
    assert_eq!(api.issuer_requests().await, 1);

    let url = format!("{}/v1/tokens/billing/refresh", api.base);
    let body = serde_json::json!({"rejected_token": "at-1"}).to_string();
    let mut callers = Vec::new();
    for _ in 0..1000 {
        let (client, url, body) = (api.client.clone(), url.clone(), body.clone());
        callers.push(tokio::spawn(async move {
            let response = client.post(url).bearer_auth(API_TOKEN).body(body).send().await.unwrap();
            assert_eq!(response.status(), 200);
            response.json::<serde_json::Value>().await.unwrap()["access_token"].as_str().unwrap().to_owned()
        }));
    }
    for caller in callers {
        assert_eq!(caller.await.unwrap(), "at-2", "every caller gets the one new token");
    }
    assert_eq!(api.issuer_requests().await, 2, "1000 reports, one refresh");

    // A late report about the replaced token returns the newer one without a request.
    let response = api.client.post(&url).bearer_auth(API_TOKEN).body(body).send().await.unwrap();
    assert_eq!(response.json::<serde_json::Value>().await.unwrap()["access_token"], "at-2");
    assert_eq!(api.issuer_requests().await, 2);

    let exposition = api.metrics.encode_text().unwrap();
    assert_eq!(common::sample(&exposition, "tokensync_refreshes_total", &[("token", "billing"), ("trigger", "reactive")]), Some(1.0));
    api.engine.shutdown();
}

#[tokio::test]
async fn refresh_rejects_invalid_body() {
    let api = start_api(Duration::ZERO, 3600).await;
    let response = api
        .client
        .post(format!("{}/v1/tokens/billing/refresh", api.base))
        .bearer_auth(API_TOKEN)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(api.issuer_requests().await, 1);
}
