//! Crash safety of the daemon: `tokensync run` is killed with SIGKILL at
//! random moments while it rotates refresh tokens about every 150 ms.
//!
//! A mock issuer in the test process hands out 300 ms access tokens with a
//! new refresh token on every refresh, for two tokens (two rotation chains)
//! that share one session store and have one file sink each. After every
//! kill, each sink is absent or contains a complete token the issuer handed
//! out, and the session store decrypts and contains only refresh tokens the
//! issuer accepts. While the daemon runs, the test reads the sinks every
//! millisecond or so, with the same checks. A last restart must resume from
//! the store.
//!
//! Refresh-token rule: the issuer accepts the latest refresh token of a
//! chain, or the one presented to obtain it. A crash between the issuer's
//! response and the store write cannot be avoided, so the daemon may
//! present the previous token once after a restart. Within one run of the
//! daemon, every later request must present the latest token. Any other
//! token fails the test.
//!
//! The store must also never go back to an older refresh token, which
//! `session_store_never_rolls_back` checks: the rotation write and the
//! store's sink worker may finish in either order, and the older write must
//! not win.
//!
//! Set `CRASH_TEST_SEED` to repeat the kill times of an earlier run.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{ChildGuard, free_port, get_ok, sample, start_tokensync, wait_ready};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokensync::sink::{SessionKey, SessionStore};
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

/// Number of SIGKILLs. Each one hits a fresh daemon process.
const KILLS: usize = 200;
/// Range of the random time between starting the daemon and killing it.
const KILL_AFTER_MS: RangeInclusive<u64> = 30..=300;
/// The kill phase must finish within this time.
const KILL_PHASE_DEADLINE: Duration = Duration::from_secs(120);
/// Lifetime of every access token. With `lifetime_fraction: 0.5`, the daemon
/// refreshes each token about every 150 ms.
const TOKEN_LIFETIME_MS: i64 = 300;
/// The two tokens of the configuration, one rotation chain each.
const CHAINS: [&str; 2] = ["alpha", "beta"];
const CLIENT_SECRET: &str = "crash-test-client-secret";

/// How the issuer judged a presented refresh token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    /// The latest refresh token of its chain.
    Latest,
    /// The token presented to obtain the latest one.
    Previous,
    /// Any other token, which the issuer rejects with `invalid_grant`.
    Unknown,
}

/// One token request as the issuer saw it.
#[derive(Clone, Debug)]
struct Presentation {
    /// The daemon run that sent it, from its `client_id`.
    run: String,
    chain: String,
    refresh_token: String,
    verdict: Verdict,
}

/// The state of one rotation chain.
struct Chain {
    latest: String,
    /// The refresh token presented to obtain `latest`.
    previous: Option<String>,
    next_serial: u64,
}

#[derive(Default)]
struct IssuerState {
    chains: BTreeMap<String, Chain>,
    issued_access: HashSet<String>,
    issued_refresh: HashSet<String>,
    presentations: Vec<Presentation>,
}

/// Returns a fixed-width access token value, so a truncated token is never a valid one.
fn access_token(chain: &str, serial: u64) -> String {
    format!("at-{chain}-{serial:08}")
}

fn refresh_token(chain: &str, serial: u64) -> String {
    format!("rt-{chain}-{serial:08}")
}

/// Returns the refresh token configured in the seed file of `chain`.
fn seed_token(chain: &str) -> String {
    refresh_token(chain, 0)
}

/// A token endpoint that rotates refresh tokens and records every request.
#[derive(Clone)]
struct RotatingIssuer(Arc<Mutex<IssuerState>>);

