//! Routes: deadband and windows with exact outputs on plain data, late and
//! too-late records, a restart in the middle (state through its stored
//! form), and the route task committing output, state and cursor together.

use std::path::Path;
use std::time::Duration;

use ferry_core::record::{Record, Value};
use ferry_core::sink::Item;
use ferry_gateway::config::{Config, RouteConfig};
use ferry_gateway::metrics::{IngestMetrics, PipelineMetrics};
use ferry_gateway::route::{cursor_name, spawn_route, Dropped, Route};
use ferry_gateway::store::{Store, StoreOptions, Stream, Writer, WriterSettings};
use tokio_util::sync::CancellationToken;

fn route_config(route: &str) -> RouteConfig {
    let text = format!("[sources.local]\ntype = \"mqtt_broker\"\n[routes.r]\n{route}");
    let mut c = Config::from_toml(&text, Path::new("t.toml")).unwrap_or_else(|e| panic!("{e}"));
    c.routes.remove("r").unwrap()
}

fn rec(ts: i64, device: &str, fields: &[(&str, Value)]) -> Record {
    Record {
        ts,
        source: "local".into(),
        device: device.into(),
        fields: fields
            .iter()
            .map(|(n, v)| (Box::from(*n), v.clone()))
            .collect(),
    }
}

fn t(ts: i64, device: &str, x: f64) -> Record {
    rec(ts, device, &[("t", Value::Float(x))])
}

fn run(route: &mut Route, input: &[Record]) -> (Vec<Record>, Dropped) {
    let mut out = Vec::new();
    let mut dropped = Dropped::default();
    for r in input {
        route.push(r, &mut out, &mut dropped);
    }
    (out, dropped)
}

fn fields(r: &Record) -> Vec<(String, Value)> {
    r.fields
        .iter()
        .map(|(n, v)| (n.to_string(), v.clone()))
        .collect()
}

fn f(name: &str, v: f64) -> (String, Value) {
    (name.to_owned(), Value::Float(v))
}

const MIN: i64 = 60_000;

/// (ts, device, fields) of an output record.
type Row<'a> = (i64, &'a str, Vec<(String, Value)>);

#[test]
fn tumbling_windows_per_device_with_every_aggregate() {
    let cfg = route_config(
        "window = { size = \"1m\", aggregates = [\"count\", \"min\", \"max\", \"mean\", \"sum\", \"first\", \"last\", \"stddev\"] }\n",
    );
    let mut route = Route::new("r", cfg, Default::default());
    let input = vec![
        t(0, "a", 2.0),
        rec(
            10_000,
            "a",
            &[("t", Value::Int(4)), ("s", Value::Str("x".into()))],
        ),
        t(20_000, "b", 10.0),
        t(59_999, "a", 6.0),
        t(MIN, "a", 1.0), // closes [0, 1m) for both devices
        t(2 * MIN + 5, "b", 3.0),
    ];
    let (out, dropped) = run(&mut route, &input);
    assert_eq!(dropped, Dropped::default());
    assert_eq!(out.len(), 3, "{out:#?}");
    assert_eq!((out[0].ts, &*out[0].device, &*out[0].source), (0, "a", "r"));
    assert_eq!(
        fields(&out[0]),
        vec![
            ("t_count".to_owned(), Value::Int(3)),
            f("t_min", 2.0),
            f("t_max", 6.0),
            f("t_mean", 4.0),
            f("t_sum", 12.0),
            f("t_first", 2.0),
            f("t_last", 6.0),
            f("t_stddev", (8.0f64 / 3.0).sqrt()),
        ]
    );
    assert_eq!((out[1].ts, &*out[1].device), (0, "b"));
    assert_eq!(out[1].fields[0], ("t_count".into(), Value::Int(1)));
    assert_eq!((out[2].ts, &*out[2].device), (MIN, "a"));
    assert_eq!(out[2].fields[1], ("t_min".into(), Value::Float(1.0)));
}

