//! Several instances sharing one token through a real `redis-server`,
//! against the real OpenID provider with refresh-token rotation and reuse
//! detection (a refresh token presented twice revokes the whole grant).

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{
    ChildGuard, OIDC_CLIENT_ID, OIDC_CLIENT_SECRET, OidcProvider, RedisServer, free_port, get_ok, sample, start_tokensync,
    token_requests, wait_ready,
};
use tokensync::coordination::{CoordinationSettings, Coordinator, WhenUnavailable, WriteOutcome};
use tokensync::sink::SessionKey;
use tokensync::token::{ExpirySource, Token};

const SESSION_KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

/// One tokensync process of a test.
struct Instance {
    process: ChildGuard,
    base: String,
    directory: PathBuf,
}

impl Instance {
    fn token(&self, name: &str) -> Option<String> {
        std::fs::read_to_string(self.directory.join(format!("{name}.token"))).ok()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.directory.join("tokensync.log")).unwrap_or_default()
    }

    fn pid(&self) -> Option<u32> {
        self.process.0.as_ref().map(std::process::Child::id)
    }

    /// Waits up to `limit` for this instance's file sink to hold a token
    /// other than `previous` that the issuer reports active. The failure
    /// message starts with `failure`.
    async fn wait_for_new_active_token(&self, provider: &OidcProvider, client: &reqwest::Client, previous: &str, limit: Duration, failure: &str) {
        let deadline = Instant::now() + limit;
        loop {
            let token = self.token("shared").unwrap_or_default();
            if token != previous && provider.is_active(client, &token).await {
                return;
            }
            assert!(Instant::now() < deadline, "{failure} within {limit:?}\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Writes the shared secrets once: the client secret, the session key and
/// the first refresh token, obtained through the bootstrap grant.
async fn shared_secrets(directory: &Path, provider: &OidcProvider, client: &reqwest::Client) {
    std::fs::write(directory.join("client-secret"), OIDC_CLIENT_SECRET).unwrap();
    std::fs::write(directory.join("session.key"), SESSION_KEY).unwrap();
    let refresh_token = provider.bootstrap_refresh_token(client).await;
    std::fs::write(directory.join("seed"), refresh_token).unwrap();
}

/// Starts one instance in its own directory under `root`, with a rotating
/// token `shared` and, when `with_client_credentials`, a token `machine`.
async fn start_instance(
    root: &Path,
    index: usize,
    provider: &OidcProvider,
    redis: &RedisServer,
    lease: &str,
    with_client_credentials: bool,
    client: &reqwest::Client,
) -> Instance {
    let instance = spawn_instance(root, index, provider, redis, lease, with_client_credentials, "session.key");
    let log_path = instance.directory.join("tokensync.log");
    wait_ready(client, &instance.base, &log_path, Duration::from_secs(30)).await;
    instance
}

/// Starts an instance without waiting for it to be ready; `key_file` names
/// its coordination key under `root`.
fn spawn_instance(
    root: &Path,
    index: usize,
    provider: &OidcProvider,
    redis: &RedisServer,
    lease: &str,
    with_client_credentials: bool,
    key_file: &str,
) -> Instance {
    let directory = root.join(format!("instance-{index}"));
    std::fs::create_dir_all(&directory).unwrap();
    let mut config = format!(
        r#"
coordination:
  kind: redis
  url: {url}
  key_prefix: "e2e:"
  lease: {lease}
  key_file: {root}/{key_file}
tokens:
  - name: shared
    source:
      type: oauth2_refresh_token
      token_url: {token_endpoint}
      client_id: {OIDC_CLIENT_ID}
      client_secret_file: {root}/client-secret
      refresh_token_file: {root}/seed
    sinks:
      - {{type: file, path: {dir}/shared.token}}
      - {{type: session_store, path: {dir}/session.json, key_file: {root}/session.key}}
"#,
        url = redis.url(),
        root = root.display(),
        dir = directory.display(),
        token_endpoint = provider.token_endpoint,
    );
    if with_client_credentials {
        config.push_str(&format!(
            r#"  - name: machine
    source:
      type: oauth2_client_credentials
      token_url: {token_endpoint}
      client_id: {OIDC_CLIENT_ID}
      client_secret_file: {root}/client-secret
      scopes: [api.read]
    sinks:
      - {{type: file, path: {dir}/machine.token}}
"#,
            root = root.display(),
            dir = directory.display(),
            token_endpoint = provider.token_endpoint,
        ));
    }
    let config_path = directory.join("tokensync.yaml");
    std::fs::write(&config_path, config).unwrap();
    let address = format!("127.0.0.1:{}", free_port());
    let log_path = directory.join("tokensync.log");
    let process = start_tokensync(
        &["run", "--config", config_path.to_str().unwrap(), "--web.listen-address", &address, "--log.level", "debug"],
        &log_path,
    );
    let base = format!("http://{address}");
    Instance { process, base, directory }
}

/// What every multi-instance test starts with: a temporary directory, a
/// Redis with its data under `redis/`, an OpenID provider issuing 20-second
/// access tokens and logging its token requests to `issuer.log`, and the
/// shared secrets that [`shared_secrets`] writes.
struct Fixture {
    directory: tempfile::TempDir,
    redis: RedisServer,
    issuer_log: PathBuf,
    provider: OidcProvider,
    client: reqwest::Client,
}

impl Fixture {
    /// Starts the fixture; `issuer_env` goes to the provider's environment.
    async fn start(issuer_env: &[(&str, &str)]) -> Fixture {
        let directory = tempfile::tempdir().unwrap();
        let root = directory.path();
        let redis_directory = root.join("redis");
        std::fs::create_dir_all(&redis_directory).unwrap();
        let redis = RedisServer::start(&redis_directory);
        let issuer_log = root.join("issuer.log");
        let provider = OidcProvider::start_with(20, issuer_env, Some(&issuer_log));
        let client = http_client();
        shared_secrets(root, &provider, &client).await;
        Fixture { directory, redis, issuer_log, provider, client }
    }
}

fn http_client() -> reqwest::Client {
    tokensync::source::build_http_client(Duration::from_secs(5), None).unwrap()
}

fn refresh_grants(log: &Path) -> Vec<(u16, Option<String>)> {
    token_requests(log)
        .into_iter()
        .filter(|(grant, _, _)| grant == "refresh_token")
        .map(|(_, status, error)| (status, error))
        .collect()
}

fn assert_no_invalid_grant(log: &Path, instances: &[&Instance]) {
    let rejected: Vec<_> = token_requests(log).into_iter().filter(|(_, status, _)| *status != 200).collect();
    assert!(
        rejected.is_empty(),
        "the issuer rejected token requests: {rejected:?}\n{}",
        instances.iter().map(|instance| instance.log()).collect::<Vec<_>>().join("\n----\n")
    );
}

async fn metrics_of(client: &reqwest::Client, instance: &Instance) -> String {
    get_ok(client, &format!("{}/metrics", instance.base)).await.unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn three_instances_refresh_each_cycle_once() {
    let Fixture { directory, redis, issuer_log, provider, client } = Fixture::start(&[]).await;
    let root = directory.path();

    let first_start = Instant::now();
    let mut instances = Vec::new();
    for index in 0..3 {
        instances.push(start_instance(root, index, &provider, &redis, "15s", false, &client).await);
    }

    // For 90 s, every instance serves a token the issuer reports active.
    let started = Instant::now();
    let mut seen = BTreeSet::new();
    while started.elapsed() < Duration::from_secs(90) {
        for (index, instance) in instances.iter().enumerate() {
            let token = instance.token("shared").unwrap_or_default();
            assert!(
                provider.is_active(&client, &token).await,
                "instance {index} serves a token the issuer does not report active after {:?}\n{}",
                started.elapsed(),
                instance.log()
            );
            seen.insert(token);
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();

    let involved: Vec<&Instance> = instances.iter().collect();
    assert_no_invalid_grant(&issuer_log, &involved);
    // A 20 s token is refreshed 14.4 s to 16 s after it was issued. So one
    // refresher makes the first request and then at most one per 14.4 s,
    // and three uncoordinated instances would make three times as many.
    let refreshes = refresh_grants(&issuer_log).len() as f64;
    let max_refreshes = first_start.elapsed().as_secs_f64() / 14.4 + 1.5;
    assert!(refreshes >= 4.0, "only {refreshes} refreshes in {elapsed:.0} s");
    assert!(refreshes <= max_refreshes, "{refreshes} refreshes in {elapsed:.0} s; one refresher makes at most {max_refreshes:.1}");
    assert!(seen.len() as f64 >= refreshes - 1.0, "the instances served {} distinct tokens for {refreshes} refreshes", seen.len());

    // Some instance serves a token it adopted rather than requested.
    let mut adopted = 0;
    for instance in &instances {
        let status: serde_json::Value =
            serde_json::from_str(&get_ok(&client, &format!("{}/api/v1/status", instance.base)).await.unwrap()).unwrap();
        assert_eq!(status["coordination"]["up"], true, "{status}");
        let token = &status["tokens"][0];
        assert!(token["coordination"]["shared_version"].as_u64().unwrap() >= 2, "{token}");
        adopted += usize::from(token["coordination"]["adopted"] == true);
    }
    assert!(adopted >= 1, "no instance adopted a token");

    // The instances' own counts add up to the issuer's.
    let mut requests = 0.0;
    for instance in &instances {
        let metrics = metrics_of(&client, instance).await;
        assert_eq!(sample(&metrics, "tokensync_coordination_up", &[]), Some(1.0), "{metrics}");
        assert!(sample(&metrics, "tokensync_lease_acquisitions_total", &[("token", "shared"), ("result", "acquired")]).is_some());
        for trigger in ["initial", "proactive", "reactive", "manual"] {
            requests += sample(&metrics, "tokensync_refreshes_total", &[("token", "shared"), ("trigger", trigger)]).unwrap_or(0.0);
        }
    }
    assert_eq!(requests, refresh_grants(&issuer_log).len() as f64, "the instances count other requests than the issuer saw");

    // Redis stores no plaintext secret.
    let mut connection = redis.connection();
    let keys: Vec<String> = redis::cmd("KEYS").arg("e2e:*").query(&mut connection).unwrap();
    assert!(keys.contains(&"e2e:state:shared".to_owned()), "{keys:?}");
    let state: Vec<String> = redis::cmd("HGETALL").arg("e2e:state:shared").query(&mut connection).unwrap();
    let dump = state.join(" ");
    for token in &seen {
        assert!(!dump.contains(token.trim()), "Redis holds an access token in plaintext");
    }
    let seed = std::fs::read_to_string(root.join("seed")).unwrap();
    assert!(!dump.contains(seed.trim()), "Redis holds a refresh token in plaintext");
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_lease_holder_taken_over() {
    // Each token request waits 3 s at the issuer, so the test can kill the
    // refresher while its request is in flight.
    let Fixture { directory, redis, issuer_log, provider, client } = Fixture::start(&[("OIDC_TOKEN_DELAY_MS", "3000")]).await;
    let root = directory.path();

    let mut instances = Vec::new();
    for index in 0..2 {
        instances.push(start_instance(root, index, &provider, &redis, "4s", false, &client).await);
    }
    let before = refresh_grants(&issuer_log).len();

    // Wait for the next refresh and kill whichever instance holds the lease.
    let mut connection = redis.connection();
    let deadline = Instant::now() + Duration::from_secs(40);
    let holder_pid = loop {
        assert!(Instant::now() < deadline, "no instance took the lease within 40 s");
        let owner: Option<String> = redis::cmd("GET").arg("e2e:lease:shared").query(&mut connection).unwrap();
        if let Some(owner) = owner {
            break owner.split(':').nth(1).and_then(|pid| pid.parse::<u32>().ok()).expect("owner id is HOST:PID:RANDOM");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let killed = instances.iter().position(|instance| instance.pid() == Some(holder_pid)).expect("the holder is one of the instances");
    // By now its request waits in the issuer's delay; the lease is not yet extended.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut victim = instances.remove(killed);
    let killed_at = Instant::now();
    victim.process.0.as_mut().unwrap().kill().unwrap();
    let _ = victim.process.0.take().unwrap().wait();
    let survivor = &instances[0];
    let token_at_kill = survivor.token("shared").unwrap();

    // The survivor takes over once the lease expires and refreshes with the
    // refresh token still valid at the issuer.
    survivor
        .wait_for_new_active_token(&provider, &client, &token_at_kill, Duration::from_secs(30), "the survivor did not take over")
        .await;
    let took_over_after = killed_at.elapsed();
    assert!(took_over_after >= Duration::from_secs(3), "took over after {took_over_after:?}, before the lease could expire");
    let issuer_text = std::fs::read_to_string(&issuer_log).unwrap();
    assert!(issuer_text.contains("token request dropped"), "the killed instance's request was not in flight:\n{issuer_text}");

    // The grant survives: the next cycle refreshes again.
    let token_after_takeover = survivor.token("shared").unwrap();
    survivor
        .wait_for_new_active_token(&provider, &client, &token_after_takeover, Duration::from_secs(30), "no refresh after the takeover")
        .await;
    assert!(refresh_grants(&issuer_log).len() >= before + 2);
    assert_no_invalid_grant(&issuer_log, &[survivor, &victim]);
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_outage_holds_rotating_tokens_and_recovers() {
    let Fixture { directory, mut redis, issuer_log, provider, client } = Fixture::start(&[]).await;
    let root = directory.path();

    let mut instances = Vec::new();
    for index in 0..2 {
        instances.push(start_instance(root, index, &provider, &redis, "5s", true, &client).await);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while instances.iter().any(|instance| instance.token("machine").is_none()) {
        assert!(Instant::now() < deadline, "the client credentials token was not written");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    redis.stop();
    let stopped_at = Instant::now();
    let requests_at_stop = token_requests(&issuer_log).len();
    let held_tokens: Vec<String> = instances.iter().map(|instance| instance.token("shared").unwrap()).collect();
    let machine_at_stop: Vec<String> = instances.iter().map(|instance| instance.token("machine").unwrap()).collect();

    // Every instance reports coordination down within a few seconds.
    for instance in &instances {
        let deadline = Instant::now() + Duration::from_secs(10);
        while sample(&metrics_of(&client, instance).await, "tokensync_coordination_up", &[]) != Some(0.0) {
            assert!(Instant::now() < deadline, "coordination_up did not drop to 0\n{}", instance.log());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(stopped_at.elapsed())).await;

    let during: Vec<_> = token_requests(&issuer_log).into_iter().skip(requests_at_stop).collect();
    let refreshes = during.iter().filter(|(grant, _, _)| grant == "refresh_token").count();
    let client_credentials = during.iter().filter(|(grant, _, _)| grant == "client_credentials").count();
    assert_eq!(refreshes, 0, "a rotating token was refreshed without coordination: {during:?}");
    assert!(client_credentials >= 2, "client credentials tokens were not refreshed locally: {during:?}");
    for (index, instance) in instances.iter().enumerate() {
        assert_eq!(instance.token("shared").unwrap(), held_tokens[index], "instance {index} replaced its held token");
        assert_ne!(instance.token("machine").unwrap(), machine_at_stop[index], "instance {index} did not refresh its client credentials token");
        let metrics = metrics_of(&client, instance).await;
        let errors = sample(&metrics, "tokensync_lease_acquisitions_total", &[("token", "shared"), ("result", "error")]).unwrap_or(0.0);
        assert!(errors >= 1.0, "no failed lease attempt counted\n{metrics}");
        let status: serde_json::Value =
            serde_json::from_str(&get_ok(&client, &format!("{}/api/v1/status", instance.base)).await.unwrap()).unwrap();
        assert_eq!(status["coordination"]["up"], false, "{status}");
        let shared = status["tokens"].as_array().unwrap().iter().find(|token| token["name"] == "shared").unwrap();
        assert_eq!(shared["coordination"]["held"], true, "{shared}");
        let page = get_ok(&client, &format!("{}/", instance.base)).await.unwrap();
        assert!(page.contains("Coordination through Redis: down"), "the status page does not show the outage");
    }

    // Redis is back: coordination recovers and the rotating token is
    // refreshed once, by one instance, and adopted by the other.
    redis.restart();
    for (index, instance) in instances.iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let up = sample(&metrics_of(&client, instance).await, "tokensync_coordination_up", &[]) == Some(1.0);
            let token = instance.token("shared").unwrap_or_default();
            if up && token != held_tokens[index] && provider.is_active(&client, &token).await {
                break;
            }
            assert!(Instant::now() < deadline, "instance {index} did not recover within 20 s\n{}", instance.log());
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    assert_eq!(instances[0].token("shared"), instances[1].token("shared"), "the instances serve different tokens");
    assert_no_invalid_grant(&issuer_log, &instances.iter().collect::<Vec<_>>());
}

fn sample_token(access: &str, refresh: &str) -> Token {
    let requested_at = chrono::Utc::now();
    Token {
        access_token: tokensync::Secret::new(access),
        token_type: "Bearer".into(),
        requested_at,
        expires_at: requested_at + chrono::TimeDelta::minutes(5),
        lifetime: Duration::from_secs(300),
        expiry_source: ExpirySource::ExpiresIn,
        refresh_token: Some(tokensync::Secret::new(refresh)),
        scope: None,
    }
}

fn settings(redis: &RedisServer, key: SessionKey) -> CoordinationSettings {
    CoordinationSettings {
        url: redis.url(),
        username: None,
        password: None,
        ca_file: None,
        key_prefix: "cas:".into(),
        lease: Duration::from_secs(2),
        when_unavailable: WhenUnavailable::Hold,
        key,
        timeout: Duration::from_secs(1),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn compare_and_set_rejects_a_stale_write() {
    let directory = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(directory.path());
    let key = SessionKey::generate();
    let first = Coordinator::new(&settings(&redis, key.clone())).unwrap();
    let second = Coordinator::new(&settings(&redis, key)).unwrap();

    assert_eq!(first.read("billing").await.unwrap().version, 0);
    assert_eq!(first.write("billing", &sample_token("at-one", "rt-one"), 0).await.unwrap(), WriteOutcome::Written(1));
    // The second instance read version 0 before the first wrote: its write is stale.
    assert_eq!(second.write("billing", &sample_token("at-two", "rt-two"), 0).await.unwrap(), WriteOutcome::Conflict(1));
    let state = second.read("billing").await.unwrap();
    assert_eq!(state.version, 1);
    assert_eq!(state.token.unwrap().refresh_token.unwrap().expose(), "rt-one");
    assert_eq!(second.write("billing", &sample_token("at-two", "rt-two"), 1).await.unwrap(), WriteOutcome::Written(2));

    // Only one instance holds a lease; it expires by itself; only its owner releases it.
    let lease = first.try_lease("billing").await.unwrap().expect("the lease is free");
    assert!(second.try_lease("billing").await.unwrap().is_none(), "two instances hold one lease");
    assert!(first.renew(&lease).await.unwrap());
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert!(!first.renew(&lease).await.unwrap(), "an expired lease was extended");
    let taken_over = second.try_lease("billing").await.unwrap().expect("the expired lease is free");
    first.release(lease).await;
    assert!(first.try_lease("billing").await.unwrap().is_none(), "a former owner released another instance's lease");
    second.release(taken_over).await;
    assert!(first.try_lease("billing").await.unwrap().is_some());

    // A state written under another key does not decrypt, and is reported as no token.
    let stranger = Coordinator::new(&settings(&redis, SessionKey::generate())).unwrap();
    let state = stranger.read("billing").await.unwrap();
    assert_eq!((state.version, state.token.is_none()), (2, true));

    // A ciphertext moved to another version fails authentication.
    let mut connection = redis.connection();
    let _: () = redis::cmd("HSET").arg("cas:state:billing").arg("version").arg(7).query(&mut connection).unwrap();
    let state = second.read("billing").await.unwrap();
    assert_eq!((state.version, state.token.is_none()), (7, true));
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_password_secret_and_rejection() {
    const RIGHT: &str = "redis-pass-6d1f0b93c2";
    const WRONG: &str = "wrong-pass-a84e27f5d0";
    let directory = tempfile::tempdir().unwrap();
    let root = directory.path();
    let redis_directory = root.join("redis");
    std::fs::create_dir_all(&redis_directory).unwrap();
    let redis = RedisServer::start_with(&redis_directory, &["--requirepass", RIGHT]);
    let provider = OidcProvider::start(20);
    let client = http_client();
    std::fs::write(root.join("client-secret"), OIDC_CLIENT_SECRET).unwrap();
    std::fs::write(root.join("session.key"), SESSION_KEY).unwrap();
    std::fs::write(root.join("redis-password"), WRONG).unwrap();
    let config = format!(
        r#"
coordination:
  kind: redis
  url: {url}
  password_file: {root}/redis-password
  key_file: {root}/session.key
tokens:
  - name: machine
    source:
      type: oauth2_client_credentials
      token_url: {token_endpoint}
      client_id: {OIDC_CLIENT_ID}
      client_secret_file: {root}/client-secret
    sinks:
      - {{type: file, path: {root}/machine.token}}
"#,
        url = redis.url(),
        root = root.display(),
        token_endpoint = provider.token_endpoint,
    );
    let config_path = root.join("tokensync.yaml");
    std::fs::write(&config_path, config).unwrap();

    let run = |log: &str| {
        let address = format!("127.0.0.1:{}", free_port());
        let process = start_tokensync(
            &["run", "--config", config_path.to_str().unwrap(), "--web.listen-address", &address, "--log.level", "trace"],
            &root.join(log),
        );
        (process, format!("http://{address}"))
    };

    // A rejected password: coordination is down, and a token without a
    // refresh token is obtained locally all the same.
    let (mut process, base) = run("wrong.log");
    wait_ready(&client, &base, &root.join("wrong.log"), Duration::from_secs(20)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut metrics = String::new();
    while sample(&metrics, "tokensync_coordination_up", &[]) != Some(0.0) {
        assert!(Instant::now() < deadline, "a rejected password does not show as down:\n{metrics}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        metrics = get_ok(&client, &format!("{base}/metrics")).await.unwrap_or_default();
    }
    let status = get_ok(&client, &format!("{base}/api/v1/status")).await.unwrap_or_default();
    process.terminate(Duration::from_secs(10));
    let rejected = std::process::Command::new(env!("CARGO_BIN_EXE_tokensync"))
        .args(["check-config", "--online", config_path.to_str().unwrap()])
        .output()
        .unwrap();
    let rejected_report = String::from_utf8_lossy(&rejected.stdout).into_owned();
    assert!(!rejected.status.success(), "check-config --online passed with a rejected password:\n{rejected_report}");
    assert!(rejected_report.contains("coordination:redis"), "{rejected_report}");
    assert!(rejected_report.contains("password_file"), "{rejected_report}");
    let log = std::fs::read_to_string(root.join("wrong.log")).unwrap();
    assert!(log.contains("coordination through Redis is down"), "{log}");

    // The right password: coordination is up.
    std::fs::write(root.join("redis-password"), RIGHT).unwrap();
    let (mut process, base) = run("right.log");
    wait_ready(&client, &base, &root.join("right.log"), Duration::from_secs(20)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut right_metrics = String::new();
    while sample(&right_metrics, "tokensync_coordination_up", &[]) != Some(1.0) {
        assert!(Instant::now() < deadline, "the right password does not show as up:\n{right_metrics}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        right_metrics = get_ok(&client, &format!("{base}/metrics")).await.unwrap_or_default();
    }
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_tokensync"))
        .args(["check-config", "--online", config_path.to_str().unwrap()])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "check-config --online failed: {report}{}", String::from_utf8_lossy(&check.stderr));
    assert!(report.contains("coordination:redis"), "{report}");
    assert!(report.contains("Redis answers"), "{report}");
    process.terminate(Duration::from_secs(10));

    let everything = [
        log,
        rejected_report,
        std::fs::read_to_string(root.join("right.log")).unwrap(),
        metrics,
        right_metrics,
        status,
        String::from_utf8_lossy(&check.stdout).into_owned(),
        String::from_utf8_lossy(&check.stderr).into_owned(),
    ]
    .join("\n");
    for secret in [RIGHT, WRONG] {
        assert!(!everything.contains(secret), "a Redis password leaked into logs, metrics, status or check-config output");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn engine_shutdown_ends_the_subscription() {
    let directory = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(directory.path());
    let coordinator = Coordinator::new(&settings(&redis, SessionKey::generate())).unwrap();
    let engine = tokensync::Engine::new(tokensync::EngineOptions { coordinator: Some(coordinator), ..Default::default() });
    let mut connection = redis.connection();
    let subscribers = |connection: &mut redis::Connection| -> i64 {
        let reply: (String, i64) = redis::cmd("PUBSUB").arg("NUMSUB").arg("cas:updates").query(connection).unwrap();
        reply.1
    };
    assert!(common::eventually(Duration::from_secs(5), || subscribers(&mut connection) == 1).await, "the engine did not subscribe");

    engine.shutdown();
    drop(engine);
    assert!(common::eventually(Duration::from_secs(5), || subscribers(&mut connection) == 0).await, "the subscription outlived the engine");
}

#[tokio::test(flavor = "multi_thread")]
async fn instance_with_another_key_holds_instead_of_refreshing() {
    let Fixture { directory, redis, issuer_log, provider, client } = Fixture::start(&[]).await;
    let root = directory.path();
    std::fs::write(root.join("other.key"), SessionKey::generate().to_base64().as_str()).unwrap();

    let healthy = start_instance(root, 0, &provider, &redis, "5s", false, &client).await;
    let token_before = healthy.token("shared").unwrap();
    // The seed file's refresh token is spent by now: presenting it again
    // would make the issuer revoke the grant for every instance.
    let foreign = spawn_instance(root, 1, &provider, &redis, "5s", false, "other.key");

    // Across the healthy instance's next refresh, the foreign one sends nothing.
    healthy
        .wait_for_new_active_token(&provider, &client, &token_before, Duration::from_secs(30), "the healthy instance did not refresh")
        .await;
    assert_no_invalid_grant(&issuer_log, &[&healthy, &foreign]);
    assert!(foreign.token("shared").is_none(), "the instance with another key wrote a token");
    let status = get_ok(&client, &format!("{}/api/v1/status", foreign.base)).await.unwrap();
    assert!(status.contains("does not decrypt with this instance's coordination key"), "{status}");
    assert!(foreign.log().contains("every instance needs the same key"), "{}", foreign.log());
    let metrics = metrics_of(&client, &foreign).await;
    assert_eq!(sample(&metrics, "tokensync_refreshes_total", &[("token", "shared"), ("trigger", "initial")]), Some(0.0));
}

/// Returns `reauth_required` of the token `shared` from an instance's
/// status JSON, or `None` when the status request fails.
async fn reauth_required(client: &reqwest::Client, instance: &Instance) -> Option<bool> {
    let body = get_ok(client, &format!("{}/api/v1/status", instance.base)).await?;
    let status: serde_json::Value = serde_json::from_str(&body).ok()?;
    status["tokens"].as_array()?.iter().find(|token| token["name"] == "shared")?["reauth_required"].as_bool()
}

#[tokio::test(flavor = "multi_thread")]
async fn new_login_on_one_instance_recovers_all() {
    let Fixture { directory, redis, issuer_log, provider, client } = Fixture::start(&[]).await;
    let root = directory.path();
    let first = start_instance(root, 0, &provider, &redis, "5s", false, &client).await;
    let second = start_instance(root, 1, &provider, &redis, "5s", false, &client).await;

    // The first instance spent the seed refresh token on its initial
    // refresh. Presenting it again makes the issuer revoke the grant.
    let spent = std::fs::read_to_string(root.join("seed")).unwrap();
    let reuse = client
        .post(&provider.token_endpoint)
        .basic_auth(OIDC_CLIENT_ID, Some(OIDC_CLIENT_SECRET))
        .form(&[("grant_type", "refresh_token"), ("refresh_token", spent.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(reuse.status(), 400, "the issuer accepted a spent refresh token");
    let revoked_token = first.token("shared").unwrap();
    assert!(!provider.is_active(&client, &revoked_token).await, "the grant was not revoked");

    // Both instances find out on their next refresh and need a new login.
    let deadline = Instant::now() + Duration::from_secs(45);
    for instance in [&first, &second] {
        while reauth_required(&client, instance).await != Some(true) {
            assert!(Instant::now() < deadline, "an instance did not report reauth_required within 45 s\n{}", instance.log());
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    // A new login: its refresh token goes into the file, and only the first
    // instance reloads.
    let requests_before_login = token_requests(&issuer_log).len();
    std::fs::write(root.join("seed"), provider.bootstrap_refresh_token(&client).await).unwrap();
    let reload = client.post(format!("{}/-/reload", first.base)).send().await.unwrap();
    assert!(reload.status().is_success(), "reload failed: {}", reload.text().await.unwrap_or_default());

    first
        .wait_for_new_active_token(&provider, &client, &revoked_token, Duration::from_secs(15), "the reloaded instance did not refresh")
        .await;
    second
        .wait_for_new_active_token(&provider, &client, &revoked_token, Duration::from_secs(15), "the other instance did not adopt the new token")
        .await;
    assert_eq!(reauth_required(&client, &second).await, Some(false), "the adopted token did not clear reauth_required");
    assert_eq!(reauth_required(&client, &first).await, Some(false));

    // Every request after the login succeeded, and the grant keeps working.
    let adopted = second.token("shared").unwrap();
    second
        .wait_for_new_active_token(&provider, &client, &adopted, Duration::from_secs(30), "no refresh after the new login")
        .await;
    let after_login: Vec<_> = token_requests(&issuer_log).into_iter().skip(requests_before_login).collect();
    assert!(after_login.iter().all(|(_, status, _)| *status == 200), "the issuer rejected requests after the new login: {after_login:?}");
}

/// Token endpoint of a lost race. The initial request, with `rt-0`, gets
/// `rt-1`, which the engine writes to Redis as version 1. The request with
/// `rt-1` plays another instance that refreshed first: before rejecting
/// it, the responder writes that instance's result (`rt-2`, version 2) to
/// Redis. A request with `rt-2` gets `rt-3`. Anything else is rejected.
/// With `accept_after_write`, the request with `rt-1` succeeds after the
/// write instead, with `rt-x`, as when the other instance took over an
/// expired lease.
struct LostRace {
    settings: CoordinationSettings,
    accept_after_write: bool,
}

impl wiremock::Respond for LostRace {
    fn respond(&self, request: &wiremock::Request) -> wiremock::ResponseTemplate {
        let body = String::from_utf8_lossy(&request.body);
        let rejected = wiremock::ResponseTemplate::new(400).set_body_json(serde_json::json!({"error": "invalid_grant"}));
        let issued = |access: &str, refresh: &str| {
            wiremock::ResponseTemplate::new(200).set_body_json(serde_json::json!({
                "access_token": access,
                "token_type": "Bearer",
                "expires_in": 3600,
                "refresh_token": refresh,
            }))
        };
        if body.contains("refresh_token=rt-0") {
            return issued("at-1", "rt-1");
        }
        if body.contains("refresh_token=rt-1") {
            // The responder runs synchronously inside the test's runtime, so
            // the other instance writes from a thread with its own runtime.
            let settings = self.settings.clone();
            let outcome = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                runtime.block_on(async move {
                    let other = Coordinator::new(&settings).unwrap();
                    other.write("raced", &sample_token("at-2", "rt-2"), 1).await.unwrap()
                })
            })
            .join()
            .unwrap();
            assert_eq!(outcome, WriteOutcome::Written(2));
            return if self.accept_after_write { issued("at-x", "rt-x") } else { rejected };
        }
        if body.contains("refresh_token=rt-2") {
            return issued("at-3", "rt-3");
        }
        rejected
    }
}

/// Starts an engine coordinated through `redis` whose token `raced` comes
/// from a [`LostRace`] endpoint, and waits for its initial token. The mock
/// server stops when the returned handle is dropped.
async fn start_raced_engine(redis: &RedisServer, key: &SessionKey, accept_after_write: bool) -> (wiremock::MockServer, tokensync::Engine) {
    let issuer = wiremock::MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .respond_with(LostRace { settings: settings(redis, key.clone()), accept_after_write })
        .mount(&issuer)
        .await;

    let coordinator = Coordinator::new(&settings(redis, key.clone())).unwrap();
    let engine = tokensync::Engine::new(tokensync::EngineOptions { coordinator: Some(coordinator), ..Default::default() });
    let source_settings = common::oauth2_settings(&format!("{}/token", issuer.uri()));
    let source = tokensync::source::RefreshTokenGrant::new(source_settings, tokensync::Secret::new("rt-0"), None).unwrap();
    engine.add_token(tokensync::TokenSpec::new("raced", Some(std::sync::Arc::new(source)))).unwrap();
    let initial = || engine.token("raced").is_some_and(|token| token.access_token.expose() == "at-1");
    assert!(common::eventually(Duration::from_secs(5), initial).await, "the initial refresh did not succeed");
    (issuer, engine)
}

#[tokio::test(flavor = "multi_thread")]
async fn lost_race_retry_writes_the_next_version() {
    let directory = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(directory.path());
    let key = SessionKey::generate();
    let (_issuer, engine) = start_raced_engine(&redis, &key, false).await;

    // The rejected rt-1 is retried with rt-2 from Redis, and the result is
    // written as version 3 on top of the other instance's version 2.
    let token = engine.refresh_now("raced").await.unwrap();
    assert_eq!(token.access_token.expose(), "at-3");
    assert_eq!(token.refresh_token.as_ref().map(|secret| secret.expose().to_owned()).as_deref(), Some("rt-3"));
    let reader = Coordinator::new(&settings(&redis, key)).unwrap();
    let state = reader.read("raced").await.unwrap();
    assert_eq!(state.version, 3, "the retry's result was not written on top of the state it used");
    let stored = state.token.expect("the state decrypts");
    assert_eq!(stored.refresh_token.as_ref().map(|secret| secret.expose().to_owned()).as_deref(), Some("rt-3"));
    engine.shutdown();
}

#[tokio::test(flavor = "multi_thread")]
async fn lost_write_adopts_the_other_token() {
    let directory = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(directory.path());
    let key = SessionKey::generate();
    let (_issuer, engine) = start_raced_engine(&redis, &key, true).await;

    // The other instance wrote version 2 while this one's request ran, so
    // this one's write of version 2 fails and it serves the other token.
    let token = engine.refresh_now("raced").await.unwrap();
    assert_eq!(token.access_token.expose(), "at-2");
    let status = engine.status().into_iter().find(|status| status.name == "raced").unwrap();
    let coordination = status.coordination.expect("the token is coordinated");
    assert!(coordination.adopted, "the status does not show the adopted token");
    assert_eq!(coordination.shared_version, 2);
    engine.shutdown();
}
