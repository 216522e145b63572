//! The refresh policy: when to refresh a token and how long to wait after a
//! failure. Pure functions of (token timing, settings, now, random sample);
//! nothing here reads a clock or a random generator.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

/// Refresh this long before expiry, unless the lifetime share comes first.
pub const DEFAULT_BUFFER: Duration = Duration::from_secs(5 * 60);
/// Refresh once this share of the lifetime has passed, unless the buffer comes first.
pub const DEFAULT_LIFETIME_FRACTION: f64 = 0.8;
/// Up to this share of the time left is taken off the refresh point at random.
pub const DEFAULT_JITTER: f64 = 0.1;
/// Never refresh sooner than this after the previous attempt.
pub const DEFAULT_MIN_INTERVAL: Duration = Duration::from_secs(10);
/// First retry delay after a failure (before jitter).
pub const DEFAULT_BACKOFF_INITIAL: Duration = Duration::from_secs(1);
/// Maximum retry delay; also the delay after the issuer rejected the grant.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(5 * 60);
/// Environment variable that overrides [`DEFAULT_BUFFER`], in minutes.
pub const BUFFER_ENV_VAR: &str = "TOKEN_REFRESH_BUFFER_MINUTES";

/// When to refresh a token proactively.
///
/// The refresh is due at the earlier of `expiry - buffer` and
/// `requested_at + lifetime_fraction * lifetime`. With the defaults and no
/// jitter, a 1 h token is refreshed after 48 min, a 10 min token after 5 min
/// and a 60 s token after 48 s. For the 60 s token only the share counts,
/// because the buffer is longer than the lifetime. `lifetime_fraction: 1.0` gives the plain buffer rule.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RefreshPolicy {
    pub buffer: Duration,
    /// Between 0 (exclusive) and 1 (inclusive).
    pub lifetime_fraction: f64,
    /// Between 0 and 1: the largest share of the time left that jitter removes.
    pub jitter: f64,
    pub min_interval: Duration,
}

impl Default for RefreshPolicy {
    fn default() -> Self {
        RefreshPolicy {
            buffer: DEFAULT_BUFFER,
            lifetime_fraction: DEFAULT_LIFETIME_FRACTION,
            jitter: DEFAULT_JITTER,
            min_interval: DEFAULT_MIN_INTERVAL,
        }
    }
}

/// Exponential backoff with full jitter between failed attempts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { initial: DEFAULT_BACKOFF_INITIAL, max: DEFAULT_BACKOFF_MAX }
    }
}

/// Computes the time of the next proactive refresh.
///
/// `last_attempt` is when the previous request was sent (usually the token's
/// own `requested_at`); the result is never sooner than `min_interval` after
/// it. `jitter_sample` is a uniform random number in `[0, 1)`; pass 0 for no
/// jitter.
pub fn next_refresh(
    requested_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    policy: &RefreshPolicy,
    last_attempt: DateTime<Utc>,
    now: DateTime<Utc>,
    jitter_sample: f64,
) -> DateTime<Utc> {
    let lifetime = expires_at.signed_duration_since(requested_at).max(TimeDelta::zero());
    let fraction = policy.lifetime_fraction.clamp(0.0, 1.0);
    // Rounding a huge lifetime through f64 may overshoot; never past expiry.
    let fraction_point = requested_at.checked_add_signed(scale(lifetime, fraction)).unwrap_or(expires_at).min(expires_at);

    let buffer = TimeDelta::from_std(policy.buffer).unwrap_or(TimeDelta::MAX);
    let target = match expires_at.checked_sub_signed(buffer) {
        Some(buffer_point) if buffer < lifetime => fraction_point.min(buffer_point),
        _ => fraction_point,
    };

    let time_left = target.signed_duration_since(now);
    let target = if time_left > TimeDelta::zero() {
        let share = policy.jitter.clamp(0.0, 1.0) * jitter_sample.clamp(0.0, 1.0);
        target.checked_sub_signed(scale(time_left, share)).unwrap_or(target)
    } else {
        target
    };

    let min_interval = TimeDelta::from_std(policy.min_interval).unwrap_or(TimeDelta::MAX);
    let earliest = last_attempt.checked_add_signed(min_interval).unwrap_or(DateTime::<Utc>::MAX_UTC);
    target.max(earliest)
}

