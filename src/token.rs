//! The token model and the rules that turn a token response into an expiry.
//!
//! Everything here is pure: no clock is read, no I/O is done. The time a
//! request was sent is passed in, because a relative `expires_in` counts from
//! then, not from when the response was parsed.

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{Map, Value};

use crate::secret::Secret;

/// Maximum lifetime accepted from an issuer; longer ones are clamped to it.
pub const MAX_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Absolute expiry fields looked for in a token response, in this order.
pub const ABSOLUTE_EXPIRY_FIELDS: [&str; 4] = ["expires_at", "expires_on", "expiry", "expiration"];

/// Epoch values at or above this are milliseconds: 1e11 seconds is the year
/// 5138, while 1e11 milliseconds is 1973.
const EPOCH_MILLIS_THRESHOLD: f64 = 1e11;

/// An access token as obtained from an issuer, with its timing facts.
#[derive(Clone, Debug, PartialEq)]
pub struct Token {
    pub access_token: Secret,
    /// `Bearer` unless the issuer named another type.
    pub token_type: String,
    /// When the request that obtained the token was sent.
    pub requested_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// Lifetime granted at issue: `expires_at - requested_at`.
    pub lifetime: Duration,
    pub expiry_source: ExpirySource,
    pub refresh_token: Option<Secret>,
    pub scope: Option<String>,
}

impl Token {
    /// Builds a bearer token requested at `requested_at` that lives
    /// `lifetime`, for tokens an application obtained itself.
    pub fn bearer(access_token: impl Into<Secret>, requested_at: DateTime<Utc>, lifetime: Duration) -> Token {
        let delta = TimeDelta::from_std(lifetime).unwrap_or(TimeDelta::MAX);
        Token {
            access_token: access_token.into(),
            token_type: "Bearer".to_owned(),
            requested_at,
            expires_at: requested_at.checked_add_signed(delta).unwrap_or(DateTime::<Utc>::MAX_UTC),
            lifetime,
            expiry_source: ExpirySource::Stored,
            refresh_token: None,
            scope: None,
        }
    }

    /// Builds a token from its value and a resolved expiry, with no refresh
    /// token or scope; sources set those afterwards when they have them.
    pub fn from_expiry(
        access_token: impl Into<Secret>,
        token_type: impl Into<String>,
        requested_at: DateTime<Utc>,
        expiry: ResolvedExpiry,
    ) -> Token {
        Token {
            access_token: access_token.into(),
            token_type: token_type.into(),
            requested_at,
            expires_at: expiry.expires_at,
            lifetime: expiry.lifetime,
            expiry_source: expiry.source,
            refresh_token: None,
            scope: None,
        }
    }

    /// Returns true once `now` has reached the expiry.
    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        now >= self.expires_at
    }

    /// Returns the time left until expiry, negative once expired.
    pub fn time_to_expiry(&self, now: DateTime<Utc>) -> TimeDelta {
        self.expires_at.signed_duration_since(now)
    }
}

/// Origin of a token's expiry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpirySource {
    /// An absolute field of the response, such as `expires_at`.
    AbsoluteField,
    /// The relative `expires_in` field.
    ExpiresIn,
    /// The `exp` claim of a JWT access token.
    JwtExp,
    /// None of the above: the configured fallback lifetime.
    Fallback,
    /// Restored from a session store or handed in by the application.
    Stored,
}

impl ExpirySource {
    pub fn as_str(self) -> &'static str {
        match self {
            ExpirySource::AbsoluteField => "absolute",
            ExpirySource::ExpiresIn => "expires_in",
            ExpirySource::JwtExp => "jwt_exp",
            ExpirySource::Fallback => "fallback",
            ExpirySource::Stored => "stored",
        }
    }
}

impl fmt::Display for ExpirySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Something questionable found while resolving an expiry. The caller logs
/// these; none of them stops a token from being used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExpiryWarning {
    /// The field was present but not a positive lifetime or a future time.
    Unusable { field: String },
    /// The lifetime exceeded [`MAX_LIFETIME`] and was clamped to it.
    Clamped { seconds: i64 },
    /// No expiry could be found, so the fallback lifetime was used.
    FallbackUsed,
}