#[test]
fn a_record_stamped_outside_time_does_not_stop_a_window() {
    // Only damage makes one (sources stamp 1970 to 9999): were it routed, the
    // watermark would jump to the end of time and every later record would
    // be too late, for good (the watermark is part of the stored state).
    let cfg = route_config("window = { size = \"1m\", aggregates = [\"count\"] }\n");
    let mut route = Route::new("r", cfg, Default::default());
    let input = vec![
        t(1_000, "a", 1.0),
        t(i64::MAX, "a", 2.0),
        t(i64::MIN, "a", 3.0),
        t(2_000, "a", 4.0),
        t(MIN + 1_000, "a", 5.0), // closes [0,1m): the two good records
    ];
    let (out, dropped) = run(&mut route, &input);
    assert_eq!(
        dropped,
        Dropped {
            bad_time: 2,
            ..Dropped::default()
        }
    );
    let got: Vec<(i64, Vec<(String, Value)>)> = out.iter().map(|r| (r.ts, fields(r))).collect();
    assert_eq!(got, vec![(0, vec![("t_count".into(), Value::Int(2))])]);
}

#[test]
fn late_records_within_grace_get_their_own_window_later_ones_are_dropped() {
    let cfg = route_config(
        "window = { size = \"1m\", aggregates = [\"count\", \"sum\"], grace = \"30s\" }\n",
    );
    let mut route = Route::new("r", cfg, Default::default());
    let input = vec![
        t(1_000, "a", 1.0),
        t(MIN + 1_000, "a", 2.0),  // closes [0,1m): count 1
        t(50_000, "a", 10.0),      // late, within grace (watermark 61s < 90s)
        t(55_000, "a", 20.0),      // late, same late window
        t(MIN + 30_000, "a", 3.0), // watermark 90s: the late window [0,1m) is due
        t(2_000, "a", 99.0),       // too late
        t(2 * MIN, "a", f64::NAN), // closes [1m,2m); NaN skipped
    ];
    let (out, dropped) = run(&mut route, &input);
    assert_eq!(
        dropped,
        Dropped {
            too_late: 1,
            not_finite: 1,
            bad_time: 0,
        }
    );
    let got: Vec<(i64, Vec<(String, Value)>)> = out.iter().map(|r| (r.ts, fields(r))).collect();
    assert_eq!(
        got,
        vec![
            (
                0,
                vec![("t_count".to_owned(), Value::Int(1)), f("t_sum", 1.0)]
            ),
            (
                0,
                vec![
                    ("t_count".to_owned(), Value::Int(2)),
                    f("t_sum", 30.0),
                    ("late".to_owned(), Value::Bool(true))
                ]
            ),
            (
                MIN,
                vec![("t_count".to_owned(), Value::Int(2)), f("t_sum", 5.0)]
            ),
        ]
    );
}

#[test]
fn deadband_absolute_relative_heartbeat_and_strings() {
    let cfg = route_config("deadband = { absolute = 1.0, heartbeat = \"1m\" }\n");
    let mut route = Route::new("r", cfg, Default::default());
    let input = vec![
        rec(
            0,
            "a",
            &[("t", Value::Float(20.0)), ("s", Value::Str("on".into()))],
        ),
        rec(
            1_000,
            "a",
            &[("t", Value::Float(20.9)), ("s", Value::Str("on".into()))],
        ),
        rec(
            2_000,
            "a",
            &[("t", Value::Float(21.5)), ("s", Value::Str("off".into()))],
        ),
        rec(3_000, "b", &[("t", Value::Float(21.0))]),
        rec(4_000, "a", &[("t", Value::Float(f64::INFINITY))]),
        rec(62_000, "a", &[("t", Value::Float(21.4))]), // heartbeat since 2s
        rec(63_000, "a", &[("t", Value::Int(20))]),     // moved 1.4
    ];
    let (out, dropped) = run(&mut route, &input);
    assert_eq!(dropped.not_finite, 1);
    let got: Vec<Row> = out.iter().map(|r| (r.ts, &*r.device, fields(r))).collect();
    assert_eq!(
        got,
        vec![
            (
                0,
                "a",
                vec![f("t", 20.0), ("s".to_owned(), Value::Str("on".into()))]
            ),
            (
                2_000,
                "a",
                vec![f("t", 21.5), ("s".to_owned(), Value::Str("off".into()))]
            ),
            (3_000, "b", vec![f("t", 21.0)]),
            (62_000, "a", vec![f("t", 21.4)]),
            (63_000, "a", vec![("t".to_owned(), Value::Int(20))]),
        ]
    );

    let cfg = route_config("deadband = { relative = 0.1 }\n");
    let mut route = Route::new("r", cfg, Default::default());
    let (out, _) = run(
        &mut route,
        &[
            t(0, "a", 100.0),
            t(1, "a", 109.0),
            t(2, "a", 111.0),
            t(3, "a", 100.5),
        ],
    );
    let ts: Vec<i64> = out.iter().map(|r| r.ts).collect();
    assert_eq!(
        ts,
        vec![0, 2],
        "100 -> 111 moved 11%; 111 -> 100.5 moved 9.5%"
    );
}

