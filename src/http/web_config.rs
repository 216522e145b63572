//! `--web.config.file`: TLS and basic authentication for the metrics
//! listener, in the format of the Prometheus exporter-toolkit:
//!
//! ```yaml
//! tls_server_config:
//!   cert_file: server.crt          # paths relative to this file
//!   key_file: server.key
//!   client_auth_type: RequireAndVerifyClientCert
//!   client_ca_file: ca.crt
//!   min_version: TLS12             # or TLS13
//! basic_auth_users:
//!   prometheus: $2y$10$...         # bcrypt hashes
//! ```
//!
//! The file and the certificates it names are read again when any of them
//! changes (checked at most once a second, on new connections), so renewed
//! certificates apply without a restart.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use base64::Engine as _;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

use crate::secret::Secret;

/// Minimum interval between checks of the files for changes.
const RELOAD_CHECK_PERIOD: Duration = Duration::from_secs(1);
/// Cached basic-auth verdicts; the cache is cleared when it is full.
const AUTH_CACHE_ENTRIES: usize = 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WebConfigFile {
    tls_server_config: Option<TlsServerConfig>,
    #[serde(default)]
    basic_auth_users: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsServerConfig {
    cert_file: String,
    key_file: String,
    #[serde(default)]
    client_auth_type: ClientAuthType,
    client_ca_file: Option<String>,
    min_version: Option<String>,
}

/// Client certificate policy, named as in the exporter-toolkit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
enum ClientAuthType {
    #[default]
    NoClientCert,
    RequestClientCert,
    RequireAnyClientCert,
    VerifyClientCertIfGiven,
    RequireAndVerifyClientCert,
}

/// The loaded web configuration.
struct Loaded {
    tls: Option<Arc<rustls::ServerConfig>>,
    /// User name to bcrypt hash.
    users: BTreeMap<String, Secret>,
    /// Modification times of every file read, to detect changes.
    stamps: Vec<(PathBuf, Option<SystemTime>)>,
}

/// A web configuration that reloads itself when its files change.
pub struct WebConfig {
    path: PathBuf,
    current: ArcSwap<Loaded>,
    last_check: Mutex<Instant>,
    verdicts: Mutex<HashMap<(String, [u8; 32]), bool>>,
}

impl std::fmt::Debug for WebConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebConfig").field("path", &self.path).finish_non_exhaustive()
    }
}

impl WebConfig {
    /// Loads `path`; every problem is an error naming the file.
    pub fn load(path: &Path) -> Result<Arc<WebConfig>, String> {
        let loaded = load(path)?;
        Ok(Arc::new(WebConfig {
            path: path.to_owned(),
            current: ArcSwap::from_pointee(loaded),
            last_check: Mutex::new(Instant::now()),
            verdicts: Mutex::new(HashMap::new()),
        }))
    }

    /// Returns the TLS configuration for a new connection, reloading the
    /// files first when they changed. A reload that fails keeps the previous
    /// configuration and logs why.
    pub fn tls(&self) -> Option<Arc<rustls::ServerConfig>> {
        self.reload_if_changed();
        self.current.load().tls.clone()
    }

    /// Returns true when basic authentication is configured.
    pub fn requires_auth(&self) -> bool {
        !self.current.load().users.is_empty()
    }

    /// Checks an `Authorization` header value against the users. bcrypt runs
    /// on a blocking thread. Verdicts are cached by user and SHA-256 of the
    /// password, so repeated scrapes cost a hash, not a bcrypt round.
    pub async fn authorize(&self, header: Option<&str>) -> bool {
        let Some((user, password)) = header.and_then(parse_basic) else { return false };
        let loaded = self.current.load_full();
        let Some(hash) = loaded.users.get(&user).cloned() else { return false };
        let digest: [u8; 32] = ring::digest::digest(&ring::digest::SHA256, password.expose().as_bytes())
            .as_ref()
            .try_into()
            .expect("SHA-256 is 32 bytes");
        let key = (user, digest);
        if let Some(verdict) = lock(&self.verdicts).get(&key) {
            return *verdict;
        }
        let verdict = tokio::task::spawn_blocking(move || bcrypt::verify(password.expose(), hash.expose()).unwrap_or(false))
            .await
            .unwrap_or(false);
        let mut verdicts = lock(&self.verdicts);
        if verdicts.len() >= AUTH_CACHE_ENTRIES {
            verdicts.clear();
        }
        verdicts.insert(key, verdict);
        verdict
    }

