//! An accepted config and the VM's state for it: per rollout, its counters,
//! gauges and guard (the local verdict's window, the versions the mesh
//! verdict tripped), and the polls of Prometheus. Built once per push by
//! [`Installed::install`]; streams hold it by `Rc`, so a stream keeps the
//! config it started with across a push.

use std::cell::{Cell, RefCell};

use log::{info, warn};

use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;

use super::metrics::{define_metric, set_gauge, ByDecision, Gauge, LazyCounter};
use super::poll::{MeshState, PollState};
use super::HostShared;
use crate::config::{decimal, Config, Guard, Rollout, MAX_ROLLOUTS, MAX_VERSIONS};
use crate::decision::Live;
use crate::filter::{self, MetricNames, Outcome};
use crate::guard::{self, describe_failures, Failure, Guarded, Judged, Trip};
use crate::hash::murmur3_32;
use crate::mesh;
use crate::shared::{self, Keys};

/// Kinds of failure the guard tells apart (gRPC codes, no status, HTTP 5xx).
const FAILURES: usize = 19;

/// Version names a rollout's gauge record keeps (see
/// [`shared::gauged_names`]): its own, then those of earlier configs.
const GAUGED_VERSIONS: usize = 4 * MAX_VERSIONS;

/// An accepted config and the VM's state for it.
pub struct Installed {
    pub config: Config,
    /// The VM's state of each of `config.rollouts`, in the same order.
    pub rollouts: Vec<RolloutState>,
    /// Requests no rollout takes (a config that lists `rollouts`).
    pub no_rollout: LazyCounter,
    pub(super) plugin_names: MetricNames,
    pub(super) plugin_keys: Keys,
    /// The plugin's trip board as this VM last read it: when it moves,
    /// another VM tripped a guard, and this VM reads the windows of the
    /// rollouts it counted nothing for.
    trips_seen: Cell<u32>,
    /// Unix ms at the last tick: the clock the guard's windows and the
    /// polls use.
    pub now_ms: Cell<i64>,
    /// wyrand state for anonymous picks, seeded on first use.
    pub rng: Cell<Option<u64>>,
    /// The mesh verdict's polls of Prometheus.
    pub polls: Vec<PollState>,
}

/// One rollout's state in the VM.
pub struct RolloutState {
    pub requests: ByDecision,
    responses: ByDecision,
    failed_responses: ByDecision,
    /// Empty unless the guard times responses.
    slow_responses: ByDecision,
    /// Per version: the live weight, in ppm.
    weights: Vec<Gauge>,
    /// The failed responses by kind, per (version, failure): at
    /// `version * FAILURES + failure.index()`.
    failures: Vec<LazyCounter>,
    pub(super) names: MetricNames,
    /// The local verdict: the guard's window, if it has thresholds.
    guard: Option<RefCell<Guarded>>,
    /// The mesh verdict, if the guard reads one.
    pub(super) mesh: Option<MeshState>,
    /// Per version, the guard's trips (defined with a guard, so that a
    /// count of trips starts at zero).
    trips: Vec<u32>,
}

