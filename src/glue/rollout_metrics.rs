//! One rollout's series in Envoy: its counters, kept in the VM and flushed
//! on the tick, and its gauges. A proxy pays only for the rollouts it
//! serves: a rollout's series are defined ([`RolloutMetrics::activate`]) on
//! the first tick after it took a request (or its guard or the mesh verdict
//! held a version back), not when a push lists it; once the proxy served a
//! rollout (the plugin's gauged-rollouts record names it), every VM defines
//! its series on the next push, so that every VM keeps its gauges current.

use std::cell::Cell;

use proxy_wasm::types::MetricType;

use super::metrics::{self, Counter, Gauge};
use super::HostShared;
use crate::config::{Rollout, MAX_ROLLOUTS, MAX_VERSIONS};
use crate::decision::Reason;
use crate::filter::{weight_ppm, MetricNames, Outcome};
use crate::guard::{Counts, Failure};
use crate::shared::{gauged, Keys, UNNAMED_ROLLOUT};

/// Kinds of failure the guard tells apart (gRPC codes, no status, HTTP 5xx).
const FAILURES: usize = 19;

/// Version names a rollout's gauge record keeps (see
/// [`gauged::gauged_names`]): its own, then those of earlier configs.
const GAUGED_VERSIONS: usize = 4 * MAX_VERSIONS;

/// Rollout names the plugin's gauge record keeps.
const GAUGED_ROLLOUTS: usize = 2 * MAX_ROLLOUTS;

/// The name of a counter by decision, from a version and a reason.
type DecisionMetric = fn(&MetricNames, &str, Reason) -> String;

/// Counters per (version, reason), at `version * Reason::ALL.len() + reason`.
#[derive(Default)]
struct ByDecision(Vec<Counter>);

impl ByDecision {
    fn new(rollout: &Rollout, on: bool) -> ByDecision {
        let n = if on {
            rollout.versions.len() * Reason::ALL.len()
        } else {
            0
        };
        ByDecision((0..n).map(|_| Counter::default()).collect())
    }

    fn add(&self, version: usize, reason: Reason) {
        if let Some(c) = self.0.get(version * Reason::ALL.len() + reason.index()) {
            c.add();
        }
    }

    fn has_news(&self) -> bool {
        self.0.iter().any(Counter::has_news)
    }

    /// Each counter with its name, from `name(version, reason)`.
    fn each<'a>(
        &'a self,
        rollout: &'a Rollout,
    ) -> impl Iterator<Item = (&'a Counter, &'a str, Reason)> + 'a {
        let keys = rollout
            .versions
            .iter()
            .flat_map(|v| Reason::ALL.map(|r| (v.name.as_str(), r)));
        self.0.iter().zip(keys).map(|(c, (v, r))| (c, v, r))
    }

    /// Defines every counter, so a rate has its zero.
    fn define(&self, rollout: &Rollout, name: impl Fn(&str, Reason) -> String) {
        for (counter, version, reason) in self.each(rollout) {
            counter.define(&name(version, reason));
        }
    }

    fn flush(&self, rollout: &Rollout, name: impl Fn(&str, Reason) -> String) {
        for (counter, version, reason) in self.each(rollout) {
            counter.flush(|| name(version, reason));
        }
    }
}

/// One rollout's series in this VM.
pub struct RolloutMetrics {
    names: MetricNames,
    /// Its name in the plugin's gauged-rollouts record.
    recorded_as: String,
    keys: Keys,
    /// Defined in this VM: its counters are in Envoy and its gauges current.
    active: Cell<bool>,
    requests: ByDecision,
    responses: ByDecision,
    failed_responses: ByDecision,
    /// Empty unless the guard times responses.
    slow_responses: ByDecision,
    /// The failed responses by kind, per (version, failure): at
    /// `version * FAILURES + failure.index()`, each defined by its first
    /// count (most never count).
    failures: Vec<Counter>,
    weights: Vec<Gauge>,
    stable: Vec<Gauge>,
    guard_tripped: Gauge,
    /// The guard's window totals per version (a guard judged here).
    window_responses: Vec<Gauge>,
    window_failed: Vec<Gauge>,
}

impl RolloutMetrics {
    pub fn new(plugin: &str, rollout: &Rollout) -> RolloutMetrics {
        let judged = rollout.guard.is_some();
        let timed = rollout
            .guard
            .as_ref()
            .is_some_and(|g| g.slow_response_ms.is_some());
        let versions = rollout.versions.len();
        let gauges = |n: usize| (0..n).map(|_| Gauge::default()).collect::<Vec<_>>();
        RolloutMetrics {
            names: MetricNames::new(plugin, rollout.name()),
            recorded_as: rollout.name().unwrap_or(UNNAMED_ROLLOUT).to_string(),
            keys: Keys::new(plugin, rollout.name()),
            active: Cell::new(false),
            requests: ByDecision::new(rollout, true),
            responses: ByDecision::new(rollout, judged),
            failed_responses: ByDecision::new(rollout, judged),
            slow_responses: ByDecision::new(rollout, timed),
            failures: (0..if judged { versions * FAILURES } else { 0 })
                .map(|_| Counter::default())
                .collect(),
            weights: gauges(versions),
            stable: gauges(versions),
            guard_tripped: Gauge::default(),
            window_responses: gauges(if judged { versions } else { 0 }),
            window_failed: gauges(if judged { versions } else { 0 }),
        }
    }

    pub fn names(&self) -> &MetricNames {
        &self.names
    }

    /// Whether the proxy served this rollout before (another VM defined its
    /// series): then this VM keeps its gauges current too.
    pub fn served_by_proxy(&self, served: &gauged::Names) -> bool {
        served.holds(&self.recorded_as)
    }

