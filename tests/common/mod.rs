//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokensync::engine::{Observer, Trigger};
use tokensync::sink::SyncFailureReason;
use tokensync::source::FailureReason;

/// Returns a TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Polls `condition` every 50 ms until it is true or `timeout` passes.
pub async fn eventually(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    condition()
}

/// An observer that counts events, for assertions.
#[derive(Default)]
pub struct Recorder {
    pub refreshes: Mutex<BTreeMap<(String, &'static str), u64>>,
    pub refresh_failures: Mutex<BTreeMap<(String, &'static str), u64>>,
    pub syncs: Mutex<BTreeMap<String, u64>>,
    pub sync_failures: Mutex<BTreeMap<(String, &'static str), u64>>,
}

impl Recorder {
    pub fn refreshes(&self, token: &str, trigger: Trigger) -> u64 {
        *self.refreshes.lock().unwrap().get(&(token.to_owned(), trigger.as_str())).unwrap_or(&0)
    }

    pub fn failures(&self, token: &str, reason: FailureReason) -> u64 {
        *self.refresh_failures.lock().unwrap().get(&(token.to_owned(), reason.as_str())).unwrap_or(&0)
    }

    pub fn syncs(&self, sink: &str) -> u64 {
        *self.syncs.lock().unwrap().get(sink).unwrap_or(&0)
    }

    pub fn sync_failures(&self, sink: &str, reason: SyncFailureReason) -> u64 {
        *self.sync_failures.lock().unwrap().get(&(sink.to_owned(), reason.as_str())).unwrap_or(&0)
    }
}

impl Observer for Recorder {
    fn refresh_finished(&self, name: &str, trigger: Trigger, _duration: Duration, outcome: Result<(), FailureReason>) {
        *self.refreshes.lock().unwrap().entry((name.to_owned(), trigger.as_str())).or_default() += 1;
        if let Err(reason) = outcome {
            *self.refresh_failures.lock().unwrap().entry((name.to_owned(), reason.as_str())).or_default() += 1;
        }
    }

    fn sync_finished(&self, _name: &str, sink_id: &str, outcome: Result<(), SyncFailureReason>) {
        *self.syncs.lock().unwrap().entry(sink_id.to_owned()).or_default() += 1;
        if let Err(reason) = outcome {
            *self.sync_failures.lock().unwrap().entry((sink_id.to_owned(), reason.as_str())).or_default() += 1;
        }
    }
}

/// Returns the value of the sample `name{labels}` in a text exposition,
/// where `labels` must all appear in the sample's label set.
pub fn sample(exposition: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    exposition.lines().filter(|line| !line.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric, label_text) = match series.split_once('{') {
            Some((metric, rest)) => (metric, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if metric != name {
            return None;
        }
        let all = labels.iter().all(|(key, expected)| label_text.contains(&format!("{key}=\"{expected}\"")));
        if all { value.parse().ok() } else { None }
    })
}

/// A child process that is killed when dropped, so a failing test leaves
/// no server behind.
pub struct ChildGuard(pub Option<std::process::Child>);

impl ChildGuard {
    /// Sends SIGTERM and waits up to `timeout` for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.0.take()?;
        // SAFETY: kill(2) with a pid we own and a valid signal number.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Path of the repository root.
pub fn repo_root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The OpenID provider from tests/oidc, started on a free loopback port.
pub struct OidcProvider {
    pub process: ChildGuard,
    pub token_endpoint: String,
    pub introspection_endpoint: String,
}

/// Client of the provider's default configuration.
pub const OIDC_CLIENT_ID: &str = "tokensync-e2e";
pub const OIDC_CLIENT_SECRET: &str = "e2e-secret-0123456789";

impl OidcProvider {
    /// Starts `node tests/oidc/server.mjs` with access tokens living `ttl_seconds`.
    pub fn start(ttl_seconds: u64) -> OidcProvider {
        Self::start_with(ttl_seconds, &[], None)
    }

    /// Like [`OidcProvider::start`], with more settings (see
    /// tests/oidc/README.md) and the request log written to `log`.
    pub fn start_with(ttl_seconds: u64, settings: &[(&str, &str)], log: Option<&std::path::Path>) -> OidcProvider {
        use std::io::BufRead;
        let root = repo_root();
        assert!(
            root.join("tests/oidc/node_modules/oidc-provider").exists(),
            "oidc-provider is not installed: run `npm ci --prefix tests/oidc` first"
        );
        let mut child = std::process::Command::new("node")
            .arg(root.join("tests/oidc/server.mjs"))
            .env("OIDC_ACCESS_TOKEN_TTL", ttl_seconds.to_string())
            .envs(settings.iter().copied())
            .stdout(std::process::Stdio::piped())
            .stderr(match log {
                Some(path) => std::process::Stdio::from(std::fs::File::create(path).unwrap()),
                None => std::process::Stdio::null(),
            })
            .spawn()
            .expect("node must be installed to run the OpenID provider");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line).unwrap();
        let ready: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("unexpected ready line: {line}"));
        OidcProvider {
            process: ChildGuard(Some(child)),
            token_endpoint: ready["token_endpoint"].as_str().unwrap().to_owned(),
            introspection_endpoint: ready["introspection_endpoint"].as_str().unwrap().to_owned(),
        }
    }

    /// Obtains a first refresh token through the provider's test-only
    /// bootstrap grant, so that no browser login is needed.
    pub async fn bootstrap_refresh_token(&self, client: &reqwest::Client) -> String {
        let response = client
            .post(&self.token_endpoint)
            .basic_auth(OIDC_CLIENT_ID, Some(OIDC_CLIENT_SECRET))
            .form(&[("grant_type", "urn:tokensync:e2e:grant-type:bootstrap"), ("scope", "api.read")])
            .send()
            .await
            .expect("bootstrap request failed");
        let body: serde_json::Value = response.json().await.expect("bootstrap returned no JSON");
        body["refresh_token"].as_str().unwrap_or_else(|| panic!("no refresh token in {body}")).to_owned()
    }

    /// Asks the provider whether `token` is active.
    pub async fn is_active(&self, client: &reqwest::Client, token: &str) -> bool {
        let response = client
            .post(&self.introspection_endpoint)
            .basic_auth(OIDC_CLIENT_ID, Some(OIDC_CLIENT_SECRET))
            .form(&[("token", token)])
            .send()
            .await
            .expect("introspection request failed");
        let body: serde_json::Value = response.json().await.expect("introspection returned no JSON");
        body["active"] == serde_json::json!(true)
    }
}

/// Starts the tokensync binary with `args`, logging to `log_file`.
pub fn start_tokensync(args: &[&str], log_file: &std::path::Path) -> ChildGuard {
    let log = std::fs::File::create(log_file).unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_tokensync"))
        .args(args)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    ChildGuard(Some(child))
}

/// Waits up to `timeout` for `GET {base}/-/ready` to return 200, failing
/// with the daemon's log otherwise.
pub async fn wait_ready(client: &reqwest::Client, base: &str, log_path: &std::path::Path, timeout: Duration) {
    let started = Instant::now();
    while get_ok(client, &format!("{base}/-/ready")).await.is_none() {
        assert!(started.elapsed() < timeout, "not ready after {timeout:?}:\n{}", std::fs::read_to_string(log_path).unwrap_or_default());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Fetches `url` and returns the body of a 200 response.
pub async fn get_ok(client: &reqwest::Client, url: &str) -> Option<String> {
    let response = client.get(url).send().await.ok()?;
    if response.status().is_success() { response.text().await.ok() } else { None }
}

/// Client-credentials settings for a mock issuer at `token_url`: client
/// `client`, secret `secret`, HTTP Basic, no scopes, a 5 s timeout.
pub fn oauth2_settings(token_url: &str) -> tokensync::source::OAuth2Settings {
    tokensync::source::OAuth2Settings {
        token_url: token_url.parse().unwrap(),
        client_id: "client".into(),
        client_secret: Some(tokensync::Secret::new("secret")),
        auth_method: tokensync::source::AuthMethod::ClientSecretBasic,
        scopes: vec![],
        extra_params: vec![],
        timeout: Duration::from_secs(5),
        ca_file: None,
    }
}

/// Token requests in a provider log written by [`OidcProvider::start_with`]:
/// one `(grant_type, status, error)` per request, in order.
pub fn token_requests(log: &std::path::Path) -> Vec<(String, u16, Option<String>)> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter_map(|line| line.strip_prefix("token request: "))
        .map(|fields| {
            let field = |key: &str| {
                fields.split(' ').find_map(|pair| pair.strip_prefix(key).map(str::to_owned))
            };
            let status = field("status=").and_then(|status| status.parse().ok()).unwrap_or(0);
            (field("grant_type=").unwrap_or_default(), status, field("error="))
        })
        .collect()
}

/// A `redis-server` on a loopback port, with its data in a directory of
/// the test, written to disk on every change, so that a restart keeps it.
pub struct RedisServer {
    pub port: u16,
    directory: std::path::PathBuf,
    options: Vec<String>,
    process: ChildGuard,
}

impl RedisServer {
    pub fn start(directory: &std::path::Path) -> RedisServer {
        Self::start_with(directory, &[])
    }

    /// Starts with more `redis-server` options, such as `--requirepass`.
    pub fn start_with(directory: &std::path::Path, options: &[&str]) -> RedisServer {
        let port = free_port();
        let options: Vec<String> = options.iter().map(|option| (*option).to_owned()).collect();
        let process = Self::spawn(directory, port, &options);
        RedisServer { port, directory: directory.to_owned(), options, process }
    }

    fn spawn(directory: &std::path::Path, port: u16, options: &[String]) -> ChildGuard {
        let child = std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--dir"])
            .arg(directory)
            .args(["--appendonly", "yes", "--appendfsync", "always", "--save", "", "--protected-mode", "yes"])
            .args(options)
            .stdout(std::fs::File::create(directory.join("redis.log")).unwrap())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server must be installed (Debian package redis-server)");
        let guard = ChildGuard(Some(child));
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start on port {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        guard
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Stops the server (SIGTERM, which flushes the append-only file).
    pub fn stop(&mut self) {
        self.process.terminate(Duration::from_secs(10));
    }

    /// Starts the server again on the same port and data directory.
    pub fn restart(&mut self) {
        self.process = Self::spawn(&self.directory, self.port, &self.options);
    }

    /// Opens a plain connection, for reading keys directly.
    pub fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url()).unwrap().get_connection().unwrap()
    }
}
