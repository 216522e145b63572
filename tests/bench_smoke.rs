//! Runs the benchmark harness `scripts/bench/run --smoke` with tiny sizes,
//! so that the harness keeps working. Its figures are not checked: a smoke
//! run on a shared machine measures nothing. Needs the Debian packages wrk,
//! hyperfine, nginx, prometheus-pushgateway and curl.

mod common;

use std::path::PathBuf;
use std::process::Command;

/// Tools the harness runs, with the Debian package of each.
const TOOLS: [(&str, &str); 5] = [
    ("wrk", "wrk"),
    ("hyperfine", "hyperfine"),
    ("nginx", "nginx"),
    ("prometheus-pushgateway", "prometheus-pushgateway"),
    ("curl", "curl"),
];

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|directory| directory.join(tool).is_file()))
}

/// Builds the `bench_helper` example and returns its path beside this test
/// binary. `cargo test` and `cargo nextest run` build examples with the
/// tests, and then this build does nothing, but a run limited to this test
/// would otherwise find a missing or outdated helper.
fn bench_helper() -> PathBuf {
    let test_binary = std::env::current_exe().expect("the test binary has a path");
    let profile_directory = test_binary.parent().and_then(|deps| deps.parent()).expect("the test binary sits in target/PROFILE/deps");
    let mut build = Command::new(option_env!("CARGO").unwrap_or("cargo"));
    build.args(["build", "--example", "bench_helper"]).current_dir(common::repo_root());
    // Cargo gives a test its package's CARGO_* variables. Build scripts that
    // watch environment variables would see them as a change and rebuild.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("CARGO_") {
            build.env_remove(name);
        }
    }
    if profile_directory.ends_with("release") {
        build.arg("--release");
    }
    let status = build.status().expect("cargo could not be started");
    assert!(status.success(), "`cargo build --example bench_helper` failed with {status}");
    profile_directory.join("examples").join("bench_helper")
}

#[test]
fn harness_smoke_run_prints_results() {
    for (tool, package) in TOOLS {
        assert!(on_path(tool), "{tool} not found: install the Debian package {package}");
    }
    let helper = bench_helper();
    assert!(helper.is_file(), "{} not found after building it", helper.display());

    let output_directory = tempfile::tempdir().unwrap();
    let output = Command::new(common::repo_root().join("scripts/bench/run"))
        .arg("--smoke")
        .env("TOKENSYNC_BIN", env!("CARGO_BIN_EXE_tokensync"))
        .env("BENCH_HELPER", &helper)
        .env("BENCH_OUT", output_directory.path())
        .output()
        .expect("scripts/bench/run could not be started");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "scripts/bench/run --smoke failed with {}\nstdout:\n{stdout}\nstderr:\n{stderr}", output.status);

    let results: Vec<&str> = stdout.lines().filter(|line| line.starts_with("RESULT ")).collect();
    for (scenario, key) in [
        ("api", "ratio="),
        ("metrics", "ratio_to_pushgateway="),
        ("stampede", "issuer_requests_per_round=1"),
        ("start", "ready_ms_median="),
        ("scale", "resident_bytes_per_token="),
    ] {
        let line = results.iter().find(|line| line.starts_with(&format!("RESULT {scenario} ")));
        let line = line.unwrap_or_else(|| panic!("no RESULT line for {scenario}; stdout:\n{stdout}"));
        assert!(line.contains(key), "the {scenario} result lacks {key}: {line}");
    }
}
