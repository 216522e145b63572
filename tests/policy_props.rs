//! Property tests of the refresh policy (`next_refresh`, `retry_delay`) and of
//! the token response parser (`interpret`, `parse_body`) and its sanitizer.

use std::time::{Duration, SystemTime};

use chrono::{DateTime, TimeDelta, Utc};
use proptest::prelude::*;
use serde_json::{Map, Value};
use tokensync::policy::{Backoff, RefreshPolicy, next_refresh, retry_delay};
use tokensync::source::SourceError;
use tokensync::source::response::{Parsed, RawResponse, interpret, parse_body};

#[path = "support/body_quotes.rs"]
mod body_quotes;
use body_quotes::{long_run_windows, quoted_body_run, without_deliberate_quotes};

/// Token name passed to `interpret`. It is shorter than a redacted run, so
/// it cannot be mistaken for a quoted body run.
const TOKEN_NAME: &str = "billing";
/// Error codes of RFC 6749 section 5.2 and the ones tokensync classifies.
const OAUTH2_ERROR_CODES: [&str; 10] = [
    "invalid_request",
    "invalid_client",
    "invalid_grant",
    "unauthorized_client",
    "unsupported_grant_type",
    "invalid_scope",
    "access_denied",
    "slow_down",
    "temporarily_unavailable",
    "server_error",
];

/// Returns a configuration with `cases` cases per property. Properties that
/// hold only under a precondition discard up to half of their inputs, hence
/// the reject limit. Failures are not persisted to files: proptest prints the
/// minimal failing input.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig { cases, max_global_rejects: 50_000, failure_persistence: None, ..ProptestConfig::default() }
}

// ---------------------------------------------------------------------------
// Strategies

/// Milliseconds since the epoch from 1970 to about 2096.
fn epoch_millis() -> impl Strategy<Value = i64> {
    0i64..4_000_000_000_000
}

fn time(millis: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(millis).expect("the strategy stays in chrono's range")
}

/// Token lifetimes in milliseconds: negative (an issuer clock skew or a
/// restored expired token), zero, short, and up to about 30 years.
fn lifetime_millis() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(0i64),
        -10_000_000_000i64..0,
        1i64..120_000,
        1i64..1_000_000_000_000,
    ]
}

/// Durations up to about 30 years, weighted towards the scale of real settings.
fn duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        Just(Duration::ZERO),
        (0u64..3_600_000).prop_map(Duration::from_millis),
        (0u64..1_000_000_000).prop_map(Duration::from_secs),
    ]
}

/// Policies within the ranges that configuration validation accepts:
/// lifetime_fraction in (0, 1] and jitter in [0, 1].
fn valid_policy() -> impl Strategy<Value = RefreshPolicy> {
    let fraction = prop_oneof![Just(1.0), Just(f64::MIN_POSITIVE), (0.0f64..=1.0).prop_filter("above 0", |f| *f > 0.0)];
    let jitter = prop_oneof![Just(0.0), Just(1.0), 0.0f64..=1.0];
    (duration(), fraction, jitter, duration()).prop_map(|(buffer, lifetime_fraction, jitter, min_interval)| RefreshPolicy {
        buffer,
        lifetime_fraction,
        jitter,
        min_interval,
    })
}

/// Any f64, including NaN, infinities and values outside [0, 1].
fn any_f64() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(-0.0),
        Just(1.0),
        any::<f64>(),
        -2.0f64..2.0,
    ]
}

/// Inputs of one `next_refresh` call with a valid policy.
#[derive(Clone, Debug)]
struct Case {
    requested_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    policy: RefreshPolicy,
    last_attempt: DateTime<Utc>,
    now: DateTime<Utc>,
    jitter_sample: f64,
}

impl Case {
    fn lifetime(&self) -> TimeDelta {
        self.expires_at - self.requested_at
    }

    fn run(&self) -> DateTime<Utc> {
        next_refresh(self.requested_at, self.expires_at, &self.policy, self.last_attempt, self.now, self.jitter_sample)
    }

