//! Engine behaviour against a mock token endpoint in the test process.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Recorder, eventually};
use tokensync::engine::{Engine, EngineOptions, TokenSpec, TokenState, Trigger};
use tokensync::policy::{Backoff, RefreshPolicy};
use tokensync::sink::{FileFormat, FileSink, SessionKey, SessionStore, Sink, SyncFailureReason};
use tokensync::source::{ClientCredentials, FailureReason, OAuth2Settings, RefreshTokenGrant, Source};
use tokensync::{EngineError, Secret};
use wiremock::matchers::{body_string_contains, method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

/// Returns a new token `at-N` that lives `lifetime` seconds for each request.
struct Counter {
    lifetime: u64,
    next: std::sync::atomic::AtomicU64,
    rotate: bool,
}

impl Counter {
    fn new(lifetime: u64) -> Self {
        Counter { lifetime, next: 1.into(), rotate: false }
    }
}

impl Respond for Counter {
    fn respond(&self, _request: &Request) -> ResponseTemplate {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut body = serde_json::json!({"access_token": format!("at-{n}"), "token_type": "bearer", "expires_in": self.lifetime});
        if self.rotate {
            body["refresh_token"] = serde_json::json!(format!("rt-{}", n + 1));
        }
        ResponseTemplate::new(200).set_body_json(body)
    }
}

fn settings(server: &MockServer) -> OAuth2Settings {
    let mut settings = common::oauth2_settings(&format!("{}/token", server.uri()));
    settings.timeout = Duration::from_secs(2);
    settings
}

/// Returns a policy for second-scale tests: refresh at half the lifetime, no jitter.
fn fast_policy() -> RefreshPolicy {
    RefreshPolicy { buffer: Duration::from_secs(300), lifetime_fraction: 0.5, jitter: 0.0, min_interval: Duration::from_millis(100) }
}

fn fast_backoff() -> Backoff {
    Backoff { initial: Duration::from_millis(200), max: Duration::from_secs(1) }
}

fn spec(name: &str, source: Arc<dyn Source>, sinks: Vec<Arc<dyn Sink>>) -> TokenSpec {
    let mut spec = TokenSpec::new(name, Some(source));
    spec.sinks = sinks;
    spec.policy = fast_policy();
    spec.backoff = fast_backoff();
    spec
}

fn engine_with(recorder: &Arc<Recorder>) -> Engine {
    Engine::new(EngineOptions { observer: recorder.clone(), ..EngineOptions::default() })
}

fn client_credentials(server: &MockServer) -> Arc<dyn Source> {
    Arc::new(ClientCredentials::new(settings(server)).unwrap())
}

fn access(engine: &Engine, name: &str) -> Option<String> {
    engine.token(name).map(|token| token.access_token.expose().to_owned())
}

#[tokio::test]
async fn proactive_refresh_before_expiry() {
    let server = MockServer::start().await;
    Mock::given(method("POST")).and(path("/token")).respond_with(Counter::new(2)).mount(&server).await;
    let recorder = Arc::new(Recorder::default());
    let engine = engine_with(&recorder);
    engine.add_token(spec("billing", client_credentials(&server), vec![])).unwrap();

    assert!(eventually(Duration::from_secs(2), || access(&engine, "billing").as_deref() == Some("at-1")).await);
    // A 2 s token with lifetime_fraction 0.5 is replaced after about 1 s, before it expires.
    assert!(eventually(Duration::from_millis(1800), || access(&engine, "billing").as_deref() == Some("at-2")).await);
    assert_eq!(recorder.refreshes("billing", Trigger::Initial), 1);
    assert!(recorder.refreshes("billing", Trigger::Proactive) >= 1);
    assert_eq!(recorder.refreshes("billing", Trigger::Reactive), 0);
    engine.shutdown();
}

#[tokio::test]
async fn failure_keeps_old_token_and_backs_off() {
    let server = MockServer::start().await;
    Mock::given(method("POST")).respond_with(Counter::new(4)).up_to_n_times(1).mount(&server).await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(502).set_body_string("<html>Bad Gateway</html>"))
        .mount(&server)
        .await;
    let recorder = Arc::new(Recorder::default());
    let engine = engine_with(&recorder);
    let directory = tempfile::tempdir().unwrap();
    let file = directory.path().join("billing.token");
    let sink: Arc<dyn Sink> = Arc::new(FileSink::new(file.clone(), FileFormat::Raw, 0o600));
    engine.add_token(spec("billing", client_credentials(&server), vec![sink])).unwrap();

    // The proactive refresh at 2 s fails; retries back off from 200 ms up to 1 s.
    assert!(eventually(Duration::from_secs(4), || recorder.failures("billing", FailureReason::ServerError) >= 2).await);
    assert_eq!(access(&engine, "billing").as_deref(), Some("at-1"), "the valid token is still served");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "at-1", "the sink keeps the valid token");
    let status = &engine.status()[0];
    assert_eq!(status.state, TokenState::Valid);
    assert!(status.consecutive_failures >= 2);
    assert_eq!(status.last_failure, Some(FailureReason::ServerError));
    assert!(!status.reauth_required);

    // Over 1.5 s more, backoff allows only a handful of attempts, not a tight loop.
    let before = server.received_requests().await.unwrap().len();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = server.received_requests().await.unwrap().len();
    assert!(after - before <= 6, "{} attempts in 1.5 s", after - before);
    assert!(after > before, "retries continue");
    engine.shutdown();
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(429).insert_header("Retry-After", "2").set_body_string("slow down"))
        .mount(&server)
        .await;
    let recorder = Arc::new(Recorder::default());
    let engine = engine_with(&recorder);
    engine.add_token(spec("billing", client_credentials(&server), vec![])).unwrap();

    assert!(eventually(Duration::from_secs(1), || recorder.failures("billing", FailureReason::RateLimited) == 1).await);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(server.received_requests().await.unwrap().len(), 1, "no retry before Retry-After");
    assert!(eventually(Duration::from_secs(2), || recorder.failures("billing", FailureReason::RateLimited) == 2).await);
    let next = engine.status()[0].next_refresh_at.unwrap();
    assert!(next > engine.clock().now() + chrono::TimeDelta::milliseconds(1500));
    engine.shutdown();
}

