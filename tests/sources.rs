//! The http_login, exec and file sources, each against a local server,
//! script or file, and their configuration keys.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use common::{Recorder, eventually};
use tokensync::config;
use tokensync::engine::{Engine, EngineOptions, TokenSpec};
use tokensync::source::{
    ExecSettings, ExecSource, FailureReason, FetchRequest, FileSource, FileSourceSettings, HttpLogin, HttpLoginSettings, RequestTemplate,
    Source,
};
use tokensync::token::ExpirySource;
use tokensync::Secret;
use wiremock::matchers::{body_json, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn request(name: &str) -> FetchRequest<'_> {
    FetchRequest { token_name: name, current: None, requested_at: Utc::now(), fallback_lifetime: Duration::from_secs(3600) }
}

fn template(url: String, body: serde_json::Value) -> RequestTemplate {
    RequestTemplate {
        method: reqwest::Method::POST,
        url: url.parse().unwrap(),
        headers: vec![("X-Api-Key".into(), Secret::new("key-1"))],
        body: Some(Secret::new(body.to_string())),
    }
}

#[tokio::test]
async fn http_login_reads_pointers() {
    let server = MockServer::start().await;
    let expires = (Utc::now() + TimeDelta::hours(2)).with_timezone(&chrono::FixedOffset::east_opt(3600).unwrap());
    Mock::given(method("POST"))
        .and(path("/login"))
        .and(header("x-api-key", "key-1"))
        .and(body_json(serde_json::json!({"user": "svc", "password": "pw"})))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "data": {"accessToken": "AT-login", "expiresAt": expires.to_rfc3339(), "refresh": "RT-1"}
        })))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/refresh"))
        .and(body_json(serde_json::json!({"refresh_token": "RT-1"})))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "data": {"accessToken": "AT-refreshed", "expiresAt": 600, "refresh": "RT-2"}
        })))
        .mount(&server)
        .await;

    tokensync::source::install_crypto_provider();
    let source = HttpLogin::new(HttpLoginSettings {
        login: template(format!("{}/login", server.uri()), serde_json::json!({"user": "svc", "password": "pw"})),
        refresh: Some(template(format!("{}/refresh", server.uri()), serde_json::json!({"refresh_token": "{{refresh_token}}"}))),
        token_pointer: "/data/accessToken".into(),
        expiry_pointer: Some("/data/expiresAt".into()),
        refresh_token_pointer: Some("/data/refresh".into()),
        timeout: Duration::from_secs(5),
        ca_file: None,
    })
    .unwrap();

    let first = source.fetch(request("login")).await.unwrap();
    assert_eq!(first.access_token.expose(), "AT-login");
    assert_eq!(first.expiry_source, ExpirySource::AbsoluteField);
    assert_eq!(first.expires_at.timestamp(), expires.timestamp());
    assert_eq!(first.refresh_token.as_ref().unwrap().expose(), "RT-1");

    let mut second_request = request("login");
    second_request.current = Some(&first);
    let second = source.fetch(second_request).await.unwrap();
    assert_eq!(second.access_token.expose(), "AT-refreshed");
    assert_eq!(second.expiry_source, ExpirySource::ExpiresIn, "600 is a lifetime in seconds");
    assert_eq!(second.lifetime, Duration::from_secs(600));
    assert_eq!(second.refresh_token.as_ref().unwrap().expose(), "RT-2");
}