impl RotatingIssuer {
    fn new() -> Self {
        let mut state = IssuerState::default();
        for chain in CHAINS {
            state.chains.insert(chain.to_owned(), Chain { latest: seed_token(chain), previous: None, next_serial: 1 });
            state.issued_refresh.insert(seed_token(chain));
        }
        RotatingIssuer(Arc::new(Mutex::new(state)))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, IssuerState> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Respond for RotatingIssuer {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let form: BTreeMap<String, String> = url::form_urlencoded::parse(&request.body).into_owned().collect();
        let run = form.get("client_id").cloned().unwrap_or_default();
        let presented = form.get("refresh_token").cloned().unwrap_or_default();
        let chain_name = presented.split('-').nth(1).unwrap_or_default().to_owned();
        let authenticated = form.get("client_secret").map(String::as_str) == Some(CLIENT_SECRET)
            && form.get("grant_type").map(String::as_str) == Some("refresh_token");

        let mut state = self.state();
        let verdict = match state.chains.get(&chain_name) {
            Some(chain) if authenticated && presented == chain.latest => Verdict::Latest,
            Some(chain) if authenticated && chain.previous.as_deref() == Some(presented.as_str()) => Verdict::Previous,
            _ => Verdict::Unknown,
        };
        state.presentations.push(Presentation { run, chain: chain_name.clone(), refresh_token: presented.clone(), verdict });
        if verdict == Verdict::Unknown {
            return ResponseTemplate::new(400).set_body_json(serde_json::json!({"error": "invalid_grant"}));
        }

        let chain = state.chains.get_mut(&chain_name).expect("the verdict found the chain");
        let serial = chain.next_serial;
        chain.next_serial += 1;
        chain.previous = Some(presented);
        chain.latest = refresh_token(&chain_name, serial);
        let (access, refresh) = (access_token(&chain_name, serial), refresh_token(&chain_name, serial));
        state.issued_access.insert(access.clone());
        state.issued_refresh.insert(refresh.clone());
        let expires_at_ms = chrono::Utc::now().timestamp_millis() + TOKEN_LIFETIME_MS;
        ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "access_token": access,
            "token_type": "bearer",
            "refresh_token": refresh,
            "expires_at": expires_at_ms,
        }))
    }
}

/// Paths of the daemon's configuration, secrets and sinks.
struct Layout {
    config: PathBuf,
    log: PathBuf,
    secrets: PathBuf,
    out: PathBuf,
    state: PathBuf,
    store: PathBuf,
    key: SessionKey,
}

impl Layout {
    fn create(root: &Path) -> Layout {
        let secrets = root.join("secrets");
        let out = root.join("out");
        let state = root.join("state");
        for directory in [&secrets, &out, &state] {
            std::fs::create_dir(directory).unwrap();
        }
        let key = SessionKey::generate();
        std::fs::write(secrets.join("session.key"), key.to_base64().as_bytes()).unwrap();
        std::fs::write(secrets.join("client-secret"), CLIENT_SECRET).unwrap();
        for chain in CHAINS {
            std::fs::write(secrets.join(format!("{chain}.seed")), seed_token(chain)).unwrap();
        }
        Layout {
            config: root.join("tokensync.yaml"),
            log: root.join("tokensync.log"),
            store: state.join("session.json"),
            secrets,
            out,
            state,
            key,
        }
    }

    /// Writes the configuration for one daemon run. `run` becomes the
    /// `client_id`, so the issuer can tell the runs apart.
    fn write_config(&self, token_url: &str, run: &str) {
        let mut yaml = String::from(
            "defaults:\n  refresh: {lifetime_fraction: 0.5, jitter: 0.0, min_interval: 50ms}\n  \
             backoff: {initial: 50ms, max: 500ms}\n  timeout: 2s\ntokens:\n",
        );
        for chain in CHAINS {
            let format = if chain == "alpha" { "raw" } else { "json" };
            yaml.push_str(&format!(
                "  - name: {chain}\n    source:\n      type: oauth2_refresh_token\n      token_url: {token_url}\n      \
                 client_id: {run}\n      client_secret_file: {secrets}/client-secret\n      auth_method: client_secret_post\n      \
                 refresh_token_file: {secrets}/{chain}.seed\n    sinks:\n      \
                 - {{type: file, path: {file}, format: {format}}}\n      \
                 - {{type: session_store, path: {store}, key_file: {secrets}/session.key}}\n",
                secrets = self.secrets.display(),
                file = self.sink_file(chain).display(),
                store = self.store.display(),
            ));
        }
        std::fs::write(&self.config, yaml).unwrap();
    }

