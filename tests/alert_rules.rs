//! Checks the Prometheus alerting rules, their unit tests and the example
//! Alertmanager and Prometheus configurations.
//!
//! The tool tests run promtool, amtool and a real Alertmanager on a loopback
//! port, from the Debian packages `prometheus` and `prometheus-alertmanager`,
//! and fail with the tool's output.
//! The other tests read the YAML files and check what the tools do not: the
//! labels and annotations every alert needs, runbook anchors, dashboard links,
//! test coverage of every alert, and consistent job selectors.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

const RULES_FILE: &str = "alerts/tokensync.rules.yml";
const RULE_TESTS_FILE: &str = "alerts/tokensync.rules.test.yml";
const ALERTMANAGER_FILE: &str = "alerts/alertmanager.example.yml";
const PROMETHEUS_FILE: &str = "config/prometheus.example.yml";
const RUNBOOK_FILE: &str = "docs/runbook.md";
const DASHBOARDS_DIR: &str = "dashboards";

const RUNBOOK_URL_BASE: &str = "https://github.com/tokensync/tokensync/blob/main/docs/runbook.md#";
const SEVERITIES: [&str; 3] = ["critical", "warning", "info"];

/// Alerts about the whole process rather than one token, whose description
/// cannot name a token.
const PROCESS_ALERTS: [&str; 3] = ["TokenSyncDown", "TokenSyncConfigReloadFailed", "TokenSyncCoordinationDown"];

const PROMTOOL_MISSING: &str = "promtool not found: install the Debian package prometheus";
const AMTOOL_MISSING: &str = "amtool not found: install the Debian package prometheus-alertmanager";
const ALERTMANAGER_MISSING: &str =
    "alertmanager not found: install the Debian package prometheus-alertmanager";

/// Names of the Alertmanager binary: Debian's, then upstream's.
const ALERTMANAGER_BINARIES: [&str; 2] = ["prometheus-alertmanager", "alertmanager"];
/// How long a started Alertmanager may take until `/-/ready` returns 200.
const ALERTMANAGER_START_TIMEOUT: Duration = Duration::from_secs(20);

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn read(relative: &str) -> String {
    let path = repo_path(relative);
    fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()))
}

fn parse_yaml(relative: &str) -> Value {
    serde_saphyr::from_str(&read(relative))
        .unwrap_or_else(|error| panic!("{relative}: invalid YAML: {error}"))
}

/// Runs a tool from the repository root and returns its stdout. Panics with
/// the tool's output if it fails, or with `missing_message` if it is not
/// installed.
fn run_tool(tool: &str, args: &[&str], missing_message: &str) -> String {
    let output = match Command::new(tool)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
    {
        Ok(output) => output,
        Err(error) if error.kind() == ErrorKind::NotFound => panic!("{missing_message}"),
        Err(error) => panic!("failed to run {tool}: {error}"),
    };
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "`{tool} {}` failed ({}).\nstdout:\n{stdout}\nstderr:\n{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr),
    );
    stdout
}

/// Returns every rule (recording and alerting) of every group.
fn all_rules(rules_file: &Value) -> Vec<&Value> {
    rules_file["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|group| group["rules"].as_array().into_iter().flatten())
        .collect()
}

fn alerting_rules(rules_file: &Value) -> Vec<&Value> {
    all_rules(rules_file)
        .into_iter()
        .filter(|rule| rule.get("alert").is_some())
        .collect()
}

fn alert_name(rule: &Value) -> &str {
    rule["alert"].as_str().unwrap_or("<unnamed alert>")
}

fn alert_label<'a>(rule: &'a Value, label: &str) -> &'a str {
    rule["labels"][label].as_str().unwrap_or("")
}

fn annotation<'a>(rule: &'a Value, name: &str) -> &'a str {
    rule["annotations"][name].as_str().unwrap_or("")
}

