//! Durations as people write them in specs and flags: `90s`, `15m`, `1h30m`.
//!
//! A deliberately small grammar (whole numbers of `h`, `m`, `s`) that the CRD schema can
//! express as one regular expression, so the API server and this parser accept the same strings.

use std::time::Duration;

/// The CRD schema pattern for duration strings; [`parse`] accepts exactly these.
pub const PATTERN: &str = "^([0-9]+[hms])+$";

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// The string does not match `<number><h|m|s>…`.
    #[error("{0:?} is not a duration: write whole hours, minutes and seconds such as 90s, 15m or 1h30m")]
    Malformed(String),
}

/// Parses `1h30m`-style durations.
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    let malformed = || DurationError::Malformed(text.to_string());
    if text.is_empty() {
        return Err(malformed());
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    for ch in text.chars() {
        if ch.is_ascii_digit() {
            digits.push(ch);
            continue;
        }
        let unit = match ch {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return Err(malformed()),
        };
        let value: u64 = digits.parse().map_err(|_| malformed())?;
        total = value
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(malformed)?;
        digits.clear();
    }
    if !digits.is_empty() {
        return Err(malformed());
    }
    Ok(Duration::from_secs(total))
}

/// Formats a duration in the same grammar, largest units first (`1h30m`, `45s`, `0s`).
pub fn format(duration: Duration) -> String {
    let secs = duration.as_secs();
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || out.is_empty() {
        out.push_str(&format!("{s}s"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[rstest::rstest]
    #[case("90s", 90)]
    #[case("15m", 900)]
    #[case("1h30m", 5400)]
    #[case("2h", 7200)]
    #[case("1m1s", 61)]
    #[case("0s", 0)]
    fn parses_what_people_write(#[case] text: &str, #[case] secs: u64) {
        assert_eq!(parse(text), Ok(Duration::from_secs(secs)));
        assert_eq!(parse(&format(Duration::from_secs(secs))), Ok(Duration::from_secs(secs)));
    }

    #[rstest::rstest]
    #[case("")]
    #[case("15")]
    #[case("m")]
    #[case("1.5h")]
    #[case("15 m")]
    #[case("1d")]
    #[case("-5m")]
    #[case("99999999999999999999h")]
    fn refuses_everything_else(#[case] text: &str) {
        assert_eq!(parse(text), Err(DurationError::Malformed(text.to_string())));
    }

    #[test]
    fn formats_largest_units_first() {
        assert_eq!(format(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format(Duration::from_secs(45)), "45s");
        assert_eq!(format(Duration::ZERO), "0s");
    }
}
