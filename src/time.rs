//! RFC 3339 timestamps (`2026-12-01T09:00:00Z`, `2026-12-01T10:00:00.5+01:00`)
//! to Unix milliseconds, for scheduled ramps. Every proxy computes the live
//! weights from its own clock, so the only thing that must agree across
//! proxies is this conversion.

/// Days from 1970-01-01 to the given civil date (proleptic Gregorian).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Reads exactly `n` ASCII digits.
fn digits(s: &[u8], n: usize) -> Option<(i64, &[u8])> {
    let (head, rest) = (s.get(..n)?, s.get(n..)?);
    let mut v = 0i64;
    for &b in head {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v * 10 + i64::from(b - b'0');
    }
    Some((v, rest))
}

fn expect<'a>(s: &'a [u8], c: &[u8]) -> Option<&'a [u8]> {
    let (&first, rest) = s.split_first()?;
    c.contains(&first).then_some(rest)
}

/// Parses an RFC 3339 date-time into Unix milliseconds. Fractions beyond
/// milliseconds are truncated; leap seconds (`:60`) are rejected.
pub fn parse_rfc3339_ms(text: &str) -> Option<i64> {
    let s = text.as_bytes();
    let (year, s) = digits(s, 4)?;
    let (month, s) = digits(expect(s, b"-")?, 2)?;
    let (day, s) = digits(expect(s, b"-")?, 2)?;
    let (hour, s) = digits(expect(s, b"Tt ")?, 2)?;
    let (minute, s) = digits(expect(s, b":")?, 2)?;
    let (second, mut s) = digits(expect(s, b":")?, 2)?;
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let mut millis = 0i64;
    if let Some(rest) = expect(s, b".") {
        let n = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        if n == 0 {
            return None;
        }
        for (i, &b) in rest.iter().take(n.min(3)).enumerate() {
            millis += i64::from(b - b'0') * [100, 10, 1].get(i).copied().unwrap_or(0);
        }
        s = rest.get(n..)?;
    }
    let offset_minutes = match s {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), ..] => {
            let (oh, rest) = digits(s.get(1..)?, 2)?;
            let (om, rest) = digits(expect(rest, b":")?, 2)?;
            if !rest.is_empty() || oh > 23 || om > 59 {
                return None;
            }
            let m = oh * 60 + om;
            if *sign == b'-' {
                -m
            } else {
                m
            }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_minutes * 60;
    Some(secs * 1000 + millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_instants() {
        let cases = [
            ("1970-01-01T00:00:00Z", 0),
            ("2000-03-01T00:00:00Z", 951_868_800_000),
            ("2026-11-23T15:00:00Z", 1_795_446_000_000),
            ("2026-11-23T16:00:00+01:00", 1_795_446_000_000),
            ("2026-11-23T10:30:00-04:30", 1_795_446_000_000),
            ("2026-11-23t15:00:00z", 1_795_446_000_000),
            ("2026-11-23T15:00:00.250Z", 1_795_446_000_250),
            ("2026-11-23T15:00:00.5Z", 1_795_446_000_500),
            ("2026-11-23T15:00:00.123456789Z", 1_795_446_000_123),
            ("2024-02-29T12:00:00Z", 1_709_208_000_000),
            ("1969-12-31T23:59:59Z", -1000),
        ];
        for (text, want) in cases {
            assert_eq!(parse_rfc3339_ms(text), Some(want), "{text}");
        }
    }

    #[test]
    fn malformed_is_rejected() {
        for text in [
            "",
            "2026-11-23",
            "2026-11-23T15:00:00",
            "2026-11-23T15:00Z",
            "2026-13-01T00:00:00Z",
            "2026-02-29T00:00:00Z",
            "2026-04-31T00:00:00Z",
            "2026-11-23T24:00:00Z",
            "2026-11-23T23:60:00Z",
            "2026-11-23T23:59:60Z",
            "2026-11-23T15:00:00.Z",
            "2026-11-23T15:00:00+0100",
            "2026-11-23T15:00:00+01:00x",
            "2026-11-23T15:00:00ZZ",
            "２026-11-23T15:00:00Z",
            "2026/11/23T15:00:00Z",
        ] {
            assert_eq!(parse_rfc3339_ms(text), None, "{text}");
        }
    }
}
