//! Helper programs for the benchmark harness in `scripts/bench/`: reference
//! servers, a mock token endpoint, a session store generator and the
//! in-process stampede and scale measurements. Every server listens on a
//! loopback address only and exits by itself after `--exit-after`.
//!
//! ```sh
//! cargo run --release --example bench_helper -- constant --body-file body.json --content-type application/json
//! cargo run --release --example bench_helper -- issuer --lifetime-min 3600 --lifetime-max 7200 --latency 20ms
//! cargo run --release --example bench_helper -- session-store --path store.json --key-file key --tokens 10000
//! cargo run --release --example bench_helper -- stampede --callers 10000 --latency 50ms --rounds 5
//! valgrind --tool=callgrind target/release/examples/bench_helper reads --tokens 10000 --reads 100000
//! ```

use std::convert::Infallible;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, Request, Response, StatusCode, header};
use chrono::Utc;
use clap::{Parser, Subcommand};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokensync::sink::{SessionKey, SessionStore};
use tokensync::source::{BoxFuture, FetchRequest, Source, SourceError};
use tokensync::{Engine, EngineOptions, Token, TokenSpec};

#[derive(Parser)]
#[command(about = "Helper programs for scripts/bench/run")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serves one constant body to every request: the reference server for the token API.
    Constant {
        /// File whose bytes are the response body.
        #[arg(long)]
        body_file: PathBuf,
        #[arg(long, default_value = "application/json")]
        content_type: String,
        /// Address to listen on; port 0 picks a free port. Must be a loopback address.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
        /// Stops the server after this long (humantime, such as 90s).
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        exit_after: Duration,
    },
    /// Serves a mock OAuth2 token endpoint that responds to every POST with a
    /// new token. `GET /stats` returns the request count and the maximum number of
    /// requests and connections open at once, and `GET /reset` starts them afresh.
    Issuer {
        /// Shortest `expires_in` handed out, in seconds.
        #[arg(long, default_value_t = 3600)]
        lifetime_min: u64,
        /// Longest `expires_in` handed out, in seconds; lifetimes are spread
        /// evenly between the two bounds.
        #[arg(long, default_value_t = 7200)]
        lifetime_max: u64,
        /// Time each token request takes before the response is sent.
        #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
        latency: Duration,
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        exit_after: Duration,
    },
    /// Writes an encrypted session store with `--tokens` valid tokens named
    /// `PREFIX0`, `PREFIX1`, ... through `SessionStore::save`.
    SessionStore {
        #[arg(long)]
        path: PathBuf,
        /// File that receives a new random key (base64).
        #[arg(long)]
        key_file: PathBuf,
        #[arg(long)]
        tokens: usize,
        #[arg(long, default_value = "t")]
        prefix: String,
        /// Lifetime of every stored token, counted from now.
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        lifetime: Duration,
    },
    /// Runs `--callers` concurrent `ensure_fresh` calls on one expired token
    /// whose source takes `--latency`, and reports the issuer requests and
    /// the wait of each caller.
    Stampede {
        #[arg(long, default_value_t = 10_000)]
        callers: usize,
        #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration)]
        latency: Duration,
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// Calls `Engine::token` and a bare `ArcSwap::load` of the same token
    /// `--reads` times each, in two functions that callgrind reports apart.
    Reads {
        #[arg(long, default_value_t = 10_000)]
        tokens: usize,
        #[arg(long, default_value_t = 1_000_000)]
        reads: u64,
    },
    /// Encodes `/metrics` of an engine with `--tokens` tokens `--scrapes` times.
    Encode {
        #[arg(long, default_value_t = 2_000)]
        tokens: usize,
        #[arg(long, default_value_t = 10)]
        scrapes: u32,
    },
    /// Runs `--tokens` tokens in one engine against an in-process mock source
    /// with lifetimes spread between the two bounds. Reports the time to
    /// obtain them all, the maximum of requests in flight at once, the
    /// resident memory per token, and the CPU used over `--idle`, during
    /// which no refresh is due.
    Scale {
        #[arg(long, default_value_t = 100_000)]
        tokens: usize,
        /// Time each token request takes.
        #[arg(long, default_value = "10ms", value_parser = humantime::parse_duration)]
        latency: Duration,
        #[arg(long, default_value_t = 3600)]
        lifetime_min: u64,
        #[arg(long, default_value_t = 7200)]
        lifetime_max: u64,
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        idle: Duration,
        /// Gives up when the tokens are not all obtained within this time.
        #[arg(long, default_value = "20m", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Adds `--tokens` tokens to an engine, one `add_token` call each, and
    /// prints the time taken per thousand tokens added.
    AddTokens {
        #[arg(long, default_value_t = 10_000)]
        tokens: usize,
    },
}

fn main() -> Result<(), String> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|error| format!("cannot start the tokio runtime: {error}"))?;
    match cli.command {
        Command::Constant { body_file, content_type, listen, exit_after } => {
            let body = std::fs::read(&body_file).map_err(|error| format!("cannot read {}: {error}", body_file.display()))?;
            let content_type = HeaderValue::from_str(&content_type).map_err(|_| format!("invalid content type `{content_type}`"))?;
            runtime.block_on(serve_constant(&listen, Bytes::from(body), content_type, exit_after))
        }
        Command::Issuer { lifetime_min, lifetime_max, latency, listen, exit_after } => {
            if lifetime_min == 0 || lifetime_max < lifetime_min {
                return Err(format!("invalid lifetimes {lifetime_min}..{lifetime_max}: need 0 < --lifetime-min <= --lifetime-max"));
            }
            let issuer = Arc::new(Issuer { lifetime_min, lifetime_max, latency, ..Issuer::default() });
            runtime.block_on(serve_issuer(&listen, issuer, exit_after))
        }
        Command::SessionStore { path, key_file, tokens, prefix, lifetime } => write_session_store(&path, &key_file, tokens, &prefix, lifetime),
        Command::Stampede { callers, latency, rounds } => runtime.block_on(stampede(callers, latency, rounds)),
        Command::Reads { tokens, reads } => {
            let _context = runtime.enter();
            profile_reads(tokens, reads)
        }
        Command::Encode { tokens, scrapes } => {
            let _context = runtime.enter();
            profile_encode(tokens, scrapes)
        }
        Command::Scale { tokens, latency, lifetime_min, lifetime_max, idle, timeout } => {
            if lifetime_min == 0 || lifetime_max < lifetime_min {
                return Err(format!("invalid lifetimes {lifetime_min}..{lifetime_max}: need 0 < --lifetime-min <= --lifetime-max"));
            }
            runtime.block_on(scale(tokens, latency, (lifetime_min, lifetime_max), idle, timeout))
        }
        Command::AddTokens { tokens } => {
            let _context = runtime.enter();
            add_tokens(tokens)
        }
    }
}

