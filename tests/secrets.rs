//! Secrets never leak: `Debug` of every type that holds one is pinned, and
//! a daemon run at trace level, with every listener and failure path
//! exercised, prints no token, refresh token, client secret, API token or key
//! in its logs, /metrics, the status page, the status JSON or error bodies.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{free_port, get_ok, start_tokensync, wait_ready};
use tokensync::config;
use tokensync::sink::SessionKey;
use tokensync::Secret;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

const CLIENT_SECRET: &str = "cs-3b9f6e1d2c7a4058";
const INITIAL_REFRESH: &str = "rt-initial-5d8c2e7f9a1b";
const API_TOKEN: &str = "api-token-8e2f4a6c0b1d";
const SESSION_KEY_HEX: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";

#[test]
fn debug_output_is_redacted() {
    let secret = Secret::new(CLIENT_SECRET);
    assert_eq!(format!("{secret:?}"), "Secret(***)");
    assert_eq!(format!("{secret}"), "***");
    assert_eq!(format!("{:?}", SessionKey::parse(SESSION_KEY_HEX).unwrap()), "SessionKey(***)");

    let mut token = tokensync::Token::bearer("at-debug-value", chrono::Utc::now(), Duration::from_secs(60));
    token.refresh_token = Some(Secret::new(INITIAL_REFRESH));
    let printed = format!("{token:?}");
    assert!(printed.contains("access_token: Secret(***)"), "{printed}");
    assert!(printed.contains("refresh_token: Some(Secret(***))"), "{printed}");
    assert!(!printed.contains("at-debug-value"));

    let yaml = format!(
        r#"
tokens:
  - name: a
    source:
      type: oauth2_refresh_token
      token_url: http://127.0.0.1:9/token
      client_id: a
      client_secret: {CLIENT_SECRET}
      refresh_token: {INITIAL_REFRESH}
      extra_params: {{audience: {API_TOKEN}}}
  - name: b
    source:
      type: http_login
      login: {{url: 'http://127.0.0.1:9/login', headers: {{Authorization: {API_TOKEN}}}, body: {{password: {CLIENT_SECRET}}}}}
      token_pointer: /t
    sinks:
      - {{type: webhook, url: 'http://127.0.0.1:9/hook', headers: {{X-Key: {API_TOKEN}}}}}
  - name: c
    source: {{type: exec, command: [/bin/true], env: {{PASSWORD: {CLIENT_SECRET}}}}}
"#
    );
    let parsed = config::parse(&yaml, "test.yaml").unwrap();
    let resolved = config::resolve(&parsed, &|_| None).unwrap();
    for (what, printed) in [("parsed config", format!("{parsed:?}")), ("resolved config", format!("{resolved:?}"))] {
        for value in [CLIENT_SECRET, INITIAL_REFRESH, API_TOKEN] {
            assert!(!printed.contains(value), "{what} Debug prints a secret");
        }
        assert!(printed.contains("***"), "{what} Debug shows the redaction");
    }
}

#[test]
fn hostile_yaml_is_rejected_fast() {
    let deep = format!("tokens: {}{}", "[".repeat(100_000), "]".repeat(100_000));
    let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
    for level in 1..12 {
        bomb.push_str(&format!("l{level}: &l{level} [{}]\n", vec![format!("*{}", if level == 1 { "a".to_owned() } else { format!("l{}", level - 1) }); 10].join(", ")));
    }
    bomb.push_str("tokens: *l11\n");
    for (case, text) in [("deep nesting", deep), ("alias expansion", bomb)] {
        let started = Instant::now();
        let error = config::parse(&text, "hostile.yaml").expect_err(case);
        assert!(started.elapsed() < Duration::from_secs(2), "{case} took {:?}", started.elapsed());
        assert!(!error.message.is_empty(), "{case}");
    }
}

/// Hands out `leak-at-N` with rotating `leak-rt-N`; from the fourth request
/// on, fails with a body that echoes secrets, as a misbehaving issuer might.
struct EchoingIssuer(AtomicU64);

