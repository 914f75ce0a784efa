//! Target `rfc3339`: schedule start times against an independent calendar.

use super::*;

// ---------------------------------------------------------------------------
// Target: rfc3339.
// ---------------------------------------------------------------------------

#[derive(Debug)]
struct TimeCase {
    text: String,
    /// What parsing must give (`None`: not a valid time), computed
    /// independently; unknown for texts broken at random.
    want: Option<Option<i64>>,
}

fn days_in_month(year: i64, month: i64) -> i64 {
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ][(month - 1) as usize]
}

/// Days from 1970-01-01, counted a year and a month at a time.
fn days_since_epoch(year: i64, month: i64, day: i64) -> i64 {
    let year_days = |y: i64| (1..=12).map(|m| days_in_month(y, m)).sum::<i64>();
    let mut days: i64 = if year >= 1970 {
        (1970..year).map(year_days).sum()
    } else {
        -(year..1970).map(year_days).sum::<i64>()
    };
    days += (1..month).map(|m| days_in_month(year, m)).sum::<i64>();
    days + day - 1
}

fn gen_time(rng: &mut Rng) -> TimeCase {
    let year = rng.range(1900, 2200) as i64;
    let (mut month, mut day) = (rng.range(0, 13) as i64, rng.range(0, 32) as i64);
    let (mut hour, mut minute, mut second) = (
        rng.range(0, 24) as i64,
        rng.range(0, 60) as i64,
        rng.range(0, 60) as i64,
    );
    // Now and then a leap second, 23:59:60, at the end of a month or just
    // before it.
    let leap = rng.one_in(8);
    if leap {
        month = rng.range(1, 12) as i64;
        day = days_in_month(year, month) - rng.below(2) as i64;
        (hour, minute, second) = (23, 59, 60);
    }
    let time_ok = hour <= 23 && minute <= 59 && second <= 60;
    let frac_digits = if rng.one_in(2) {
        None
    } else {
        Some(rng.range(0, 10))
    };
    let frac: String = (0..frac_digits.unwrap_or(0))
        .map(|_| char::from(b'0' + rng.below(10) as u8))
        .collect();
    let (oh, om) = (rng.range(0, 24) as i64, rng.range(0, 60) as i64);
    let offset_ok = oh <= 23 && om <= 59;
    let (offset, offset_minutes) = match rng.below(if leap { 8 } else { 4 }) {
        1 => ("z".to_string(), 0),
        2 => (format!("+{oh:02}:{om:02}"), oh * 60 + om),
        3 => (format!("-{oh:02}:{om:02}"), -(oh * 60 + om)),
        _ => ("Z".to_string(), 0),
    };
    let sep = rng.pick(&['T', 't', ' ']);
    let dot = frac_digits.map_or(String::new(), |_| format!(".{frac}"));
    let mut text =
        format!("{year:04}-{month:02}-{day:02}{sep}{hour:02}:{minute:02}:{second:02}{dot}{offset}");
    let valid_date = (1..=12).contains(&month) && day >= 1 && day <= days_in_month(year, month);
    let valid =
        valid_date && time_ok && frac_digits != Some(0) && (offset_minutes == 0 || offset_ok);
    // The instant in UTC, a leap second counted as second 59.
    let utc =
        days_since_epoch(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second.min(59)
            - offset_minutes * 60;
    // RFC 3339 allows 23:59:60 in UTC on the last day of a month (where a
    // leap second may be inserted); it reads as the last instant of 23:59:59.
    // (The UTC date is the written one, the day before or the day after,
    // so the next UTC day can only start this month or the next.)
    let month_ends = || {
        let next_day = utc.div_euclid(86_400) + 1;
        let next = if month >= 12 {
            (year + 1, 1)
        } else {
            (year, month + 1)
        };
        [(year, month), next]
            .iter()
            .any(|&(y, m)| days_since_epoch(y, m, 1) == next_day)
    };
    let leap_ok = second < 60 || (utc.rem_euclid(86_400) == 86_399 && month_ends());
    let mut want = Some((valid && leap_ok).then(|| {
        if second == 60 {
            return utc * 1000 + 999;
        }
        let millis: i64 = frac
            .bytes()
            .chain(std::iter::repeat(b'0'))
            .take(3)
            .fold(0, |m, b| m * 10 + i64::from(b - b'0'));
        utc * 1000 + millis
    }));
    // Now and then, break it.
    if rng.one_in(4) {
        let mut bytes = text.into_bytes();
        let at = rng.below(bytes.len());
        match rng.below(3) {
            0 => bytes[at] = rng.pick(b"0123456789-:T+Z. x\xff"),
            1 => bytes.truncate(at),
            _ => bytes.insert(at, rng.pick(b"0:-.")),
        }
        text = String::from_utf8_lossy(&bytes).into_owned();
        want = None;
    }
    TimeCase { text, want }
}

#[test]
fn rfc3339() {
    run("rfc3339", gen_time, |case| {
        let got = config::rfc3339_ms(&case.text);
        if let Some(want) = case.want {
            assert_eq!(got, want);
        }
        1
    });
}