/// Computes the delay before retry number `failures` (1 for the first retry):
/// a uniform share (`sample` in `[0, 1)`) of `min(max, initial * 2^(failures-1))`.
pub fn retry_delay(failures: u32, backoff: &Backoff, sample: f64) -> Duration {
    let exponent = failures.saturating_sub(1).min(32);
    let ceiling = backoff
        .initial
        .checked_mul(1u32 << exponent.min(31))
        .unwrap_or(backoff.max)
        .min(backoff.max);
    // A NaN sample would make `mul_f64` panic; treat it as no delay.
    let sample = if sample.is_finite() { sample.clamp(0.0, 1.0) } else { 0.0 };
    Duration::try_from_secs_f64(ceiling.as_secs_f64() * sample).unwrap_or(ceiling)
}

/// Multiplies a time span by a share in `[0, 1]`, in milliseconds.
fn scale(span: TimeDelta, share: f64) -> TimeDelta {
    let millis = span.num_milliseconds() as f64 * share;
    // `as` saturates at i64 bounds; out-of-range spans saturate too.
    TimeDelta::try_milliseconds(millis as i64).unwrap_or(if millis < 0.0 { TimeDelta::MIN } else { TimeDelta::MAX })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
    }

    const START: &str = "2026-01-01T12:00:00Z";

    /// Refresh point for a token requested at START with `lifetime`, no jitter.
    fn point(lifetime: TimeDelta, policy: &RefreshPolicy) -> TimeDelta {
        let start = at(START);
        next_refresh(start, start + lifetime, policy, start, start, 0.0) - start
    }

    #[test]
    fn worked_examples_with_defaults() {
        let policy = RefreshPolicy::default();
        assert_eq!(point(TimeDelta::hours(1), &policy), TimeDelta::minutes(48));
        assert_eq!(point(TimeDelta::minutes(10), &policy), TimeDelta::minutes(5));
        assert_eq!(point(TimeDelta::seconds(60), &policy), TimeDelta::seconds(48));
    }

    #[test]
    fn fraction_one_gives_buffer_rule() {
        let policy = RefreshPolicy { lifetime_fraction: 1.0, ..RefreshPolicy::default() };
        assert_eq!(point(TimeDelta::hours(1), &policy), TimeDelta::minutes(55));
    }

    #[test]
    fn min_interval_protects_issuer() {
        let policy = RefreshPolicy::default();
        assert_eq!(point(TimeDelta::seconds(5), &policy), TimeDelta::seconds(10));
    }

    #[test]
    fn jitter_moves_point_earlier_within_range() {
        let policy = RefreshPolicy::default();
        let start = at(START);
        let expiry = start + TimeDelta::hours(1);
        let full = next_refresh(start, expiry, &policy, start, start, 0.999_999);
        let none = next_refresh(start, expiry, &policy, start, start, 0.0);
        assert_eq!(none - start, TimeDelta::minutes(48));
        assert!(full < none, "jitter must move the refresh earlier");
        assert!(none - full <= TimeDelta::seconds(288), "jitter removes at most 10% of 48 min");
        assert!(none - full > TimeDelta::seconds(287));
    }

    #[test]
    fn jitter_counts_from_now() {
        let policy = RefreshPolicy::default();
        let start = at(START);
        let now = start + TimeDelta::minutes(38);
        let refresh = next_refresh(start, start + TimeDelta::hours(1), &policy, start, now, 0.999_999);
        // 10 min left until the 48 min point, so at most 1 min earlier.
        assert!(refresh >= start + TimeDelta::minutes(47));
    }

    #[test]
    fn overdue_point_is_not_moved_later() {
        let policy = RefreshPolicy::default();
        let start = at(START);
        let now = start + TimeDelta::minutes(59);
        let refresh = next_refresh(start, start + TimeDelta::hours(1), &policy, start, now, 0.5);
        assert_eq!(refresh, start + TimeDelta::minutes(48));
    }

    #[test]
    fn retry_delay_grows_and_caps() {
        let backoff = Backoff::default();
        assert_eq!(retry_delay(1, &backoff, 1.0), Duration::from_secs(1));
        assert_eq!(retry_delay(2, &backoff, 1.0), Duration::from_secs(2));
        assert_eq!(retry_delay(4, &backoff, 1.0), Duration::from_secs(8));
        assert_eq!(retry_delay(9, &backoff, 1.0), Duration::from_secs(256));
        assert_eq!(retry_delay(10, &backoff, 1.0), Duration::from_secs(300));
        assert_eq!(retry_delay(u32::MAX, &backoff, 1.0), Duration::from_secs(300));
        assert_eq!(retry_delay(3, &backoff, 0.5), Duration::from_secs(2));
        assert_eq!(retry_delay(3, &backoff, 0.0), Duration::ZERO);
    }
}
