//! `tokensync status`: the state of a running daemon's tokens as a table,
//! usable as a health probe (exit status 1 when a token is not valid or
//! needs re-authentication).

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::Value;

use crate::source::build_http_client;

/// Fetches `/api/v1/status` from `base_url` and prints it.
pub async fn run(base_url: &str, raw_json: bool) -> Result<ExitCode, String> {
    let client = build_http_client(Duration::from_secs(10), None)?;
    let url = format!("{}/api/v1/status", base_url.trim_end_matches('/'));
    let response = client.get(&url).send().await.map_err(|error| {
        let cause = std::error::Error::source(&error).map(|cause| format!(" ({cause})")).unwrap_or_default();
        format!("cannot reach {url}{cause}; is the daemon running? Pass its metrics listener address with --url")
    })?;
    if !response.status().is_success() {
        return Err(format!("{url} answered {}", response.status()));
    }
    let document: Value = response.json().await.map_err(|error| format!("{url} returned invalid JSON: {error}"))?;
    let tokens = document["tokens"].as_array().cloned().unwrap_or_default();

    if raw_json {
        println!("{document:#}");
    } else {
        print!("{}", render_table(&tokens, std::io::stdout().is_terminal()));
    }
    let healthy = tokens.iter().all(|token| token["state"] == "valid" && token["reauth_required"] != true);
    Ok(if healthy { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Renders the token list as an aligned table; `colour` adds ANSI colours
/// to the state column.
pub fn render_table(tokens: &[Value], colour: bool) -> String {
    let header = ["TOKEN", "STATE", "EXPIRES IN", "LAST REFRESH", "FAILURES", "REASON", "SINKS"];
    let mut rows: Vec<[String; 7]> = Vec::new();
    for token in tokens {
        let mut state = token["state"].as_str().unwrap_or("?").to_owned();
        if token["reauth_required"] == true {
            state.push_str(" (reauth required)");
        }
        let expires_in = token["expires_in_seconds"].as_f64().map_or("-".to_owned(), |seconds| format_seconds(seconds));
        let sinks = token["sinks"].as_array().map_or(0, Vec::len);
        let failing_sinks = token["sinks"]
            .as_array()
            .map_or(0, |sinks| sinks.iter().filter(|sink| sink["consecutive_failures"].as_u64().unwrap_or(0) > 0).count());
        rows.push([
            token["name"].as_str().unwrap_or("?").to_owned(),
            state,
            expires_in,
            token["last_refresh"].as_str().unwrap_or("never").to_owned(),
            token["consecutive_failures"].as_u64().unwrap_or(0).to_string(),
            token["last_failure_reason"].as_str().unwrap_or("-").to_owned(),
            if failing_sinks > 0 { format!("{sinks} ({failing_sinks} failing)") } else { sinks.to_string() },
        ]);
    }

    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut output = String::new();
    let line = |cells: &[String], output: &mut String, colour_state: Option<&str>| {
        for (index, (cell, width)) in cells.iter().zip(widths).enumerate() {
            let padded = format!("{cell:<width$}");
            match (index, colour_state) {
                (1, Some(code)) => output.push_str(&format!("\x1b[{code}m{padded}\x1b[0m")),
                _ => output.push_str(&padded),
            }
            output.push_str(if index + 1 < cells.len() { "  " } else { "\n" });
        }
    };
    line(&header.map(str::to_owned), &mut output, None);
    for row in &rows {
        let code = colour.then(|| if row[1] == "valid" { "32" } else { "31" });
        line(row, &mut output, code);
    }
    output
}

fn format_seconds(seconds: f64) -> String {
    let whole = seconds.round() as i64;
    let span = humantime::format_duration(Duration::from_secs(whole.unsigned_abs())).to_string();
    if whole < 0 { format!("-{span}") } else { span }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn table_aligns_and_colours() {
        let tokens = vec![
            json!({"name": "billing", "state": "valid", "expires_in_seconds": 125.4, "last_refresh": "2026-01-01T12:00:00Z",
                   "consecutive_failures": 0, "last_failure_reason": null, "reauth_required": false, "sinks": [{"consecutive_failures": 0}]}),
            json!({"name": "reports", "state": "expired", "expires_in_seconds": -3.0, "last_refresh": null,
                   "consecutive_failures": 4, "last_failure_reason": "rejected", "reauth_required": true, "sinks": []}),
        ];
        let plain = render_table(&tokens, false);
        let lines: Vec<&str> = plain.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("TOKEN    STATE"), "{plain}");
        assert!(lines[1].contains("2m 5s"), "{plain}");
        assert!(lines[2].contains("expired (reauth required)"), "{plain}");
        assert!(lines[2].contains("rejected"), "{plain}");
        assert!(!plain.contains('\x1b'), "no colour off a terminal");
        assert!(render_table(&tokens, true).contains("\x1b[31m"));
    }
}
