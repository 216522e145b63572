//! An issuer whose TLS certificate does not verify is a `connect` failure;
//! the same issuer with its CA in `ca_file` works.

use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls_pki_types::pem::PemObject;
use tokensync::source::{ClientCredentials, FailureReason, FetchRequest, Source};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Serves a fixed token response over TLS with a certificate from a fresh CA;
/// returns the port and the CA's PEM.
async fn tls_issuer() -> (u16, String) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca_pem = ca_params.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().unwrap();
    let server_cert = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap().signed_by(&server_key, &issuer).unwrap();

    tokensync::source::install_crypto_provider();
    let chain = vec![server_cert.der().clone()];
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(server_key.serialize_pem().as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder().with_no_client_auth().with_single_cert(chain, key).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut stream) = acceptor.accept(stream).await else { return };
                let mut buffer = vec![0u8; 8192];
                let _ = stream.read(&mut buffer).await;
                let body = r#"{"access_token":"tls-token","expires_in":60}"#;
                let response = format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (port, ca_pem)
}

fn source(port: u16, ca_file: Option<std::path::PathBuf>) -> ClientCredentials {
    let mut settings = tokensync::source::OAuth2Settings {
        token_url: format!("https://127.0.0.1:{port}/token").parse().unwrap(),
        client_id: "client".into(),
        client_secret: Some(tokensync::Secret::new("secret")),
        auth_method: tokensync::source::AuthMethod::ClientSecretBasic,
        scopes: vec![],
        extra_params: vec![],
        // Distinct from other tests' timeouts, so this test gets its own shared client.
        timeout: Duration::from_millis(4321),
        ca_file: None,
    };
    settings.ca_file = ca_file;
    ClientCredentials::new(settings).unwrap()
}

fn request() -> FetchRequest<'static> {
    FetchRequest { token_name: "tls", current: None, requested_at: chrono::Utc::now(), fallback_lifetime: Duration::from_secs(60) }
}

#[tokio::test]
async fn unverifiable_issuer_certificate_fails() {
    let (port, ca_pem) = tls_issuer().await;

    let error = source(port, None).fetch(request()).await.unwrap_err();
    assert_eq!(error.reason, FailureReason::Connect, "{}", error.message);
    assert!(!error.message.contains("secret"), "{}", error.message);

    let directory = tempfile::tempdir().unwrap();
    let ca_file = directory.path().join("issuer-ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    let token = source(port, Some(ca_file)).fetch(request()).await.unwrap();
    assert_eq!(token.access_token.expose(), "tls-token");
}

#[tokio::test]
async fn renewed_ca_file_is_read_again() {
    let (old_port, old_ca) = tls_issuer().await;
    let (new_port, new_ca) = tls_issuer().await;
    let directory = tempfile::tempdir().unwrap();
    let ca_file = directory.path().join("issuer-ca.pem");

    std::fs::write(&ca_file, old_ca).unwrap();
    let token = source(old_port, Some(ca_file.clone())).fetch(request()).await.unwrap();
    assert_eq!(token.access_token.expose(), "tls-token");

    // The issuer moved to a certificate from another CA, and the operator
    // renewed the file. A source built afterwards, as on a reload, trusts
    // the new CA, and no longer the old one.
    std::fs::write(&ca_file, new_ca).unwrap();
    let token = source(new_port, Some(ca_file.clone())).fetch(request()).await.unwrap();
    assert_eq!(token.access_token.expose(), "tls-token");
    let error = source(old_port, Some(ca_file)).fetch(request()).await.unwrap_err();
    assert_eq!(error.reason, FailureReason::Connect, "{}", error.message);
}
