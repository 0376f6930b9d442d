use proptest::prelude::*;

use super::*;

fn span(table: Table, start: u16, count: u16) -> Span {
    Span {
        table,
        start,
        count,
    }
}

const LIMITS: Limits = Limits {
    max_gap: 0,
    max_registers: 125,
};

#[test]
fn neighbours_merge_gaps_split() {
    let spans = [
        span(Table::Holding, 100, 2),
        span(Table::Holding, 102, 2),
        span(Table::Holding, 105, 1),
        span(Table::Input, 0, 4),
        span(Table::Coil, 3, 1),
        span(Table::Coil, 4, 1),
    ];
    let requests = plan(&spans, LIMITS);
    let summary: Vec<_> = requests
        .iter()
        .map(|r| (r.table, r.start, r.count, r.fields.clone()))
        .collect();
    assert_eq!(
        summary,
        [
            (Table::Coil, 3, 2, vec![4, 5]),
            (Table::Holding, 100, 4, vec![0, 1]),
            (Table::Holding, 105, 1, vec![2]),
            (Table::Input, 0, 4, vec![3]),
        ]
    );
    let with_gap = plan(
        &spans,
        Limits {
            max_gap: 1,
            ..LIMITS
        },
    );
    assert_eq!(with_gap[1].start, 100);
    assert_eq!(with_gap[1].count, 6);
    assert_eq!(with_gap[1].fields, [0, 1, 2]);
}

#[test]
fn requests_stop_at_the_limit() {
    // 63 f32 values in a row: 126 registers, one more than a request holds.
    let spans: Vec<Span> = (0..63).map(|i| span(Table::Input, i * 2, 2)).collect();
    let requests = plan(&spans, LIMITS);
    assert_eq!(requests.len(), 2);
    assert_eq!((requests[0].start, requests[0].count), (0, 124));
    assert_eq!((requests[1].start, requests[1].count), (124, 2));
    let small = plan(
        &spans,
        Limits {
            max_gap: 0,
            max_registers: 10,
        },
    );
    assert_eq!(small.len(), 13);
    assert!(small.iter().all(|r| r.count <= 10));
    // Bits: 2000 per request.
    let bits: Vec<Span> = (0..2001).map(|i| span(Table::Coil, i, 1)).collect();
    let requests = plan(&bits, LIMITS);
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].count, 2000);
}

#[test]
fn bits_of_one_register_share_it() {
    let spans = [
        span(Table::Holding, 7, 1),
        span(Table::Holding, 7, 1),
        span(Table::Holding, 8, 2),
    ];
    let requests = plan(&spans, LIMITS);
    assert_eq!(requests.len(), 1);
    assert_eq!((requests[0].start, requests[0].count), (7, 3));
    assert_eq!(requests[0].fields, [0, 1, 2]);
}

#[test]
fn the_top_of_the_address_space() {
    let spans = [
        span(Table::Holding, 65532, 4),
        span(Table::Holding, 65530, 2),
    ];
    let requests = plan(&spans, LIMITS);
    assert_eq!(requests.len(), 1);
    assert_eq!((requests[0].start, requests[0].count), (65530, 6));
}

/// The fewest requests that can cover `spans` (all of one table, sorted by
/// address) under `limits`: an exhaustive search over splits of the sorted
/// list into runs.
fn fewest(spans: &[Span], limits: Limits) -> usize {
    let n = spans.len();
    let mut best = vec![usize::MAX; n + 1];
    best[0] = 0;
    for end in 1..=n {
        for start in 0..end {
            if best[start] == usize::MAX {
                continue;
            }
            let run = &spans[start..end];
            let first = u32::from(run[0].start);
            let last = run.iter().map(Span::end).max().unwrap_or(first);
            let fits = last - first <= u32::from(limits.max_count(run[0].table));
            let mut reach = run[0].end();
            let mut gaps_ok = true;
            for s in &run[1..] {
                gaps_ok &= u32::from(s.start).saturating_sub(reach) <= u32::from(limits.max_gap);
                reach = reach.max(s.end());
            }
            if fits && gaps_ok {
                best[end] = best[end].min(best[start] + 1);
            }
        }
    }
    best[n]
}

