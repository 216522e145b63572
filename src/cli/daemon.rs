//! The daemon: loads the configuration, runs the engine and the metrics
//! listener, reloads on SIGHUP or `POST /-/reload`, and stops on SIGTERM or
//! SIGINT.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::config::{self, ResolvedConfig, ResolvedToken, StoreCache};
use crate::coordination::Coordinator;
use crate::engine::{Engine, EngineOptions};
use crate::http::{self, AppState, ReloadRequest};
use crate::metrics::Metrics;

/// Default address of the metrics listener. Loopback, because the listener
/// also serves `POST /-/reload`; set `--web.listen-address :8417` or
/// `0.0.0.0:8417` for Prometheus on another host. Port 8417 is outside the
/// 9100-9999 range where Prometheus exporters take their default ports.
pub const DEFAULT_LISTEN_ADDRESS: &str = "127.0.0.1:8417";

/// How long syncs in progress may run after SIGTERM before they are cancelled.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);

/// Start-up options of the daemon.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    pub config_path: PathBuf,
    /// Overrides the config's `web.listen_address`.
    pub listen_address: Option<String>,
    /// Stop by itself after this long (used by the demo and tests).
    pub exit_after: Option<Duration>,
    /// TLS and basic authentication for the metrics listener.
    pub web_config_file: Option<PathBuf>,
}

/// Runs the daemon until a stop signal, or until `exit_after` has passed.
pub async fn run(options: DaemonOptions) -> Result<(), String> {
    let daemon = Daemon::start(options).await?;
    daemon.wait().await
}

/// A running daemon.
pub struct Daemon {
    engine: Engine,
    metrics: Arc<Metrics>,
    local_address: SocketAddr,
    server: JoinHandle<()>,
    stop_server: oneshot::Sender<()>,
    reload_requests: mpsc::Receiver<ReloadRequest>,
    config_path: PathBuf,
    listeners: Listeners,
    active: BTreeMap<String, ResolvedToken>,
    active_config: ResolvedConfig,
    stores: StoreCache,
    exit_after: Option<Duration>,
}

impl Daemon {
    /// Loads the configuration, starts every token and the listener.
    pub async fn start(options: DaemonOptions) -> Result<Daemon, String> {
        let resolved = load_resolved(&options.config_path)?;
        let metrics = Metrics::new();
        let coordinator = match &resolved.coordination {
            Some(settings) => Some(Coordinator::new(settings).map_err(|error| format!("coordination: {error}"))?),
            None => None,
        };
        if let Some(settings) = &resolved.coordination {
            tracing::info!(
                prefix = %settings.key_prefix,
                lease_ms = settings.lease.as_millis() as u64,
                when_unavailable = settings.when_unavailable.as_str(),
                "coordinating with other instances through Redis"
            );
        }
        let engine = Engine::new(EngineOptions { observer: metrics.clone(), coordinator, ..EngineOptions::default() });
        metrics.attach(engine.clone());

        let mut stores = StoreCache::new();
        let mut active = BTreeMap::new();
        apply(&engine, &resolved, &mut active, &mut stores)?;
        let listeners = Listeners::start(&resolved, &engine, &metrics).await?;
        metrics.record_reload(true);

        let address = options
            .listen_address
            .clone()
            .or_else(|| resolved.listen_address.clone())
            .unwrap_or_else(|| DEFAULT_LISTEN_ADDRESS.to_owned());
        let address = if address.starts_with(':') { format!("0.0.0.0{address}") } else { address };
        check_port_clash(&address, &resolved)?;
        let listener = tokio::net::TcpListener::bind(&address)
            .await
            .map_err(|error| format!("cannot listen on {address}: {error}; choose another with --web.listen-address"))?;
        let local_address = listener.local_addr().map_err(|error| format!("cannot read the listen address: {error}"))?;

        let web = match &options.web_config_file {
            Some(path) => Some(http::web_config::WebConfig::load(path)?),
            None => None,
        };
        let tls = web.as_ref().is_some_and(|web| web.tls().is_some());
        let (reload_sender, reload_requests) = mpsc::channel(4);
        let state = AppState { engine: engine.clone(), metrics: metrics.clone(), reload: Some(reload_sender) };
        let (stop_server, stopped) = oneshot::channel::<()>();
        let router = http::router(state, web.clone());
        // A listener on loopback serves only this host, so a web page that
        // rebinds its DNS name to 127.0.0.1 must not read it.
        let router = if local_address.ip().is_loopback() {
            router.layer(axum::middleware::from_fn(http::server::loopback_host_only))
        } else {
            router
        };
        let shutdown = async {
            let _ = stopped.await;
        };
        let server = tokio::spawn(http::server::serve(listener, router, web, http::server::Limits::default(), shutdown));
        tracing::info!(
            address = %local_address,
            tls,
            tokens = active.len(),
            version = env!("CARGO_PKG_VERSION"),
            "tokensync started"
        );

        Ok(Daemon {
            engine,
            metrics,
            local_address,
            server,
            stop_server,
            reload_requests,
            config_path: options.config_path,
            listeners,
            active,
            active_config: resolved,
            stores,
            exit_after: options.exit_after,
        })
    }