#[tokio::test]
async fn rejected_grant_requires_reauth() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(400).set_body_json(serde_json::json!({"error": "invalid_client"})))
        .mount(&server)
        .await;
    let recorder = Arc::new(Recorder::default());
    let engine = engine_with(&recorder);
    engine.add_token(spec("billing", client_credentials(&server), vec![])).unwrap();

    assert!(eventually(Duration::from_secs(1), || recorder.failures("billing", FailureReason::Rejected) == 1).await);
    let status = &engine.status()[0];
    assert!(status.reauth_required);
    assert_eq!(status.state, TokenState::Missing);
    let message = status.last_error.clone().unwrap();
    assert!(message.contains("400 invalid_client for token `billing`"), "{message}");
    // The retry waits for backoff.max (1 s here), not the short initial delay.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(server.received_requests().await.unwrap().len(), 1);
    engine.shutdown();
}

#[tokio::test]
async fn concurrent_callers_share_one_request() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(Counter::new(3600))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(DelayedCounter(Counter::new(3600), Duration::from_millis(300)))
        .mount(&server)
        .await;
    let recorder = Arc::new(Recorder::default());
    let engine = engine_with(&recorder);
    engine.add_token(spec("billing", client_credentials(&server), vec![])).unwrap();
    assert!(eventually(Duration::from_secs(2), || access(&engine, "billing").is_some()).await);

    let callers: Vec<_> = (0..200)
        .map(|_| {
            let engine = engine.clone();
            tokio::spawn(async move { engine.invalidate("billing").await })
        })
        .collect();
    let mut tokens = Vec::new();
    for caller in callers {
        tokens.push(caller.await.unwrap().unwrap().access_token.expose().to_owned());
    }
    assert_eq!(server.received_requests().await.unwrap().len(), 2, "one initial and one shared reactive request");
    assert!(tokens.iter().all(|token| token == &tokens[0]), "every caller receives the same token");
    assert_eq!(recorder.refreshes("billing", Trigger::Reactive), 1);
    engine.shutdown();
}

struct DelayedCounter(Counter, Duration);

impl Respond for DelayedCounter {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        self.0.respond(request).set_delay(self.1)
    }
}

