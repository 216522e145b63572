//! Configuration reload through `POST /-/reload` and SIGHUP on a running daemon.

mod common;

use std::time::{Duration, Instant};

use common::{free_port, get_ok, sample, start_tokensync, wait_ready};
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

fn config(token_url: &str, names: &[&str]) -> String {
    let mut yaml = String::from("tokens:\n");
    for name in names {
        yaml.push_str(&format!(
            "  - name: {name}\n    source: {{type: oauth2_client_credentials, token_url: '{token_url}', client_id: {name}, client_secret: s}}\n"
        ));
    }
    yaml
}

async fn metrics(client: &reqwest::Client, base: &str) -> String {
    get_ok(client, &format!("{base}/metrics")).await.expect("/metrics answers")
}

#[tokio::test(flavor = "multi_thread")]
async fn reload_adds_removes_and_rejects() {
    let issuer = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({"access_token": "at", "expires_in": 3600})))
        .mount(&issuer)
        .await;
    let token_url = format!("{}/token", issuer.uri());
    let directory = tempfile::tempdir().unwrap();
    let config_path = directory.path().join("tokensync.yaml");
    std::fs::write(&config_path, config(&token_url, &["alpha"])).unwrap();

    let address = format!("127.0.0.1:{}", free_port());
    let log_path = directory.path().join("tokensync.log");
    let mut daemon = start_tokensync(&["run", "--config", config_path.to_str().unwrap(), "--web.listen-address", &address], &log_path);
    let client = tokensync::source::build_http_client(Duration::from_secs(5), None).unwrap();
    let base = format!("http://{address}");
    wait_ready(&client, &base, &log_path, Duration::from_secs(10)).await;

    // Add a token.
    std::fs::write(&config_path, config(&token_url, &["alpha", "beta"])).unwrap();
    let response = client.post(format!("{base}/-/reload")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.text().await.unwrap().contains("1 added, 0 removed, 0 restarted, 2 running"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let text = metrics(&client, &base).await;
    assert_eq!(sample(&text, "tokensync_token_valid", &[("token", "beta")]), Some(1.0));
    assert_eq!(sample(&text, "tokensync_refreshes_total", &[("token", "alpha"), ("trigger", "initial")]), Some(1.0), "unchanged token not refreshed again");

    // An invalid file keeps the running configuration.
    std::fs::write(&config_path, "tokens:\n  - name: alpha\n    unknown: 1\n").unwrap();
    let response = client.post(format!("{base}/-/reload")).send().await.unwrap();
    assert_eq!(response.status(), 500);
    assert!(response.text().await.unwrap().contains("previous configuration stays active"));
    let text = metrics(&client, &base).await;
    assert_eq!(sample(&text, "tokensync_config_last_reload_successful", &[]), Some(0.0));
    assert_eq!(sample(&text, "tokensync_token_valid", &[("token", "alpha")]), Some(1.0));

    // A changed token restarts: a new client_id means a new initial request.
    std::fs::write(&config_path, config(&token_url, &["alpha", "beta"]).replace("client_id: beta", "client_id: beta-2")).unwrap();
    let response = client.post(format!("{base}/-/reload")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.text().await.unwrap().contains("0 added, 0 removed, 1 restarted, 2 running"));
    assert!(
        common::eventually(Duration::from_secs(3), || {
            let requests = tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(issuer.received_requests())).unwrap();
            requests.iter().any(|request| String::from_utf8_lossy(&request.body).contains("client_id=beta-2") || request.headers.get("authorization").is_some_and(|value| {
                let encoded = value.to_str().unwrap().trim_start_matches("Basic ");
                use base64::Engine as _;
                String::from_utf8(base64::engine::general_purpose::STANDARD.decode(encoded).unwrap()).unwrap().starts_with("beta-2:")
            }))
        })
        .await,
        "the restarted token requests with its new client_id"
    );
    let text = metrics(&client, &base).await;
    assert_eq!(sample(&text, "tokensync_refreshes_total", &[("token", "alpha"), ("trigger", "initial")]), Some(1.0), "alpha is untouched");

    // SIGHUP: remove a token; its series leave /metrics.
    std::fs::write(&config_path, config(&token_url, &["beta"])).unwrap();
    let pid = daemon.0.as_ref().unwrap().id();
    // SAFETY: kill(2) with a pid we own and a valid signal number.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGHUP) };
    let started = Instant::now();
    loop {
        let text = metrics(&client, &base).await;
        if !text.contains("token=\"alpha\"") {
            assert_eq!(sample(&text, "tokensync_config_last_reload_successful", &[]), Some(1.0));
            assert!(common::eventually(Duration::from_secs(3), || {
                let text = tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(metrics(&client, &base)));
                sample(&text, "tokensync_token_valid", &[("token", "beta")]) == Some(1.0)
            })
            .await);
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "after SIGHUP, alpha series remain:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let status = daemon.terminate(Duration::from_secs(10)).unwrap();
    assert!(status.success());
}