    fn sink_file(&self, chain: &str) -> PathBuf {
        if chain == "alpha" { self.out.join("alpha.token") } else { self.out.join("beta.json") }
    }
}

/// Kills the daemon with SIGKILL and asserts that it was still running.
fn kill_daemon(daemon: &mut ChildGuard, log: &Path) {
    let mut child = daemon.0.take().expect("the daemon is running");
    let _ = child.kill();
    let status = child.wait().unwrap();
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "the daemon exited by itself ({status}) before the kill:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// Returns the access token in the file sink of `chain`, asserting that the
/// file is absent or contains a complete token the issuer handed out.
/// `moment` names the point of the test in messages, such as "after kill 3".
fn check_file_sink(layout: &Layout, chain: &str, issued_access: &HashSet<String>, moment: &str) -> Option<String> {
    let path = layout.sink_file(chain);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return None,
        Err(error) => panic!("{moment}: cannot read {}: {error}", path.display()),
    };
    let text = String::from_utf8(bytes).unwrap_or_else(|_| panic!("{moment}: {} is not UTF-8", path.display()));
    let access = if chain == "alpha" {
        text.clone()
    } else {
        assert!(text.ends_with('\n'), "{moment}: {} lacks its final newline: {text:?}", path.display());
        let value: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|error| panic!("{moment}: {} is not JSON ({error}): {text:?}", path.display()));
        assert_eq!(value["token_type"], "Bearer", "{moment}: {text}");
        let expires_at = value["expires_at"].as_str().unwrap_or_default();
        assert!(chrono::DateTime::parse_from_rfc3339(expires_at).is_ok(), "{moment}: invalid expires_at in {text}");
        value["access_token"].as_str().unwrap_or_default().to_owned()
    };
    assert!(
        issued_access.contains(&access) && access.starts_with(&format!("at-{chain}-")),
        "{moment}: {} contains {access:?}, which the issuer never handed out for {chain}",
        path.display()
    );
    Some(access)
}

/// Opens the session store and returns its refresh token per chain,
/// asserting that it decrypts and contains only tokens the issuer handed out.
fn check_store(layout: &Layout, issuer: &IssuerState, moment: &str) -> BTreeMap<String, String> {
    let (store, problems) = SessionStore::open(&layout.store, &layout.key);
    assert!(problems.is_empty(), "{moment}: the session store has problems: {problems:?}");
    let mut refresh_tokens = BTreeMap::new();
    for chain in CHAINS {
        let Some(stored) = store.restored(chain) else { continue };
        let access = stored.token.access_token.expose().to_owned();
        assert!(
            issuer.issued_access.contains(&access) && access.starts_with(&format!("at-{chain}-")),
            "{moment}: the store contains access token {access:?} for {chain}, which the issuer never handed out"
        );
        let refresh = stored.token.refresh_token.map(|secret| secret.expose().to_owned());
        let refresh = refresh.unwrap_or_else(|| panic!("{moment}: the store entry of {chain} has no refresh token"));
        assert!(
            issuer.issued_refresh.contains(&refresh) && refresh.starts_with(&format!("rt-{chain}-")),
            "{moment}: the store contains refresh token {refresh:?} for {chain}, which the issuer never handed out"
        );
        refresh_tokens.insert(chain.to_owned(), refresh);
    }
    refresh_tokens
}

/// Returns the refresh token a restarted daemon will present for `chain`:
/// the one in the store, else the seed.
fn resume_token(stored: &BTreeMap<String, String>, chain: &str) -> String {
    stored.get(chain).cloned().unwrap_or_else(|| seed_token(chain))
}

/// Returns the serial number of a token value such as `rt-alpha-00000012`.
fn serial(token: &str) -> u64 {
    let digits = token.rsplit('-').next().unwrap_or_default();
    digits.parse().unwrap_or_else(|_| panic!("token {token:?} has no serial number"))
}

