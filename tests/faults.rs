//! Fault matrix: how the engine behaves when the issuer or a sink fails.
//!
//! Every case checks the failure reason (through an observer and through
//! `Engine::status`), that the valid token is still served and still synced
//! to the healthy sinks, that retries back off, and that the engine recovers
//! once the fault ends. HTTP-level issuer faults come from wiremock; refused
//! connections, a server that never responds and a trickled body come from a
//! small TCP server in this file. Every server listens on 127.0.0.1 only.
//!
//! A disk-full fault cannot be produced here: it needs a small filesystem,
//! which takes mount privileges, and `/dev/full` cannot back a target that
//! is replaced by rename. `sync_reason_for_os_errors` checks the
//! classification of `ENOSPC` and `EDQUOT` instead.

mod common;

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant, SystemTime};

use common::{Recorder, eventually};
use tokensync::engine::{Engine, EngineOptions, Observer, TokenSpec, TokenState, Trigger};
use tokensync::policy::{Backoff, RefreshPolicy};
use tokensync::sink::{FileFormat, FileSink, SessionKey, SessionStore, Sink, SyncFailureReason};
use tokensync::source::response::MAX_BODY_BYTES;
use tokensync::source::{AuthMethod, ClientCredentials, FailureReason, OAuth2Settings, RefreshTokenGrant, Source};
use tokensync::{EngineError, Secret};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

const TOKEN: &str = "billing";
const CLIENT_SECRET: &str = "fault-matrix-client-secret";
/// Total time allowed for one token request in these tests.
const SOURCE_TIMEOUT: Duration = Duration::from_millis(500);
/// Lifetime of every issued token: long enough to stay valid through every
/// fault window, so a failure never leaves the engine without a valid token.
const TOKEN_LIFETIME_SECONDS: u64 = 60;
/// Time over which retries are counted.
const BACKOFF_WINDOW: Duration = Duration::from_millis(3500);
/// Maximum failed attempts allowed in [`BACKOFF_WINDOW`] under exponential
/// backoff from 200 ms to 1 s with full jitter. A retry loop without backoff
/// makes hundreds of attempts against loopback in that time.
const MAX_ATTEMPTS_IN_WINDOW: usize = 16;

// ---------------------------------------------------------------------------
// Panics in the engine
// ---------------------------------------------------------------------------

/// Panics raised outside the test code: in the engine, its tasks or a dependency.
static FOREIGN_PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Installs, once per process, a panic hook that records every panic whose
/// location lies outside `tests/`. A panic inside a spawned engine task does
/// not fail the test by itself, because tokio catches it.
fn record_foreign_panics() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_tests = info.location().is_some_and(|location| location.file().starts_with("tests/"));
            if !in_tests {
                FOREIGN_PANICS.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(info.to_string());
            }
            default_hook(info);
        }));
    });
}

fn assert_no_foreign_panics() {
    let panics = FOREIGN_PANICS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    assert!(panics.is_empty(), "panics outside the test code: {panics:?}");
}

// ---------------------------------------------------------------------------
// Observer with timestamps
// ---------------------------------------------------------------------------

/// One finished token request, as reported to the observer.
#[derive(Clone, Debug)]
struct RefreshEvent {
    finished_at: Instant,
    duration: Duration,
    trigger: Trigger,
    outcome: Result<(), FailureReason>,
}

/// A [`Recorder`] that also keeps every refresh event with its time, so that
/// tests can measure the gaps between retries.
#[derive(Default)]
struct TimedRecorder {
    counts: Recorder,
    refreshes: Mutex<Vec<RefreshEvent>>,
}

impl TimedRecorder {
    fn failed_refreshes(&self) -> Vec<RefreshEvent> {
        self.refreshes.lock().unwrap().iter().filter(|event| event.outcome.is_err()).cloned().collect()
    }

    fn total_failures(&self) -> u64 {
        self.counts.refresh_failures.lock().unwrap().values().sum()
    }

    fn sync_failures_of(&self, sink_id: &str) -> u64 {
        SyncFailureReason::ALL.iter().map(|reason| self.counts.sync_failures(sink_id, *reason)).sum()
    }
}

impl Observer for TimedRecorder {
    fn refresh_finished(&self, name: &str, trigger: Trigger, duration: Duration, outcome: Result<(), FailureReason>) {
        self.counts.refresh_finished(name, trigger, duration, outcome);
        self.refreshes.lock().unwrap().push(RefreshEvent { finished_at: Instant::now(), duration, trigger, outcome });
    }

    fn sync_finished(&self, name: &str, sink_id: &str, outcome: Result<(), SyncFailureReason>) {
        self.counts.sync_finished(name, sink_id, outcome);
    }
}

// ---------------------------------------------------------------------------
// Engine setup
// ---------------------------------------------------------------------------

fn settings(token_url: &str) -> OAuth2Settings {
    OAuth2Settings {
        token_url: token_url.parse().unwrap(),
        client_id: "client".into(),
        client_secret: Some(Secret::new(CLIENT_SECRET)),
        auth_method: AuthMethod::ClientSecretBasic,
        scopes: vec![],
        extra_params: vec![],
        timeout: SOURCE_TIMEOUT,
        ca_file: None,
    }
}

/// Refreshes 600 ms after each 60 s token is issued (1 % of its lifetime), so
/// the first proactive refresh meets the fault long before the token expires.
fn early_refresh_policy() -> RefreshPolicy {
    RefreshPolicy { buffer: Duration::from_secs(300), lifetime_fraction: 0.01, jitter: 0.0, min_interval: Duration::from_millis(100) }
}

/// Returns the backoff of tests/engine.rs: 200 ms doubling up to 1 s.
fn fast_backoff() -> Backoff {
    Backoff { initial: Duration::from_millis(200), max: Duration::from_secs(1) }
}

