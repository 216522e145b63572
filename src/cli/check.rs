//! `tokensync check-config [--online] FILE`.
//!
//! Offline, every check that needs no network: structure, values, readable
//! secret files, key lengths, writable sink directories, and a warning for
//! inline secrets in a file that others can read. Online, also one token
//! request per source and a test write per file sink, printed as a table
//! with a hint for every failure, and a read of the shared state in Redis.
//! Nothing printed contains a secret.

use std::fmt::Write as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use crate::config::{self, BuiltTokens, Config, ResolvedConfig, ResolvedSink, StoreCache};
use crate::coordination::{CoordinationSettings, Coordinator};
use crate::sink::SessionStore;
use crate::source::{FailureReason, FetchRequest, SourceError};

/// Inline-secret warnings printed one by one; the rest are counted.
const MAX_WARNINGS_SHOWN: usize = 10;

/// Validates a configuration file; with `online`, also contacts the issuers.
pub fn check_config(path: &Path, online: bool) -> ExitCode {
    let parsed = match config::load(path) {
        Ok(parsed) => parsed,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::FAILURE;
        }
    };
    let warnings = inline_secret_warnings(path, &parsed);
    for warning in warnings.iter().take(MAX_WARNINGS_SHOWN) {
        eprintln!("{}: warning: {warning}", path.display());
    }
    if warnings.len() > MAX_WARNINGS_SHOWN {
        eprintln!("{}: warning: {} more inline secrets", path.display(), warnings.len() - MAX_WARNINGS_SHOWN);
    }
    let resolved = match config::resolve(&parsed, &|name| std::env::var(name).ok()) {
        Ok(resolved) => resolved,
        Err(problems) => {
            for problem in &problems {
                eprintln!("{}: {problem}", path.display());
            }
            eprintln!("{}: {} problem(s) found", path.display(), problems.len());
            return ExitCode::FAILURE;
        }
    };
    let mut stores = StoreCache::new();
    let built = match config::build(&resolved, &mut stores) {
        Ok(built) => built,
        Err(problems) => {
            for problem in problems {
                eprintln!("{}: {problem}", path.display());
            }
            return ExitCode::FAILURE;
        }
    };
    println!("{}: valid, {} token(s)", path.display(), resolved.tokens.len());
    if !online {
        return ExitCode::SUCCESS;
    }

    super::current_thread(async {
        let (report, all_passed) = check_online(&resolved, &built).await;
        print!("{report}");
        Ok(if all_passed { ExitCode::SUCCESS } else { ExitCode::FAILURE })
    })
}

/// Warns about secrets written into a config file that group or others can read.
fn inline_secret_warnings(path: &Path, config: &Config) -> Vec<String> {
    let readable_by_others = std::fs::metadata(path).is_ok_and(|metadata| metadata.permissions().mode() & 0o077 != 0);
    if !readable_by_others {
        return Vec::new();
    }
    let mut warnings = Vec::new();
    for (index, token) in config.tokens.iter().enumerate() {
        let source = &token.value.source.value;
        for (key, value) in [("client_secret", &source.client_secret), ("refresh_token", &source.refresh_token)] {
            if let Some(value) = value
                && !value.value.contains("${")
            {
                warnings.push(format!(
                    "line {}: tokens[{index}].source.{key} is written inline and the file is readable by group or others; \
                     use {key}_file or ${{ENV_VAR}}, or chmod 600 the file",
                    value.referenced.line()
                ));
            }
        }
    }
    warnings
}

/// Requests one token per source and test-writes every file sink.
async fn check_online(resolved: &ResolvedConfig, built: &BuiltTokens) -> (String, bool) {
    let mut rows: Vec<[String; 5]> = Vec::new();
    let mut all_passed = true;

    // The stores are opened and their entries decrypted, never rewritten.
    for (path, key) in &resolved.stores {
        let label = format!("session_store:{}", path.display());
        let (_, problems) = SessionStore::open(path, &key.0);
        if problems.is_empty() {
            let detail = if path.exists() { "the key decrypts every entry" } else { "no file yet; it is created with the first token" };
            rows.push(row(&label, "ok", "", "", detail));
        } else {
            all_passed = false;
            let messages: Vec<String> = problems.into_iter().map(|problem| problem.message).collect();
            rows.push(row(&label, "failed", "", "", &messages.join("; ")));
        }
    }

    if let Some(settings) = &resolved.coordination {
        let (result, detail) = check_coordination(settings, resolved, built).await;
        all_passed &= result == "ok";
        rows.push(row("coordination:redis", result, "", "", &detail));
    }

    for (token, spec) in resolved.tokens.iter().zip(&built.specs) {
        let name = &token.name;
        let Some(source) = &spec.source else { continue };
        if source.rotates_refresh_tokens() {
            rows.push(row(name, "skipped", "-", "-", "a test refresh would rotate the refresh token the daemon uses"));
        } else {
            let request = FetchRequest { token_name: name, current: None, requested_at: chrono::Utc::now(), fallback_lifetime: token.fallback_lifetime };
            match source.fetch(request).await {
                Ok(obtained) => {
                    let lifetime = humantime::format_duration(Duration::from_secs(obtained.lifetime.as_secs())).to_string();
                    rows.push(row(name, "ok", &lifetime, obtained.expiry_source.as_str(), &format!("token type {}", obtained.token_type)));
                }
                Err(error) => {
                    all_passed = false;
                    rows.push(row(name, &format!("failed: {}", error.reason), "-", "-", &format!("{}; {}", hint(&error), error.message)));
                }
            }
        }

        for sink in &token.sinks {
            let (label, outcome) = check_sink(sink);
            match outcome {
                Ok(detail) => rows.push(row(&format!("  {label}"), "ok", "", "", &detail)),
                Err(detail) if detail.starts_with("skipped") => rows.push(row(&format!("  {label}"), "skipped", "", "", &detail)),
                Err(detail) => {
                    all_passed = false;
                    rows.push(row(&format!("  {label}"), "failed", "", "", &detail));
                }
            }
        }
    }
    (render(&rows), all_passed)
}

