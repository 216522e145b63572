//! Checks the issuer recipes in config/recipes. Each one must pass
//! `tokensync check-config` offline in an environment shaped like the systemd
//! unit's, take its secrets from `${CREDENTIALS_DIRECTORY}` and write its file
//! sinks under `${RUNTIME_DIRECTORY}`. The check contacts no issuer.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Recipes that docs/recipes.md describes. More may exist.
const REQUIRED_RECIPES: [&str; 6] = ["keycloak", "okta", "auth0", "entra-id", "google-service-account", "github-app"];

/// First line of every recipe, so that editors check it against the schema.
const MODELINE: &str = "# yaml-language-server: $schema=../tokensync.schema.json";

/// Content of every dummy secret file. 64 hex digits are a valid session
/// store key, and check-config reads other secrets without parsing them.
const DUMMY_SECRET: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

/// Value of every variable that is not a directory. `.invalid` is a reserved
/// top-level domain (RFC 2606), and nothing resolves it during the check.
const DUMMY_VALUE: &str = "recipe-check.invalid";

fn recipes_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/recipes")
}

/// Returns the recipe files, sorted by name.
fn recipe_files() -> Vec<PathBuf> {
    let entries = std::fs::read_dir(recipes_dir()).unwrap_or_else(|error| panic!("config/recipes: {error}"));
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "yaml"))
        .collect();
    files.sort();
    files
}

fn recipe_name(path: &Path) -> String {
    path.file_stem().unwrap().to_string_lossy().into_owned()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

fn parse(path: &Path) -> serde_json::Value {
    serde_saphyr::from_str::<serde_json::Value>(&read(path)).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// Returns the names of the `${NAME}` variables in `text`. `$${` is an escaped
/// literal and `${file:PATH}` reads a file, so neither names a variable.
fn referenced_variables(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        let escaped = rest[..start].ends_with('$');
        let body = &rest[start + 2..];
        let Some(end) = body.find('}') else { break };
        let name = &body[..end];
        let is_variable = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !escaped && is_variable {
            names.insert(name.to_owned());
        }
        rest = &body[end + 1..];
    }
    names
}

/// Collects the string values of every key ending in `_file`, in any case,
/// such as `client_secret_file`, `key_file` or an `env` entry `..._FILE`.
fn file_values(value: &serde_json::Value, found: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, child) in map {
                if key.to_ascii_lowercase().ends_with("_file")
                    && let serde_json::Value::String(path) = child
                {
                    found.push(path.clone());
                }
                file_values(child, found);
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|item| file_values(item, found)),
        _ => {}
    }
}

/// Returns the `path` of every sink of type `file`.
fn file_sink_paths(config: &serde_json::Value) -> Vec<String> {
    let tokens = config["tokens"].as_array().map(Vec::as_slice).unwrap_or_default();
    tokens
        .iter()
        .filter_map(|token| token["sinks"].as_array())
        .flatten()
        .filter(|sink| sink["type"] == "file")
        .filter_map(|sink| sink["path"].as_str().map(str::to_owned))
        .collect()
}

/// Replaces each `${NAME}` with its value from `env`, which holds every name the recipe uses.
fn substitute(text: &str, env: &BTreeMap<String, String>) -> String {
    env.iter().fold(text.to_owned(), |text, (name, value)| text.replace(&format!("${{{name}}}"), value))
}

#[test]
fn recipes_cover_required_issuers() {
    let names: BTreeSet<String> = recipe_files().iter().map(|path| recipe_name(path)).collect();
    for required in REQUIRED_RECIPES {
        assert!(names.contains(required), "config/recipes/{required}.yaml is missing; found {names:?}");
    }
}

#[test]
fn recipes_start_with_modeline() {
    for path in recipe_files() {
        let text = read(&path);
        let first_line = text.lines().next().unwrap_or_default();
        assert_eq!(first_line, MODELINE, "{} must start with the YAML language server modeline", path.display());
    }
}

#[test]
fn recipe_secrets_come_from_credentials_directory() {
    for path in recipe_files() {
        let mut files = Vec::new();
        file_values(&parse(&path), &mut files);
        for file in files {
            assert!(
                file.starts_with("${CREDENTIALS_DIRECTORY}/"),
                "{}: {file} is not under ${{CREDENTIALS_DIRECTORY}}, where systemd's LoadCredential= puts secrets",
                path.display()
            );
        }
    }
}

#[test]
fn recipe_file_sinks_write_runtime_directory() {
    for path in recipe_files() {
        let sinks = file_sink_paths(&parse(&path));
        assert!(!sinks.is_empty(), "{} has no file sink", path.display());
        for sink in sinks {
            assert!(
                sink.starts_with("${RUNTIME_DIRECTORY}/"),
                "{}: file sink {sink} is not under ${{RUNTIME_DIRECTORY}}, systemd's RuntimeDirectory=",
                path.display()
            );
        }
    }
}

#[test]
fn recipes_pass_offline_check() {
    for path in recipe_files() {
        let directories = tempfile::tempdir().unwrap();

        // Every systemd directory variable (CREDENTIALS_DIRECTORY,
        // RUNTIME_DIRECTORY, STATE_DIRECTORY, ...) gets an empty directory of
        // its own, every other variable a dummy value.
        let mut env = BTreeMap::new();
        for name in referenced_variables(&read(&path)) {
            let value = if name.ends_with("_DIRECTORY") {
                let directory = directories.path().join(name.to_ascii_lowercase());
                std::fs::create_dir(&directory).unwrap();
                directory.display().to_string()
            } else {
                DUMMY_VALUE.to_owned()
            };
            env.insert(name, value);
        }

        let mut files = Vec::new();
        file_values(&parse(&path), &mut files);
        for file in files {
            let target = PathBuf::from(substitute(&file, &env));
            std::fs::create_dir_all(target.parent().unwrap()).unwrap();
            std::fs::write(&target, format!("{DUMMY_SECRET}\n")).unwrap();
        }

        // A cleared environment: a variable the scan missed makes the check fail.
        let output = Command::new(env!("CARGO_BIN_EXE_tokensync"))
            .arg("check-config")
            .arg(&path)
            .env_clear()
            .envs(&env)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "check-config {} failed with {}\nenvironment: {env:?}\nstdout: {stdout}\nstderr: {stderr}",
            path.display(),
            output.status
        );
        assert!(stdout.contains(": valid, "), "check-config {} printed no verdict: {stdout}", path.display());
    }
}

#[test]
fn variable_scan_skips_escapes_and_files() {
    let text = "a ${ONE} b $${LITERAL} ${file:/etc/x} ${TWO_2}${ONE} ${bad-name}";
    let names: Vec<String> = referenced_variables(text).into_iter().collect();
    assert_eq!(names, ["ONE", "TWO_2"]);
}