fn new_engine(recorder: &Arc<TimedRecorder>) -> Engine {
    Engine::new(EngineOptions { observer: recorder.clone(), ..EngineOptions::default() })
}

fn access(engine: &Engine) -> Option<String> {
    engine.token(TOKEN).map(|token| token.access_token.expose().to_owned())
}

fn read_raw(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

fn read_json_access(path: &Path) -> Option<String> {
    let bytes = std::fs::read(path).ok()?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    value["access_token"].as_str().map(str::to_owned)
}

/// Returns the names of the temporary files `write_atomic` left in `directory`.
fn temp_files(directory: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(directory) else { return Vec::new() };
    entries
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with('.') && name.contains(".tmp-"))
        .collect()
}

/// Builds the JSON body of a good token response.
fn token_body(access_token: &str) -> serde_json::Value {
    serde_json::json!({"access_token": access_token, "token_type": "bearer", "expires_in": TOKEN_LIFETIME_SECONDS})
}

// ---------------------------------------------------------------------------
// Issuers
// ---------------------------------------------------------------------------

/// Shared state of a test issuer: it serves one good token (`at-1`), then
/// the fault until it is healed, then good tokens again (`at-2`, ...).
#[derive(Default)]
struct IssuerState {
    healed: AtomicBool,
    issued: AtomicU64,
    faulty_answers: AtomicU64,
}

impl IssuerState {
    /// Returns true when the next request must meet the fault.
    fn fault_active(&self) -> bool {
        !self.healed.load(Ordering::SeqCst) && self.issued.load(Ordering::SeqCst) >= 1
    }

    /// Returns the next access token, `at-1`, `at-2`, ...
    fn issue(&self) -> String {
        format!("at-{}", self.issued.fetch_add(1, Ordering::SeqCst) + 1)
    }
}

/// Responds with a good token, or with the fault that `fault` builds at the time of the request.
struct FaultyResponder {
    state: Arc<IssuerState>,
    fault: Box<dyn Fn() -> ResponseTemplate + Send + Sync>,
}

impl Respond for FaultyResponder {
    fn respond(&self, _request: &Request) -> ResponseTemplate {
        if self.state.fault_active() {
            self.state.faulty_answers.fetch_add(1, Ordering::SeqCst);
            return (self.fault)();
        }
        ResponseTemplate::new(200).set_body_json(token_body(&self.state.issue()))
    }
}

/// Faults that wiremock cannot produce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TransportFault {
    /// The port is closed, so every connection attempt is refused.
    Refused,
    /// The server accepts and reads the request but never responds.
    Silent,
    /// The server sends the headers, then one body byte every 100 ms.
    Trickle,
}

/// A hand-written HTTP/1.1 token endpoint on 127.0.0.1 for [`TransportFault`]s.
struct RawIssuer {
    address: SocketAddr,
    fault: TransportFault,
    state: Arc<IssuerState>,
    accept_task: Mutex<Option<JoinHandle<()>>>,
}

impl RawIssuer {
    async fn start(fault: TransportFault) -> RawIssuer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let state = Arc::new(IssuerState::default());
        let task = tokio::spawn(accept_loop(listener, fault, state.clone()));
        RawIssuer { address, fault, state, accept_task: Mutex::new(Some(task)) }
    }

    /// Ends the fault. For [`TransportFault::Refused`], listens on the same port again.
    async fn heal(&self) {
        self.state.healed.store(true, Ordering::SeqCst);
        if self.fault == TransportFault::Refused {
            let listener = TcpListener::bind(self.address)
                .await
                .unwrap_or_else(|error| panic!("cannot listen on {} again: {error}", self.address));
            let task = tokio::spawn(accept_loop(listener, self.fault, self.state.clone()));
            if let Some(old) = self.accept_task.lock().unwrap().replace(task) {
                old.abort();
            }
        }
    }
}

impl Drop for RawIssuer {
    fn drop(&mut self) {
        if let Some(task) = self.accept_task.lock().unwrap().take() {
            task.abort();
        }
    }
}

/// Accepts connections until aborted. Connection tasks live in a `JoinSet`,
/// so aborting this task also ends every open connection.
async fn accept_loop(listener: TcpListener, fault: TransportFault, state: Arc<IssuerState>) {
    let mut connections = JoinSet::new();
    loop {
        let Ok((mut stream, _)) = listener.accept().await else { return };
        if !state.fault_active() {
            let access_token = state.issue();
            let _ = serve_token(&mut stream, &access_token).await;
            if fault == TransportFault::Refused && state.fault_active() {
                // Dropping the listener closes the port: connections are refused from now on.
                return;
            }
            continue;
        }
        state.faulty_answers.fetch_add(1, Ordering::SeqCst);
        match fault {
            TransportFault::Refused => return,
            TransportFault::Silent => {
                connections.spawn(hold_silently(stream));
            }
            TransportFault::Trickle => {
                connections.spawn(trickle_body(stream));
            }
        }
    }
}

/// Reads one request: the header block and a body of `Content-Length` bytes.
async fn read_request(stream: &mut TcpStream) -> io::Result<()> {
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let count = stream.read(&mut chunk).await?;
        if count == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        received.extend_from_slice(&chunk[..count]);
        let Some(end) = received.windows(4).position(|window| window == b"\r\n\r\n") else {
            if received.len() > 64 * 1024 {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "request headers over 64 KiB"));
            }
            continue;
        };
        let headers = String::from_utf8_lossy(&received[..end]).to_ascii_lowercase();
        let content_length: usize = headers
            .lines()
            .find_map(|line| line.strip_prefix("content-length:"))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(0);
        if received.len() >= end + 4 + content_length {
            return Ok(());
        }
    }
}

