//! The reconnect schedule against simulated endpoints: plain instants, no
//! sleeps, no sockets. [`simulate`] plays the run loop's part (it carries
//! out the actions; probes and connects take the time the fault says).

use super::*;

const S: Duration = Duration::from_secs(1);
const MS: Duration = Duration::from_millis(1);
const RTT: Duration = Duration::from_millis(20);

/// How an endpoint that is down behaves.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Connections are refused (reset): a probe or connect fails after one RTT.
    Refused,
    /// Packets vanish: a probe fails at its timeout, a connect at `connect_timeout`.
    Blackhole,
    /// TCP answers but every connect is rejected (e.g. a bad certificate).
    Rejects,
}

/// An endpoint down from the start until `up` (relative to the start).
#[derive(Clone, Copy, Debug)]
struct World {
    fault: Fault,
    up: Duration,
    /// Probes' and connects' timeout.
    timeout: Duration,
}

impl World {
    /// Down with `fault` until `up`; probes and connects time out after 10 s.
    fn down_until(fault: Fault, up: Duration) -> World {
        World {
            fault,
            up,
            timeout: 10 * S,
        }
    }
}

/// What happened in a simulation.
#[derive(Debug, Default)]
struct Run {
    /// When connects started, relative to the start.
    attempts: Vec<Duration>,
    /// When the first connect that succeeded started.
    connected: Option<Duration>,
    probes: usize,
}

/// Plays the run loop from `t0` (when the last session ended) until a
/// connect succeeds or `until` passes.
fn simulate(rc: &mut Reconnect, world: World, rng: &mut fastrand::Rng, until: Duration) -> Run {
    let t0 = Instant::now();
    let mut now = t0;
    let mut run = Run::default();
    // (when the result comes in, when the probe started, whether it answered)
    let mut pending: Vec<(Instant, Instant, bool)> = Vec::new();
    let is_up = |at: Instant| at - t0 >= world.up;
    while now - t0 < until {
        match rc.next(now, rng.f64()) {
            Action::Connect => {
                run.attempts.push(now - t0);
                if is_up(now) && !matches!(world.fault, Fault::Rejects) {
                    run.connected = Some(now - t0);
                    return run;
                }
                let takes = match world.fault {
                    Fault::Blackhole if !is_up(now) => world.timeout,
                    _ => RTT,
                };
                // A connect aborts the probes outstanding, as the run loop does.
                pending.clear();
                now += takes;
                rc.failed(now, false, rng.f64());
            }
            Action::Probe => {
                run.probes += 1;
                let up = is_up(now) || matches!(world.fault, Fault::Rejects);
                let takes = match world.fault {
                    Fault::Blackhole if !up => world.timeout,
                    _ => RTT,
                };
                pending.push((now + takes, now, up));
            }
            Action::WaitUntil(at) => {
                assert!(at > now, "a wait must move time forward");
                pending.sort();
                match pending.first().copied() {
                    Some((done, started, ok)) if done <= at => {
                        pending.remove(0);
                        now = done;
                        rc.probed(started, now, ok, rng.f64());
                    }
                    _ => now = at,
                }
            }
        }
    }
    run
}

/// A schedule whose backoff has grown to its cap, as after a long run of
/// connects that failed.
fn grown(probe_interval: Duration) -> Reconnect {
    let t = Instant::now();
    let mut rc = Reconnect::new(S, 120 * S, probe_interval, t);
    for _ in 0..10 {
        rc.failed(t, false, 0.99);
    }
    rc
}

fn gaps(attempts: &[Duration]) -> impl Iterator<Item = Duration> + '_ {
    attempts.windows(2).map(|w| w[1] - w[0])
}

#[test]
fn the_first_connect_waits_for_a_probe_to_answer() {
    let t = Instant::now();
    let mut rc = Reconnect::new(S, 120 * S, S, t);
    assert_eq!(rc.next(t, 0.0), Action::Probe);
    let Action::WaitUntil(at) = rc.next(t, 0.0) else {
        panic!("nothing to do until the probe answers or the next is due");
    };
    assert_eq!(
        at,
        t + S / 2,
        "the next probe after half to all of the interval"
    );
    rc.probed(t, t + RTT, true, 0.0);
    assert_eq!(rc.next(t + RTT, 0.0), Action::Connect);
}