    fn reload_if_changed(&self) {
        {
            let mut last = lock(&self.last_check);
            if last.elapsed() < RELOAD_CHECK_PERIOD {
                return;
            }
            *last = Instant::now();
        }
        let changed = self.current.load().stamps.iter().any(|(path, stamp)| modified(path) != *stamp);
        if !changed {
            return;
        }
        match load(&self.path) {
            Ok(loaded) => {
                self.current.store(Arc::new(loaded));
                lock(&self.verdicts).clear();
                tracing::info!(file = %self.path.display(), "web configuration reloaded");
            }
            Err(error) => tracing::error!(error = %error, "reloading the web configuration failed; keeping the previous one"),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|metadata| metadata.modified()).ok()
}

fn parse_basic(header: &str) -> Option<(String, Secret)> {
    let encoded = header.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), Secret::new(password)))
}

fn load(path: &Path) -> Result<Loaded, String> {
    let at = |what: String| format!("web config {}: {what}", path.display());
    let text = std::fs::read_to_string(path).map_err(|error| at(format!("cannot read: {error}")))?;
    let file: WebConfigFile = serde_saphyr::from_str(&text).map_err(|error| at(error.without_snippet().to_string()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut stamps = vec![(path.to_owned(), modified(path))];

    for (user, hash) in &file.basic_auth_users {
        if !hash.starts_with("$2") {
            return Err(at(format!("basic_auth_users.{user} is not a bcrypt hash (it must start with $2)")));
        }
    }
    let users = file.basic_auth_users.into_iter().map(|(user, hash)| (user, Secret::new(hash))).collect();

    let tls = match file.tls_server_config {
        None => None,
        Some(settings) => {
            let resolve = |file: &str| base.join(file);
            let cert_path = resolve(&settings.cert_file);
            let key_path = resolve(&settings.key_file);
            let certificates: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
                .and_then(|certificates| certificates.collect::<Result<_, _>>())
                .map_err(|error| at(format!("cannot read certificates from {}: {error}", cert_path.display())))?;
            if certificates.is_empty() {
                return Err(at(format!("{} holds no certificate", cert_path.display())));
            }
            let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|error| at(format!("cannot read the key {}: {error}", key_path.display())))?;
            stamps.push((cert_path.clone(), modified(&cert_path)));
            stamps.push((key_path.clone(), modified(&key_path)));

            crate::source::install_crypto_provider();
            let versions: &[&rustls::SupportedProtocolVersion] = match settings.min_version.as_deref() {
                None | Some("TLS12") => &[&rustls::version::TLS13, &rustls::version::TLS12],
                Some("TLS13") => &[&rustls::version::TLS13],
                Some(other) => return Err(at(format!("min_version `{other}` is not supported: use TLS12 or TLS13"))),
            };
            let builder = rustls::ServerConfig::builder_with_protocol_versions(versions);
            let builder = match settings.client_auth_type {
                ClientAuthType::NoClientCert => builder.with_no_client_auth(),
                ClientAuthType::RequestClientCert | ClientAuthType::RequireAnyClientCert => {
                    return Err(at(format!(
                        "client_auth_type {:?} is not supported: use VerifyClientCertIfGiven or RequireAndVerifyClientCert with client_ca_file",
                        settings.client_auth_type
                    )));
                }
                ClientAuthType::VerifyClientCertIfGiven | ClientAuthType::RequireAndVerifyClientCert => {
                    let ca_file = settings.client_ca_file.as_deref().ok_or_else(|| at(format!("client_auth_type {:?} needs client_ca_file", settings.client_auth_type)))?;
                    let ca_path = resolve(ca_file);
                    let mut roots = rustls::RootCertStore::empty();
                    for certificate in CertificateDer::pem_file_iter(&ca_path)
                        .map_err(|error| at(format!("cannot read {}: {error}", ca_path.display())))?
                    {
                        let certificate = certificate.map_err(|error| at(format!("invalid PEM in {}: {error}", ca_path.display())))?;
                        roots.add(certificate).map_err(|error| at(format!("invalid CA certificate in {}: {error}", ca_path.display())))?;
                    }
                    stamps.push((ca_path.clone(), modified(&ca_path)));
                    let verifier = WebPkiClientVerifier::builder(Arc::new(roots));
                    let verifier = if settings.client_auth_type == ClientAuthType::VerifyClientCertIfGiven {
                        verifier.allow_unauthenticated()
                    } else {
                        verifier
                    };
                    builder.with_client_cert_verifier(verifier.build().map_err(|error| at(format!("client verifier: {error}")))?)
                }
            };
            let mut config = builder
                .with_single_cert(certificates, key)
                .map_err(|error| at(format!("the certificate and key do not form a valid pair: {error}")))?;
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            Some(Arc::new(config))
        }
    };
    Ok(Loaded { tls, users, stamps })
}
