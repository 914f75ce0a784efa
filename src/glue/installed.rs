//! An accepted config and this VM's state for it: the config, what the VM
//! keeps of each rollout against the proxy's shared data (`crate::vm`),
//! each rollout's series, and the polls of Prometheus. Built once per push
//! by [`Installed::install`]; streams hold it by `Rc`, so a stream keeps the
//! config it started with across a push.
//!
//! Only the config installed last acts for the plugin: one that a push
//! replaced while streams (or its root context) still hold it
//! ([`Installed::superseded`]) flushes what those streams count and does
//! nothing else.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::{Rc, Weak};

use log::{info, warn};

use super::logs;
use super::metrics::{add_to_counter, Counter};
use super::polls::Polls;
use super::rollout_metrics::{zero_dropped_rollout, RolloutMetrics};
use super::{vm_id, HostShared};
use crate::config::{Config, Rollout};
use crate::decision::Live;
use crate::filter::{MetricNames, Outcome};
use crate::guard;
use crate::hash::murmur3_32;
use crate::mesh::{self, Ignored, Poll, PollFailure, Sample};
use crate::plan::Unknown;
use crate::shared::{self, accept_push, gauged, Held, Keys, UNNAMED_ROLLOUT};
use crate::vm::{self, Event};

thread_local! {
    /// The config each plugin serves in this VM. Envoy gives every push a
    /// root context of its own, so this, not the root, is where a push
    /// finds the config it replaces.
    static SERVING: RefCell<HashMap<String, Weak<Installed>>> = RefCell::new(HashMap::new());
}

/// How long a request waits for its body before the tick decides it
/// without (when Envoy delivers no body while it holds the headers).
pub const BODY_RESCUE_MS: u64 = 200;

/// The longest summary of a config kept for the log line of a rejected one.
const MAX_SERVING_SUMMARY: usize = 1024;

/// An accepted config and this VM's state for it.
pub struct Installed {
    pub config: Config,
    pub state: vm::State,
    /// Each rollout's series, in the config's order.
    pub metrics: Vec<RolloutMetrics>,
    /// Requests no rollout takes (a config that lists `rollouts`).
    no_rollout: Counter,
    plugin: String,
    plugin_names: MetricNames,
    plugin_keys: Keys,
    /// Unix ms at the last tick: the clock the guard's windows and the
    /// polls use.
    pub now_ms: Cell<i64>,
    /// wyrand state for anonymous picks, seeded on first use.
    pub rng: Cell<Option<u64>>,
    polls: Polls,
    /// Whether Envoy delivers the bodies of requests the filter holds.
    pub bodies: Deliveries,
    /// Request bodies read, and requests whose model was needed from the
    /// body and not learnt, by why.
    bodies_read: Counter,
    model_unknown: Vec<(Unknown, Counter)>,
}

impl Installed {
    /// This VM's state for `config` (its JSON text `text`), pushed to the
    /// plugin `plugin`, now serving the plugin in this VM. The guards of the
    /// config it replaces go on where the push kept a rollout's generation.
    /// Logs what the push changed (once per proxy) and zeroes the gauges of
    /// what it dropped.
    pub fn install(config: Config, text: &[u8], plugin: &str, now_ms: i64) -> Rc<Installed> {
        let previous = SERVING.with(|s| s.borrow().get(plugin).and_then(Weak::upgrade));
        let store = HostShared;
        let plugin_keys = Keys::new(plugin, None);
        let whole = accept_push(
            &store,
            &plugin_keys.last_push(),
            murmur3_32(text, 0x5eed),
            0,
        );
        if whole.first() {
            info!("config accepted: {}", config.summary());
            let summary = config.summary_within(MAX_SERVING_SUMMARY);
            store_serving(&store, &plugin_keys, &summary);
        }
        let current: Vec<&str> = config
            .rollouts
            .iter()
            .map(|r| r.name().unwrap_or(UNNAMED_ROLLOUT))
            .collect();
        for name in gauged::dropped(&store, &plugin_keys.gauged_rollouts(), &current) {
            zero_dropped_rollout(&store, plugin, &name);
        }
        if let Some(p) = &previous {
            // Its calls in flight answer a config no rollout serves now.
            let n = p.polls.supersede();
            if n > 0 {
                let name = PollFailure::Superseded.name();
                add_to_counter(&MetricNames::new(plugin, None).mesh_polls(&name), n);
            }
        }
        let (state, events) = vm::State::install(
            &store,
            plugin,
            &config,
            vm_id(),
            previous.as_deref().map(|p| &p.state),
        );
        let metrics = config
            .rollouts
            .iter()
            .map(|r| RolloutMetrics::new(plugin, r))
            .collect();
        let plugin_names = MetricNames::new(plugin, None);
        let no_rollout = Counter::default();
        if config.index.is_some() {
            no_rollout.define(&plugin_names.no_rollout_requests());
        }
        let installed = Installed {
            polls: Polls::new(mesh::polls(&config), &plugin_keys),
            state,
            metrics,
            no_rollout,
            plugin: plugin.to_string(),
            plugin_names,
            plugin_keys,
            now_ms: Cell::new(now_ms),
            rng: Cell::new(None),
            bodies: Deliveries::default(),
            bodies_read: Counter::default(),
            model_unknown: Unknown::all().map(|u| (u, Counter::default())).collect(),
            config,
        };
        // A config without `rollouts` serves every request; a rollout the
        // proxy served before keeps its gauges current in every VM.
        let scoped = installed.config.index.is_some();
        let served = gauged::Names::read(&store, &installed.plugin_keys.gauged_rollouts());
        for (i, (rollout, m)) in installed.each().enumerate() {
            if !scoped || m.served_by_proxy(&served) {
                m.activate(&store, rollout, now_ms, installed.held_back(i));
            }
        }
        installed.show(events);
        let installed = Rc::new(installed);
        SERVING.with(|s| {
            s.borrow_mut()
                .insert(plugin.to_string(), Rc::downgrade(&installed))
        });
        installed
    }

