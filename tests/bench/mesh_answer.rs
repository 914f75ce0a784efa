//! Native micro-benchmark of the mesh verdict's answer (`cargo bench --bench
//! mesh_answer`): what a VM does with one poll's answer, for a config of
//! 1, 50 and 500 rollouts (a `rollouts` list, every rollout polling the same
//! query, so one poll reads for all of them) and answers of 2, 200 and 2,000
//! series: `mesh::read_answer` (the JSON parse, from the body the host
//! copies into the VM) and `mesh::apply` (the verdict of each rollout,
//! against an in-memory store standing in for the proxy's shared data).
//! Every combination, so that the table shows how the cost grows: with the
//! series plus the rollouts, not with their product.
//!
//! The answers are a realistic mix, as Prometheus writes them (`__name__`,
//! `plugin`, `rollout`, `version` and a value): of every 20 series, 14 name
//! a canary of a rollout of the config failing (value "1"), 3 a canary that
//! is not ("0"), 2 a rollout the config does not have (a rollout removed
//! since: `unknown_rollout`), and 1 has no `rollout` label (it applies to
//! every rollout polling the query). The store already holds what the
//! answer names (the steady state: a trip is latched, and every later poll
//! names it again); the first answer's writes are not timed.
//!
//! CPU time is this thread's (`/proc/thread-self/schedstat`, wall time where
//! there is none), so another process on the machine slows a figure less.
//! Each figure is the median of 21 batches of at least 20 ms, per call (the
//! fastest batch is shown too); heap allocations per call are counted by a
//! wrapping global allocator. The release profile is the module's (opt-level
//! "z"), as `cargo bench` builds it.

#![allow(clippy::expect_used, clippy::indexing_slicing)]

mod counting;

use std::hint::black_box;
use std::time::Instant;

use canary_selector::config::Config;
use canary_selector::mesh::{self, Sample};
use canary_selector::shared::{Keys, MemoryStore};

const PLUGIN: &str = "models.canary-selector";
const QUERY: &str = "canary_selector:canary_failing{plugin=\"models.canary-selector\"}";

/// `n` rollouts, each with two hosts and three versions, all polling QUERY.
fn config(n: usize) -> Config {
    let rollout = |i: usize| {
        format!(
            r#"{{"name": "m{i}", "hosts": ["m{i}.models.example.com", "m{i}-predictor.models.example.com"],
                "versions": [{{"name": "model-v1", "weight": 80}}, {{"name": "model-v2", "weight": 10}},
                             {{"name": "model-v3", "weight": 10}}],
                "stickiness": {{"userIdHeaders": ["x-user-id"]}},
                "guard": {{"mesh": {{"cluster": "outbound|9090||prometheus.istio-system.svc.cluster.local",
                                     "authority": "prometheus.istio-system.svc.cluster.local:9090",
                                     "query": {QUERY:?}}}}}}}"#
        )
    };
    let json = format!(
        r#"{{"rollouts": [{}]}}"#,
        (0..n).map(rollout).collect::<Vec<_>>().join(",")
    );
    Config::from_json(json.as_bytes()).expect("the bench config is valid")
}