#[tokio::test]
async fn ensure_fresh_refreshes_expired_token() {
    let server = MockServer::start().await;
    Mock::given(method("POST")).respond_with(Counter::new(1)).mount(&server).await;
    let recorder = Arc::new(Recorder::default());
    let engine = engine_with(&recorder);
    let mut spec = spec("billing", client_credentials(&server), vec![]);
    // A refresh point far beyond the 1 s lifetime, so only a reactive refresh can help.
    spec.policy.min_interval = Duration::from_secs(60);
    engine.add_token(spec).unwrap();
    assert!(eventually(Duration::from_secs(2), || access(&engine, "billing").is_some()).await);

    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(engine.status()[0].state, TokenState::Expired);
    let token = engine.ensure_fresh("billing").await.unwrap();
    assert_eq!(token.access_token.expose(), "at-2");
    assert_eq!(recorder.refreshes("billing", Trigger::Reactive), 1);
    assert!(matches!(engine.ensure_fresh("nope").await, Err(EngineError::UnknownToken(_))));
    engine.shutdown();
}

#[tokio::test]
async fn failing_sink_does_not_block_others() {
    let server = MockServer::start().await;
    Mock::given(method("POST")).respond_with(Counter::new(3600)).mount(&server).await;
    let recorder = Arc::new(Recorder::default());
    let engine = engine_with(&recorder);
    let directory = tempfile::tempdir().unwrap();
    let good = directory.path().join("good.token");
    let bad = directory.path().join("missing-dir").join("bad.token");
    let good_sink: Arc<dyn Sink> = Arc::new(FileSink::new(good.clone(), FileFormat::Json, 0o600));
    let bad_sink: Arc<dyn Sink> = Arc::new(FileSink::new(bad.clone(), FileFormat::Raw, 0o600));
    let bad_id = bad_sink.id().to_owned();
    engine.add_token(spec("billing", client_credentials(&server), vec![bad_sink, good_sink])).unwrap();

    assert!(eventually(Duration::from_secs(2), || good.exists()).await);
    let written: serde_json::Value = serde_json::from_slice(&std::fs::read(&good).unwrap()).unwrap();
    assert_eq!(written["access_token"], "at-1");
    assert_eq!(written["token_type"], "Bearer");
    assert!(written["expires_at"].as_str().unwrap().ends_with('Z'));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&good).unwrap().permissions().mode() & 0o777, 0o600);

    assert!(eventually(Duration::from_secs(2), || recorder.sync_failures(&bad_id, SyncFailureReason::NotFound) >= 2).await);
    let status = &engine.status()[0];
    let bad_status = status.sinks.iter().find(|sink| sink.id == bad_id).unwrap();
    assert!(bad_status.consecutive_failures >= 2);
    assert!(bad_status.last_success_at.is_none());

    // Once the directory exists, the retry succeeds.
    std::fs::create_dir(bad.parent().unwrap()).unwrap();
    assert!(eventually(Duration::from_secs(3), || bad.exists()).await);
    assert_eq!(std::fs::read_to_string(&bad).unwrap(), "at-1");
    engine.shutdown();
}

fn refresh_source(server: &MockServer, initial: &str) -> Arc<dyn Source> {
    Arc::new(RefreshTokenGrant::new(settings(server), Secret::new(initial), None).unwrap())
}

#[tokio::test]
async fn rotation_is_persisted_and_used() {
    let server = MockServer::start().await;
    let rotating = Counter { lifetime: 2, next: 1.into(), rotate: true };
    Mock::given(method("POST")).and(body_string_contains("refresh_token=rt-")).respond_with(rotating).mount(&server).await;
    let directory = tempfile::tempdir().unwrap();
    let store_path = directory.path().join("session.json");
    let key = SessionKey::generate();
    let (store, _) = SessionStore::open(&store_path, &key);

    let recorder = Arc::new(Recorder::default());
    let engine = engine_with(&recorder);
    let mut spec = spec("reports", refresh_source(&server, "rt-1"), vec![Arc::new(store.clone())]);
    spec.session_store = Some(store);
    engine.add_token(spec).unwrap();

    // Two refreshes: the second must present the refresh token from the first response.
    assert!(eventually(Duration::from_secs(3), || access(&engine, "reports").as_deref() == Some("at-2")).await);
    let requests = server.received_requests().await.unwrap();
    let bodies: Vec<String> = requests.iter().map(|request| String::from_utf8_lossy(&request.body).into_owned()).collect();
    assert!(bodies[0].contains("refresh_token=rt-1"), "{}", bodies[0]);
    assert!(bodies[1].contains("refresh_token=rt-2"), "{}", bodies[1]);

    let (reopened, problems) = SessionStore::open(&store_path, &key);
    assert!(problems.is_empty(), "{problems:?}");
    let saved = reopened.restored("reports").unwrap();
    assert_eq!(saved.token.refresh_token.unwrap().expose(), "rt-3");
    engine.shutdown();
}

