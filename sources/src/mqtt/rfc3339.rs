//! A small, strict RFC 3339 timestamp parser (no dependency needed).
//!
//! Accepted: `YYYY-MM-DD` `T` (or `t` or a space) `hh:mm:ss`, optional
//! fraction of a second (any number of digits, kept to the millisecond), and a
//! required offset: `Z`, `z` or `±hh:mm`. A timestamp without an offset is
//! refused: guessing the device's time zone would silently shift its data by
//! hours.

use ferry_core::record::Millis;

/// Parses an RFC 3339 timestamp into milliseconds since the Unix epoch (UTC).
pub(crate) fn parse(s: &str) -> Option<Millis> {
    let b = s.as_bytes();
    if b.len() < 20 {
        return None;
    }
    let year = digits(b, 0, 4)?;
    let month = digits(b, 5, 2)?;
    let day = digits(b, 8, 2)?;
    let hour = digits(b, 11, 2)?;
    let minute = digits(b, 14, 2)?;
    let second = digits(b, 17, 2)?;
    if b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    // 60 is a leap second: it lands on the next second's first instant.
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }

    let mut i = 19;
    let mut millis = 0i64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 3 {
                millis = millis * 10 + i64::from(b[i] - b'0');
            }
            i += 1;
        }
        let n = i - start;
        if n == 0 {
            return None;
        }
        for _ in n..3 {
            millis *= 10;
        }
    }

    let offset_minutes = match &b[i..] {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let oh = digits(&[*h1, *h2], 0, 2)?;
            let om = digits(&[*m1, *m2], 0, 2)?;
            if oh > 23 || om > 59 {
                return None;
            }
            let off = oh * 60 + om;
            if *sign == b'-' {
                -off
            } else {
                off
            }
        }
        _ => return None,
    };

    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3_600 + minute * 60 + second - offset_minutes * 60;
    Some(secs * 1_000 + millis)
}

fn digits(b: &[u8], at: usize, n: usize) -> Option<i64> {
    let mut v = 0i64;
    for &c in b.get(at..at + n)? {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + i64::from(c - b'0');
    }
    Some(v)
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn parses_utc_and_offsets() {
        assert_eq!(parse("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse("2024-05-01T12:00:00Z"), Some(1_714_564_800_000));
        assert_eq!(parse("2024-05-01T14:00:00+02:00"), Some(1_714_564_800_000));
        assert_eq!(parse("2024-05-01T07:30:00-04:30"), Some(1_714_564_800_000));
        assert_eq!(parse("2024-05-01 12:00:00z"), Some(1_714_564_800_000));
        assert_eq!(parse("2024-02-29T00:00:00Z"), Some(1_709_164_800_000));
        assert_eq!(parse("1969-12-31T23:59:59Z"), Some(-1_000));
    }

    #[test]
    fn fractions_are_kept_to_the_millisecond() {
        assert_eq!(parse("2024-05-01T12:00:00.5Z"), Some(1_714_564_800_500));
        assert_eq!(parse("2024-05-01T12:00:00.123Z"), Some(1_714_564_800_123));
        assert_eq!(
            parse("2024-05-01T12:00:00.123987654Z"),
            Some(1_714_564_800_123)
        );
    }

    #[test]
    fn refuses_what_is_not_rfc3339() {
        for bad in [
            "",
            "2024-05-01",
            "2024-05-01T12:00:00",      // no offset
            "2024-05-01T12:00:00+0200", // offset without colon
            "2024-13-01T12:00:00Z",     // month
            "2023-02-29T12:00:00Z",     // not a leap year
            "2024-05-01T24:00:00Z",     // hour
            "2024-05-01T12:00:00.Z",    // empty fraction
            "2024-05-01T12:00:00Zjunk", // trailing
            "2024/05/01T12:00:00Z",     // separators
            "1714564800",               // a number in a string
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
