//! Parsing and checking query parameters.

use ferry_adapters::record::{now_millis, Millis};

use super::ApiError;

/// A time: milliseconds since the epoch (`1764000000000`), RFC 3339
/// (`2025-11-24T16:00:00Z`), `now`, or relative to now (`now-1h`, `-15m`).
pub fn parse_time(name: &str, s: &str, now: Millis) -> Result<Millis, ApiError> {
    let s = s.trim();
    let bad = |why: &str| {
        ApiError::bad(format!(
            "`{name}={s}`: {why}; give milliseconds since the epoch, RFC 3339 \
             (2025-11-24T16:00:00Z), `now` or `now-1h`"
        ))
    };
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    if s == "now" {
        return Ok(now);
    }
    if let Some(rel) = s.strip_prefix("now-").or_else(|| s.strip_prefix('-')) {
        let d = parse_duration_ms(name, rel)?;
        return Ok(now.saturating_sub(d));
    }
    match humantime::parse_rfc3339_weak(s) {
        Ok(t) => match t.duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => Ok(d.as_millis() as Millis),
            Err(_) => Err(bad("before 1970")),
        },
        Err(_) => Err(bad("not a time")),
    }
}

/// A positive duration: `500ms`, `1m`, `1h 30m`, or milliseconds (`60000`).
pub fn parse_duration_ms(name: &str, s: &str) -> Result<i64, ApiError> {
    let s = s.trim();
    let ms = match s.parse::<i64>() {
        Ok(ms) => ms,
        Err(_) => humantime::parse_duration(s)
            .map_err(|e| {
                ApiError::bad(format!(
                    "`{name}={s}`: not a duration ({e}); e.g. 1m, 30s, 500ms"
                ))
            })?
            .as_millis()
            .try_into()
            .map_err(|_| ApiError::bad(format!("`{name}={s}`: too long")))?,
    };
    if ms <= 0 {
        return Err(ApiError::bad(format!("`{name}={s}`: must be at least 1ms")));
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
/// last hour.
pub fn parse_range(
    from: Option<&str>,
    to: Option<&str>,
    now: Millis,
) -> Result<(Millis, Millis), ApiError> {
    let to = match to {
        Some(t) => parse_time("to", t, now)?,
        None => now.saturating_add(1),
    };
    let from = match from {
        Some(f) => parse_time("from", f, now)?,
        None => to.saturating_sub(3_600_000),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_in_every_form() {
        let now = 1_764_000_000_000;
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
}