impl Installed {
    /// The VM's state for `config` (its JSON text `text`), pushed to the
    /// plugin `plugin`: logs what the push changed (once per proxy), zeroes
    /// the gauges of what it dropped, and starts or inherits each rollout's
    /// guard.
    pub fn install(config: Config, text: &[u8], plugin: &str, now_ms: i64) -> Installed {
        let store = HostShared;
        let plugin_keys = Keys::new(plugin, None);
        let scoped = config.scope.is_some();
        if scoped {
            let push =
                shared::accept_push(&store, &plugin_keys.last_config(), murmur3_32(text, 0x5eed));
            if push.first {
                info!("config accepted: {}", config.summary());
            }
            let names: Vec<&str> = config.rollouts.iter().filter_map(Rollout::name).collect();
            let dropped = shared::update_gauged(
                &store,
                &plugin_keys.gauged_rollouts(),
                &names,
                2 * MAX_ROLLOUTS,
            );
            for name in dropped {
                zero_dropped_rollout(&store, plugin, &name);
            }
        }
        let rollouts = config
            .rollouts
            .iter()
            .map(|rollout| RolloutState::install(&store, plugin, rollout, scoped))
            .collect();
        let polls = mesh::polls(&config, plugin)
            .into_iter()
            .map(|poll| PollState::new(poll, now_ms))
            .collect();
        let installed = Installed {
            rollouts,
            no_rollout: LazyCounter::default(),
            plugin_names: MetricNames::new(plugin, None),
            trips_seen: Cell::new(shared::count(&store, &plugin_keys.trips())),
            plugin_keys,
            now_ms: Cell::new(now_ms),
            rng: Cell::new(None),
            polls,
            config,
        };
        installed.show_weights(false);
        installed
    }

    /// The tick period: once a second, or a few times per slot of the
    /// shortest guard window that is judged here.
    pub fn tick_ms(&self) -> u64 {
        self.config
            .rollouts
            .iter()
            .filter_map(|r| r.guard.as_ref())
            .filter(|g| g.judges_locally())
            .map(|g| guard::Window::new(1, g.window_ms).slot_ms())
            .min()
            .map_or(1000, |slot| slot.clamp(100, 1000))
    }

    /// Adds what was counted since the last flush to Envoy's counters.
    pub fn flush_counts(&self) {
        self.no_rollout
            .flush(|| self.plugin_names.no_rollout_requests());
        for (rollout, state) in self.config.rollouts.iter().zip(&self.rollouts) {
            state.flush_counts(rollout);
        }
    }

    /// Sets the weight gauges to the live weights (a schedule moves them);
    /// `scheduled_only`: of the rollouts with a schedule only.
    pub fn show_weights(&self, scheduled_only: bool) {
        let now = self.now_ms.get();
        for (rollout, state) in self.config.rollouts.iter().zip(&self.rollouts) {
            if scheduled_only && rollout.schedule.is_none() {
                continue;
            }
            for (i, gauge) in state.weights.iter().enumerate() {
                gauge.show(filter::weight_ppm(rollout.weight_at(now, i)));
            }
        }
    }

    /// What the decision for rollout `index` needs from the clock and the
    /// guard. The clock is read per request only when a schedule or a
    /// latency bound needs it.
    pub fn live(&self, index: usize, clock: impl FnOnce() -> i64) -> Live {
        let Some((rollout, state)) = self
            .config
            .rollouts
            .get(index)
            .zip(self.rollouts.get(index))
        else {
            return Live::default();
        };
        let needs_clock = rollout.schedule.is_some()
            || rollout
                .guard
                .as_ref()
                .is_some_and(|g| g.slow_response_ms.is_some());
        Live {
            now_ms: if needs_clock {
                clock()
            } else {
                self.now_ms.get()
            },
            tripped: state.tripped(),
        }
    }

    /// Counts a response of rollout `index` the guard judged.
    pub fn record(&self, index: usize, o: Outcome) {
        if let Some(state) = self.rollouts.get(index) {
            state.record(self.now_ms.get(), o);
        }
    }