    /// `last_attempt + min_interval`: the earliest result allowed.
    fn earliest(&self) -> DateTime<Utc> {
        let min_interval = TimeDelta::from_std(self.policy.min_interval).expect("the strategy keeps durations small");
        self.last_attempt + min_interval
    }

    /// Returns the refresh point before jitter and the min_interval floor,
    /// computed with no jitter, no interval and an attempt long ago.
    fn unjittered_point(&self) -> DateTime<Utc> {
        let policy = RefreshPolicy { jitter: 0.0, min_interval: Duration::ZERO, ..self.policy };
        next_refresh(self.requested_at, self.expires_at, &policy, DateTime::<Utc>::MIN_UTC, self.now, 0.0)
    }
}

/// Cases whose times lie within a few lifetimes of each other, so that every
/// ordering of request, last attempt, now and expiry occurs.
fn case() -> impl Strategy<Value = Case> {
    (
        epoch_millis(),
        lifetime_millis(),
        valid_policy(),
        -2_000_000_000_000i64..2_000_000_000_000,
        -2_000_000_000_000i64..2_000_000_000_000,
        prop_oneof![Just(0.0), 0.0f64..1.0],
    )
        .prop_map(|(requested, lifetime, policy, attempt_offset, now_offset, jitter_sample)| {
            let requested_at = time(requested);
            Case {
                requested_at,
                expires_at: requested_at + TimeDelta::milliseconds(lifetime),
                policy,
                last_attempt: requested_at + TimeDelta::milliseconds(attempt_offset / 1000),
                now: requested_at + TimeDelta::milliseconds(now_offset),
                jitter_sample,
            }
        })
}

// ---------------------------------------------------------------------------
// next_refresh

proptest! {
    #![proptest_config(config(2000))]

    #[test]
    fn next_refresh_never_before_min_interval(case in case()) {
        let refresh = case.run();
        prop_assert!(
            refresh >= case.earliest(),
            "refresh {refresh} is before last_attempt + min_interval = {}",
            case.earliest()
        );
    }

    #[test]
    fn next_refresh_at_or_before_expiry(case in case()) {
        prop_assume!(case.lifetime() > TimeDelta::zero());
        // Only when min_interval does not push the refresh past expiry.
        prop_assume!(case.earliest() <= case.expires_at);
        let refresh = case.run();
        prop_assert!(refresh <= case.expires_at, "refresh {refresh} is after expiry {}", case.expires_at);
    }

    #[test]
    fn next_refresh_respects_buffer_and_fraction(case in case()) {
        prop_assume!(case.lifetime() > TimeDelta::zero());
        let point = case.unjittered_point();
        let lifetime_ms = case.lifetime().num_milliseconds() as f64;
        let fraction_point = case.requested_at + TimeDelta::milliseconds((lifetime_ms * case.policy.lifetime_fraction) as i64);
        prop_assert!(point <= fraction_point, "point {point} is after the lifetime share {fraction_point}");
        prop_assert!(point >= case.requested_at, "point {point} is before the request {}", case.requested_at);

        let buffer = TimeDelta::from_std(case.policy.buffer).unwrap();
        if buffer < case.lifetime() {
            prop_assert!(point <= case.expires_at - buffer, "point {point} is inside the buffer before {}", case.expires_at);
        }
    }

    #[test]
    fn jitter_moves_point_earlier_within_bound(case in case()) {
        let without = next_refresh(case.requested_at, case.expires_at, &case.policy, case.last_attempt, case.now, 0.0);
        let with = case.run();
        prop_assert!(with <= without, "jitter moved the refresh later: {with} > {without}");

        let time_left_ms = (case.unjittered_point() - case.now).num_milliseconds().max(0) as f64;
        let moved_ms = (without - with).num_milliseconds() as f64;
        // One millisecond of slack for the float product in the policy.
        prop_assert!(
            moved_ms <= case.policy.jitter * time_left_ms + 1.0,
            "jitter moved the refresh {moved_ms} ms earlier, more than {} x {time_left_ms} ms left",
            case.policy.jitter
        );
    }

    #[test]
    fn jitter_leaves_overdue_point(case in case()) {
        prop_assume!(case.unjittered_point() <= case.now);
        let without = next_refresh(case.requested_at, case.expires_at, &case.policy, case.last_attempt, case.now, 0.0);
        prop_assert_eq!(case.run(), without);
    }

    #[test]
    fn next_refresh_any_inputs_no_panic(
        requested in epoch_millis(),
        lifetime in any::<i64>(),
        attempt in epoch_millis(),
        now in epoch_millis(),
        buffer in any::<u64>(),
        min_interval in any::<u64>(),
        fraction in any_f64(),
        jitter in any_f64(),
        sample in any_f64(),
    ) {
        let requested_at = time(requested);
        // Any lifetime that keeps the expiry a representable time.
        let expires_at = requested_at
            .checked_add_signed(TimeDelta::milliseconds(lifetime % (100 * 365 * 24 * 3_600_000)))
            .unwrap();
        let policy = RefreshPolicy {
            buffer: Duration::from_millis(buffer),
            lifetime_fraction: fraction,
            jitter,
            min_interval: Duration::from_millis(min_interval),
        };
        let refresh = next_refresh(requested_at, expires_at, &policy, time(attempt), time(now), sample);

        let earliest = TimeDelta::from_std(policy.min_interval)
            .ok()
            .and_then(|interval| time(attempt).checked_add_signed(interval))
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        prop_assert!(refresh >= earliest, "refresh {refresh} is before {earliest}");
    }
}

