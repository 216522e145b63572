//! Configuration parsing and offline validation, with line numbers.

use std::path::Path;

use tokensync::config::{self, Problem};

fn env(name: &str) -> Option<String> {
    match name {
        "CLIENT_SECRET" => Some("from-env".into()),
        "SESSION_KEY" => Some("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=".into()),
        _ => None,
    }
}

fn problems(yaml: &str) -> Vec<Problem> {
    let parsed = config::parse(yaml, "test.yaml").expect("the structure is valid");
    config::resolve(&parsed, &env).expect_err("the config has problems")
}

#[test]
fn valid_config_resolves() {
    let directory = tempfile::tempdir().unwrap();
    let dir = directory.path().display();
    let yaml = format!(
        r#"
defaults:
  refresh: {{buffer: 2m, lifetime_fraction: 0.5, jitter: 0, min_interval: 1s}}
  backoff: {{initial: 2s, max: 1m}}
  timeout: 3s
tokens:
  - name: billing
    source:
      type: oauth2_client_credentials
      token_url: https://issuer.example.com/token
      client_id: billing
      client_secret: ${{CLIENT_SECRET}}
      scopes: [a, b]
    sinks:
      - {{type: file, path: {dir}/billing.token}}
      - {{type: session_store, path: {dir}/session.json, key_env: SESSION_KEY}}
    refresh:
      buffer: 30s
"#
    );
    let parsed = config::parse(&yaml, "test.yaml").unwrap();
    let resolved = config::resolve(&parsed, &env).unwrap();
    let token = &resolved.tokens[0];
    assert_eq!(token.name, "billing");
    assert_eq!(token.policy.buffer.as_secs(), 30);
    assert_eq!(token.policy.lifetime_fraction, 0.5);
    assert_eq!(token.backoff.max.as_secs(), 60);
    assert_eq!(token.timeout.as_secs(), 3);
    let config::ResolvedSource::OAuth2 { settings, .. } = &token.source else { panic!("not an OAuth2 source") };
    assert_eq!(settings.client_secret.as_ref().unwrap().expose(), "from-env");
    assert_eq!(token.sinks.len(), 2);
    assert_eq!(resolved.stores.len(), 1);
}

#[test]
fn unknown_key_reports_line() {
    let yaml = "tokens:\n  - name: a\n    sorce: {}\n";
    let error = config::parse(yaml, "test.yaml").unwrap_err();
    assert_eq!(error.line, Some(3), "{error}");
    assert!(error.message.contains("sorce"), "{error}");
}

#[test]
fn invalid_duration_reports_line() {
    let yaml = "defaults:\n  timeout: 10\n";
    let error = config::parse(yaml, "test.yaml").unwrap_err();
    assert_eq!(error.line, Some(2), "{error}");
    assert!(error.message.contains("unit"), "{error}");

    let yaml = "defaults:\n  refresh:\n    buffer: five minutes\n";
    let error = config::parse(yaml, "test.yaml").unwrap_err();
    assert_eq!(error.line, Some(3), "{error}");
    assert!(error.message.contains("invalid duration"), "{error}");
}

#[test]
fn every_problem_is_reported_with_line() {
    let yaml = r#"
tokens:
  - name: billing
    source:
      type: oauth2_client_credentials
      token_url: "ftp://issuer.example.com/token"
      client_id: billing
      client_secret_file: /nonexistent/secret
    sinks:
      - {type: file, path: /nonexistent-dir/billing.token, mode: "999"}
  - name: billing
    source:
      type: oauth2_refresh_token
      token_url: https://issuer.example.com/token
      client_id: reports
      refresh_token: ${MISSING_VAR}
    refresh:
      lifetime_fraction: 1.5
"#;
    let found = problems(yaml);
    let expect = |path: &str, line: u64, words: &str| {
        let problem = found
            .iter()
            .find(|problem| problem.path == path)
            .unwrap_or_else(|| panic!("no problem at {path} in {found:#?}"));
        assert_eq!(problem.line, Some(line), "{problem}");
        assert!(problem.message.contains(words), "{problem}");
    };
    expect("tokens[0].source.token_url", 6, "scheme must be http or https");
    expect("tokens[0].source.client_secret_file", 8, "cannot read /nonexistent/secret");
    expect("tokens[0].sinks[0].path", 10, "does not exist");
    expect("tokens[0].sinks[0].mode", 10, "invalid mode");
    expect("tokens[1].name", 11, "used twice");
    expect("tokens[1].source.refresh_token", 16, "MISSING_VAR is not set");
    expect("tokens[1].refresh.lifetime_fraction", 18, "at most 1");
}

#[test]
fn wrong_key_length_is_reported() {
    let directory = tempfile::tempdir().unwrap();
    let key_file = directory.path().join("key");
    std::fs::write(&key_file, "c2hvcnQ=\n").unwrap();
    let yaml = format!(
        "tokens:\n  - name: a\n    source: {{type: oauth2_client_credentials, token_url: 'http://127.0.0.1:1/t', client_id: a, client_secret: s}}\n    sinks:\n      - {{type: session_store, path: {}/s.json, key_file: {}}}\n",
        directory.path().display(),
        key_file.display()
    );
    let found = problems(&yaml);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(found[0].message.contains("32 bytes"), "{}", found[0]);
    assert_eq!(found[0].line, Some(5));
    assert!(!found[0].message.contains("c2hvcnQ"), "the key is never quoted");
}