/// An answer of `m` series for a config of `n` rollouts: the mix above.
fn answer(n: usize, m: usize) -> Vec<u8> {
    let series: Vec<String> = (0..m)
        .map(|k| {
            // Spread over the rollouts and their two canaries.
            let rollout = format!("m{}", (k * 7919) % n);
            let version = ["model-v2", "model-v3"][k / n % 2];
            let (rollout, value) = match k % 20 {
                0..=13 => (Some(rollout), "1"),
                14..=16 => (Some(rollout), "0"),
                17 | 18 => (Some(format!("gone-{k}")), "1"),
                _ => (None, "1"),
            };
            let rollout = rollout.map_or(String::new(), |r| format!(r#","rollout":"{r}""#));
            format!(
                r#"{{"metric":{{"__name__":"canary_selector:canary_failing","plugin":"{PLUGIN}"{rollout},"version":"{version}"}},"value":[1796232086.079,"{value}"]}}"#
            )
        })
        .collect();
    format!(
        r#"{{"status":"success","data":{{"resultType":"vector","result":[{}]}}}}"#,
        series.join(",")
    )
    .into_bytes()
}

/// This thread's CPU time in ns.
fn cpu_ns() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    stat.split_whitespace().next()?.parse().ok()
}

thread_local! {
    static START: Instant = Instant::now();
}

fn clock() -> u64 {
    cpu_ns().unwrap_or_else(|| START.with(|s| s.elapsed().as_nanos() as u64))
}

const BATCHES: usize = 21;

/// (median ns, fastest ns, allocations) per call of `once`, in batches of
/// at least 20 ms.
fn time(mut once: impl FnMut()) -> (f64, f64, f64) {
    let warm = Instant::now();
    let mut per_batch: u64 = 0;
    while warm.elapsed().as_millis() < 20 {
        once();
        per_batch += 1;
    }
    let allocs_before = counting::allocations();
    let mut samples: Vec<f64> = (0..BATCHES)
        .map(|_| {
            let start = clock();
            for _ in 0..per_batch {
                once();
            }
            clock().saturating_sub(start) as f64 / per_batch as f64
        })
        .collect();
    let allocs = (counting::allocations() - allocs_before) as f64;
    samples.sort_by(f64::total_cmp);
    (
        samples[BATCHES / 2],
        samples[0],
        allocs / (per_batch * BATCHES as u64) as f64,
    )
}

fn main() {
    println!(
        "mesh::read_answer and mesh::apply, one poll read by every rollout of the config \
         (CPU time, median of {BATCHES} batches per call; fastest batch in brackets):"
    );
    println!(
        "{:>8} {:>7} {:>10} | {:>18} {:>9} {:>7} | {:>16} {:>13} {:>7}",
        "rollouts",
        "series",
        "bytes",
        "read_answer µs",
        "ns/series",
        "allocs",
        "apply µs",
        "ns/(s + r)",
        "allocs"
    );
    for n in [1usize, 50, 500] {
        let config = config(n);
        let polls = mesh::polls(&config);
        assert_eq!(polls.len(), 1, "one query, one poll");
        let poll = &polls[0];
        assert_eq!(poll.rollouts.len(), n);
        let keys: Vec<Keys> = config
            .rollouts
            .iter()
            .map(|r| Keys::new(PLUGIN, r.name()))
            .collect();
        let records = |i: usize| Some((&keys[i], 1));
        for m in [2usize, 200, 2000] {
            let body = answer(n, m);
            let read = || {
                mesh::read_answer(Some(b"200"), body.len(), || Some(body.clone()))
                    .expect("the bench answer reads")
            };
            let samples: Vec<Sample> = read();
            assert_eq!(samples.len(), m);
            // The first answer records the trips; the timed ones find them.
            let store = MemoryStore::default();
            let first = mesh::apply(&samples, poll, &config, records, &store);
            assert!(!first.verdicts.is_empty());
            if m >= 20 {
                assert!(first.ignored.unknown_rollout > 0);
            }
            let (read_ns, read_fast, read_allocs) = time(|| {
                black_box(read());
            });
            let (apply_ns, apply_fast, apply_allocs) = time(|| {
                black_box(mesh::apply(
                    black_box(&samples),
                    poll,
                    &config,
                    records,
                    &store,
                ));
            });
            println!(
                "{n:>8} {m:>7} {:>10} | {:>18} {:>9.0} {:>7.0} | {:>16} {:>13.1} {:>7.0}",
                body.len(),
                format!("{:.1} ({:.1})", read_ns / 1e3, read_fast / 1e3),
                read_ns / m as f64,
                read_allocs,
                format!("{:.1} ({:.1})", apply_ns / 1e3, apply_fast / 1e3),
                apply_ns / (m + n) as f64,
                apply_allocs,
            );
        }
    }
}
