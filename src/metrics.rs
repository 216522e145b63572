//! The metric catalogue: every metric tokensync exports, its name, help text
//! and labels, in one place.
//!
//! Counters and the refresh histogram are updated from engine events through
//! [`Observer`]. Gauges that describe state (expiry, validity, failures) are
//! computed from an engine snapshot at scrape time, so a scrape always sees
//! the current time to expiry. Labels hold only configured names and closed
//! sets; never a token value or an error string.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::engine::{Engine, LeaseResult, Observer, TokenState, Trigger};
use crate::sink::SyncFailureReason;
use crate::source::FailureReason;

/// Content type of the OpenMetrics 1.0 text format.
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content type of the Prometheus text format 0.0.4.
pub const TEXT_CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Refresh duration buckets, in seconds: few, because fleets of thousands of
/// tokens multiply every bucket.
const DURATION_BUCKETS: [f64; 8] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Token API duration buckets, in seconds: most responses come from memory.
const API_DURATION_BUCKETS: [f64; 8] = [0.0005, 0.001, 0.005, 0.01, 0.05, 0.25, 1.0, 5.0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    token: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TriggerLabels {
    token: String,
    trigger: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    token: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LeaseLabels {
    token: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkLabels {
    token: String,
    sink: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkReasonLabels {
    token: String,
    sink: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointCodeLabels {
    endpoint: &'static str,
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProxyCodeLabels {
    proxy: String,
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProxyLabels {
    proxy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
    revision: String,
}

/// The registry and the event-driven metrics of one daemon.
pub struct Metrics {
    registry: Registry,
    refreshes: Family<TriggerLabels, Counter>,
    refresh_failures: Family<ReasonLabels, Counter>,
    refresh_duration: Family<TokenLabels, Histogram>,
    syncs: Family<SinkLabels, Counter>,
    sync_failures: Family<SinkReasonLabels, Counter>,
    reload_successful: Gauge,
    reload_success_timestamp: Gauge<f64, AtomicU64>,
    api_requests: Family<EndpointCodeLabels, Counter>,
    api_duration: Family<EndpointLabels, Histogram>,
    proxy_requests: Family<ProxyCodeLabels, Counter>,
    proxy_rejections: Family<ProxyLabels, Counter>,
    lease_acquisitions: Family<LeaseLabels, Counter>,
    /// 1 or 0 once coordination is configured; -1 before, when the gauge is absent.
    coordination_up: Arc<AtomicI64>,
    engine: Arc<Mutex<Option<Engine>>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Creates the registry with every metric registered.
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::default();

        let refreshes = Family::<TriggerLabels, Counter>::default();
        registry.register("tokensync_refreshes", "Token refresh attempts, by what triggered them", refreshes.clone());
        let refresh_failures = Family::<ReasonLabels, Counter>::default();
        registry.register("tokensync_refresh_failures", "Failed token refresh attempts, by reason", refresh_failures.clone());
        let refresh_duration = Family::<TokenLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(DURATION_BUCKETS)) as fn() -> Histogram,
        );
        registry.register(
            "tokensync_refresh_duration_seconds",
            "Duration of token requests to the issuer",
            refresh_duration.clone(),
        );
        let syncs = Family::<SinkLabels, Counter>::default();
        registry.register("tokensync_syncs", "Sync attempts of a token to a sink", syncs.clone());
        let sync_failures = Family::<SinkReasonLabels, Counter>::default();
        registry.register("tokensync_sync_failures", "Failed syncs of a token to a sink, by reason", sync_failures.clone());

        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").to_owned(),
                revision: option_env!("TOKENSYNC_REVISION").unwrap_or("unknown").to_owned(),
            })
            .set(1);
        registry.register("tokensync_build_info", "Build information; the value is always 1", build_info);

        let reload_successful = Gauge::default();
        reload_successful.set(1);
        registry.register(
            "tokensync_config_last_reload_successful",
            "Whether the last configuration load succeeded (1) or failed (0)",
            reload_successful.clone(),
        );
        let reload_success_timestamp = Gauge::<f64, AtomicU64>::default();
        reload_success_timestamp.set(unix_seconds(Utc::now()));
        registry.register(
            "tokensync_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful configuration load",
            reload_success_timestamp.clone(),
        );

        let api_requests = Family::<EndpointCodeLabels, Counter>::default();
        registry.register("tokensync_api_requests", "Token API requests, by endpoint and HTTP status", api_requests.clone());
        let api_duration = Family::<EndpointLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(API_DURATION_BUCKETS)) as fn() -> Histogram,
        );
        registry.register(
            "tokensync_api_request_duration_seconds",
            "Duration of token API requests, including any refresh they waited for",
            api_duration.clone(),
        );
        let proxy_requests = Family::<ProxyCodeLabels, Counter>::default();
        registry.register("tokensync_proxy_requests", "Requests through an injecting proxy, by HTTP status returned", proxy_requests.clone());
        let proxy_rejections = Family::<ProxyLabels, Counter>::default();
        registry.register(
            "tokensync_proxy_upstream_rejections",
            "Upstream responses with HTTP 401 to a request that carried an injected token",
            proxy_rejections.clone(),
        );

        let lease_acquisitions = Family::<LeaseLabels, Counter>::default();
        registry.register(
            "tokensync_lease_acquisitions",
            "Attempts to take a token's refresh lease in Redis, by result: acquired, held (by another instance) or error",
            lease_acquisitions.clone(),
        );
        let coordination_up = Arc::new(AtomicI64::new(-1));
        registry.register_collector(Box::new(CoordinationCollector { up: coordination_up.clone() }));

        let engine = Arc::new(Mutex::new(None));
        registry.register_collector(Box::new(StateCollector { engine: engine.clone() }));
        registry.register_collector(Box::new(ProcessCollector));

        Arc::new(Metrics {
            registry,
            refreshes,
            refresh_failures,
            refresh_duration,
            syncs,
            sync_failures,
            reload_successful,
            reload_success_timestamp,
            api_requests,
            api_duration,
            proxy_requests,
            proxy_rejections,
            lease_acquisitions,
            coordination_up,
            engine,
        })
    }

    /// Connects the engine whose state the scrape-time gauges describe.
    pub fn attach(&self, engine: Engine) {
        *self.engine.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(engine);
    }

    /// Disconnects the engine, breaking the reference cycle engine → observer → engine.
    pub fn detach(&self) {
        *self.engine.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
    }

    /// Records the outcome of a configuration load or reload.
    pub fn record_reload(&self, success: bool) {
        self.reload_successful.set(i64::from(success));
        if success {
            self.reload_success_timestamp.set(unix_seconds(Utc::now()));
        }
    }

    /// Records one token API request. `endpoint` is a fixed route name.
    pub fn record_api_request(&self, endpoint: &'static str, code: u16, duration: Duration) {
        self.api_requests.get_or_create(&EndpointCodeLabels { endpoint, code }).inc();
        self.api_duration.get_or_create(&EndpointLabels { endpoint }).observe(duration.as_secs_f64());
    }

    /// Creates a proxy's series at zero, so that rates see its first request.
    pub fn register_proxy(&self, proxy: &str) {
        let _ = self.proxy_rejections.get_or_create(&ProxyLabels { proxy: proxy.to_owned() });
    }

    /// Records one request through a proxy, by the status returned to the client.
    pub fn record_proxy_request(&self, proxy: &str, code: u16) {
        self.proxy_requests.get_or_create(&ProxyCodeLabels { proxy: proxy.to_owned(), code }).inc();
    }

    /// Records an upstream 401 to a request that carried an injected token.
    pub fn record_proxy_rejection(&self, proxy: &str) {
        self.proxy_rejections.get_or_create(&ProxyLabels { proxy: proxy.to_owned() }).inc();
    }

    /// Encodes every metric in the OpenMetrics 1.0 text format.
    pub fn encode_openmetrics(&self) -> Result<String, std::fmt::Error> {
        let mut buffer = String::new();
        prometheus_client::encoding::text::encode(&mut buffer, &self.registry)?;
        Ok(buffer)
    }

    /// Encodes every metric in the Prometheus text format 0.0.4.
    pub fn encode_text(&self) -> Result<String, std::fmt::Error> {
        let mut buffer = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut buffer, &self.registry)?;
        Ok(buffer)
    }
}