/// Converts a Markdown heading to the anchor GitHub generates for it:
/// lowercase, punctuation other than `-` and `_` removed, spaces as `-`.
fn github_anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// Returns the anchors of all headings in a Markdown text, skipping fenced
/// code blocks.
fn markdown_anchors(markdown: &str) -> BTreeSet<String> {
    let mut anchors = BTreeSet::new();
    let mut in_code_block = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            in_code_block = !in_code_block;
            continue;
        }
        if in_code_block {
            continue;
        }
        let level = line.chars().take_while(|&c| c == '#').count();
        if (1..=6).contains(&level) && line[level..].starts_with(' ') {
            anchors.insert(github_anchor(&line[level..]));
        }
    }
    anchors
}

/// Returns the values of the `job="..."` matchers in a PromQL expression.
fn job_matcher_values(expr: &str) -> Vec<&str> {
    expr.match_indices("job=\"")
        .map(|(index, matched)| {
            let rest = &expr[index + matched.len()..];
            &rest[..rest.find('"').unwrap_or(rest.len())]
        })
        .collect()
}

// ---------------------------------------------------------------- tool tests

#[test]
fn promtool_check_rules_passes() {
    run_tool(
        "promtool",
        &["check", "rules", RULES_FILE],
        PROMTOOL_MISSING,
    );
}

#[test]
fn promtool_rule_tests_pass() {
    run_tool(
        "promtool",
        &["test", "rules", RULE_TESTS_FILE],
        PROMTOOL_MISSING,
    );
}

#[test]
fn amtool_check_config_passes() {
    run_tool(
        "amtool",
        &["check-config", ALERTMANAGER_FILE],
        AMTOOL_MISSING,
    );
}

#[test]
fn promtool_check_prometheus_example_passes() {
    // Also loads the rules file that rule_files points at.
    run_tool(
        "promtool",
        &["check", "config", PROMETHEUS_FILE],
        PROMTOOL_MISSING,
    );
}

#[test]
fn alertmanager_routes_by_severity() {
    let cases = [
        ("critical", "tokensync-page"),
        ("warning", "tokensync-ticket"),
        ("info", "tokensync-none"),
    ];
    let config_flag = format!("--config.file={ALERTMANAGER_FILE}");
    for (severity, receiver) in cases {
        let severity_label = format!("severity={severity}");
        let args = [
            "config",
            "routes",
            "test",
            config_flag.as_str(),
            "alertname=TokenSyncTokenExpired",
            "job=tokensync",
            "token=billing",
            severity_label.as_str(),
        ];
        let output = run_tool("amtool", &args, AMTOOL_MISSING);
        assert_eq!(
            output.trim(),
            receiver,
            "an alert with severity={severity} should go to {receiver}, amtool routed it to {:?}",
            output.trim()
        );
    }
}

// ---------------------------------------------------------------- rule content

#[test]
fn rules_file_has_one_group() {
    let rules_file = parse_yaml(RULES_FILE);
    let groups = rules_file["groups"].as_array().map(Vec::len).unwrap_or(0);
    assert_eq!(
        groups, 1,
        "{RULES_FILE} must have exactly one rule group, found {groups}"
    );
}

#[test]
fn alerts_have_severity_label() {
    let rules_file = parse_yaml(RULES_FILE);
    for rule in alerting_rules(&rules_file) {
        let severity = alert_label(rule, "severity");
        assert!(
            SEVERITIES.contains(&severity),
            "{}: label severity is {severity:?}, expected one of {SEVERITIES:?}",
            alert_name(rule)
        );
    }
}

#[test]
fn alerts_have_for_duration() {
    let rules_file = parse_yaml(RULES_FILE);
    for rule in alerting_rules(&rules_file) {
        let duration = rule["for"].as_str().unwrap_or("");
        assert!(
            !duration.is_empty() && duration != "0s" && duration != "0m",
            "{}: `for` is {duration:?}; set a duration so one bad scrape does not fire the alert",
            alert_name(rule)
        );
    }
}

