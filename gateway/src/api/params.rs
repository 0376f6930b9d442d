//! Parsing and checking query parameters: pure functions of the query
//! string and the time (the fuzz target `api_query` drives them), so that
//! every bound is checked before a request does any work.
//!
//! Times are clamped to the query range (`query::bounds`: ±253402300800000
//! ms, the start of the year 10000 and as far before 1970); durations are
//! 1 ms to `i64::MAX` ms; a bucketed query is refused up front when its
//! series times the buckets its range holds exceed `limit`.

use ferry_core::record::{now_millis, Millis};

use super::ApiError;
use crate::query::bounds::{buckets_bound, clamp_time, MAX_TIME, MIN_TIME};

/// A time: milliseconds since the epoch (`1764000000000`), RFC 3339
/// (`2025-11-24T16:00:00Z`), `now`, or relative to now (`now-1h`, `-15m`);
/// clamped to the query range.
pub fn parse_time(name: &str, s: &str, now: Millis) -> Result<Millis, ApiError> {
    let s = s.trim();
    let bad = |why: &str| {
        ApiError::bad(format!(
            "`{name}={s}`: {why}; give milliseconds since the epoch, RFC 3339 \
             (2025-11-24T16:00:00Z), `now` or `now-1h`"
        ))
    };
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(clamp_time(ms));
    }
    // Milliseconds past the ends of i64: past the ends of the range too.
    let digits = s.strip_prefix('-').unwrap_or(s);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(if s.starts_with('-') {
            MIN_TIME
        } else {
            MAX_TIME
        });
    }
    if s == "now" {
        return Ok(clamp_time(now));
    }
    if let Some(rel) = s.strip_prefix("now-").or_else(|| s.strip_prefix('-')) {
        let d = duration_ms(rel).map_err(|why| ApiError::bad(format!("`{name}={s}`: {why}")))?;
        return Ok(clamp_time(now.saturating_sub(d)));
    }
    match humantime::parse_rfc3339_weak(s) {
        Ok(t) => match t.duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => Ok(clamp_time(
                Millis::try_from(d.as_millis()).unwrap_or(Millis::MAX),
            )),
            Err(_) => Err(bad("before 1970")),
        },
        Err(_) => Err(bad("not a time")),
    }
}

/// A positive duration: `500ms`, `1m`, `1h 30m`, or milliseconds (`60000`);
/// 1 ms to `i64::MAX` ms.
pub fn parse_duration_ms(name: &str, s: &str) -> Result<i64, ApiError> {
    duration_ms(s).map_err(|why| ApiError::bad(format!("`{name}={}`: {why}", s.trim())))
}

/// What is wrong with a duration, if anything.
fn duration_ms(s: &str) -> Result<i64, String> {
    let s = s.trim();
    let too_long = || format!("too long; at most {}ms", i64::MAX);
    let ms = match s.parse::<i64>() {
        Ok(ms) => ms,
        // Digits past i64: a number of milliseconds too large, not a typo.
        Err(_) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => return Err(too_long()),
        Err(_)
            if s.len() > 1 && s.starts_with('-') && s[1..].bytes().all(|b| b.is_ascii_digit()) =>
        {
            return Err("must be at least 1ms".to_owned())
        }
        Err(_) => match humantime::parse_duration(s) {
            Ok(d) => i64::try_from(d.as_millis()).map_err(|_| too_long())?,
            Err(humantime::DurationError::NumberOverflow) => return Err(too_long()),
            Err(e) => return Err(format!("not a duration ({e}); e.g. 1m, 30s, 500ms")),
        },
    };
    if ms <= 0 {
        return Err("must be at least 1ms".to_owned());
    }
    Ok(ms)
}

/// A count between 1 and `max`, `default` when absent.
pub fn parse_count(
    name: &str,
    s: Option<&str>,
    default: usize,
    max: usize,
) -> Result<usize, ApiError> {
    let Some(s) = s else {
        return Ok(default.min(max));
    };
    match s.trim().parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(ApiError::bad(format!(
            "`{name}={s}`: must be a whole number from 1 to {max}"
        ))),
    }
}

