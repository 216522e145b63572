//! SIGTERM lets a sync in progress finish, then the daemon exits 0.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::{free_port, start_tokensync, wait_ready};
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_finishes_sync_in_progress() {
    let issuer = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({"access_token": "slow-sync-token", "expires_in": 3600})))
        .mount(&issuer)
        .await;
    let directory = tempfile::tempdir().unwrap();
    let dir = directory.path();
    let started_marker = dir.join("started");
    let output = dir.join("received");
    let hook = dir.join("slow-hook.sh");
    std::fs::write(&hook, format!("#!/bin/sh\ntouch {}\nsleep 2\ncat > {}\n", started_marker.display(), output.display())).unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = format!(
        "tokens:\n  - name: slow\n    source: {{type: oauth2_client_credentials, token_url: '{}/token', client_id: c, client_secret: s}}\n    sinks:\n      - {{type: exec, command: ['{}'], timeout: 30s}}\n",
        issuer.uri(),
        hook.display()
    );
    let config_path = dir.join("tokensync.yaml");
    std::fs::write(&config_path, config).unwrap();
    let address = format!("127.0.0.1:{}", free_port());
    let log_path = dir.join("log");
    let mut daemon = start_tokensync(&["run", "--config", config_path.to_str().unwrap(), "--web.listen-address", &address], &log_path);
    let client = tokensync::source::build_http_client(Duration::from_secs(5), None).unwrap();
    wait_ready(&client, &format!("http://{address}"), &log_path, Duration::from_secs(10)).await;

    let started = Instant::now();
    while !started_marker.exists() {
        assert!(started.elapsed() < Duration::from_secs(5), "the hook never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!output.exists(), "the hook is still sleeping");
    let stopping = Instant::now();
    let status = daemon.terminate(Duration::from_secs(15)).expect("the daemon stops within its deadline");
    assert!(status.success(), "{status}");
    assert!(stopping.elapsed() >= Duration::from_millis(1500), "the daemon waited for the sync");
    assert_eq!(std::fs::read_to_string(&output).unwrap(), "slow-sync-token", "the sync in progress finished");
    assert!(std::fs::read_to_string(&log_path).unwrap().contains("tokensync stopped"));
}