#[test]
fn next_refresh_extreme_times_no_panic() {
    let (min, max) = (DateTime::<Utc>::MIN_UTC, DateTime::<Utc>::MAX_UTC);
    // (requested_at, expires_at, last_attempt, now) at the ends of chrono's range.
    let cases = [(max, max, max, max), (min, min, max, min), (max, min, min, max), (min, min, min, min)];
    for fraction in [0.5, 0.8, 1.0] {
        let policy = RefreshPolicy { lifetime_fraction: fraction, jitter: 1.0, ..RefreshPolicy::default() };
        for (requested_at, expires_at, last_attempt, now) in cases {
            for sample in [0.0, 0.5, 0.999_999] {
                let refresh = next_refresh(requested_at, expires_at, &policy, last_attempt, now, sample);
                assert!(refresh >= last_attempt, "requested {requested_at}, expires {expires_at}: refresh {refresh}");
            }
        }
        let refresh = next_refresh(min, max, &RefreshPolicy { lifetime_fraction: 0.999, ..policy }, min, min, 0.0);
        assert!(refresh <= max, "fraction 0.999 of the whole range: refresh {refresh}");
    }
}

/// Checks a token that spans chrono's whole range. A lifetime longer than
/// 2^53 ms (about 285,000 years) loses precision in the policy's f64
/// product, so with `lifetime_fraction: 1.0` the lifetime share rounds up
/// past `expires_at` and the addition overflows. Issuer lifetimes are clamped
/// to ten years, so only an embedding program that builds such a `Token`
/// itself reaches this.
#[test]
fn next_refresh_whole_time_range_no_panic() {
    let (min, max) = (DateTime::<Utc>::MIN_UTC, DateTime::<Utc>::MAX_UTC);
    let policy = RefreshPolicy { lifetime_fraction: 1.0, ..RefreshPolicy::default() };
    let refresh = next_refresh(min, max, &policy, min, min, 0.0);
    assert!(refresh <= max);
}

// ---------------------------------------------------------------------------
// retry_delay

/// Backoff settings up to about 30 years each; `initial` may exceed `max`.
fn backoff() -> impl Strategy<Value = Backoff> {
    (duration(), duration()).prop_map(|(initial, max)| Backoff { initial, max })
}

