//! OAuth2 token requests: the client credentials grant (RFC 6749 section 4.4)
//! and the refresh token grant (section 6).

use std::path::PathBuf;
use std::sync::Once;
use std::time::{Duration, SystemTime};

use reqwest::header::ACCEPT;

use super::response::{self, RawResponse};
use super::transport::{read_limited, transport_error};
use super::{BoxFuture, FetchRequest, Source, SourceError};
use crate::secret::Secret;
use crate::token::Token;

/// Client authentication method at the token endpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AuthMethod {
    /// HTTP Basic with the form-encoded client id and secret (the default).
    #[default]
    ClientSecretBasic,
    /// `client_id` and `client_secret` in the request body.
    ClientSecretPost,
}

/// Settings shared by both OAuth2 grants.
#[derive(Clone, Debug, PartialEq)]
pub struct OAuth2Settings {
    pub token_url: url::Url,
    pub client_id: String,
    /// Absent for a public client, which sends only its `client_id`.
    pub client_secret: Option<Secret>,
    pub auth_method: AuthMethod,
    pub scopes: Vec<String>,
    /// Extra form parameters such as `audience` or `resource`; values may
    /// be credentials (a client assertion, say), so they are secrets.
    pub extra_params: Vec<(String, Secret)>,
    /// Total time allowed for one request, body included.
    pub timeout: Duration,
    /// PEM file with extra CA certificates to trust.
    pub ca_file: Option<PathBuf>,
}

/// Builds the HTTP client of one source or sink: the timeout, the optional CA
/// file, proxies from the `HTTP_PROXY`/`HTTPS_PROXY`/`NO_PROXY` variables,
/// and no redirects (a 3xx response is returned as it is).
pub fn build_http_client(timeout: Duration, ca_file: Option<&std::path::Path>) -> Result<reqwest::Client, String> {
    // Sources and sinks with the same settings share one client, since a
    // clone shares the connection pool and the TLS roots. Building a client
    // costs milliseconds and about 100 KB, which a fleet would pay per token.
    // The key contains the CA file's contents, not only its path, so that a
    // reload after the file was renewed builds a client with the new roots.
    type ClientKey = (Duration, Option<(PathBuf, Vec<u8>)>);
    static CLIENTS: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<ClientKey, reqwest::Client>>> =
        std::sync::LazyLock::new(Default::default);
    let ca = match ca_file {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|error| format!("cannot read CA file {}: {error}", path.display()))?;
            Some((path.to_path_buf(), pem))
        }
        None => None,
    };
    let key = (timeout, ca);
    let mut clients = CLIENTS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(client) = clients.get(&key) {
        return Ok(client.clone());
    }
    let client = new_http_client(timeout, key.1.as_ref().map(|(path, pem)| (path.as_path(), pem.as_slice())))?;
    clients.insert(key, client.clone());
    Ok(client)
}

/// Builds a client. `ca` is the CA file's path, for messages, and its contents.
fn new_http_client(timeout: Duration, ca: Option<(&std::path::Path, &[u8])>) -> Result<reqwest::Client, String> {
    install_crypto_provider();
    let mut builder = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        // A redirect would re-send the form (refresh token, client secret) or
        // a webhook's token to wherever it points, maybe over plain HTTP.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("tokensync/", env!("CARGO_PKG_VERSION")));
    if let Some((path, pem)) = ca {
        let certificates = reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|error| format!("invalid PEM in CA file {}: {error}", path.display()))?;
        for certificate in certificates {
            builder = builder.add_root_certificate(certificate);
        }
    }
    builder.build().map_err(|error| format!("cannot build the HTTP client: {error}"))
}

/// Installs ring as the process-wide rustls provider, once. Every HTTP
/// client of the process needs it; [`build_http_client`] calls it.
pub fn install_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // An error means another part of the process installed one already.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A token endpoint client: settings plus the HTTP client built from them.
#[derive(Debug)]
struct Endpoint {
    settings: OAuth2Settings,
    client: reqwest::Client,
}

impl Endpoint {
    fn new(settings: OAuth2Settings) -> Result<Self, String> {
        let client = build_http_client(settings.timeout, settings.ca_file.as_deref())?;
        Ok(Endpoint { settings, client })
    }

