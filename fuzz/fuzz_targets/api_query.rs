//! The query API's query-string parsing and its bounds, as `GET
//! /api/v1/query` runs them before any work: `api::parse_query` (the
//! query string's length, percent-decoding, known and repeated parameters,
//! the series cap, times, step, limit, and the bound on buckets), and the
//! bucket arithmetic of `query::bounds` that the engine then uses. No store.
//!
//! Beyond "no panic":
//! - an admitted query has `MIN_TIME <= from <= to <= MAX_TIME` (never a
//!   range that starts after it ends), a step of at least 1 ms, `1 <= limit
//!   <= max_points`, 1 to `max_series` series, each `DEVICE/FIELD` split at
//!   its first `/`, and a query string within `max_query_bytes`;
//! - with a step, its bound on buckets is `series × bucket_count`, is never
//!   above `limit` (the cost bound is never exceeded by what it admits),
//!   and holds: every time in `from..to` falls in a bucket whose start is a
//!   multiple of the step at or below it, between the buckets of `from` and
//!   `to - 1`, and those are exactly `bucket_count` buckets apart;
//! - a refused query is a 400 with one of the documented codes and a
//!   message, `query_too_long` exactly when the string is too long, and
//!   `too_many_series` only when more than `max_series` series are given;
//! - for any i64 times and step, `bucket_count` and `bucket_start` of times
//!   clamped to the query range never fail.
#![no_main]

use arbitrary::Unstructured;
use ferry_gateway::api::{parse_pairs, parse_query, QueryLimits};
use ferry_gateway::query::bounds::{
    bucket_count, bucket_start, buckets_bound, clamp_time, MAX_TIME, MIN_TIME,
};
use libfuzzer_sys::fuzz_target;

struct Input {
    now: i64,
    limits: QueryLimits,
    raw: Option<String>,
    probes: Vec<i64>,
    free: (i64, i64, i64),
}

/// The input: the query string up to the first newline (the seeds in
/// `fuzz/corpus/api_query/` are plain query strings), then the time, the
/// limits and the probes from the bytes after it (none: now in 2025 and the
/// default `[api]` limits).
fn input(data: &[u8]) -> arbitrary::Result<Input> {
    let (raw, rest) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let mut u = Unstructured::new(rest);
    let raw = match raw {
        b"-" => None,
        raw => Some(String::from_utf8_lossy(raw).into_owned()),
    };
    let now = match u.int_in_range(0..=3)? {
        0 => 1_764_000_000_000 + i64::from(u.arbitrary::<i32>()?),
        1 => i64::MIN,
        2 => i64::MAX,
        _ => u.arbitrary()?,
    };
    let limits = QueryLimits {
        max_points: 100_000 - u.int_in_range(0..=99_999)?,
        max_series: 256 - u.int_in_range(0..=255)?,
        max_query_bytes: 32_768 - u.int_in_range(0..=32_767)?,
    };
    let probes = (0..u.int_in_range(0..=8)?)
        .map(|_| u.arbitrary())
        .collect::<arbitrary::Result<_>>()?;
    let free = u.arbitrary()?;
    Ok(Input {
        now,
        limits,
        raw,
        probes,
        free,
    })
}

const CODES: &[&str] = &[
    "bad_parameter",
    "too_many_points",
    "too_many_series",
    "query_too_long",
];

fuzz_target!(|data: &[u8]| {
    let Ok(inp) = input(data) else {
        return;
    };
    let limits = inp.limits;
    let raw = inp.raw.as_deref();
    let len = raw.map_or(0, str::len);
    let series_given = parse_pairs(raw.unwrap_or(""), usize::MAX)
        .map_or(0, |p| p.iter().filter(|(k, _)| k == "series").count());
    match parse_query(raw, inp.now, &limits) {
        Ok(q) => {
            assert!(len <= limits.max_query_bytes);
            assert!(
                MIN_TIME <= q.from && q.from <= q.to && q.to <= MAX_TIME,
                "{q:?}"
            );
            assert!((1..=limits.max_points).contains(&q.limit), "{q:?}");
            assert!((1..=limits.max_series).contains(&q.series.len()), "{q:?}");
            for (device, _) in &q.series {
                assert!(!device.contains('/'), "split at the first /: {q:?}");
            }
            match q.step {
                None => assert_eq!(q.buckets_bound, None),
                Some(step) => {
                    assert!(step >= 1);
                    let per = bucket_count(q.from, q.to, step).expect("fits in the range");
                    let bound = q.buckets_bound.expect("a bound with a step");
                    assert_eq!(bound, q.series.len() as u128 * u128::from(per));
                    assert!(bound <= q.limit as u128, "admitted over the limit: {q:?}");
                    if q.from < q.to {
                        let first = bucket_start(q.from, step).expect("fits");
                        let last = bucket_start(q.to - 1, step).expect("fits");
                        assert_eq!(
                            i128::from(last) - i128::from(first),
                            i128::from(step) * (i128::from(per) - 1),
                            "{q:?}"
                        );
                        let span = i128::from(q.to) - i128::from(q.from);
                        for p in &inp.probes {
                            let ts = q.from + (i128::from(*p).rem_euclid(span) as i64);
                            let b = bucket_start(ts, step).expect("fits");
                            assert!(b <= ts && i128::from(ts) - i128::from(b) < i128::from(step));
                            assert!(first <= b && b <= last, "{ts} in {b}: {q:?}");
                            assert_eq!(b.rem_euclid(step), 0);
                        }
                    } else {
                        assert_eq!(per, 0);
                    }
                }
            }
        }
        Err(e) => {
            assert_eq!(e.status.as_u16(), 400, "{e:?}");
            assert!(CODES.contains(&e.code), "{e:?}");
            assert!(!e.message.is_empty());
            assert_eq!(
                e.code == "query_too_long",
                len > limits.max_query_bytes,
                "{e:?}"
            );
            if e.code == "too_many_series" {
                assert!(series_given > limits.max_series, "{e:?}");
            }
        }
    }
    // Any i64 times and step, clamped as the engine clamps them.
    let (a, b, step) = inp.free;
    let (from, to) = (clamp_time(a), clamp_time(b));
    if step >= 1 {
        let n = bucket_count(from, to, step).expect("fits within the range");
        assert!(n <= (2 * MAX_TIME as u64) / step as u64 + 2);
        assert!(bucket_start(from, step).is_some() && bucket_start(to, step).is_some());
        assert!(buckets_bound(usize::MAX, from, to, step).is_some());
    } else {
        assert_eq!(bucket_count(from, to, step), None);
        assert_eq!(bucket_start(from, step), None);
    }
});
