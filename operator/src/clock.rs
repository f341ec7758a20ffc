//! Checked time arithmetic. Timestamps and durations computed from data (specs, Vault responses,
//! Secret annotations anyone with edit rights can change) go through these functions, which
//! saturate at the ends of time instead of panicking as `Timestamp + SignedDuration` and
//! `Duration * n` do. Also the one jitter function of the operator.

use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use rand::Rng;

/// `d` as a signed duration; durations past `SignedDuration::MAX` (about 292 billion years) become
/// that maximum.
pub fn signed(d: Duration) -> SignedDuration {
    SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX)
}

/// `t + d`, or the last representable instant when that lies beyond it.
pub fn after(t: Timestamp, d: Duration) -> Timestamp {
    t.saturating_add(signed(d)).unwrap_or(Timestamp::MAX)
}

/// `t + d` rounded up to a whole second, for a deadline the operator stores (a status field or an
/// annotation): the API server keeps times in whole seconds, so an instant with a fraction would
/// read back up to a second early. Stored so, it reads back as no earlier than asked. A zero `d`
/// gives `t` itself: that deadline is due at once, whatever fraction a read-back drops.
pub fn after_stored(t: Timestamp, d: Duration) -> Timestamp {
    use k8s_openapi::jiff::{RoundMode, TimestampRound, Unit};
    let exact = after(t, d);
    if d.is_zero() {
        return exact;
    }
    exact
        .round(
            TimestampRound::new()
                .smallest(Unit::Second)
                .mode(RoundMode::Ceil),
        )
        .unwrap_or(exact)
}

/// `t - d`, or the first representable instant when that lies before it.
pub fn before(t: Timestamp, d: Duration) -> Timestamp {
    t.saturating_sub(signed(d)).unwrap_or(Timestamp::MIN)
}

/// `t + seconds` for a whole number of seconds.
pub fn after_secs(t: Timestamp, seconds: u64) -> Timestamp {
    after(t, Duration::from_secs(seconds))
}

/// `d × factor` for a factor from data or configuration: a negative or non-finite factor gives
/// zero, a product past `Duration::MAX` gives `Duration::MAX` (`Duration::mul_f64` panics on both).
pub fn scale(d: Duration, factor: f64) -> Duration {
    if !factor.is_finite() || factor <= 0.0 {
        return Duration::ZERO;
    }
    Duration::try_from_secs_f64(d.as_secs_f64() * factor).unwrap_or(Duration::MAX)
}