    fn each(&self) -> impl Iterator<Item = (&Rollout, &RolloutMetrics)> {
        self.config.rollouts.iter().zip(&self.metrics)
    }

    fn held_back(&self, index: usize) -> u32 {
        self.state.rollouts.get(index).map_or(0, |r| r.held_back())
    }

    /// Whether a later push replaced this config in the VM.
    pub fn superseded(&self) -> bool {
        let serving = SERVING.with(|s| s.borrow().get(&self.plugin).cloned());
        !serving.is_some_and(|s| std::ptr::eq(s.as_ptr(), self))
    }

    /// The tick period: once a second, or a few times per slot of the
    /// shortest guard window that is judged here.
    pub fn tick_ms(&self) -> u64 {
        let guards = self
            .config
            .rollouts
            .iter()
            .filter_map(|r| r.guard.as_ref())
            .filter(|g| g.judges_locally())
            .map(|g| guard::Window::new(1, g.window_ms).slot_ms())
            .min()
            .map_or(1000, |slot| slot.clamp(100, 1000));
        // A request waiting for a body Envoy does not deliver waits a tick.
        if self.config.body.reads {
            guards.min(BODY_RESCUE_MS)
        } else {
            guards
        }
    }

    /// The tick: flushes the counters; then, for the config the plugin
    /// serves, moves scheduled weights, runs the guards and sends the polls
    /// that are due with `dispatch`.
    pub fn tick(&self, now_ms: i64, dispatch: impl FnMut(&Poll) -> Option<u32>) {
        self.now_ms.set(now_ms);
        self.flush_counts();
        if self.superseded() {
            return;
        }
        for (rollout, m) in self.each() {
            if rollout.schedule.is_some() {
                m.show_weights(rollout, now_ms);
            }
        }
        let events = self.state.tick(&HostShared, &self.config, now_ms);
        self.show(events);
        for poll in self.polls.tick(now_ms, dispatch) {
            self.answer(poll, Err(PollFailure::Unreachable));
        }
    }

    /// Adds what was counted since the last flush to Envoy's counters.
    pub fn flush_counts(&self) {
        self.no_rollout
            .flush(|| self.plugin_names.no_rollout_requests());
        self.bodies_read.flush(|| self.plugin_names.bodies_read());
        for (why, c) in &self.model_unknown {
            c.flush(|| self.plugin_names.model_unknown(why.as_str()));
        }
        let now = self.now_ms.get();
        for (i, (rollout, m)) in self.each().enumerate() {
            m.flush(&HostShared, rollout, now, self.held_back(i));
        }
    }

    /// Counts a request no rollout takes.
    pub fn count_unclaimed(&self) {
        self.no_rollout.add();
    }

    /// Counts a request whose model was needed from its body and not learnt.
    pub fn count_model_unknown(&self, why: Unknown) {
        if let Some((_, c)) = self.model_unknown.iter().find(|(u, _)| *u == why) {
            c.add();
        }
    }