#[tokio::test]
async fn http_login_failures_are_classified() {
    let server = MockServer::start().await;
    Mock::given(path("/bad-login")).respond_with(ResponseTemplate::new(401).set_body_string("wrong password")).mount(&server).await;
    Mock::given(path("/no-token")).respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({"data": {}}))).mount(&server).await;
    Mock::given(path("/html")).respond_with(ResponseTemplate::new(200).set_body_string("<html>")).mount(&server).await;
    Mock::given(path("/down")).respond_with(ResponseTemplate::new(502)).mount(&server).await;
    tokensync::source::install_crypto_provider();

    for (route, reason) in [
        ("bad-login", FailureReason::Rejected),
        ("no-token", FailureReason::InvalidResponse),
        ("html", FailureReason::InvalidResponse),
        ("down", FailureReason::ServerError),
    ] {
        let source = HttpLogin::new(HttpLoginSettings {
            login: template(format!("{}/{route}", server.uri()), serde_json::json!({})),
            refresh: None,
            token_pointer: "/data/accessToken".into(),
            expiry_pointer: None,
            refresh_token_pointer: None,
            timeout: Duration::from_secs(5),
            ca_file: None,
        })
        .unwrap();
        let error = source.fetch(request("login")).await.unwrap_err();
        assert_eq!(error.reason, reason, "{route}: {error}");
    }
}

/// Writes an executable shell script and returns its path.
fn script(directory: &std::path::Path, name: &str, body: &str) -> String {
    let path = directory.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.display().to_string()
}

fn exec(command: Vec<String>, timeout: Duration) -> ExecSource {
    let env = vec![("PLUGIN_SECRET".into(), Secret::new("from-env"))];
    ExecSource::new(ExecSettings { command, env, secret_arguments: vec![], timeout }).unwrap()
}