/// Returns the temporary files `write_atomic` left behind in `directory`,
/// asserting that none is readable by group or others.
fn stray_temp_files(directory: &Path) -> Vec<String> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(directory).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && name.contains(".tmp-") {
            let mode = entry.metadata().unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "temporary file {name} has mode {mode:o}");
            names.push(name);
        }
    }
    names
}

fn assert_no_panic_in_log(log: &Path, moment: &str) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    assert!(!text.contains("panicked"), "{moment}: the daemon panicked:\n{text}");
}

/// What the kill cycles observed.
#[derive(Default)]
struct KillStats {
    kills: usize,
    duration: Duration,
    /// Reads of all sinks, while the daemon ran and after each kill.
    sink_reads: usize,
    /// Each time the store went back to an older refresh token of a chain,
    /// once per pair of serials, with the moment it was first seen.
    rollbacks: BTreeMap<(&'static str, u64, u64), String>,
    /// Kills after which the store held the previous refresh token of a
    /// chain, mostly because the kill came between the issuer's response and
    /// the store write.
    kills_with_store_one_behind: usize,
    /// Kills after which the store held the previous refresh token of a chain
    /// while its file sink held the access token issued with the latest one.
    kills_with_store_behind_file_sink: usize,
    kills_leaving_temp_files: usize,
    stray_files: HashSet<String>,
}

/// The newest refresh token serial seen in the store, per chain.
type NewestSerials = BTreeMap<&'static str, u64>;

/// The issuer, the daemon's files and the random kill times of one test.
struct CrashTest {
    _server: MockServer,
    issuer: RotatingIssuer,
    token_url: String,
    _directory: tempfile::TempDir,
    layout: Layout,
    rng: StdRng,
}

impl CrashTest {
    async fn start() -> CrashTest {
        let seed: u64 = std::env::var("CRASH_TEST_SEED")
            .ok()
            .and_then(|text| text.parse().ok())
            .unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64);
        eprintln!("CRASH_TEST_SEED={seed}");

        let server = MockServer::start().await;
        let issuer = RotatingIssuer::new();
        Mock::given(method("POST")).respond_with(issuer.clone()).mount(&server).await;
        let token_url = format!("{}/token", server.uri());

        let directory = tempfile::tempdir().unwrap();
        let layout = Layout::create(directory.path());
        layout.write_config(&token_url, "check");
        let check = std::process::Command::new(env!("CARGO_BIN_EXE_tokensync"))
            .args(["check-config", layout.config.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(check.status.success(), "the test configuration is invalid: {}", String::from_utf8_lossy(&check.stderr));

        CrashTest { _server: server, issuer, token_url, _directory: directory, layout, rng: StdRng::seed_from_u64(seed) }
    }

    fn daemon_args<'a>(&'a self, listen_address: &'a str) -> [&'a str; 7] {
        ["run", "--config", self.layout.config.to_str().unwrap(), "--web.listen-address", listen_address, "--log.level", "info"]
    }

    /// Reads every sink and checks it against the issuer. Returns the access
    /// token of each file sink and the refresh token of each store entry.
    fn read_sinks(
        &self,
        issuer: &IssuerState,
        moment: &str,
        newest: &mut NewestSerials,
        stats: &mut KillStats,
    ) -> (BTreeMap<&'static str, Option<String>>, BTreeMap<String, String>) {
        let mut file_tokens = BTreeMap::new();
        for chain in CHAINS {
            file_tokens.insert(chain, check_file_sink(&self.layout, chain, &issuer.issued_access, moment));
        }
        let stored = check_store(&self.layout, issuer, moment);
        for chain in CHAINS {
            let Some(refresh) = stored.get(chain) else { continue };
            let found = serial(refresh);
            let newest_serial = newest.entry(chain).or_insert(0);
            if found < *newest_serial {
                let message = format!("{moment}: the store went back from {} to {refresh}", refresh_token(chain, *newest_serial));
                stats.rollbacks.entry((chain, *newest_serial, found)).or_insert(message);
            }
            *newest_serial = (*newest_serial).max(found);
        }
        stats.sink_reads += 1;
        (file_tokens, stored)
    }