#[test]
fn session_shorthand_adds_store_and_buffer() {
    let directory = tempfile::tempdir().unwrap();
    let yaml = format!(
        "session: {{save_file: {}/session.json, token_refresh_buffer: 7}}\ntokens:\n  - name: a\n    source: {{type: oauth2_client_credentials, token_url: 'http://127.0.0.1:1/t', client_id: a, client_secret: s}}\n",
        directory.path().display()
    );
    let parsed = config::parse(&yaml, "test.yaml").unwrap();
    let with_key = |name: &str| if name == "TOKENSYNC_SESSION_KEY" { env("SESSION_KEY") } else { None };
    let resolved = config::resolve(&parsed, &with_key).unwrap();
    assert_eq!(resolved.tokens[0].policy.buffer.as_secs(), 7 * 60);
    assert_eq!(resolved.tokens[0].sinks.len(), 1);

    let missing = config::resolve(&parsed, &|_| None).unwrap_err();
    assert!(missing[0].message.contains("TOKENSYNC_SESSION_KEY"), "{}", missing[0]);
}

#[test]
fn buffer_env_var_overrides_default() {
    let yaml = "tokens:\n  - name: a\n    source: {type: oauth2_client_credentials, token_url: 'http://127.0.0.1:1/t', client_id: a, client_secret: s}\n";
    let parsed = config::parse(yaml, "test.yaml").unwrap();
    let resolved = config::resolve(&parsed, &|name| (name == "TOKEN_REFRESH_BUFFER_MINUTES").then(|| "2".to_owned())).unwrap();
    assert_eq!(resolved.tokens[0].policy.buffer.as_secs(), 120);
    let resolved = config::resolve(&parsed, &|_| None).unwrap();
    assert_eq!(resolved.tokens[0].policy.buffer.as_secs(), 300);
    let bad = config::resolve(&parsed, &|name| (name == "TOKEN_REFRESH_BUFFER_MINUTES").then(|| "soon".to_owned())).unwrap_err();
    assert!(bad[0].message.contains("whole number of minutes"), "{}", bad[0]);
}

#[test]
fn shipped_configs_parse() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for file in ["config/tokensync.example.yaml", "config/demo.yaml"] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        // The demo template's placeholders are filled in at start.
        let text = text.replace("{{ISSUER}}", "http://127.0.0.1:1").replace("{{DIR}}", "/tmp");
        config::parse(&text, file).unwrap_or_else(|error| panic!("{error}"));
    }
}

#[test]
fn listeners_on_one_port_are_reported() {
    let yaml = "web: {listen_address: '127.0.0.1:9400'}\napi: {listen: 'tcp://127.0.0.1:9400', unix_socket_permissions_only: false, bearer_token_file: /nonexistent}\ntokens:\n  - name: a\n    source: {type: oauth2_client_credentials, token_url: 'http://127.0.0.1:1/t', client_id: a, client_secret: s}\nproxies:\n  - {name: p, listen: '127.0.0.1:9400', upstream: 'http://127.0.0.1:2', token: a}\n";
    let found = problems(yaml);
    let clashes: Vec<_> = found.iter().filter(|problem| problem.message.contains("is also used by")).collect();
    assert_eq!(clashes.len(), 1, "the API's bearer file problem stops its entry, the proxy clashes: {found:#?}");
    assert!(clashes[0].path == "proxies[0].listen", "{}", clashes[0]);
    assert!(clashes[0].message.contains("web.listen_address"), "{}", clashes[0]);
}

#[test]
fn listener_clash_rules() {
    let source = "tokens:\n  - name: a\n    source: {type: oauth2_client_credentials, token_url: 'http://127.0.0.1:1/t', client_id: a, client_secret: s}\n";
    let clashes = |listeners: &str| {
        let parsed = config::parse(&format!("{listeners}{source}"), "test.yaml").unwrap();
        match config::resolve(&parsed, &|_| None) {
            Ok(_) => Vec::new(),
            Err(problems) => problems.into_iter().filter(|problem| problem.message.contains("is also used by")).collect(),
        }
    };
    let all_addresses = "web: {listen_address: '0.0.0.0:9400'}\nproxies:\n  - {name: p, listen: '127.0.0.1:9400', upstream: 'http://127.0.0.1:2', token: a}\n";
    let found = clashes(all_addresses);
    assert_eq!(found.len(), 1, "a listener on all addresses takes the port on loopback too: {found:#?}");
    assert_eq!(found[0].path, "proxies[0].listen");

    let any_port = "proxies:\n  - {name: p, listen: '127.0.0.1:0', upstream: 'http://127.0.0.1:2', token: a}\n  - {name: q, listen: '127.0.0.1:0', upstream: 'http://127.0.0.1:2', token: a}\n";
    assert!(clashes(any_port).is_empty(), "port 0 gets a free port for each listener");
}

#[test]
fn parse_error_states_location_once() {
    let error = config::parse("tokens:\n  - name: a\n    sorce: {}\n", "test.yaml").unwrap_err();
    let text = error.to_string();
    assert!(text.starts_with("test.yaml:3:"), "{text}");
    assert!(!text.contains(" at line "), "the location appears once: {text}");
}