#[test]
fn without_probes_the_backoff_alone_decides() {
    let t = Instant::now();
    let mut rc = Reconnect::new(S, 120 * S, Duration::ZERO, t);
    assert!(!rc.probing());
    assert_eq!(rc.next(t, 0.0), Action::Connect);
    let delay = rc.failed(t, false, 0.5);
    assert_eq!(delay, S, "at least a second after the last connect");
    assert_eq!(rc.next(t + 100 * MS, 0.0), Action::WaitUntil(t + S));
    assert_eq!(rc.next(t + S, 0.0), Action::Connect);
}

#[test]
fn after_a_long_outage_the_link_s_return_is_noticed_within_the_probe_interval() {
    for fault in [Fault::Refused, Fault::Blackhole] {
        for up in [60 * S, 600 * S] {
            for seed in 0..50 {
                let mut rng = fastrand::Rng::with_seed(seed);
                // The last of many connects failed: the backoff is at its cap.
                let mut rc = grown(S);
                rc.failed(Instant::now(), false, rng.f64());
                let world = World::down_until(fault, up);
                let run = simulate(&mut rc, world, &mut rng, up + 300 * S);
                let at = run.connected.expect("connected again");
                // The next probe within 1 s, answered in one RTT, the connect
                // within a quarter of the interval after it.
                assert!(
                    at >= up && at <= up + S + S / 4 + RTT,
                    "{fault:?}, up at {up:?}, seed {seed}: connected at {at:?}"
                );
                // Not one TLS connect spent while probes failed.
                assert_eq!(run.attempts, [at], "{fault:?} seed {seed}");
                assert!(run.probes as f64 <= up.as_secs_f64() * 2.0 + 2.0);
            }
        }
    }
}

#[test]
fn without_probes_the_same_outage_leaves_the_backoff_to_decide() {
    // The contrast: the same 60 s refused outage after a grown backoff.
    let mut late = 0;
    for seed in 0..50 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut rc = grown(Duration::ZERO);
        rc.failed(Instant::now(), false, rng.f64());
        let world = World::down_until(Fault::Refused, 60 * S);
        let run = simulate(&mut rc, world, &mut rng, 600 * S);
        let at = run.connected.expect("connected again");
        if at > 62 * S {
            late += 1;
        }
        assert!(gaps(&run.attempts).all(|g| g >= S));
    }
    assert!(late >= 40, "only {late} of 50 were late without probes");
}

#[test]
fn connects_are_at_least_a_second_apart_whatever_the_backoff_draws() {
    // A broker that answers TCP and rejects every connect, a backoff of
    // milliseconds: the gap, not the backoff, sets the pace.
    let t = Instant::now();
    for probe in [S, Duration::ZERO] {
        let mut rng = fastrand::Rng::with_seed(5);
        let mut rc = Reconnect::new(MS, 10 * MS, probe, t);
        let world = World::down_until(Fault::Rejects, Duration::MAX);
        let run = simulate(&mut rc, world, &mut rng, 60 * S);
        assert!(run.attempts.len() >= 50, "{} attempts", run.attempts.len());
        assert!(run.attempts.len() <= 61, "{} attempts", run.attempts.len());
        for g in gaps(&run.attempts) {
            assert!(g >= MIN_CONNECT_GAP, "two connects {g:?} apart");
        }
    }
}

#[test]
fn probes_that_keep_answering_do_not_reset_the_backoff() {
    // TCP answers, connects are rejected: probes never saw the link down, so
    // the backoff grows as it would without them (1, 2, 4 ... 64 s), with
    // one probe per connect.
    let t = Instant::now();
    let mut rng = fastrand::Rng::with_seed(11);
    let mut rc = Reconnect::new(S, 64 * S, S, t);
    let world = World::down_until(Fault::Rejects, Duration::MAX);
    let run = simulate(&mut rc, world, &mut rng, 600 * S);
    assert!(
        run.attempts.len() <= 30,
        "{} attempts in 10 minutes",
        run.attempts.len()
    );
    assert!(
        run.probes <= run.attempts.len() + 1,
        "{} probes for {} connects",
        run.probes,
        run.attempts.len()
    );
    let late: Vec<Duration> = gaps(&run.attempts).skip(8).collect();
    assert!(late.iter().any(|g| *g > 16 * S), "{late:?}");
}

