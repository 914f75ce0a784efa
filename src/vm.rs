//! What one VM keeps of the config it serves, against the proxy's shared
//! data: per rollout, its push (generation and news), its guard's counts,
//! and the versions it holds back. Pure: the glue calls [`State::install`]
//! on each push and [`State::tick`] on each tick, and turns the [`Event`]s
//! they return into logs, counters and gauges.
//!
//! Everything here is written to be right whatever the interleaving of the
//! VMs of a proxy (see `crate::shared`); `src/tests/interleavings.rs` runs
//! several VMs through it under a scheduler that orders their shared-data
//! calls every possible way.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use crate::config::{Config, Rollout};
use crate::guard::{Counts, Failure, Guarded, Trip, Tripped};
use crate::hash::murmur3_32;
use crate::shared::held::{self, Held};
use crate::shared::{self, accept_push, vms, Keys, News, Push, SharedData, VmId};

/// One rollout's state in this VM.
#[derive(Debug)]
pub struct RolloutState {
    /// The rollout's name (`None`: a config without `rollouts`).
    name: Option<Box<str>>,
    pub keys: Keys,
    /// The push of the rollout this VM's config belongs to.
    pub push: Push,
    /// The local verdict's counts, if the guard judges here. Shared with
    /// this VM's state under the next config when that push keeps the
    /// rollout's generation, so a response of a request that started before
    /// the push still counts.
    guard: Option<Rc<RefCell<Guarded>>>,
    /// The versions this VM holds back, as far as it knows.
    held: Cell<Held>,
}

impl RolloutState {
    /// The versions held back, bit `i` for version `i`.
    pub fn held_back(&self) -> u32 {
        self.held.get().versions()
    }

    pub fn held(&self) -> Held {
        self.held.get()
    }

    /// Counts a response the guard judges (no host call: the request path).
    pub fn record(&self, now_ms: i64, version: usize, failure: Option<Failure>, slow: bool) {
        if let Some(Ok(mut g)) = self.guard.as_deref().map(RefCell::try_borrow_mut) {
            let at = u64::try_from(now_ms).unwrap_or(0);
            g.record(at, version, failure, slow);
        }
    }

    /// Adds versions the mesh verdict names; true if any is new to this VM.
    pub fn hold_back(&self, more: Held) -> bool {
        let before = self.held.get();
        self.held.set(before.and(more));
        !more.beyond(before).is_empty()
    }
}

/// What a push or a tick did that the glue shows: a log line, a counter, a
/// gauge.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// This VM is the first of the proxy to take the push of a rollout
    /// (an index into the config's rollouts): it logs what changed.
    /// `reset`: what the rollout's previous push held back, which a restart
    /// lets go.
    Pushed {
        rollout: usize,
        news: News,
        reset: Held,
    },
    /// This VM's judgement tripped a rollout's local verdict, and recorded
    /// it for the proxy: it counts and logs the trip.
    Tripped { rollout: usize, trip: Trip },
    /// The rollout holds back versions it did not before in this VM (a
    /// trip another VM recorded, or a latched one).
    HeldBack { rollout: usize, versions: u32 },
    /// The totals a rollout's guard judged, every VM's counts added up.
    Judged { rollout: usize, totals: Vec<Counts> },
}

/// This VM's state of every rollout of a config, in the config's order.
#[derive(Debug)]
pub struct State {
    pub rollouts: Vec<RolloutState>,
    plugin: Keys,
    /// This VM's id: its windows' keys.
    me: VmId,
    /// The plugin's trip board as this VM last read it: when it moves,
    /// another VM recorded a trip, and this one reads the held records.
    trips_seen: Cell<u32>,
}

/// A digest of where a rollout applies (its hosts, path prefixes and
/// models): a push that changes only this keeps the rollout's generation,
/// and is reported as a move.
fn scope_digest(rollout: &Rollout) -> u32 {
    match &rollout.scope {
        Some(s) => murmur3_32(
            format!("{:?}{:?}{:?}", s.hosts, s.path_prefixes, s.models).as_bytes(),
            0x5eed,
        ),
        None => 0,
    }
}