#[tokio::test]
async fn exec_accepts_credential_shapes() {
    let directory = tempfile::tempdir().unwrap();
    let dir = directory.path();
    let later = Utc::now() + TimeDelta::hours(1);
    let cases = [
        (
            "kubernetes",
            format!(r#"{{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential","status":{{"token":"k8s-$PLUGIN_SECRET","expirationTimestamp":"{}"}}}}"#, later.format("%Y-%m-%dT%H:%M:%SZ")),
            "k8s-from-env",
        ),
        (
            "aws-offset",
            format!(r#"{{"Version":1,"AccessKeyId":"AKIA","SecretAccessKey":"sk","SessionToken":"st","Expiration":"{}"}}"#, later.with_timezone(&chrono::FixedOffset::east_opt(3600).unwrap()).format("%Y-%m-%dT%H:%M:%S%:z")),
            "",
        ),
        (
            "aws-utc",
            format!(r#"{{"Version":1,"AccessKeyId":"AKIA","SecretAccessKey":"sk","SessionToken":"st","Expiration":"{} UTC"}}"#, later.format("%Y-%m-%dT%H:%M:%S")),
            "",
        ),
    ];
    for (name, output, expected_token) in cases {
        let path = script(dir, name, &format!("cat <<EOF\n{output}\nEOF"));
        let token = exec(vec![path], Duration::from_secs(5)).fetch(request(name)).await.unwrap_or_else(|error| panic!("{name}: {error}"));
        assert_eq!(token.expiry_source, ExpirySource::AbsoluteField, "{name}");
        assert_eq!(token.expires_at.timestamp(), later.timestamp(), "{name}");
        if expected_token.is_empty() {
            let credential: serde_json::Value = serde_json::from_str(token.access_token.expose()).unwrap();
            assert_eq!(credential["SessionToken"], "st", "{name}");
            assert_eq!(token.token_type, "aws_credentials");
        } else {
            assert_eq!(token.access_token.expose(), expected_token, "{name}");
        }
    }
}

#[tokio::test]
async fn exec_failures_are_classified() {
    let directory = tempfile::tempdir().unwrap();
    let dir = directory.path();
    let failing = script(dir, "failing", "echo 'plugin broke' >&2\nexit 3");
    let error = exec(vec![failing], Duration::from_secs(5)).fetch(request("plugin")).await.unwrap_err();
    assert_eq!(error.reason, FailureReason::ServerError);
    assert!(error.message.contains("exit status 3"), "{}", error.message);
    assert!(error.message.contains("plugin broke"), "{}", error.message);

    let slow = script(dir, "slow", "sleep 5");
    let error = exec(vec![slow], Duration::from_millis(300)).fetch(request("plugin")).await.unwrap_err();
    assert_eq!(error.reason, FailureReason::Timeout);

    let garbage = script(dir, "garbage", "echo 'not json, not a token'");
    let error = exec(vec![garbage], Duration::from_secs(5)).fetch(request("plugin")).await.unwrap_err();
    assert_eq!(error.reason, FailureReason::InvalidResponse);

    let bare = script(dir, "bare", "echo ya29.bare-token_value");
    let token = exec(vec![bare], Duration::from_secs(5)).fetch(request("plugin")).await.unwrap();
    assert_eq!(token.access_token.expose(), "ya29.bare-token_value");
    assert_eq!(token.expiry_source, ExpirySource::Fallback);

    let error = exec(vec![dir.join("missing").display().to_string()], Duration::from_secs(5)).fetch(request("plugin")).await.unwrap_err();
    assert_eq!(error.reason, FailureReason::Connect);
}

#[tokio::test]
async fn exec_argument_secret_is_redacted() {
    let directory = tempfile::tempdir().unwrap();
    let echoing = script(directory.path(), "echoing", "echo \"login with $1 failed\" >&2\nexit 1");
    // 12 characters: too short for the redaction of long token-like runs.
    let env = |name: &str| (name == "PLUGIN_PASSWORD").then(|| "pw-arg-12345".to_owned());
    let yaml = format!(
        r#"
tokens:
  - name: plugin
    source:
      type: exec
      command: ["{echoing}", "${{PLUGIN_PASSWORD}}"]
"#
    );
    let parsed = config::parse(&yaml, "test.yaml").unwrap();
    let resolved = config::resolve(&parsed, &env).unwrap();
    let config::ResolvedSource::Exec(settings) = &resolved.tokens[0].source else { panic!("not an exec source") };

    let error = ExecSource::new(settings.clone()).unwrap().fetch(request("plugin")).await.unwrap_err();
    assert_eq!(error.reason, FailureReason::ServerError);
    assert!(error.message.contains("login with [redacted] failed"), "{}", error.message);
    assert!(!error.message.contains("pw-arg-12345"), "{}", error.message);
}

#[tokio::test]
async fn file_source_follows_changes() {
    let directory = tempfile::tempdir().unwrap();
    let file = directory.path().join("token");
    std::fs::write(&file, "first-token\n").unwrap();
    let source: Arc<dyn Source> = Arc::new(FileSource::new(FileSourceSettings { path: file.clone(), lifetime: Some(Duration::from_secs(600)) }));
    let recorder = Arc::new(Recorder::default());
    let engine = Engine::new(EngineOptions { observer: recorder.clone(), ..EngineOptions::default() });
    engine.add_token(TokenSpec::new("external", Some(source))).unwrap();

    let read = |engine: &Engine| engine.token("external").map(|token| token.access_token.expose().to_owned());
    assert!(eventually(Duration::from_secs(2), || read(&engine).as_deref() == Some("first-token")).await);
    let token = engine.token("external").unwrap();
    assert!(token.lifetime <= Duration::from_secs(600));
    assert!(token.lifetime > Duration::from_secs(590));

    // Another system rewrites the file; tokensync picks it up within the 1 s poll.
    tokio::time::sleep(Duration::from_millis(20)).await;
    std::fs::write(&file, "second-token-longer\n").unwrap();
    assert!(eventually(Duration::from_secs(3), || read(&engine).as_deref() == Some("second-token-longer")).await);
    engine.shutdown();
}

#[test]
fn new_source_and_sink_keys_resolve() {
    let directory = tempfile::tempdir().unwrap();
    let dir = directory.path().display();
    std::fs::write(directory.path().join("password"), "pw-from-file\n").unwrap();
    let yaml = format!(
        r#"
tokens:
  - name: portal
    source:
      type: http_login
      login:
        url: http://127.0.0.1:9/login
        headers: {{X-Api-Key: key}}
        body: {{user: svc, password: "${{file:{dir}/password}}", remember: true}}
      token_pointer: /data/accessToken
      expiry_pointer: /data/expiresAt
    sinks:
      - {{type: webhook, url: "http://127.0.0.1:9/hook?key=abc", headers: {{X-Hook: h}}}}
      - {{type: exec, command: [/bin/true]}}
      - {{type: exec, pid_file: {dir}/app.pid, signal: USR1}}
  - name: kube
    source: {{type: exec, command: [/usr/bin/kubectl-plugin, --flag]}}
  - name: external
    source: {{type: file, path: {dir}/token, lifetime: 10m}}
"#
    );
    let parsed = config::parse(&yaml, "test.yaml").unwrap_or_else(|error| panic!("{error}"));
    let resolved = config::resolve(&parsed, &|_| None).unwrap_or_else(|problems| panic!("{problems:#?}"));
    let config::ResolvedSource::HttpLogin(login) = &resolved.tokens[0].source else { panic!("not http_login") };
    let body: serde_json::Value = serde_json::from_str(login.login.body.as_ref().unwrap().expose()).unwrap();
    assert_eq!(body["password"], "pw-from-file");
    assert_eq!(body["remember"], true);
    assert_eq!(resolved.tokens[0].sinks.len(), 3);
    assert!(matches!(resolved.tokens[1].source, config::ResolvedSource::Exec(_)));
    assert!(matches!(resolved.tokens[2].source, config::ResolvedSource::File(_)));
}

#[test]
fn foreign_keys_are_reported() {
    let yaml = "tokens:\n  - name: a\n    source: {type: file, path: /tmp/x, token_url: 'http://127.0.0.1:1/t'}\n    sinks:\n      - {type: webhook, url: 'http://127.0.0.1:1/h', path: /tmp/y}\n";
    let parsed = config::parse(yaml, "test.yaml").unwrap();
    let problems = config::resolve(&parsed, &|_| None).unwrap_err();
    let messages: Vec<String> = problems.iter().map(ToString::to_string).collect();
    assert!(messages.iter().any(|message| message.contains("token_url does not belong to a source of type file")), "{messages:#?}");
    assert!(messages.iter().any(|message| message.contains("path does not belong to a sink of type webhook")), "{messages:#?}");
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let server = MockServer::start().await;
    Mock::given(path("/token"))
        .respond_with(ResponseTemplate::new(307).insert_header("location", format!("{}/elsewhere", server.uri())))
        .mount(&server)
        .await;
    Mock::given(path("/elsewhere"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({"access_token": "redirected", "expires_in": 60})))
        .mount(&server)
        .await;
    let settings = tokensync::source::OAuth2Settings {
        token_url: format!("{}/token", server.uri()).parse().unwrap(),
        client_id: "c".into(),
        client_secret: Some(Secret::new("redirect-secret")),
        auth_method: tokensync::source::AuthMethod::ClientSecretPost,
        scopes: vec![],
        extra_params: vec![],
        timeout: Duration::from_secs(5),
        ca_file: None,
    };
    let source = tokensync::source::ClientCredentials::new(settings).unwrap();
    let error = source.fetch(request("redirected")).await.unwrap_err();
    assert_eq!(error.status, Some(307));
    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 1, "the form with the client secret went nowhere else");
}

#[test]
fn exec_commands_get_a_cleared_environment() {
    let directory = tempfile::tempdir().unwrap();
    let dir = directory.path();
    let seen = dir.join("environment");
    let plugin = script(dir, "plugin", &format!("env > {}\necho env-checked-token", seen.display()));
    let config = dir.join("tokensync.yaml");
    std::fs::write(
        &config,
        format!("tokens:\n  - name: e\n    source: {{type: exec, command: ['{plugin}'], env: {{GIVEN: from-config}}}}\n"),
    )
    .unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tokensync"))
        .args(["check-config", "--online"])
        .arg(&config)
        .env("TOKENSYNC_TEST_SECRET", "daemon-only-secret-value")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let environment = std::fs::read_to_string(&seen).unwrap();
    assert!(environment.contains("GIVEN=from-config"), "the source's env is passed");
    assert!(environment.contains("PATH="), "PATH is inherited");
    assert!(!environment.contains("daemon-only-secret-value"), "tokensync's other variables are withheld");
}