    /// The guards' tick: each rollout that counted something merges it into
    /// its proxy-wide window and judges it; when another VM tripped a guard
    /// (the trip board moved), the others look at their windows too.
    pub fn tick_guards(&self) {
        let store = HostShared;
        let board = shared::count(&store, &self.plugin_keys.trips());
        let learn = board != self.trips_seen.replace(board);
        let now = u64::try_from(self.now_ms.get()).unwrap_or(0);
        for (rollout, state) in self.config.rollouts.iter().zip(&self.rollouts) {
            if let (true, Some(m)) = (learn, &state.mesh) {
                if m.learn(&store) {
                    set_gauge(&state.names.guard_tripped(), 1);
                }
            }
            let (Some(cell), Some(config)) = (&state.guard, &rollout.guard) else {
                continue;
            };
            let Ok(mut g) = cell.try_borrow_mut() else {
                continue;
            };
            let judged = if !g.local.is_empty() {
                g.merge_and_judge(&store, config, now)
            } else if learn {
                g.learn_trip(&store)
            } else {
                Judged::Quiet
            };
            match judged {
                Judged::Quiet => {}
                Judged::Latched => set_gauge(&state.names.guard_tripped(), 1),
                Judged::Tripped(trip) => {
                    if let Some(&id) = state.trips.get(trip.version) {
                        let _ = hostcalls::increment_metric(id, 1);
                    }
                    set_gauge(&state.names.guard_tripped(), 1);
                    log_trip(rollout, config, &trip);
                }
            }
        }
    }
}

impl Drop for Installed {
    /// The last stream or root holding a config flushes what it counted.
    fn drop(&mut self) {
        self.flush_counts();
    }
}

impl RolloutState {
    fn install(store: &HostShared, plugin: &str, rollout: &Rollout, scoped: bool) -> RolloutState {
        let keys = Keys::new(plugin, rollout.name());
        let names = MetricNames::new(plugin, rollout.name());
        let fingerprint = rollout.fingerprint();
        let push = shared::accept_push(store, &keys.last_config(), fingerprint);
        if push.first {
            match rollout.name() {
                Some(name) if scoped => info!("rollout {name} accepted: {}", rollout.summary()),
                _ => info!("config accepted: {}", rollout.summary()),
            }
            // A tripped guard holds until a new config arrives: this is it.
            if guard::reset_mark(store, &keys) {
                let of = rollout
                    .name()
                    .map(|n| format!(" of rollout {n}"))
                    .unwrap_or_default();
                warn!("guard reset{of}: a new config was pushed; canary versions get their share again");
            }
        }
        // Every VM zeroes the gauges of dropped versions: a VM still on the
        // old config may have set one after the first VM on the new one
        // zeroed it.
        let versions: Vec<&str> = rollout.versions.iter().map(|v| v.name.as_str()).collect();
        for name in
            shared::update_gauged(store, &keys.gauged_versions(), &versions, GAUGED_VERSIONS)
        {
            set_gauge(&names.weight(&name), 0);
            set_gauge(&names.stable(&name), 0);
        }
        for (i, version) in rollout.versions.iter().enumerate() {
            set_gauge(&names.stable(&version.name), u64::from(i == 0));
        }
        if push.first && rollout.guard.is_some() {
            set_gauge(&names.guard_tripped(), 0);
        }
        let mesh_state = rollout
            .guard
            .as_ref()
            .and_then(|g| g.mesh.as_ref())
            .map(|_| MeshState::start(store, keys.clone(), push));
        let guard = rollout
            .guard
            .as_ref()
            .filter(|g| g.judges_locally())
            .map(|config| {
                RefCell::new(Guarded::start(
                    store,
                    keys,
                    fingerprint,
                    push,
                    config,
                    rollout.versions.len(),
                ))
            });
        // Responses are counted as the guard judges them: only with one,
        // which reads each response anyway (the local verdict's window, or
        // the counters the mesh verdict's rules read).
        let judged = rollout.guard.is_some();
        let timed = rollout
            .guard
            .as_ref()
            .is_some_and(|g| g.slow_response_ms.is_some());
        RolloutState {
            requests: ByDecision::define(rollout, true, |v, r| names.requests(v, r)),
            responses: ByDecision::define(rollout, judged, |v, r| names.responses(v, r)),
            failed_responses: ByDecision::define(rollout, judged, |v, r| {
                names.failed_responses(v, r)
            }),
            slow_responses: ByDecision::define(rollout, timed, |v, r| names.slow_responses(v, r)),
            weights: rollout
                .versions
                .iter()
                .map(|v| Gauge::define(&names.weight(&v.name)))
                .collect(),
            failures: (0..if judged {
                rollout.versions.len() * FAILURES
            } else {
                0
            })
                .map(|_| LazyCounter::default())
                .collect(),
            trips: match &rollout.guard {
                Some(_) => rollout
                    .versions
                    .iter()
                    .map(|v| define_metric(MetricType::Counter, &names.guard_trips(&v.name)))
                    .collect(),
                None => Vec::new(),
            },
            names,
            guard,
            mesh: mesh_state,
        }
    }

