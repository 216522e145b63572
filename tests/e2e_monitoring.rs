//! End to end for the shipped monitoring files. tokensync runs against the
//! real OpenID provider (tests/oidc) and is scraped by a real Prometheus that
//! loads alerts/tokensync.rules.yml and sends its alerts to a real
//! Alertmanager configured from alerts/alertmanager.example.yml. The
//! Alertmanager's webhooks point at a receiver served by this test. The test
//! drives a sink fault and an issuer outage, checks which notifications
//! arrive and when, then runs every query of both dashboards against that
//! Prometheus.
//!
//! Needs `prometheus` (Debian package prometheus), `prometheus-alertmanager`
//! or `alertmanager` (Debian package prometheus-alertmanager), Node.js and
//! `npm ci --prefix tests/oidc`. It waits in real time: it took 124 s on a
//! 2-core machine.
//! Every server it starts listens on 127.0.0.1.

mod common;

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use serde_json::Value;

use common::{ChildGuard, OIDC_CLIENT_ID, OIDC_CLIENT_SECRET, OidcProvider, free_port, get_ok, repo_root, sample, start_tokensync};

/// Name of the one token that tokensync manages here.
const TOKEN: &str = "e2e";
/// Access-token lifetime handed out by the provider. With
/// `lifetime_fraction: 0.5`, tokensync refreshes every 30 s.
const ACCESS_TOKEN_TTL_SECONDS: u64 = 60;
/// Replaces every `for:` of the shipped rules. promtool unit tests cover the
/// real durations, so here they only need to be short.
const RULE_FOR: &str = "2s";
/// Replaces every `keep_firing_for:` of the shipped rules. It must outlast
/// the `for:` of TokenSyncTokenExpired plus one evaluation and one
/// notification, so that TokenSyncRefreshFailing is still active in
/// Alertmanager while TokenSyncTokenExpired inhibits it.
const RULE_KEEP_FIRING_FOR: &str = "20s";
/// Value of the dashboards' `$__rate_interval`: 60 scrapes at the 1 s scrape
/// interval, and shorter than the data the test collects.
const RATE_INTERVAL: &str = "1m";
/// Length of the healthy phase, which also waits for one proactive refresh.
const HEALTHY_PHASE: Duration = Duration::from_secs(40);
/// Bound on the whole scenario. Dropping the scenario stops every process it started.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(230);
/// How long a started server may take until its readiness endpoint returns 200.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

/// Dashboard panels whose queries may return no series while everything is
/// healthy, by panel title.
const EMPTY_WHEN_HEALTHY: &[&str] = &[
    // tokensync creates sync failure series at a sink's first failure.
    "Sync failures by sink and reason",
    // The scenario runs one instance without coordination.
    "Lease attempts by result",
];
/// Dashboard panels whose queries may return no series after the sink fault
/// and the issuer outage, by panel title. Every panel but the coordination
/// one has data then.
const EMPTY_AFTER_FAULTS: &[&str] = &["Lease attempts by result"];

#[tokio::test(flavor = "multi_thread")]
async fn shipped_alerts_and_dashboards_work() {
    let started = Instant::now();
    match tokio::time::timeout(SCENARIO_TIMEOUT, scenario()).await {
        Ok(()) => eprintln!("scenario finished after {:.0?}", started.elapsed()),
        Err(_) => panic!("the scenario did not finish within {SCENARIO_TIMEOUT:?}"),
    }
}