/// Binds `listen`, refusing anything but a loopback address, and prints
/// `listening ADDRESS` for the harness.
async fn bind_loopback(listen: &str) -> Result<tokio::net::TcpListener, String> {
    let address: std::net::SocketAddr = listen.parse().map_err(|_| format!("invalid listen address `{listen}`: use 127.0.0.1:PORT"))?;
    if !address.ip().is_loopback() {
        return Err(format!("listen address {address} is not a loopback address"));
    }
    let listener = tokio::net::TcpListener::bind(address).await.map_err(|error| format!("cannot listen on {address}: {error}"))?;
    let local = listener.local_addr().map_err(|error| error.to_string())?;
    println!("listening {local}");
    std::io::stdout().flush().map_err(|error| error.to_string())?;
    Ok(listener)
}

/// Accepts connections until `exit_after` has passed or SIGTERM arrives,
/// passing each one to `on_connection`.
async fn accept_loop(
    listener: tokio::net::TcpListener,
    exit_after: Duration,
    mut on_connection: impl FnMut(tokio::net::TcpStream),
) -> Result<(), String> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|error| format!("cannot install the SIGTERM handler: {error}"))?;
    let deadline = tokio::time::sleep(exit_after);
    tokio::pin!(deadline);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    eprintln!("accepting a connection failed: {error}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            () = &mut deadline => return Ok(()),
            _ = terminate.recv() => return Ok(()),
        };
        on_connection(stream);
    }
}