/// The time range of a query: `from` inclusive, `to` exclusive; default the
/// last hour. Both within the query range, and never `from > to`.
pub fn parse_range(
    from: Option<&str>,
    to: Option<&str>,
    now: Millis,
) -> Result<(Millis, Millis), ApiError> {
    let to = match to {
        Some(t) => parse_time("to", t, now)?,
        None => clamp_time(now.saturating_add(1)),
    };
    let from = match from {
        Some(f) => parse_time("from", f, now)?,
        None => clamp_time(to.saturating_sub(3_600_000)),
    };
    if from > to {
        return Err(ApiError::bad(format!(
            "`from` ({from}) is after `to` ({to})"
        )));
    }
    Ok((from, to))
}

pub fn now() -> Millis {
    now_millis()
}

/// The parameters of a query string (`a=1&b=2`), percent-decoded (`+` is a
/// space), in order; refused when longer than `max_bytes`, or not UTF-8
/// once decoded.
pub fn parse_pairs(raw: &str, max_bytes: usize) -> Result<Vec<(String, String)>, ApiError> {
    if raw.len() > max_bytes {
        return Err(ApiError::query_too_long(raw.len(), max_bytes));
    }
    let decode = |s: &str| {
        percent_decode(s).ok_or_else(|| {
            ApiError::bad("the query string is not valid UTF-8 once percent-decoded")
        })
    };
    raw.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            Ok((decode(k)?, decode(v)?))
        })
        .collect()
}

/// `s` with `+` as a space and `%XX` as its byte (a `%` without two hex
/// digits after it stays as it is); `None` if the bytes are not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        let hex = |j: usize| b.get(j).and_then(|h| (*h as char).to_digit(16));
        match c {
            b'+' => out.push(b' '),
            b'%' => match (hex(i + 1), hex(i + 2)) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// The parameter `name`, if given; given twice is an error.
pub fn one<'a>(params: &'a [(String, String)], name: &str) -> Result<Option<&'a str>, ApiError> {
    let mut it = params.iter().filter(|(k, _)| k == name);
    let first = it.next().map(|(_, v)| v.as_str());
    if it.next().is_some() {
        return Err(ApiError::bad(format!("`{name}` is given more than once")));
    }
    Ok(first)
}

/// Refuses a parameter not in `allowed`.
pub fn known(params: &[(String, String)], allowed: &[&str]) -> Result<(), ApiError> {
    for (k, _) in params {
        if !allowed.contains(&k.as_str()) {
            let takes = if allowed.is_empty() {
                "no parameters".to_owned()
            } else {
                allowed
                    .iter()
                    .map(|a| format!("`{a}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            return Err(ApiError::bad(format!(
                "unknown parameter `{k}`; this route takes {takes}"
            )));
        }
    }
    Ok(())
}

/// The bounds a query is checked against (from `[api]`).
#[derive(Debug, Clone, Copy)]
pub struct QueryLimits {
    /// `max_points`: the most points or buckets, and the most `limit`.
    pub max_points: usize,
    /// `max_series`: the most `series=` parameters.
    pub max_series: usize,
    /// `max_query_bytes`: the longest query string.
    pub max_query_bytes: usize,
}

/// A checked `GET /query`.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryRequest {
    /// Each series asked for, in order: (device, field).
    pub series: Vec<(String, String)>,
    /// Within the query range, `from <= to`.
    pub from: Millis,
    pub to: Millis,
    /// At least 1 ms.
    pub step: Option<i64>,
    /// 1 to `max_points`.
    pub limit: usize,
    /// With `step`: the most buckets the answer can hold (at most `limit`).
    pub buckets_bound: Option<u128>,
}