#[test]
fn alerts_have_summary_sentence() {
    let rules_file = parse_yaml(RULES_FILE);
    for rule in alerting_rules(&rules_file) {
        let name = alert_name(rule);
        let summary = annotation(rule, "summary");
        assert!(!summary.is_empty(), "{name}: annotation summary is missing");
        assert!(
            summary.ends_with('.'),
            "{name}: summary {summary:?} should be a sentence ending with a period"
        );
        assert!(
            !summary.contains("{{"),
            "{name}: summary {summary:?} should not be templated; put values in description"
        );
    }
}

#[test]
fn alert_descriptions_name_token_instance_value() {
    let rules_file = parse_yaml(RULES_FILE);
    for rule in alerting_rules(&rules_file) {
        let name = alert_name(rule);
        let description = annotation(rule, "description");
        assert!(
            !description.is_empty(),
            "{name}: annotation description is missing"
        );
        assert!(
            description.contains("$value"),
            "{name}: description does not show $value"
        );
        assert!(
            description.contains("$labels.instance"),
            "{name}: description does not name $labels.instance"
        );
        if !PROCESS_ALERTS.contains(&name) {
            assert!(
                description.contains("$labels.token"),
                "{name}: description does not name $labels.token"
            );
        }
    }
}

#[test]
fn runbook_urls_point_to_runbook_headings() {
    let rules_file = parse_yaml(RULES_FILE);
    let anchors = markdown_anchors(&read(RUNBOOK_FILE));
    for rule in alerting_rules(&rules_file) {
        let name = alert_name(rule);
        let url = annotation(rule, "runbook_url");
        let Some(anchor) = url.strip_prefix(RUNBOOK_URL_BASE) else {
            panic!("{name}: runbook_url {url:?} does not start with {RUNBOOK_URL_BASE}");
        };
        assert!(
            anchors.contains(anchor),
            "{name}: runbook_url anchor #{anchor} matches no heading in {RUNBOOK_FILE}; headings give {anchors:?}"
        );
        assert_eq!(
            anchor,
            github_anchor(name),
            "{name}: runbook_url should point to the section named after the alert"
        );
    }
}

#[test]
fn dashboard_urls_point_to_shipped_dashboards() {
    let mut uids = BTreeSet::new();
    for entry in fs::read_dir(repo_path(DASHBOARDS_DIR)).expect("cannot read dashboards/") {
        let path = entry.unwrap().path();
        if path
            .extension()
            .is_some_and(|extension| extension == "json")
        {
            let dashboard: Value = serde_json::from_str(&fs::read_to_string(&path).unwrap())
                .unwrap_or_else(|error| panic!("{}: invalid JSON: {error}", path.display()));
            uids.insert(dashboard["uid"].as_str().unwrap_or_default().to_string());
        }
    }

    let rules_file = parse_yaml(RULES_FILE);
    for rule in alerting_rules(&rules_file) {
        let name = alert_name(rule);
        let url = annotation(rule, "dashboard_url");
        let links_shipped = uids.iter().any(|uid| url.contains(&format!("/d/{uid}/")));
        assert!(
            links_shipped,
            "{name}: dashboard_url {url:?} links none of the shipped dashboard uids {uids:?}"
        );
        assert!(
            url.contains("var-job="),
            "{name}: dashboard_url {url:?} does not set var-job"
        );
    }
}

#[test]
fn expressions_use_one_job_selector() {
    let rules_file = parse_yaml(RULES_FILE);
    let mut jobs = BTreeSet::new();
    for rule in all_rules(&rules_file) {
        let name = rule["alert"]
            .as_str()
            .or(rule["record"].as_str())
            .unwrap_or("<unnamed rule>");
        let expr = rule["expr"].as_str().unwrap_or("");
        assert!(
            !expr.contains("job=~"),
            "{name}: use job=\"...\" rather than a job regex, so one sed edits every selector"
        );

        // Every raw metric selector needs the job matcher. Recording rule
        // outputs (names with a colon) already carry it.
        // `up{` counts only as the scrape metric, not as the end of a name
        // such as `tokensync_coordination_up{`.
        let scrape_up = expr.match_indices("up{").filter(|(at, _)| *at == 0 || !expr[..*at].ends_with('_')).count();
        let selectors = expr.matches("tokensync_").count() + scrape_up;
        let job_values = job_matcher_values(expr);
        assert_eq!(
            job_values.len(),
            selectors,
            "{name}: {selectors} metric selectors but {} job matchers in:\n{expr}",
            job_values.len()
        );
        jobs.extend(job_values);
    }
    assert_eq!(
        jobs.len(),
        1,
        "the rules select more than one job: {jobs:?}"
    );
}