/// Valid maps: per table, entries laid out left to right with random gaps,
/// sometimes a second bit of the previous one-register entry; then shuffled.
fn maps() -> impl Strategy<Value = (Limits, Vec<Span>)> {
    (0u16..12, 1u16..=125).prop_flat_map(|(max_gap, max_registers)| {
        let limits = Limits {
            max_gap,
            max_registers,
        };
        let entry = (0usize..4, 0u16..20, 1u16..=8, any::<bool>());
        (
            Just(limits),
            prop::collection::vec(entry, 0..40),
            0u16..65_000,
            any::<u64>(),
        )
            .prop_map(|(limits, entries, base, seed)| {
                let mut next = [u32::from(base); 4];
                let mut spans: Vec<Span> = Vec::new();
                for (t, gap, count, repeat) in entries {
                    let table = Table::ALL[t];
                    let count = count.min(limits.max_count(table));
                    let prev = spans.iter().rev().find(|s| s.table == table).copied();
                    if let (true, Some(p)) = (repeat, prev) {
                        if p.count == 1 && !table.is_bits() {
                            spans.push(p);
                            continue;
                        }
                    }
                    let start = next[t] + u32::from(gap);
                    if start + u32::from(count) > 65_536 {
                        continue;
                    }
                    spans.push(span(table, start as u16, count));
                    next[t] = start + u32::from(count);
                }
                fastrand::Rng::with_seed(seed).shuffle(&mut spans);
                (limits, spans)
            })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn every_entry_is_read_by_exactly_one_request_within_limits((limits, spans) in maps()) {
        let requests = plan(&spans, limits);
        let mut seen = vec![0usize; spans.len()];
        for r in &requests {
            prop_assert!(r.count >= 1);
            prop_assert!(r.count <= limits.max_count(r.table));
            prop_assert!(r.end() <= 65_536);
            prop_assert!(!r.fields.is_empty());
            for &i in &r.fields {
                seen[i] += 1;
                let s = spans[i];
                prop_assert_eq!(s.table, r.table);
                prop_assert!(s.start >= r.start && s.end() <= r.end(),
                    "span {:?} outside request {:?}", s, r);
            }
            // No address read that no entry needs at either end.
            prop_assert!(r.fields.iter().any(|&i| spans[i].start == r.start));
            prop_assert!(r.fields.iter().any(|&i| spans[i].end() == r.end()));
            // Gaps inside a request are at most max_gap.
            let mut inside: Vec<Span> = r.fields.iter().map(|&i| spans[i]).collect();
            inside.sort_by_key(|s| s.start);
            let mut reach = inside[0].end();
            for s in &inside[1..] {
                prop_assert!(u32::from(s.start).saturating_sub(reach) <= u32::from(limits.max_gap));
                reach = reach.max(s.end());
            }
        }
        prop_assert!(seen.iter().all(|&n| n == 1), "coverage {:?}", seen);
        // Requests of one table do not overlap.
        for (a, b) in requests.iter().zip(requests.iter().skip(1)) {
            if a.table == b.table {
                prop_assert!(a.end() <= u32::from(b.start));
            }
        }
    }

    #[test]
    fn no_plan_has_fewer_requests((limits, spans) in maps()) {
        let requests = plan(&spans, limits);
        for table in Table::ALL {
            let mut of_table: Vec<Span> = spans.iter().copied().filter(|s| s.table == table).collect();
            of_table.sort_by_key(|s| (s.start, s.end()));
            let planned = requests.iter().filter(|r| r.table == table).count();
            prop_assert_eq!(planned, fewest(&of_table, limits));
        }
    }
}