#[test]
fn select_then_deadband_then_window() {
    let cfg = route_config(
        "devices = [\"a\"]\nfields = [\"t\"]\ndeadband = { absolute = 0.5 }\n\
         window = { size = \"1m\", aggregates = [\"count\", \"mean\"] }\n",
    );
    let mut route = Route::new("r", cfg, Default::default());
    let input = vec![
        rec(0, "a", &[("t", Value::Float(1.0)), ("v", Value::Int(5))]),
        rec(1, "a", &[("t", Value::Float(1.2))]), // within deadband
        rec(2, "a", &[("v", Value::Int(5))]),     // no selected field
        t(3, "b", 50.0),                          // other device
        t(4, "a", 3.0),
        t(MIN, "a", 3.1),
    ];
    let (out, _) = run(&mut route, &input);
    assert_eq!(out.len(), 1);
    assert_eq!(
        fields(&out[0]),
        vec![("t_count".to_owned(), Value::Int(2)), f("t_mean", 2.0)]
    );
}

/// Stopping anywhere, storing the state and resuming from it gives exactly
/// the output of an uninterrupted run.
#[test]
fn a_restart_anywhere_gives_the_uninterrupted_output() {
    let cfg = route_config(
        "deadband = { absolute = 0.2, heartbeat = \"45s\" }\n\
         window = { size = \"1m\", aggregates = [\"count\", \"mean\", \"stddev\", \"first\", \"last\"], grace = \"20s\" }\n",
    );
    let input: Vec<Record> = (0..600)
        .map(|i| {
            // Mostly in order, every 7th record 50 s late, every 13th 3 min late.
            let mut ts = i * 1_700;
            if i % 7 == 3 {
                ts -= 50_000;
            }
            if i % 13 == 5 {
                ts -= 180_000;
            }
            t(
                ts.max(0),
                ["a", "b", "c"][(i % 3) as usize],
                ((i * 37) % 101) as f64 / 7.0,
            )
        })
        .collect();
    let mut whole = Route::new("r", cfg.clone(), Default::default());
    let (expected, expected_dropped) = run(&mut whole, &input);
    assert!(expected.len() > 20 && expected_dropped.too_late > 0);
    assert!(expected.iter().any(|r| r.field("late").is_some()));
    for cut in (1..input.len()).step_by(7) {
        let mut first = Route::new("r", cfg.clone(), Default::default());
        let (mut out, mut dropped) = run(&mut first, &input[..cut]);
        let stored = first.encode_state();
        let mut second = Route::new("r", cfg.clone(), Route::decode_state(&stored).unwrap());
        let (rest, d2) = run(&mut second, &input[cut..]);
        out.extend(rest);
        dropped.too_late += d2.too_late;
        dropped.not_finite += d2.not_finite;
        assert_eq!(out, expected, "cut at {cut}");
        assert_eq!(dropped, expected_dropped);
    }
}

