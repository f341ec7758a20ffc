//! One line per event on stderr: `<RFC 3339 UTC time> <level> <message>`. Messages name secrets,
//! paths and files, never values or tokens. (A tracing subscriber would double the binary.)

use std::time::{SystemTime, UNIX_EPOCH};

#[macro_export]
#[doc(hidden)]
macro_rules! __agent_log_info {
    ($($arg:tt)*) => { $crate::log::line("info", format_args!($($arg)*)) };
}
#[macro_export]
#[doc(hidden)]
macro_rules! __agent_log_warning {
    ($($arg:tt)*) => { $crate::log::line("warn", format_args!($($arg)*)) };
}
pub use {__agent_log_info as info, __agent_log_warning as warning};

pub fn line(level: &str, message: std::fmt::Arguments<'_>) {
    let text = message.to_string().replace('\n', " ");
    eprintln!("{} {level} {text}", timestamp(SystemTime::now()));
}

fn timestamp(now: SystemTime) -> String {
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn formats_utc_time() {
        let t = super::UNIX_EPOCH + Duration::from_secs(1_709_210_096);
        assert_eq!(super::timestamp(t), "2024-02-29T12:34:56Z");
    }
}