/// Pings Redis and reads every coordinated token's shared state, which
/// must decrypt with the configured key. Nothing is written.
async fn check_coordination(settings: &CoordinationSettings, resolved: &ResolvedConfig, built: &BuiltTokens) -> (&'static str, String) {
    let coordinator = match Coordinator::new(settings) {
        Ok(coordinator) => coordinator,
        Err(error) => return ("failed", error),
    };
    if let Err(error) = coordinator.ping().await {
        return ("failed", format!("{error}; check coordination.url, username and password_file"));
    }
    let (mut shared, mut undecryptable) = (0, Vec::new());
    let shared_tokens = resolved.tokens.iter().zip(&built.specs).filter(|(_, spec)| spec.source.as_ref().is_some_and(|source| source.is_shared()));
    for (token, _) in shared_tokens {
        match coordinator.read(&token.name).await {
            Ok(state) if state.version > 0 => {
                shared += 1;
                if state.token.is_none() {
                    undecryptable.push(token.name.as_str());
                }
            }
            Ok(_) => {}
            Err(error) => return ("failed", error.to_string()),
        }
    }
    if undecryptable.is_empty() {
        ("ok", format!("Redis answers; {shared} token(s) have shared state, and the key decrypts each"))
    } else {
        let names = undecryptable.join(", ");
        ("failed", format!("the shared state of {names} does not decrypt: every instance needs the same coordination key"))
    }
}

fn row(name: &str, result: &str, lifetime: &str, expiry: &str, detail: &str) -> [String; 5] {
    [name.to_owned(), result.to_owned(), lifetime.to_owned(), expiry.to_owned(), detail.to_owned()]
}

/// Test-writes a file sink, opens a session store, and skips the others,
/// which would deliver a token to another system.
fn check_sink(sink: &ResolvedSink) -> (String, Result<String, String>) {
    match sink {
        ResolvedSink::File { path, .. } => {
            let label = format!("file:{}", path.display());
            let directory = path.parent().filter(|parent| !parent.as_os_str().is_empty()).unwrap_or(Path::new("."));
            let name = path.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
            let probe = directory.join(format!(".{name}.tokensync-check-{}", std::process::id()));
            let written = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&probe)
                .and_then(|file| file.sync_all());
            let _ = std::fs::remove_file(&probe);
            let outcome = written.map(|()| "test write succeeded".to_owned()).map_err(|error| {
                format!("cannot create a file in {}: {error}; check the directory's owner and mode", directory.display())
            });
            (label, outcome)
        }
        ResolvedSink::SessionStore { path } => {
            let label = format!("session_store:{}", path.display());
            (label, Ok("key checked above".to_owned()))
        }
        ResolvedSink::Webhook(settings) => {
            let mut shown = settings.url.clone();
            shown.set_query(None);
            (format!("webhook:{shown}"), Err("skipped: a test delivery would send a token".to_owned()))
        }
        ResolvedSink::Exec { .. } => ("exec".to_owned(), Err("skipped: the command is not run by a check".to_owned())),
    }
}

/// Suggests the next step for a failed token request.
fn hint(error: &SourceError) -> &'static str {
    let message = error.message.as_str();
    match error.reason {
        FailureReason::Rejected if message.contains("invalid_client") || error.status == Some(401) => {
            "check client_id and the client secret (file or variable)"
        }
        FailureReason::Rejected if message.contains("invalid_grant") => "the issuer refused the grant; a new refresh token or login is needed",
        FailureReason::Rejected if message.contains("invalid_scope") => "check scopes: the issuer does not grant one of them to this client",
        FailureReason::Rejected => "the issuer refused the request; check the client's settings at the issuer",
        FailureReason::Connect => "check token_url, DNS, the proxy variables and the network path",
        FailureReason::Timeout => "the issuer did not respond in time; check the network or raise timeout",
        FailureReason::RateLimited => "the issuer rate-limits this client; try again later",
        FailureReason::ServerError => "the issuer failed; try again later",
        FailureReason::InvalidResponse => "check token_url: the endpoint did not answer like a token endpoint",
    }
}

fn render(rows: &[[String; 5]]) -> String {
    let header = ["TOKEN / SINK", "RESULT", "LIFETIME", "EXPIRY FROM", "DETAIL"];
    let mut widths = header.map(str::len);
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row.iter()).take(4) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut output = String::new();
    let mut line = |cells: &[&str]| {
        for (index, cell) in cells.iter().enumerate() {
            if index < 4 {
                let _ = write!(output, "{cell:<width$}  ", width = widths[index]);
            } else {
                let _ = writeln!(output, "{cell}");
            }
        }
    };
    line(&header);
    for row in rows {
        line(&[&row[0], &row[1], &row[2], &row[3], &row[4]]);
    }
    output
}
