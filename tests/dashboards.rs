//! Lints the Grafana dashboards in `dashboards/`.
//!
//! Each rule is a check function that returns the violations it finds, and
//! each failure names the dashboard file, the panel title and the rule. The
//! negative tests run the same checks on deliberately broken dashboards, so a
//! check that stops finding anything fails the suite.
//!
//! The PromQL scanning here is a small lexer, not a full parser: it finds
//! metric selectors, range selectors and calls of `rate`, `irate` and
//! `increase`, which is what the rules need. `dashboard_queries_parse` has
//! promtool parse every query for real.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

const DATASOURCE_UID: &str = "${datasource}";
const MIN_SCHEMA_VERSION: u64 = 39;
const RATE_INTERVAL: &str = "$__rate_interval";
const SHIPPED_DASHBOARDS: [&str; 2] = ["tokensync-overview.json", "tokensync-token.json"];
const PROMTOOL_MISSING: &str = "promtool not found: install the Debian package prometheus";

// Rule names, as they appear in failure messages.
const RULE_IDENTITY: &str = "identity (uid, id null, schemaVersion, title, tags, no __inputs)";
const RULE_DATASOURCE_VARIABLE: &str = "one datasource variable";
const RULE_QUERY_VARIABLES: &str = "job, instance and token variables";
const RULE_UNIQUE_PANEL_IDS: &str = "unique panel ids";
const RULE_DESCRIPTION: &str = "panel description";
const RULE_UNIT: &str = "panel unit";
const RULE_TARGETS: &str = "panel targets";
const RULE_TARGET_DATASOURCE: &str = "target datasource is ${datasource}";
const RULE_JOB_INSTANCE_FILTER: &str = "selectors filter on $job and $instance";
const RULE_RATE_INTERVAL: &str = "ranges use $__rate_interval";
const RULE_COUNTER_WRAPPED: &str = "counters wrapped in rate or increase";

/// A broken rule in one dashboard, optionally in one panel or annotation.
#[derive(Debug)]
struct Violation {
    dashboard: String,
    location: Option<String>,
    rule: &'static str,
    detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.location {
            Some(location) => write!(
                f,
                "{}: {}: rule `{}` broken: {}",
                self.dashboard, location, self.rule, self.detail
            ),
            None => write!(
                f,
                "{}: rule `{}` broken: {}",
                self.dashboard, self.rule, self.detail
            ),
        }
    }
}

/// A dashboard under lint: its file name and its JSON model.
struct Dashboard<'a> {
    name: &'a str,
    json: &'a Value,
}

impl Dashboard<'_> {
    fn violation(&self, location: Option<String>, rule: &'static str, detail: String) -> Violation {
        Violation {
            dashboard: self.name.to_string(),
            location,
            rule,
            detail,
        }
    }
}

type Check = fn(&Dashboard) -> Vec<Violation>;

const ALL_CHECKS: [Check; 9] = [
    check_identity,
    check_datasource_variable,
    check_query_variables,
    check_unique_panel_ids,
    check_panel_metadata,
    check_targets,
    check_job_instance_filters,
    check_rate_intervals,
    check_counters_wrapped,
];

// ---------------------------------------------------------------- loading

fn dashboards_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards")
}

/// Reads every `*.json` file in `dir`, sorted by name. Panics on unreadable
/// or invalid JSON, naming the file.
fn load_dashboards(dir: &Path) -> Vec<(String, Value)> {
    let entries = fs::read_dir(dir).unwrap_or_else(|error| {
        panic!("cannot read dashboard directory {}: {error}", dir.display())
    });
    let mut paths: Vec<PathBuf> = entries
        .map(|entry| entry.expect("failed to read a directory entry").path())
        .filter(|path| {
            path.extension()
                .is_some_and(|extension| extension == "json")
        })
        .collect();
    paths.sort();

    paths
        .into_iter()
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let text = fs::read_to_string(&path)
                .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()));
            let json = serde_json::from_str(&text)
                .unwrap_or_else(|error| panic!("{name}: invalid JSON: {error}"));
            (name, json)
        })
        .collect()
}

fn shipped_dashboards() -> Vec<(String, Value)> {
    load_dashboards(&dashboards_dir())
}

/// Runs every check on one dashboard model.
fn lint_dashboard(name: &str, json: &Value) -> Vec<Violation> {
    let dashboard = Dashboard { name, json };
    ALL_CHECKS
        .iter()
        .flat_map(|check| check(&dashboard))
        .collect()
}

/// Runs every check on every dashboard file in `dir`.
fn lint_directory(dir: &Path) -> Vec<Violation> {
    load_dashboards(dir)
        .iter()
        .flat_map(|(name, json)| lint_dashboard(name, json))
        .collect()
}

/// Runs one check on all shipped dashboards and fails with every violation.
fn assert_shipped_dashboards_pass(check: Check) {
    let dashboards = shipped_dashboards();
    assert!(
        !dashboards.is_empty(),
        "no dashboards found in {}",
        dashboards_dir().display()
    );

    let violations: Vec<String> = dashboards
        .iter()
        .flat_map(|(name, json)| check(&Dashboard { name, json }))
        .map(|violation| violation.to_string())
        .collect();
    assert!(
        violations.is_empty(),
        "dashboard lint failed:\n{}",
        violations.join("\n")
    );
}

