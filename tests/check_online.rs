//! `tokensync check-config --online` against the real OpenID provider.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::{OIDC_CLIENT_ID, OIDC_CLIENT_SECRET, OidcProvider};

fn check(config: &std::path::Path) -> (Option<i32>, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_tokensync")).args(["check-config", "--online"]).arg(config).output().unwrap();
    (output.status.code(), String::from_utf8_lossy(&output.stdout).into_owned(), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn online_check_reports_each_part() {
    let provider = OidcProvider::start(20);
    let directory = tempfile::tempdir().unwrap();
    let dir = directory.path();
    std::fs::write(dir.join("good-secret"), OIDC_CLIENT_SECRET).unwrap();
    std::fs::write(dir.join("bad-secret"), "not-the-secret").unwrap();
    std::fs::write(dir.join("key"), "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff").unwrap();
    let token = |name: &str, secret: &str, sink_dir: &str| {
        format!(
            "  - name: {name}\n    source: {{type: oauth2_client_credentials, token_url: '{url}', client_id: {OIDC_CLIENT_ID}, client_secret_file: {dir}/{secret}}}\n    sinks:\n      - {{type: file, path: {sink_dir}/{name}.token}}\n      - {{type: session_store, path: {dir}/session.json, key_file: {dir}/key}}\n",
            url = provider.token_endpoint,
            dir = dir.display()
        )
    };

    let good = dir.join("good.yaml");
    std::fs::write(&good, format!("tokens:\n{}", token("good", "good-secret", &dir.display().to_string()))).unwrap();
    let (code, stdout, stderr) = check(&good);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let good_line = stdout.lines().find(|line| line.starts_with("good ")).unwrap_or_else(|| panic!("{stdout}"));
    assert!(good_line.contains(" ok "), "{good_line}");
    assert!(good_line.contains("20s"), "the granted lifetime is shown: {good_line}");
    assert!(good_line.contains("expires_in"), "where the expiry came from: {good_line}");
    assert!(stdout.contains("test write succeeded"), "{stdout}");
    assert!(stdout.contains("no file yet"), "{stdout}");
    let leftovers: Vec<_> = std::fs::read_dir(dir).unwrap().filter_map(Result::ok).filter(|entry| entry.file_name().to_string_lossy().contains("tokensync-check")).collect();
    assert!(leftovers.is_empty(), "the test write leaves nothing behind");
    assert!(!dir.join("session.json").exists(), "the check does not write the session store");

    // A wrong secret and a directory where even root cannot create files.
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, format!("tokens:\n{}", token("bad", "bad-secret", "/proc"))).unwrap();
    let (code, stdout, stderr) = check(&bad);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    let bad_line = stdout.lines().find(|line| line.starts_with("bad ")).unwrap_or_else(|| panic!("{stdout}"));
    assert!(bad_line.contains("failed: rejected"), "{bad_line}");
    assert!(bad_line.contains("check client_id and the client secret"), "{bad_line}");
    assert!(stdout.contains("cannot create a file in /proc"), "{stdout}");
    assert!(!stdout.contains("not-the-secret"), "the secret is never printed");
    assert!(!stdout.contains(OIDC_CLIENT_SECRET));
}

#[test]
fn inline_secret_in_readable_file_warns() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("inline.yaml");
    std::fs::write(&path, "tokens:\n  - name: a\n    source: {type: oauth2_client_credentials, token_url: 'http://127.0.0.1:9/t', client_id: a, client_secret: plain-inline-value}\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_tokensync")).arg("check-config").arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "a warning does not fail the check: {stderr}");
    assert!(stderr.contains("warning: line 3: tokens[0].source.client_secret is written inline"), "{stderr}");
    assert!(!stderr.contains("plain-inline-value"));

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_tokensync")).arg("check-config").arg(&path).output().unwrap();
    assert!(!String::from_utf8_lossy(&output.stderr).contains("warning"), "no warning for a private file");
}