/// The task on a real store, in paused time: output, state and cursor are
/// committed together; a restarted task resumes from them.
#[tokio::test(start_paused = true)]
async fn the_task_commits_output_state_and_cursor_together_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("ferry.redb"), &StoreOptions::default()).unwrap();
    let ingest = Writer::spawn(
        store.clone(),
        WriterSettings::default().with_commit_interval(Duration::from_millis(10)),
        IngestMetrics::new(),
    );
    let cfg =
        route_config("batch_records = 3\nwindow = { size = \"1m\", aggregates = [\"sum\"] }\n");
    let metrics = PipelineMetrics::new();
    let stream = Stream::Route("r".into());
    let submit = |recs: Vec<Record>| {
        let sink = ingest.sink.clone();
        async move {
            sink.submit_and_wait(recs.into_iter().map(Item::Record).collect())
                .await
                .unwrap()
        }
    };
    let wait_for = |head: u64| {
        let store = store.clone();
        let stream = stream.clone();
        async move {
            let mut heads = store.watch_heads();
            while store.stream_head(&stream).unwrap() < head {
                heads.changed().await.unwrap();
            }
        }
    };

    let cancel = CancellationToken::new();
    let task = spawn_route(
        "r",
        cfg.clone(),
        store.clone(),
        ingest.routes.clone(),
        metrics.clone(),
        cancel.clone(),
    );
    submit((0..10).map(|i| t(i * 10_000, "a", 1.0)).collect()).await; // ts 0..90s
    wait_for(1).await;
    cancel.cancel();
    task.await.unwrap();
    // Whatever the task committed last, its cursor and state go together.
    let cursor = store.cursor(&cursor_name("r")).unwrap();
    assert!(cursor > 0);

    let cancel = CancellationToken::new();
    let task = spawn_route(
        "r",
        cfg,
        store.clone(),
        ingest.routes.clone(),
        metrics.clone(),
        cancel.clone(),
    );
    submit(vec![t(3 * MIN, "a", 5.0)]).await;
    wait_for(2).await;
    let mut out = Vec::new();
    store.read_stream(&stream, 0, 10, &mut out).unwrap();
    let got: Vec<(u64, i64, Value)> = out
        .iter()
        .map(|s| (s.seq, s.record.ts, s.record.fields[0].1.clone()))
        .collect();
    assert_eq!(
        got,
        vec![(1, 0, Value::Float(6.0)), (2, MIN, Value::Float(4.0))]
    );
    assert_eq!(store.cursor(&cursor_name("r")).unwrap(), 11);
    cancel.cancel();
    task.await.unwrap();
    tokio::time::sleep(Duration::from_millis(1)).await;
}

/// A minute boundary in device time for the clock tests.
const T0: i64 = 1_700_000_040_000;

#[test]
fn the_clock_closes_windows_when_the_records_stop_and_later_ones_are_too_late() {
    let cfg = route_config(
        "window = { size = \"1m\", aggregates = [\"count\", \"sum\"], grace = \"10s\" }\n",
    );
    let mut route = Route::new("r", cfg, Default::default());
    let (out, _) = run(
        &mut route,
        &[t(T0 + 5_000, "a", 1.0), t(T0 + 20_000, "a", 2.0)],
    );
    assert!(out.is_empty());
    assert_eq!(route.next_due(), None, "no wall time noted yet");
    // Read at wall time W: the watermark (T0 + 20 s) is anchored there, so
    // the window's end + grace (T0 + 70 s) is due 50 s later.
    const W: i64 = 5_000_000;
    route.anchor(W);
    assert_eq!(route.next_due(), Some(W + 50_000));
    let mut out = Vec::new();
    route.tick(W + 49_999, &mut out);
    assert!(out.is_empty());
    route.tick(W + 50_000, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].ts, &*out[0].device), (T0, "a"));
    assert_eq!(
        fields(&out[0]),
        vec![("t_count".to_owned(), Value::Int(2)), f("t_sum", 3.0)]
    );
    assert_eq!(route.next_due(), None);
    // The window is closed for good: a reading for it now is too late (the
    // record watermark alone would have taken it); a later one opens the next.
    let (out, dropped) = run(
        &mut route,
        &[t(T0 + 30_000, "a", 9.0), t(T0 + 65_000, "b", 4.0)],
    );
    assert!(out.is_empty());
    assert_eq!(dropped.too_late, 1);
    route.anchor(W + 60_000);
    assert_eq!(route.next_due(), Some(W + 60_000 + 5_000 + 60_000));
}