/// Serves one connection with `handle` on HTTP/1.1 with keep-alive.
async fn serve_connection<F, Fut>(stream: tokio::net::TcpStream, handle: F)
where
    F: Fn(Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Body>> + Send + 'static,
{
    let service = service_fn(move |request| {
        let handle = handle.clone();
        async move { Ok::<_, Infallible>(handle(request).await) }
    });
    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
}

async fn serve_constant(listen: &str, body: Bytes, content_type: HeaderValue, exit_after: Duration) -> Result<(), String> {
    let listener = bind_loopback(listen).await?;
    let respond = move |_request| {
        let (body, content_type) = (body.clone(), content_type.clone());
        async move {
            let mut response = Response::new(Body::from(body));
            response.headers_mut().insert(header::CONTENT_TYPE, content_type);
            response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
    };
    accept_loop(listener, exit_after, |stream| {
        tokio::spawn(serve_connection(stream, respond.clone()));
    })
    .await
}

/// Counters of the mock token endpoint.
#[derive(Default)]
struct Issuer {
    lifetime_min: u64,
    lifetime_max: u64,
    latency: Duration,
    requests: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    connections: AtomicU64,
    max_connections: AtomicU64,
}

impl Issuer {
    /// Spreads lifetimes evenly over the configured range by a hash of the
    /// request number, so that the spread does not depend on arrival order.
    fn lifetime(&self, number: u64) -> u64 {
        let span = self.lifetime_max - self.lifetime_min + 1;
        self.lifetime_min + number.wrapping_mul(0x9E37_79B9_7F4A_7C15) % span
    }

    /// Sets the request count to zero and the maxima to the current values,
    /// so that the next measurement starts afresh.
    fn reset(&self) {
        self.requests.store(0, Ordering::SeqCst);
        self.max_in_flight.store(self.in_flight.load(Ordering::SeqCst), Ordering::SeqCst);
        self.max_connections.store(self.connections.load(Ordering::SeqCst), Ordering::SeqCst);
    }

    fn stats(&self) -> String {
        format!(
            "requests={} max_in_flight={} max_connections={}\n",
            self.requests.load(Ordering::SeqCst),
            self.max_in_flight.load(Ordering::SeqCst),
            self.max_connections.load(Ordering::SeqCst)
        )
    }
}

/// Increments `counter` and raises `max` to the new value.
fn enter(counter: &AtomicU64, max: &AtomicU64) {
    let now = counter.fetch_add(1, Ordering::SeqCst) + 1;
    max.fetch_max(now, Ordering::SeqCst);
}

async fn serve_issuer(listen: &str, issuer: Arc<Issuer>, exit_after: Duration) -> Result<(), String> {
    let listener = bind_loopback(listen).await?;
    accept_loop(listener, exit_after, |stream| {
        let issuer = issuer.clone();
        tokio::spawn(async move {
            enter(&issuer.connections, &issuer.max_connections);
            let service_issuer = issuer.clone();
            let respond = move |request: Request<hyper::body::Incoming>| {
                let issuer = service_issuer.clone();
                async move { respond_as_issuer(&issuer, request).await }
            };
            serve_connection(stream, respond).await;
            issuer.connections.fetch_sub(1, Ordering::SeqCst);
        });
    })
    .await?;
    eprint!("issuer stopped: {}", issuer.stats());
    Ok(())
}

async fn respond_as_issuer(issuer: &Issuer, request: Request<hyper::body::Incoming>) -> Response<Body> {
    if request.method() == hyper::Method::GET {
        match request.uri().path() {
            "/stats" => return Response::new(Body::from(issuer.stats())),
            "/reset" => {
                issuer.reset();
                return Response::new(Body::from(issuer.stats()));
            }
            _ => {}
        }
    }
    if request.method() != hyper::Method::POST {
        let mut response = Response::new(Body::from("POST a token request, GET /stats or GET /reset\n"));
        *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        return response;
    }
    enter(&issuer.in_flight, &issuer.max_in_flight);
    let number = issuer.requests.fetch_add(1, Ordering::SeqCst) + 1;
    if !issuer.latency.is_zero() {
        tokio::time::sleep(issuer.latency).await;
    }
    let body = serde_json::json!({
        "access_token": format!("mock-access-token-{number:012}"),
        "token_type": "Bearer",
        "expires_in": issuer.lifetime(number),
    });
    issuer.in_flight.fetch_sub(1, Ordering::SeqCst);
    let mut response = Response::new(Body::from(body.to_string()));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Tokens saved into one store before its entries are merged into the
/// output: `SessionStore::save` rewrites the whole file on every call, so
/// saving 10,000 tokens of about 360 bytes into one store would write about
/// 18 GB.
const STORE_CHUNK: usize = 100;

fn write_session_store(path: &Path, key_file: &Path, tokens: usize, prefix: &str, lifetime: Duration) -> Result<(), String> {
    let key = SessionKey::generate();
    std::fs::write(key_file, key.to_base64().as_bytes()).map_err(|error| format!("cannot write {}: {error}", key_file.display()))?;
    let scratch = tempfile::tempdir().map_err(|error| format!("cannot create a scratch directory: {error}"))?;
    let now = Utc::now();

    let mut merged = serde_json::Map::new();
    let mut header = None;
    for (chunk_index, chunk) in (0..tokens).collect::<Vec<_>>().chunks(STORE_CHUNK).enumerate() {
        let chunk_path = scratch.path().join(format!("chunk-{chunk_index}.json"));
        let (store, problems) = SessionStore::open(&chunk_path, &key);
        if let Some(problem) = problems.first() {
            return Err(problem.message.clone());
        }
        for index in chunk {
            let token = Token::bearer(format!("stored-access-token-{index:08}"), now, lifetime);
            store.save(&format!("{prefix}{index}"), &token, now).map_err(|error| error.to_string())?;
        }
        // Entries are encrypted with the token name as associated data and
        // are independent of the file they sit in, so they can be merged.
        let text = std::fs::read(&chunk_path).map_err(|error| format!("cannot read {}: {error}", chunk_path.display()))?;
        let mut file: serde_json::Value = serde_json::from_slice(&text).map_err(|error| error.to_string())?;
        if let Some(entries) = file.get_mut("entries").and_then(serde_json::Value::as_object_mut) {
            merged.append(entries);
        }
        header.get_or_insert(file);
    }

    let mut file = header.unwrap_or_else(|| serde_json::json!({"format": "tokensync-session-store", "version": 1}));
    file["entries"] = serde_json::Value::Object(merged);
    let bytes = serde_json::to_vec_pretty(&file).map_err(|error| error.to_string())?;
    std::fs::write(path, &bytes).map_err(|error| format!("cannot write {}: {error}", path.display()))?;

    // Check the merged file with the library before the harness relies on it.
    let (store, problems) = SessionStore::open(path, &key);
    if !problems.is_empty() {
        return Err(format!("the merged store has {} problems, first: {}", problems.len(), problems[0].message));
    }
    let restored = (0..tokens).filter(|index| store.restored(&format!("{prefix}{index}")).is_some()).count();
    if restored != tokens {
        return Err(format!("the merged store restores {restored} of {tokens} tokens"));
    }
    println!("session store {} entries={tokens} bytes={} bytes_per_token={}", path.display(), bytes.len(), bytes.len() / tokens.max(1));
    Ok(())
}

/// A token source that takes a fixed time and counts its requests.
struct SlowSource {
    latency: Duration,
    requests: AtomicU64,
}

impl Source for SlowSource {
    fn kind(&self) -> &'static str {
        "mock"
    }

    fn fetch<'a>(&'a self, request: FetchRequest<'a>) -> BoxFuture<'a, Result<Token, SourceError>> {
        Box::pin(async move {
            let number = self.requests.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::time::sleep(self.latency).await;
            Ok(Token::bearer(format!("fresh-{number}"), request.requested_at, Duration::from_secs(3600)))
        })
    }
}

/// Outcome of one stampede round.
struct Round {
    issuer_requests: u64,
    /// Wait of each caller from its own call until `ensure_fresh` returned, sorted.
    waits: Vec<Duration>,
    /// Time from the release of all callers until the last one returned.
    last_returned: Duration,
}

async fn stampede(callers: usize, latency: Duration, rounds: usize) -> Result<(), String> {
    if callers == 0 || rounds == 0 {
        return Err("--callers and --rounds must be at least 1".to_owned());
    }
    let source = Arc::new(SlowSource { latency, requests: AtomicU64::new(0) });
    let engine = Engine::new(EngineOptions::default());
    let mut spec = TokenSpec::new("stampede", Some(source.clone() as Arc<dyn Source>));
    // Keeps the scheduler from refreshing on its own between rounds: only
    // the callers may trigger a request.
    spec.policy.min_interval = Duration::from_secs(24 * 3600);
    engine.add_token(spec).map_err(|error| error.to_string())?;
    engine.ensure_fresh("stampede").await.map_err(|error| error.to_string())?;

    let mut single = Vec::new();
    let mut p99 = Vec::new();
    let mut fan_out_p99 = Vec::new();
    for round in 1..=rounds {
        // The references: one caller alone on an expired token with the
        // same source, and the same number of tasks waiting for one value
        // sent after the same latency, without the engine.
        let alone = run_round(&engine, &source, 1).await?;
        single.push(alone.waits[0]);
        let fan_out = run_fan_out(callers, latency).await?;
        fan_out_p99.push(percentile(&fan_out, 0.99));

        let outcome = run_round(&engine, &source, callers).await?;
        let round_p99 = percentile(&outcome.waits, 0.99);
        println!(
            "round {round}: callers={callers} issuer_requests={} wait_p50_ms={:.2} wait_p99_ms={:.2} wait_max_ms={:.2} last_return_ms={:.2} single_caller_ms={:.2} fan_out_p99_ms={:.2}",
            outcome.issuer_requests,
            millis(percentile(&outcome.waits, 0.5)),
            millis(round_p99),
            millis(*outcome.waits.last().unwrap_or(&Duration::ZERO)),
            millis(outcome.last_returned),
            millis(alone.waits[0]),
            millis(percentile(&fan_out, 0.99)),
        );
        if outcome.issuer_requests != 1 {
            return Err(format!("round {round}: {callers} callers caused {} issuer requests, expected 1", outcome.issuer_requests));
        }
        p99.push(round_p99);
    }
    engine.shutdown();

    p99.sort();
    single.sort();
    fan_out_p99.sort();
    let median_p99 = p99[p99.len() / 2];
    let median_single = single[single.len() / 2];
    let median_fan_out = fan_out_p99[fan_out_p99.len() / 2];
    println!(
        "RESULT stampede callers={callers} rounds={rounds} issuer_requests_per_round=1 latency_ms={:.2} p99_median_ms={:.2} p99_min_ms={:.2} p99_max_ms={:.2} single_caller_median_ms={:.2} fan_out_p99_median_ms={:.2} p99_over_latency_ms={:.2} ratio_p99_to_single={:.3} ratio_p99_to_fan_out={:.3}",
        millis(latency),
        millis(median_p99),
        millis(p99[0]),
        millis(p99[p99.len() - 1]),
        millis(median_single),
        millis(median_fan_out),
        millis(median_p99) - millis(latency),
        median_p99.as_secs_f64() / median_single.as_secs_f64(),
        median_p99.as_secs_f64() / median_fan_out.as_secs_f64(),
    );
    Ok(())
}

/// Hands the engine an expired token, then releases `callers` tasks at once
/// on `ensure_fresh` and collects their waits.
async fn run_round(engine: &Engine, source: &SlowSource, callers: usize) -> Result<Round, String> {
    let expired = Token::bearer("expired", Utc::now() - chrono::TimeDelta::hours(2), Duration::from_secs(3600));
    engine.sync_token("stampede", expired).map_err(|error| error.to_string())?;
    let requests_before = source.requests.load(Ordering::SeqCst);

    let (release, released) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::with_capacity(callers);
    for _ in 0..callers {
        let (engine, mut released) = (engine.clone(), released.clone());
        tasks.push(tokio::spawn(async move {
            let _ = released.wait_for(|go| *go).await;
            let started = Instant::now();
            let outcome = engine.ensure_fresh("stampede").await;
            (started.elapsed(), Instant::now(), outcome.map(|token| token.access_token.expose().to_owned()))
        }));
    }
    drop(released);
    // Lets every task reach its wait before the release.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let released_at = Instant::now();
    release.send_replace(true);

    let mut waits = Vec::with_capacity(callers);
    let mut last_returned = Duration::ZERO;
    let mut tokens = std::collections::BTreeSet::new();
    for task in tasks {
        let (wait, returned_at, outcome) = task.await.map_err(|error| format!("a caller task failed: {error}"))?;
        let token = outcome.map_err(|error| format!("a caller got an error: {error}"))?;
        tokens.insert(token);
        waits.push(wait);
        last_returned = last_returned.max(returned_at.duration_since(released_at));
    }
    if tokens.len() != 1 {
        return Err(format!("callers received {} different tokens, expected one", tokens.len()));
    }
    waits.sort();
    Ok(Round { issuer_requests: source.requests.load(Ordering::SeqCst) - requests_before, waits, last_returned })
}

/// Releases `callers` tasks that each wait on a watch channel for a value
/// that one more task sends after `latency`: the floor of a stampede on this
/// runtime, with no engine involved. Returns the sorted waits.
async fn run_fan_out(callers: usize, latency: Duration) -> Result<Vec<Duration>, String> {
    let (release, released) = tokio::sync::watch::channel(false);
    let (outcome, outcomes) = tokio::sync::watch::channel(None::<Arc<str>>);
    let mut tasks = Vec::with_capacity(callers);
    for _ in 0..callers {
        let (mut released, mut outcomes) = (released.clone(), outcomes.clone());
        tasks.push(tokio::spawn(async move {
            let _ = released.wait_for(|go| *go).await;
            let started = Instant::now();
            let value = outcomes.wait_for(Option::is_some).await.map(|value| value.clone());
            (started.elapsed(), value.is_ok())
        }));
    }
    drop(released);
    tokio::time::sleep(Duration::from_millis(200)).await;
    release.send_replace(true);
    tokio::spawn(async move {
        tokio::time::sleep(latency).await;
        outcome.send_replace(Some(Arc::from("fresh")));
    });

    let mut waits = Vec::with_capacity(callers);
    for task in tasks {
        let (wait, received) = task.await.map_err(|error| format!("a fan-out task failed: {error}"))?;
        if !received {
            return Err("a fan-out task saw the channel close".to_owned());
        }
        waits.push(wait);
    }
    waits.sort();
    Ok(waits)
}

/// Returns the value below which `share` of the sorted `waits` lie.
fn percentile(waits: &[Duration], share: f64) -> Duration {
    let rank = ((waits.len() as f64 * share).ceil() as usize).clamp(1, waits.len());
    waits[rank - 1]
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// Builds an engine holding `count` tokens `t0`, `t1`, ... without sources,
/// each with a valid one-hour token.
fn engine_with_tokens(count: usize, options: EngineOptions) -> Result<Engine, String> {
    let engine = Engine::new(options);
    let now = Utc::now();
    for index in 0..count {
        let name = format!("t{index}");
        engine.add_token(TokenSpec::new(name.clone(), None)).map_err(|error| error.to_string())?;
        let token = Token::bearer(format!("access-token-{index:08}"), now, Duration::from_secs(3600));
        engine.sync_token(&name, token).map_err(|error| error.to_string())?;
    }
    Ok(engine)
}

fn profile_reads(tokens: usize, reads: u64) -> Result<(), String> {
    let engine = engine_with_tokens(tokens.max(1), EngineOptions::default())?;
    let name = format!("t{}", tokens / 2);
    let bare = arc_swap::ArcSwap::new(engine.token(&name).ok_or("the token is missing")?);
    let started = Instant::now();
    let engine_lengths = read_engine(&engine, &name, reads);
    let engine_time = started.elapsed();
    let started = Instant::now();
    let bare_lengths = read_arc_swap(&bare, reads);
    let bare_time = started.elapsed();
    println!(
        "reads={reads} engine_token_ns={:.1} arc_swap_load_ns={:.1} checksum={}",
        engine_time.as_nanos() as f64 / reads as f64,
        bare_time.as_nanos() as f64 / reads as f64,
        engine_lengths + bare_lengths
    );
    engine.shutdown();
    Ok(())
}

#[inline(never)]
fn read_engine(engine: &Engine, name: &str, reads: u64) -> u64 {
    let mut total = 0;
    for _ in 0..reads {
        total += engine.token(std::hint::black_box(name)).map_or(0, |token| token.token_type.len() as u64);
    }
    total
}

#[inline(never)]
fn read_arc_swap(bare: &arc_swap::ArcSwap<Token>, reads: u64) -> u64 {
    let mut total = 0;
    for _ in 0..reads {
        total += std::hint::black_box(bare).load().token_type.len() as u64;
    }
    total
}

fn profile_encode(tokens: usize, scrapes: u32) -> Result<(), String> {
    let metrics = tokensync::metrics::Metrics::new();
    let engine = engine_with_tokens(tokens, EngineOptions { observer: metrics.clone(), ..EngineOptions::default() })?;
    metrics.attach(engine.clone());
    let mut bytes = 0;
    let started = Instant::now();
    for _ in 0..scrapes {
        bytes = encode_once(&metrics)?;
    }
    println!("scrapes={scrapes} tokens={tokens} bytes_per_scrape={bytes} ms_per_scrape={:.3}", millis(started.elapsed()) / f64::from(scrapes.max(1)));
    metrics.detach();
    engine.shutdown();
    Ok(())
}

#[inline(never)]
fn encode_once(metrics: &tokensync::metrics::Metrics) -> Result<usize, String> {
    metrics.encode_text().map(|text| text.len()).map_err(|_| "encoding the metrics failed".to_owned())
}

fn add_tokens(tokens: usize) -> Result<(), String> {
    let engine = Engine::new(EngineOptions::default());
    let started = Instant::now();
    let mut last = started;
    for index in 0..tokens {
        engine.add_token(TokenSpec::new(format!("t{index}"), None)).map_err(|error| error.to_string())?;
        if (index + 1) % 1000 == 0 {
            println!("added={} ms_for_last_1000={:.1}", index + 1, millis(last.elapsed()));
            last = Instant::now();
        }
    }
    println!("RESULT add_tokens tokens={tokens} total_ms={:.1}", millis(started.elapsed()));
    engine.shutdown();
    Ok(())
}

/// A token source shared by many tokens, like one issuer: a fixed latency,
/// lifetimes spread by a hash of the request number, and counters of the
/// requests in flight.
struct MockIssuerSource {
    latency: Duration,
    lifetimes: (u64, u64),
    requests: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
}

impl Source for MockIssuerSource {
    fn kind(&self) -> &'static str {
        "mock"
    }

    fn fetch<'a>(&'a self, request: FetchRequest<'a>) -> BoxFuture<'a, Result<Token, SourceError>> {
        Box::pin(async move {
            enter(&self.in_flight, &self.max_in_flight);
            let number = self.requests.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::time::sleep(self.latency).await;
            let span = self.lifetimes.1 - self.lifetimes.0 + 1;
            let lifetime = self.lifetimes.0 + number.wrapping_mul(0x9E37_79B9_7F4A_7C15) % span;
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            Ok(Token::bearer(format!("mock-access-token-{number:012}"), request.requested_at, Duration::from_secs(lifetime)))
        })
    }
}

/// Reads a field in kB from /proc/self/status, as bytes.
fn proc_status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status
        .lines()
        .find(|line| line.starts_with(field))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|value| value.parse::<u64>().ok())
        .unwrap_or(0);
    kib * 1024
}

