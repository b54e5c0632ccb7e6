//! Parsing of the numbers and durations that command lines take.
//!
//! Wallaroo's tools were driven with numbers such as `-i 2_500_000`, so every numeric flag in
//! bettong accepts `_` separators too.

use std::time::Duration;

/// Parses an unsigned integer that may contain `_` separators (`2_500_000`).
///
/// ```
/// assert_eq!(bettong::units::parse_u64("2_500_000"), Ok(2_500_000));
/// assert!(bettong::units::parse_u64("12x").is_err());
/// ```
pub fn parse_u64(text: &str) -> Result<u64, String> {
    let digits: String = text.trim().chars().filter(|c| *c != '_').collect();
    if digits.is_empty() {
        return Err(format!("`{text}` is not a number"));
    }
    digits
        .parse::<u64>()
        .map_err(|e| format!("`{text}` is not a number: {e}"))
}

/// Like [`parse_u64`], for values that must fit a `usize`.
///
/// ```
/// assert_eq!(bettong::units::parse_usize("16_384"), Ok(16384));
/// ```
pub fn parse_usize(text: &str) -> Result<usize, String> {
    let v = parse_u64(text)?;
    usize::try_from(v).map_err(|_| format!("`{text}` is too large"))
}

/// Parses a duration written as a number with a unit: `ns`, `us`, `ms`, `s` or `m`
/// (`250ms`, `2s`, `1_500us`). A bare number means seconds.
///
/// ```
/// use std::time::Duration;
/// assert_eq!(bettong::units::parse_duration("250ms"), Ok(Duration::from_millis(250)));
/// assert_eq!(bettong::units::parse_duration("3"), Ok(Duration::from_secs(3)));
/// ```
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '_'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n = parse_u64(num)?;
    let d = match unit {
        "ns" => Duration::from_nanos(n),
        "us" | "µs" => Duration::from_micros(n),
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" | "min" => Duration::from_secs(n.saturating_mul(60)),
        _ => {
            return Err(format!(
                "`{text}`: unknown unit `{unit}` (use ns, us, ms, s or m)"
            ))
        }
    };
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_accept_underscores() {
        assert_eq!(parse_u64("1_000"), Ok(1000));
        assert_eq!(parse_u64("5000000"), Ok(5_000_000));
        assert!(parse_u64("").is_err());
        assert!(parse_u64("_").is_err());
        assert!(parse_u64("-1").is_err());
    }

    #[test]
    fn durations_take_units() {
        assert_eq!(parse_duration("10us"), Ok(Duration::from_micros(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1_000ns"), Ok(Duration::from_nanos(1000)));
        assert!(parse_duration("5 parsecs").is_err());
    }
}