impl fmt::Display for ExpiryWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpiryWarning::Unusable { field } => {
                write!(f, "field `{field}` is not a positive lifetime or a future time; ignored")
            }
            ExpiryWarning::Clamped { seconds } => {
                write!(f, "lifetime of {seconds}s exceeds the 10-year ceiling; clamped")
            }
            ExpiryWarning::FallbackUsed => {
                f.write_str("the response states no expiry; using the fallback lifetime")
            }
        }
    }
}

/// The outcome of [`resolve_expiry`].
#[derive(Clone, Debug, PartialEq)]
pub struct ResolvedExpiry {
    pub expires_at: DateTime<Utc>,
    pub lifetime: Duration,
    pub source: ExpirySource,
    pub warnings: Vec<ExpiryWarning>,
}

/// Resolves a token's expiry from the fields of a token response.
///
/// The order is: an absolute field ([`ABSOLUTE_EXPIRY_FIELDS`]), then the
/// relative `expires_in`, then the `exp` claim when `access_token` is a JWT,
/// then `fallback`. A value that is zero, negative, in the past or unparsable
/// means "unknown" and the next rule is tried; it never means "already
/// expired" or "never expires". The JWT signature is not verified: the claim
/// is used for timing only.
pub fn resolve_expiry(
    fields: &Map<String, Value>,
    access_token: &str,
    requested_at: DateTime<Utc>,
    fallback: Duration,
) -> ResolvedExpiry {
    let mut warnings = Vec::new();

    for field in ABSOLUTE_EXPIRY_FIELDS {
        let Some(value) = fields.get(field).filter(|value| !value.is_null()) else {
            continue;
        };
        match parse_absolute(value).and_then(|at| lifetime_until(requested_at, at)) {
            Some(lifetime) => {
                return finish(requested_at, lifetime, ExpirySource::AbsoluteField, warnings);
            }
            None => warnings.push(ExpiryWarning::Unusable { field: field.to_owned() }),
        }
    }

    if let Some(value) = fields.get("expires_in").filter(|value| !value.is_null()) {
        match parse_relative_seconds(value) {
            Some(seconds) => {
                return finish(requested_at, TimeDelta::seconds(seconds), ExpirySource::ExpiresIn, warnings);
            }
            None => warnings.push(ExpiryWarning::Unusable { field: "expires_in".to_owned() }),
        }
    }

    if let Some(exp) = jwt_expiry(access_token) {
        match lifetime_until(requested_at, exp) {
            Some(lifetime) => return finish(requested_at, lifetime, ExpirySource::JwtExp, warnings),
            None => warnings.push(ExpiryWarning::Unusable { field: "exp".to_owned() }),
        }
    }

    warnings.push(ExpiryWarning::FallbackUsed);
    let fallback = TimeDelta::from_std(fallback).unwrap_or(TimeDelta::hours(1));
    finish(requested_at, fallback, ExpirySource::Fallback, warnings)
}

/// Clamps `lifetime` to [`MAX_LIFETIME`] and computes the expiry.
fn finish(
    requested_at: DateTime<Utc>,
    lifetime: TimeDelta,
    source: ExpirySource,
    mut warnings: Vec<ExpiryWarning>,
) -> ResolvedExpiry {
    let max = TimeDelta::from_std(MAX_LIFETIME).expect("ten years fits in a TimeDelta");
    let lifetime = if lifetime > max {
        warnings.push(ExpiryWarning::Clamped { seconds: lifetime.num_seconds() });
        max
    } else {
        lifetime
    };
    // Ten years after any representable request time still fits, except at
    // the very end of chrono's range, where the maximum time is used.
    let expires_at = requested_at.checked_add_signed(lifetime).unwrap_or(DateTime::<Utc>::MAX_UTC);
    ResolvedExpiry {
        expires_at,
        lifetime: lifetime.to_std().unwrap_or(Duration::ZERO),
        source,
        warnings,
    }
}

/// Returns the positive time from `requested_at` to `at`, if any.
fn lifetime_until(requested_at: DateTime<Utc>, at: DateTime<Utc>) -> Option<TimeDelta> {
    let lifetime = at.signed_duration_since(requested_at);
    (lifetime > TimeDelta::zero()).then_some(lifetime)
}