impl Observer for Metrics {
    fn token_added(&self, name: &str, sink_ids: &[String]) {
        let token = name.to_owned();
        for trigger in Trigger::ALL {
            let _ = self.refreshes.get_or_create(&TriggerLabels { token: token.clone(), trigger: trigger.as_str() });
        }
        for reason in FailureReason::ALL {
            let _ = self.refresh_failures.get_or_create(&ReasonLabels { token: token.clone(), reason: reason.as_str() });
        }
        let _ = self.refresh_duration.get_or_create(&TokenLabels { token: token.clone() });
        for sink in sink_ids {
            // Sync failure series appear with the first failure: one per
            // reason and sink for every token would multiply the series count,
            // and `tokensync_sync_consecutive_failures` is there from the start.
            let _ = self.syncs.get_or_create(&SinkLabels { token: token.clone(), sink: sink.clone() });
        }
    }

    fn token_removed(&self, name: &str, sink_ids: &[String]) {
        let token = name.to_owned();
        for trigger in Trigger::ALL {
            self.refreshes.remove(&TriggerLabels { token: token.clone(), trigger: trigger.as_str() });
        }
        for reason in FailureReason::ALL {
            self.refresh_failures.remove(&ReasonLabels { token: token.clone(), reason: reason.as_str() });
        }
        self.refresh_duration.remove(&TokenLabels { token: token.clone() });
        for result in LeaseResult::ALL {
            self.lease_acquisitions.remove(&LeaseLabels { token: token.clone(), result: result.as_str() });
        }
        for sink in sink_ids {
            self.syncs.remove(&SinkLabels { token: token.clone(), sink: sink.clone() });
            for reason in SyncFailureReason::ALL {
                let labels = SinkReasonLabels { token: token.clone(), sink: sink.clone(), reason: reason.as_str() };
                self.sync_failures.remove(&labels);
            }
        }
    }