#[test]
fn the_clock_closes_late_windows_at_end_plus_grace_too() {
    let cfg =
        route_config("window = { size = \"1m\", aggregates = [\"count\"], grace = \"30s\" }\n");
    let mut route = Route::new("r", cfg, Default::default());
    let input = [
        t(T0 + 5_000, "a", 1.0),
        t(T0 + 61_000, "a", 2.0), // closes [T0, T0 + 1m) by record time
        t(T0 + 50_000, "a", 3.0), // late, within grace: its own window
    ];
    let (out, _) = run(&mut route, &input);
    assert_eq!(out.len(), 1);
    route.anchor(0);
    // The late window is due at T0 + 90 s, 29 s after the watermark.
    assert_eq!(route.next_due(), Some(29_000));
    let mut out = Vec::new();
    route.tick(29_000, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(
        fields(&out[0]),
        vec![
            ("t_count".to_owned(), Value::Int(1)),
            ("late".to_owned(), Value::Bool(true))
        ]
    );
    // [T0 + 1m, T0 + 2m) closes at T0 + 150 s.
    assert_eq!(route.next_due(), Some(89_000));
}

/// The task in paused time: the window of a device that stopped reporting
/// is closed by the timer at end + grace, committed with the state, and
/// emitted once through restarts (one of them after it was due).
#[tokio::test(start_paused = true)]
async fn the_task_closes_windows_on_the_clock_exactly_once_through_restarts() {
    use ferry_gateway::route::{spawn_route_with, Clock};
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("ferry.redb"), &StoreOptions::default()).unwrap();
    let ingest = Writer::spawn(
        store.clone(),
        WriterSettings::default().with_commit_interval(Duration::from_millis(10)),
        IngestMetrics::new(),
    );
    let cfg = route_config(
        "window = { size = \"1m\", aggregates = [\"count\", \"sum\"], grace = \"10s\" }\n",
    );
    let metrics = PipelineMetrics::new();
    let stream = Stream::Route("r".into());
    let clock = Clock::starting_at(T0);
    let start = tokio::time::Instant::now();
    let start_task = || {
        let cancel = CancellationToken::new();
        let (_keep, config) = tokio::sync::watch::channel(cfg.clone());
        let task = spawn_route_with(
            "r",
            config,
            clock,
            store.clone(),
            ingest.routes.clone(),
            metrics.clone(),
            cancel.clone(),
        );
        (cancel, task)
    };
    let wait = |what: &'static str, done: Box<dyn Fn(&Store) -> bool>| {
        let store = store.clone();
        async move {
            let mut heads = store.watch_heads();
            while !done(&store) {
                tokio::time::timeout(Duration::from_secs(600), heads.changed())
                    .await
                    .unwrap_or_else(|_| panic!("no {what}"))
                    .unwrap();
            }
        }
    };
    let submit = |recs: Vec<Record>| {
        let sink = ingest.sink.clone();
        async move {
            sink.submit_and_wait(recs.into_iter().map(Item::Record).collect())
                .await
                .unwrap()
        }
    };

    // Read, then stopped before the window is due.
    let (cancel, task) = start_task();
    submit(vec![t(T0 + 1_000, "a", 1.0), t(T0 + 2_000, "a", 2.0)]).await;
    wait(
        "cursor",
        Box::new(|s| s.cursor(&cursor_name("r")).unwrap() == 2),
    )
    .await;
    cancel.cancel();
    task.await.unwrap();
    assert_eq!(store.stream_head(&stream).unwrap(), 0);
    // Ferry is down while it falls due; started again, it emits it at once.
    tokio::time::advance(Duration::from_secs(120)).await;
    let (cancel, task) = start_task();
    wait(
        "clock output",
        Box::new(|s| s.stream_head(&Stream::Route("r".into())).unwrap() >= 1),
    )
    .await;
    cancel.cancel();
    task.await.unwrap();
    // Once more: nothing is emitted again.
    let (cancel, task) = start_task();
    submit(vec![t(T0 + 30_000, "a", 9.0)]).await; // for the closed window: too late
    wait(
        "cursor",
        Box::new(|s| s.cursor(&cursor_name("r")).unwrap() == 3),
    )
    .await;
    let mut out = Vec::new();
    store.read_stream(&stream, 0, 10, &mut out).unwrap();
    let got: Vec<(u64, Row)> = out
        .iter()
        .map(|s| (s.seq, (s.record.ts, &*s.record.device, fields(&s.record))))
        .collect();
    let window = vec![("t_count".to_owned(), Value::Int(2)), f("t_sum", 3.0)];
    assert_eq!(got, vec![(1, (T0, "a", window))]);
    let too_late = metrics
        .route_dropped
        .get_or_create(&ferry_gateway::metrics::RouteReasonLabels {
            route: "r".into(),
            reason: "too_late".into(),
        })
        .get();
    assert_eq!(too_late, 1);

    // While running: a new window for device b (its clock agrees with the
    // gateway's), then silence; the timer closes it at its end + grace on
    // the clock (the anchor is when the route read it: a commit later).
    let before = clock.now();
    submit(vec![t(before, "b", 5.0)]).await;
    wait(
        "timer output",
        Box::new(|s| s.stream_head(&Stream::Route("r".into())).unwrap() >= 2),
    )
    .await;
    let window_end = before.div_euclid(60_000) * 60_000 + 60_000;
    let now = clock.now();
    assert!(
        now >= window_end + 10_000 && now < window_end + 10_000 + 1_000,
        "closed at {} ms past end + grace",
        now - window_end - 10_000
    );
    assert!(start.elapsed() >= Duration::from_secs(120));
    cancel.cancel();
    task.await.unwrap();
}

