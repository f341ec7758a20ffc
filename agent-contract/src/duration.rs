//! Durations as users write them in specs (`30s`, `5m`, `1h30m`, `1.5h`, `250ms`): the subset of Go's
//! `time.ParseDuration` that the CRDs' CEL rules accept, so the API server and the operator agree.
//!
//! The text is hostile input: parsing is exact integer arithmetic in nanoseconds, and a value that
//! does not fit Go's range (an `int64` of nanoseconds, about 292 years) is refused, as CEL's
//! `duration()` refuses it, instead of overflowing.

use std::time::Duration;

/// The pattern the CRDs use to accept a duration string; kept next to the parser it mirrors.
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$";

/// The longest duration Go (and so CEL's `duration()`) can represent: `i64::MAX` nanoseconds.
pub const MAX: Duration = Duration::from_nanos(i64::MAX as u64);

/// Parses a duration such as `1h30m`; `None` when the text does not match [`DURATION_PATTERN`] or
/// the value is longer than [`MAX`].
pub fn parse(text: &str) -> Option<Duration> {
    if text.is_empty() {
        return None;
    }
    let mut rest = text;
    let mut total_nanos: u128 = 0;
    while !rest.is_empty() {
        let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let (number, tail) = rest.split_at(number_len);
        let (whole, fraction) = match number.split_once('.') {
            Some((whole, fraction)) => (whole, Some(fraction)),
            None => (number, None),
        };
        if whole.is_empty() || fraction.is_some_and(|f| f.is_empty() || f.contains('.')) {
            return None;
        }
        let (unit_nanos, unit_len): (u128, usize) = if tail.starts_with("ms") {
            (1_000_000, 2)
        } else if tail.starts_with('s') {
            (1_000_000_000, 1)
        } else if tail.starts_with('m') {
            (60_000_000_000, 1)
        } else if tail.starts_with('h') {
            (3_600_000_000_000, 1)
        } else {
            return None;
        };
        total_nanos = total_nanos.checked_add(component_nanos(whole, fraction, unit_nanos)?)?;
        if total_nanos > MAX.as_nanos() {
            return None;
        }
        rest = &tail[unit_len..];
    }
    u64::try_from(total_nanos).ok().map(Duration::from_nanos)
}

/// `whole.fraction × unit` in nanoseconds, truncated as Go truncates; `None` past [`MAX`].
fn component_nanos(whole: &str, fraction: Option<&str>, unit_nanos: u128) -> Option<u128> {
    // Leading zeros carry no value; anything longer than 20 digits is past MAX in any unit.
    let whole = whole.trim_start_matches('0');
    if whole.len() > 20 {
        return None;
    }
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let mut nanos = whole.checked_mul(unit_nanos)?;
    if let Some(fraction) = fraction {
        // Digits past the 18th cannot add a nanosecond to any unit of at most an hour.
        let digits = &fraction[..fraction.len().min(18)];
        let scale = 10u128.pow(digits.len() as u32);
        let value: u128 = digits.parse().ok()?;
        nanos = nanos.checked_add(value.checked_mul(unit_nanos)? / scale)?;
    }
    (nanos <= MAX.as_nanos()).then_some(nanos)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_go_style_durations() {
        assert_eq!(parse("60s"), Some(Duration::from_secs(60)));
        assert_eq!(parse("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse("1.5h"), Some(Duration::from_secs(5400)));
        assert_eq!(parse("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse("0.001s"), Some(Duration::from_millis(1)));
        assert_eq!(parse("007s"), Some(Duration::from_secs(7)));
    }

    #[test]
    fn rejects_what_the_crd_pattern_rejects() {
        for bad in [
            "", "60", "s", "1d", "-5s", "1.s", ".5s", "5 s", "1h 30m", "1..5s", "1.2.3s",
        ] {
            assert_eq!(parse(bad), None, "{bad:?} should be rejected");
        }
    }

    #[test]
    fn refuses_values_past_go_range_instead_of_overflowing() {
        assert_eq!(parse("99999999999999999999h"), None);
        assert_eq!(parse("2562047h47m16.854775807s"), Some(MAX));
        assert_eq!(parse("2562047h47m16.854775808s"), None);
        assert_eq!(parse("2562048h"), None);
        assert_eq!(
            parse(&format!("{}h", "9".repeat(400))),
            None,
            "a very long number is refused"
        );
        assert_eq!(
            parse(&"1h".repeat(3_000_000)),
            None,
            "the sum is bounded too"
        );
    }

    proptest! {
        #[test]
        fn never_panics_on_any_text(text in ".{0,64}") {
            let _ = parse(&text);
        }

        #[test]
        fn never_panics_on_duration_shaped_text(text in "([0-9]{1,30}(\\.[0-9]{1,30})?(ms|s|m|h)){1,6}") {
            if let Some(d) = parse(&text) {
                prop_assert!(d <= MAX);
            }
        }

        #[test]
        fn whole_seconds_round_trip(secs in 0u64..=9_223_372_036) {
            prop_assert_eq!(parse(&format!("{secs}s")), Some(Duration::from_secs(secs)));
        }
    }
}