    fn refresh_finished(&self, name: &str, trigger: Trigger, duration: Duration, outcome: Result<(), FailureReason>) {
        let token = name.to_owned();
        let _ = self.refreshes.get_or_create(&TriggerLabels { token: token.clone(), trigger: trigger.as_str() }).inc();
        let _ = self.refresh_duration.get_or_create(&TokenLabels { token: token.clone() }).observe(duration.as_secs_f64());
        if let Err(reason) = outcome {
            let _ = self.refresh_failures.get_or_create(&ReasonLabels { token, reason: reason.as_str() }).inc();
        }
    }

    fn sync_finished(&self, name: &str, sink_id: &str, outcome: Result<(), SyncFailureReason>) {
        let labels = SinkLabels { token: name.to_owned(), sink: sink_id.to_owned() };
        let _ = self.syncs.get_or_create(&labels).inc();
        if let Err(reason) = outcome {
            let labels = SinkReasonLabels { token: labels.token, sink: labels.sink, reason: reason.as_str() };
            let _ = self.sync_failures.get_or_create(&labels).inc();
        }
    }

    fn coordination_changed(&self, up: bool) {
        self.coordination_up.store(i64::from(up), Ordering::Relaxed);
    }

    fn lease_attempt(&self, name: &str, result: LeaseResult) {
        // Every result's series starts at zero with the token's first attempt.
        for other in LeaseResult::ALL {
            let _ = self.lease_acquisitions.get_or_create(&LeaseLabels { token: name.to_owned(), result: other.as_str() });
        }
        self.lease_acquisitions.get_or_create(&LeaseLabels { token: name.to_owned(), result: result.as_str() }).inc();
    }
}

/// `tokensync_coordination_up`, present only when coordination is configured.
#[derive(Debug)]
struct CoordinationCollector {
    up: Arc<AtomicI64>,
}

impl Collector for CoordinationCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let up = self.up.load(Ordering::Relaxed);
        if up < 0 {
            return Ok(());
        }
        let metric = encoder.encode_descriptor(
            "tokensync_coordination_up",
            "1 while Redis, which coordinates the instances, answers, else 0",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(up).encode(metric)
    }
}

fn unix_seconds(at: DateTime<Utc>) -> f64 {
    at.timestamp_millis() as f64 / 1000.0
}

/// Computes the per-token state gauges from an engine snapshot at scrape time.
struct StateCollector {
    engine: Arc<Mutex<Option<Engine>>>,
}

impl std::fmt::Debug for StateCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateCollector").finish_non_exhaustive()
    }
}

/// One gauge family of the state collector: name, help and a value per token
/// (`None` omits the token's series).
type TokenGauge = (&'static str, &'static str, fn(&crate::engine::TokenStatus, DateTime<Utc>) -> Option<f64>);

