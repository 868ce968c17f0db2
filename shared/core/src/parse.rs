//! Parsers for values operators type: durations, sizes, percentages, `key=value`. The
//! command-line crates use them as clap value parsers; one definition, one set of bounds.

use std::time::Duration;

use crate::{Error, Result};

/// `30s`, `5m`, `2h`, `7d`.
pub fn duration(s: &str) -> std::result::Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e} (e.g. 30s, 5m, 2h, 7d)"))
}

/// `key=value`, as `--tag` takes it.
pub fn key_value(s: &str) -> std::result::Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?}: expected key=value"))
}

/// A percentage as a fraction: `10%` or `10` is 0.10. It must be at most `max_percent`,
/// and above zero unless `zero_ok` (a `--read-data-subset` of 0 % reads nothing; a
/// `--max-unused` of 0 % repacks every partly used pack).
pub fn percentage(s: &str, max_percent: f64, zero_ok: bool) -> Result<f64> {
    let v: f64 = s
        .trim()
        .trim_end_matches('%')
        .parse()
        .map_err(|_| Error::Invalid(format!("{s:?}: expected a percentage like 10%")))?;
    let low_ok = if zero_ok { v >= 0.0 } else { v > 0.0 };
    if !(low_ok && v <= max_percent) {
        let low = if zero_ok { "[0" } else { "(0" };
        return Err(Error::Invalid(format!("{s:?}: must be in {low}, {max_percent}] %")));
    }
    Ok(v / 100.0)
}

/// A size in bytes: `512`, `10MiB`, `2G`, or `unlimited`.
pub fn size(s: &str) -> Result<u64> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("unlimited") {
        return Ok(u64::MAX);
    }
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 =
        num.parse().map_err(|_| Error::Invalid(format!("size {s:?}: expected e.g. 10GiB")))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" | "kb" => 1 << 10,
        "m" | "mib" | "mb" => 1 << 20,
        "g" | "gib" | "gb" => 1 << 30,
        "t" | "tib" | "tb" => 1 << 40,
        _ => return Err(Error::Invalid(format!("size {s:?}: unknown unit"))),
    };
    n.checked_mul(mult).ok_or_else(|| Error::Invalid(format!("size {s:?} is too large")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_keep_their_bounds() {
        assert_eq!(percentage("10%", 100.0, false).unwrap(), 0.10);
        assert_eq!(percentage(" 5 ", 1000.0, true).unwrap(), 0.05);
        assert_eq!(percentage("0%", 1000.0, true).unwrap(), 0.0);
        assert!(percentage("0%", 100.0, false).is_err());
        assert!(percentage("101%", 100.0, false).is_err());
        assert!(percentage("-1", 1000.0, true).is_err());
        assert!(percentage("NaN", 1000.0, true).is_err());
        assert!(percentage("ten", 100.0, false).is_err());
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(size("10MiB").unwrap(), 10 << 20);
        assert_eq!(size("unlimited").unwrap(), u64::MAX);
        assert!(size("10 parsecs").is_err());
        assert!(size("99999999999T").is_err());
        assert_eq!(duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(key_value("a=b=c").unwrap(), ("a".into(), "b=c".into()));
    }
}