proptest! {
    #![proptest_config(config(2000))]

    #[test]
    fn retry_delay_never_exceeds_max(failures in any::<u32>(), backoff in backoff(), sample in 0.0f64..=1.0) {
        let delay = retry_delay(failures, &backoff, sample);
        prop_assert!(delay <= backoff.max, "delay {delay:?} exceeds max {:?}", backoff.max);
    }

    #[test]
    fn retry_delay_ceiling_grows_monotonically(failures in 0u32..80, backoff in backoff()) {
        let ceiling = retry_delay(failures, &backoff, 1.0);
        let next = retry_delay(failures + 1, &backoff, 1.0);
        prop_assert!(next >= ceiling, "ceiling fell from {ceiling:?} to {next:?} at failure {}", failures + 1);
    }

    #[test]
    fn retry_delay_first_ceiling_is_initial(backoff in backoff()) {
        prop_assert_eq!(retry_delay(1, &backoff, 1.0), backoff.initial.min(backoff.max));
        prop_assert_eq!(retry_delay(0, &backoff, 1.0), backoff.initial.min(backoff.max));
    }

    #[test]
    fn retry_delay_within_ceiling_and_monotonic_in_sample(
        failures in any::<u32>(),
        backoff in backoff(),
        low in 0.0f64..=1.0,
        high in 0.0f64..=1.0,
    ) {
        let (low, high) = if low <= high { (low, high) } else { (high, low) };
        let ceiling = retry_delay(failures, &backoff, 1.0);
        let (short, long) = (retry_delay(failures, &backoff, low), retry_delay(failures, &backoff, high));
        prop_assert!(short <= long, "sample {low} gave {short:?}, sample {high} gave {long:?}");
        prop_assert!(long <= ceiling, "delay {long:?} exceeds the ceiling {ceiling:?}");
    }

    #[test]
    fn retry_delay_clamps_finite_samples(failures in any::<u32>(), backoff in backoff(), sample in -1e300f64..1e300) {
        let delay = retry_delay(failures, &backoff, sample);
        let expected = retry_delay(failures, &backoff, sample.clamp(0.0, 1.0));
        prop_assert_eq!(delay, expected);
    }
}

// ---------------------------------------------------------------------------
// interpret and parse_body

fn requested_at() -> DateTime<Utc> {
    DateTime::from_timestamp(1_767_268_800, 0).unwrap()
}

fn run_interpret(status: u16, retry_after: Option<&str>, body: &[u8]) -> Result<Parsed, SourceError> {
    let response = RawResponse { status, retry_after, body };
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_268_800);
    interpret(TOKEN_NAME, response, requested_at(), Duration::from_secs(3600), now)
}

/// Strings of token-like characters, short and long, as issuers send in
/// `access_token`, `refresh_token` and other fields.
fn token_value() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._~+/=-]{0,64}"
}

/// Field values of a token response: strings (token-like or arbitrary),
/// numbers, booleans, null, and nested arrays and objects.
fn field_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        token_value().prop_map(Value::String),
        any::<String>().prop_map(Value::String),
        any::<i64>().prop_map(Value::from),
        // Multiples of 1/4 print and parse back exactly, unlike arbitrary floats.
        any::<i32>().prop_map(|n| Value::from(f64::from(n) / 4.0)),
        any::<bool>().prop_map(Value::Bool),
        Just(Value::Null),
    ];
    leaf.prop_recursive(2, 8, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,12}", inner, 0..4).prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// Field names of token responses, and arbitrary others.
fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "access_token", "token_type", "expires_in", "expires_at", "expires_on", "expiry", "expiration",
            "refresh_token", "scope", "id_token", "error_description", "error_uri",
        ])
        .prop_map(str::to_owned),
        "[a-z_]{1,16}",
    ]
}

