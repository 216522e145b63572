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
//! - [`metrics`]: turns engine events and state into Prometheus metrics;
//! - [`http`]: the metrics listener: `/metrics`, the status page, health and reload;
//! - [`config`]: the YAML configuration, its validation and the engine it builds;
//! - [`cli`]: the `tokensync` command line, the daemon and the demo.
//!
//! Dependencies point inward: `token`, `policy` and `clock` import nothing
//! else of the crate; sources and sinks know nothing of the engine, metrics
//! or HTTP; the engine knows nothing of HTTP, Prometheus or the CLI.

pub mod cli;
pub mod clock;
pub mod config;
pub mod engine;
pub mod http;
pub mod metrics;
pub mod policy;
pub mod secret;
pub mod sink;
pub mod source;
pub mod token;

pub use engine::{Engine, EngineError, EngineOptions, TokenSpec};
pub use secret::Secret;
pub use token::Token;
