//! Native micro-benchmark of the per-request decision (`make bench-micro`,
//! `cargo bench --bench decision`): nanoseconds per `decide()` for a sticky
//! hit, a rule hit and an anonymous request, with the bench's rollout (90/10,
//! one header rule, sticky on `x-user-id`), and the heap allocations each
//! decision makes (counted by a wrapping global allocator; the target is
//! zero for a sticky decision). Then the same sticky request through a
//! config of 1, 50 and 500 rollouts (two hosts each, requests spread over
//! every host, as `make bench-rollouts` sends them through Envoy): the
//! `:authority` reduced to its host, the rollout looked up, and its decision
//! (the part of a request's cost that could grow with the rollouts); once
//! with the caches warm, and once with 4 MiB written between two requests,
//! as Envoy's own work between two requests disturbs them (each request
//! then timed alone).
//!
//! No framework: each case runs in batches timed with `Instant`; the figure is
//! the median batch, per decision (the fastest batch is shown too).

#![allow(clippy::expect_used, clippy::indexing_slicing)]

mod counting;

use std::hint::black_box;
use std::time::{Duration, Instant};

use canary_selector::config::{authority_host, Config, Rollout, MAX_AUTHORITY_HOST_LEN};
use canary_selector::decision::{decide, Live, Request, WyRand};

const CONFIG: &str = r#"{
  "routingHeader": "x-canary-version",
  "versions": [{ "name": "model-v1", "weight": 90 }, { "name": "model-v2", "weight": 10 }],
  "stickiness": { "userIdHeaders": ["x-user-id"] },
  "rules": [{ "name": "testers",
              "match": { "headers": { "x-canary-tester": { "exact": "true" } } },
              "version": "model-v2" }]
}"#;

/// A request as a few (name, value) pairs, looked up by name like a header map.
struct Headers<'a>(Vec<(&'a str, &'a [u8])>);

impl Request for Headers<'_> {
    fn header(&mut self, _slot: usize, name: &str) -> Option<&[u8]> {
        self.0.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }
}

const BATCH: u64 = 20_000;
const BATCHES: usize = 31;

/// (median ns, fastest ns, allocations) per decision.
fn run(requests: &mut [Headers], rollout: &Rollout) -> (f64, f64, f64) {
    let mut rng = WyRand(0x5eed);
    let live = Live::default();
    time(|i: u64| {
        let n = requests.len();
        let req = &mut requests[i as usize % n];
        black_box(decide(rollout, black_box(req), &mut rng, live));
    })
}

/// One request through a config with `rollouts`, as the filter handles it:
/// the host of its `:authority`, the rollout's lookup, its decision.
struct Scoped<'c> {
    config: &'c Config,
    rng: WyRand,
    buf: [u8; MAX_AUTHORITY_HOST_LEN],
}

impl<'c> Scoped<'c> {
    fn new(config: &'c Config) -> Self {
        Scoped {
            config,
            rng: WyRand(0x5eed),
            buf: [0u8; MAX_AUTHORITY_HOST_LEN],
        }
    }

    fn request(&mut self, authority: &[u8], req: &mut Headers) {
        let host = authority_host(black_box(authority), &mut self.buf);
        let index = self
            .config
            .rollout_for(host, || None)
            .expect("every host has a rollout");
        black_box(decide(
            &self.config.rollouts[index],
            black_box(req),
            &mut self.rng,
            Live::default(),
        ));
    }
}

/// (median ns, fastest ns, allocations) per request through a config with
/// `rollouts`: host, lookup, decision. `requests` pairs an `:authority`
/// with its headers.
fn run_scoped(requests: &mut [(&[u8], Headers)], config: &Config) -> (f64, f64, f64) {
    let mut scoped = Scoped::new(config);
    time(|i: u64| {
        let n = requests.len();
        let (authority, req) = &mut requests[i as usize % n];
        scoped.request(authority, req);
    })
}

/// ns per request as `run_scoped` times it, with 4 MiB written between two
/// requests (not timed), so what a request reads comes from farther away:
/// the state of one rollout among many is then a cache miss more often.
fn run_scoped_cold(requests: &mut [(&[u8], Headers)], config: &Config) -> f64 {
    let mut scoped = Scoped::new(config);
    let mut other_work = vec![0u8; 4 << 20];
    let mut timed = Duration::ZERO;
    const REQUESTS: usize = 20_000;
    for i in 0..REQUESTS {
        for byte in other_work.iter_mut().step_by(64) {
            *byte = byte.wrapping_add(1);
        }
        black_box(&other_work);
        let n = requests.len();
        let (authority, req) = &mut requests[i % n];
        let start = Instant::now();
        scoped.request(authority, req);
        timed += start.elapsed();
    }
    timed.as_nanos() as f64 / REQUESTS as f64
}