/// Values of the `error` field other than long unknown codes: the codes of
/// RFC 6749, short codes, and values broken up by non-token characters.
/// `interpret` quotes the `error` value verbatim, so a long unknown code
/// would appear in the message. `unknown_long_error_code_is_redacted`
/// covers that case.
fn error_code() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(OAUTH2_ERROR_CODES.to_vec()).prop_map(str::to_owned),
        "[A-Za-z0-9._~+/=-]{0,15}",
        "[a-z]{1,10}( [a-z]{1,10}){0,3}",
    ]
}

/// Token-response-shaped objects: known and unknown fields, with or without
/// an `error`.
fn response_fields() -> impl Strategy<Value = Map<String, Value>> {
    (
        prop::collection::btree_map(field_name(), field_value(), 0..8),
        prop::option::of(error_code()),
    )
        .prop_map(|(fields, error)| {
            let mut fields: Map<String, Value> = fields.into_iter().collect();
            if let Some(error) = error {
                fields.insert("error".to_owned(), Value::String(error));
            }
            fields
        })
}

/// Encodes fields as a JSON object, or as a form body of their string values.
fn encode(fields: &Map<String, Value>, as_form: bool) -> Vec<u8> {
    if !as_form {
        return serde_json::to_vec(fields).unwrap();
    }
    let mut form = url::form_urlencoded::Serializer::new(String::new());
    for (key, value) in fields {
        match value {
            Value::String(text) => form.append_pair(key, text),
            other => form.append_pair(key, &other.to_string()),
        };
    }
    form.finish().into_bytes()
}

/// HTTP statuses: the ones token endpoints send, and any other.
fn status() -> impl Strategy<Value = u16> {
    prop_oneof![
        prop::sample::select(vec![200u16, 201, 400, 401, 403, 404, 408, 429, 500, 502, 503]),
        any::<u16>(),
    ]
}

/// `Retry-After` values: seconds, HTTP-dates, and arbitrary text.
fn retry_after() -> impl Strategy<Value = Option<String>> {
    prop::option::of(prop_oneof![
        any::<u64>().prop_map(|seconds| seconds.to_string()),
        (0u64..8_000_000_000).prop_map(|seconds| httpdate::fmt_http_date(SystemTime::UNIX_EPOCH + Duration::from_secs(seconds))),
        any::<String>(),
    ])
}