    /// The versions held back: every canary once the local verdict tripped,
    /// and those the mesh verdict named.
    fn tripped(&self) -> u32 {
        let local = self
            .guard
            .as_ref()
            .is_some_and(|g| g.try_borrow().is_ok_and(|g| g.tripped));
        let mesh = self.mesh.as_ref().map_or(0, |m| m.tripped.get());
        if local {
            Live::ALL_CANARIES | mesh
        } else {
            mesh
        }
    }

    fn record(&self, now_ms: i64, o: Outcome) {
        // The local verdict's window, if the guard judges here; the
        // counters in any case (the mesh's rules read them).
        if let Some(Ok(mut g)) = self.guard.as_ref().map(RefCell::try_borrow_mut) {
            let at = u64::try_from(now_ms).unwrap_or(0);
            g.local.record(at, o.version, o.failure, o.slow);
        }
        self.responses.add(o.version, o.reason);
        if let Some(f) = o.failure {
            self.failed_responses.add(o.version, o.reason);
            if let Some(c) = self.failures.get(o.version * FAILURES + f.index()) {
                c.add();
            }
        }
        if o.slow {
            self.slow_responses.add(o.version, o.reason);
        }
    }

    fn flush_counts(&self, rollout: &Rollout) {
        let names = &self.names;
        self.requests.flush();
        self.responses.flush();
        self.failed_responses.flush();
        self.slow_responses.flush();
        let kinds = rollout
            .versions
            .iter()
            .flat_map(|v| Failure::all().map(move |f| (v, f)));
        for (counter, (version, failure)) in self.failures.iter().zip(kinds) {
            counter.flush(|| names.failures(&version.name, failure));
        }
    }
}

/// Zeroes the gauges of a rollout the config no longer lists: its versions'
/// weight and stable gauges, and its guard's.
fn zero_dropped_rollout(store: &HostShared, plugin: &str, rollout: &str) {
    let keys = Keys::new(plugin, Some(rollout));
    let names = MetricNames::new(plugin, Some(rollout));
    for version in shared::update_gauged(store, &keys.gauged_versions(), &[], GAUGED_VERSIONS) {
        set_gauge(&names.weight(&version), 0);
        set_gauge(&names.stable(&version), 0);
    }
    set_gauge(&names.guard_tripped(), 0);
}

pub(super) fn version_name(rollout: &Rollout, i: usize) -> &str {
    rollout.versions.get(i).map_or("?", |v| v.name.as_str())
}

fn log_trip(rollout: &Rollout, config: &Guard, t: &Trip) {
    let name = |i: usize| version_name(rollout, i);
    let failed = match describe_failures(t.counts.failures) {
        kinds if kinds.is_empty() => kinds,
        kinds => format!("; {kinds}"),
    };
    let of = rollout
        .name()
        .map(|n| format!(" of rollout {n}"))
        .unwrap_or_default();
    warn!(
        "guard tripped{of}: {} {} over the last {}s: {} of {} responses failed (rate {}{}), {} slow; \
         stable {}: {} of {} failed (rate {}). Every request no rule pins now goes to {} \
         until a new config is pushed",
        name(t.version),
        t.cause,
        config.window_ms / 1000,
        t.counts.errors,
        t.counts.requests,
        decimal(t.counts.error_rate()),
        failed,
        t.counts.slow,
        name(0),
        t.stable.errors,
        t.stable.requests,
        decimal(t.stable.error_rate()),
        name(0),
    );
}