// ---------------------------------------------------------------- model access

/// Returns every panel, including panels nested in collapsed rows.
fn all_panels(dashboard: &Value) -> Vec<&Value> {
    fn collect<'a>(panels: &'a Value, out: &mut Vec<&'a Value>) {
        for panel in panels.as_array().into_iter().flatten() {
            out.push(panel);
            if let Some(nested) = panel.get("panels") {
                collect(nested, out);
            }
        }
    }
    let mut out = Vec::new();
    if let Some(panels) = dashboard.get("panels") {
        collect(panels, &mut out);
    }
    out
}

fn is_row(panel: &Value) -> bool {
    panel["type"] == "row"
}

fn panel_location(panel: &Value) -> String {
    let title = panel["title"].as_str().unwrap_or("<untitled>");
    format!("panel \"{title}\" (id {})", panel["id"])
}

fn non_empty_str(value: &Value) -> Option<&str> {
    value
        .as_str()
        .map(str::trim)
        .filter(|text| !text.is_empty())
}

fn variables(dashboard: &Value) -> Vec<&Value> {
    dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .collect()
}

/// Returns the query of a template variable, which Grafana stores either as a
/// string or as an object with a `query` field.
fn variable_query(variable: &Value) -> Option<&str> {
    match &variable["query"] {
        Value::String(query) => Some(query),
        Value::Object(object) => object.get("query").and_then(Value::as_str),
        _ => None,
    }
}

/// Returns every PromQL expression with its location: panel targets and
/// dashboard annotations.
fn expressions(dashboard: &Value) -> Vec<(String, &str)> {
    let mut out = Vec::new();
    for panel in all_panels(dashboard) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                let reference = target["refId"].as_str().unwrap_or("?");
                out.push((
                    format!("{} target {reference}", panel_location(panel)),
                    expr,
                ));
            }
        }
    }
    for annotation in dashboard["annotations"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(expr) = annotation["expr"].as_str() {
            let name = annotation["name"].as_str().unwrap_or("<unnamed>");
            out.push((format!("annotation \"{name}\""), expr));
        }
    }
    out
}

// ---------------------------------------------------------------- checks

