//! The VMs of one proxy run the same code at the same instant, and
//! proxy-wasm's shared data has no insert-if-absent. These tests run several
//! VMs (threads) through the real protocol code (`crate::vm`, the guard's
//! windows, the held records, the poll's turn) against a store whose every
//! `get` and `set` is a scheduling point of [shuttle], which orders those
//! calls every possible way (`check_dfs`, the small cases) or in many random
//! ways (`check_random`, the larger ones), and check after each run:
//!
//! - no count is lost: the windows of every VM, added up, hold every
//!   response any VM counted in the generation, across a push that kept it;
//! - every VM agrees on a push's generation, and one of them (exactly one
//!   when the records were created before the workers, as Envoy's check of a
//!   push on its main thread creates them) says it was first;
//! - a breach is recorded once, and every VM that ticks after it learns it;
//! - of VMs asking at the same instant, one sends a poll per turn.

use std::sync::Arc;

use shuttle::sync::Mutex;

use crate::config::Config;
use crate::guard::{Failure, Guarded, Window};
use crate::mesh;
use crate::shared::{self, accept_push, held, vms, Held, News, Records, SharedData};
use crate::vm::{Event, State};

/// Shared data behind a shuttle mutex, with the host's compare-and-swap
/// rules: each call is one step the scheduler may interleave.
#[derive(Clone, Default)]
struct Store(Arc<Mutex<Records>>);

impl SharedData for Store {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        let map = self.0.lock().unwrap();
        match map.get(key) {
            Some((value, cas)) => (Some(value.clone()), Some(*cas)),
            None => (None, None),
        }
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
        shared::set_in(&mut self.0.lock().unwrap(), key, value, cas)
    }
}

const PLUGIN: &str = "ns.gateway";

/// Shuttle's runs with room for serde_json on each thread's stack.
fn runner_config() -> shuttle::Config {
    let mut config = shuttle::Config::new();
    config.stack_size = 1 << 20;
    config
}

/// Runs `f` once in every order of its threads' steps (at most `max` runs).
fn every_order(f: impl Fn() + Send + Sync + 'static, max: Option<usize>) {
    let scheduler = shuttle::scheduler::DfsScheduler::new(max, false);
    shuttle::Runner::new(scheduler, runner_config()).run(f);
}

/// Runs `f` in `runs` random orders, from a seed (`INTERLEAVING_SEED`, or
/// a fixed one so that `make test` is repeatable).
fn random_orders(f: impl Fn() + Send + Sync + 'static, runs: usize) {
    let seed = std::env::var("INTERLEAVING_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed);
    let scheduler = shuttle::scheduler::RandomScheduler::new_from_seed(seed, runs);
    shuttle::Runner::new(scheduler, runner_config()).run(f);
}

fn config(json: &str) -> Config {
    Config::from_json(json.as_bytes()).unwrap_or_else(|e| panic!("{e}\n{json}"))
}

const IRIS: &str = r#"{"rollouts": [{"name": "iris", "hosts": ["iris.example.com"],
  "versions": [{"name": "v1", "weight": 50}, {"name": "v2", "weight": 50}],
  "guard": {"windowSeconds": 60, "minRequests": 1000000, "maxErrorRate": 0.5}}]}"#;

/// IRIS under one more host name: a push that keeps what it decides.
fn iris_aliased() -> String {
    IRIS.replace(
        r#"["iris.example.com"]"#,
        r#"["iris.example.com", "iris.models"]"#,
    )
}

/// The responses of version 1 that the windows of generation `generation`
/// of iris hold, every VM's added up.
fn counted(store: &Store, generation: u32) -> u32 {
    let map = store.0.lock().unwrap();
    map.iter()
        .filter(|(k, _)| k.starts_with("canary-selector.ns.gateway.rollout=iris.window."))
        .filter_map(|(_, (bytes, _))| Window::decode(bytes, 2, 60_000))
        .filter(|(_, g)| *g == generation)
        .map(|(w, _)| w.totals(10_000)[1].requests)
        .sum()
}

/// What one VM saw: the generation it installed, and whether it said it
/// was first.
struct Seen {
    generation: u32,
    first: bool,
}

/// One VM: takes the push of `json`, counts `responses` responses of
/// version 1, ticks; then (if `then` is given) takes that push, counts as
/// many again, and ticks.
fn run_vm(store: &Store, me: u64, json: &str, responses: u32, then: Option<&str>) -> Vec<Seen> {
    let mut seen = Vec::new();
    let c = config(json);
    let (state, events) = State::install(store, PLUGIN, &c, me, None);
    seen.push(Seen {
        generation: state.rollouts[0].push.generation,
        first: events.iter().any(|e| matches!(e, Event::Pushed { .. })),
    });
    for t in 0..responses {
        state.rollouts[0].record(1_000 + i64::from(t), 1, None, false);
    }
    state.tick(store, &c, 2_000);
    if let Some(next) = then {
        let c = config(next);
        let (next_state, events) = State::install(store, PLUGIN, &c, me, Some(&state));
        seen.push(Seen {
            generation: next_state.rollouts[0].push.generation,
            first: events.iter().any(|e| matches!(e, Event::Pushed { .. })),
        });
        for t in 0..responses {
            // A request that started before the push ends after it, and
            // one under the new config.
            state.rollouts[0].record(3_000 + i64::from(t), 1, None, false);
            next_state.rollouts[0].record(3_000 + i64::from(t), 1, None, false);
        }
        next_state.tick(store, &c, 4_000);
    }
    seen
}