/// Parses `expires_in`: an integer, a whole-number float or an all-digit
/// string. Returns `None` for zero, negative or anything else.
fn parse_relative_seconds(value: &Value) -> Option<i64> {
    let seconds = match value {
        Value::Number(number) => {
            if let Some(integer) = number.as_i64() {
                integer
            } else {
                let float = number.as_f64()?;
                if float.fract() != 0.0 || !float.is_finite() || float > i64::MAX as f64 {
                    return None;
                }
                float as i64
            }
        }
        Value::String(text) => {
            let text = text.trim();
            if text.is_empty() || !text.bytes().all(|byte| byte.is_ascii_digit()) {
                return None;
            }
            // All digits but too large for i64: far beyond the ceiling anyway.
            text.parse::<i64>().unwrap_or(i64::MAX)
        }
        _ => return None,
    };
    // Seconds beyond TimeDelta's range are clamped by `finish` anyway.
    (seconds > 0).then(|| seconds.min(TimeDelta::MAX.num_seconds()))
}

/// Parses an absolute expiry: epoch seconds or milliseconds (a number or a
/// numeric string, distinguished by magnitude) or an RFC 3339 timestamp.
fn parse_absolute(value: &Value) -> Option<DateTime<Utc>> {
    match value {
        Value::Number(number) => epoch_to_time(number.as_f64()?),
        Value::String(text) => {
            let text = text.trim();
            if let Ok(number) = text.parse::<f64>() {
                return epoch_to_time(number);
            }
            DateTime::parse_from_rfc3339(text).ok().map(|at| at.with_timezone(&Utc))
        }
        _ => None,
    }
}

/// Converts epoch seconds or milliseconds (by magnitude) to a time.
fn epoch_to_time(epoch: f64) -> Option<DateTime<Utc>> {
    if !epoch.is_finite() || epoch <= 0.0 {
        return None;
    }
    let seconds = if epoch >= EPOCH_MILLIS_THRESHOLD { epoch / 1000.0 } else { epoch };
    seconds_to_time(seconds)
}

/// Converts fractional epoch seconds to a time, or `None` when out of range.
fn seconds_to_time(seconds: f64) -> Option<DateTime<Utc>> {
    if !seconds.is_finite() || seconds <= 0.0 || seconds > i64::MAX as f64 {
        return None;
    }
    let whole = seconds.trunc() as i64;
    let nanos = ((seconds - seconds.trunc()) * 1e9) as u32;
    DateTime::from_timestamp(whole, nanos.min(999_999_999))
}