async fn serve_token(stream: &mut TcpStream, access_token: &str) -> io::Result<()> {
    read_request(stream).await?;
    let body = token_body(access_token).to_string();
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// Reads the request, then keeps the connection open without a response
/// until the client closes it, for at most 30 s.
async fn hold_silently(mut stream: TcpStream) {
    let _ = tokio::time::timeout(Duration::from_secs(30), async {
        read_request(&mut stream).await?;
        let mut chunk = [0u8; 1024];
        while stream.read(&mut chunk).await? > 0 {}
        io::Result::Ok(())
    })
    .await;
}

/// Sends the headers of a valid token response, then its body one byte
/// every 100 ms: about 6 s in all, far past the 500 ms source timeout.
async fn trickle_body(mut stream: TcpStream) {
    let _ = async {
        read_request(&mut stream).await?;
        let body = token_body("at-trickled").to_string();
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await?;
        for byte in body.as_bytes() {
            stream.write_all(std::slice::from_ref(byte)).await?;
            stream.flush().await?;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        io::Result::Ok(())
    }
    .await;
}

/// A token endpoint that serves one good token, then a fault until healed.
enum TestIssuer {
    Mock { server: MockServer, state: Arc<IssuerState> },
    Raw(RawIssuer),
}

impl TestIssuer {
    async fn http(fault: impl Fn() -> ResponseTemplate + Send + Sync + 'static) -> TestIssuer {
        let server = MockServer::start().await;
        let state = Arc::new(IssuerState::default());
        Mock::given(method("POST"))
            .respond_with(FaultyResponder { state: state.clone(), fault: Box::new(fault) })
            .mount(&server)
            .await;
        TestIssuer::Mock { server, state }
    }

    async fn transport(fault: TransportFault) -> TestIssuer {
        TestIssuer::Raw(RawIssuer::start(fault).await)
    }

    fn token_url(&self) -> String {
        match self {
            TestIssuer::Mock { server, .. } => format!("{}/token", server.uri()),
            TestIssuer::Raw(raw) => format!("http://{}/token", raw.address),
        }
    }

    fn state(&self) -> &IssuerState {
        match self {
            TestIssuer::Mock { state, .. } => state,
            TestIssuer::Raw(raw) => &raw.state,
        }
    }

    async fn heal(&self) {
        match self {
            TestIssuer::Mock { state, .. } => state.healed.store(true, Ordering::SeqCst),
            TestIssuer::Raw(raw) => raw.heal().await,
        }
    }
}

// ---------------------------------------------------------------------------
// Issuer fault driver
// ---------------------------------------------------------------------------

/// What an issuer fault must produce.
struct IssuerExpectation {
    reason: FailureReason,
    /// Smallest allowed gap between two failed attempts: the `Retry-After`
    /// delay, or `backoff.max` after a rejection.
    min_gap: Option<Duration>,
    backoff: Backoff,
}

impl IssuerExpectation {
    fn new(reason: FailureReason) -> Self {
        IssuerExpectation { reason, min_gap: None, backoff: fast_backoff() }
    }
}

/// Runs one issuer fault from the first good token to recovery.
async fn check_issuer_fault(issuer: TestIssuer, expected: IssuerExpectation) {
    record_foreign_panics();
    let directory = tempfile::tempdir().unwrap();
    let raw_path = directory.path().join("billing.token");
    let json_path = directory.path().join("billing.json");
    let raw_sink: Arc<dyn Sink> = Arc::new(FileSink::new(raw_path.clone(), FileFormat::Raw, 0o600));
    let json_sink: Arc<dyn Sink> = Arc::new(FileSink::new(json_path.clone(), FileFormat::Json, 0o600));
    let recorder = Arc::new(TimedRecorder::default());
    let engine = new_engine(&recorder);
    let source: Arc<dyn Source> = Arc::new(ClientCredentials::new(settings(&issuer.token_url())).unwrap());
    let mut spec = TokenSpec::new(TOKEN, Some(source));
    spec.sinks = vec![raw_sink, json_sink];
    spec.policy = early_refresh_policy();
    spec.backoff = expected.backoff;
    engine.add_token(spec).unwrap();

    // The first token is obtained and synced to both sinks.
    let synced = eventually(Duration::from_secs(5), || {
        access(&engine).as_deref() == Some("at-1")
            && read_raw(&raw_path).as_deref() == Some("at-1")
            && read_json_access(&json_path).as_deref() == Some("at-1")
    })
    .await;
    assert!(synced, "the first token was not obtained and synced: {:?}", engine.status());

    // The first proactive refresh, about 600 ms later, meets the fault.
    let failed = eventually(Duration::from_secs(8), || recorder.counts.failures(TOKEN, expected.reason) >= 2).await;
    assert!(failed, "expected two `{}` failures, recorded {:?}", expected.reason, recorder.counts.refresh_failures.lock().unwrap());

    let status = engine.status().remove(0);
    assert_eq!(status.last_failure, Some(expected.reason), "status: {status:?}");
    assert_eq!(status.state, TokenState::Valid, "the token is still valid during the fault");
    assert!(status.consecutive_failures >= 2, "consecutive failures: {}", status.consecutive_failures);
    assert_eq!(status.reauth_required, expected.reason == FailureReason::Rejected);
    let message = status.last_error.clone().unwrap_or_default();
    assert!(message.contains("`billing`"), "the message names the token: {message}");
    assert!(!message.contains(CLIENT_SECRET), "the message leaks the client secret: {message}");
    assert_eq!(recorder.total_failures(), recorder.counts.failures(TOKEN, expected.reason), "only `{}` failures", expected.reason);
    assert_eq!(recorder.counts.refreshes(TOKEN, Trigger::Reactive), 0, "no reactive refresh while the token is valid");

    // The valid token is still served and still in every sink.
    assert_eq!(access(&engine).as_deref(), Some("at-1"));
    assert_eq!(engine.ensure_fresh(TOKEN).await.unwrap().access_token.expose(), "at-1", "ensure_fresh serves the valid token");
    assert_eq!(read_raw(&raw_path).as_deref(), Some("at-1"));
    assert_eq!(read_json_access(&json_path).as_deref(), Some("at-1"));

    // Retries back off: few attempts over the window, and they go on.
    let failures_before = recorder.total_failures();
    tokio::time::sleep(BACKOFF_WINDOW).await;
    let attempts = (recorder.total_failures() - failures_before) as usize;
    assert!(attempts <= MAX_ATTEMPTS_IN_WINDOW, "{attempts} failed attempts in {BACKOFF_WINDOW:?}");
    assert!(attempts >= 1, "no retry in {BACKOFF_WINDOW:?}");
    let failed_events = recorder.failed_refreshes();
    if let Some(min_gap) = expected.min_gap {
        for pair in failed_events.windows(2) {
            let gap = pair[1].finished_at - pair[0].finished_at;
            assert!(gap >= min_gap, "a retry came {gap:?} after the previous failure; expected at least {min_gap:?}");
        }
        let status = engine.status().remove(0);
        let planned = status.next_refresh_at.unwrap() - status.last_attempt_at.unwrap();
        assert!(planned.to_std().unwrap() >= min_gap, "the next attempt is planned {planned} after the last one");
    }
    if expected.reason == FailureReason::Timeout {
        for event in &failed_events {
            assert!(event.duration >= SOURCE_TIMEOUT - Duration::from_millis(50), "gave up after {:?}", event.duration);
            assert!(event.duration < SOURCE_TIMEOUT * 4, "the timeout was not enforced: {:?}", event.duration);
        }
    }
    assert!(failed_events.iter().all(|event| event.trigger == Trigger::Proactive), "{failed_events:?}");

    // A consumer that reports the token rejected gets the same failure, not a panic or a hang.
    match tokio::time::timeout(Duration::from_secs(3), engine.invalidate(TOKEN)).await {
        Ok(Err(EngineError::Refresh { reason, .. })) => assert_eq!(reason, expected.reason),
        other => panic!("invalidate during the fault returned {other:?}"),
    }
    assert_eq!(access(&engine).as_deref(), Some("at-1"), "a failed reactive refresh keeps the valid token");
    let faulty_answers = issuer.state().faulty_answers.load(Ordering::SeqCst);
    if !matches!(issuer, TestIssuer::Raw(RawIssuer { fault: TransportFault::Refused, .. })) {
        assert!(faulty_answers >= 2, "the issuer answered {faulty_answers} requests with the fault");
    }

    // Once the fault ends, the next retry obtains a new token and every sink receives it.
    issuer.heal().await;
    let recovered = eventually(Duration::from_secs(6), || access(&engine).is_some_and(|token| token != "at-1")).await;
    assert!(recovered, "no new token after the fault ended: {:?}", engine.status());
    let status = engine.status().remove(0);
    assert_eq!(status.state, TokenState::Valid);
    assert_eq!(status.consecutive_failures, 0);
    assert_eq!(status.last_failure, None);
    assert_eq!(status.last_error, None);
    assert!(!status.reauth_required);
    let sinks_current = eventually(Duration::from_secs(3), || {
        let current = access(&engine);
        current.is_some() && read_raw(&raw_path) == current && read_json_access(&json_path) == current
    })
    .await;
    assert!(sinks_current, "the sinks did not receive the new token: {:?}", engine.status());
    assert!(temp_files(directory.path()).is_empty(), "temporary files left: {:?}", temp_files(directory.path()));

    engine.shutdown();
    assert_no_foreign_panics();
}

// ---------------------------------------------------------------------------
// Issuer faults
// ---------------------------------------------------------------------------

#[tokio::test]
async fn issuer_connection_refused() {
    let issuer = TestIssuer::transport(TransportFault::Refused).await;
    check_issuer_fault(issuer, IssuerExpectation::new(FailureReason::Connect)).await;
}

#[tokio::test]
async fn issuer_never_responds() {
    let issuer = TestIssuer::transport(TransportFault::Silent).await;
    check_issuer_fault(issuer, IssuerExpectation::new(FailureReason::Timeout)).await;
}

#[tokio::test]
async fn issuer_trickles_body_past_timeout() {
    let issuer = TestIssuer::transport(TransportFault::Trickle).await;
    check_issuer_fault(issuer, IssuerExpectation::new(FailureReason::Timeout)).await;
}

#[tokio::test]
async fn issuer_500_with_html() {
    let issuer = TestIssuer::http(|| {
        ResponseTemplate::new(500).set_body_raw("<html><body><h1>Internal Server Error</h1></body></html>", "text/html")
    })
    .await;
    check_issuer_fault(issuer, IssuerExpectation::new(FailureReason::ServerError)).await;
}

#[tokio::test]
async fn issuer_502_with_html() {
    let issuer =
        TestIssuer::http(|| ResponseTemplate::new(502).set_body_raw("<html><body>502 Bad Gateway</body></html>", "text/html")).await;
    check_issuer_fault(issuer, IssuerExpectation::new(FailureReason::ServerError)).await;
}

#[tokio::test]
async fn issuer_429_retry_after_seconds() {
    let issuer = TestIssuer::http(|| {
        ResponseTemplate::new(429).insert_header("Retry-After", "2").set_body_raw("Too Many Requests", "text/plain")
    })
    .await;
    let expected = IssuerExpectation { min_gap: Some(Duration::from_millis(1900)), ..IssuerExpectation::new(FailureReason::RateLimited) };
    check_issuer_fault(issuer, expected).await;
}

#[tokio::test]
async fn issuer_429_retry_after_http_date() {
    // An HTTP-date has whole seconds, so "now + 3 s" requests a delay between 2 and 3 s.
    let issuer = TestIssuer::http(|| {
        let date = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(3));
        ResponseTemplate::new(429).insert_header("Retry-After", date.as_str()).set_body_raw("Too Many Requests", "text/plain")
    })
    .await;
    let expected = IssuerExpectation { min_gap: Some(Duration::from_millis(1900)), ..IssuerExpectation::new(FailureReason::RateLimited) };
    check_issuer_fault(issuer, expected).await;
}

#[tokio::test]
async fn issuer_200_with_invalid_grant() {
    let issuer =
        TestIssuer::http(|| ResponseTemplate::new(200).set_body_json(serde_json::json!({"error": "invalid_grant"}))).await;
    // After a rejection, the engine waits backoff.max (2 s here) between attempts.
    let backoff = Backoff { initial: Duration::from_millis(200), max: Duration::from_secs(2) };
    let expected = IssuerExpectation {
        reason: FailureReason::Rejected,
        min_gap: Some(Duration::from_millis(1900)),
        backoff,
    };
    check_issuer_fault(issuer, expected).await;
}

#[tokio::test]
async fn issuer_200_with_non_json_body() {
    let issuer = TestIssuer::http(|| {
        ResponseTemplate::new(200).set_body_raw("<html><body>Please sign in to continue</body></html>", "text/html")
    })
    .await;
    check_issuer_fault(issuer, IssuerExpectation::new(FailureReason::InvalidResponse)).await;
}

/// Returns a valid token response padded with spaces to exactly `size` bytes.
fn padded_token_body(access_token: &str, size: usize) -> Vec<u8> {
    let mut body = token_body(access_token).to_string().into_bytes();
    assert!(body.len() <= size);
    body.resize(size, b' ');
    body
}

#[tokio::test]
async fn issuer_body_over_1_mib() {
    let oversized = padded_token_body("at-oversized", MAX_BODY_BYTES + 1);
    let issuer = TestIssuer::http(move || ResponseTemplate::new(200).set_body_raw(oversized.clone(), "application/json")).await;
    check_issuer_fault(issuer, IssuerExpectation::new(FailureReason::InvalidResponse)).await;
}

#[tokio::test]
async fn issuer_body_of_exactly_1_mib() {
    record_foreign_panics();
    let server = MockServer::start().await;
    let body = padded_token_body("at-largest", MAX_BODY_BYTES);
    Mock::given(method("POST")).respond_with(ResponseTemplate::new(200).set_body_raw(body, "application/json")).mount(&server).await;
    let recorder = Arc::new(TimedRecorder::default());
    let engine = new_engine(&recorder);
    let source: Arc<dyn Source> = Arc::new(ClientCredentials::new(settings(&format!("{}/token", server.uri()))).unwrap());
    let mut spec = TokenSpec::new(TOKEN, Some(source));
    spec.backoff = fast_backoff();
    engine.add_token(spec).unwrap();

    let token = engine.ensure_fresh(TOKEN).await.expect("a body of exactly MAX_BODY_BYTES is accepted");
    assert_eq!(token.access_token.expose(), "at-largest");
    assert_eq!(recorder.total_failures(), 0);
    engine.shutdown();
    assert_no_foreign_panics();
}

#[tokio::test]
async fn rejected_grant_recovers_on_clear_reauth() {
    record_foreign_panics();
    let issuer =
        TestIssuer::http(|| ResponseTemplate::new(200).set_body_json(serde_json::json!({"error": "invalid_grant"}))).await;
    let recorder = Arc::new(TimedRecorder::default());
    let engine = new_engine(&recorder);
    let source: Arc<dyn Source> = Arc::new(ClientCredentials::new(settings(&issuer.token_url())).unwrap());
    let mut spec = TokenSpec::new(TOKEN, Some(source));
    spec.policy = early_refresh_policy();
    // After a rejection the engine waits backoff.max, here far beyond the test.
    spec.backoff = Backoff { initial: Duration::from_millis(200), max: Duration::from_secs(60) };
    engine.add_token(spec).unwrap();

    assert!(eventually(Duration::from_secs(5), || recorder.counts.failures(TOKEN, FailureReason::Rejected) == 1).await);
    assert!(engine.status()[0].reauth_required);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(recorder.counts.failures(TOKEN, FailureReason::Rejected), 1, "no retry before backoff.max");

    // The operator fixes the credential and clears the flag: the retry is immediate.
    issuer.heal().await;
    let cleared_at = Instant::now();
    engine.clear_reauth(TOKEN).unwrap();
    assert!(eventually(Duration::from_secs(3), || access(&engine).as_deref() == Some("at-2")).await);
    assert!(cleared_at.elapsed() < Duration::from_secs(3));
    let status = engine.status().remove(0);
    assert!(!status.reauth_required);
    assert_eq!(status.consecutive_failures, 0);
    engine.shutdown();
    assert_no_foreign_panics();
}

// ---------------------------------------------------------------------------
// Sink faults
// ---------------------------------------------------------------------------

/// Ways to break the directory entry of one file sink. Each fails for root too.
#[derive(Clone, Copy, Debug)]
enum SinkFault {
    /// The sink's directory is replaced by a regular file.
    ParentIsRegularFile,
    /// A symlink to another file sits at the target path.
    SymlinkAtTarget,
    /// A directory sits at the target path.
    DirectoryAtTarget,
    /// A FIFO sits at the target path, standing in for a device such as `/dev/full`.
    FifoAtTarget,
    /// The sink's directory is removed.
    DirectoryRemoved,
}

/// Paths of one sink fault test.
struct SinkLayout {
    /// Directory of the faulty sink.
    faulty_dir: PathBuf,
    faulty_target: PathBuf,
    /// File the planted symlink points to, which must never change.
    victim: PathBuf,
}

impl SinkFault {
    fn inject(self, layout: &SinkLayout) {
        match self {
            SinkFault::ParentIsRegularFile => {
                std::fs::remove_dir_all(&layout.faulty_dir).unwrap();
                std::fs::write(&layout.faulty_dir, b"a regular file").unwrap();
            }
            SinkFault::SymlinkAtTarget => {
                std::fs::write(&layout.victim, b"keep").unwrap();
                std::fs::remove_file(&layout.faulty_target).unwrap();
                std::os::unix::fs::symlink(&layout.victim, &layout.faulty_target).unwrap();
            }
            SinkFault::DirectoryAtTarget => {
                std::fs::remove_file(&layout.faulty_target).unwrap();
                std::fs::create_dir(&layout.faulty_target).unwrap();
                std::fs::write(layout.faulty_target.join("keep"), b"keep").unwrap();
            }
            SinkFault::FifoAtTarget => {
                std::fs::remove_file(&layout.faulty_target).unwrap();
                make_fifo(&layout.faulty_target);
            }
            SinkFault::DirectoryRemoved => std::fs::remove_dir_all(&layout.faulty_dir).unwrap(),
        }
    }

    /// Asserts that the sink left the planted object as it was.
    fn assert_untouched(self, layout: &SinkLayout) {
        match self {
            SinkFault::ParentIsRegularFile => {
                assert_eq!(std::fs::read(&layout.faulty_dir).unwrap(), b"a regular file");
            }
            SinkFault::SymlinkAtTarget => {
                assert_eq!(std::fs::read(&layout.victim).unwrap(), b"keep", "the sink wrote through the symlink");
                let metadata = std::fs::symlink_metadata(&layout.faulty_target).unwrap();
                assert!(metadata.file_type().is_symlink(), "the symlink was replaced");
            }
            SinkFault::DirectoryAtTarget => {
                assert!(layout.faulty_target.is_dir());
                assert_eq!(std::fs::read(layout.faulty_target.join("keep")).unwrap(), b"keep");
            }
            SinkFault::FifoAtTarget => {
                use std::os::unix::fs::FileTypeExt;
                let metadata = std::fs::symlink_metadata(&layout.faulty_target).unwrap();
                assert!(metadata.file_type().is_fifo(), "the FIFO was replaced");
            }
            SinkFault::DirectoryRemoved => assert!(!layout.faulty_dir.exists(), "the sink created its directory"),
        }
    }

    fn heal(self, layout: &SinkLayout) {
        match self {
            SinkFault::ParentIsRegularFile => {
                std::fs::remove_file(&layout.faulty_dir).unwrap();
                std::fs::create_dir(&layout.faulty_dir).unwrap();
            }
            SinkFault::SymlinkAtTarget | SinkFault::FifoAtTarget => std::fs::remove_file(&layout.faulty_target).unwrap(),
            SinkFault::DirectoryAtTarget => std::fs::remove_dir_all(&layout.faulty_target).unwrap(),
            SinkFault::DirectoryRemoved => std::fs::create_dir(&layout.faulty_dir).unwrap(),
        }
    }
}

fn make_fifo(path: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: `c_path` is a valid NUL-terminated path that outlives the call.
    let result = unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) };
    assert_eq!(result, 0, "mkfifo {} failed: {}", path.display(), io::Error::last_os_error());
}