/// Runs `vms` VMs as threads, each counting `responses`; `canary`: a VM
/// took the push alone first (the records exist before the workers race).
fn scenario(vms: u64, responses: u32, canary: bool, then: Option<String>) {
    let store = Store::default();
    if canary {
        State::install(&store, PLUGIN, &config(IRIS), 0, None);
    }
    let handles: Vec<_> = (1..=vms)
        .map(|me| {
            let store = store.clone();
            let then = then.clone();
            shuttle::thread::spawn(move || run_vm(&store, me, IRIS, responses, then.as_deref()))
        })
        .collect();
    let seen: Vec<Vec<Seen>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let first_push: Vec<&Seen> = seen.iter().map(|s| &s[0]).collect();
    let generation = first_push[0].generation;
    assert!(
        first_push.iter().all(|s| s.generation == generation),
        "every VM on one generation"
    );
    let firsts = first_push.iter().filter(|s| s.first).count();
    if canary {
        assert_eq!(firsts, 0, "the canary said it");
    } else {
        assert!(firsts >= 1, "one VM says it first");
    }
    match then {
        None => assert_eq!(counted(&store, generation), vms as u32 * responses),
        Some(_) => {
            // A push that kept the generation: every count of both configs.
            assert!(seen.iter().all(|s| s[1].generation == generation));
            assert_eq!(counted(&store, generation), vms as u32 * responses * 3);
        }
    }
}