/// Reads the `exp` claim of a JWT without verifying its signature.
pub fn jwt_expiry(access_token: &str) -> Option<DateTime<Utc>> {
    let mut parts = access_token.split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.get("exp")?;
    let seconds = exp.as_f64()?;
    seconds_to_time(seconds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const HOUR: Duration = Duration::from_secs(3600);

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
    }

    fn jwt(claims: Value) -> String {
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.signature",
            engine.encode(br#"{"alg":"RS256","typ":"JWT"}"#),
            engine.encode(claims.to_string())
        )
    }

    fn resolve(body: Value, access_token: &str) -> ResolvedExpiry {
        let requested_at = at("2026-01-01T12:00:00Z");
        resolve_expiry(body.as_object().unwrap(), access_token, requested_at, HOUR)
    }

    #[test]
    fn expiry_shapes_table() {
        // (case, response fields, access token, expected expiry, expected source)
        let cases: Vec<(&str, Value, String, &str, ExpirySource)> = vec![
            ("expires_in integer", json!({"expires_in": 3599}), "opaque".into(), "2026-01-01T12:59:59Z", ExpirySource::ExpiresIn),
            ("expires_in whole float", json!({"expires_in": 3599.0}), "opaque".into(), "2026-01-01T12:59:59Z", ExpirySource::ExpiresIn),
            ("expires_in digit string", json!({"expires_in": "3599"}), "opaque".into(), "2026-01-01T12:59:59Z", ExpirySource::ExpiresIn),
            ("epoch seconds number", json!({"expires_at": 1767272400}), "opaque".into(), "2026-01-01T13:00:00Z", ExpirySource::AbsoluteField),
            ("epoch seconds string", json!({"expires_on": "1767272400"}), "opaque".into(), "2026-01-01T13:00:00Z", ExpirySource::AbsoluteField),
            ("epoch millis number", json!({"expires_at": 1767272400000_i64}), "opaque".into(), "2026-01-01T13:00:00Z", ExpirySource::AbsoluteField),
            ("epoch millis string", json!({"expiry": "1767272400500"}), "opaque".into(), "2026-01-01T13:00:00.5Z", ExpirySource::AbsoluteField),
            ("rfc3339 zulu", json!({"expires_at": "2026-01-01T13:00:00Z"}), "opaque".into(), "2026-01-01T13:00:00Z", ExpirySource::AbsoluteField),
            ("rfc3339 offset", json!({"expiration": "2026-01-01T14:00:00+01:00"}), "opaque".into(), "2026-01-01T13:00:00Z", ExpirySource::AbsoluteField),
            ("rfc3339 fraction", json!({"expires_at": "2026-01-01T13:00:00.250Z"}), "opaque".into(), "2026-01-01T13:00:00.25Z", ExpirySource::AbsoluteField),
            ("absolute before relative", json!({"expires_at": "2026-01-01T12:30:00Z", "expires_in": 3600}), "opaque".into(), "2026-01-01T12:30:00Z", ExpirySource::AbsoluteField),
            ("jwt exp integer", json!({}), jwt(json!({"exp": 1767272400})), "2026-01-01T13:00:00Z", ExpirySource::JwtExp),
            ("jwt exp fraction", json!({}), jwt(json!({"exp": 1767272400.5})), "2026-01-01T13:00:00.5Z", ExpirySource::JwtExp),
            ("expires_in before jwt", json!({"expires_in": 60}), jwt(json!({"exp": 1767272400})), "2026-01-01T12:01:00Z", ExpirySource::ExpiresIn),
            ("nothing means fallback", json!({}), "opaque".into(), "2026-01-01T13:00:00Z", ExpirySource::Fallback),
            ("zero means unknown", json!({"expires_in": 0}), "opaque".into(), "2026-01-01T13:00:00Z", ExpirySource::Fallback),
            ("negative means unknown", json!({"expires_in": -5}), "opaque".into(), "2026-01-01T13:00:00Z", ExpirySource::Fallback),
            ("garbage means unknown", json!({"expires_in": "soon"}), "opaque".into(), "2026-01-01T13:00:00Z", ExpirySource::Fallback),
            ("fractional expires_in unknown", json!({"expires_in": 12.5}), "opaque".into(), "2026-01-01T13:00:00Z", ExpirySource::Fallback),
            ("past absolute falls through", json!({"expires_at": "2025-01-01T00:00:00Z", "expires_in": 60}), "opaque".into(), "2026-01-01T12:01:00Z", ExpirySource::ExpiresIn),
            ("garbage jwt ignored", json!({}), "a.b.c".into(), "2026-01-01T13:00:00Z", ExpirySource::Fallback),
        ];
        for (case, body, access_token, expected, source) in cases {
            let resolved = resolve(body, &access_token);
            assert_eq!(resolved.expires_at, at(expected), "expiry for case `{case}`");
            assert_eq!(resolved.source, source, "source for case `{case}`");
        }
    }

    #[test]
    fn example_body_parses() {
        let resolved = resolve(
            json!({"access_token": "AT", "token_type": "bearer", "expires_in": "3599"}),
            "AT",
        );
        assert_eq!(resolved.lifetime, Duration::from_secs(3599));
        assert!(resolved.warnings.is_empty());
    }

    #[test]
    fn huge_lifetime_is_clamped() {
        let resolved = resolve(json!({"expires_in": i64::MAX}), "opaque");
        assert_eq!(resolved.lifetime, MAX_LIFETIME);
        assert!(matches!(resolved.warnings[0], ExpiryWarning::Clamped { .. }));

        let resolved = resolve(json!({"expires_in": "99999999999999999999999"}), "opaque");
        assert_eq!(resolved.lifetime, MAX_LIFETIME);
    }

    #[test]
    fn unusable_field_warns_then_falls_back() {
        let resolved = resolve(json!({"expires_in": "later"}), "opaque");
        assert_eq!(
            resolved.warnings,
            vec![ExpiryWarning::Unusable { field: "expires_in".into() }, ExpiryWarning::FallbackUsed]
        );
        assert_eq!(resolved.lifetime, HOUR);
    }

    #[test]
    fn extreme_values_do_not_panic() {
        for value in [json!(f64::MAX), json!(1e300), json!(u64::MAX), json!("-1"), json!(""), json!([1]), json!({"a": 1})] {
            resolve(json!({"expires_in": value.clone(), "expires_at": value.clone()}), "opaque");
        }
        let requested_at = DateTime::<Utc>::MAX_UTC;
        resolve_expiry(json!({"expires_in": 60}).as_object().unwrap(), "x", requested_at, HOUR);
    }
}