// ---------------------------------------------------------------- test coverage

#[test]
fn every_alert_has_firing_and_silent_tests() {
    let rules_file = parse_yaml(RULES_FILE);
    let tests_file = parse_yaml(RULE_TESTS_FILE);
    let alert_tests: Vec<&Value> = tests_file["tests"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|test| test["alert_rule_test"].as_array().into_iter().flatten())
        .collect();

    for rule in alerting_rules(&rules_file) {
        let name = alert_name(rule);
        let severity = alert_label(rule, "severity");
        let tests_of_alert: Vec<&&Value> = alert_tests
            .iter()
            .filter(|test| test["alertname"] == name)
            .collect();

        let fires = tests_of_alert.iter().any(|test| {
            test["exp_alerts"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|alert| alert["exp_labels"]["severity"] == severity)
        });
        assert!(
            fires,
            "{name}: no test in {RULE_TESTS_FILE} expects it to fire with severity {severity}"
        );

        let stays_silent = tests_of_alert
            .iter()
            .any(|test| test["exp_alerts"].as_array().is_some_and(Vec::is_empty));
        assert!(
            stays_silent,
            "{name}: no test in {RULE_TESTS_FILE} expects it to stay silent"
        );
    }
}

#[test]
fn rule_tests_expect_all_annotations() {
    let tests_file = parse_yaml(RULE_TESTS_FILE);
    for test in tests_file["tests"].as_array().into_iter().flatten() {
        let test_name = test["name"].as_str().unwrap_or("<unnamed test>");
        for alert_test in test["alert_rule_test"].as_array().into_iter().flatten() {
            for alert in alert_test["exp_alerts"].as_array().into_iter().flatten() {
                for required in ["summary", "description", "runbook_url", "dashboard_url"] {
                    assert!(
                        alert["exp_annotations"][required].is_string(),
                        "test {test_name:?} at {}: an expected alert lacks annotation {required}",
                        alert_test["eval_time"]
                    );
                }
            }
        }
    }
}

