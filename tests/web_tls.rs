//! `--web.config.file`: TLS with a test CA, client certificates and basic
//! authentication on the metrics listener, and certificate renewal without
//! a restart.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{free_port, start_tokensync};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

fn ca(name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    let key = KeyPair::generate().unwrap();
    let certificate = params.self_signed(&key).unwrap();
    Ca { pem: certificate.pem(), issuer: Issuer::new(params, key) }
}

/// Returns (certificate PEM, key PEM) for `names`, signed by `ca`.
fn leaf(ca: &Ca, names: &[&str], common_name: &str) -> (String, String) {
    let mut params = CertificateParams::new(names.iter().map(|name| name.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, common_name);
    let key = KeyPair::generate().unwrap();
    let certificate = params.signed_by(&key, &ca.issuer).unwrap();
    (certificate.pem(), key.serialize_pem())
}

/// Opens a TLS connection trusting `ca_pem`, optionally with a client
/// certificate, sends a GET with `authorization`, and returns the status
/// line and the server certificate's DER, or the connection error.
async fn get(port: u16, ca_pem: &str, client: Option<&(String, String)>, authorization: Option<&str>) -> Result<(String, Vec<u8>), String> {
    tokensync::source::install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    for certificate in rustls_pki_types::pem::PemObject::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(certificate.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let config = match client {
        Some((certificate, key)) => {
            let chain: Vec<CertificateDer<'static>> =
                rustls_pki_types::pem::PemObject::pem_slice_iter(certificate.as_bytes()).map(Result::unwrap).collect();
            let key = rustls_pki_types::pem::PemObject::from_pem_slice(key.as_bytes()).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.map_err(|error| error.to_string())?;
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut stream = connector.connect(name, stream).await.map_err(|error| error.to_string())?;
    let server_certificate = stream.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    let auth = authorization.map(|value| format!("Authorization: {value}\r\n")).unwrap_or_default();
    let request = format!("GET /metrics HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.map_err(|error| error.to_string())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.map_err(|error| error.to_string())?;
    let text = String::from_utf8_lossy(&response);
    let status = text.lines().next().unwrap_or_default().to_owned();
    if status.is_empty() {
        return Err("no response".to_owned());
    }
    Ok((status, server_certificate))
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_client_certs_basic_auth_and_renewal() {
    let issuer = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({"access_token": "tls-at", "expires_in": 3600})))
        .mount(&issuer)
        .await;
    let directory = tempfile::tempdir().unwrap();
    let dir = directory.path();
    let server_ca = ca("server CA");
    let client_ca = ca("client CA");
    let (server_cert, server_key) = leaf(&server_ca, &["localhost", "127.0.0.1"], "first");
    std::fs::write(dir.join("server.crt"), &server_cert).unwrap();
    std::fs::write(dir.join("server.key"), &server_key).unwrap();
    std::fs::write(dir.join("client-ca.crt"), &client_ca.pem).unwrap();
    let hash = bcrypt::hash("scrape-password", 4).unwrap();
    std::fs::write(
        dir.join("web.yml"),
        format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: client-ca.crt\n  min_version: TLS12\nbasic_auth_users:\n  prometheus: '{hash}'\n"
        ),
    )
    .unwrap();
    let config = format!(
        "tokens:\n  - name: t\n    source: {{type: oauth2_client_credentials, token_url: '{}/token', client_id: c, client_secret: s}}\n",
        issuer.uri()
    );
    std::fs::write(dir.join("tokensync.yaml"), config).unwrap();
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let log_path = dir.join("log");
    let mut daemon = start_tokensync(
        &[
            "run",
            "--config",
            dir.join("tokensync.yaml").to_str().unwrap(),
            "--web.listen-address",
            &address,
            "--web.config.file",
            dir.join("web.yml").to_str().unwrap(),
        ],
        &log_path,
    );
    let client_cert = leaf(&client_ca, &["scraper"], "scraper");
    let right = basic("prometheus", "scrape-password");

    let started = Instant::now();
    let first = loop {
        match get(port, &server_ca.pem, Some(&client_cert), Some(&right)).await {
            Ok(answer) => break answer,
            Err(error) => {
                assert!(started.elapsed() < Duration::from_secs(10), "{error}: {}", std::fs::read_to_string(&log_path).unwrap());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert!(first.0.contains("200"), "TLS with a client certificate and the right password: {}", first.0);

    let (status, _) = get(port, &server_ca.pem, Some(&client_cert), Some(&basic("prometheus", "wrong"))).await.unwrap();
    assert!(status.contains("401"), "wrong password: {status}");
    let (status, _) = get(port, &server_ca.pem, Some(&client_cert), None).await.unwrap();
    assert!(status.contains("401"), "no password: {status}");
    let without_certificate = get(port, &server_ca.pem, None, Some(&right)).await;
    assert!(without_certificate.is_err(), "a client without a certificate is refused: {without_certificate:?}");
    let rogue_ca = ca("rogue CA");
    let rogue = leaf(&rogue_ca, &["scraper"], "rogue");
    assert!(get(port, &server_ca.pem, Some(&rogue), Some(&right)).await.is_err(), "a certificate from another CA is refused");

    // Renew the server certificate on disk; new connections get it without a restart.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (renewed_cert, renewed_key) = leaf(&server_ca, &["localhost", "127.0.0.1"], "renewed");
    std::fs::write(dir.join("server.key"), &renewed_key).unwrap();
    std::fs::write(dir.join("server.crt"), &renewed_cert).unwrap();
    let started = Instant::now();
    loop {
        let (status, certificate) = get(port, &server_ca.pem, Some(&client_cert), Some(&right)).await.unwrap();
        assert!(status.contains("200"));
        if certificate != first.1 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "the renewed certificate was never served");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let status = daemon.terminate(Duration::from_secs(10)).unwrap();
    assert!(status.success());
}

/// Serves a trivial router with `limits` and returns its address.
async fn limited_server(limits: tokensync::http::server::Limits) -> std::net::SocketAddr {
    let router = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(tokensync::http::server::serve(listener, router, None, limits, std::future::pending()));
    address
}

#[tokio::test]
async fn listener_limits_headers_and_idle_clients() {
    let limits = tokensync::http::server::Limits { max_connections: 2, max_header_bytes: 8192, header_read_timeout: Duration::from_millis(500) };
    let address = limited_server(limits).await;

    // A request head over the limit is refused.
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let request = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(20_000));
    let _ = stream.write_all(request.as_bytes()).await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response);
    assert!(text.is_empty() || text.starts_with("HTTP/1.1 431"), "an oversized head is refused: {text}");

    // A client that sends nothing is disconnected after the header timeout.
    let mut idle = tokio::net::TcpStream::connect(address).await.unwrap();
    let started = Instant::now();
    let mut buffer = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buffer)).await;
    assert!(read.is_ok(), "the idle connection was not closed");
    assert!(started.elapsed() < Duration::from_secs(3));

    // Normal requests still work.
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    assert!(String::from_utf8_lossy(&response).starts_with("HTTP/1.1 200"));
}
