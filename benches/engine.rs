//! In-process benchmarks, each beside a reference measured in the same run:
//!
//! - `token_read`: `Engine::token(name)` against a bare `ArcSwap::load` (and
//!   `load_full`) of the same token, with 1 and with 10,000 tokens held;
//! - `metrics_encode`: `Metrics::encode_text` of an engine with 2,000 tokens
//!   against `prometheus_client` encoding a registry of plain gauges with the
//!   same number of series.
//!
//! Run with `cargo bench --bench engine`; BENCHMARKS.md has the figures.

use std::hint::black_box;
use std::time::Duration;

use arc_swap::ArcSwap;
use chrono::Utc;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokensync::metrics::Metrics;
use tokensync::{Engine, EngineOptions, Token, TokenSpec};

/// Builds an engine holding `count` tokens `t0`, `t1`, ... without sources,
/// each with a valid one-hour token.
fn engine_with_tokens(count: usize, options: EngineOptions) -> Engine {
    let engine = Engine::new(options);
    let now = Utc::now();
    for index in 0..count {
        let name = format!("t{index}");
        engine.add_token(TokenSpec::new(name.clone(), None)).expect("token names are unique");
        let token = Token::bearer(format!("access-token-{index:08}"), now, Duration::from_secs(3600));
        engine.sync_token(&name, token).expect("the token was just added");
    }
    engine
}

fn token_read(c: &mut Criterion) {
    // Engine::new spawns its clock watchdog, so it needs a runtime context;
    // the benchmark itself never awaits.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    let _context = runtime.enter();

    let mut group = c.benchmark_group("token_read");
    for count in [1usize, 10_000] {
        let engine = engine_with_tokens(count, EngineOptions::default());
        let name = format!("t{}", count / 2);
        let bare = ArcSwap::new(engine.token(&name).expect("the token is held"));

        group.bench_with_input(BenchmarkId::new("engine_token", count), &name, |b, name| {
            b.iter(|| black_box(engine.token(black_box(name))))
        });
        group.bench_with_input(BenchmarkId::new("arc_swap_load", count), &bare, |b, bare| {
            b.iter(|| black_box(black_box(bare).load()))
        });
        group.bench_with_input(BenchmarkId::new("arc_swap_load_full", count), &bare, |b, bare| {
            b.iter(|| black_box(black_box(bare).load_full()))
        });
        engine.shutdown();
    }
    group.finish();
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabel {
    token: String,
}

fn metrics_encode(c: &mut Criterion) {
    const TOKENS: usize = 2_000;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    let _context = runtime.enter();

    let metrics = Metrics::new();
    let engine = engine_with_tokens(TOKENS, EngineOptions { observer: metrics.clone(), ..EngineOptions::default() });
    metrics.attach(engine.clone());
    let exposition = metrics.encode_text().expect("encoding succeeds");
    let series = exposition.lines().filter(|line| !line.starts_with('#') && !line.is_empty()).count();

    // The reference: as many series as tokensync exports, as plain gauges in
    // families of up to `TOKENS` series each, encoded by the same library.
    let mut registry = Registry::default();
    for family_index in 0..series.div_ceil(TOKENS) {
        let family = Family::<TokenLabel, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        let in_family = TOKENS.min(series - family_index * TOKENS);
        for index in 0..in_family {
            family.get_or_create(&TokenLabel { token: format!("t{index}") }).set(1.7e9 + index as f64);
        }
        registry.register(format!("reference_gauge_{family_index}"), "Reference gauge", family);
    }
    eprintln!(
        "metrics_encode: {TOKENS} tokens, {series} series, {} bytes per scrape, {:.1} series per token",
        exposition.len(),
        series as f64 / TOKENS as f64
    );

    let mut group = c.benchmark_group("metrics_encode");
    group.sample_size(30);
    group.bench_function(BenchmarkId::new("tokensync_encode_text", TOKENS), |b| {
        b.iter(|| black_box(metrics.encode_text().expect("encoding succeeds")))
    });
    group.bench_function(BenchmarkId::new("plain_registry_encode", TOKENS), |b| {
        b.iter(|| {
            let mut buffer = String::new();
            prometheus_client::encoding::prometheus_text::encode(&mut buffer, black_box(&registry)).expect("encoding succeeds");
            black_box(buffer)
        })
    });
    group.finish();
    metrics.detach();
    engine.shutdown();
}

/// Keeps a whole run under a minute: 1 s of warm-up and 3 s of measurement
/// per benchmark.
fn config() -> Criterion {
    Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = token_read, metrics_encode
}
criterion_main!(benches);