#[test]
fn a_stale_probe_result_does_not_overturn_a_newer_one() {
    let t = Instant::now();
    let mut rc = Reconnect::new(S, 120 * S, S, t);
    assert_eq!(rc.next(t, 0.0), Action::Probe);
    assert_eq!(rc.next(t + S, 0.0), Action::Probe);
    // The newer probe answers; the older one times out after it.
    assert!(rc.probed(t + S, t + S + RTT, true, 0.0));
    assert!(
        !rc.probed(t, t + 10 * S, false, 0.0),
        "a stale result taken"
    );
    assert_eq!(rc.next(t + 10 * S, 0.0), Action::Connect);
}

#[test]
fn a_returning_link_connects_no_sooner_than_a_second_after_the_last_connect() {
    let t = Instant::now();
    let mut rc = Reconnect::new(S, 120 * S, S, t);
    assert_eq!(rc.next(t, 0.0), Action::Probe);
    rc.probed(t, t + RTT, true, 0.0);
    assert_eq!(rc.next(t + RTT, 0.0), Action::Connect);
    // The session ends at once; a probe fails, the next answers 300 ms in.
    let end = t + 100 * MS;
    rc.failed(end, true, 0.0);
    assert_eq!(rc.next(end, 0.0), Action::Probe);
    rc.probed(end, end + RTT, false, 0.0);
    rc.probed(end + 200 * MS, end + 300 * MS, true, 0.0);
    let mut now = end + 300 * MS;
    loop {
        match rc.next(now, 0.5) {
            Action::Connect => break,
            Action::Probe => {
                rc.probed(now, now + RTT, true, 0.0);
            }
            Action::WaitUntil(at) => now = at,
        }
    }
    assert_eq!(now, t + RTT + S, "a second after the last connect started");
}

/// One gateway of a fleet that lost the same link as the others at the same
/// instant (the proxy reset every connection at once), and got it back after
/// `up`: when its first connect after the return started.
fn fleet_member(seed: u64, fault: Fault, up: Duration) -> Duration {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut rc = Reconnect::new(S, 120 * S, S, Instant::now());
    rc.failed(Instant::now(), true, rng.f64());
    let world = World::down_until(fault, up);
    let run = simulate(&mut rc, world, &mut rng, up + 300 * S);
    assert!(gaps(&run.attempts).all(|g| g >= MIN_CONNECT_GAP));
    run.connected.expect("connected again") - up
}

#[test]
fn a_thousand_gateways_return_spread_out_not_in_step() {
    for fault in [Fault::Refused, Fault::Blackhole] {
        let mut back: Vec<f64> = (0..1000)
            .map(|seed| fleet_member(seed, fault, 60 * S).as_secs_f64())
            .collect();
        back.sort_by(f64::total_cmp);
        let (first, last) = (back[0], back[999]);
        assert!(
            last <= 1.25 + RTT.as_secs_f64(),
            "{fault:?}: last back {last}s after"
        );
        assert!(
            last - first >= 0.9,
            "{fault:?}: all back within {}s",
            last - first
        );
        // No 50 ms has more than a tenth of the fleet (all in step: all of it).
        let mut bins = [0usize; 40];
        for b in &back {
            bins[((b / 0.05) as usize).min(39)] += 1;
        }
        let busiest = bins.iter().max().copied().unwrap_or(0);
        assert!(busiest <= 100, "{fault:?}: {busiest} gateways in one 50 ms");
        let mean = back.iter().sum::<f64>() / 1000.0;
        let sd = (back.iter().map(|b| (b - mean).powi(2)).sum::<f64>() / 1000.0).sqrt();
        assert!(sd >= 0.2, "{fault:?}: standard deviation {sd}s");
    }
}