async fn scenario() {
    let directory = tempfile::tempdir().unwrap();
    let dir = directory.path();
    let client = http_client();
    let webhook = WebhookReceiver::start().await;

    // The issuer and tokensync, with one token written to two file sinks.
    let mut provider = OidcProvider::start(ACCESS_TOKEN_TTL_SECONDS);
    let good_path = dir.join("good.token");
    let bad_path = dir.join("bad.token");
    let good_sink = format!("file:{}", good_path.display());
    let bad_sink = format!("file:{}", bad_path.display());
    std::fs::write(dir.join("client-secret"), OIDC_CLIENT_SECRET).unwrap();
    let config = format!(
        r#"
tokens:
  - name: {TOKEN}
    source:
      type: oauth2_client_credentials
      token_url: {token_endpoint}
      client_id: {OIDC_CLIENT_ID}
      client_secret_file: {dir}/client-secret
      scopes: [api.read]
    refresh: {{lifetime_fraction: 0.5, jitter: 0, min_interval: 1s}}
    backoff: {{initial: 1s, max: 4s}}
    sinks:
      - {{type: file, path: {good}}}
      - {{type: file, path: {bad}}}
"#,
        token_endpoint = provider.token_endpoint,
        dir = dir.display(),
        good = good_path.display(),
        bad = bad_path.display(),
    );
    let config_path = dir.join("tokensync.yaml");
    std::fs::write(&config_path, config).unwrap();
    let tokensync_address = format!("127.0.0.1:{}", free_port());
    let tokensync_url = format!("http://{tokensync_address}");
    let tokensync_log = dir.join("tokensync.log");
    let mut tokensync = start_tokensync(
        &["run", "--config", config_path.to_str().unwrap(), "--web.listen-address", &tokensync_address],
        &tokensync_log,
    );
    let ready = poll(STARTUP_TIMEOUT, || async { get_ok(&client, &format!("{tokensync_url}/-/ready")).await }).await;
    assert!(ready.is_some(), "tokensync not ready within {STARTUP_TIMEOUT:?}; its log:\n{}", read_log(&tokensync_log));

    // Alertmanager first, so that Prometheus can deliver from its first evaluation.
    let mut alertmanager = start_alertmanager(dir, &webhook.url);
    alertmanager.wait_ready(&client).await;
    let mut prometheus = start_prometheus(dir, &tokensync_address, &alertmanager.address);
    prometheus.wait_ready(&client).await;
    let prometheus_url = prometheus.url();
    let up = poll(STARTUP_TIMEOUT, || async {
        query_value(&client, &prometheus_url, r#"up{job="tokensync"}"#).await.filter(|up| *up == 1.0)
    })
    .await;
    assert!(up.is_some(), "Prometheus did not scrape tokensync within {STARTUP_TIMEOUT:?}; its log:\n{}", prometheus.log_tail());
    assert_rules_loaded(&client, &prometheus_url).await;

    // Healthy phase: at least one proactive refresh and no notification at all.
    let healthy_started = Instant::now();
    let proactive = format!(r#"tokensync_refreshes_total{{job="tokensync", token="{TOKEN}", trigger="proactive"}}"#);
    loop {
        assert!(
            webhook.alerts().is_empty(),
            "notifications arrived while everything was healthy: {}",
            describe(&webhook.alerts())
        );
        let refreshed = query_value(&client, &prometheus_url, &proactive).await.is_some_and(|count| count >= 1.0);
        if refreshed && healthy_started.elapsed() >= HEALTHY_PHASE {
            break;
        }
        assert!(
            healthy_started.elapsed() < HEALTHY_PHASE + Duration::from_secs(ACCESS_TOKEN_TTL_SECONDS),
            "no proactive refresh seen in Prometheus; tokensync log:\n{}",
            read_log(&tokensync_log)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let firing = query(&client, &prometheus_url, r#"ALERTS{alertstate="firing"}"#).await.unwrap();
    assert!(firing.is_empty(), "alerts fire while everything is healthy: {firing:?}");
    let failures = check_dashboards(&client, &prometheus_url, &tokensync_address, EMPTY_WHEN_HEALTHY).await;
    assert!(failures.is_empty(), "dashboard queries failed while healthy:\n{}", failures.join("\n"));
    eprintln!("healthy phase over after {:.0?}", healthy_started.elapsed());

    // Sink fault: tokensync never writes through a symlink, so the next
    // refresh fails to sync to the bad sink until the link is gone.
    std::fs::remove_file(&bad_path).unwrap();
    std::os::unix::fs::symlink(dir.join("link-target"), &bad_path).unwrap();
    let metrics = get_ok(&client, &format!("{tokensync_url}/metrics")).await.unwrap();
    let next_refresh = sample(&metrics, "tokensync_next_refresh_timestamp_seconds", &[("token", TOKEN)]).unwrap();
    // One refresh interval more, in case the link went in while a refresh ran.
    let sink_timeout = seconds_until(next_refresh) + Duration::from_secs(ACCESS_TOKEN_TTL_SECONDS / 2 + 20);
    let sync_failing = webhook
        .wait_for(sink_timeout, |alert| {
            alert.is_firing("TokenSyncSyncFailing") && alert.label("token") == TOKEN && alert.label("sink") == bad_sink
        })
        .await;
    assert!(
        sync_failing.is_some(),
        "no TokenSyncSyncFailing for token {TOKEN} and sink {bad_sink} within {sink_timeout:.0?}; received: {}",
        describe(&webhook.alerts())
    );
    let unsafe_path = format!(
        r#"tokensync_sync_failures_total{{job="tokensync", token="{TOKEN}", sink="{bad_sink}", reason="unsafe_path"}}"#
    );
    let unsafe_path_failures = query_value(&client, &prometheus_url, &unsafe_path).await;
    assert!(unsafe_path_failures.is_some_and(|count| count >= 3.0), "unsafe_path failures: {unsafe_path_failures:?}");

    let good_failures = format!(
        r#"max_over_time(tokensync_sync_consecutive_failures{{job="tokensync", token="{TOKEN}", sink="{good_sink}"}}[5m])"#
    );
    let good_failures = query_value(&client, &prometheus_url, &good_failures).await;
    assert_eq!(good_failures, Some(0.0), "the good sink {good_sink} must not fail");

    std::fs::remove_file(&bad_path).unwrap();
    let recovered = format!(
        r#"tokensync_sync_consecutive_failures{{job="tokensync", token="{TOKEN}", sink="{bad_sink}"}} == 0"#
    );
    let recovered = poll(Duration::from_secs(15), || async { query_value(&client, &prometheus_url, &recovered).await }).await;
    assert!(recovered.is_some(), "the bad sink did not recover after the symlink was removed");
    let good_contents = std::fs::read(&good_path).unwrap();
    // Compared without printing, because the files hold an access token.
    assert!(std::fs::read(&bad_path).unwrap() == good_contents, "the recovered bad sink does not hold the current token");
    eprintln!("sink fault over");

    // Issuer outage: the refresh-failing alert must come while the token is
    // still valid, then the expired alert, which inhibits it.
    provider.process.terminate(Duration::from_secs(5));
    let metrics = get_ok(&client, &format!("{tokensync_url}/metrics")).await.unwrap();
    let expiry = sample(&metrics, "tokensync_token_expiry_timestamp_seconds", &[("token", TOKEN)]).unwrap();
    let refresh_failing = webhook
        .wait_for(seconds_until(expiry), |alert| alert.is_firing("TokenSyncRefreshFailing") && alert.label("token") == TOKEN)
        .await
        .unwrap_or_else(|| {
            panic!(
                "no TokenSyncRefreshFailing for token {TOKEN} before it expired; received: {}",
                describe(&webhook.alerts())
            )
        });
    assert!(
        unix_seconds(refresh_failing.received_at) < expiry,
        "TokenSyncRefreshFailing arrived at {:.1}, after the token expired at {expiry:.1}",
        unix_seconds(refresh_failing.received_at)
    );
    let states = wait_for_alert_states(&client, &alertmanager.url(), "TokenSyncRefreshFailing", |states| {
        states.get("critical").map(String::as_str) == Some("active")
            && states.get("warning").map(String::as_str) == Some("suppressed")
    })
    .await;
    assert!(states.is_ok(), "while the token is valid, the critical TokenSyncRefreshFailing must inhibit the warning: {states:?}");

    let expired_timeout = seconds_until(expiry) + Duration::from_secs(30);
    let expired = webhook
        .wait_for(expired_timeout, |alert| alert.is_firing("TokenSyncTokenExpired") && alert.label("token") == TOKEN)
        .await
        .unwrap_or_else(|| {
            panic!(
                "no TokenSyncTokenExpired for token {TOKEN} within {expired_timeout:.0?}; received: {}",
                describe(&webhook.alerts())
            )
        });
    assert!(
        unix_seconds(expired.received_at) >= expiry,
        "TokenSyncTokenExpired arrived at {:.1}, before the token expired at {expiry:.1}",
        unix_seconds(expired.received_at)
    );
    let states = wait_for_alert_states(&client, &alertmanager.url(), "TokenSyncRefreshFailing", |states| {
        !states.is_empty() && states.values().all(|state| state == "suppressed")
    })
    .await;
    assert!(states.is_ok(), "TokenSyncTokenExpired must inhibit every TokenSyncRefreshFailing of the token: {states:?}");
    eprintln!("issuer outage over");

    // Dashboards, evaluated on the data of all three phases.
    let failures = check_dashboards(&client, &prometheus_url, &tokensync_address, EMPTY_AFTER_FAULTS).await;
    assert!(failures.is_empty(), "dashboard queries failed after the faults:\n{}", failures.join("\n"));

    // Checks over every notification of the run.
    let alerts = webhook.alerts();
    assert!(webhook.invalid_payloads() == 0, "the webhook received payloads that are not Alertmanager JSON");
    let down: Vec<_> = alerts.iter().filter(|alert| alert.label("alertname") == "TokenSyncDown").cloned().collect();
    assert!(down.is_empty(), "TokenSyncDown was notified: {}", describe(&down));
    let other_sinks: Vec<_> = alerts
        .iter()
        .filter(|alert| alert.label("alertname") == "TokenSyncSyncFailing" && alert.label("sink") != bad_sink)
        .cloned()
        .collect();
    assert!(other_sinks.is_empty(), "TokenSyncSyncFailing for a sink other than {bad_sink}: {}", describe(&other_sinks));
    let sink_resolved = alerts.iter().any(|alert| {
        alert.status == "resolved" && alert.label("alertname") == "TokenSyncSyncFailing" && alert.label("sink") == bad_sink
    });
    assert!(sink_resolved, "TokenSyncSyncFailing of {bad_sink} was not resolved after the sink recovered: {}", describe(&alerts));
    for alert in &alerts {
        let name = alert.label("alertname");
        for annotation in ["summary", "description", "runbook_url", "dashboard_url"] {
            let text = alert.annotations.get(annotation).map_or("", String::as_str);
            assert!(!text.is_empty(), "{name} was notified without the annotation {annotation}");
            // Prometheus puts this text in an annotation whose template failed.
            assert!(!text.contains("error expanding template"), "{name}: annotation {annotation} failed to render: {text}");
        }
        let dashboard_url = &alert.annotations["dashboard_url"];
        assert!(dashboard_url.contains("var-job=tokensync"), "{name}: dashboard_url lacks the job: {dashboard_url}");
        if !alert.label("token").is_empty() {
            let token_parameter = format!("var-token={}", alert.label("token"));
            assert!(dashboard_url.contains(&token_parameter), "{name}: dashboard_url lacks {token_parameter}: {dashboard_url}");
        }
    }
    let after_expiry: Vec<_> = alerts
        .iter()
        .filter(|alert| alert.notification >= expired.notification && alert.is_firing("TokenSyncRefreshFailing"))
        .cloned()
        .collect();
    assert!(
        after_expiry.is_empty(),
        "TokenSyncRefreshFailing was notified with or after TokenSyncTokenExpired: {}",
        describe(&after_expiry)
    );

    let status = tokensync.terminate(Duration::from_secs(10)).expect("tokensync must stop on SIGTERM");
    assert!(status.success(), "tokensync exit status {status}");
    prometheus.process.terminate(Duration::from_secs(10));
    alertmanager.process.terminate(Duration::from_secs(10));
}

// ---------------------------------------------------------------- webhook receiver

/// One alert from one Alertmanager notification.
#[derive(Clone, Debug)]
struct ReceivedAlert {
    /// Index of the notification that carried it, in arrival order.
    notification: usize,
    received_at: SystemTime,
    /// Alertmanager receiver name, such as `tokensync-page`.
    receiver: String,
    /// `firing` or `resolved`.
    status: String,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
}

impl ReceivedAlert {
    fn label(&self, name: &str) -> &str {
        self.labels.get(name).map_or("", String::as_str)
    }

    fn is_firing(&self, alertname: &str) -> bool {
        self.status == "firing" && self.label("alertname") == alertname
    }
}

#[derive(Default)]
struct Received {
    notifications: usize,
    invalid_payloads: usize,
    alerts: Vec<ReceivedAlert>,
}

/// An HTTP server in the test process that stores every webhook notification.
struct WebhookReceiver {
    /// Base URL. Alertmanager posts to `{url}/tokensync/page` and `{url}/tokensync/ticket`.
    url: String,
    received: Arc<Mutex<Received>>,
    server: tokio::task::JoinHandle<()>,
}

impl WebhookReceiver {
    async fn start() -> WebhookReceiver {
        let received = Arc::new(Mutex::new(Received::default()));
        let app = Router::new()
            .route("/tokensync/page", post(receive_notification))
            .route("/tokensync/ticket", post(receive_notification))
            .with_state(received.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        WebhookReceiver { url, received, server }
    }

    fn alerts(&self) -> Vec<ReceivedAlert> {
        self.received.lock().unwrap().alerts.clone()
    }

    fn invalid_payloads(&self) -> usize {
        self.received.lock().unwrap().invalid_payloads
    }

    /// Waits up to `timeout` for a received alert that matches `predicate`.
    async fn wait_for(&self, timeout: Duration, predicate: impl Fn(&ReceivedAlert) -> bool) -> Option<ReceivedAlert> {
        poll(timeout, || async { self.alerts().into_iter().find(|alert| predicate(alert)) }).await
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn receive_notification(State(received): State<Arc<Mutex<Received>>>, body: String) -> StatusCode {
    let received_at = SystemTime::now();
    let mut received = received.lock().unwrap();
    let Ok(payload) = serde_json::from_str::<Value>(&body) else {
        received.invalid_payloads += 1;
        return StatusCode::BAD_REQUEST;
    };
    let Some(alerts) = payload["alerts"].as_array() else {
        received.invalid_payloads += 1;
        return StatusCode::BAD_REQUEST;
    };
    let notification = received.notifications;
    received.notifications += 1;
    for alert in alerts {
        received.alerts.push(ReceivedAlert {
            notification,
            received_at,
            receiver: payload["receiver"].as_str().unwrap_or_default().to_owned(),
            status: alert["status"].as_str().unwrap_or_default().to_owned(),
            labels: string_map(&alert["labels"]),
            annotations: string_map(&alert["annotations"]),
        });
    }
    StatusCode::OK
}

fn string_map(object: &Value) -> BTreeMap<String, String> {
    object
        .as_object()
        .into_iter()
        .flatten()
        .map(|(name, value)| (name.clone(), value.as_str().unwrap_or_default().to_owned()))
        .collect()
}

/// Lists received alerts for failure messages. Alert labels come from metric
/// labels, which tokensync keeps free of token values.
fn describe(alerts: &[ReceivedAlert]) -> String {
    if alerts.is_empty() {
        return "none".to_owned();
    }
    let lines: Vec<String> = alerts
        .iter()
        .map(|alert| {
            format!(
                "\n  #{} at {:.1} to {}: {} {} severity={} token={} sink={}",
                alert.notification,
                unix_seconds(alert.received_at),
                alert.receiver,
                alert.label("alertname"),
                alert.status,
                alert.label("severity"),
                alert.label("token"),
                alert.label("sink"),
            )
        })
        .collect();
    lines.concat()
}

// ---------------------------------------------------------------- Prometheus and Alertmanager

/// A server process of the monitoring stack and its log file.
struct Server {
    process: ChildGuard,
    address: String,
    log_path: PathBuf,
}

impl Server {
    /// Starts the first of `programs` that is installed.
    fn spawn(programs: &[&str], args: &[String], log_path: PathBuf, address: String, package: &str) -> Server {
        for program in programs {
            let log = std::fs::File::create(&log_path).unwrap();
            let spawned = Command::new(program).args(args).stdout(Stdio::null()).stderr(log).spawn();
            match spawned {
                Ok(child) => return Server { process: ChildGuard(Some(child)), address, log_path },
                Err(error) if error.kind() == ErrorKind::NotFound => continue,
                Err(error) => panic!("failed to start {program}: {error}"),
            }
        }
        panic!("{} not found: install the Debian package {package}", programs.join(" or "));
    }

    fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    async fn wait_ready(&mut self, client: &reqwest::Client) {
        let ready_url = format!("{}/-/ready", self.url());
        let ready = poll(STARTUP_TIMEOUT, || async { get_ok(client, &ready_url).await }).await;
        if ready.is_none() {
            let exited = self.process.0.as_mut().and_then(|child| child.try_wait().ok().flatten());
            panic!(
                "{} not ready within {STARTUP_TIMEOUT:?} (exit status: {exited:?}); its log:\n{}",
                self.url(),
                self.log_tail()
            );
        }
    }

    /// Returns the last 40 lines of the log, for failure messages.
    fn log_tail(&self) -> String {
        let log = read_log(&self.log_path);
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|error| format!("(cannot read {}: {error})", path.display()))
}

/// Starts Alertmanager with a copy of alerts/alertmanager.example.yml whose
/// webhooks point at `webhook_url` and whose timers are short.
fn start_alertmanager(dir: &Path, webhook_url: &str) -> Server {
    let shipped = std::fs::read_to_string(repo_root().join("alerts/alertmanager.example.yml")).unwrap();
    let config = rewrite_alertmanager_config(&shipped, webhook_url);
    let config_path = dir.join("alertmanager.yml");
    std::fs::write(&config_path, config).unwrap();
    let address = format!("127.0.0.1:{}", free_port());
    let args = [
        format!("--config.file={}", config_path.display()),
        format!("--storage.path={}", dir.join("alertmanager-data").display()),
        format!("--web.listen-address={address}"),
        // An empty address turns clustering off.
        "--cluster.listen-address=".to_owned(),
    ];
    Server::spawn(
        &["prometheus-alertmanager", "alertmanager"],
        &args,
        dir.join("alertmanager.log"),
        address,
        "prometheus-alertmanager",
    )
}

/// Points every webhook of the Alertmanager example at `webhook_url` and
/// shortens its timers. The routes, receivers and inhibit rules stay as shipped.
fn rewrite_alertmanager_config(shipped: &str, webhook_url: &str) -> String {
    const SHIPPED_WEBHOOK_BASE: &str = "http://127.0.0.1:5001";
    let mut webhooks = 0;
    let mut timers = 0;
    let mut lines = Vec::new();
    for line in shipped.lines() {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        let replacement = if let Some(url) = trimmed.strip_prefix("- url: ") {
            assert!(url.starts_with(SHIPPED_WEBHOOK_BASE), "unexpected webhook URL in the Alertmanager example: {url}");
            webhooks += 1;
            format!("{indent}- url: {}", url.replacen(SHIPPED_WEBHOOK_BASE, webhook_url, 1))
        } else if trimmed.starts_with("group_wait:") || trimmed.starts_with("group_interval:") {
            timers += 1;
            format!("{indent}{}: 1s", trimmed.split(':').next().unwrap())
        } else if trimmed.starts_with("repeat_interval:") {
            timers += 1;
            format!("{indent}repeat_interval: 1h")
        } else {
            line.to_owned()
        };
        lines.push(replacement);
    }
    assert_eq!(webhooks, 2, "the Alertmanager example should have two webhooks (page and ticket)");
    assert!(timers >= 3, "the Alertmanager example should set group_wait, group_interval and repeat_interval");
    let config = lines.join("\n") + "\n";

    let inhibit_rules = |text: &str| text.find("\ninhibit_rules:").map(|start| text[start..].trim_end().to_owned());
    assert!(inhibit_rules(shipped).is_some(), "the Alertmanager example has no inhibit_rules");
    assert_eq!(inhibit_rules(&config), inhibit_rules(shipped), "the inhibit_rules must stay as shipped");
    config
}

/// Starts Prometheus scraping tokensync every second, with a copy of the
/// shipped rules whose `for` and `keep_firing_for` durations are short.
fn start_prometheus(dir: &Path, tokensync_address: &str, alertmanager_address: &str) -> Server {
    let shipped = std::fs::read_to_string(repo_root().join("alerts/tokensync.rules.yml")).unwrap();
    let rules_path = dir.join("tokensync.rules.yml");
    std::fs::write(&rules_path, rewrite_rule_durations(&shipped)).unwrap();
    let config = format!(
        r#"
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - {rules}
alerting:
  alertmanagers:
    - static_configs:
        - targets: ["{alertmanager_address}"]
scrape_configs:
  - job_name: tokensync
    static_configs:
      - targets: ["{tokensync_address}"]
"#,
        rules = rules_path.display()
    );
    let config_path = dir.join("prometheus.yml");
    std::fs::write(&config_path, config).unwrap();
    let address = format!("127.0.0.1:{}", free_port());
    let args = [
        format!("--config.file={}", config_path.display()),
        format!("--storage.tsdb.path={}", dir.join("prometheus-data").display()),
        format!("--web.listen-address={address}"),
    ];
    Server::spawn(&["prometheus"], &args, dir.join("prometheus.log"), address, "prometheus")
}

/// Sets every `for:` to [`RULE_FOR`] and every `keep_firing_for:` to
/// [`RULE_KEEP_FIRING_FOR`], and checks that each alert has a `for:`.
fn rewrite_rule_durations(shipped: &str) -> String {
    let mut alerts = 0;
    let mut durations = 0;
    let mut lines = Vec::new();
    for line in shipped.lines() {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        if trimmed.starts_with("- alert:") {
            alerts += 1;
        }
        let replacement = if trimmed.starts_with("for:") {
            durations += 1;
            format!("{indent}for: {RULE_FOR}")
        } else if trimmed.starts_with("keep_firing_for:") {
            format!("{indent}keep_firing_for: {RULE_KEEP_FIRING_FOR}")
        } else {
            line.to_owned()
        };
        lines.push(replacement);
    }
    assert!(alerts > 0, "no alerting rule found in the shipped rules");
    assert_eq!(durations, alerts, "expected a `for:` in each of the {alerts} alerts");
    lines.join("\n") + "\n"
}

/// Checks that Prometheus loaded every alerting rule with the short `for`.
async fn assert_rules_loaded(client: &reqwest::Client, prometheus_url: &str) {
    let response: Value = client.get(format!("{prometheus_url}/api/v1/rules")).send().await.unwrap().json().await.unwrap();
    let groups = response["data"]["groups"].as_array().cloned().unwrap_or_default();
    let rules: Vec<&Value> = groups.iter().flat_map(|group| group["rules"].as_array().into_iter().flatten()).collect();
    let alerting: Vec<&&Value> = rules.iter().filter(|rule| rule["type"] == "alerting").collect();
    let shipped = std::fs::read_to_string(repo_root().join("alerts/tokensync.rules.yml")).unwrap();
    let shipped_alerts = shipped.lines().filter(|line| line.trim_start().starts_with("- alert:")).count();
    assert_eq!(alerting.len(), shipped_alerts, "Prometheus loaded a different number of alerting rules: {response}");
    for rule in alerting {
        assert_eq!(rule["duration"].as_f64(), Some(2.0), "rule {} keeps its shipped `for`", rule["name"]);
    }
}

/// Polls Alertmanager's alerts named `alertname` of token [`TOKEN`] until
/// `accept` holds for their states keyed by severity (`active`,
/// `suppressed`, ...), for up to 15 s. Returns the last states either way.
async fn wait_for_alert_states(
    client: &reqwest::Client,
    alertmanager_url: &str,
    alertname: &str,
    accept: impl Fn(&BTreeMap<String, String>) -> bool,
) -> Result<BTreeMap<String, String>, BTreeMap<String, String>> {
    let filter = format!(r#"alertname="{alertname}""#);
    let url = url::Url::parse_with_params(&format!("{alertmanager_url}/api/v2/alerts"), [("filter", filter)]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let alerts: Value = client.get(url.clone()).send().await.unwrap().json().await.unwrap();
        let states: BTreeMap<String, String> = alerts
            .as_array()
            .into_iter()
            .flatten()
            .filter(|alert| alert["labels"]["token"] == TOKEN)
            .map(|alert| {
                let severity = alert["labels"]["severity"].as_str().unwrap_or_default().to_owned();
                (severity, alert["status"]["state"].as_str().unwrap_or_default().to_owned())
            })
            .collect();
        if accept(&states) {
            return Ok(states);
        }
        if Instant::now() >= deadline {
            return Err(states);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

// ---------------------------------------------------------------- dashboards

/// Runs every variable query and every panel query of both shipped
/// dashboards and returns the failures. A query fails on an error, and on an
/// empty result unless its panel title is in `empty_by_design`.
async fn check_dashboards(
    client: &reqwest::Client,
    prometheus_url: &str,
    tokensync_address: &str,
    empty_by_design: &[&str],
) -> Vec<String> {
    let mut failures = Vec::new();
    let mut evaluated = 0;
    for file in ["tokensync-overview.json", "tokensync-token.json"] {
        let text = std::fs::read_to_string(repo_root().join("dashboards").join(file)).unwrap();
        let dashboard: Value = serde_json::from_str(&text).unwrap();
        let values = BTreeMap::from([("job", "tokensync"), ("instance", tokensync_address), ("token", TOKEN)]);
        let variables = match dashboard_variables(&dashboard, &values) {
            Ok(variables) => variables,
            Err(error) => {
                failures.push(format!("{file}: {error}"));
                continue;
            }
        };
        failures.extend(check_variable_queries(client, prometheus_url, file, &dashboard, &values, &variables).await);
        for (title, expr) in panel_targets(&dashboard) {
            evaluated += 1;
            let outcome = match interpolate(&expr, &variables) {
                Ok(query_text) => check_panel_query(client, prometheus_url, &query_text, empty_by_design.contains(&title.as_str())).await,
                Err(error) => Err(error),
            };
            if let Err(error) = outcome {
                failures.push(format!("{file}: panel {title:?}: {error}"));
            }
        }
    }
    // The shipped dashboards have 66 targets. This bound catches a walk that
    // misses the panels nested in rows.
    if evaluated < 40 {
        failures.push(format!("only {evaluated} panel queries found; did the panel layout change?"));
    }
    failures
}

/// Formats the value of every dashboard variable, taken from `values`, as
/// Grafana interpolates it into a PromQL query, and adds `__rate_interval`.
///
/// Grafana regex-escapes the values of multi-value and include-all variables
/// (`.` becomes `\\.` inside the PromQL string), because the queries use them
/// with `=~`.
fn dashboard_variables(dashboard: &Value, values: &BTreeMap<&str, &str>) -> Result<BTreeMap<String, String>, String> {
    let mut variables = BTreeMap::from([("__rate_interval".to_owned(), RATE_INTERVAL.to_owned())]);
    for variable in dashboard["templating"]["list"].as_array().into_iter().flatten() {
        let name = variable["name"].as_str().unwrap_or_default();
        if variable["type"] == "datasource" {
            continue;
        }
        let value = values.get(name).ok_or_else(|| format!("variable {name:?} has no value in this test"))?;
        let regex = variable["multi"] == true || variable["includeAll"] == true;
        let formatted = if regex { regex_escape(value) } else { (*value).to_owned() };
        variables.insert(name.to_owned(), formatted);
    }
    Ok(variables)
}

/// Escapes regex metacharacters with a double backslash, as Grafana does.
fn regex_escape(value: &str) -> String {
    let mut escaped = String::new();
    for character in value.chars() {
        if "\\$^*{}[]'+?.()|".contains(character) {
            escaped.push_str("\\\\");
        }
        escaped.push(character);
    }
    escaped
}

/// Replaces `$name` and `${name}` with the values of `variables`. An
/// unknown name is an error, so a new variable cannot slip through untested.
fn interpolate(expr: &str, variables: &BTreeMap<String, String>) -> Result<String, String> {
    let mut output = String::new();
    let mut rest = expr;
    while let Some(position) = rest.find('$') {
        output.push_str(&rest[..position]);
        let after = &rest[position + 1..];
        let (name, length) = match after.strip_prefix('{') {
            Some(braced) => {
                let end = braced.find('}').ok_or_else(|| format!("unclosed `${{` in {expr:?}"))?;
                (&braced[..end], end + 2)
            }
            None => {
                let end = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len());
                (&after[..end], end)
            }
        };
        let value = variables.get(name).ok_or_else(|| format!("unknown variable `${name}` in {expr:?}"))?;
        output.push_str(value);
        rest = &after[length..];
    }
    output.push_str(rest);
    Ok(output)
}

/// Returns (panel title, expression) for every target of every panel,
/// including the panels inside collapsed rows.
fn panel_targets(dashboard: &Value) -> Vec<(String, String)> {
    fn walk(panels: &Value, targets: &mut Vec<(String, String)>) {
        for panel in panels.as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or_default();
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    targets.push((title.to_owned(), expr.to_owned()));
                }
            }
            walk(&panel["panels"], targets);
        }
    }
    let mut targets = Vec::new();
    walk(&dashboard["panels"], &mut targets);
    targets
}

/// Runs one interpolated panel query. An error fails it, and so does an
/// empty result unless `may_be_empty`.
async fn check_panel_query(client: &reqwest::Client, prometheus_url: &str, query_text: &str, may_be_empty: bool) -> Result<(), String> {
    let result = query(client, prometheus_url, query_text).await.map_err(|error| format!("{error}; query: {query_text}"))?;
    if result.is_empty() && !may_be_empty {
        return Err(format!("empty result; query: {query_text}"));
    }
    Ok(())
}

/// Runs the `label_values(selector, label)` query of each variable through
/// `/api/v1/series`, the endpoint Grafana uses for it, and checks that the
/// variable's value from `values` is among the results.
async fn check_variable_queries(
    client: &reqwest::Client,
    prometheus_url: &str,
    file: &str,
    dashboard: &Value,
    values: &BTreeMap<&str, &str>,
    variables: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut failures = Vec::new();
    for variable in dashboard["templating"]["list"].as_array().into_iter().flatten() {
        if variable["type"] != "query" {
            continue;
        }
        let name = variable["name"].as_str().unwrap_or_default();
        let definition = variable["query"].as_str().unwrap_or_default();
        let parsed = definition
            .strip_prefix("label_values(")
            .and_then(|inner| inner.strip_suffix(')'))
            .and_then(|inner| inner.rsplit_once(','));
        let Some((selector, label)) = parsed else {
            failures.push(format!("{file}: variable {name}: not a label_values(selector, label) query: {definition}"));
            continue;
        };
        let selector = match interpolate(selector.trim(), variables) {
            Ok(selector) => selector,
            Err(error) => {
                failures.push(format!("{file}: variable {name}: {error}"));
                continue;
            }
        };
        let url = url::Url::parse_with_params(&format!("{prometheus_url}/api/v1/series"), [("match[]", &selector)]).unwrap();
        let response: Value = client.get(url).send().await.unwrap().json().await.unwrap();
        if response["status"] != "success" {
            failures.push(format!("{file}: variable {name}: series query failed: {response}; selector: {selector}"));
            continue;
        }
        let found: Vec<&str> = response["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|series| series[label.trim()].as_str())
            .collect();
        let expected = values.get(name).copied().unwrap_or_default();
        if !found.contains(&expected) {
            failures.push(format!("{file}: variable {name}: {found:?} lacks {expected:?}; selector: {selector}"));
        }
    }
    failures
}

// ---------------------------------------------------------------- helpers

/// Returns an HTTP client that never uses a proxy, so requests stay on loopback.
fn http_client() -> reqwest::Client {
    // reqwest is built with rustls and no default crypto provider, and
    // building a client needs one even for plain HTTP. An error means that
    // another test in this process installed one already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(5)).build().unwrap()
}

/// Calls `probe` every 250 ms until it returns `Some` or `timeout` passes.
async fn poll<T, F, Fut>(timeout: Duration, mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Runs an instant query and returns its result list (one element for a
/// scalar or string result), or the error Prometheus returned.
async fn query(client: &reqwest::Client, prometheus_url: &str, expr: &str) -> Result<Vec<Value>, String> {
    let url = url::Url::parse_with_params(&format!("{prometheus_url}/api/v1/query"), [("query", expr)]).unwrap();
    let response = client.get(url).send().await.map_err(|error| format!("request failed: {error}"))?;
    let body: Value = response.json().await.map_err(|error| format!("invalid JSON response: {error}"))?;
    if body["status"] != "success" {
        return Err(format!("{}: {}", body["errorType"], body["error"]));
    }
    match &body["data"]["result"] {
        Value::Array(result) => Ok(result.clone()),
        other => Ok(vec![other.clone()]),
    }
}

/// Returns the value of the first sample of an instant query, if any.
async fn query_value(client: &reqwest::Client, prometheus_url: &str, expr: &str) -> Option<f64> {
    let result = query(client, prometheus_url, expr).await.ok()?;
    result.first()?["value"][1].as_str()?.parse().ok()
}

fn unix_seconds(time: SystemTime) -> f64 {
    time.duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// Returns the time from now until a Unix time in seconds, zero if it has passed.
fn seconds_until(unix_time: f64) -> Duration {
    Duration::try_from_secs_f64(unix_time - unix_seconds(SystemTime::now())).unwrap_or(Duration::ZERO)
}
