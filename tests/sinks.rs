//! The webhook and exec sinks, driven by the engine.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use common::{Recorder, eventually};
use tokensync::engine::{Engine, EngineOptions, TokenSpec};
use tokensync::sink::{ExecSink, ExecSinkAction, Sink, SyncFailureReason, WebhookSettings, WebhookSink};
use tokensync::{Secret, Token};
use wiremock::matchers::{header, method};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn engine_with_sinks(recorder: &Arc<Recorder>, sinks: Vec<Arc<dyn Sink>>) -> Engine {
    let engine = Engine::new(EngineOptions { observer: recorder.clone(), ..EngineOptions::default() });
    let mut spec = TokenSpec::new("app", None);
    spec.sinks = sinks;
    spec.backoff.initial = Duration::from_millis(100);
    spec.backoff.max = Duration::from_millis(400);
    engine.add_token(spec).unwrap();
    engine
}

fn token(value: &str) -> Token {
    Token::bearer(value, chrono::Utc::now(), Duration::from_secs(600))
}

#[tokio::test]
async fn webhook_receives_token_and_retries() {
    let server = MockServer::start().await;
    Mock::given(method("POST")).respond_with(ResponseTemplate::new(500)).up_to_n_times(2).mount(&server).await;
    Mock::given(method("POST"))
        .and(header("x-hook-secret", "hook-key"))
        .respond_with(ResponseTemplate::new(204))
        .mount(&server)
        .await;
    tokensync::source::install_crypto_provider();
    let sink = WebhookSink::new(WebhookSettings {
        url: format!("{}/hook?key=query-secret", server.uri()).parse().unwrap(),
        headers: vec![("X-Hook-Secret".into(), Secret::new("hook-key"))],
        timeout: Duration::from_secs(5),
        ca_file: None,
    })
    .unwrap();
    let id = sink.id().to_owned();
    assert!(!id.contains("query-secret"), "the sink id is a metric label and drops the query: {id}");

    let recorder = Arc::new(Recorder::default());
    let engine = engine_with_sinks(&recorder, vec![Arc::new(sink)]);
    engine.sync_token("app", token("hooked-token")).unwrap();

    assert!(eventually(Duration::from_secs(3), || recorder.syncs(&id) == 3).await, "two failures, then success");
    assert_eq!(recorder.sync_failures(&id, SyncFailureReason::HttpError), 2);
    let requests = server.received_requests().await.unwrap();
    let body: serde_json::Value = serde_json::from_slice(&requests[2].body).unwrap();
    assert_eq!(body["token"], "app");
    assert_eq!(body["access_token"], "hooked-token");
    assert_eq!(body["token_type"], "Bearer");
    assert!(body["expires_at"].as_str().unwrap().ends_with('Z'));
    engine.shutdown();
}

#[tokio::test]
async fn webhook_unreachable_is_connect() {
    tokensync::source::install_crypto_provider();
    let port = common::free_port();
    let sink = WebhookSink::new(WebhookSettings {
        url: format!("http://127.0.0.1:{port}/hook").parse().unwrap(),
        headers: vec![],
        timeout: Duration::from_secs(2),
        ca_file: None,
    })
    .unwrap();
    let error = sink.sync("app", &token("t")).await.unwrap_err();
    assert_eq!(error.reason, SyncFailureReason::Connect);
}

#[tokio::test]
async fn exec_sink_gets_token_on_stdin() {
    let directory = tempfile::tempdir().unwrap();
    let output = directory.path().join("received");
    let script = directory.path().join("hook.sh");
    std::fs::write(&script, format!("#!/bin/sh\ncat > {}\n", output.display())).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();

    let sink = ExecSink::new(ExecSinkAction::Command(vec![script.display().to_string()]), Duration::from_secs(5));
    sink.sync("app", &token("stdin-token")).await.unwrap();
    assert_eq!(std::fs::read_to_string(&output).unwrap(), "stdin-token");

    let failing = ExecSink::new(ExecSinkAction::Command(vec!["/bin/false".into()]), Duration::from_secs(5));
    let error = failing.sync("app", &token("t")).await.unwrap_err();
    assert_eq!(error.reason, SyncFailureReason::ExecFailed);
    assert!(error.message.contains("exit status 1"), "{}", error.message);
    assert!(!error.message.contains("stdin-token"));

    let slow = ExecSink::new(ExecSinkAction::Command(vec!["/bin/sleep".into(), "5".into()]), Duration::from_millis(200));
    assert_eq!(slow.sync("app", &token("t")).await.unwrap_err().reason, SyncFailureReason::Timeout);
}

#[tokio::test]
async fn exec_sink_signals_pid_file() {
    let directory = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new("/bin/sleep").arg("30").spawn().unwrap();
    let pid_file = directory.path().join("app.pid");
    std::fs::write(&pid_file, format!("{}\n", child.id())).unwrap();

    let sink = ExecSink::new(ExecSinkAction::Signal { pid_file: pid_file.clone(), signal: libc::SIGTERM }, Duration::from_secs(5));
    sink.sync("app", &token("t")).await.unwrap();
    let status = child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGTERM));

    std::fs::write(&pid_file, "not-a-pid").unwrap();
    assert_eq!(sink.sync("app", &token("t")).await.unwrap_err().reason, SyncFailureReason::ExecFailed);
    std::fs::remove_file(&pid_file).unwrap();
    assert_eq!(sink.sync("app", &token("t")).await.unwrap_err().reason, SyncFailureReason::NotFound);
}