    /// Starts the daemon `count` times and kills each run with SIGKILL after
    /// a random delay in `delays_ms`. The sinks are read every millisecond
    /// or so while the daemon runs, and checked after every kill.
    async fn kill_cycles(&mut self, count: usize, delays_ms: RangeInclusive<u64>) -> KillStats {
        let started = Instant::now();
        let mut stats = KillStats::default();
        let mut newest = NewestSerials::new();
        for kill in 1..=count {
            assert!(
                started.elapsed() < KILL_PHASE_DEADLINE,
                "only {} kills in {KILL_PHASE_DEADLINE:?}; the machine is too slow for this test",
                kill - 1
            );
            self.layout.write_config(&self.token_url, &format!("run-{kill}"));
            let mut daemon = start_tokensync(&self.daemon_args("127.0.0.1:0"), &self.layout.log);
            let kill_at = Instant::now() + Duration::from_millis(self.rng.random_range(delays_ms.clone()));

            let during = format!("during run {kill}");
            while Instant::now() < kill_at {
                self.read_sinks(&self.issuer.state(), &during, &mut newest, &mut stats);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            kill_daemon(&mut daemon, &self.layout.log);
            stats.kills += 1;

            let after = format!("after kill {kill}");
            let issuer = self.issuer.state();
            let (file_tokens, stored) = self.read_sinks(&issuer, &after, &mut newest, &mut stats);
            let mut one_behind = false;
            let mut behind_file_sink = false;
            for chain in CHAINS {
                let resume = resume_token(&stored, chain);
                let state = &issuer.chains[chain];
                let previous = state.previous.as_deref() == Some(resume.as_str());
                assert!(
                    resume == state.latest || previous,
                    "{after}: a restart would present {resume} for {chain}, but the issuer accepts only {} or {:?}",
                    state.latest,
                    state.previous
                );
                one_behind |= previous;
                // The file sink is written only after the rotated refresh
                // token was persisted. So when the file has the latest access
                // token and the store the previous refresh token, an older
                // write replaced the store after the newer one.
                let latest_access = state.latest.replacen("rt-", "at-", 1);
                behind_file_sink |= previous && file_tokens[chain].as_deref() == Some(latest_access.as_str());
            }
            drop(issuer);
            stats.kills_with_store_one_behind += usize::from(one_behind);
            stats.kills_with_store_behind_file_sink += usize::from(behind_file_sink);

            let mut new_stray = false;
            for directory in [&self.layout.out, &self.layout.state] {
                for name in stray_temp_files(directory) {
                    new_stray |= stats.stray_files.insert(name);
                }
            }
            stats.kills_leaving_temp_files += usize::from(new_stray);
            assert_no_panic_in_log(&self.layout.log, &after);
        }
        stats.duration = started.elapsed();
        stats
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_never_corrupts_sinks() {
    let mut test = CrashTest::start().await;
    let stats = test.kill_cycles(KILLS, KILL_AFTER_MS).await;
    let layout = &test.layout;
    let issuer = &test.issuer;

    // Restart once: the daemon must resume from the store.
    let (store, problems) = SessionStore::open(&layout.store, &layout.key);
    assert!(problems.is_empty(), "{problems:?}");
    let stored: BTreeMap<String, String> = CHAINS
        .iter()
        .filter_map(|chain| {
            let refresh = store.restored(chain)?.token.refresh_token?;
            Some((chain.to_string(), refresh.expose().to_owned()))
        })
        .collect();
    layout.write_config(&test.token_url, "final");
    let address = format!("127.0.0.1:{}", free_port());
    let mut daemon = start_tokensync(&test.daemon_args(&address), &layout.log);
    let client = tokensync::source::build_http_client(Duration::from_secs(5), None).unwrap();
    let base = format!("http://{address}");
    wait_ready(&client, &base, &layout.log, Duration::from_secs(15)).await;

    // Wait for four refreshes of each chain.
    let final_requests = |chain: &str| -> Vec<Presentation> {
        let state = issuer.state();
        state.presentations.iter().filter(|p| p.run == "final" && p.chain == chain).cloned().collect()
    };
    let resumed = common::eventually(Duration::from_secs(15), || CHAINS.iter().all(|chain| final_requests(chain).len() >= 4)).await;
    assert!(resumed, "the restarted daemon did not refresh:\n{}", std::fs::read_to_string(&layout.log).unwrap_or_default());
    for chain in CHAINS {
        let requests = final_requests(chain);
        let expected = resume_token(&stored, chain);
        assert_eq!(requests[0].refresh_token, expected, "the first refresh of {chain} after the restart does not use the store");
        assert_ne!(requests[0].verdict, Verdict::Unknown);
        for request in &requests[1..] {
            assert_eq!(request.verdict, Verdict::Latest, "{chain}: {request:?}");
        }
    }

    let metrics = get_ok(&client, &format!("{base}/metrics")).await.expect("GET /metrics failed");
    for chain in CHAINS {
        let rejected = sample(&metrics, "tokensync_refresh_failures_total", &[("token", chain), ("reason", "rejected")]);
        assert_eq!(rejected, Some(0.0), "{chain} was rejected after the restart");
        assert_eq!(sample(&metrics, "tokensync_token_valid", &[("token", chain)]), Some(1.0), "{chain} is not valid");
    }
    let status = daemon.terminate(Duration::from_secs(10)).expect("tokensync must stop on SIGTERM");
    assert!(status.success(), "exit status {status}");
    let log = std::fs::read_to_string(&layout.log).unwrap();
    for chain in CHAINS {
        assert!(!log.contains(&format!("at-{chain}-")), "an access token leaked into the log");
        assert!(!log.contains(&format!("rt-{chain}-")), "a refresh token leaked into the log");
    }
    assert!(!log.contains(CLIENT_SECRET), "the client secret leaked into the log");

    // After its first request per chain, no daemon run presented anything but the latest refresh token.
    let issuer_state = issuer.state();
    let unknown: Vec<&Presentation> = issuer_state.presentations.iter().filter(|p| p.verdict == Verdict::Unknown).collect();
    assert!(unknown.is_empty(), "the issuer saw unknown refresh tokens: {unknown:?}");
    let mut seen_runs_and_chains = HashSet::new();
    let mut resumed_with_previous = 0;
    for presentation in &issuer_state.presentations {
        let first_of_run = seen_runs_and_chains.insert((presentation.run.clone(), presentation.chain.clone()));
        if first_of_run {
            resumed_with_previous += usize::from(presentation.verdict == Verdict::Previous);
        } else {
            assert_eq!(presentation.verdict, Verdict::Latest, "a daemon run presented a stale refresh token: {presentation:?}");
        }
    }
    assert!(issuer_state.presentations.len() >= KILLS, "too few token requests for the kills to land among writes");

    // NOTE: This test counts store rollbacks without failing on them, because
    // they come from a known race. `session_store_never_rolls_back` checks them.
    eprintln!(
        "{} kills in {:?}; {} token requests; {} sink reads; kills leaving a temporary file: {} ({} files); \
         kills with the store one rotation behind the issuer: {}; runs resuming with the previous refresh token: \
         {resumed_with_previous}; store rollbacks seen: {}; kills with the store behind the file sink: {}",
        stats.kills,
        stats.duration,
        issuer_state.presentations.len(),
        stats.sink_reads,
        stats.kills_leaving_temp_files,
        stats.stray_files.len(),
        stats.kills_with_store_one_behind,
        stats.rollbacks.len(),
        stats.kills_with_store_behind_file_sink,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_store_never_rolls_back() {
    let mut test = CrashTest::start().await;
    let stats = test.kill_cycles(KILLS, KILL_AFTER_MS).await;
    let rollbacks: Vec<&String> = stats.rollbacks.values().collect();
    assert!(rollbacks.is_empty(), "the store went back to older refresh tokens: {rollbacks:?}");
    assert_eq!(stats.kills_with_store_behind_file_sink, 0, "kills left the store behind its file sink");
}
