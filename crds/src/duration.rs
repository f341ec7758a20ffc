//! Durations as users write them in specs (`30s`, `5m`, `1h30m`, `1.5h`, `250ms`): the subset of Go's
//! `time.ParseDuration` that the CRDs' CEL rules accept, so the API server and the operator agree.

use std::time::Duration;

/// The pattern the CRDs use to accept a duration string; kept next to the parser it mirrors.
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$";

/// Parses a duration such as `1h30m`; `None` when the text does not match [`DURATION_PATTERN`].
pub fn parse(text: &str) -> Option<Duration> {
    if text.is_empty() {
        return None;
    }
    let mut rest = text;
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let (number, tail) = rest.split_at(number_len);
        if number.is_empty()
            || number.starts_with('.')
            || number.ends_with('.')
            || number.matches('.').count() > 1
        {
            return None;
        }
        let value: f64 = number.parse().ok()?;
        let (unit_seconds, unit_len) = if tail.starts_with("ms") {
            (0.001, 2)
        } else if tail.starts_with('s') {
            (1.0, 1)
        } else if tail.starts_with('m') {
            (60.0, 1)
        } else if tail.starts_with('h') {
            (3600.0, 1)
        } else {
            return None;
        };
        total += value * unit_seconds;
        rest = &tail[unit_len..];
    }
    Some(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_style_durations() {
        assert_eq!(parse("60s"), Some(Duration::from_secs(60)));
        assert_eq!(parse("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse("1.5h"), Some(Duration::from_secs(5400)));
        assert_eq!(parse("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse("1m30s"), Some(Duration::from_secs(90)));
    }

    #[test]
    fn rejects_what_the_crd_pattern_rejects() {
        for bad in [
            "", "60", "s", "1d", "-5s", "1.s", ".5s", "5 s", "1h 30m", "1..5s",
        ] {
            assert_eq!(parse(bad), None, "{bad:?} should be rejected");
        }
    }
}
