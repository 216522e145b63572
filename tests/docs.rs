//! Docs and schema that cannot drift: the checked-in JSON Schema matches the
//! types, every shipped config validates against it, every option is in
//! docs/configuration.md, and docs/metrics.md lists exactly the exported metrics.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use tokensync::engine::{Engine, EngineOptions, Observer, TokenSpec, Trigger};
use tokensync::metrics::Metrics;
use tokensync::sink::{FileFormat, FileSink, SyncFailureReason};

fn read(path: &str) -> String {
    std::fs::read_to_string(common::repo_root().join(path)).unwrap_or_else(|error| panic!("{path}: {error}"))
}

#[test]
fn schema_file_is_current() {
    let checked_in: serde_json::Value = serde_json::from_str(&read("config/tokensync.schema.json")).unwrap();
    assert!(
        checked_in == tokensync::config::json_schema(),
        "config/tokensync.schema.json is outdated: run `cargo run -- schema > config/tokensync.schema.json`"
    );
}

/// Shipped configurations, with the demo template's placeholders filled in.
fn shipped_configs() -> Vec<(String, String)> {
    let mut files = vec!["config/tokensync.example.yaml".to_owned(), "config/demo.yaml".to_owned()];
    if let Ok(entries) = std::fs::read_dir(common::repo_root().join("config/recipes")) {
        let mut recipes: Vec<String> = entries.filter_map(Result::ok).map(|entry| format!("config/recipes/{}", entry.file_name().to_string_lossy())).collect();
        recipes.sort();
        files.extend(recipes);
    }
    files
        .into_iter()
        .map(|file| {
            let text = read(&file).replace("{{ISSUER}}", "http://127.0.0.1:1").replace("{{DIR}}", "/tmp");
            (file, text)
        })
        .collect()
}

#[test]
fn shipped_configs_match_schema() {
    let schema = tokensync::config::json_schema();
    let validator = jsonschema::validator_for(&schema).expect("the schema compiles");
    for (file, text) in shipped_configs() {
        assert!(text.starts_with("# yaml-language-server: $schema="), "{file} lacks the YAML language server modeline");
        let value: serde_json::Value = serde_saphyr::from_str(&text).unwrap_or_else(|error| panic!("{file}: {error}"));
        let errors: Vec<String> = validator.iter_errors(&value).map(|error| format!("{} at {}", error, error.instance_path())).collect();
        assert!(errors.is_empty(), "{file} does not match the schema: {errors:#?}");
    }
}

#[test]
fn schema_rejects_wrong_config() {
    let schema = tokensync::config::json_schema();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let wrong = serde_json::json!({"tokens": [{"name": "a", "source": {"type": "magic"}}], "unknown": 1});
    assert!(!validator.is_valid(&wrong));
}

/// Collects every property name of every object in the schema.
fn property_names(value: &serde_json::Value, names: &mut BTreeSet<String>) {
    match value {
        serde_json::Value::Object(map) => {
            if let Some(serde_json::Value::Object(properties)) = map.get("properties") {
                names.extend(properties.keys().cloned());
            }
            map.values().for_each(|child| property_names(child, names));
        }
        serde_json::Value::Array(items) => items.iter().for_each(|child| property_names(child, names)),
        _ => {}
    }
}

#[test]
fn configuration_doc_covers_every_option() {
    let doc = read("docs/configuration.md");
    let mut names = BTreeSet::new();
    property_names(&tokensync::config::json_schema(), &mut names);
    assert!(names.len() > 40, "the schema walk found too few options: {names:?}");
    let missing: Vec<&String> = names.iter().filter(|name| !doc.contains(&format!("`{name}`")) && !doc.contains(&format!("`refresh.{name}`")) && !doc.contains(&format!("`backoff.{name}`"))).collect();
    assert!(missing.is_empty(), "docs/configuration.md lacks these options: {missing:?}");
}

/// Returns the metric family names of an exposition, without type suffixes.
fn exported_names(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn metrics_doc_matches_registry() {
    let metrics = Metrics::new();
    let engine = Engine::new(EngineOptions { observer: metrics.clone(), ..EngineOptions::default() });
    metrics.attach(engine.clone());
    let directory = tempfile::tempdir().unwrap();
    let mut spec = TokenSpec::new("doc", None);
    spec.sinks = vec![std::sync::Arc::new(FileSink::new(directory.path().join("t"), FileFormat::Raw, 0o600))];
    engine.add_token(spec).unwrap();
    engine.sync_token("doc", tokensync::Token::bearer("x", chrono::Utc::now(), Duration::from_secs(60))).unwrap();
    assert!(common::eventually(Duration::from_secs(2), || directory.path().join("t").exists()).await);
    // Events that create the series that exist only after a first occurrence.
    metrics.refresh_finished("doc", Trigger::Manual, Duration::from_millis(5), Ok(()));
    metrics.sync_finished("doc", "file:/x", Err(SyncFailureReason::Io));
    metrics.record_api_request("get_token", 200, Duration::from_millis(1));
    metrics.register_proxy("p");
    metrics.record_proxy_request("p", 200);
    metrics.coordination_changed(true);
    metrics.lease_attempt("doc", tokensync::engine::LeaseResult::Acquired);

    let exposition = metrics.encode_text().unwrap();
    let mut exported = exported_names(&exposition);
    // Counters are typed under their name without `_total` in the text format.
    exported = exported
        .into_iter()
        .map(|name| if exposition.contains(&format!("{name}_total")) && !name.ends_with("_total") { format!("{name}_total") } else { name })
        .collect();
    let documented: BTreeSet<String> = read("docs/metrics.md")
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split('`').next())
        .map(str::to_owned)
        .collect();
    let undocumented: Vec<_> = exported.difference(&documented).collect();
    let stale: Vec<_> = documented.difference(&exported).collect();
    assert!(undocumented.is_empty(), "exported but not in docs/metrics.md: {undocumented:?}");
    assert!(stale.is_empty(), "in docs/metrics.md but not exported: {stale:?}");
    engine.shutdown();
    metrics.detach();
}