    /// Sends one token request with `grant` parameters and interprets the response.
    async fn request(&self, request: FetchRequest<'_>, grant: Vec<(&str, &str)>) -> Result<Token, SourceError> {
        let settings = &self.settings;
        let scope = settings.scopes.join(" ");
        let mut form: Vec<(&str, &str)> = grant;
        if !scope.is_empty() {
            form.push(("scope", &scope));
        }
        for (key, value) in &settings.extra_params {
            form.push((key, value.expose()));
        }

        let mut builder = self.client.post(settings.token_url.clone()).header(ACCEPT, "application/json");
        match (&settings.client_secret, settings.auth_method) {
            (Some(secret), AuthMethod::ClientSecretBasic) => {
                // RFC 6749 section 2.3.1: both parts are form-encoded first.
                let id = form_encode(&settings.client_id);
                let secret = form_encode(secret.expose());
                builder = builder.basic_auth(id, Some(secret));
            }
            (Some(secret), AuthMethod::ClientSecretPost) => {
                form.push(("client_id", &settings.client_id));
                form.push(("client_secret", secret.expose()));
            }
            (None, _) => form.push(("client_id", &settings.client_id)),
        }

        let name = request.token_name;
        let url = &settings.token_url;
        let response = builder.form(&form).send().await.map_err(|error| transport_error(name, url, &error))?;
        let (status, retry_after, body) = read_limited(response, name, url).await?;

        // Everything secret this request carried, so an echo in an error body is removed.
        let mut known: Vec<&str> = form.iter().filter(|(key, _)| *key != "grant_type" && *key != "scope").map(|(_, value)| *value).collect();
        if let Some(secret) = &settings.client_secret {
            known.push(secret.expose());
        }
        if let Some(current) = request.current {
            known.push(current.access_token.expose());
        }
        let raw = RawResponse { status, retry_after: retry_after.as_deref(), body: &body };
        let parsed = response::interpret_redacting(name, raw, request.requested_at, request.fallback_lifetime, SystemTime::now(), &known)?;
        for warning in &parsed.warnings {
            tracing::warn!(token = name, "token response from {url}: {warning}");
        }
        Ok(parsed.token)
    }
}

fn form_encode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// The client credentials grant.
#[derive(Debug)]
pub struct ClientCredentials {
    endpoint: Endpoint,
}

impl ClientCredentials {
    pub fn new(settings: OAuth2Settings) -> Result<Self, String> {
        Ok(ClientCredentials { endpoint: Endpoint::new(settings)? })
    }
}

impl Source for ClientCredentials {
    fn kind(&self) -> &'static str {
        "oauth2_client_credentials"
    }

    fn fetch<'a>(&'a self, request: FetchRequest<'a>) -> BoxFuture<'a, Result<Token, SourceError>> {
        Box::pin(self.endpoint.request(request, vec![("grant_type", "client_credentials")]))
    }
}

/// The refresh token grant, with refresh-token rotation: a new refresh token
/// in a response replaces the old one, and a response without one keeps it.
#[derive(Debug)]
pub struct RefreshTokenGrant {
    endpoint: Endpoint,
    /// The configured refresh token, used until a response rotates it.
    initial: Secret,
    /// When the file holding `initial` last changed, if it came from a file.
    initial_modified_at: Option<SystemTime>,
}

impl RefreshTokenGrant {
    pub fn new(settings: OAuth2Settings, initial: Secret, initial_modified_at: Option<SystemTime>) -> Result<Self, String> {
        Ok(RefreshTokenGrant { endpoint: Endpoint::new(settings)?, initial, initial_modified_at })
    }

    async fn refresh(&self, request: FetchRequest<'_>) -> Result<Token, SourceError> {
        let current_refresh = request.current.and_then(|token| token.refresh_token.clone());
        let refresh_token = current_refresh.unwrap_or_else(|| self.initial.clone());
        let grant = vec![("grant_type", "refresh_token"), ("refresh_token", refresh_token.expose())];
        let mut token = self.endpoint.request(request, grant).await?;
        if token.refresh_token.is_none() {
            token.refresh_token = Some(refresh_token.clone());
        }
        Ok(token)
    }
}

impl Source for RefreshTokenGrant {
    fn kind(&self) -> &'static str {
        "oauth2_refresh_token"
    }

    fn rotates_refresh_tokens(&self) -> bool {
        true
    }

    fn fetch<'a>(&'a self, request: FetchRequest<'a>) -> BoxFuture<'a, Result<Token, SourceError>> {
        Box::pin(self.refresh(request))
    }

    fn seed_modified_at(&self) -> Option<SystemTime> {
        self.initial_modified_at
    }
}
