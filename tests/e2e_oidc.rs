//! End to end against a real OpenID provider (npm `oidc-provider` 8, started
//! from tests/oidc). tokensync keeps a token that the issuer reports active
//! for over a minute and refreshes it only proactively. Once the issuer goes
//! away, tokensync keeps serving the valid token.

mod common;

use std::time::{Duration, Instant};

use common::{OIDC_CLIENT_ID, OIDC_CLIENT_SECRET, OidcProvider, free_port, get_ok, sample, start_tokensync, wait_ready};

#[tokio::test(flavor = "multi_thread")]
async fn keeps_token_active_against_oidc_provider() {
    let mut provider = OidcProvider::start(20);
    let directory = tempfile::tempdir().unwrap();
    let dir = directory.path();
    std::fs::write(dir.join("client-secret"), OIDC_CLIENT_SECRET).unwrap();
    std::fs::write(dir.join("session.key"), "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff").unwrap();
    let config = format!(
        r#"
tokens:
  - name: e2e
    source:
      type: oauth2_client_credentials
      token_url: {token_endpoint}
      client_id: {OIDC_CLIENT_ID}
      client_secret_file: {dir}/client-secret
      scopes: [api.read]
    sinks:
      - {{type: file, path: {dir}/e2e.token}}
      - {{type: session_store, path: {dir}/session.json, key_file: {dir}/session.key}}
"#,
        token_endpoint = provider.token_endpoint,
        dir = dir.display()
    );
    let config_path = dir.join("tokensync.yaml");
    std::fs::write(&config_path, config).unwrap();

    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let log_path = dir.join("tokensync.log");
    let mut tokensync = start_tokensync(
        &["run", "--config", config_path.to_str().unwrap(), "--web.listen-address", &address, "--log.level", "debug"],
        &log_path,
    );
    let client = tokensync::source::build_http_client(Duration::from_secs(5), None).unwrap();
    let base = format!("http://{address}");

    wait_ready(&client, &base, &log_path, Duration::from_secs(15)).await;

    // Readiness means a valid token is held; the file sink writes it a
    // moment later.
    let token_file = dir.join("e2e.token");
    let first_sync = Instant::now();
    while !token_file.exists() {
        assert!(first_sync.elapsed() < Duration::from_secs(5), "no token file 5 s after readiness");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // For 65 s, the token in the file sink is always one the issuer reports active.
    let mut seen = std::collections::BTreeSet::new();
    let checks_started = Instant::now();
    while checks_started.elapsed() < Duration::from_secs(65) {
        let token = std::fs::read_to_string(&token_file).unwrap();
        assert!(provider.is_active(&client, &token).await, "the synced token is not active after {:?}", checks_started.elapsed());
        seen.insert(token);
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    assert!(seen.len() >= 3, "expected at least 3 distinct tokens in 65 s, saw {}", seen.len());

    let metrics = get_ok(&client, &format!("{base}/metrics")).await.unwrap();
    let proactive = sample(&metrics, "tokensync_refreshes_total", &[("token", "e2e"), ("trigger", "proactive")]).unwrap();
    let reactive = sample(&metrics, "tokensync_refreshes_total", &[("token", "e2e"), ("trigger", "reactive")]).unwrap();
    assert!(proactive >= 2.0, "proactive refreshes: {proactive}");
    assert_eq!(reactive, 0.0, "no reactive refresh while the issuer is up");
    assert_eq!(sample(&metrics, "tokensync_token_valid", &[("token", "e2e")]), Some(1.0));
    promtool_check_metrics(&metrics);

    // Stop the issuer: failures show in /metrics while the valid token stays in the sink.
    let last_token = std::fs::read_to_string(&token_file).unwrap();
    provider.process.terminate(Duration::from_secs(5));
    let stopped = Instant::now();
    let mut failure_seen_while_valid = false;
    while stopped.elapsed() < Duration::from_secs(30) {
        let metrics = get_ok(&client, &format!("{base}/metrics")).await.unwrap();
        let failures = sample(&metrics, "tokensync_refresh_failures_total", &[("token", "e2e"), ("reason", "connect")]).unwrap();
        if failures >= 1.0 {
            let time_to_expiry = sample(&metrics, "tokensync_token_time_to_expiry_seconds", &[("token", "e2e")]).unwrap();
            failure_seen_while_valid = time_to_expiry > 0.0;
            assert!(sample(&metrics, "tokensync_consecutive_refresh_failures", &[("token", "e2e")]).unwrap() >= 1.0);
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(failure_seen_while_valid, "a connect failure must be reported before the token expires");
    // Token values never go into assertion messages.
    assert!(std::fs::read_to_string(&token_file).unwrap() == last_token, "the valid token stays in the sink");
    let page = get_ok(&client, &base).await.unwrap();
    assert!(page.contains("e2e"));

    let status = tokensync.terminate(Duration::from_secs(10)).expect("tokensync must stop on SIGTERM");
    assert!(status.success(), "exit status {status}");

    // Nothing tokensync printed contains a token or the client secret.
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("token refreshed"), "the log shows refreshes");
    assert!(!log.contains(OIDC_CLIENT_SECRET), "the client secret leaked into the log");
    for token in &seen {
        assert!(!log.contains(token.as_str()), "an access token leaked into the log");
        assert!(!metrics.contains(token.as_str()), "an access token leaked into /metrics");
        assert!(!page.contains(token.as_str()), "an access token leaked into the status page");
    }
}

/// Runs `promtool check metrics` on an exposition and fails on any finding.
fn promtool_check_metrics(exposition: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool not found: install the Debian package prometheus");
    child.stdin.take().unwrap().write_all(exposition.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    let findings = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "promtool check metrics failed: {findings}");
    assert!(findings.trim().is_empty(), "promtool check metrics found problems: {findings}");
}