impl State {
    /// Takes part in the push of `config` for plugin `plugin` (its name):
    /// each rollout's push is accepted, its guard's counts go on from
    /// `previous` (this VM's state under its last config) if the push kept
    /// its generation, and what the proxy holds back for it is read.
    pub fn install(
        store: &impl SharedData,
        plugin: &str,
        config: &Config,
        me: VmId,
        previous: Option<&State>,
    ) -> (State, Vec<Event>) {
        let plugin_keys = Keys::new(plugin, None);
        let mut events = Vec::new();
        let mut rollouts = Vec::with_capacity(config.rollouts.len());
        for (i, rollout) in config.rollouts.iter().enumerate() {
            let keys = Keys::new(plugin, rollout.name());
            let push = accept_push(
                store,
                &keys.last_config(),
                rollout.fingerprint(),
                scope_digest(rollout),
            );
            if push.first() {
                let reset = match push.news {
                    News::Restarted => {
                        held::read(store, &keys.held(), push.generation.wrapping_sub(1))
                    }
                    _ => Held::default(),
                };
                events.push(Event::Pushed {
                    rollout: i,
                    news: push.news,
                    reset,
                });
            }
            let carried = previous.and_then(|p| p.guard_of(rollout.name()));
            let guard = rollout
                .guard
                .as_ref()
                .filter(|g| g.judges_locally())
                .map(|config| {
                    let versions = rollout.versions.len();
                    match carried {
                        Some(g) if g.borrow().continues(config, versions, push.generation) => g,
                        _ => Rc::new(RefCell::new(Guarded::start(
                            config,
                            versions,
                            push.generation,
                        ))),
                    }
                });
            // Generation 0 is no push's: nothing held back.
            shared::ensure(store, &keys.held(), &held::empty_record());
            let held = held::read(store, &keys.held(), push.generation);
            rollouts.push(RolloutState {
                name: rollout.name().map(Into::into),
                keys,
                push,
                guard,
                held: Cell::new(held),
            });
        }
        shared::ensure(store, &plugin_keys.trips(), &0u32.to_le_bytes());
        shared::ensure(store, &plugin_keys.vms(), &[]);
        let state = State {
            rollouts,
            trips_seen: Cell::new(shared::count(store, &plugin_keys.trips())),
            plugin: plugin_keys,
            me,
        };
        (state, events)
    }

    /// The guard of the rollout named `name` (`None`: a config without
    /// `rollouts`), for the next config.
    fn guard_of(&self, name: Option<&str>) -> Option<Rc<RefCell<Guarded>>> {
        let state = self.rollouts.iter().find(|r| r.name.as_deref() == name)?;
        state.guard.clone()
    }

    /// The tick: each guard that counted something writes its window and
    /// judges the proxy's; when another VM recorded a trip, this VM reads
    /// the held records of its rollouts.
    pub fn tick(&self, store: &impl SharedData, config: &Config, now_ms: i64) -> Vec<Event> {
        let mut events = Vec::new();
        let now = u64::try_from(now_ms).unwrap_or(0);
        let mut vms: Option<Vec<VmId>> = None;
        for (i, (rollout, state)) in config.rollouts.iter().zip(&self.rollouts).enumerate() {
            let (Some(cell), Some(guard)) = (&state.guard, &rollout.guard) else {
                continue;
            };
            let Ok(mut g) = cell.try_borrow_mut() else {
                continue;
            };
            if !g.has_news() {
                continue;
            }
            let listed = vms.get_or_insert_with(|| vms::listed(store, &self.plugin.vms(), self.me));
            let judged = g.tick(store, &state.keys, self.me, listed, guard, now);
            match judged.trip {
                Some(Tripped::Now(trip)) => {
                    state.hold_back(Held {
                        local: Some(trip.version),
                        mesh: 0,
                    });
                    events.push(Event::Tripped { rollout: i, trip });
                }
                Some(Tripped::Already) => {
                    let recorded = held::read(store, &state.keys.held(), state.push.generation);
                    if state.hold_back(recorded) {
                        events.push(Event::HeldBack {
                            rollout: i,
                            versions: state.held_back(),
                        });
                    }
                }
                None => {}
            }
            events.push(Event::Judged {
                rollout: i,
                totals: judged.totals,
            });
        }
        events.extend(self.learn(store));
        events
    }

    /// Reads the held records of every rollout when the plugin's trip board
    /// moved (another VM recorded a trip): one read per tick otherwise.
    pub fn learn(&self, store: &impl SharedData) -> Vec<Event> {
        let board = shared::count(store, &self.plugin.trips());
        if board == self.trips_seen.replace(board) {
            return Vec::new();
        }
        let mut events = Vec::new();
        for (i, state) in self.rollouts.iter().enumerate() {
            let recorded = held::read(store, &state.keys.held(), state.push.generation);
            if state.hold_back(recorded) {
                events.push(Event::HeldBack {
                    rollout: i,
                    versions: state.held_back(),
                });
            }
        }
        events
    }

    /// Moves the trip board on after this VM recorded a mesh trip, so the
    /// other VMs read the held records.
    pub fn announce_trip(&self, store: &impl SharedData) {
        shared::bump(store, &self.plugin.trips());
    }

    /// This VM's id.
    pub fn me(&self) -> VmId {
        self.me
    }
}
