//! The token API on a Unix socket and the `tokensync token` client, against
//! the real OpenID provider from tests/oidc.

mod common;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{OIDC_CLIENT_ID, OIDC_CLIENT_SECRET, OidcProvider, free_port, start_tokensync, wait_ready};

const API_TOKEN: &str = "e2e-api-bearer-7c1f0a";

fn token_command(action: &str, config: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tokensync"))
        .args(["token", action, "e2e", "--config", config.to_str().unwrap()])
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn token_cli_over_unix_socket() {
    let provider = OidcProvider::start(120);
    let directory = tempfile::tempdir().unwrap();
    let dir = directory.path();
    std::fs::write(dir.join("client-secret"), OIDC_CLIENT_SECRET).unwrap();
    std::fs::write(dir.join("api-token"), format!("{API_TOKEN}\n")).unwrap();
    let socket = dir.join("api.sock");
    let config = format!(
        "api:\n  listen: unix://{socket}\n  bearer_token_file: {dir}/api-token\ntokens:\n  - name: e2e\n    source:\n      type: oauth2_client_credentials\n      token_url: {url}\n      client_id: {OIDC_CLIENT_ID}\n      client_secret_file: {dir}/client-secret\n",
        socket = socket.display(),
        dir = dir.display(),
        url = provider.token_endpoint,
    );
    let config_path = dir.join("tokensync.yaml");
    std::fs::write(&config_path, config).unwrap();

    let address = format!("127.0.0.1:{}", free_port());
    let log_path = dir.join("tokensync.log");
    let mut daemon = start_tokensync(&["run", "--config", config_path.to_str().unwrap(), "--web.listen-address", &address], &log_path);
    let client = tokensync::source::build_http_client(Duration::from_secs(5), None).unwrap();
    wait_ready(&client, &format!("http://{address}"), &log_path, Duration::from_secs(15)).await;
    let started = Instant::now();
    while !socket.exists() {
        assert!(started.elapsed() < Duration::from_secs(5), "no socket");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metadata = std::fs::symlink_metadata(&socket).unwrap();
    assert!(metadata.file_type().is_socket());
    assert_eq!(metadata.permissions().mode() & 0o777, 0o600, "the socket is private to its owner");

    let got = token_command("get", &config_path);
    assert!(got.status.success(), "{}", String::from_utf8_lossy(&got.stderr));
    let first = String::from_utf8(got.stdout).unwrap().trim().to_owned();
    assert!(provider.is_active(&client, &first).await, "the API serves a token the issuer reports active");

    // A report without the rejected token counts as covered by a refresh
    // that finished less than 2 s ago, so wait that out first.
    tokio::time::sleep(tokensync::engine::REPORT_GRACE + Duration::from_millis(500)).await;
    let refreshed = token_command("refresh", &config_path);
    assert!(refreshed.status.success(), "{}", String::from_utf8_lossy(&refreshed.stderr));
    let second = String::from_utf8(refreshed.stdout).unwrap().trim().to_owned();
    // Token values never go into assertion messages.
    assert!(first != second, "a reported token is replaced");
    assert!(provider.is_active(&client, &second).await);

    // Wrong credentials: exit status 1 and a 401, with no token printed.
    std::fs::write(dir.join("wrong-token"), "not-the-api-token").unwrap();
    let denied = Command::new(env!("CARGO_BIN_EXE_tokensync"))
        .args(["token", "get", "e2e", "--api", &format!("unix://{}", socket.display())])
        .arg("--bearer-token-file")
        .arg(dir.join("wrong-token"))
        .output()
        .unwrap();
    assert_eq!(denied.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&denied.stderr);
    assert!(stderr.contains("401"), "{stderr}");
    assert!(denied.stdout.is_empty());
    assert!(!stderr.contains(&second));

    let unknown = Command::new(env!("CARGO_BIN_EXE_tokensync"))
        .args(["token", "get", "nope", "--config", config_path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(unknown.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("unknown token `nope`"));

    let status = daemon.terminate(Duration::from_secs(10)).unwrap();
    assert!(status.success());
    assert!(!socket.exists(), "the socket is removed on shutdown");
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(!log.contains(&first));
    assert!(!log.contains(API_TOKEN));
}
