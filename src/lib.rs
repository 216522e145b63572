//! tokensync keeps API access tokens fresh, syncs every new token to where
//! applications read it, and exports its state as Prometheus metrics.
//!
//! A token flows source → policy → engine → sinks:
//!
//! - [`token`]: the token model and the rules that turn a response into an expiry;
//! - [`secret`]: the redacting, zeroizing type for every credential;
//! - [`clock`]: injected wall-clock time;
//! - [`policy`]: pure functions that decide when to refresh and how long to back off;
//! - [`source`]: how tokens are obtained (OAuth2 client credentials and refresh tokens);
//! - [`sink`]: where tokens are written (atomic files, the encrypted session store);
//! - [`engine`]: schedules refreshes, single-flights them and drives the sinks;
//! - [`coordination`]: leases and shared, encrypted state in Redis, so that
//!   several instances refresh each token once;
//! - [`metrics`]: turns engine events and state into Prometheus metrics
//!   (and, with the `metrics-facade` feature, `metrics_facade` records the
//!   same events through the `metrics` crate);
//! - [`http`]: the metrics listener: `/metrics`, the status page, health and reload;
//! - [`config`]: the YAML configuration, its validation and the engine it builds;
//! - [`cli`]: the `tokensync` command line, the daemon and the demo.
//!
//! Dependencies point inward: `token`, `policy` and `clock` import nothing
//! else of the crate; sources and sinks know nothing of the engine, metrics
//! or HTTP; the engine knows nothing of HTTP, Prometheus or the CLI.

//! # Embedding the engine
//!
//! Build an engine from a configuration, read tokens lock-free, and ask for
//! a fresh one. Here the issuer is a mock server; in production the config
//! names the real token endpoint.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use tokensync::config::{self, StoreCache};
//! use tokensync::{Engine, EngineOptions};
//! # use wiremock::{Mock, MockServer, ResponseTemplate, matchers::method};
//! # let issuer = MockServer::start().await;
//! # Mock::given(method("POST"))
//! #     .respond_with(ResponseTemplate::new(200).set_body_json(
//! #         serde_json::json!({"access_token": "at-1", "token_type": "bearer", "expires_in": 3600}),
//! #     ))
//! #     .mount(&issuer)
//! #     .await;
//! # let token_url = format!("{}/token", issuer.uri());
//!
//! let yaml = format!(
//!     "tokens:\n  - name: billing\n    source: {{type: oauth2_client_credentials, \
//!      token_url: '{token_url}', client_id: billing, client_secret: '${{BILLING_SECRET}}'}}\n"
//! );
//! let parsed = config::parse(&yaml, "inline").unwrap();
//! let env = |name: &str| (name == "BILLING_SECRET").then(|| "s3cr3t".to_owned());
//! let resolved = config::resolve(&parsed, &env).unwrap();
//! let built = config::build(&resolved, &mut StoreCache::new()).unwrap();
//!
//! let engine = Engine::new(EngineOptions::default());
//! for spec in built.specs {
//!     engine.add_token(spec).unwrap();
//! }
//!
//! // Returns an unexpired token, requesting one first if needed.
//! let token = engine.ensure_fresh("billing").await.unwrap();
//! assert_eq!(token.access_token.expose(), "at-1");
//!
//! // The per-request read: no lock, no I/O.
//! let current = engine.token("billing").unwrap();
//! assert_eq!(current.token_type, "Bearer");
//!
//! // After an API answered 401: one reactive refresh, shared by all callers.
//! let replaced = engine.invalidate("billing").await.unwrap();
//! assert_eq!(replaced.access_token.expose(), "at-1"); // the mock always answers at-1
//! engine.shutdown();
//! # }
//! ```
//!
//! A token the application obtains itself (right after its own login, say)
//! is handed in with [`Engine::sync_token`]; a token without sinks lives in
//! memory only:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use std::time::Duration;
//! use tokensync::{Engine, EngineOptions, Token, TokenSpec};
//!
//! let engine = Engine::new(EngineOptions::default());
//! engine.add_token(TokenSpec::new("session", None)).unwrap();
//! let login = Token::bearer("from-my-login", chrono::Utc::now(), Duration::from_secs(900));
//! engine.sync_token("session", login).unwrap();
//! assert_eq!(engine.token("session").unwrap().access_token.expose(), "from-my-login");
//! assert_eq!(format!("{:?}", engine.token("session").unwrap().access_token), "Secret(***)");
//! engine.shutdown();
//! # }
//! ```

pub mod cli;
pub mod clock;
pub mod config;
pub mod coordination;
pub mod engine;
pub mod http;
pub mod metrics;
#[cfg(feature = "metrics-facade")]
pub mod metrics_facade;
pub mod policy;
pub mod secret;
pub mod sink;
pub mod source;
pub mod token;

pub use engine::{Engine, EngineError, EngineOptions, TokenSpec};
pub use secret::Secret;
pub use token::Token;