/// Responds to each request with a new token `at-N` that lives an hour, so
/// that new tokens come only from `Engine::refresh_now`.
struct HourTokens(AtomicU64);

impl Respond for HourTokens {
    fn respond(&self, _request: &Request) -> ResponseTemplate {
        let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
        ResponseTemplate::new(200)
            .set_body_json(serde_json::json!({"access_token": format!("at-{n}"), "token_type": "bearer", "expires_in": 3600}))
    }
}

fn stored_access(store_path: &Path, key: &SessionKey) -> Option<String> {
    let (store, problems) = SessionStore::open(store_path, key);
    assert!(problems.is_empty(), "{problems:?}");
    store.restored(TOKEN).map(|stored| stored.token.access_token.expose().to_owned())
}

/// Runs one sink fault: one faulty file sink next to a healthy file sink
/// and a healthy session store.
async fn check_sink_fault(fault: SinkFault, expected: SyncFailureReason) {
    record_foreign_panics();
    let server = MockServer::start().await;
    Mock::given(method("POST")).respond_with(HourTokens(AtomicU64::new(0))).mount(&server).await;

    let directory = tempfile::tempdir().unwrap();
    let healthy_dir = directory.path().join("healthy");
    let faulty_dir = directory.path().join("faulty");
    std::fs::create_dir(&healthy_dir).unwrap();
    std::fs::create_dir(&faulty_dir).unwrap();
    let layout = SinkLayout {
        faulty_target: faulty_dir.join("billing.token"),
        faulty_dir,
        victim: directory.path().join("victim"),
    };
    let healthy_path = healthy_dir.join("billing.token");
    let store_path = healthy_dir.join("session.json");
    let key = SessionKey::generate();
    let (store, _) = SessionStore::open(&store_path, &key);

    let faulty_sink: Arc<dyn Sink> = Arc::new(FileSink::new(layout.faulty_target.clone(), FileFormat::Raw, 0o600));
    let healthy_sink: Arc<dyn Sink> = Arc::new(FileSink::new(healthy_path.clone(), FileFormat::Raw, 0o600));
    let faulty_id = faulty_sink.id().to_owned();
    let healthy_id = healthy_sink.id().to_owned();
    let store_id = store.id().to_owned();

    let recorder = Arc::new(TimedRecorder::default());
    let engine = new_engine(&recorder);
    let source: Arc<dyn Source> = Arc::new(ClientCredentials::new(settings(&format!("{}/token", server.uri()))).unwrap());
    let mut spec = TokenSpec::new(TOKEN, Some(source));
    // The faulty sink comes first, so a stuck worker would delay the others.
    spec.sinks = vec![faulty_sink, healthy_sink, Arc::new(store.clone())];
    spec.session_store = Some(store);
    spec.backoff = fast_backoff();
    engine.add_token(spec).unwrap();

    let synced = eventually(Duration::from_secs(5), || {
        read_raw(&layout.faulty_target).as_deref() == Some("at-1") && read_raw(&healthy_path).as_deref() == Some("at-1")
    })
    .await;
    assert!(synced, "the first token was not synced: {:?}", engine.status());

    // Break the sink, then obtain a new token.
    fault.inject(&layout);
    assert_eq!(engine.refresh_now(TOKEN).await.unwrap().access_token.expose(), "at-2");
    let failing = eventually(Duration::from_secs(5), || recorder.counts.sync_failures(&faulty_id, expected) >= 3).await;
    assert!(failing, "expected three `{expected}` failures of {faulty_id}, status {:?}", engine.status());
    assert_eq!(recorder.sync_failures_of(&faulty_id), recorder.counts.sync_failures(&faulty_id, expected), "only `{expected}` failures");

    // The new token is served and reaches the healthy sinks.
    assert_eq!(access(&engine).as_deref(), Some("at-2"));
    let healthy_synced = eventually(Duration::from_secs(3), || {
        read_raw(&healthy_path).as_deref() == Some("at-2") && stored_access(&store_path, &key).as_deref() == Some("at-2")
    })
    .await;
    assert!(healthy_synced, "the healthy sinks did not receive at-2: {:?}", engine.status());
    assert_eq!(recorder.sync_failures_of(&healthy_id), 0);
    assert_eq!(recorder.sync_failures_of(&store_id), 0);

    let status = engine.status().remove(0);
    assert_eq!(status.state, TokenState::Valid);
    assert_eq!(status.consecutive_failures, 0, "a sink fault is not a refresh failure");
    let faulty_status = status.sinks.iter().find(|sink| sink.id == faulty_id).unwrap();
    assert_eq!(faulty_status.last_failure, Some(expected));
    assert!(faulty_status.consecutive_failures >= 3);
    assert!(faulty_status.last_success_at.is_some(), "the sync of at-1 succeeded");
    let message = faulty_status.last_error.clone().unwrap_or_default();
    assert!(message.contains(&faulty_id), "the message names the sink: {message}");
    assert!(!message.contains("at-2"), "the message contains the token: {message}");
    for sink in status.sinks.iter().filter(|sink| sink.id != faulty_id) {
        assert_eq!(sink.last_failure, None, "{sink:?}");
        assert_eq!(sink.consecutive_failures, 0, "{sink:?}");
    }

    // Retries back off.
    let attempts_before = recorder.counts.syncs(&faulty_id);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let attempts = recorder.counts.syncs(&faulty_id) - attempts_before;
    assert!(attempts <= 12, "{attempts} sync attempts in 2.5 s");
    assert!(attempts >= 1, "the failed sync is not retried");

    // A newer token supersedes the one being retried.
    assert_eq!(engine.refresh_now(TOKEN).await.unwrap().access_token.expose(), "at-3");
    assert!(eventually(Duration::from_secs(3), || read_raw(&healthy_path).as_deref() == Some("at-3")).await);
    fault.assert_untouched(&layout);

    // Once the fault ends, the sink receives the current token.
    fault.heal(&layout);
    let recovered = eventually(Duration::from_secs(4), || read_raw(&layout.faulty_target).as_deref() == Some("at-3")).await;
    assert!(recovered, "the sink did not recover: {:?}", engine.status());
    let mode = std::fs::metadata(&layout.faulty_target).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // The status follows once the write, including the directory fsync, has returned.
    let cleared = eventually(Duration::from_secs(2), || {
        let status = engine.status().remove(0);
        let faulty_status = status.sinks.iter().find(|sink| sink.id == faulty_id).unwrap();
        faulty_status.consecutive_failures == 0 && faulty_status.last_failure.is_none()
    })
    .await;
    assert!(cleared, "the sink status still shows the failure: {:?}", engine.status());
    assert!(temp_files(&layout.faulty_dir).is_empty(), "temporary files left: {:?}", temp_files(&layout.faulty_dir));
    assert!(temp_files(&healthy_dir).is_empty(), "temporary files left: {:?}", temp_files(&healthy_dir));

    engine.shutdown();
    assert_no_foreign_panics();
}