    /// Counts a body read.
    pub fn count_body_read(&self) {
        self.bodies_read.add();
    }

    /// Whether a line of kind `what` may be logged now (once a minute per
    /// proxy).
    pub fn log_due(&self, what: &str, now_ms: i64) -> bool {
        shared::log_due(&HostShared, &self.plugin_keys.logged(what), now_ms)
    }

    /// What the decision for rollout `index` needs from the clock and the
    /// guard. The clock is read per request only when a schedule or a
    /// latency bound needs it.
    pub fn live(&self, index: usize, clock: impl FnOnce() -> i64) -> Live {
        let Some(rollout) = self.config.rollouts.get(index) else {
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
            held_back: self.held_back(index),
        }
    }

    /// Counts a decision of rollout `index`.
    pub fn count_request(&self, index: usize, version: usize, reason: crate::decision::Reason) {
        if let Some(m) = self.metrics.get(index) {
            m.count_request(version, reason);
        }
    }

    /// Counts a response of rollout `index` the guard judged.
    pub fn record(&self, index: usize, o: Outcome) {
        if let Some(m) = self.metrics.get(index) {
            m.count_response(&o);
        }
        if let Some(state) = self.state.rollouts.get(index) {
            state.record(self.now_ms.get(), o.version, o.failure, o.slow);
        }
    }

    /// The answer to the call `token`, read by `read`, if it is a call in
    /// flight of this config (a push gives up the calls of the config it
    /// replaces).
    pub fn on_answer(&self, token: u32, read: impl FnOnce() -> Result<Vec<Sample>, PollFailure>) {
        // A call of a config a push replaced was counted (superseded) when
        // the push came: its answer, if Envoy still delivers it, is dropped.
        if let Some(poll) = self.polls.answered(token) {
            self.answer(poll, read());
        }
    }

    /// A poll's answer: counted, and applied to each rollout that reads it.
    /// A failure changes nothing: the last verdict holds.
    fn answer(&self, poll: &Poll, answer: Result<Vec<Sample>, PollFailure>) {
        let store = HostShared;
        let result = answer.as_ref().map_or_else(|f| f.name(), |_| "ok".into());
        add_to_counter(&self.plugin_names.mesh_polls(&result), 1);
        let samples = match answer {
            Ok(samples) => samples,
            Err(failure) => {
                if self.poll_log_due(poll, "failure") {
                    warn!("{}", logs::poll_failed(poll, failure));
                }
                return;
            }
        };
        let records = |i: usize| {
            let r = self.state.rollouts.get(i)?;
            Some((&r.keys, r.push.generation))
        };
        let applied = mesh::apply(&samples, poll, &self.config, records, &store);
        let mut added_any = false;
        for v in &applied.verdicts {
            let (Some(rollout), Some(state), Some(m)) = (
                self.config.rollouts.get(v.rollout),
                self.state.rollouts.get(v.rollout),
                self.metrics.get(v.rollout),
            ) else {
                continue;
            };
            let more = Held {
                local: None,
                mesh: v.failing,
            };
            if state.hold_back(more) || v.added != 0 {
                m.activate(&store, rollout, self.now_ms.get(), state.held_back());
                m.show_held(state.held_back());
            }
            if v.added == 0 {
                continue;
            }
            // This VM recorded the trip: it counts it and says so, once for
            // the proxy.
            added_any = true;
            for version in versions_of(rollout, v.added) {
                add_to_counter(&m.names().mesh_trips(version), 1);
            }
            warn!(
                "{}",
                logs::mesh_tripped(rollout, poll_query(rollout), v.added)
            );
        }
        if added_any {
            // The other VMs read the held records when the board moves.
            self.state.announce_trip(&store);
        }
        self.show_ignored(poll, &applied.ignored);
    }

    fn show_ignored(&self, poll: &Poll, ignored: &Ignored) {
        for (reason, n) in [
            ("unknown_rollout", ignored.unknown_rollout),
            ("unknown_version", ignored.unknown_version),
            ("bad_value", ignored.bad_value),
        ] {
            if n > 0 {
                add_to_counter(&self.plugin_names.mesh_ignored_series(reason), n);
            }
        }
        let unknown = ignored.unknown_rollout + ignored.unknown_version;
        if unknown > 0 && self.poll_log_due(poll, "ignored") {
            warn!("{}", logs::series_ignored(poll, unknown));
        }
        if ignored.bad_value > 0 && self.poll_log_due(poll, "values") {
            warn!("{}", logs::values_ignored(poll, ignored.bad_value));
        }
    }