/// Parses and checks the query string of `GET /query` (`raw`: the part
/// after `?`) at time `now`: every bound before any work.
pub fn parse_query(
    raw: Option<&str>,
    now: Millis,
    limits: &QueryLimits,
) -> Result<QueryRequest, ApiError> {
    let params = parse_pairs(raw.unwrap_or(""), limits.max_query_bytes)?;
    known(&params, &["series", "from", "to", "step", "limit"])?;
    let mut series = Vec::new();
    for (_, name) in params.iter().filter(|(k, _)| k == "series") {
        if series.len() == limits.max_series {
            return Err(ApiError::too_many_series(limits.max_series));
        }
        let Some((device, field)) = name.split_once('/') else {
            return Err(ApiError::bad(format!(
                "`series={name}`: expected DEVICE/FIELD, e.g. `7/voltage`"
            )));
        };
        series.push((device.to_owned(), field.to_owned()));
    }
    if series.is_empty() {
        return Err(ApiError::bad(
            "`series` is required: one or more `series=DEVICE/FIELD`",
        ));
    }
    let (from, to) = parse_range(one(&params, "from")?, one(&params, "to")?, now)?;
    let step = one(&params, "step")?
        .map(|s| parse_duration_ms("step", s))
        .transpose()?;
    let limit = parse_count(
        "limit",
        one(&params, "limit")?,
        limits.max_points,
        limits.max_points,
    )?;
    let mut bound = None;
    if let Some(step) = step {
        let b = buckets_bound(series.len(), from, to, step);
        if b.is_none_or(|b| b > limit as u128) {
            let per = crate::query::bounds::bucket_count(from, to, step);
            return Err(ApiError::too_many_buckets(
                series.len(),
                per,
                b,
                step,
                limit,
            ));
        }
        bound = b;
    }
    Ok(QueryRequest {
        series,
        from,
        to,
        step,
        limit,
        buckets_bound: bound,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Millis = 1_764_000_000_000;
    const LIMITS: QueryLimits = QueryLimits {
        max_points: 1000,
        max_series: 3,
        max_query_bytes: 200,
    };

    #[test]
    fn times_in_every_form() {
        let now = NOW;
        assert_eq!(parse_time("from", "123", now).unwrap(), 123);
        assert_eq!(parse_time("from", "now", now).unwrap(), now);
        assert_eq!(parse_time("from", "now-1h", now).unwrap(), now - 3_600_000);
        assert_eq!(parse_time("from", "-90s", now).unwrap(), now - 90_000);
        assert_eq!(
            parse_time("from", "2025-11-24T16:00:00Z", now).unwrap(),
            1_764_000_000_000
        );
        let e = parse_time("from", "yesterday", now).unwrap_err();
        assert!(e.message.contains("`from=yesterday`"), "{}", e.message);
        assert!(parse_duration_ms("step", "0").is_err());
        assert!(parse_duration_ms("step", "1 fortnight").is_err());
        assert_eq!(parse_duration_ms("step", "1m").unwrap(), 60_000);
        assert!(parse_range(Some("10"), Some("5"), now).is_err());
        assert!(parse_count("limit", Some("0"), 10, 100).is_err());
        assert!(parse_count("limit", Some("101"), 10, 100).is_err());
    }

    #[test]
    fn times_are_clamped_to_the_query_range() {
        let min = i64::MIN.to_string();
        let max = i64::MAX.to_string();
        assert_eq!(parse_time("from", &min, NOW).unwrap(), MIN_TIME);
        assert_eq!(parse_time("from", &max, NOW).unwrap(), MAX_TIME);
        assert_eq!(
            parse_time("from", "-9223372036854775809", NOW).unwrap(),
            MIN_TIME
        );
        assert_eq!(
            parse_time("to", "99999999999999999999", NOW).unwrap(),
            MAX_TIME
        );
        assert_eq!(
            parse_time("from", &format!("now-{max}"), NOW).unwrap(),
            MIN_TIME
        );
        assert_eq!(parse_time("to", "now", i64::MAX).unwrap(), MAX_TIME);
        assert_eq!(
            parse_range(None, Some(&min), NOW).unwrap(),
            (MIN_TIME, MIN_TIME)
        );
        assert_eq!(
            parse_range(Some(&min), Some(&max), NOW).unwrap(),
            (MIN_TIME, MAX_TIME)
        );
        // A clock at the end of i64: the default range is still in order.
        assert_eq!(
            parse_range(None, None, i64::MAX).unwrap(),
            (MAX_TIME - 3_600_000, MAX_TIME)
        );
        assert_eq!(
            parse_range(Some(&max), None, NOW).unwrap_err().message,
            format!("`from` ({MAX_TIME}) is after `to` ({})", NOW + 1)
        );
    }

    #[test]
    fn durations_out_of_range_say_so() {
        for s in [
            "9223372036854775808",
            "99999999999999999999",
            "600000000000y",
        ] {
            assert_eq!(
                parse_duration_ms("step", s).unwrap_err().message,
                format!("`step={s}`: too long; at most 9223372036854775807ms")
            );
        }
        for s in ["0", "-1", "-9223372036854775809", "0s"] {
            assert_eq!(
                parse_duration_ms("step", s).unwrap_err().message,
                format!("`step={s}`: must be at least 1ms")
            );
        }
        assert_eq!(
            parse_duration_ms("step", &i64::MAX.to_string()).unwrap(),
            i64::MAX
        );
    }

    #[test]
    fn query_strings_decode_and_are_bounded() {
        assert_eq!(
            parse_pairs("a=1&&b=x+y%2Fz&c&d=%zz%", 100).unwrap(),
            [("a", "1"), ("b", "x y/z"), ("c", ""), ("d", "%zz%")]
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
        let e = parse_pairs("s=%FF", 100).unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (
                "bad_parameter",
                "the query string is not valid UTF-8 once percent-decoded"
            )
        );
        let e = parse_pairs(&"x".repeat(101), 100).unwrap_err();
        assert_eq!(
            (e.status.as_u16(), e.code, e.message.as_str()),
            (
                400,
                "query_too_long",
                "the query string is 101 bytes long; at most 100 ([api] max_query_bytes)"
            )
        );
    }

    #[test]
    fn a_query_is_checked_before_any_work() {
        let q = parse_query(
            Some("series=7/a&series=7/b/c&step=1m&from=0&to=600000"),
            NOW,
            &LIMITS,
        )
        .unwrap();
        assert_eq!(
            q,
            QueryRequest {
                series: vec![("7".into(), "a".into()), ("7".into(), "b/c".into())],
                from: 0,
                to: 600_000,
                step: Some(60_000),
                limit: 1000,
                buckets_bound: Some(20),
            }
        );
        let e = parse_query(
            Some("series=a/b&series=a/b&series=a/b&series=a/b"),
            NOW,
            &LIMITS,
        )
        .unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (
                "too_many_series",
                "more than 3 `series` parameters; at most 3 ([api] max_series)"
            )
        );
        let e = parse_query(
            Some("series=a/b&series=a/b&step=1&from=0&to=501"),
            NOW,
            &LIMITS,
        )
        .unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (
                "too_many_points",
                "the query could return up to 1002 buckets (2 series × 501 buckets of \
                 `step=1ms` from `from` to `to`), more than `limit` (1000): narrow the range, \
                 ask for fewer series or a larger `step`"
            )
        );
        // Exactly at the limit: admitted.
        let q = parse_query(
            Some("series=a/b&series=a/b&step=1&from=0&to=500"),
            NOW,
            &LIMITS,
        )
        .unwrap();
        assert_eq!(q.buckets_bound, Some(1000));
        let e = parse_query(Some("series=ab"), NOW, &LIMITS).unwrap_err();
        assert_eq!(
            e.message,
            "`series=ab`: expected DEVICE/FIELD, e.g. `7/voltage`"
        );
        let e = parse_query(None, NOW, &LIMITS).unwrap_err();
        assert_eq!(
            e.message,
            "`series` is required: one or more `series=DEVICE/FIELD`"
        );
    }
}