/// `part / whole` of `d`, in integer arithmetic that cannot overflow.
pub fn fraction(d: Duration, part: u32, whole: u32) -> Duration {
    if whole == 0 {
        return Duration::ZERO;
    }
    let nanos = d.as_nanos() * u128::from(part) / u128::from(whole);
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// A duration in whole seconds from a value read back from an annotation or a status field:
/// `None` for a negative value.
pub fn seconds(value: i64) -> Option<Duration> {
    u64::try_from(value).ok().map(Duration::from_secs)
}

/// The time from `from` to `to` as an unsigned duration, zero when `to` is not later.
pub fn until(from: Timestamp, to: Timestamp) -> Duration {
    let d = to.duration_since(from);
    if d.is_negative() {
        Duration::ZERO
    } else {
        d.unsigned_abs()
    }
}

/// How soon a failed attempt to keep something alive that ends at `end` must be retried at the
/// latest: a third of the time left, never sooner than a second, so a few attempts fit before it
/// ends whatever the backoff has grown to. `None` when it has ended (or has no end): the backoff
/// alone then decides.
pub fn retry_before_end(end: Option<Timestamp>, now: Timestamp) -> Option<Duration> {
    let left = until(now, end?);
    (!left.is_zero()).then(|| (left / 3).max(Duration::from_secs(1)))
}

/// A time for a message a status keeps, in whole seconds as the API server keeps its times, so
/// a message computed again from the stored times reads the same (and is not written again).
pub fn show(t: Timestamp) -> String {
    format!("{t:.0}")
}

/// `base` scaled by a random factor in [1 - spread, 1 + spread].
pub fn jitter(base: Duration, spread: f64) -> Duration {
    let spread = spread.clamp(0.0, 1.0);
    let factor = rand::rng().random_range((1.0 - spread)..=(1.0 + spread));
    scale(base, factor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_stored_deadline_is_rounded_up_to_a_whole_second() {
        let t = Timestamp::from_second(1_800_000_000).unwrap();
        let d = Duration::from_millis(2_300);
        assert_eq!(after_stored(t, d), after_secs(t, 3));
        assert_eq!(after_stored(t, Duration::from_secs(2)), after_secs(t, 2));
        assert_eq!(after_stored(Timestamp::MAX, d), Timestamp::MAX);
        let fraction = t + SignedDuration::from_millis(300);
        assert_eq!(
            after_stored(fraction, Duration::ZERO),
            fraction,
            "due at once"
        );
    }

    #[test]
    fn a_failure_is_retried_a_few_times_before_what_it_keeps_alive_ends() {
        let now = Timestamp::now();
        let end = |secs| Some(after_secs(now, secs));
        assert_eq!(
            retry_before_end(end(60), now),
            Some(Duration::from_secs(20))
        );
        assert_eq!(retry_before_end(end(2), now), Some(Duration::from_secs(1)));
        assert_eq!(
            retry_before_end(end(0), now),
            None,
            "ended: the backoff decides"
        );
        assert_eq!(
            retry_before_end(Some(before(now, Duration::from_secs(5))), now),
            None
        );
        assert_eq!(retry_before_end(None, now), None);
    }

    #[test]
    fn times_in_messages_have_whole_seconds() {
        let t = Timestamp::from_second(1_800_000_000).unwrap() + SignedDuration::from_millis(482);
        assert_eq!(show(t), "2027-01-15T08:00:00Z");
    }

    #[test]
    fn saturates_at_the_ends_of_time() {
        let now = Timestamp::now();
        assert_eq!(after(now, Duration::MAX), Timestamp::MAX);
        assert_eq!(
            after(Timestamp::MAX, Duration::from_secs(1)),
            Timestamp::MAX
        );
        assert_eq!(before(now, Duration::MAX), Timestamp::MIN);
        assert_eq!(after_secs(now, u64::MAX), Timestamp::MAX);
        assert_eq!(after_secs(now, 60), now + SignedDuration::from_secs(60));
    }

    #[test]
    fn scale_and_fraction_never_panic() {
        assert_eq!(scale(Duration::MAX, 2.0), Duration::MAX);
        assert_eq!(scale(Duration::from_secs(10), -1.0), Duration::ZERO);
        assert_eq!(scale(Duration::from_secs(10), f64::NAN), Duration::ZERO);
        assert_eq!(scale(Duration::from_secs(10), 0.5), Duration::from_secs(5));
        assert_eq!(
            fraction(Duration::MAX, 100, 1),
            Duration::from_nanos(u64::MAX)
        );
        assert_eq!(
            fraction(Duration::from_secs(100), 80, 100),
            Duration::from_secs(80)
        );
        assert_eq!(fraction(Duration::from_secs(100), 1, 0), Duration::ZERO);
        assert_eq!(seconds(-1), None);
        assert_eq!(seconds(5), Some(Duration::from_secs(5)));
    }

    #[test]
    fn jitter_stays_within_its_spread() {
        for _ in 0..1000 {
            let d = jitter(Duration::from_secs(60), 0.1);
            assert!(
                d >= Duration::from_secs(54) && d <= Duration::from_secs(66),
                "{d:?}"
            );
        }
        assert!(jitter(Duration::MAX, 0.5) > Duration::ZERO);
    }

    proptest! {
        #[test]
        fn arithmetic_is_total(secs in any::<u64>(), nanos in 0u32..1_000_000_000, factor in any::<f64>(), part in any::<u32>(), whole in any::<u32>(), offset in any::<i64>()) {
            let d = Duration::new(secs, nanos);
            let t = Timestamp::from_second(offset.clamp(Timestamp::MIN.as_second(), Timestamp::MAX.as_second())).unwrap();
            let later = after(t, d);
            prop_assert!(later >= t);
            prop_assert!(before(t, d) <= t);
            let _ = scale(d, factor);
            let _ = fraction(d, part, whole);
            let _ = until(t, later);
            let _ = seconds(offset);
        }
    }
}