    /// Whether a line of kind `what` about `poll` may be logged now: each
    /// kind at most once a minute per proxy, apart from the others.
    fn poll_log_due(&self, poll: &Poll, what: &str) -> bool {
        let key = self.plugin_keys.poll_logged(poll.index, what);
        shared::log_due(&HostShared, &key, self.now_ms.get())
    }

    /// Shows what a push or a tick did: log lines, counters, gauges.
    fn show(&self, events: Vec<Event>) {
        let store = HostShared;
        let scoped = self.config.index.is_some();
        for event in events {
            match event {
                Event::Pushed {
                    rollout,
                    news,
                    reset,
                } => {
                    let Some(r) = self.config.rollouts.get(rollout) else {
                        continue;
                    };
                    if let Some(line) = logs::pushed(r, news, scoped) {
                        info!("{line}");
                    }
                    if !reset.is_empty() {
                        warn!("{}", logs::guard_reset(r));
                    }
                }
                Event::Tripped { rollout, trip } => {
                    let (Some(r), Some(m)) =
                        (self.config.rollouts.get(rollout), self.metrics.get(rollout))
                    else {
                        continue;
                    };
                    m.activate(&store, r, self.now_ms.get(), self.held_back(rollout));
                    if let Some(v) = r.versions.get(trip.version) {
                        add_to_counter(&m.names().guard_trips(&v.name), 1);
                    }
                    m.show_held(self.held_back(rollout));
                    if let Some(config) = &r.guard {
                        warn!("{}", logs::tripped(r, config, &trip));
                    }
                }
                Event::HeldBack { rollout, versions } => {
                    if let (Some(r), Some(m)) =
                        (self.config.rollouts.get(rollout), self.metrics.get(rollout))
                    {
                        m.activate(&store, r, self.now_ms.get(), versions);
                        m.show_held(versions);
                    }
                }
                Event::Judged { rollout, totals } => {
                    if let (Some(r), Some(m)) =
                        (self.config.rollouts.get(rollout), self.metrics.get(rollout))
                    {
                        m.show_totals(r, &totals);
                    }
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

/// The summary of the config serving now, for the line of a rejected push.
fn store_serving(store: &HostShared, keys: &Keys, summary: &str) {
    use crate::shared::SharedData;
    store.set(&keys.serving(), summary.as_bytes(), None);
}

/// The summary of the config the plugin serves, as the last accepted push
/// stored it.
pub fn serving(plugin: &str) -> Option<String> {
    use crate::shared::SharedData;
    let (value, _) = HostShared.get(&Keys::new(plugin, None).serving());
    value.map(|v| String::from_utf8_lossy(&v).into_owned())
}

/// The names of the versions of `rollout` whose bits `bits` holds.
fn versions_of(rollout: &Rollout, bits: u32) -> impl Iterator<Item = &str> {
    rollout
        .versions
        .iter()
        .enumerate()
        .filter(move |&(i, _)| i > 0 && i < 32 && bits >> i & 1 == 1)
        .map(|(_, v)| v.name.as_str())
}

fn poll_query(rollout: &Rollout) -> &str {
    rollout
        .guard
        .as_ref()
        .and_then(|g| g.mesh.as_ref())
        .map_or("", |m| m.query.as_str())
}

/// A config's record, in this VM, of whether Envoy delivers the bodies of
/// requests whose headers the filter holds.
#[derive(Default)]
pub struct Deliveries {
    delivered: Cell<u64>,
    rescued: Cell<u64>,
}

/// Rescues with no body ever delivered after which a config stops waiting.
const RESCUES_BEFORE_GIVING_UP: u64 = 3;

impl Deliveries {
    /// Whether to hold a request's headers while its body comes.
    pub fn held_while_read(&self) -> bool {
        self.any_delivered() || self.rescued.get() < RESCUES_BEFORE_GIVING_UP
    }

    /// Whether Envoy delivered a body while the filter held the headers.
    pub fn any_delivered(&self) -> bool {
        self.delivered.get() > 0
    }

    pub fn note_delivered(&self) {
        self.delivered.set(self.delivered.get().saturating_add(1));
    }

    /// A request decided without its body, which Envoy did not deliver.
    pub fn note_rescued(&self) {
        self.rescued.set(self.rescued.get().saturating_add(1));
    }
}