/// Times `once(i)` in batches after a warm-up: (median ns, fastest ns,
/// allocations) per call.
fn time(mut once: impl FnMut(u64)) -> (f64, f64, f64) {
    let warm = Instant::now();
    let mut i = 0;
    while warm.elapsed() < Duration::from_millis(200) {
        once(i);
        i += 1;
    }
    let allocs_before = counting::allocations();
    let mut samples = Vec::with_capacity(BATCHES);
    for _ in 0..BATCHES {
        let start = Instant::now();
        for _ in 0..BATCH {
            once(i);
            i += 1;
        }
        samples.push(start.elapsed().as_nanos() as f64 / BATCH as f64);
    }
    let allocs = (counting::allocations() - allocs_before) as f64;
    samples.sort_by(f64::total_cmp);
    (
        samples[BATCHES / 2],
        samples[0],
        allocs / (BATCH * BATCHES as u64) as f64,
    )
}

fn main() {
    let rollout = Rollout::from_json(CONFIG.as_bytes()).expect("the bench config is valid");
    // A different user id per request, as in the Envoy bench.
    let ids: Vec<String> = (0..1024).map(|n| format!("user-{n}")).collect();
    let path: &[u8] = b"/v1/models/model:predict";
    let common = |mut extra: Vec<(&'static str, &'static [u8])>| {
        extra.push((":path", path));
        extra
    };
    let leak = |s: &str| -> &'static [u8] { Box::leak(s.as_bytes().to_vec().into_boxed_slice()) };

    let mut sticky: Vec<Headers> = ids
        .iter()
        .map(|id| Headers(common(vec![("x-user-id", leak(id))])))
        .collect();
    let mut rule: Vec<Headers> = ids
        .iter()
        .map(|id| {
            Headers(common(vec![
                ("x-user-id", leak(id)),
                ("x-canary-tester", b"true"),
            ]))
        })
        .collect();
    let mut anonymous = vec![Headers(common(vec![]))];

    println!(
        "decide(), 90/10, one header rule, sticky on x-user-id ({BATCHES} batches of {BATCH}):"
    );
    println!(
        "{:<28} {:>12} {:>12} {:>16}",
        "case", "ns/decision", "fastest", "allocs/decision"
    );
    for (name, requests) in [
        ("sticky hit (x-user-id)", &mut sticky),
        ("rule hit (x-canary-tester)", &mut rule),
        ("anonymous (random pick)", &mut anonymous),
    ] {
        let (median, fastest, allocs) = run(requests, &rollout);
        println!("{name:<28} {median:>12.1} {fastest:>12.1} {allocs:>16.3}");
    }

    println!("\nthe same sticky request through a config of N rollouts, two hosts each, spread over every host:");
    println!(
        "{:<28} {:>12} {:>12} {:>16}",
        "rollouts", "ns/request", "fastest", "allocs/request"
    );
    let rollout_json = |i: usize| {
        format!(
            r#"{{"name": "m{i}", "hosts": ["m{i}.models.example.com", "m{i}-predictor.models.example.com"],
                "routingHeader": "x-canary-version",
                "versions": [{{ "name": "model-v1", "weight": 90 }}, {{ "name": "model-v2", "weight": 10 }}],
                "stickiness": {{ "userIdHeaders": ["x-user-id"] }},
                "rules": [{{ "name": "testers", "match": {{ "headers": {{ "x-canary-tester": {{ "exact": "true" }} }} }},
                             "version": "model-v2" }}]}}"#
        )
    };
    for n in [1usize, 50, 500] {
        let json = format!(
            r#"{{"rollouts": [{}]}}"#,
            (0..n).map(rollout_json).collect::<Vec<_>>().join(",")
        );
        let config = Config::from_json(json.as_bytes()).expect("the bench config is valid");
        let mut requests: Vec<(&[u8], Headers)> = (0..4096)
            .map(|k| {
                let host = match k % 2 {
                    0 => format!("m{}.models.example.com:80", k / 2 % n),
                    _ => format!("M{}-Predictor.models.example.com", k / 2 % n),
                };
                (
                    leak(&host),
                    Headers(common(vec![("x-user-id", leak(&ids[k % ids.len()]))])),
                )
            })
            .collect();
        let (median, fastest, allocs) = run_scoped(&mut requests, &config);
        let cold = run_scoped_cold(&mut requests, &config);
        println!("{n:<28} {median:>12.1} {fastest:>12.1} {allocs:>16.3} {cold:>14.1}");
    }
}