fn check_identity(dashboard: &Dashboard) -> Vec<Violation> {
    let json = dashboard.json;
    let mut problems = Vec::new();

    if non_empty_str(&json["uid"]).is_none() {
        problems.push(
            "uid is missing or empty; set a fixed uid so links and provisioning stay stable"
                .to_string(),
        );
    }
    if !json["id"].is_null() {
        problems.push(format!(
            "id is {}, expected null so Grafana assigns one on import",
            json["id"]
        ));
    }
    match json["schemaVersion"].as_u64() {
        Some(version) if version >= MIN_SCHEMA_VERSION => {}
        other => problems.push(format!(
            "schemaVersion is {other:?}, expected at least {MIN_SCHEMA_VERSION}"
        )),
    }
    if non_empty_str(&json["title"]).is_none() {
        problems.push("title is missing or empty".to_string());
    }
    let tags = json["tags"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if tags.is_empty() || tags.iter().any(|tag| non_empty_str(tag).is_none()) {
        problems.push(format!(
            "tags must be a non-empty list of strings, found {}",
            json["tags"]
        ));
    }
    for key in ["__inputs", "__requires"] {
        if json.get(key).is_some() {
            problems.push(format!(
                "{key} is present; use the datasource variable instead of export inputs"
            ));
        }
    }

    problems
        .into_iter()
        .map(|detail| dashboard.violation(None, RULE_IDENTITY, detail))
        .collect()
}

fn check_datasource_variable(dashboard: &Dashboard) -> Vec<Violation> {
    let datasource_variables: Vec<&Value> = variables(dashboard.json)
        .into_iter()
        .filter(|variable| variable["type"] == "datasource")
        .collect();

    let mut problems = Vec::new();
    match datasource_variables.as_slice() {
        [variable] => {
            if variable["name"] != "datasource" {
                problems.push(format!(
                    "the datasource variable is named {}, expected \"datasource\"",
                    variable["name"]
                ));
            }
            if variable["query"] != "prometheus" {
                problems.push(format!(
                    "the datasource variable has query {}, expected \"prometheus\"",
                    variable["query"]
                ));
            }
        }
        found => problems.push(format!(
            "found {} variables of type datasource, expected exactly 1",
            found.len()
        )),
    }

    problems
        .into_iter()
        .map(|detail| dashboard.violation(None, RULE_DATASOURCE_VARIABLE, detail))
        .collect()
}

fn check_query_variables(dashboard: &Dashboard) -> Vec<Violation> {
    // Each variable and the filters its label_values() query must contain,
    // so that the choices follow the variables before it.
    let expected: [(&str, &[&str]); 3] = [
        ("job", &[]),
        ("instance", &["job=\"$job\""]),
        ("token", &["job=\"$job\"", "instance=~\"$instance\""]),
    ];
    let all = variables(dashboard.json);
    let mut problems = Vec::new();

    for (name, filters) in expected {
        let Some(variable) = all.iter().find(|variable| variable["name"] == name) else {
            problems.push(format!("variable `{name}` is missing"));
            continue;
        };
        if variable["type"] != "query" {
            problems.push(format!(
                "variable `{name}` has type {}, expected \"query\"",
                variable["type"]
            ));
        }
        if variable["datasource"]["uid"] != DATASOURCE_UID {
            problems.push(format!(
                "variable `{name}` has datasource {}, expected uid {DATASOURCE_UID}",
                variable["datasource"]
            ));
        }
        let query = variable_query(variable).unwrap_or("");
        if !query.starts_with("label_values(") {
            problems.push(format!(
                "variable `{name}` has query {query:?}, expected label_values(...)"
            ));
        }
        for filter in filters {
            if !query.contains(filter) {
                problems.push(format!(
                    "variable `{name}` query {query:?} does not filter on {filter}"
                ));
            }
        }
    }

    problems
        .into_iter()
        .map(|detail| dashboard.violation(None, RULE_QUERY_VARIABLES, detail))
        .collect()
}

fn check_unique_panel_ids(dashboard: &Dashboard) -> Vec<Violation> {
    let mut seen: BTreeMap<u64, String> = BTreeMap::new();
    let mut violations = Vec::new();

    for panel in all_panels(dashboard.json) {
        let location = panel_location(panel);
        let Some(id) = panel["id"].as_u64() else {
            violations.push(dashboard.violation(
                Some(location),
                RULE_UNIQUE_PANEL_IDS,
                format!("id is {}, expected a positive integer", panel["id"]),
            ));
            continue;
        };
        if let Some(first) = seen.get(&id) {
            violations.push(dashboard.violation(
                Some(location),
                RULE_UNIQUE_PANEL_IDS,
                format!("id {id} is already used by {first}"),
            ));
        } else {
            seen.insert(id, location);
        }
    }
    violations
}

fn check_panel_metadata(dashboard: &Dashboard) -> Vec<Violation> {
    let mut violations = Vec::new();
    for panel in all_panels(dashboard.json)
        .into_iter()
        .filter(|panel| !is_row(panel))
    {
        if non_empty_str(&panel["description"]).is_none() {
            violations.push(dashboard.violation(
                Some(panel_location(panel)),
                RULE_DESCRIPTION,
                "description is missing or empty".to_string(),
            ));
        }
        if non_empty_str(&panel["fieldConfig"]["defaults"]["unit"]).is_none() {
            violations.push(dashboard.violation(
                Some(panel_location(panel)),
                RULE_UNIT,
                "fieldConfig.defaults.unit is missing or empty (use \"none\" for plain numbers)".to_string(),
            ));
        }
    }
    violations
}

fn check_targets(dashboard: &Dashboard) -> Vec<Violation> {
    let mut violations = Vec::new();
    for panel in all_panels(dashboard.json)
        .into_iter()
        .filter(|panel| !is_row(panel))
    {
        let location = panel_location(panel);
        if panel["datasource"]["uid"] != DATASOURCE_UID {
            violations.push(dashboard.violation(
                Some(location.clone()),
                RULE_TARGET_DATASOURCE,
                format!(
                    "panel datasource is {}, expected uid {DATASOURCE_UID}",
                    panel["datasource"]
                ),
            ));
        }

        let targets = panel["targets"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        if targets.is_empty() {
            violations.push(dashboard.violation(
                Some(location.clone()),
                RULE_TARGETS,
                "panel has no targets".to_string(),
            ));
        }
        for target in targets {
            let reference = target["refId"].as_str().unwrap_or("?");
            if target["datasource"]["uid"] != DATASOURCE_UID {
                violations.push(dashboard.violation(
                    Some(location.clone()),
                    RULE_TARGET_DATASOURCE,
                    format!(
                        "target {reference} datasource is {}, expected uid {DATASOURCE_UID}",
                        target["datasource"]
                    ),
                ));
            }
            if non_empty_str(&target["expr"]).is_none() {
                violations.push(dashboard.violation(
                    Some(location.clone()),
                    RULE_TARGETS,
                    format!("target {reference} has no expr"),
                ));
            }
        }
    }
    for annotation in dashboard.json["annotations"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if annotation.get("expr").is_some() && annotation["datasource"]["uid"] != DATASOURCE_UID {
            let name = annotation["name"].as_str().unwrap_or("<unnamed>");
            violations.push(dashboard.violation(
                Some(format!("annotation \"{name}\"")),
                RULE_TARGET_DATASOURCE,
                format!(
                    "datasource is {}, expected uid {DATASOURCE_UID}",
                    annotation["datasource"]
                ),
            ));
        }
    }
    violations
}

fn check_job_instance_filters(dashboard: &Dashboard) -> Vec<Violation> {
    let mut violations = Vec::new();
    for (location, expr) in expressions(dashboard.json) {
        let scan = scan_promql(expr);
        for selector in &scan.selectors {
            let matchers = selector.matchers.as_deref().unwrap_or("");
            let has_job = matchers.contains("job=\"$job\"") || matchers.contains("job=~\"$job\"");
            let has_instance = matchers.contains("instance=~\"$instance\"");
            if !has_job || !has_instance {
                violations.push(dashboard.violation(
                    Some(location.clone()),
                    RULE_JOB_INSTANCE_FILTER,
                    format!(
                        "selector `{}{{{matchers}}}` must contain job=\"$job\" and instance=~\"$instance\"",
                        selector.name
                    ),
                ));
            }
        }
    }
    violations
}

fn check_rate_intervals(dashboard: &Dashboard) -> Vec<Violation> {
    let mut violations = Vec::new();
    for (location, expr) in expressions(dashboard.json) {
        let scan = scan_promql(expr);
        for range in &scan.ranges {
            if range.text != RATE_INTERVAL {
                violations.push(dashboard.violation(
                    Some(location.clone()),
                    RULE_RATE_INTERVAL,
                    format!("range [{}] must be [{RATE_INTERVAL}]", range.text),
                ));
            }
        }
        for call in scan
            .calls
            .iter()
            .filter(|call| is_rate_function(&call.name))
        {
            let has_range = scan
                .ranges
                .iter()
                .any(|range| range.start > call.arguments.0 && range.start < call.arguments.1);
            if !has_range {
                violations.push(dashboard.violation(
                    Some(location.clone()),
                    RULE_RATE_INTERVAL,
                    format!("{}() has no range selector", call.name),
                ));
            }
        }
    }
    violations
}

fn check_counters_wrapped(dashboard: &Dashboard) -> Vec<Violation> {
    let mut violations = Vec::new();
    for (location, expr) in expressions(dashboard.json) {
        let scan = scan_promql(expr);
        for selector in scan
            .selectors
            .iter()
            .filter(|selector| is_counter_name(&selector.name))
        {
            let wrapped = scan.calls.iter().any(|call| {
                is_rate_function(&call.name)
                    && selector.start > call.arguments.0
                    && selector.start < call.arguments.1
            });
            if !wrapped {
                violations.push(dashboard.violation(
                    Some(location.clone()),
                    RULE_COUNTER_WRAPPED,
                    format!(
                        "counter {} is used outside rate(), irate() or increase()",
                        selector.name
                    ),
                ));
            }
        }
    }
    violations
}

fn is_rate_function(name: &str) -> bool {
    matches!(name, "rate" | "irate" | "increase")
}

/// Counters by Prometheus naming convention: `_total`, and the `_bucket`,
/// `_count` and `_sum` series of histograms and summaries.
fn is_counter_name(name: &str) -> bool {
    ["_total", "_bucket", "_count", "_sum"]
        .iter()
        .any(|suffix| name.ends_with(suffix))
}

// ---------------------------------------------------------------- PromQL scanning

/// A metric selector: its metric name (empty for `{__name__=...}`) and the
/// text between its braces, if any.
#[derive(Debug)]
struct Selector {
    name: String,
    matchers: Option<String>,
    start: usize,
}

/// A range selector or subquery: the text between the brackets.
#[derive(Debug)]
struct Range {
    text: String,
    start: usize,
}

/// A function call and the byte span of its parentheses.
#[derive(Debug)]
struct Call {
    name: String,
    arguments: (usize, usize),
}

#[derive(Debug, Default)]
struct Scan {
    selectors: Vec<Selector>,
    ranges: Vec<Range>,
    calls: Vec<Call>,
}

const PROMQL_KEYWORDS: [&str; 13] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
];

/// Keywords followed by a parenthesized list of label names.
const LABEL_LIST_KEYWORDS: [&str; 6] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Aggregation operators, which may put `by (...)` or `without (...)` between
/// their name and their arguments.
const AGGREGATION_OPERATORS: [&str; 14] = [
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];

/// Finds the metric selectors, ranges and function calls in a PromQL
/// expression. Strings, comments and label lists are skipped.
fn scan_promql(expr: &str) -> Scan {
    let bytes = expr.as_bytes();
    let mut scan = Scan::default();
    let mut i = 0;

    while i < bytes.len() {
        let byte = bytes[i];
        match byte {
            b'"' | b'\'' | b'`' => i = skip_string(bytes, i),
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'[' => {
                let end = find_byte(bytes, i, b']');
                scan.ranges.push(Range {
                    text: expr[i + 1..end].trim().to_string(),
                    start: i,
                });
                i = end + 1;
            }
            b'{' => {
                // A selector without a metric name, such as {__name__="up"}.
                let end = find_closing_brace(bytes, i);
                scan.selectors.push(Selector {
                    name: String::new(),
                    matchers: Some(expr[i + 1..end].to_string()),
                    start: i,
                });
                i = end + 1;
            }
            b'0'..=b'9' | b'.' => {
                // Numbers, including 1e9 and 0x1f.
                while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'.') {
                    i += 1;
                }
            }
            b'$' => {
                // A Grafana variable outside a string, which is not PromQL.
                i += 1;
                while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                    i += 1;
                }
            }
            _ if byte.is_ascii_alphabetic() || byte == b'_' || byte == b':' => {
                i = scan_identifier(expr, i, &mut scan);
            }
            _ => i += 1,
        }
    }
    scan
}

