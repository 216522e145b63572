//! DNS rebinding and cross-site requests: the listeners on loopback answer
//! only requests addressed to an IP address or `localhost`, and a reload
//! request sent by a web page is rejected.

mod common;

use std::time::Duration;

use common::{free_port, start_tokensync, wait_ready};

#[tokio::test(flavor = "multi_thread")]
async fn loopback_listeners_reject_foreign_host_names() {
    let directory = tempfile::tempdir().unwrap();
    let dir = directory.path();
    std::fs::write(dir.join("external.token"), "token-from-another-system").unwrap();
    std::fs::write(dir.join("api-token"), "api-bearer-0c2f9e").unwrap();
    let (metrics_port, api_port, proxy_port) = (free_port(), free_port(), free_port());
    let config = format!(
        r#"
tokens:
  - name: external
    source: {{type: file, path: {dir}/external.token, lifetime: 30m}}
api:
  listen: tcp://127.0.0.1:{api_port}
  bearer_token_file: {dir}/api-token
proxies:
  - name: upstream
    listen: 127.0.0.1:{proxy_port}
    upstream: http://127.0.0.1:9
    token: external
"#,
        dir = dir.display()
    );
    let config_path = dir.join("tokensync.yaml");
    std::fs::write(&config_path, config).unwrap();
    let log = dir.join("tokensync.log");
    let address = format!("127.0.0.1:{metrics_port}");
    let _daemon = start_tokensync(&["run", "--config", config_path.to_str().unwrap(), "--web.listen-address", &address], &log);
    let client = tokensync::source::build_http_client(Duration::from_secs(5), None).unwrap();
    let base = format!("http://{address}");
    wait_ready(&client, &base, &log, Duration::from_secs(15)).await;

    let status = |host: String, port: u16, path: &'static str| {
        let client = client.clone();
        async move {
            client
                .get(format!("http://127.0.0.1:{port}{path}"))
                .header("host", host)
                .bearer_auth("api-bearer-0c2f9e")
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    for (port, path) in [(metrics_port, "/metrics"), (metrics_port, "/api/v1/status"), (api_port, "/v1/tokens/external"), (proxy_port, "/")] {
        assert_eq!(status(format!("rebound.example:{port}"), port, path).await, 403, "{path} on port {port} answered a foreign host name");
        assert_eq!(status(format!("LOCALHOST.rebound.example:{port}"), port, path).await, 403, "{path} on port {port}");
    }
    for host in [format!("127.0.0.1:{metrics_port}"), format!("localhost:{metrics_port}"), "localhost".to_owned(), format!("[::1]:{metrics_port}")] {
        assert_eq!(status(host.clone(), metrics_port, "/metrics").await, 200, "Host {host}");
    }
    assert_eq!(status(format!("localhost:{api_port}"), api_port, "/v1/tokens/external").await, 200);

    let reload = |origin: Option<&'static str>| {
        let mut request = client.post(format!("{base}/-/reload"));
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(reload(Some("http://rebound.example")).await, 403, "a web page triggered a reload");
    assert_eq!(reload(Some("null")).await, 403, "a sandboxed page triggered a reload");
    assert_eq!(reload(None).await, 200, "a reload without Origin failed");
}