#[tokio::test]
async fn sink_parent_is_regular_file() {
    // ENOTDIR has no reason of its own, so it counts as `io`.
    check_sink_fault(SinkFault::ParentIsRegularFile, SyncFailureReason::NotFound).await;
}

#[tokio::test]
async fn sink_symlink_at_target() {
    check_sink_fault(SinkFault::SymlinkAtTarget, SyncFailureReason::UnsafePath).await;
}

#[tokio::test]
async fn sink_directory_at_target() {
    check_sink_fault(SinkFault::DirectoryAtTarget, SyncFailureReason::UnsafePath).await;
}

#[tokio::test]
async fn sink_fifo_at_target() {
    check_sink_fault(SinkFault::FifoAtTarget, SyncFailureReason::UnsafePath).await;
}

#[tokio::test]
async fn sink_directory_removed() {
    check_sink_fault(SinkFault::DirectoryRemoved, SyncFailureReason::NotFound).await;
}

/// Issues rotating refresh tokens and accepts only the latest one: any other
/// refresh token gets `invalid_grant`.
struct StrictRotation {
    latest: Mutex<String>,
    issued: AtomicU64,
    stale_presentations: AtomicU64,
}

impl Respond for StrictRotation {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let presented = url::form_urlencoded::parse(&request.body)
            .find(|(key, _)| key == "refresh_token")
            .map(|(_, value)| value.into_owned())
            .unwrap_or_default();
        let mut latest = self.latest.lock().unwrap();
        if presented != *latest {
            self.stale_presentations.fetch_add(1, Ordering::SeqCst);
            return ResponseTemplate::new(400).set_body_json(serde_json::json!({"error": "invalid_grant"}));
        }
        let n = self.issued.fetch_add(1, Ordering::SeqCst) + 1;
        *latest = format!("rt-{}", n + 1);
        ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "access_token": format!("at-{n}"),
            "token_type": "bearer",
            "expires_in": 3600,
            "refresh_token": *latest,
        }))
    }
}