/// `n` threads running `f(i)`, joined: their results.
fn threads<T: Send + 'static>(
    n: u64,
    f: impl Fn(u64) -> T + Send + Sync + Clone + 'static,
) -> Vec<T> {
    let handles: Vec<_> = (1..=n)
        .map(|i| {
            let f = f.clone();
            shuttle::thread::spawn(move || f(i))
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

/// Runs `f` in every order for two VMs, and in many random orders for
/// four (every order of more is too many to try).
fn two_exhaustively_then_four(f: impl Fn(u64) + Send + Sync + Copy + 'static) {
    every_order(move || f(2), None);
    random_orders(move || f(4), 2_000);
}

#[test]
fn of_vms_racing_on_a_push_exactly_one_says_it_and_all_agree_on_its_number() {
    two_exhaustively_then_four(|vms| {
        let store = Store::default();
        // The check of the last push created the record.
        accept_push(&store, "p", 0xa, 0);
        let seen = threads(vms, move |_| accept_push(&store.clone(), "p", 0xb, 0));
        assert!(seen.iter().all(|p| p.generation == 2), "{seen:?}");
        assert_eq!(seen.iter().filter(|p| p.first()).count(), 1, "{seen:?}");
    });
}

#[test]
fn of_vms_racing_to_record_a_trip_exactly_one_adds_it() {
    two_exhaustively_then_four(|vms| {
        let store = Store::default();
        shared::ensure(&store, "h", &held::empty_record());
        let added = threads(vms, move |i| {
            let trip = Held {
                local: Some(1),
                mesh: 1 << i,
            };
            held::record_held(&store.clone(), "h", 1, trip)
        });
        assert_eq!(added.iter().filter(|a| a.local.is_some()).count(), 1);
        let mesh: u32 = added.iter().map(|a| a.mesh).sum();
        assert_eq!(
            mesh,
            (1 << (vms + 1)) - 2,
            "each VM's own version, once: {added:?}"
        );
    });
}

#[test]
fn two_vms_writing_their_windows_in_every_order_lose_no_count() {
    every_order(
        || {
            let store = Store::default();
            let guard = config(IRIS).rollouts[0].guard.clone().unwrap();
            let keys = shared::Keys::new(PLUGIN, Some("iris"));
            let totals = threads(2, move |me| {
                let mut g = Guarded::start(&guard, 2, 1);
                for t in 0..me {
                    g.record(1_000 + t, 1, None, false);
                }
                g.tick(&store.clone(), &keys, me, &[1, 2], &guard, 2_000)
                    .totals[1]
                    .requests
            });
            // Whichever wrote last saw every count.
            assert_eq!(totals.iter().max(), Some(&3), "{totals:?}");
        },
        None,
    );
}

#[test]
fn vms_racing_to_list_themselves_end_up_listed() {
    every_order(
        || {
            let store = Store::default();
            shared::ensure(&store, "v", &[]);
            let lists = threads(2, {
                let store = store.clone();
                move |me| vms::listed(&store, "v", me)
            });
            // A VM lost a race only to the other adding itself: the list
            // it ends with holds it; the next tick lists both.
            assert!(lists
                .iter()
                .enumerate()
                .all(|(i, l)| l.contains(&(i as u64 + 1))));
            for me in 1..=2 {
                assert!(vms::listed(&store, "v", me).contains(&me));
            }
            assert_eq!(vms::listed(&store, "v", 1).len(), 2);
        },
        None,
    );
}

/// VMs ask for the turn at `rounds` successive polls' times (a VM may be up
/// to one interval behind another: ticks read the clock each on its own);
/// `recorded`: the turn record was created first. The polls sent.
fn turns(vms: u64, rounds: i64, recorded: bool) -> usize {
    let store = Store::default();
    if recorded {
        mesh::ensure_turn(&store, "turn", 7);
    }
    threads(vms, move |_| {
        (0..rounds)
            .filter(|round| {
                mesh::take_turn(&store.clone(), "turn", 7, round * 5_000, 5_000).is_ok()
            })
            .count()
    })
    .into_iter()
    .sum()
}

#[test]
fn of_vms_asking_at_the_same_instant_one_sends_each_poll() {
    every_order(
        || assert_eq!(turns(2, 1, true), 1, "one poll per turn"),
        None,
    );
    random_orders(
        || assert_eq!(turns(4, 2, true), 2, "one poll per turn"),
        2_000,
    );
    // Without a record, VMs that read it absent before any wrote may each
    // send (a duplicate query, harmless), and a VM that wrote a stale
    // creation may let the next turn go twice: why the root context creates
    // the record before any stream.
    random_orders(|| assert!((2..=4).contains(&turns(2, 2, false))), 5_000);
}

#[test]
fn eight_vms_in_many_random_orders_lose_no_count_and_agree_on_the_push() {
    random_orders(|| scenario(8, 5, true, None), 300);
    random_orders(|| scenario(8, 5, false, None), 300);
    random_orders(|| scenario(4, 3, true, Some(iris_aliased())), 300);
}

#[test]
fn exactly_one_vm_says_a_push_first_when_its_record_exists() {
    random_orders(
        || {
            let store = Store::default();
            State::install(&store, PLUGIN, &config(IRIS), 0, None);
            let next = IRIS.replace(
                r#""weight": 50}, {"name": "v2", "weight": 50}"#,
                r#""weight": 40}, {"name": "v2", "weight": 60}"#,
            );
            let seen = threads(4, move |me| {
                let (state, events) =
                    State::install(&store.clone(), PLUGIN, &config(&next), me, None);
                let first = events.iter().any(|e| {
                    matches!(
                        e,
                        Event::Pushed {
                            news: News::Restarted,
                            ..
                        }
                    )
                });
                (state.rollouts[0].push.generation, first)
            });
            assert!(seen.iter().all(|&(g, _)| g == 2), "{seen:?}");
            assert_eq!(
                seen.iter().filter(|&&(_, first)| first).count(),
                1,
                "{seen:?}"
            );
        },
        500,
    );
}

/// A guard that trips once the proxy counted 6 failing responses.
const TRIPPING: &str = r#"{"rollouts": [{"name": "iris", "hosts": ["iris.example.com"],
  "versions": [{"name": "v1", "weight": 50}, {"name": "v2", "weight": 50}],
  "guard": {"windowSeconds": 60, "minRequests": 6, "maxErrorRate": 0.5}}]}"#;

#[test]
fn a_breach_is_recorded_once_and_held_back_by_a_vm_that_starts_later() {
    random_orders(
        || {
            let store = Store::default();
            State::install(&store, PLUGIN, &config(TRIPPING), 0, None);
            let trips: usize = threads(3, {
                let store = store.clone();
                move |me| {
                    let c = config(TRIPPING);
                    let (state, _) = State::install(&store, PLUGIN, &c, me, None);
                    for t in 0..2 {
                        state.rollouts[0].record(1_000 + t, 1, Some(Failure::Http5xx), false);
                    }
                    let mut tripped = 0;
                    for now in [2_000, 3_000] {
                        let events = state.tick(&store, &c, now);
                        tripped += events
                            .iter()
                            .filter(|e| matches!(e, Event::Tripped { .. }))
                            .count();
                        // Something new to judge at the next tick.
                        state.rollouts[0].record(now + 1, 0, None, false);
                    }
                    tripped
                }
            })
            .into_iter()
            .sum();
            // The last VM to write its window judged every count: the
            // breach is found, and recorded by one VM.
            assert_eq!(trips, 1, "one VM records the trip");
            let (late, _) = State::install(&store, PLUGIN, &config(TRIPPING), 9, None);
            assert_ne!(late.rollouts[0].held_back(), 0);
        },
        1_000,
    );
}