/// Classifies the identifier at `start` as a function call, keyword or metric
/// selector and returns the index after what it consumed.
fn scan_identifier(expr: &str, start: usize, scan: &mut Scan) -> usize {
    let bytes = expr.as_bytes();
    let mut end = start;
    while end < bytes.len()
        && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_' || bytes[end] == b':')
    {
        end += 1;
    }
    let name = &expr[start..end];
    let mut next = skip_whitespace(bytes, end);

    if AGGREGATION_OPERATORS.contains(&name) {
        // Step over a grouping clause placed before the arguments.
        let word_end = (next..bytes.len())
            .find(|&i| !(bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_'))
            .unwrap_or(bytes.len());
        if matches!(&expr[next..word_end], "by" | "without") {
            let list = skip_whitespace(bytes, word_end);
            if bytes.get(list) == Some(&b'(') {
                next = skip_whitespace(bytes, find_closing_paren(bytes, list) + 1);
            }
        }
    }
    let next_byte = bytes.get(next).copied();

    if LABEL_LIST_KEYWORDS.contains(&name) {
        // Skip the label list so its names are not taken for metrics.
        return if next_byte == Some(b'(') {
            find_closing_paren(bytes, next) + 1
        } else {
            end
        };
    }
    if PROMQL_KEYWORDS.contains(&name.to_ascii_lowercase().as_str()) {
        return end;
    }
    if next_byte == Some(b'(') {
        let close = find_closing_paren(bytes, next);
        scan.calls.push(Call {
            name: name.to_string(),
            arguments: (next, close),
        });
        // Continue inside the arguments, which contain their own selectors.
        return next + 1;
    }
    if next_byte == Some(b'{') {
        let close = find_closing_brace(bytes, next);
        scan.selectors.push(Selector {
            name: name.to_string(),
            matchers: Some(expr[next + 1..close].to_string()),
            start,
        });
        return close + 1;
    }
    scan.selectors.push(Selector {
        name: name.to_string(),
        matchers: None,
        start,
    });
    end
}

fn skip_whitespace(bytes: &[u8], mut i: usize) -> usize {
    while i < bytes.len() && bytes[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

/// Returns the index after the string literal that starts at `start`.
fn skip_string(bytes: &[u8], start: usize) -> usize {
    let quote = bytes[start];
    let mut i = start + 1;
    while i < bytes.len() && bytes[i] != quote {
        if bytes[i] == b'\\' && quote != b'`' {
            i += 1;
        }
        i += 1;
    }
    i + 1
}

/// Returns the index of the first `target` byte after `start`, or the end of
/// the input if there is none.
fn find_byte(bytes: &[u8], start: usize, target: u8) -> usize {
    (start + 1..bytes.len())
        .find(|&i| bytes[i] == target)
        .unwrap_or(bytes.len())
}

fn find_closing_brace(bytes: &[u8], open: usize) -> usize {
    let mut i = open + 1;
    while i < bytes.len() && bytes[i] != b'}' {
        if matches!(bytes[i], b'"' | b'\'' | b'`') {
            i = skip_string(bytes, i);
        } else {
            i += 1;
        }
    }
    i.min(bytes.len())
}

fn find_closing_paren(bytes: &[u8], open: usize) -> usize {
    let mut depth = 0;
    let mut i = open;
    while i < bytes.len() {
        match bytes[i] {
            b'"' | b'\'' | b'`' => {
                i = skip_string(bytes, i);
                continue;
            }
            b'(' => depth += 1,
            b')' => {
                depth -= 1;
                if depth == 0 {
                    return i;
                }
            }
            _ => {}
        }
        i += 1;
    }
    bytes.len()
}

// ---------------------------------------------------------------- fixtures

/// Returns a minimal dashboard that passes every check. The negative tests break it
/// one rule at a time.
fn valid_dashboard() -> Value {
    let datasource = json!({"type": "prometheus", "uid": "${datasource}"});
    json!({
        "id": null,
        "uid": "lint-fixture",
        "title": "Lint fixture",
        "tags": ["tokensync"],
        "schemaVersion": 39,
        "templating": {"list": [
            {"type": "datasource", "name": "datasource", "query": "prometheus"},
            {"type": "query", "name": "job", "datasource": datasource,
             "query": "label_values(tokensync_build_info, job)"},
            {"type": "query", "name": "instance", "datasource": datasource,
             "query": {"query": "label_values(tokensync_build_info{job=\"$job\"}, instance)"}},
            {"type": "query", "name": "token", "datasource": datasource,
             "query": "label_values(tokensync_token_valid{job=\"$job\", instance=~\"$instance\"}, token)"}
        ]},
        "annotations": {"list": [
            {"name": "restarts", "datasource": datasource,
             "expr": "changes(process_start_time_seconds{job=\"$job\", instance=~\"$instance\"}[$__rate_interval]) > 0"}
        ]},
        "panels": [
            {"type": "row", "id": 1, "title": "Refreshes", "collapsed": true, "panels": [
                {"type": "stat", "id": 3, "title": "Valid", "description": "Whether the token is valid.",
                 "datasource": datasource, "fieldConfig": {"defaults": {"unit": "none"}},
                 "targets": [{"refId": "A", "datasource": datasource,
                              "expr": "tokensync_token_valid{job=\"$job\", instance=~\"$instance\", token=~\"$token\"}"}]}
            ]},
            {"type": "timeseries", "id": 2, "title": "Refreshes by trigger",
             "description": "Refresh attempts per second.",
             "datasource": datasource, "fieldConfig": {"defaults": {"unit": "ops"}},
             "targets": [{"refId": "A", "datasource": datasource,
                          "expr": "sum by (trigger) (rate(tokensync_refreshes_total{job=\"$job\", instance=~\"$instance\"}[$__rate_interval]))"}]}
        ]
    })
}

/// Returns the panel with the given id from the fixture, searching rows too.
fn fixture_panel(dashboard: &mut Value, id: u64) -> &mut Value {
    fn find(panels: &mut Value, id: u64) -> Option<&mut Value> {
        for panel in panels.as_array_mut()? {
            if panel["id"] == id {
                return Some(panel);
            }
            if let Some(found) = panel.get_mut("panels").and_then(|nested| find(nested, id)) {
                return Some(found);
            }
        }
        None
    }
    find(&mut dashboard["panels"], id).unwrap_or_else(|| panic!("fixture has no panel {id}"))
}

fn set_fixture_expr(dashboard: &mut Value, expr: &str) {
    fixture_panel(dashboard, 2)["targets"][0]["expr"] = json!(expr);
}

fn remove_variable(dashboard: &mut Value, name: &str) {
    dashboard["templating"]["list"]
        .as_array_mut()
        .unwrap()
        .retain(|variable| variable["name"] != name);
}

/// A uniquely named directory under the system temp directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(prefix: &str) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let path = std::env::temp_dir().join(format!("{prefix}-{}-{nanos}", std::process::id()));
        fs::create_dir_all(&path)
            .unwrap_or_else(|error| panic!("cannot create {}: {error}", path.display()));
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------- tests: shipped dashboards

#[test]
fn shipped_dashboards_are_present() {
    let names: BTreeSet<String> = shipped_dashboards()
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    for expected in SHIPPED_DASHBOARDS {
        assert!(
            names.contains(expected),
            "dashboards/{expected} is missing; found {names:?}"
        );
    }
}

#[test]
fn dashboard_uids_are_unique() {
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for (name, json) in shipped_dashboards() {
        let uid = json["uid"].as_str().unwrap_or_default().to_string();
        if let Some(first) = seen.insert(uid.clone(), name.clone()) {
            panic!("{name} and {first} share the uid {uid:?}");
        }
    }
}

#[test]
fn dashboards_have_identity_fields() {
    assert_shipped_dashboards_pass(check_identity);
}

#[test]
fn dashboards_have_one_datasource_variable() {
    assert_shipped_dashboards_pass(check_datasource_variable);
}

#[test]
fn dashboards_have_job_instance_token_variables() {
    assert_shipped_dashboards_pass(check_query_variables);
}

#[test]
fn panel_ids_are_unique() {
    assert_shipped_dashboards_pass(check_unique_panel_ids);
}

#[test]
fn panels_have_units_and_descriptions() {
    assert_shipped_dashboards_pass(check_panel_metadata);
}

#[test]
fn targets_use_datasource_variable() {
    assert_shipped_dashboards_pass(check_targets);
}

#[test]
fn queries_filter_on_job_and_instance() {
    assert_shipped_dashboards_pass(check_job_instance_filters);
}

#[test]
fn ranges_use_rate_interval() {
    assert_shipped_dashboards_pass(check_rate_intervals);
}

#[test]
fn counters_are_wrapped_in_rate() {
    assert_shipped_dashboards_pass(check_counters_wrapped);
}

/// Has promtool parse every dashboard query, with the Grafana variables
/// replaced by sample values, as recording rules.
#[test]
fn dashboard_queries_parse() {
    let replacements = [
        ("${datasource}", "prometheus"),
        (RATE_INTERVAL, "1m"),
        ("$instance", ".*"),
        ("$token", ".*"),
        ("$job", "tokensync"),
    ];
    let mut rules = Vec::new();
    let mut locations = Vec::new();
    for (name, json) in shipped_dashboards() {
        for (location, expr) in expressions(&json) {
            let mut substituted = expr.to_string();
            for (variable, value) in replacements {
                substituted = substituted.replace(variable, value);
            }
            assert!(
                !substituted.contains('$'),
                "{name}: {location}: unknown Grafana variable in {expr:?}"
            );
            rules.push(
                json!({"record": format!("dashboard_query:{}", rules.len()), "expr": substituted}),
            );
            locations.push(format!("{name}: {location}"));
        }
    }
    assert!(!rules.is_empty(), "no dashboard queries found");

    // JSON is valid YAML, so promtool reads this file as a rules file.
    let temp = TempDir::new("tokensync-dashboard-queries");
    let rules_path = temp.0.join("dashboard-queries.rules.json");
    let document = json!({"groups": [{"name": "dashboard_queries", "rules": rules}]});
    fs::write(
        &rules_path,
        serde_json::to_string_pretty(&document).unwrap(),
    )
    .unwrap();

    let output = match Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&rules_path)
        .output()
    {
        Ok(output) => output,
        Err(error) if error.kind() == ErrorKind::NotFound => panic!("{PROMTOOL_MISSING}"),
        Err(error) => panic!("failed to run promtool: {error}"),
    };
    assert!(
        output.status.success(),
        "promtool rejected a dashboard query ({}).\nRule N is query N of:\n{}\n\nstdout:\n{}\nstderr:\n{}",
        output.status,
        locations
            .iter()
            .enumerate()
            .map(|(index, location)| format!("  {index}: {location}"))
            .collect::<Vec<_>>()
            .join("\n"),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
}

// ---------------------------------------------------------------- tests: the lint itself

#[test]
fn scanner_finds_selectors_ranges_and_calls() {
    let scan = scan_promql(
        "histogram_quantile(0.9, sum by (le, instance) (rate(tokensync_refresh_duration_seconds_bucket{job=\"$job\", le!=\"1e9\"}[$__rate_interval])))\n\
         / on (instance) group_left () up{instance=~\"$instance\"} > 1e9 # up_total in a comment\n\
         and time() - process_start_time_seconds",
    );
    let names: Vec<&str> = scan
        .selectors
        .iter()
        .map(|selector| selector.name.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "tokensync_refresh_duration_seconds_bucket",
            "up",
            "process_start_time_seconds"
        ]
    );
    assert_eq!(scan.selectors[2].matchers, None);
    let ranges: Vec<&str> = scan
        .ranges
        .iter()
        .map(|range| range.text.as_str())
        .collect();
    assert_eq!(ranges, [RATE_INTERVAL]);
    let calls: Vec<&str> = scan.calls.iter().map(|call| call.name.as_str()).collect();
    assert_eq!(calls, ["histogram_quantile", "sum", "rate", "time"]);
}

#[test]
fn valid_fixture_passes_lint() {
    let violations: Vec<String> = lint_dashboard("fixture.json", &valid_dashboard())
        .iter()
        .map(Violation::to_string)
        .collect();
    assert!(
        violations.is_empty(),
        "the valid fixture has violations:\n{}",
        violations.join("\n")
    );
}

#[test]
fn broken_in_memory_dashboards_are_rejected() {
    // Each case breaks one rule of the valid fixture and names the rule and,
    // for panel rules, the panel title that the failure message must contain.
    type Break = fn(&mut Value);
    let cases: &[(&str, Break, &str, Option<&str>)] = &[
        ("numeric id", |d| d["id"] = json!(7), RULE_IDENTITY, None),
        ("missing uid", |d| d["uid"] = json!(""), RULE_IDENTITY, None),
        (
            "old schema",
            |d| d["schemaVersion"] = json!(27),
            RULE_IDENTITY,
            None,
        ),
        ("no tags", |d| d["tags"] = json!([]), RULE_IDENTITY, None),
        (
            "export inputs",
            |d| d["__inputs"] = json!([]),
            RULE_IDENTITY,
            None,
        ),
        (
            "no datasource variable",
            |d| remove_variable(d, "datasource"),
            RULE_DATASOURCE_VARIABLE,
            None,
        ),
        (
            "second datasource variable",
            |d| {
                d["templating"]["list"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"type": "datasource", "name": "other", "query": "prometheus"}));
            },
            RULE_DATASOURCE_VARIABLE,
            None,
        ),
        (
            "no instance variable",
            |d| remove_variable(d, "instance"),
            RULE_QUERY_VARIABLES,
            None,
        ),
        (
            "token variable ignores job",
            |d| {
                d["templating"]["list"][3]["query"] =
                    json!("label_values(tokensync_token_valid, token)")
            },
            RULE_QUERY_VARIABLES,
            None,
        ),
        (
            "row panel reuses an id",
            // The panel in the row comes first, so the later panel is reported.
            |d| fixture_panel(d, 3)["id"] = json!(2),
            RULE_UNIQUE_PANEL_IDS,
            Some("Refreshes by trigger"),
        ),
        (
            "missing description",
            |d| fixture_panel(d, 2)["description"] = json!(""),
            RULE_DESCRIPTION,
            Some("Refreshes by trigger"),
        ),
        (
            "missing unit in a collapsed row",
            |d| fixture_panel(d, 3)["fieldConfig"]["defaults"] = json!({}),
            RULE_UNIT,
            Some("Valid"),
        ),
        (
            "no targets",
            |d| fixture_panel(d, 2)["targets"] = json!([]),
            RULE_TARGETS,
            Some("Refreshes by trigger"),
        ),
        (
            "fixed target datasource",
            |d| {
                fixture_panel(d, 2)["targets"][0]["datasource"] =
                    json!({"type": "prometheus", "uid": "P1809F7CD0C75ACF3"})
            },
            RULE_TARGET_DATASOURCE,
            Some("Refreshes by trigger"),
        ),
        (
            "fixed panel datasource",
            |d| fixture_panel(d, 2)["datasource"] = json!("Prometheus"),
            RULE_TARGET_DATASOURCE,
            Some("Refreshes by trigger"),
        ),
        (
            "no instance filter",
            |d| {
                set_fixture_expr(
                    d,
                    "sum(rate(tokensync_refreshes_total{job=\"$job\"}[$__rate_interval]))",
                )
            },
            RULE_JOB_INSTANCE_FILTER,
            Some("Refreshes by trigger"),
        ),
        (
            "bare metric name",
            |d| set_fixture_expr(d, "count(up == 0)"),
            RULE_JOB_INSTANCE_FILTER,
            Some("Refreshes by trigger"),
        ),
        (
            "second selector without filters",
            |d| {
                set_fixture_expr(
                    d,
                    "process_open_fds{job=\"$job\", instance=~\"$instance\"} / process_max_fds{job=\"$job\"}",
                )
            },
            RULE_JOB_INSTANCE_FILTER,
            Some("Refreshes by trigger"),
        ),
        (
            "annotation without filters",
            |d| {
                d["annotations"]["list"][0]["expr"] =
                    json!("changes(process_start_time_seconds[$__rate_interval]) > 0")
            },
            RULE_JOB_INSTANCE_FILTER,
            Some("restarts"),
        ),
        (
            "fixed rate window",
            |d| {
                set_fixture_expr(
                    d,
                    "rate(tokensync_refreshes_total{job=\"$job\", instance=~\"$instance\"}[5m])",
                )
            },
            RULE_RATE_INTERVAL,
            Some("Refreshes by trigger"),
        ),
        (
            "subquery",
            |d| {
                set_fixture_expr(
                    d,
                    "max_over_time(rate(tokensync_refreshes_total{job=\"$job\", instance=~\"$instance\"}[$__rate_interval])[1h:])",
                )
            },
            RULE_RATE_INTERVAL,
            Some("Refreshes by trigger"),
        ),
        (
            "bare counter",
            |d| {
                set_fixture_expr(
                    d,
                    "tokensync_refreshes_total{job=\"$job\", instance=~\"$instance\"}",
                )
            },
            RULE_COUNTER_WRAPPED,
            Some("Refreshes by trigger"),
        ),
        (
            "counter in sum only",
            |d| {
                set_fixture_expr(
                    d,
                    "sum(tokensync_sync_failures_total{job=\"$job\", instance=~\"$instance\"})",
                )
            },
            RULE_COUNTER_WRAPPED,
            Some("Refreshes by trigger"),
        ),
        (
            "bare histogram bucket",
            |d| {
                set_fixture_expr(
                    d,
                    "histogram_quantile(0.9, tokensync_refresh_duration_seconds_bucket{job=\"$job\", instance=~\"$instance\"})",
                )
            },
            RULE_COUNTER_WRAPPED,
            Some("Refreshes by trigger"),
        ),
    ];

    for &(case, break_rule, rule, title) in cases {
        let mut dashboard = valid_dashboard();
        break_rule(&mut dashboard);
        let violations = lint_dashboard("broken.json", &dashboard);
        let messages: Vec<String> = violations.iter().map(Violation::to_string).collect();

        let matching: Vec<&Violation> = violations
            .iter()
            .filter(|violation| violation.rule == rule)
            .collect();
        assert!(
            !matching.is_empty(),
            "case {case:?}: expected a violation of rule `{rule}`, got:\n{}",
            messages.join("\n")
        );
        if let Some(title) = title {
            assert!(
                matching.iter().any(|violation| violation
                    .location
                    .as_deref()
                    .is_some_and(|location| location.contains(&format!("\"{title}\"")))),
                "case {case:?}: the `{rule}` violation does not name {title:?}:\n{}",
                messages.join("\n")
            );
        }
        assert!(
            messages
                .iter()
                .all(|message| message.starts_with("broken.json: ")),
            "case {case:?}: a message does not start with the dashboard name:\n{}",
            messages.join("\n")
        );
    }
}

#[test]
fn broken_copy_in_temp_dir_is_rejected() {
    let source = dashboards_dir().join("tokensync-overview.json");
    let mut dashboard: Value = serde_json::from_str(&fs::read_to_string(&source).unwrap()).unwrap();

    // Break the first target: a fixed window, and no instance filter.
    let panel = all_panels(&dashboard)
        .into_iter()
        .find(|panel| {
            panel["targets"]
                .as_array()
                .is_some_and(|targets| !targets.is_empty())
        })
        .expect("the overview dashboard has no panel with targets")
        .clone();
    let title = panel["title"].as_str().unwrap().to_string();
    let broken_expr = "rate(tokensync_refreshes_total{job=\"$job\"}[5m])";
    for candidate in dashboard["panels"].as_array_mut().unwrap() {
        if candidate["id"] == panel["id"] {
            candidate["targets"][0]["expr"] = json!(broken_expr);
        }
    }
    dashboard["id"] = json!(42);

    let temp = TempDir::new("tokensync-dashboard-lint");
    let broken_path = temp.0.join("broken-overview.json");
    fs::write(
        &broken_path,
        serde_json::to_string_pretty(&dashboard).unwrap(),
    )
    .unwrap();

    let messages: Vec<String> = lint_directory(&temp.0)
        .iter()
        .map(Violation::to_string)
        .collect();
    let expected = [
        (RULE_IDENTITY, None),
        (RULE_RATE_INTERVAL, Some(title.as_str())),
        (RULE_JOB_INSTANCE_FILTER, Some(title.as_str())),
    ];
    for (rule, panel_title) in expected {
        let found = messages.iter().any(|message| {
            message.starts_with("broken-overview.json: ")
                && message.contains(&format!("rule `{rule}`"))
                && panel_title.is_none_or(|title| message.contains(&format!("panel \"{title}\"")))
        });
        assert!(
            found,
            "no violation of `{rule}` for {panel_title:?} in broken-overview.json; got:\n{}",
            messages.join("\n")
        );
    }
}
