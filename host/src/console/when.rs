//! Times on the console's pages: shown as `YYYY-MM-DD HH:MM:SS` UTC, read from filters as
//! `YYYY-MM-DDTHH:MM` (what `<input type="datetime-local">` sends, taken as UTC), with seconds,
//! or as milliseconds since the epoch. Ages as `850 ms`, `12.3 s`, `4.0 min`, `2.5 h`.

use time::{OffsetDateTime, PrimitiveDateTime, macros::format_description};

/// `ms` since the epoch as `YYYY-MM-DD HH:MM:SS` UTC.
pub fn format_ms(ms: i64) -> String {
    let format = format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| format!("{ms} ms"))
}

/// A filter's time: `YYYY-MM-DDTHH:MM[:SS[.fff]]` (UTC) or milliseconds since the epoch.
pub fn parse(text: &str) -> Result<i64, String> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().map_err(|_| format!("{text:?} is too large"));
    }
    let minutes = format_description!("[year]-[month]-[day]T[hour]:[minute]");
    let seconds = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");
    let fraction = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond]");
    let at = PrimitiveDateTime::parse(text, &minutes)
        .or_else(|_| PrimitiveDateTime::parse(text, &seconds))
        .or_else(|_| PrimitiveDateTime::parse(text, &fraction))
        .map_err(|_| {
            format!("{text:?} is not a time like 2026-12-01T21:30 (UTC) or milliseconds")
        })?;
    Ok((at.assume_utc().unix_timestamp_nanos() / 1_000_000) as i64)
}

/// An age in ms, short.
pub fn age(ms: i64) -> String {
    let ms = ms.max(0);
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..60_000 => format!("{:.1} s", ms as f64 / 1e3),
        60_000..3_600_000 => format!("{:.1} min", ms as f64 / 6e4),
        _ => format!("{:.1} h", ms as f64 / 3.6e6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_and_print_in_utc() {
        assert_eq!(parse("2026-12-01T21:30"), Ok(1_796_160_600_000));
        assert_eq!(parse("2026-12-01T21:30:15"), Ok(1_796_160_615_000));
        assert_eq!(parse("1796160600000"), Ok(1_796_160_600_000));
        assert!(parse("yesterday").unwrap_err().contains("not a time like"));
        assert!(parse("").is_err());
        assert_eq!(format_ms(1_796_160_615_000), "2026-12-01 21:30:15");
        assert_eq!(age(850), "850 ms");
        assert_eq!(age(12_345), "12.3 s");
        assert_eq!(age(9_000_000), "2.5 h");
    }
}