/// CPU time (user and system) used by this process so far.
fn process_cpu() -> Duration {
    // SAFETY: getrusage(2) writes into the zeroed struct we pass and reads nothing else.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let seconds = |time: libc::timeval| Duration::new(time.tv_sec as u64, time.tv_usec as u32 * 1000);
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

async fn scale(tokens: usize, latency: Duration, lifetimes: (u64, u64), idle: Duration, timeout: Duration) -> Result<(), String> {
    let resident_before = proc_status_bytes("VmRSS:");
    let source = Arc::new(MockIssuerSource {
        latency,
        lifetimes,
        requests: AtomicU64::new(0),
        in_flight: AtomicU64::new(0),
        max_in_flight: AtomicU64::new(0),
    });
    let engine = Engine::new(EngineOptions::default());
    let started = Instant::now();
    // Batches of 10,000 through `add_tokens`, which copies the token map
    // once per batch; `add-tokens` measures adding them one at a time.
    let names: Vec<usize> = (0..tokens).collect();
    for batch in names.chunks(10_000) {
        let specs = batch.iter().map(|index| TokenSpec::new(format!("t{index}"), Some(source.clone() as Arc<dyn Source>))).collect();
        engine.add_tokens(specs).map_err(|error| error.to_string())?;
        println!(
            "added={} elapsed_ms={:.0} obtained_so_far={} resident_bytes={}",
            batch[batch.len() - 1] + 1,
            millis(started.elapsed()),
            source.requests.load(Ordering::SeqCst),
            proc_status_bytes("VmRSS:")
        );
        // Lets the schedulers run between batches, as they would in the daemon.
        tokio::task::yield_now().await;
    }
    let added = started.elapsed();

    while !engine.is_ready() {
        if started.elapsed() > timeout {
            engine.shutdown();
            return Err(format!("only {} of {tokens} tokens obtained after {timeout:?}", source.requests.load(Ordering::SeqCst)));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let obtained = started.elapsed();
    let resident = proc_status_bytes("VmRSS:");

    let cpu_before = process_cpu();
    tokio::time::sleep(idle).await;
    let cpu_idle = process_cpu() - cpu_before;
    let requests = source.requests.load(Ordering::SeqCst);
    println!(
        "RESULT scale_in_process tokens={tokens} latency_ms={:.0} add_ms={:.0} obtained_ms={:.0} ms_per_token={:.4} requests={requests} max_in_flight={} resident_bytes={resident} resident_bytes_per_token={:.0} cpu_percent_of_core_over_{}s={:.3}",
        millis(latency),
        millis(added),
        millis(obtained),
        millis(obtained) / tokens.max(1) as f64,
        source.max_in_flight.load(Ordering::SeqCst),
        resident.saturating_sub(resident_before) as f64 / tokens.max(1) as f64,
        idle.as_secs(),
        cpu_idle.as_secs_f64() / idle.as_secs_f64().max(1e-9) * 100.0,
    );
    engine.shutdown();
    Ok(())
}
