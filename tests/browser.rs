//! The status page in headless Chromium (Debian's `chromium`, driven by
//! playwright-core from tests/browser): it loads without console errors,
//! lists the configured tokens, updates itself after a refresh, and never
//! shows a token value or a secret.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{free_port, start_tokensync, wait_ready};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate, matchers::method};

const CLIENT_SECRET: &str = "browser-client-secret-4f1d";

/// Hands out `page-token-N` tokens that live 4 s.
struct Issuer(AtomicU64);

impl Respond for Issuer {
    fn respond(&self, _request: &Request) -> ResponseTemplate {
        let n = self.0.fetch_add(1, Ordering::SeqCst);
        ResponseTemplate::new(200).set_body_json(serde_json::json!({"access_token": format!("page-token-{n:04}"), "expires_in": 4}))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn status_page_in_chromium() {
    let root = common::repo_root();
    assert!(
        root.join("tests/browser/node_modules/playwright-core").exists(),
        "playwright-core is not installed: run `npm ci --prefix tests/browser`"
    );
    assert!(std::path::Path::new("/usr/bin/chromium").exists(), "chromium not found: install the Debian package chromium");

    let issuer = MockServer::start().await;
    Mock::given(method("POST")).respond_with(Issuer(AtomicU64::new(1))).mount(&issuer).await;
    let directory = tempfile::tempdir().unwrap();
    std::fs::write(directory.path().join("secret"), CLIENT_SECRET).unwrap();
    let mut config = String::from("tokens:\n");
    for name in ["alpha", "beta"] {
        config.push_str(&format!(
            "  - name: {name}\n    source: {{type: oauth2_client_credentials, token_url: '{}/token', client_id: {name}, client_secret_file: {}/secret}}\n    refresh: {{lifetime_fraction: 0.5, jitter: 0, min_interval: 1s}}\n    sinks:\n      - {{type: file, path: {}/{name}.token}}\n",
            issuer.uri(),
            directory.path().display(),
            directory.path().display()
        ));
    }
    let config_path = directory.path().join("tokensync.yaml");
    std::fs::write(&config_path, config).unwrap();
    let address = format!("127.0.0.1:{}", free_port());
    let log_path = directory.path().join("tokensync.log");
    let mut daemon = start_tokensync(&["run", "--config", config_path.to_str().unwrap(), "--web.listen-address", &address], &log_path);
    let client = tokensync::source::build_http_client(Duration::from_secs(5), None).unwrap();
    wait_ready(&client, &format!("http://{address}"), &log_path, Duration::from_secs(10)).await;

    // Every token the issuer could hand out during the test, and the secret.
    let mut forbidden: Vec<String> = (1..500).map(|n| format!("page-token-{n:04}")).collect();
    forbidden.push(CLIENT_SECRET.to_owned());
    let output = tokio::process::Command::new("node")
        .arg(root.join("tests/browser/status_page.mjs"))
        .env("STATUS_URL", format!("http://{address}/"))
        .env("FORBIDDEN", serde_json::to_string(&forbidden).unwrap())
        .env("WAIT_MS", "10000")
        .output()
        .await
        .expect("node must be installed");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the browser script failed: {stderr}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|_| panic!("no report: {stderr}"));

    assert_eq!(report["tokens"], serde_json::json!(["alpha", "beta"]), "the page lists the configured tokens");
    assert_eq!(report["consoleErrors"], serde_json::json!([]), "no console error");
    assert_eq!(report["leaked"], serde_json::json!([]), "no token value or secret on the page");
    assert_eq!(report["updated"], true, "the page updates itself after a refresh");

    let status = daemon.terminate(Duration::from_secs(10)).unwrap();
    assert!(status.success());
}