#[test]
fn inhibit_rules_name_existing_alerts() {
    let rules_file = parse_yaml(RULES_FILE);
    let alerts: BTreeSet<&str> = alerting_rules(&rules_file)
        .into_iter()
        .map(alert_name)
        .collect();
    let config = parse_yaml(ALERTMANAGER_FILE);

    let inhibit_rules = config["inhibit_rules"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    assert!(
        !inhibit_rules.is_empty(),
        "{ALERTMANAGER_FILE} has no inhibit_rules"
    );
    for inhibit_rule in inhibit_rules {
        for side in ["source_matchers", "target_matchers"] {
            for matcher in inhibit_rule[side].as_array().into_iter().flatten() {
                let matcher = matcher.as_str().unwrap_or("");
                // Only exact names and plain alternations are checked, because
                // a pattern such as "TokenSync.+" names no single alert.
                let Some(value) = matcher
                    .strip_prefix("alertname=\"")
                    .or_else(|| matcher.strip_prefix("alertname=~\""))
                else {
                    continue;
                };
                let value = value.trim_end_matches('"');
                if value.contains(['.', '*', '+', '?', '[', '(']) {
                    continue;
                }
                for name in value.split('|') {
                    assert!(
                        alerts.contains(name),
                        "{ALERTMANAGER_FILE}: inhibit rule matcher {matcher:?} names {name}, which is not an alert in {RULES_FILE}"
                    );
                }
            }
        }
    }
}

// ---------------------------------------------------------------- inhibition in a real Alertmanager

/// An Alertmanager started with a given configuration on a free loopback
/// port, with clustering off. Dropping it kills the process and removes its
/// storage directory.
struct AlertmanagerProcess {
    child: Child,
    url: String,
    directory: PathBuf,
}

impl AlertmanagerProcess {
    fn start(config: &Path) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let directory = std::env::temp_dir().join(format!(
            "tokensync-alertmanager-{}-{nanos}",
            std::process::id()
        ));
        fs::create_dir_all(&directory).unwrap();
        let log_path = directory.join("alertmanager.log");

        // NOTE: another process may take the port between this probe and the
        // start. The readiness check then fails with the log attached.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let args = [
            format!("--config.file={}", config.display()),
            format!("--web.listen-address=127.0.0.1:{port}"),
            "--cluster.listen-address=".to_string(),
            format!("--storage.path={}", directory.join("data").display()),
        ];

        for binary in ALERTMANAGER_BINARIES {
            let log = File::create(&log_path).unwrap();
            let spawned = Command::new(binary)
                .args(&args)
                .stdout(Stdio::null())
                .stderr(Stdio::from(log))
                .spawn();
            match spawned {
                Ok(child) => {
                    let process = AlertmanagerProcess {
                        child,
                        url: format!("http://127.0.0.1:{port}"),
                        directory,
                    };
                    process.wait_until_ready(port);
                    return process;
                }
                Err(error) if error.kind() == ErrorKind::NotFound => continue,
                Err(error) => panic!("failed to start {binary}: {error}"),
            }
        }
        let _ = fs::remove_dir_all(&directory);
        panic!("{ALERTMANAGER_MISSING}");
    }

    fn wait_until_ready(&self, port: u16) {
        let deadline = Instant::now() + ALERTMANAGER_START_TIMEOUT;
        while Instant::now() < deadline {
            if http_get_status_line(port, "/-/ready").is_some_and(|line| line.contains(" 200 ")) {
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
        let log = fs::read_to_string(self.directory.join("alertmanager.log")).unwrap_or_default();
        panic!(
            "alertmanager did not become ready on port {port} within {ALERTMANAGER_START_TIMEOUT:?}; its log:\n{log}"
        );
    }

    /// Sends one alert with the given labels through amtool.
    fn add_alert(&self, labels: &[&str]) {
        let url_flag = format!("--alertmanager.url={}", self.url);
        let mut args = vec![url_flag.as_str(), "alert", "add"];
        args.extend_from_slice(labels);
        run_tool("amtool", &args, AMTOOL_MISSING);
    }

    /// Returns the state (`active` or `suppressed`) of every alert, keyed by
    /// `alertname/severity/instance/token`.
    fn alert_states(&self) -> BTreeMap<String, String> {
        let url_flag = format!("--alertmanager.url={}", self.url);
        let args = [
            url_flag.as_str(),
            "--output=json",
            "alert",
            "query",
            "--active",
            "--inhibited",
        ];
        let output = run_tool("amtool", &args, AMTOOL_MISSING);
        let alerts: Value = serde_json::from_str(&output)
            .unwrap_or_else(|error| panic!("amtool printed invalid JSON ({error}):\n{output}"));

        let mut states = BTreeMap::new();
        for alert in alerts.as_array().into_iter().flatten() {
            let label = |name: &str| alert["labels"][name].as_str().unwrap_or("-").to_string();
            let key = format!(
                "{}/{}/{}/{}",
                label("alertname"),
                label("severity"),
                label("instance"),
                label("token")
            );
            states.insert(
                key,
                alert["status"]["state"].as_str().unwrap_or("").to_string(),
            );
        }
        states
    }
}

impl Drop for AlertmanagerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.directory);
    }
}

/// Sends a plain HTTP/1.0 GET to a loopback port and returns the status line.
fn http_get_status_line(port: u16, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.lines().next().map(str::to_string)
}

