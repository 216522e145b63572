//! `tokensync demo`: an embedded issuer on loopback, the daemon running the
//! embedded `config/demo.yaml` against it, and the metrics listener.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;

use super::daemon::{DEFAULT_LISTEN_ADDRESS, Daemon, DaemonOptions};
use crate::sink::SessionKey;

const DEMO_CONFIG: &str = include_str!("../../config/demo.yaml");
/// Lifetime of the demo issuer's access tokens, in seconds.
const DEMO_TOKEN_SECONDS: u64 = 30;

/// Runs the demo until interrupted, or until `exit_after`.
pub async fn run(listen_address: Option<String>, exit_after: Option<std::time::Duration>) -> Result<(), String> {
    let issuer = Issuer::new();
    let (issuer_url, issuer_task) = issuer.clone().serve().await?;
    let directory = DemoDirectory::create()?;
    let config_path = directory.write_files(&issuer_url, &issuer)?;

    let listen_address = match listen_address {
        Some(address) => address,
        None if std::net::TcpListener::bind(DEFAULT_LISTEN_ADDRESS).is_ok() => DEFAULT_LISTEN_ADDRESS.to_owned(),
        None => "127.0.0.1:0".to_owned(),
    };
    let options = DaemonOptions { config_path, listen_address: Some(listen_address), exit_after, web_config_file: None };
    let daemon = Daemon::start(options).await?;
    let address = daemon.local_address();
    let path = directory.path.display();
    println!("tokensync demo is running against an embedded issuer at {issuer_url}");
    println!("  status page: http://{address}/");
    println!("  metrics:     http://{address}/metrics");
    println!("  token files: {path}/billing.token and {path}/reports.json");
    println!("Tokens live {DEMO_TOKEN_SECONDS}s and are refreshed proactively after about 24s. Press Ctrl-C to stop.");

    let outcome = daemon.wait().await;
    issuer_task.abort();
    drop(directory);
    outcome
}

/// The demo's temporary directory, removed on drop.
struct DemoDirectory {
    path: PathBuf,
}

impl DemoDirectory {
    fn create() -> Result<Self, String> {
        let path = std::env::temp_dir().join(format!("tokensync-demo-{}", std::process::id()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|error| format!("cannot create the demo directory {}: {error}", path.display()))?;
        Ok(DemoDirectory { path })
    }

    /// Writes the secrets and the config; returns the config's path.
    fn write_files(&self, issuer_url: &str, issuer: &Issuer) -> Result<PathBuf, String> {
        let reports_refresh_token = issuer.mint_refresh_token();
        let key = SessionKey::generate();
        let files: [(&str, &str); 4] = [
            ("billing-client-secret", BILLING_SECRET),
            ("reports-client-secret", REPORTS_SECRET),
            ("reports-refresh-token", &reports_refresh_token),
            ("session.key", &key.to_base64()),
        ];
        for (name, contents) in files {
            write_private(&self.path.join(name), contents)?;
        }
        let config = DEMO_CONFIG.replace("{{ISSUER}}", issuer_url).replace("{{DIR}}", &self.path.display().to_string());
        let config_path = self.path.join("tokensync.yaml");
        write_private(&config_path, &config)?;
        Ok(config_path)
    }
}

impl Drop for DemoDirectory {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

fn write_private(path: &Path, contents: &str) -> Result<(), String> {
    std::fs::write(path, contents)
        .and_then(|()| std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)))
        .map_err(|error| format!("cannot write {}: {error}", path.display()))
}

const BILLING_SECRET: &str = "demo-billing-secret";
const REPORTS_SECRET: &str = "demo-reports-secret";

/// A minimal OAuth2 token endpoint for the demo: client credentials for
/// `demo-billing`, refresh tokens with rotation for `demo-reports`.
#[derive(Clone, Default)]
struct Issuer {
    refresh_tokens: Arc<Mutex<HashSet<String>>>,
}

impl Issuer {
    fn new() -> Self {
        Issuer::default()
    }

    fn mint_refresh_token(&self) -> String {
        let token = format!("demo-rt-{}", hex::encode(rand::random::<[u8; 16]>()));
        self.refresh_tokens.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(token.clone());
        token
    }

    async fn serve(self) -> Result<(String, tokio::task::JoinHandle<()>), String> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|error| format!("cannot start the demo issuer: {error}"))?;
        let address = listener.local_addr().map_err(|error| format!("cannot read the demo issuer address: {error}"))?;
        let router = Router::new().route("/token", post(token_endpoint)).with_state(self);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Ok((format!("http://{address}"), task))
    }
}

async fn token_endpoint(State(issuer): State<Issuer>, headers: HeaderMap, body: String) -> Response {
    let form: HashMap<String, String> = url::form_urlencoded::parse(body.as_bytes()).into_owned().collect();
    let Some((client_id, client_secret)) = client_credentials(&headers, &form) else {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
    };
    let expected = match client_id.as_str() {
        "demo-billing" => BILLING_SECRET,
        "demo-reports" => REPORTS_SECRET,
        _ => return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client"),
    };
    if client_secret != expected {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
    }

    let access_token = format!("demo-at-{}", hex::encode(rand::random::<[u8; 16]>()));
    match (form.get("grant_type").map(String::as_str), client_id.as_str()) {
        (Some("client_credentials"), "demo-billing") => {
            let body = serde_json::json!({"access_token": access_token, "token_type": "bearer", "expires_in": DEMO_TOKEN_SECONDS});
            ([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
        }
        (Some("refresh_token"), "demo-reports") => {
            let presented = form.get("refresh_token").cloned().unwrap_or_default();
            let known = issuer.refresh_tokens.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(&presented);
            if !known {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
            }
            let refresh_token = issuer.mint_refresh_token();
            // `expires_in` as a string, as some issuers send it.
            let body = serde_json::json!({
                "access_token": access_token,
                "token_type": "Bearer",
                "expires_in": DEMO_TOKEN_SECONDS.to_string(),
                "refresh_token": refresh_token,
            });
            ([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
        }
        _ => oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type"),
    }
}

/// Reads the client id and secret from HTTP Basic or from the form.
fn client_credentials(headers: &HeaderMap, form: &HashMap<String, String>) -> Option<(String, String)> {
    if let Some(encoded) = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Basic "))
    {
        let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (id, secret) = text.split_once(':')?;
        let decode = |part: &str| url::form_urlencoded::parse(format!("v={part}").as_bytes()).next().map(|(_, value)| value.into_owned());
        return Some((decode(id)?, decode(secret)?));
    }
    Some((form.get("client_id")?.clone(), form.get("client_secret")?.clone()))
}

fn oauth_error(status: StatusCode, code: &str) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], serde_json::json!({"error": code}).to_string()).into_response()
}