    /// Returns the address the metrics listener is bound to.
    pub fn local_address(&self) -> SocketAddr {
        self.local_address
    }

    /// Returns the engine, for embedding callers and tests.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Serves until SIGTERM or SIGINT (or `exit_after`), reloading on SIGHUP
    /// and on `POST /-/reload`, then shuts down.
    pub async fn wait(mut self) -> Result<(), String> {
        let signal_error = |error: std::io::Error| format!("cannot install a signal handler: {error}");
        let mut hangup = signal(SignalKind::hangup()).map_err(signal_error)?;
        let mut terminate = signal(SignalKind::terminate()).map_err(signal_error)?;
        let mut interrupt = signal(SignalKind::interrupt()).map_err(signal_error)?;
        let exit_after = self.exit_after;
        let deadline = async move {
            match exit_after {
                Some(after) => tokio::time::sleep(after).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(deadline);

        loop {
            tokio::select! {
                _ = hangup.recv() => {
                    tracing::info!("SIGHUP received; reloading the configuration");
                    let _ = self.reload().await;
                }
                Some(reply) = self.reload_requests.recv() => {
                    let outcome = self.reload().await;
                    let _ = reply.send(outcome);
                }
                _ = terminate.recv() => {
                    tracing::info!("SIGTERM received; shutting down");
                    break;
                }
                _ = interrupt.recv() => {
                    tracing::info!("SIGINT received; shutting down");
                    break;
                }
                () = &mut deadline => {
                    tracing::info!("the configured run time has passed; shutting down");
                    break;
                }
            }
        }
        self.shutdown().await;
        Ok(())
    }

    /// Re-reads the configuration. An invalid file keeps the running one.
    async fn reload(&mut self) -> Result<String, String> {
        let outcome = match load_resolved(&self.config_path) {
            Err(error) => Err(error),
            Ok(resolved) => match apply(&self.engine, &resolved, &mut self.active, &mut self.stores) {
                Err(error) => Err(error),
                Ok(summary) => {
                    if resolved.listen_address != self.active_config.listen_address {
                        tracing::warn!("web.listen_address changed; restart tokensync to apply it");
                    }
                    if resolved.coordination != self.active_config.coordination {
                        tracing::warn!("coordination changed; restart tokensync to apply it");
                    }
                    let listeners_changed =
                        resolved.api != self.active_config.api || resolved.proxies != self.active_config.proxies;
                    let restarted = if listeners_changed {
                        self.listeners.stop().await;
                        Listeners::start(&resolved, &self.engine, &self.metrics).await
                    } else {
                        Ok(std::mem::take(&mut self.listeners))
                    };
                    self.active_config = resolved;
                    match restarted {
                        Ok(listeners) => {
                            self.listeners = listeners;
                            Ok(summary)
                        }
                        Err(error) => Err(format!("tokens reloaded, but a listener failed to start: {error}")),
                    }
                }
            },
        };
        match &outcome {
            Ok(summary) => tracing::info!(summary = %summary, "configuration reloaded"),
            Err(error) => tracing::error!(error = %error, "configuration reload failed; keeping the previous configuration"),
        }
        self.metrics.record_reload(outcome.is_ok());
        outcome
    }

    async fn shutdown(mut self) {
        self.listeners.stop().await;
        let _ = self.stop_server.send(());
        if tokio::time::timeout(Duration::from_secs(5), self.server).await.is_err() {
            tracing::warn!("the metrics listener did not stop within 5s");
        }
        self.engine.shutdown_gracefully(SHUTDOWN_DEADLINE).await;
        self.metrics.detach();
        tracing::info!("tokensync stopped");
    }
}

/// The token API and proxy listeners, stopped together.
#[derive(Default)]
struct Listeners {
    stop: Option<watch::Sender<bool>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Listeners {
    async fn start(resolved: &ResolvedConfig, engine: &Engine, metrics: &Arc<Metrics>) -> Result<Listeners, String> {
        let (stop, stopped) = watch::channel(false);
        let mut listeners = Listeners { stop: Some(stop), tasks: Vec::new() };
        if let Some(api) = &resolved.api {
            match http::api::serve(api, engine.clone(), metrics.clone(), stopped.clone()).await {
                Ok(task) => listeners.tasks.push(task),
                Err(error) => {
                    listeners.stop().await;
                    return Err(error);
                }
            }
        }
        for proxy in &resolved.proxies {
            match http::proxy::serve(proxy, engine.clone(), metrics.clone(), stopped.clone()).await {
                Ok(task) => listeners.tasks.push(task),
                Err(error) => {
                    listeners.stop().await;
                    return Err(error);
                }
            }
        }
        Ok(listeners)
    }

    async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop.send_replace(true);
        }
        for task in self.tasks.drain(..) {
            if tokio::time::timeout(Duration::from_secs(5), task).await.is_err() {
                tracing::warn!("a token API or proxy listener did not stop within 5s");
            }
        }
    }
}

/// Rejects a metrics listener address that the token API or a proxy also
/// uses, naming both settings, before anything binds.
fn check_port_clash(metrics_address: &str, resolved: &ResolvedConfig) -> Result<(), String> {
    let Ok(metrics) = metrics_address.parse::<std::net::SocketAddr>() else { return Ok(()) };
    if let Some(config::ApiListen::Tcp(api)) = resolved.api.as_ref().map(|api| &api.listen)
        && config::listeners_clash(metrics, *api)
    {
        return Err(format!("the metrics listener ({metrics}) and api.listen ({api}) use the same port; change one of them"));
    }
    for proxy in &resolved.proxies {
        if config::listeners_clash(metrics, proxy.listen) {
            return Err(format!("the metrics listener ({metrics}) and proxy `{}` ({}) use the same port; change one of them", proxy.name, proxy.listen));
        }
    }
    Ok(())
}

/// Loads, parses and validates a configuration file into one error string.
fn load_resolved(path: &Path) -> Result<ResolvedConfig, String> {
    let parsed = config::load(path).map_err(|error| error.to_string())?;
    config::resolve(&parsed, &|name| std::env::var(name).ok()).map_err(|problems| {
        let lines: Vec<String> = problems.iter().map(|problem| format!("{}: {problem}", path.display())).collect();
        format!("invalid configuration:\n  {}", lines.join("\n  "))
    })
}

/// Brings the engine in line with `resolved`: starts added tokens, stops
/// removed ones, restarts changed ones and leaves unchanged ones running
/// with their current token and schedule.
fn apply(
    engine: &Engine,
    resolved: &ResolvedConfig,
    active: &mut BTreeMap<String, ResolvedToken>,
    stores: &mut StoreCache,
) -> Result<String, String> {
    // Stores whose key changed make every token that uses them "changed".
    let changed_stores: Vec<PathBuf> = resolved
        .stores
        .iter()
        .filter(|(path, key)| stores.get(*path).is_some_and(|(cached, _)| cached != *key))
        .map(|(path, _)| path.clone())
        .collect();
    let built = config::build(resolved, stores).map_err(|problems| {
        let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
        format!("invalid configuration:\n  {}", lines.join("\n  "))
    })?;
    for problem in &built.store_problems {
        tracing::error!(token = problem.token.as_deref().unwrap_or("-"), "{}", problem.message);
    }

    let uses_changed_store = |token: &ResolvedToken| {
        token.sinks.iter().any(|sink| matches!(sink, config::ResolvedSink::SessionStore { path } if changed_stores.contains(path)))
    };
    let (mut added, mut removed, mut restarted) = (0, 0, 0);

    let wanted: Vec<&String> = resolved.tokens.iter().map(|token| &token.name).collect();
    let obsolete: Vec<String> = active.keys().filter(|name| !wanted.contains(name)).cloned().collect();
    for name in obsolete {
        let _ = engine.remove_token(&name);
        active.remove(&name);
        removed += 1;
    }

    let mut to_start = Vec::new();
    for (token, spec) in resolved.tokens.iter().zip(built.specs) {
        match active.get(&token.name) {
            Some(current) if current == token && !uses_changed_store(token) => {
                let _ = engine.clear_reauth(&token.name);
                continue;
            }
            Some(_) => {
                let _ = engine.remove_token(&token.name);
                restarted += 1;
            }
            None => added += 1,
        }
        active.insert(token.name.clone(), token.clone());
        to_start.push(spec);
    }
    engine.add_tokens(to_start).map_err(|error| error.to_string())?;
    Ok(format!("{added} added, {removed} removed, {restarted} restarted, {} running", active.len()))
}
