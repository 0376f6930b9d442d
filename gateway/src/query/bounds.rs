//! The range of query times and the arithmetic of output buckets, checked:
//! pure functions the engine and the API share (and `fuzz/fuzz_targets/
//! api_query.rs` drives).
//!
//! A query's times are clamped to [`MIN_TIME`]`..=`[`MAX_TIME`] (the start
//! of the year 10000, and as far before 1970): every timestamp an MQTT
//! payload may carry (1970 to 9999) is inside, and within it every bucket
//! computation fits an `i64` for any step from 1 ms to `i64::MAX` ms (see
//! [`bucket_start`]).

use ferry_core::record::Millis;

/// The latest time a query can name: 10000-01-01T00:00:00Z, in ms.
pub const MAX_TIME: Millis = 253_402_300_800_000;
/// The earliest time a query can name: as far before 1970 as [`MAX_TIME`]
/// is after it (a clock before 1970 stamps records with negative times).
pub const MIN_TIME: Millis = -MAX_TIME;

/// `t` within [`MIN_TIME`]`..=`[`MAX_TIME`].
pub fn clamp_time(t: Millis) -> Millis {
    t.clamp(MIN_TIME, MAX_TIME)
}

/// The start of the output bucket of `step` ms that holds `ts`: the
/// multiple of `step` at or below it. `None` when `step < 1`, or when the
/// start does not fit an `i64` — which cannot happen for `ts` within the
/// query range: the start is `ts` itself or above `ts - step` for
/// `|ts| >= step`, so at least `-2 * MAX_TIME`, and `-step` for `|ts| < step`.
pub fn bucket_start(ts: Millis, step: i64) -> Option<Millis> {
    if step < 1 {
        return None;
    }
    ts.checked_div_euclid(step)?.checked_mul(step)
}

/// How many output buckets of `step` ms the range `from..to` meets (0 when
/// it is empty): the most buckets a series can answer for it. `None` when
/// `step < 1` or the count does not fit (never for times within the query
/// range).
pub fn bucket_count(from: Millis, to: Millis, step: i64) -> Option<u64> {
    if step < 1 {
        return None;
    }
    if from >= to {
        return Some(0);
    }
    let first = from.checked_div_euclid(step)?;
    let last = to.checked_sub(1)?.checked_div_euclid(step)?;
    u64::try_from(last.checked_sub(first)?).ok()?.checked_add(1)
}

/// The most buckets `series` series can answer over `from..to` in steps of
/// `step`: `series × bucket_count`, in `u128` so that it cannot overflow.
pub fn buckets_bound(series: usize, from: Millis, to: Millis, step: i64) -> Option<u128> {
    let per = bucket_count(from, to, step)?;
    u128::try_from(series).ok()?.checked_mul(u128::from(per))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_at_the_ends_of_the_range_and_of_i64() {
        assert_eq!(clamp_time(i64::MIN), MIN_TIME);
        assert_eq!(clamp_time(i64::MAX), MAX_TIME);
        for step in [
            1,
            7,
            60_000,
            MAX_TIME,
            2 * MAX_TIME + 1,
            i64::MAX - 1,
            i64::MAX,
        ] {
            for ts in [MIN_TIME, MIN_TIME + 1, -1, 0, 1, MAX_TIME - 1, MAX_TIME] {
                let start = bucket_start(ts, step).expect("fits within the range");
                assert!(start <= ts && ts - start < step, "ts {ts} step {step}");
                assert_eq!(start.rem_euclid(step), 0);
            }
            let n = bucket_count(MIN_TIME, MAX_TIME, step).unwrap();
            assert!(n >= 1 && n <= (2 * MAX_TIME / step + 2) as u64, "{n}");
        }
        assert_eq!(bucket_start(i64::MIN, i64::MAX), None, "outside the range");
        assert_eq!(bucket_start(5, 0), None);
        assert_eq!(bucket_start(5, -3), None);
        assert_eq!(bucket_count(i64::MIN, i64::MAX, 1), None, "does not fit");
        assert_eq!(bucket_count(0, 0, 1), Some(0));
        assert_eq!(bucket_count(5, 4, 1), Some(0));
        assert_eq!(bucket_count(0, 1, 1), Some(1));
        assert_eq!(bucket_count(-1, 1, 10), Some(2), "[-10, 0) and [0, 10)");
        assert_eq!(bucket_count(0, 60_000, 60_000), Some(1));
        assert_eq!(bucket_count(0, 60_001, 60_000), Some(2));
        assert_eq!(bucket_count(MIN_TIME, MAX_TIME, i64::MAX), Some(2));
        assert_eq!(
            bucket_count(MIN_TIME, MAX_TIME, 1),
            Some(2 * MAX_TIME as u64)
        );
        assert_eq!(
            buckets_bound(usize::MAX, MIN_TIME, MAX_TIME, 1),
            Some(usize::MAX as u128 * (2 * MAX_TIME) as u128)
        );
    }
}