#[tokio::test]
async fn restart_restores_without_request() {
    let server = MockServer::start().await;
    Mock::given(method("POST")).respond_with(Counter::new(3600)).mount(&server).await;
    let directory = tempfile::tempdir().unwrap();
    let store_path = directory.path().join("session.json");
    let key = SessionKey::generate();

    {
        let (store, _) = SessionStore::open(&store_path, &key);
        let engine = engine_with(&Arc::new(Recorder::default()));
        let mut spec = spec("billing", client_credentials(&server), vec![Arc::new(store.clone())]);
        spec.session_store = Some(store);
        engine.add_token(spec).unwrap();
        assert!(eventually(Duration::from_secs(2), || store_path.exists()).await);
        engine.shutdown();
    }
    assert_eq!(server.received_requests().await.unwrap().len(), 1);

    let file = directory.path().join("billing.token");
    let (store, problems) = SessionStore::open(&store_path, &key);
    assert!(problems.is_empty());
    let recorder = Arc::new(Recorder::default());
    let engine = engine_with(&recorder);
    let file_sink: Arc<dyn Sink> = Arc::new(FileSink::new(file.clone(), FileFormat::Raw, 0o600));
    let mut spec = spec("billing", client_credentials(&server), vec![file_sink]);
    spec.session_store = Some(store);
    engine.add_token(spec).unwrap();

    assert!(engine.is_ready(), "a restored valid token makes the engine ready at once");
    assert_eq!(access(&engine, "billing").as_deref(), Some("at-1"));
    assert!(eventually(Duration::from_secs(2), || file.exists()).await, "the restored token is synced");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "at-1");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(server.received_requests().await.unwrap().len(), 1, "no token request after the restart");
    engine.shutdown();
}

#[tokio::test]
async fn wrong_key_requests_fresh_token() {
    let server = MockServer::start().await;
    Mock::given(method("POST")).respond_with(Counter::new(3600)).mount(&server).await;
    let directory = tempfile::tempdir().unwrap();
    let store_path = directory.path().join("session.json");
    let (store, _) = SessionStore::open(&store_path, &SessionKey::generate());
    let requested_at = chrono::Utc::now();
    let old = tokensync::Token::bearer("old-at", requested_at, Duration::from_secs(3600));
    store.save("billing", &old, requested_at).unwrap();
    store.save("other", &old, requested_at).unwrap();
    let original: serde_json::Value = serde_json::from_slice(&std::fs::read(&store_path).unwrap()).unwrap();

    let (store, problems) = SessionStore::open(&store_path, &SessionKey::generate());
    assert_eq!(problems.len(), 2);
    assert!(problems.iter().all(|problem| problem.message.contains("failed authentication")));
    let engine = engine_with(&Arc::new(Recorder::default()));
    let mut spec = spec("billing", client_credentials(&server), vec![Arc::new(store.clone())]);
    spec.session_store = Some(store);
    engine.add_token(spec).unwrap();

    assert!(eventually(Duration::from_secs(2), || access(&engine, "billing").as_deref() == Some("at-1")).await);
    assert!(eventually(Duration::from_secs(2), || {
        let now: serde_json::Value = serde_json::from_slice(&std::fs::read(&store_path).unwrap()).unwrap();
        now["entries"]["billing"] != original["entries"]["billing"]
    })
    .await);
    let rewritten: serde_json::Value = serde_json::from_slice(&std::fs::read(&store_path).unwrap()).unwrap();
    assert_eq!(rewritten["entries"]["other"], original["entries"]["other"], "the undecryptable entry is kept");
    engine.shutdown();
}