/// A route reads at most `batch_records` per commit. Behind the log (a
/// backlog after a restart, a burst), its commits go out at once instead of
/// one per commit interval, so it catches up at the store's speed: here 100
/// route commits under a 10 s interval, which would otherwise take 1,000 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_behind_the_log_commits_without_waiting_for_the_interval() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("ferry.redb"), &StoreOptions::default()).unwrap();
    let ingest = Writer::spawn(
        store.clone(),
        WriterSettings {
            commit_interval: Duration::from_secs(10),
            ..WriterSettings::default().with_commit_interval(Duration::from_millis(10))
        },
        IngestMetrics::new(),
    );
    // 10,000 readings, committed before the route starts.
    let records: Vec<Item> = (0..10_000)
        .map(|i| Item::Record(t(i * 1_000, "a", 1.0)))
        .collect();
    ingest
        .sink
        .submit_within(records, Some(Duration::ZERO))
        .await
        .unwrap()
        .committed()
        .await
        .unwrap();
    let cfg =
        route_config("batch_records = 100\nwindow = { size = \"1m\", aggregates = [\"count\"] }\n");
    let cancel = CancellationToken::new();
    let task = spawn_route(
        "r",
        cfg,
        store.clone(),
        ingest.routes.clone(),
        PipelineMetrics::new(),
        cancel.clone(),
    );
    let started = std::time::Instant::now();
    let mut heads = store.watch_heads();
    tokio::time::timeout(Duration::from_secs(60), async {
        while store.cursor(&cursor_name("r")).unwrap() < 10_000 {
            heads.changed().await.unwrap();
        }
    })
    .await
    .expect("the route caught up with 10,000 records within 60 s");
    // Well under one interval per route commit (100 x 10 s).
    assert!(started.elapsed() < Duration::from_secs(60));
    // 10,000 s of readings at 1 s: windows of 60 counts, all but the open one closed.
    let mut out = Vec::new();
    store
        .read_stream(&Stream::Route("r".into()), 0, 1_000, &mut out)
        .unwrap();
    assert_eq!(out.len(), 166);
    assert!(out
        .iter()
        .all(|s| s.record.fields[0].1 == Value::Int(60)
            || s.record.fields[0].1 == Value::Float(60.0)));
    cancel.cancel();
    task.await.unwrap();
}
