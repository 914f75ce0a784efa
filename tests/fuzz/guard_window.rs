//! Target `guard_window`: the guard's sliding window against a model, and
//! `Window::decode` on arbitrary bytes.

use super::*;

// ---------------------------------------------------------------------------
// Target: guard_window.
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    /// Window A or B counts a response at `t` (versions past the shape are
    /// ignored).
    Record {
        b: bool,
        t: u64,
        version: usize,
        failure: Option<Failure>,
        slow: bool,
    },
    /// A takes in B's counts.
    Merge,
    Totals {
        ahead: u64,
    },
    RoundTrip {
        generation: u32,
    },
}

#[derive(Debug)]
struct WindowCase {
    versions: usize,
    window_ms: u64,
    ops: Vec<Op>,
    /// Bytes handed to `Window::decode` as (bytes, versions, window_ms).
    foreign: (Vec<u8>, usize, u64),
    guard: config::Guard,
}

fn gen_window_case(rng: &mut Rng) -> WindowCase {
    let versions = rng.range(1, 5);
    let window_ms = rng.pick(&[1, 9, 10, 11, 1000, 60_000, 3_600_000]);
    let mut t = rng.u64() % (1 << 44);
    let ops = (0..rng.range(1, 60))
        .map(|_| match rng.below(10) {
            0 => Op::Merge,
            1 => Op::Totals {
                ahead: rng.pick(&[0, 1, window_ms / 2, window_ms, window_ms * 2]),
            },
            2 => Op::RoundTrip {
                generation: rng.u64() as u32,
            },
            _ => {
                t += rng.pick(&[0, 1, 7, window_ms / 10, window_ms, window_ms * 3]);
                let version = if rng.one_in(20) {
                    versions
                } else {
                    rng.below(versions)
                };
                Op::Record {
                    b: rng.one_in(3),
                    t,
                    version,
                    failure: rng.one_in(3).then(|| {
                        let all: Vec<Failure> = Failure::all().collect();
                        *rng.pick_ref(&all)
                    }),
                    slow: rng.one_in(4),
                }
            }
        })
        .collect();
    let shape_versions = if rng.one_in(4) {
        rng.range(1, 5)
    } else {
        versions
    };
    let foreign = match rng.below(3) {
        0 => (0..rng.range(0, 600)).map(|_| rng.u64() as u8).collect(),
        _ => {
            let mut w = Window::new(shape_versions, window_ms);
            w.record(t, rng.below(shape_versions), Some(Failure::Http5xx), false);
            let mut bytes = w.encode(rng.u64() as u32);
            for _ in 0..rng.range(0, 3) {
                let at = rng.below(bytes.len());
                bytes[at] = rng.u64() as u8;
            }
            if rng.one_in(4) {
                bytes.truncate(rng.below(bytes.len() + 1));
            }
            bytes
        }
    };
    let rate = |rng: &mut Rng| rng.one_in(2).then(|| rng.below(101) as f64 / 100.0);
    let guard = config::Guard {
        window_ms,
        min_requests: rng.range(1, 5) as u32,
        max_error_rate: rate(rng),
        max_error_rate_above_stable: rate(rng),
        slow_response_ms: Some(100),
        max_slow_rate: rng.one_in(2).then(|| rng.below(101) as f64 / 100.0),
        grpc_error_codes: config::DEFAULT_GRPC_ERROR_CODES,
        mesh: None,
    };
    WindowCase {
        versions,
        window_ms,
        ops,
        foreign: (foreign, versions, window_ms),
        guard,
    }
}

/// The window's meaning: the responses of the last `SLOTS` slots, the
/// current one included.
fn model_totals(
    events: &[(u64, usize, Option<Failure>, bool)],
    versions: usize,
    window_ms: u64,
    now: u64,
) -> Vec<Counts> {
    let slot = (window_ms / guard::SLOTS as u64).max(1);
    let mut totals = vec![Counts::default(); versions];
    for &(t, v, failure, slow) in events {
        let age = (now / slot).checked_sub(t / slot);
        if v < versions && age.is_some_and(|a| a < guard::SLOTS as u64) {
            totals[v].requests += 1;
            totals[v].errors += u32::from(failure.is_some());
            totals[v].slow += u32::from(slow);
            // Which kinds failed: gRPC codes first, then no status, then HTTP.
            let bit = match failure {
                Some(Failure::Grpc(code)) => Some(u32::from(code)),
                Some(Failure::NoGrpcStatus) => Some(17),
                Some(Failure::Http5xx) => Some(18),
                None => None,
            };
            totals[v].failures |= bit.map_or(0, |b| 1 << b);
        }
    }
    totals
}

/// The guard's documented judgement: the first canary with at least
/// `minRequests` responses over a threshold.
fn model_judge(g: &config::Guard, totals: &[Counts]) -> Option<usize> {
    let rate = |part: u32, whole: u32| {
        if whole == 0 {
            0.0
        } else {
            f64::from(part) / f64::from(whole)
        }
    };
    let stable = rate(totals[0].errors, totals[0].requests);
    (1..totals.len()).find(|&v| {
        let c = totals[v];
        let errors = rate(c.errors, c.requests);
        c.requests >= g.min_requests
            && (g.max_error_rate.is_some_and(|m| errors > m)
                || g.max_error_rate_above_stable
                    .is_some_and(|m| errors - stable > m)
                || g.max_slow_rate
                    .is_some_and(|m| rate(c.slow, c.requests) > m))
    })
}

#[test]
fn guard_window() {
    run("guard_window", gen_window_case, |case| {
        let (n, window_ms) = (case.versions, case.window_ms);
        let (mut a, mut b) = (Window::new(n, window_ms), Window::new(n, window_ms));
        let (mut in_a, mut in_b) = (Vec::new(), Vec::new());
        let mut now = 0;
        for op in &case.ops {
            match *op {
                Op::Record {
                    b: to_b,
                    t,
                    version,
                    failure,
                    slow,
                } => {
                    now = t;
                    let (w, events) = if to_b {
                        (&mut b, &mut in_b)
                    } else {
                        (&mut a, &mut in_a)
                    };
                    w.record(t, version, failure, slow);
                    events.push((t, version, failure, slow));
                }
                Op::Merge => {
                    a.merge(&b);
                    in_a.extend(in_b.iter().copied());
                }
                Op::Totals { ahead } => {
                    let totals = a.totals(now + ahead);
                    assert_eq!(
                        totals,
                        model_totals(&in_a, n, window_ms, now + ahead),
                        "totals"
                    );
                    let trip = guard::judge(&case.guard, &totals).map(|t| t.version);
                    assert_eq!(trip, model_judge(&case.guard, &totals), "judge");
                }
                Op::RoundTrip { generation } => {
                    let decoded = Window::decode(&a.encode(generation), n, window_ms);
                    assert_eq!(decoded, Some((a.clone(), generation)), "encode then decode");
                }
            }
        }
        // Another VM's bytes: anything, of any shape; never a panic, and
        // whatever decodes encodes back to the same bytes.
        let (bytes, versions, window_ms) = &case.foreign;
        if let Some((w, generation)) = Window::decode(bytes, *versions, *window_ms) {
            let again = w.encode(generation);
            assert_eq!((&again[..1], &again[4..]), (&bytes[..1], &bytes[4..]));
            let _ = w.totals(now);
        }
        1
    });
}