impl Respond for EchoingIssuer {
    fn respond(&self, _request: &Request) -> ResponseTemplate {
        let n = self.0.fetch_add(1, Ordering::SeqCst);
        if n >= 4 {
            let body = format!(r#"{{"error":"invalid_grant","error_description":"refresh_token leak-rt-{n} and secret {CLIENT_SECRET} rejected"}}"#);
            return ResponseTemplate::new(400).set_body_string(body);
        }
        ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "access_token": format!("leak-at-{n}"), "refresh_token": format!("leak-rt-{}", n + 1), "expires_in": 2
        }))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn daemon_outputs_hold_no_secret() {
    let issuer = MockServer::start().await;
    Mock::given(method("POST")).respond_with(EchoingIssuer(AtomicU64::new(1))).mount(&issuer).await;
    let upstream = MockServer::start().await;
    Mock::given(method("GET")).respond_with(ResponseTemplate::new(401)).mount(&upstream).await;

    let directory = tempfile::tempdir().unwrap();
    let dir = directory.path();
    std::fs::write(dir.join("secret"), CLIENT_SECRET).unwrap();
    std::fs::write(dir.join("refresh"), INITIAL_REFRESH).unwrap();
    std::fs::write(dir.join("api-token"), API_TOKEN).unwrap();
    std::fs::write(dir.join("key"), SESSION_KEY_HEX).unwrap();
    let api_port = free_port();
    let proxy_port = free_port();
    let config = format!(
        r#"
api: {{listen: 'tcp://127.0.0.1:{api_port}', bearer_token_file: {dir}/api-token}}
proxies:
  - {{name: leaky, listen: '127.0.0.1:{proxy_port}', upstream: '{upstream}', token: rotating}}
tokens:
  - name: rotating
    source:
      type: oauth2_refresh_token
      token_url: {issuer}/token
      client_id: leak-test
      client_secret_file: {dir}/secret
      refresh_token_file: {dir}/refresh
    refresh: {{lifetime_fraction: 0.5, jitter: 0, min_interval: 200ms}}
    backoff: {{initial: 200ms, max: 1s}}
    sinks:
      - {{type: file, path: {dir}/rotating.token, format: json}}
      - {{type: session_store, path: {dir}/session.json, key_file: {dir}/key}}
"#,
        dir = dir.display(),
        upstream = upstream.uri(),
        issuer = issuer.uri(),
    );
    let config_path = dir.join("tokensync.yaml");
    std::fs::write(&config_path, &config).unwrap();
    let address = format!("127.0.0.1:{}", free_port());
    let log_path = dir.join("trace.log");
    let mut daemon = start_tokensync(
        &["run", "--config", config_path.to_str().unwrap(), "--web.listen-address", &address, "--log.level", "trace"],
        &log_path,
    );
    let client = tokensync::source::build_http_client(Duration::from_secs(10), None).unwrap();
    let base = format!("http://{address}");
    wait_ready(&client, &base, &log_path, Duration::from_secs(10)).await;

    // Wait until the issuer has started failing with its echoing body.
    let started = Instant::now();
    while !std::fs::read_to_string(&log_path).unwrap().contains("token refresh failed") {
        assert!(started.elapsed() < Duration::from_secs(15), "the issuer never failed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut outputs = vec![
        get_ok(&client, &format!("{base}/metrics")).await.unwrap(),
        get_ok(&client, &base).await.unwrap(),
        get_ok(&client, &format!("{base}/api/v1/status")).await.unwrap(),
    ];
    let api = format!("http://127.0.0.1:{api_port}");
    for (url, token) in [
        (format!("{api}/v1/tokens/rotating"), "wrong"),
        (format!("{api}/v1/tokens/unknown"), API_TOKEN),
        (format!("{api}/nothing"), API_TOKEN),
    ] {
        outputs.push(client.get(url).bearer_auth(token).send().await.unwrap().text().await.unwrap());
    }
    outputs.push(client.get(format!("http://127.0.0.1:{proxy_port}/x")).send().await.unwrap().text().await.unwrap());
    // A reload with a broken file reports the problem, never the config's values.
    std::fs::write(&config_path, format!("{config}\nunknown_key: {CLIENT_SECRET}\n")).unwrap();
    outputs.push(client.post(format!("{base}/-/reload")).send().await.unwrap().text().await.unwrap());

    daemon.terminate(Duration::from_secs(10)).unwrap();
    outputs.push(std::fs::read_to_string(&log_path).unwrap());
    outputs.push(std::fs::read_to_string(dir.join("session.json")).unwrap());

    let issued = issuer.received_requests().await.unwrap().len() as u64 + 2;
    let mut secrets: Vec<String> = vec![CLIENT_SECRET.into(), INITIAL_REFRESH.into(), API_TOKEN.into(), SESSION_KEY_HEX.into()];
    secrets.extend((1..=issued).flat_map(|n| [format!("leak-at-{n}"), format!("leak-rt-{n}")]));
    let everything = outputs.join("\n");
    assert!(everything.contains("token refreshed"), "the trace log was captured");
    for secret in &secrets {
        // The secret is named by its position only, never printed.
        let index = secrets.iter().position(|candidate| candidate == secret).unwrap();
        assert!(!everything.contains(secret.as_str()), "secret #{index} leaked into an output");
    }
}
