//! `tokensync token get|refresh NAME`: a small client of a running daemon's
//! token API, for shell scripts. It prints the bare access token.

use std::path::PathBuf;
use std::time::Duration;

use super::TokenArgs;
use crate::config::{self, ApiListen};
use crate::secret::Secret;
use crate::source::install_crypto_provider;

/// Time allowed for one token API request, refresh included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Address and credentials of the token API.
struct Target {
    listen: ApiListen,
    bearer_token: Option<Secret>,
}

/// Fetches (`refresh == false`) or refreshes a token and prints it.
pub async fn run(args: TokenArgs, name: String, refresh: bool) -> Result<(), String> {
    let target = target(&args)?;
    let mut builder = reqwest::Client::builder().timeout(REQUEST_TIMEOUT);
    let base = match &target.listen {
        ApiListen::Unix(path) => {
            builder = builder.unix_socket(path.clone());
            "http://localhost".to_owned()
        }
        ApiListen::Tcp(address) => format!("http://{address}"),
    };
    install_crypto_provider();
    let client = builder.build().map_err(|error| format!("cannot build the HTTP client: {error}"))?;

    let encoded: String = url::form_urlencoded::byte_serialize(name.as_bytes()).collect();
    let mut request = if refresh {
        client.post(format!("{base}/v1/tokens/{encoded}/refresh"))
    } else {
        client.get(format!("{base}/v1/tokens/{encoded}"))
    };
    request = request.header("Accept", "text/plain");
    if let Some(token) = &target.bearer_token {
        request = request.bearer_auth(token.expose());
    }
    let response = request.send().await.map_err(|error| {
        let cause = std::error::Error::source(&error).map(|cause| format!(" ({cause})")).unwrap_or_default();
        format!("cannot reach the token API{cause}; is the daemon running with an `api:` section?")
    })?;
    let status = response.status();
    let body = response.text().await.map_err(|error| format!("reading the token API response failed: {error}"))?;
    if !status.is_success() {
        let message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|value| value["message"].as_str().map(str::to_owned))
            .unwrap_or_else(|| status.to_string());
        let hint = if status == reqwest::StatusCode::UNAUTHORIZED {
            "; pass the file named by api.bearer_token_file with --bearer-token-file, or the daemon's config with --config"
        } else {
            ""
        };
        return Err(format!("token API returned {status}: {message}{hint}"));
    }
    println!("{body}");
    Ok(())
}

fn target(args: &TokenArgs) -> Result<Target, String> {
    if let Some(config_path) = &args.config {
        let parsed = config::load(config_path).map_err(|error| error.to_string())?;
        let resolved = config::resolve(&parsed, &|name| std::env::var(name).ok()).map_err(|problems| {
            problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
        })?;
        let api = resolved.api.ok_or_else(|| format!("{} configures no token API (`api:`)", config_path.display()))?;
        return Ok(Target { listen: api.listen, bearer_token: api.bearer_token });
    }
    let listen = match args.api.as_deref() {
        Some(text) => parse_listen(text)?,
        None => return Err("name the token API with --api unix:///PATH or tcp://127.0.0.1:PORT, or pass --config FILE".to_owned()),
    };
    let bearer_token = match &args.bearer_token_file {
        Some(path) => Some(read_secret(path)?),
        None => None,
    };
    Ok(Target { listen, bearer_token })
}

fn parse_listen(text: &str) -> Result<ApiListen, String> {
    if let Some(path) = text.strip_prefix("unix://") {
        return Ok(ApiListen::Unix(PathBuf::from(path)));
    }
    let address = text.strip_prefix("tcp://").unwrap_or(text);
    address
        .parse()
        .map(ApiListen::Tcp)
        .map_err(|_| format!("invalid --api `{text}`: use unix:///PATH or tcp://127.0.0.1:PORT"))
}

fn read_secret(path: &std::path::Path) -> Result<Secret, String> {
    let text = std::fs::read_to_string(path).map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    Ok(Secret::new(text.trim_end_matches(['\n', '\r'])))
}
