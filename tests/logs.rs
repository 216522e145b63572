//! The field names of the JSON log lines that pipelines parse: the
//! refresh-success and refresh-failure events.

mod common;

use std::time::{Duration, Instant};

use common::{free_port, start_tokensync};
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

fn events(log: &str, message: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|event| event["message"] == message)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn json_log_fields_are_stable() {
    let issuer = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({"access_token": "log-at-1", "expires_in": 2})))
        .up_to_n_times(1)
        .mount(&issuer)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503).set_body_string("down"))
        .mount(&issuer)
        .await;
    let directory = tempfile::tempdir().unwrap();
    let config = format!(
        "tokens:\n  - name: logged\n    source: {{type: oauth2_client_credentials, token_url: '{}/token', client_id: c, client_secret: log-secret-99}}\n    refresh: {{lifetime_fraction: 0.5, jitter: 0, min_interval: 500ms}}\n",
        issuer.uri()
    );
    let config_path = directory.path().join("tokensync.yaml");
    std::fs::write(&config_path, config).unwrap();
    let log_path = directory.path().join("log.json");
    let address = format!("127.0.0.1:{}", free_port());
    let mut daemon = start_tokensync(
        &["run", "--config", config_path.to_str().unwrap(), "--web.listen-address", &address, "--log.format", "json", "--log.level", "trace"],
        &log_path,
    );

    let started = Instant::now();
    while events(&std::fs::read_to_string(&log_path).unwrap(), "token refresh failed").is_empty() {
        assert!(started.elapsed() < Duration::from_secs(10), "no failure logged");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    daemon.terminate(Duration::from_secs(10)).unwrap();
    let log = std::fs::read_to_string(&log_path).unwrap();

    let success = &events(&log, "token refreshed")[0];
    for field in ["timestamp", "level", "token", "trigger", "expiry", "duration_ms", "lifetime_s", "expiry_source"] {
        assert!(success.get(field).is_some(), "refresh success lacks `{field}`: {success}");
    }
    assert_eq!(success["token"], "logged");
    assert_eq!(success["trigger"], "initial");
    assert_eq!(success["level"], "INFO");
    assert!(success["expiry"].as_str().unwrap().ends_with('Z'));

    let failure = &events(&log, "token refresh failed")[0];
    for field in ["timestamp", "level", "token", "trigger", "reason", "expiry", "duration_ms", "consecutive_failures", "retry_in_ms", "error"] {
        assert!(failure.get(field).is_some(), "refresh failure lacks `{field}`: {failure}");
    }
    assert_eq!(failure["reason"], "server_error");
    assert_eq!(failure["level"], "WARN");

    assert!(!log.contains("log-at-1"), "a token leaked into the trace log");
    assert!(!log.contains("log-secret-99"), "the client secret leaked into the trace log");
}