#[tokio::test]
async fn session_store_fault_keeps_rotation() {
    record_foreign_panics();
    let server = MockServer::start().await;
    let rotation = Arc::new(StrictRotation {
        latest: Mutex::new("rt-1".to_owned()),
        issued: AtomicU64::new(0),
        stale_presentations: AtomicU64::new(0),
    });
    Mock::given(method("POST")).respond_with(ArcResponder(rotation.clone())).mount(&server).await;

    let directory = tempfile::tempdir().unwrap();
    let file_path = directory.path().join("reports.token");
    let store_path = directory.path().join("session.json");
    // A directory at the store path: every store write fails with `unsafe_path`.
    std::fs::create_dir(&store_path).unwrap();
    let key = SessionKey::generate();
    let (store, problems) = SessionStore::open(&store_path, &key);
    assert_eq!(problems.len(), 1, "reading a directory as the store is reported: {problems:?}");
    let store_id = store.id().to_owned();

    let recorder = Arc::new(TimedRecorder::default());
    let engine = new_engine(&recorder);
    let settings = settings(&format!("{}/token", server.uri()));
    let source: Arc<dyn Source> = Arc::new(RefreshTokenGrant::new(settings, Secret::new("rt-1"), None).unwrap());
    let mut spec = TokenSpec::new(TOKEN, Some(source));
    spec.sinks = vec![Arc::new(store.clone()), Arc::new(FileSink::new(file_path.clone(), FileFormat::Raw, 0o600))];
    spec.session_store = Some(store);
    spec.backoff = fast_backoff();
    engine.add_token(spec).unwrap();

    // Three rotations while the store cannot be written: each one presents
    // the refresh token held in memory, and the file sink follows.
    assert!(eventually(Duration::from_secs(5), || access(&engine).as_deref() == Some("at-1")).await);
    for expected in ["at-2", "at-3"] {
        let token = engine.refresh_now(TOKEN).await.unwrap();
        assert_eq!(token.access_token.expose(), expected);
    }
    assert!(eventually(Duration::from_secs(3), || read_raw(&file_path).as_deref() == Some("at-3")).await);
    assert_eq!(rotation.stale_presentations.load(Ordering::SeqCst), 0, "a stale refresh token was presented");
    assert!(recorder.counts.sync_failures(&store_id, SyncFailureReason::UnsafePath) >= 3);
    assert_eq!(recorder.total_failures(), 0, "store failures do not fail the refresh");
    let status = engine.status().remove(0);
    let store_status = status.sinks.iter().find(|sink| sink.id == store_id).unwrap();
    assert_eq!(store_status.last_failure, Some(SyncFailureReason::UnsafePath));

    // Once the path is free, the store receives the newest refresh token.
    std::fs::remove_dir(&store_path).unwrap();
    let saved = eventually(Duration::from_secs(4), || {
        let (reopened, problems) = SessionStore::open(&store_path, &key);
        problems.is_empty()
            && reopened.restored(TOKEN).and_then(|stored| stored.token.refresh_token).map(|secret| secret.expose().to_owned())
                == Some("rt-4".to_owned())
    })
    .await;
    assert!(saved, "the store did not receive rt-4: {:?}", engine.status());
    engine.shutdown();

    // A restart from the store presents the newest refresh token.
    let (store, problems) = SessionStore::open(&store_path, &key);
    assert!(problems.is_empty(), "{problems:?}");
    let engine = new_engine(&recorder);
    let settings = self::settings(&format!("{}/token", server.uri()));
    let source: Arc<dyn Source> = Arc::new(RefreshTokenGrant::new(settings, Secret::new("rt-1"), None).unwrap());
    let mut spec = TokenSpec::new(TOKEN, Some(source));
    spec.session_store = Some(store);
    engine.add_token(spec).unwrap();
    assert_eq!(engine.refresh_now(TOKEN).await.unwrap().access_token.expose(), "at-4");
    assert_eq!(rotation.stale_presentations.load(Ordering::SeqCst), 0, "the restart presented a stale refresh token");
    engine.shutdown();
    assert_no_foreign_panics();
}

/// Lets a shared responder be mounted while the test keeps a handle to it.
struct ArcResponder<T>(Arc<T>);

impl<T: Respond> Respond for ArcResponder<T> {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        self.0.respond(request)
    }
}

/// Checks the classification of errors that the tests above cannot produce
/// for root, such as a full disk or a read-only filesystem.
#[test]
fn sync_reason_for_os_errors() {
    let cases = [
        (libc::ENOSPC, SyncFailureReason::NoSpace),
        (libc::EDQUOT, SyncFailureReason::NoSpace),
        (libc::EACCES, SyncFailureReason::PermissionDenied),
        (libc::EPERM, SyncFailureReason::PermissionDenied),
        (libc::EROFS, SyncFailureReason::PermissionDenied),
        (libc::ENOENT, SyncFailureReason::NotFound),
        (libc::ENOTDIR, SyncFailureReason::NotFound),
        (libc::EIO, SyncFailureReason::Io),
    ];
    for (errno, expected) in cases {
        let error = io::Error::from_raw_os_error(errno);
        assert_eq!(SyncFailureReason::from_io(&error), expected, "errno {errno} ({error})");
    }
}