    /// The counters by decision, each with the name it is defined under.
    fn by_decision(&self) -> [(&ByDecision, DecisionMetric); 4] {
        [
            (&self.requests, MetricNames::requests),
            (&self.responses, MetricNames::responses),
            (&self.failed_responses, MetricNames::failed_responses),
            (&self.slow_responses, MetricNames::slow_responses),
        ]
    }

    /// Counts one decision (no host call: the request path).
    pub fn count_request(&self, version: usize, reason: Reason) {
        self.requests.add(version, reason);
    }

    /// Counts a response the guard judged (no host call).
    pub fn count_response(&self, o: &Outcome) {
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

    fn has_news(&self) -> bool {
        self.requests.has_news() || self.responses.has_news()
    }

    /// Defines the rollout's series in this VM and shows its gauges:
    /// `held_back` are the versions its guard holds back, `now_ms` picks
    /// the live weights. Records, for the proxy, that the rollout is served,
    /// and zeroes the gauges of versions it no longer has.
    pub fn activate(&self, store: &HostShared, rollout: &Rollout, now_ms: i64, held_back: u32) {
        if self.active.replace(true) {
            return;
        }
        let names = &self.names;
        for (counters, name) in self.by_decision() {
            counters.define(rollout, |v, r| name(names, v, r));
        }
        if rollout.guard.is_some() {
            // A count of trips starts at zero.
            for v in &rollout.versions {
                metrics::define(MetricType::Counter, &names.guard_trips(&v.name));
            }
        }
        gauged::add(
            store,
            &self.keys.gauged_rollouts(),
            &self.recorded_as,
            GAUGED_ROLLOUTS,
        );
        let versions: Vec<&str> = rollout.versions.iter().map(|v| v.name.as_str()).collect();
        // Every VM zeroes the gauges of dropped versions: a VM still on the
        // old config may have set one after another zeroed it.
        for name in gauged::update_gauged(
            store,
            &self.keys.gauged_versions(),
            &versions,
            GAUGED_VERSIONS,
        ) {
            zero_if_defined(&names.weight(&name));
            zero_if_defined(&names.stable(&name));
        }
        for (i, (gauge, v)) in self.stable.iter().zip(&rollout.versions).enumerate() {
            gauge.show(|| names.stable(&v.name), u64::from(i == 0));
        }
        self.show_weights(rollout, now_ms);
        if rollout.guard.is_some() {
            self.show_held(held_back);
        }
    }

    /// Adds the counts of the last second to Envoy's counters, defining the
    /// rollout's series first if this VM has not (and it counted something).
    pub fn flush(&self, store: &HostShared, rollout: &Rollout, now_ms: i64, held_back: u32) {
        if !self.active.get() {
            if !self.has_news() {
                return;
            }
            self.activate(store, rollout, now_ms, held_back);
        }
        let names = &self.names;
        for (counters, name) in self.by_decision() {
            counters.flush(rollout, |v, r| name(names, v, r));
        }
        let kinds = rollout
            .versions
            .iter()
            .flat_map(|v| Failure::all().map(move |f| (v, f)));
        for (counter, (version, failure)) in self.failures.iter().zip(kinds) {
            counter.flush(|| names.failures(&version.name, failure));
        }
    }

    /// Sets the weight gauges to the weights live at `now_ms`.
    pub fn show_weights(&self, rollout: &Rollout, now_ms: i64) {
        if !self.active.get() {
            return;
        }
        for (i, (gauge, v)) in self.weights.iter().zip(&rollout.versions).enumerate() {
            gauge.show(
                || self.names.weight(&v.name),
                weight_ppm(rollout.weight_at(now_ms, i)),
            );
        }
    }

    /// 1 while the rollout holds a version back.
    pub fn show_held(&self, held_back: u32) {
        self.guard_tripped
            .show(|| self.names.guard_tripped(), u64::from(held_back != 0));
    }

    /// The guard's window totals, as last judged.
    pub fn show_totals(&self, rollout: &Rollout, totals: &[Counts]) {
        if !self.active.get() {
            return;
        }
        let gauges = self.window_responses.iter().zip(&self.window_failed);
        for ((responses, failed), (v, c)) in gauges.zip(rollout.versions.iter().zip(totals)) {
            responses.show(
                || self.names.window_responses(&v.name),
                u64::from(c.requests),
            );
            failed.show(
                || self.names.window_failed_responses(&v.name),
                u64::from(c.errors),
            );
        }
    }
}

/// Sets gauge `name` to 0 if this VM defined it: a gauge of a rollout or
/// version the proxy no longer has. The VMs that set it zero it; none
/// defines a series to zero it.
fn zero_if_defined(name: &str) {
    if metrics::defined(name) {
        metrics::set_gauge(name, 0);
    }
}

/// Zeroes the gauges of a rollout the config no longer lists (`name` as the
/// plugin's record has it): its versions' weight, stable and window gauges,
/// and its guard's.
pub fn zero_dropped_rollout(store: &HostShared, plugin: &str, name: &str) {
    let rollout = Some(name).filter(|n| *n != UNNAMED_ROLLOUT);
    let keys = Keys::new(plugin, rollout);
    let names = MetricNames::new(plugin, rollout);
    for version in gauged::dropped(store, &keys.gauged_versions(), &[]) {
        zero_if_defined(&names.weight(&version));
        zero_if_defined(&names.stable(&version));
        zero_if_defined(&names.window_responses(&version));
        zero_if_defined(&names.window_failed_responses(&version));
    }
    zero_if_defined(&names.guard_tripped());
}