#[tokio::test]
async fn tampered_store_is_detected() {
    let directory = tempfile::tempdir().unwrap();
    let store_path = directory.path().join("session.json");
    let key = SessionKey::generate();
    let (store, _) = SessionStore::open(&store_path, &key);
    let requested_at = chrono::Utc::now();
    let mut token = tokensync::Token::bearer("at", requested_at, Duration::from_secs(3600));
    token.refresh_token = Some(Secret::new("rt"));
    store.save("billing", &token, requested_at).unwrap();

    let mut file: serde_json::Value = serde_json::from_slice(&std::fs::read(&store_path).unwrap()).unwrap();
    let ciphertext = file["entries"]["billing"]["ciphertext"].as_str().unwrap().to_owned();
    let flipped = if ciphertext.starts_with('A') { format!("B{}", &ciphertext[1..]) } else { format!("A{}", &ciphertext[1..]) };
    file["entries"]["billing"]["ciphertext"] = serde_json::json!(flipped);
    std::fs::write(&store_path, serde_json::to_vec(&file).unwrap()).unwrap();

    let (reopened, problems) = SessionStore::open(&store_path, &key);
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].token.as_deref(), Some("billing"));
    assert!(reopened.restored("billing").is_none());

    std::fs::write(&store_path, b"{ not json").unwrap();
    let (_, problems) = SessionStore::open(&store_path, &key);
    assert_eq!(problems.len(), 1);
    assert!(problems[0].message.contains("not valid JSON"), "{}", problems[0].message);
    assert_eq!(std::fs::read(&store_path).unwrap(), b"{ not json", "a broken store is left untouched");
}

#[tokio::test]
async fn application_fed_token_is_synced() {
    let directory = tempfile::tempdir().unwrap();
    let file = directory.path().join("app.token");
    let engine = engine_with(&Arc::new(Recorder::default()));
    let mut spec = TokenSpec::new("app", None);
    spec.sinks = vec![Arc::new(FileSink::new(file.clone(), FileFormat::Raw, 0o600))];
    engine.add_token(spec).unwrap();
    let token = tokensync::Token::bearer("from-login", chrono::Utc::now(), Duration::from_secs(300));
    engine.sync_token("app", token).unwrap();
    assert!(eventually(Duration::from_secs(2), || file.exists()).await);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "from-login");
    assert_eq!(engine.ensure_fresh("app").await.unwrap().access_token.expose(), "from-login");
    assert!(matches!(engine.invalidate("app").await, Err(EngineError::NoSource(_))));
    engine.shutdown();
}

#[tokio::test]
async fn rejected_refresh_rereads_shared_store() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(body_string_contains("refresh_token=rt-2"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "access_token": "at-from-rt-2", "refresh_token": "rt-3", "expires_in": 3600
        })))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(400).set_body_json(serde_json::json!({"error": "invalid_grant"})))
        .mount(&server)
        .await;
    let directory = tempfile::tempdir().unwrap();
    let store_path = directory.path().join("session.json");
    let key = SessionKey::generate();

    // This process saved an expired token with rt-1 ...
    let earlier = chrono::Utc::now() - chrono::TimeDelta::seconds(20);
    let mut old = tokensync::Token::bearer("at-0", earlier, Duration::from_secs(10));
    old.refresh_token = Some(Secret::new("rt-1"));
    SessionStore::open(&store_path, &key).0.save("shared", &old, earlier).unwrap();
    let (ours, _) = SessionStore::open(&store_path, &key);
    // ... and another process sharing the store has since rotated it to rt-2.
    let mut theirs = tokensync::Token::bearer("at-1", chrono::Utc::now() - chrono::TimeDelta::seconds(5), Duration::from_secs(1));
    theirs.refresh_token = Some(Secret::new("rt-2"));
    SessionStore::open(&store_path, &key).0.save("shared", &theirs, chrono::Utc::now()).unwrap();

    let recorder = Arc::new(Recorder::default());
    let engine = engine_with(&recorder);
    let mut spec = spec("shared", refresh_source(&server, "rt-0"), vec![Arc::new(ours.clone())]);
    spec.session_store = Some(ours);
    engine.add_token(spec).unwrap();

    assert!(eventually(Duration::from_secs(3), || access(&engine, "shared").as_deref() == Some("at-from-rt-2")).await);
    let status = &engine.status()[0];
    assert!(!status.reauth_required, "a rotation by another process is not a dead grant");
    let bodies: Vec<String> = server.received_requests().await.unwrap().iter().map(|request| String::from_utf8_lossy(&request.body).into_owned()).collect();
    assert_eq!(bodies.len(), 2, "{bodies:?}");
    assert!(bodies[0].contains("refresh_token=rt-1"));
    assert!(bodies[1].contains("refresh_token=rt-2"));
    engine.shutdown();
}
