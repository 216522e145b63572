//! Load: token reads through the API and /metrics scrapes at high
//! concurrency for 30 s while tokens refresh every second or two. Bounded in
//! time, loopback only. Expects no failed request, no torn or expired read,
//! and flat memory.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{free_port, start_tokensync, wait_ready};
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

const TOKENS: usize = 8;
const WORKERS: usize = 32;
const RUN_FOR: Duration = Duration::from_secs(30);
const API_TOKEN: &str = "load-api-token";

/// Issues `load-N` tokens living 3 s and remembers each one's expiry.
struct Issuer {
    next: AtomicU64,
    expiries: Arc<Mutex<HashMap<String, chrono::DateTime<chrono::Utc>>>>,
}

impl Respond for Issuer {
    fn respond(&self, _request: &Request) -> ResponseTemplate {
        let token = format!("load-{}", self.next.fetch_add(1, Ordering::SeqCst));
        self.expiries.lock().unwrap().insert(token.clone(), chrono::Utc::now() + chrono::TimeDelta::seconds(3));
        ResponseTemplate::new(200).set_body_json(serde_json::json!({"access_token": token, "expires_in": 3}))
    }
}

fn resident_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|line| line.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_and_scrapes_under_refresh() {
    let expiries = Arc::new(Mutex::new(HashMap::new()));
    let issuer = MockServer::start().await;
    Mock::given(method("POST")).respond_with(Issuer { next: AtomicU64::new(1), expiries: expiries.clone() }).mount(&issuer).await;

    let directory = tempfile::tempdir().unwrap();
    std::fs::write(directory.path().join("api-token"), API_TOKEN).unwrap();
    let api_port = free_port();
    let mut config = format!("api: {{listen: 'tcp://127.0.0.1:{api_port}', bearer_token_file: {}/api-token}}\ntokens:\n", directory.path().display());
    for index in 0..TOKENS {
        config.push_str(&format!(
            "  - name: t{index}\n    source: {{type: oauth2_client_credentials, token_url: '{}/token', client_id: c{index}, client_secret: s}}\n    refresh: {{lifetime_fraction: 0.5, jitter: 0.2, min_interval: 500ms}}\n",
            issuer.uri()
        ));
    }
    let config_path = directory.path().join("tokensync.yaml");
    std::fs::write(&config_path, config).unwrap();
    let address = format!("127.0.0.1:{}", free_port());
    let log_path = directory.path().join("log");
    let mut daemon = start_tokensync(&["run", "--config", config_path.to_str().unwrap(), "--web.listen-address", &address, "--log.level", "warn"], &log_path);
    let pid = daemon.0.as_ref().unwrap().id();
    let client = tokensync::source::build_http_client(Duration::from_secs(10), None).unwrap();
    wait_ready(&client, &format!("http://{address}"), &log_path, Duration::from_secs(10)).await;

    let reads = Arc::new(AtomicU64::new(0));
    let scrapes = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let deadline = Instant::now() + RUN_FOR;
    let mut memory = Vec::new();
    let mut workers = Vec::new();
    for worker in 0..WORKERS {
        let (client, reads, scrapes, failures, expiries) = (client.clone(), reads.clone(), scrapes.clone(), failures.clone(), expiries.clone());
        let (api, metrics) = (format!("http://127.0.0.1:{api_port}"), format!("http://{address}/metrics"));
        workers.push(tokio::spawn(async move {
            let mut round = 0usize;
            while Instant::now() < deadline {
                round += 1;
                if worker % 8 == 0 && round % 4 == 0 {
                    let scraped = match client.get(&metrics).send().await {
                        Ok(response) if response.status() == 200 => response.text().await.map(|_| ()).map_err(|error| error.to_string()),
                        Ok(response) => Err(format!("status {}", response.status())),
                        Err(error) => Err(error.to_string()),
                    };
                    match scraped {
                        Ok(()) => {
                            scrapes.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(error) => failures.lock().unwrap().push(format!("scrape: {error}")),
                    }
                    continue;
                }
                let name = format!("t{}", (worker + round) % TOKENS);
                let response = client
                    .get(format!("{api}/v1/tokens/{name}"))
                    .bearer_auth(API_TOKEN)
                    .header("Accept", "text/plain")
                    .send()
                    .await;
                let read_at = chrono::Utc::now();
                match response {
                    Ok(response) if response.status() == 200 => {
                        let token = response.text().await.unwrap_or_default();
                        let expiry = expiries.lock().unwrap().get(&token).copied();
                        match expiry {
                            // The read is valid when the token was unexpired when the response arrived.
                            Some(expiry) if expiry > read_at => {
                                reads.fetch_add(1, Ordering::Relaxed);
                            }
                            Some(_) => failures.lock().unwrap().push(format!("{name}: an expired token was served")),
                            None => failures.lock().unwrap().push(format!("{name}: a token the issuer never issued ({} bytes)", token.len())),
                        }
                    }
                    Ok(response) => failures.lock().unwrap().push(format!("{name}: status {}", response.status())),
                    Err(error) => failures.lock().unwrap().push(format!("{name}: {error}")),
                }
            }
        }));
    }
    for second in 0..RUN_FOR.as_secs() {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if second == 9 || second + 1 == RUN_FOR.as_secs() {
            memory.push(resident_kib(pid));
        }
    }
    for worker in workers {
        worker.await.unwrap();
    }
    daemon.terminate(Duration::from_secs(10)).unwrap();

    let failures = failures.lock().unwrap();
    let reads = reads.load(Ordering::Relaxed);
    let scrapes = scrapes.load(Ordering::Relaxed);
    let issued = expiries.lock().unwrap().len();
    println!("reads {reads}, scrapes {scrapes}, tokens issued {issued}, resident memory at 10 s and 30 s: {memory:?} KiB");
    assert!(failures.is_empty(), "{} failed or invalid reads, first: {:?}", failures.len(), failures.first());
    assert!(reads > 10_000, "only {reads} reads in 30 s");
    assert!(scrapes > 100, "only {scrapes} scrapes in 30 s");
    assert!(issued >= TOKENS * 15, "tokens refreshed only {issued} times in 30 s");
    let growth = memory[1].saturating_sub(memory[0]);
    assert!(growth < 16 * 1024, "resident memory grew by {growth} KiB between 10 s and 30 s: {memory:?}");
}