proptest! {
    #![proptest_config(config(1000))]

    #[test]
    fn interpret_arbitrary_bytes_no_panic(
        status in any::<u16>(),
        retry_after in prop::option::of(any::<String>()),
        body in prop::collection::vec(any::<u8>(), 0..2048),
        fallback_secs in any::<u64>(),
        now_secs in any::<u32>(),
    ) {
        let response = RawResponse { status, retry_after: retry_after.as_deref(), body: &body };
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::from(now_secs));
        if let Err(error) = interpret(TOKEN_NAME, response, requested_at(), Duration::from_secs(fallback_secs), now) {
            prop_assert_eq!(error.status, Some(status));
            let message = without_deliberate_quotes(&error.message, TOKEN_NAME, parse_body(&body).as_ref());
            prop_assert_eq!(quoted_body_run(&message, &body), None, "message: {}", error.message);
        }
    }

    #[test]
    fn error_message_never_quotes_long_body_runs(
        status in status(),
        retry_after in retry_after(),
        fields in response_fields(),
        as_form in any::<bool>(),
    ) {
        let body = encode(&fields, as_form);
        if let Err(error) = run_interpret(status, retry_after.as_deref(), &body) {
            let message = without_deliberate_quotes(&error.message, TOKEN_NAME, parse_body(&body).as_ref());
            prop_assert_eq!(quoted_body_run(&message, &body), None, "message: {}", error.message);
        }
    }

    #[test]
    fn error_message_never_quotes_long_runs_in_text(
        status in status(),
        words in prop::collection::vec(prop_oneof![token_value(), "[^A-Za-z0-9._~+/=-]{1,4}"], 0..40),
    ) {
        let body = words.concat().into_bytes();
        if let Err(error) = run_interpret(status, None, &body) {
            let message = without_deliberate_quotes(&error.message, TOKEN_NAME, parse_body(&body).as_ref());
            prop_assert_eq!(quoted_body_run(&message, &body), None, "message: {}", error.message);
        }
    }

    #[test]
    fn parsed_token_debug_hides_secrets(
        access_token in "[A-Za-z0-9._~+/=-]{16,64}",
        refresh_token in "[A-Za-z0-9._~+/=-]{16,64}",
        status in status(),
        as_form in any::<bool>(),
    ) {
        let mut fields = Map::new();
        fields.insert("access_token".to_owned(), Value::String(access_token.clone()));
        fields.insert("refresh_token".to_owned(), Value::String(refresh_token.clone()));
        let parsed = run_interpret(status, None, &encode(&fields, as_form));
        let parsed = parsed.map_err(|error| TestCaseError::fail(error.message))?;
        prop_assert_eq!(parsed.token.access_token.expose(), access_token.as_str());
        let debug = format!("{:?}", parsed.token);
        prop_assert!(!debug.contains(&access_token), "Debug shows the access token: {debug}");
        prop_assert!(!debug.contains(&refresh_token), "Debug shows the refresh token: {debug}");
    }

    #[test]
    fn parse_body_arbitrary_bytes_no_panic(body in prop::collection::vec(any::<u8>(), 0..2048)) {
        if let Some(fields) = parse_body(&body) {
            let is_json_object = matches!(serde_json::from_slice::<Value>(&body), Ok(Value::Object(_)));
            prop_assert!(
                is_json_object || fields.contains_key("access_token") || fields.contains_key("error"),
                "a form body without access_token or error was accepted: {fields:?}"
            );
        }
    }

    #[test]
    fn parse_body_returns_json_objects_unchanged(fields in response_fields()) {
        let body = serde_json::to_vec(&fields).unwrap();
        prop_assert_eq!(parse_body(&body), Some(fields));
    }

    #[test]
    fn parse_body_reads_form_fields(fields in response_fields(), access_token in token_value()) {
        let mut fields = fields;
        fields.insert("access_token".to_owned(), Value::String(access_token));
        let body = encode(&fields, true);
        // A form body that happens to be valid JSON is read as JSON.
        prop_assume!(serde_json::from_slice::<Value>(&body).is_err());
        let parsed = parse_body(&body).expect("a form body with access_token is accepted");
        for (key, value) in &fields {
            let expected = match value {
                Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            prop_assert_eq!(parsed.get(key).and_then(Value::as_str), Some(expected.as_str()), "field {}", key);
        }
    }
}

/// Checks that a long unknown `error` value is redacted from the message,
/// which reaches the logs and the status page.
#[test]
fn unknown_long_error_code_is_redacted() {
    let secret = "rt-6f1c2a9b8d7e4f3a2b1c9d8e";
    for body in [format!(r#"{{"error":"{secret}"}}"#), format!("error={secret}")] {
        let error = run_interpret(400, None, body.as_bytes()).expect_err(&body);
        assert!(!error.message.contains(secret), "the message quotes the error value: {}", error.message);
    }
}

#[test]
fn known_error_codes_are_quoted() {
    for code in OAUTH2_ERROR_CODES {
        let body = format!(r#"{{"error":"{code}"}}"#);
        let error = run_interpret(400, None, body.as_bytes()).expect_err(&body);
        assert!(error.message.contains(&format!("400 {code} for token `{TOKEN_NAME}`")), "{}", error.message);
    }
}

#[test]
fn long_run_windows_finds_runs() {
    let windows = long_run_windows(b"short abcdefghijklmnopQ x");
    assert_eq!(windows.len(), 2, "a 17-character run has two 16-character windows");
    assert!(long_run_windows(b"abcdefghijklmnO").is_empty(), "15 characters are not a long run");
    assert!(long_run_windows(b"error_description_words").is_empty(), "identifier words are not token runs");
    assert_eq!(quoted_body_run("see abcdefghijklmno1", b"x=abcdefghijklmno1qr"), Some("abcdefghijklmno1".to_owned()));
}