#[test]
fn alertmanager_inhibits_dependent_alerts() {
    let alertmanager = AlertmanagerProcess::start(&repo_path(ALERTMANAGER_FILE));
    let alerts: [&[&str]; 11] = [
        // billing on instance a has expired.
        &[
            "alertname=TokenSyncTokenExpired",
            "severity=critical",
            "job=tokensync",
            "instance=a",
            "token=billing",
        ],
        &[
            "alertname=TokenSyncTokenExpiringSoon",
            "severity=critical",
            "job=tokensync",
            "instance=a",
            "token=billing",
        ],
        &[
            "alertname=TokenSyncRefreshFailing",
            "severity=warning",
            "job=tokensync",
            "instance=a",
            "token=billing",
        ],
        // payments on instance a fails and expires soon.
        &[
            "alertname=TokenSyncRefreshFailing",
            "severity=critical",
            "job=tokensync",
            "instance=a",
            "token=payments",
        ],
        &[
            "alertname=TokenSyncRefreshFailing",
            "severity=warning",
            "job=tokensync",
            "instance=a",
            "token=payments",
        ],
        // reports on instance a needs a new grant.
        &[
            "alertname=TokenSyncReauthRequired",
            "severity=critical",
            "job=tokensync",
            "instance=a",
            "token=reports",
        ],
        &[
            "alertname=TokenSyncRefreshFailing",
            "severity=warning",
            "job=tokensync",
            "instance=a",
            "token=reports",
        ],
        // Instance b cannot be scraped.
        &[
            "alertname=TokenSyncDown",
            "severity=critical",
            "job=tokensync",
            "instance=b",
        ],
        &[
            "alertname=TokenSyncSyncFailing",
            "severity=warning",
            "job=tokensync",
            "instance=b",
            "token=billing",
            "sink=file:/run/b",
        ],
        // Alerts that nothing inhibits: other instance, other token.
        &[
            "alertname=TokenSyncRefreshFailing",
            "severity=warning",
            "job=tokensync",
            "instance=c",
            "token=billing",
        ],
        &[
            "alertname=TokenSyncSyncFailing",
            "severity=warning",
            "job=tokensync",
            "instance=a",
            "token=billing",
            "sink=file:/run/a",
        ],
    ];
    for labels in alerts {
        alertmanager.add_alert(labels);
    }

    let states = alertmanager.alert_states();
    let expected = [
        ("TokenSyncTokenExpired/critical/a/billing", "active"),
        (
            "TokenSyncTokenExpiringSoon/critical/a/billing",
            "suppressed",
        ),
        ("TokenSyncRefreshFailing/warning/a/billing", "suppressed"),
        ("TokenSyncRefreshFailing/critical/a/payments", "active"),
        ("TokenSyncRefreshFailing/warning/a/payments", "suppressed"),
        ("TokenSyncReauthRequired/critical/a/reports", "active"),
        ("TokenSyncRefreshFailing/warning/a/reports", "suppressed"),
        ("TokenSyncDown/critical/b/-", "active"),
        ("TokenSyncSyncFailing/warning/b/billing", "suppressed"),
        ("TokenSyncRefreshFailing/warning/c/billing", "active"),
        ("TokenSyncSyncFailing/warning/a/billing", "active"),
    ];
    for (key, state) in expected {
        assert_eq!(
            states.get(key).map(String::as_str),
            Some(state),
            "alert {key} should be {state}; Alertmanager reports {states:#?}"
        );
    }
}

// ---------------------------------------------------------------- helpers

#[test]
fn github_anchor_matches_github_slugs() {
    assert_eq!(
        github_anchor("TokenSyncRefreshFailing"),
        "tokensyncrefreshfailing"
    );
    assert_eq!(
        github_anchor(" Changing the job selector "),
        "changing-the-job-selector"
    );
    assert_eq!(
        github_anchor("Time to expiry (seconds)"),
        "time-to-expiry-seconds"
    );
}

#[test]
fn markdown_anchors_skip_code_blocks() {
    let anchors = markdown_anchors(
        "# Runbook\n\n```sh\n# not a heading\n```\n\n## TokenSyncDown\n#hashtag\n",
    );
    let expected: BTreeSet<String> = ["runbook", "tokensyncdown"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(anchors, expected);
}