pub(crate) const TOKEN_GAUGES: [TokenGauge; 8] = [
    ("tokensync_token_expiry_timestamp_seconds", "Unix time at which the current token expires", |status, _| {
        status.expires_at.map(unix_seconds)
    }),
    (
        "tokensync_token_time_to_expiry_seconds",
        "Seconds until the current token expires, computed at scrape time; negative once expired",
        |status, now| status.expires_at.map(|at| (at - now).num_milliseconds() as f64 / 1000.0),
    ),
    ("tokensync_token_lifetime_seconds", "Lifetime granted to the current token when it was issued", |status, _| {
        status.lifetime.map(|lifetime| lifetime.as_secs_f64())
    }),
    ("tokensync_token_valid", "1 while an unexpired token is held, else 0", |status, _| {
        Some(if status.state == TokenState::Valid { 1.0 } else { 0.0 })
    }),
    (
        "tokensync_token_reauth_required",
        "1 when the issuer rejected the grant or the client and a person must act, else 0",
        |status, _| Some(if status.reauth_required { 1.0 } else { 0.0 }),
    ),
    (
        "tokensync_last_refresh_success_timestamp_seconds",
        "Unix time of the last successful refresh",
        |status, _| status.last_success_at.map(unix_seconds),
    ),
    (
        "tokensync_next_refresh_timestamp_seconds",
        "Unix time of the next planned refresh or retry",
        // A token without a source is never refreshed by tokensync.
        |status, _| status.next_refresh_at.filter(|_| status.source_kind.is_some()).map(unix_seconds),
    ),
    ("tokensync_consecutive_refresh_failures", "Refresh failures since the last success", |status, _| {
        Some(f64::from(status.consecutive_failures))
    }),
];

impl Collector for StateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(engine) = self.engine.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone() else {
            return Ok(());
        };
        let now = engine.clock().now();
        let statuses = engine.status();

        for (name, help, value_of) in TOKEN_GAUGES {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for status in &statuses {
                if let Some(value) = value_of(status, now) {
                    let labels = [("token", status.name.as_str())];
                    ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
                }
            }
        }

        let mut family = encoder.encode_descriptor(
            "tokensync_sync_consecutive_failures",
            "Failed syncs of the current token to a sink since its last success",
            None,
            MetricType::Gauge,
        )?;
        for status in &statuses {
            for sink in &status.sinks {
                let labels = [("token", status.name.as_str()), ("sink", sink.id.as_str())];
                ConstGauge::new(i64::from(sink.consecutive_failures)).encode(family.encode_family(&labels)?)?;
            }
        }

        let mut family = encoder.encode_descriptor(
            "tokensync_last_sync_success_timestamp_seconds",
            "Unix time of the last successful sync of a token to a sink",
            None,
            MetricType::Gauge,
        )?;
        for status in &statuses {
            for sink in &status.sinks {
                if let Some(at) = sink.last_success_at {
                    let labels = [("token", status.name.as_str()), ("sink", sink.id.as_str())];
                    ConstGauge::new(unix_seconds(at)).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        Ok(())
    }
}

/// The standard `process_*` metrics, read from `/proc/self` at scrape time.
#[derive(Debug)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Ok(process) = procfs::process::Process::myself() else { return Ok(()) };
        let mut gauge = |name: &str, help: &str, metric_type: MetricType, value: f64| -> Result<(), std::fmt::Error> {
            let metric = encoder.encode_descriptor(name, help, None, metric_type)?;
            match metric_type {
                MetricType::Counter => {
                    prometheus_client::metrics::counter::ConstCounter::new(value).encode(metric)
                }
                _ => ConstGauge::new(value).encode(metric),
            }
        };

        if let Ok(stat) = process.stat() {
            let ticks = procfs::ticks_per_second() as f64;
            let cpu = (stat.utime + stat.stime) as f64 / ticks;
            gauge("process_cpu_seconds", "Total user and system CPU time spent in seconds", MetricType::Counter, cpu)?;
            let resident = stat.rss as f64 * procfs::page_size() as f64;
            gauge("process_resident_memory_bytes", "Resident memory size in bytes", MetricType::Gauge, resident)?;
            gauge("process_virtual_memory_bytes", "Virtual memory size in bytes", MetricType::Gauge, stat.vsize as f64)?;
            if let Ok(boot) = procfs::boot_time_secs() {
                let start = boot as f64 + stat.starttime as f64 / ticks;
                gauge(
                    "process_start_time_seconds",
                    "Start time of the process since unix epoch in seconds",
                    MetricType::Gauge,
                    start,
                )?;
            }
        }
        if let Ok(count) = process.fd_count() {
            gauge("process_open_fds", "Number of open file descriptors", MetricType::Gauge, count as f64)?;
        }
        if let Ok(limits) = process.limits()
            && let procfs::process::LimitValue::Value(max) = limits.max_open_files.soft_limit
        {
            gauge("process_max_fds", "Maximum number of open file descriptors", MetricType::Gauge, max as f64)?;
        }
        Ok(())
    }
}
