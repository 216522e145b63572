//! The `tokensync` binary as a user runs it: `check-config`, `demo` and `--version`.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{free_port, get_ok, sample};

fn tokensync() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tokensync"))
}

#[test]
fn version_prints_package_version() {
    let output = tokensync().arg("--version").output().unwrap();
    assert!(output.status.success());
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), format!("tokensync {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn check_config_accepts_valid_file() {
    let directory = tempfile::tempdir().unwrap();
    let dir = directory.path().display();
    std::fs::write(directory.path().join("secret"), "s3cr3t-value\n").unwrap();
    let config = format!(
        "tokens:\n  - name: billing\n    source:\n      type: oauth2_client_credentials\n      token_url: http://127.0.0.1:9/token\n      client_id: billing\n      client_secret_file: {dir}/secret\n    sinks:\n      - {{type: file, path: {dir}/billing.token}}\n"
    );
    let path = directory.path().join("ok.yaml");
    std::fs::write(&path, config).unwrap();

    let output = tokensync().arg("check-config").arg(&path).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("valid, 1 token(s)"), "{stdout}");
    assert!(!stdout.contains("s3cr3t-value"));
}

#[test]
fn check_config_rejects_broken_file_with_line() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("broken.yaml");
    std::fs::write(
        &path,
        "tokens:\n  - name: billing\n    source:\n      type: oauth2_client_credentials\n      token_url: not a url\n      client_id: billing\n      client_secret: inline-s3cr3t\n",
    )
    .unwrap();

    let output = tokensync().arg("check-config").arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("line 5: tokens[0].source.token_url: invalid URL"), "{stderr}");
    assert!(!stderr.contains("inline-s3cr3t"), "the secret is never printed: {stderr}");

    std::fs::write(&path, "tokens:\n  - name: billing\n    surprise: 1\n").unwrap();
    let output = tokensync().arg("check-config").arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("broken.yaml:3:"), "{stderr}");

    let output = tokensync().arg("check-config").arg(directory.path().join("missing.yaml")).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot read the file"));
}

#[test]
fn check_config_accepts_shipped_example_shape() {
    // The example names paths of a real deployment; check that only those
    // paths are reported, so every other key of the example is valid.
    let example = common::repo_root().join("config/tokensync.example.yaml");
    let output = tokensync().arg("check-config").arg(&example).env("REPORTS_CLIENT_SECRET", "x").output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    for line in stderr.lines().filter(|line| line.contains(": line ")) {
        let allowed = ["does not exist", "cannot read", "is not set"];
        assert!(allowed.iter().any(|words| line.contains(words)), "unexpected problem: {line}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn demo_shows_proactive_refreshes() {
    let address = format!("127.0.0.1:{}", free_port());
    let directory = tempfile::tempdir().unwrap();
    let log_path = directory.path().join("demo.log");
    let mut demo = common::start_tokensync(&["demo", "--web.listen-address", &address, "--exit-after", "60s"], &log_path);
    let client = tokensync::source::build_http_client(Duration::from_secs(5), None).unwrap();
    let base = format!("http://{address}");

    // Demo tokens live 30 s and are refreshed after about 24 s.
    let started = Instant::now();
    let mut done = false;
    while started.elapsed() < Duration::from_secs(45) {
        if let Some(metrics) = get_ok(&client, &format!("{base}/metrics")).await {
            let proactive = |token| sample(&metrics, "tokensync_refreshes_total", &[("token", token), ("trigger", "proactive")]);
            if proactive("billing") >= Some(1.0) && proactive("reports") >= Some(1.0) {
                done = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(done, "no proactive refreshes within 45 s:\n{log}");
    assert!(log.contains(&format!("status page: http://{address}/")), "{log}");
    let page = get_ok(&client, &base).await.unwrap();
    assert!(page.contains("billing"), "{page}");
    assert!(page.contains("reports"), "{page}");
    assert!(page.contains("2 of 2 tokens valid"), "{page}");

    // `tokensync status` reads the same daemon and exits 0 while all is valid.
    let status = tokensync().args(["status", "--url", &base]).output().unwrap();
    let table = String::from_utf8_lossy(&status.stdout);
    assert_eq!(status.status.code(), Some(0), "{table}");
    assert!(table.starts_with("TOKEN"), "{table}");
    assert!(table.lines().any(|line| line.starts_with("billing") && line.contains("valid")), "{table}");
    assert!(!table.contains('\x1b'), "no colour when stdout is not a terminal");

    let status = demo.terminate(Duration::from_secs(10)).unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn completions_and_man_page_generate() {
    for shell in ["bash", "zsh", "fish"] {
        let output = tokensync().args(["completions", shell]).output().unwrap();
        assert!(output.status.success(), "{shell}");
        let script = String::from_utf8_lossy(&output.stdout);
        assert!(script.contains("check-config"), "{shell} completions name the subcommands");
    }
    let output = tokensync().arg("man").output().unwrap();
    assert!(output.status.success());
    let page = String::from_utf8_lossy(&output.stdout);
    assert!(page.starts_with(".ie") || page.contains(".TH tokensync"), "a roff man page: {}", &page[..page.len().min(200)]);
    assert!(page.contains("check\\-config"), "the man page lists the subcommands");
}

#[test]
fn status_reports_unreachable_daemon() {
    let port = free_port();
    let output = tokensync().args(["status", "--url", &format!("http://127.0.0.1:{port}")]).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot reach"));
}
