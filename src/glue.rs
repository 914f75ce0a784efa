//! The proxy-wasm glue, on the proxy-wasm Rust SDK. Only built for `wasm32`.
//!
//! A [`Plugin`] (the SDK's root context, one per filter config in the VM)
//! parses and owns the [`Rollout`]; a [`Stream`] (an HTTP context, one per
//! request) implements the core's [`Host`] and [`ResponseHost`] with SDK
//! calls and does nothing else. The decision itself is `filter`'s.
//!
//! Envoy calls every callback a module exports on every request, so `make
//! build` prunes the SDK's exports down to the ones implemented here (see
//! the Makefile's `WASM_EXPORTS`; a test checks the two agree).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use log::{error, info, warn};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, Bytes, ContextType, LogLevel, MetricType};

use crate::config::{decimal, Rollout};
use crate::decision::{Entropy, Live, Reason, Request, WyRand};
use crate::filter::{
    self, AwaitingTrailers, Host, MetricNames, Outcome, Pending, ResponseHost, Verdict,
};
use crate::guard::{describe_failures, judge, Failure, Stamp, Window};
use crate::hash::murmur3_32;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::new(Plugin::default()));
}}

/// `--features alloc-stats`, for `make bench` only: the module's heap
/// allocations, counted around the system allocator and added on each tick
/// to the counter `canary_selector.debug.allocations` (each VM adds its own).
#[cfg(feature = "alloc-stats")]
mod alloc_stats {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

    static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

    struct Counting;

    // SAFETY: forwards every call to the system allocator unchanged.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            ALLOCATIONS.fetch_add(1, Relaxed);
            // SAFETY: the caller's contract is System's.
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: the caller's contract is System's.
            unsafe { System.dealloc(ptr, layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, size: usize) -> *mut u8 {
            ALLOCATIONS.fetch_add(1, Relaxed);
            // SAFETY: the caller's contract is System's.
            unsafe { System.realloc(ptr, layout, size) }
        }
    }

    #[global_allocator]
    static COUNTING: Counting = Counting;

    pub fn report() {
        let id = super::define_metric(
            proxy_wasm::types::MetricType::Counter,
            "canary_selector.debug.allocations",
        );
        let n = ALLOCATIONS.swap(0, Relaxed);
        let _ = proxy_wasm::hostcalls::increment_metric(id, i64::try_from(n).unwrap_or(i64::MAX));
    }
}

/// A config reading this many distinct request headers or more gets them
/// with one call for the whole header map instead of one call per header:
/// measured, one call per header was cheaper up to 8 headers and dearer at
/// 32 (BENCHMARKS.md, "Reading headers").
const READ_ALL_HEADERS_FROM: usize = 16;

fn now_ms(ctx: &dyn Context) -> i64 {
    ctx.get_current_time()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

// ---------------------------------------------------------------------------
// The root context: one per plugin config.
// ---------------------------------------------------------------------------

#[derive(Default)]
struct Plugin {
    /// The last config this root accepted; streams share it, so a stream
    /// keeps the config it started with across a push.
    installed: Option<Rc<Installed>>,
}

/// A counter kept in the VM and added to Envoy's on the tick: a host call
/// per request would cost more than the decision itself.
struct Counter {
    id: u32,
    unflushed: Cell<u64>,
}

impl Counter {
    fn define(name: &str) -> Counter {
        Counter {
            id: define_metric(MetricType::Counter, name),
            unflushed: Cell::new(0),
        }
    }

    fn add(&self) {
        self.unflushed.set(self.unflushed.get() + 1);
    }

    fn flush(&self) {
        let n = self.unflushed.take();
        if n > 0 {
            let _ = hostcalls::increment_metric(self.id, i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
}

/// A gauge that is set only when its value changes.
struct Gauge {
    id: u32,
    shown: Cell<Option<u64>>,
}

impl Gauge {
    fn define(name: &str) -> Gauge {
        Gauge {
            id: define_metric(MetricType::Gauge, name),
            shown: Cell::new(None),
        }
    }

    fn show(&self, value: u64) {
        if self.shown.get() != Some(value) {
            let _ = hostcalls::record_metric(self.id, value);
            self.shown.set(Some(value));
        }
    }
}

/// A counter defined by its first flush with something to add.
#[derive(Default)]
struct LazyCounter {
    id: Cell<Option<u32>>,
    unflushed: Cell<u64>,
}

impl LazyCounter {
    fn add(&self) {
        self.unflushed.set(self.unflushed.get() + 1);
    }

    fn flush(&self, name: impl FnOnce() -> String) {
        let n = self.unflushed.take();
        if n > 0 {
            let id = self.id.get().unwrap_or_else(|| {
                let id = define_metric(MetricType::Counter, &name());
                self.id.set(Some(id));
                id
            });
            let _ = hostcalls::increment_metric(id, i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
}

/// Kinds of failure the guard tells apart (gRPC codes, no status, HTTP 5xx).
const FAILURES: usize = 19;

/// Counters per (version, reason), at `version * Reason::ALL.len() + reason`.
struct ByDecision(Vec<Counter>);

impl ByDecision {
    fn define(rollout: &Rollout, name: impl Fn(&str, Reason) -> String) -> ByDecision {
        let mut counters = Vec::with_capacity(rollout.versions.len() * Reason::ALL.len());
        for version in &rollout.versions {
            for reason in Reason::ALL {
                counters.push(Counter::define(&name(&version.name, reason)));
            }
        }
        ByDecision(counters)
    }

    fn add(&self, version: usize, reason: Reason) {
        if let Some(c) = self.0.get(version * Reason::ALL.len() + reason.index()) {
            c.add();
        }
    }

    fn flush(&self) {
        self.0.iter().for_each(Counter::flush);
    }
}

/// An accepted config and the VM's state for it.
struct Installed {
    rollout: Rollout,
    requests: ByDecision,
    responses: ByDecision,
    failed_responses: ByDecision,
    /// Empty unless the guard times responses.
    slow_responses: ByDecision,
    /// Per version: the live weight, in ppm.
    weights: Vec<Gauge>,
    /// The failed responses by kind, per (version, failure): at
    /// `version * FAILURES + failure.index()`. Defined on the first flush
    /// that has one to add: most kinds never happen.
    failures: Vec<LazyCounter>,
    names: MetricNames,
    guard: Option<GuardState>,
    /// Unix ms at the last tick: the clock the guard's window uses.
    now_ms: Cell<i64>,
    /// wyrand state for anonymous picks, seeded on first use.
    rng: Cell<Option<u64>>,
}

/// The guard's per-VM state for one accepted config.
struct GuardState {
    /// Responses counted on this VM since the last merge into shared data.
    local: RefCell<Window>,
    /// Latched until a new config is pushed.
    tripped: Cell<bool>,
    /// This config's push, as numbered by `first_to_accept`.
    generation: u32,
    /// Shared-data key of the proxy-wide window: plugin name and config
    /// hash, so VMs on different configs (during a push) never share one.
    key: String,
    /// Shared-data key marking that this plugin's guard tripped, so the next
    /// push can log the reset.
    marker: String,
    /// Trips per version (the stable one never trips, its counter stays 0).
    trips_metrics: Vec<u32>,
    tripped_metric: u32,
}

impl Installed {
    /// Adds what was counted since the last flush to Envoy's counters.
    fn flush_counts(&self) {
        self.requests.flush();
        self.responses.flush();
        self.failed_responses.flush();
        self.slow_responses.flush();
        let kinds = self
            .rollout
            .versions
            .iter()
            .flat_map(|v| Failure::all().map(move |f| (v, f)));
        for (counter, (version, failure)) in self.failures.iter().zip(kinds) {
            counter.flush(|| self.names.failures(&version.name, failure));
        }
    }

    /// Sets the weight gauges to the live weights (a schedule moves them).
    fn show_weights(&self) {
        let now = self.now_ms.get();
        for (i, gauge) in self.weights.iter().enumerate() {
            gauge.show(filter::weight_ppm(self.rollout.weight_at(now, i)));
        }
    }

    /// Counts a response the guard judged: in its window, and in the
    /// response counters.
    fn record(&self, o: Outcome) {
        let Some(g) = &self.guard else {
            return;
        };
        if let Ok(mut local) = g.local.try_borrow_mut() {
            let at = u64::try_from(self.now_ms.get()).unwrap_or(0);
            local.record(at, o.version, o.failure, o.slow);
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

    /// What the decision needs from the clock and the guard. The clock is
    /// read per request only when a schedule or a latency bound needs it.
    fn live(&self, ctx: &dyn Context) -> Live {
        let needs_clock = self.rollout.schedule.is_some()
            || self
                .rollout
                .guard
                .as_ref()
                .is_some_and(|g| g.slow.is_some());
        Live {
            now_ms: if needs_clock {
                now_ms(ctx)
            } else {
                self.now_ms.get()
            },
            guard_tripped: self.guard.as_ref().is_some_and(|g| g.tripped.get()),
        }
    }
}

impl Drop for Installed {
    /// The last stream or root holding a config flushes what it counted.
    fn drop(&mut self) {
        self.flush_counts();
    }
}

fn define_metric(kind: MetricType, name: &str) -> u32 {
    hostcalls::define_metric(kind, name).unwrap_or(0)
}

impl Context for Plugin {}

impl RootContext for Plugin {
    fn on_configure(&mut self, _config_size: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        let rollout = match Rollout::from_json(&config) {
            Ok(rollout) => rollout,
            Err(e) => {
                error!("config rejected: {e}");
                return false;
            }
        };
        // Shared-data keys carry the plugin's name (`<namespace>.<name>`), so
        // two plugins in one proxy never share a window or a log-once record.
        let plugin = self
            .get_property(vec!["plugin_name"])
            .map(|name| String::from_utf8_lossy(&name).into_owned())
            .unwrap_or_default();
        let (first, generation) = self.first_to_accept(&plugin, &config);
        let marker = format!("canary-selector.{plugin}.guard-tripped");
        if first {
            info!("config accepted: {}", rollout.summary());
            // A tripped guard holds until a new config arrives: this is it.
            let (tripped, cas) = self.get_shared_data(&marker);
            if tripped.as_deref() == Some(b"1") {
                let _ = self.set_shared_data(&marker, Some(b"0"), cas);
                warn!(
                    "guard reset: a new config was pushed; canary versions get their share again"
                );
            }
        }
        let names = MetricNames::new(&plugin);
        self.zero_dropped_versions(&plugin, &names, &rollout);
        for (i, version) in rollout.versions.iter().enumerate() {
            let stable = define_metric(MetricType::Gauge, &names.stable(&version.name));
            let _ = hostcalls::record_metric(stable, u64::from(i == 0));
        }
        let guard = rollout.guard.as_ref().map(|g| {
            let local = Window::new(rollout.versions.len(), g.window_ms);
            let key = format!(
                "canary-selector.{plugin}.guard.{:08x}",
                murmur3_32(&config, 0)
            );
            let tripped_metric = define_metric(MetricType::Gauge, &names.guard_tripped());
            let tripped = if first {
                // A push starts a fresh window, even for a config seen before
                // (A, B, then A again): its old window, of an older
                // generation, tripped or not, is gone. Writing it now also
                // gives every later merge a CAS token.
                let stamp = Stamp {
                    generation,
                    tripped: None,
                };
                let _ = self.set_shared_data(&key, Some(&local.encode(stamp)), None);
                let _ = hostcalls::record_metric(tripped_metric, 0);
                false
            } else {
                // The config this proxy already runs, in a new root: another
                // worker's VM, or a listener update that kept the config
                // (Envoy Gateway rebuilds the filter with every listener
                // change). If its window has tripped, start latched, not on
                // the canary until the first tick. A window of another
                // generation is not this push's: the first VM may not have
                // replaced it yet.
                self.get_shared_data(&key)
                    .0
                    .and_then(|b| Window::decode(&b, rollout.versions.len(), g.window_ms))
                    .is_some_and(|(_, s)| s.generation == generation && s.tripped.is_some())
            };
            GuardState {
                local: RefCell::new(local),
                tripped: Cell::new(tripped),
                generation,
                key,
                marker: marker.clone(),
                trips_metrics: rollout
                    .versions
                    .iter()
                    .map(|v| define_metric(MetricType::Counter, &names.guard_trips(&v.name)))
                    .collect(),
                tripped_metric,
            }
        });
        // Ticks flush the counters once a second; with a guard they also
        // merge and judge its window, a few times per slot.
        let period = guard
            .as_ref()
            .map_or(1000, |g| g.local.borrow().slot_ms().clamp(100, 1000));
        self.set_tick_period(Duration::from_millis(period));
        // Responses are counted as the guard judges them: only with one,
        // which reads each response anyway.
        let judged = rollout.guard.is_some();
        let timed = rollout.guard.as_ref().is_some_and(|g| g.slow.is_some());
        let by_decision = |on: bool, name: &dyn Fn(&str, Reason) -> String| {
            if on {
                ByDecision::define(&rollout, name)
            } else {
                ByDecision(Vec::new())
            }
        };
        let installed = Installed {
            requests: ByDecision::define(&rollout, |v, r| names.requests(v, r)),
            responses: by_decision(judged, &|v, r| names.responses(v, r)),
            failed_responses: by_decision(judged, &|v, r| names.failed_responses(v, r)),
            slow_responses: by_decision(timed, &|v, r| names.slow_responses(v, r)),
            weights: rollout
                .versions
                .iter()
                .map(|v| Gauge::define(&names.weight(&v.name)))
                .collect(),
            failures: (0..rollout.versions.len() * FAILURES)
                .map(|_| LazyCounter::default())
                .collect(),
            names,
            guard,
            now_ms: Cell::new(now_ms(self)),
            rng: Cell::new(None),
            rollout,
        };
        installed.show_weights();
        self.installed = Some(Rc::new(installed));
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream {
            installed: self.installed.clone(),
            fetched: Vec::new(),
            pending: None,
            awaiting: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    /// Flushes the counters, and merges this VM's guard counts into the
    /// proxy-wide window and judges it.
    fn on_tick(&mut self) {
        let Some(installed) = self.installed.clone() else {
            return;
        };
        installed.flush_counts();
        #[cfg(feature = "alloc-stats")]
        alloc_stats::report();
        installed.now_ms.set(now_ms(self));
        if installed.rollout.schedule.is_some() {
            installed.show_weights();
        }
        if let (Some(g), Some(config)) = (&installed.guard, &installed.rollout.guard) {
            if !g.tripped.get() {
                self.merge_and_judge(&installed, g, config);
            }
        }
    }
}

impl Plugin {
    /// Zeroes the weight and stable gauges of the versions an earlier config
    /// of this plugin listed and this one does not (Envoy keeps a gauge at
    /// its last value), and records this config's versions for the next
    /// push. Every VM does it: a VM still on the old config may have set a
    /// gauge after the first VM on the new one zeroed it.
    fn zero_dropped_versions(&self, plugin: &str, names: &MetricNames, rollout: &Rollout) {
        let key = format!("canary-selector.{plugin}.gauged-versions");
        // Compare-and-swap, as for the guard's window; on a lost race the
        // other VM's record holds the same names.
        for _ in 0..4 {
            let (record, cas) = self.get_shared_data(&key);
            let record = record.unwrap_or_default();
            let (dropped, next) = filter::gauged_versions(&record, &rollout.versions);
            for name in dropped {
                for metric in [names.weight(name), names.stable(name)] {
                    let _ = hostcalls::record_metric(define_metric(MetricType::Gauge, &metric), 0);
                }
            }
            if next == record || self.set_shared_data(&key, Some(&next), cas).is_ok() {
                return;
            }
        }
    }

    /// Envoy runs one VM per worker thread (plus one on the main thread),
    /// and each configures itself. So that an accepted config is logged once
    /// per proxy rather than once per VM, the first VM to accept it records
    /// its hash in shared data; the others see it there and stay quiet.
    ///
    /// The record also numbers the plugin's pushes: the first VM to accept
    /// a config gives it the next generation, the others read it. Returns
    /// whether this VM was the first, and the generation.
    fn first_to_accept(&self, plugin: &str, config: &[u8]) -> (bool, u32) {
        let key = format!("canary-selector.{plugin}.last-config");
        let digest = murmur3_32(config, 0x5eed).to_le_bytes();
        // The record: the config's digest, then its generation.
        let generation_of = |record: &[u8]| {
            record
                .get(4..8)
                .and_then(|b| b.try_into().ok())
                .map_or(0, u32::from_le_bytes)
        };
        for _ in 0..4 {
            let (seen, cas) = self.get_shared_data(&key);
            let seen = seen.unwrap_or_default();
            if seen.get(..4) == Some(&digest[..]) {
                return (false, generation_of(&seen));
            }
            let generation = generation_of(&seen).wrapping_add(1);
            let mut record = digest.to_vec();
            record.extend_from_slice(&generation.to_le_bytes());
            if self.set_shared_data(&key, Some(&record), cas).is_ok() {
                return (true, generation);
            }
            // Lost a race with another VM that just recorded it (that VM
            // logs): read its generation.
        }
        (false, 0)
    }

    fn merge_and_judge(
        &self,
        installed: &Installed,
        g: &GuardState,
        config: &crate::config::Guard,
    ) {
        let Ok(mut local) = g.local.try_borrow_mut() else {
            return;
        };
        let now = u64::try_from(installed.now_ms.get()).unwrap_or(0);
        let versions = installed.rollout.versions.len();
        // Compare-and-swap: retry when another VM updated the window between
        // our read and our write.
        for _ in 0..8 {
            let (bytes, cas) = self.get_shared_data(&g.key);
            let fresh = || Window::new(versions, config.window_ms);
            let shared = bytes.and_then(|b| Window::decode(&b, versions, config.window_ms));
            let (mut shared, tripped) = match shared {
                Some((w, s)) if s.generation == g.generation => (w, s.tripped),
                // A later push of the same config (A, B, A) runs beside this
                // root, which Envoy is about to drop: leave it the window.
                Some((_, s)) if s.generation.wrapping_sub(g.generation) as i32 > 0 => {
                    local.clear();
                    return;
                }
                // Absent, or an earlier push's.
                _ => (fresh(), None),
            };
            if tripped.is_some() {
                // Another VM tripped it: latch, and say so in the gauge.
                g.tripped.set(true);
                local.clear();
                let _ = hostcalls::record_metric(g.tripped_metric, 1);
                return;
            }
            if local.is_empty() {
                return;
            }
            shared.merge(&local);
            let trip = judge(config, &shared.totals(now));
            let encoded = shared.encode(Stamp {
                generation: g.generation,
                tripped: trip.as_ref().map(|t| t.version),
            });
            if self.set_shared_data(&g.key, Some(&encoded), cas).is_err() {
                continue;
            }
            local.clear();
            if let Some(t) = trip {
                g.tripped.set(true);
                let _ = self.set_shared_data(&g.marker, Some(b"1"), None);
                if let Some(&id) = g.trips_metrics.get(t.version) {
                    let _ = hostcalls::increment_metric(id, 1);
                }
                let _ = hostcalls::record_metric(g.tripped_metric, 1);
                let versions = &installed.rollout.versions;
                let name = |i: usize| versions.get(i).map_or("?", |v| v.name.as_str());
                let failed = match describe_failures(t.counts.failures) {
                    kinds if kinds.is_empty() => kinds,
                    kinds => format!("; {kinds}"),
                };
                warn!(
                    "guard tripped: {} {} over the last {}s: {} of {} responses failed (rate {}{}), {} slow; \
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
            return;
        }
    }
}

// ---------------------------------------------------------------------------
// The HTTP context: one per stream.
// ---------------------------------------------------------------------------

struct Stream {
    installed: Option<Rc<Installed>>,
    /// The request headers the config reads, by slot: `None` until fetched.
    /// Emptied when the request headers have passed.
    fetched: Vec<Option<Option<Bytes>>>,
    /// What the response phase still has to do.
    pending: Option<Pending>,
    /// A gRPC response the guard judges at its trailers.
    awaiting: Option<AwaitingTrailers>,
}

impl Stream {
    /// Fetches every header the config reads with one call for the whole map.
    fn fetch_all(&mut self, names: &[String]) {
        for (name, value) in self.get_http_request_headers_bytes() {
            let slot = names.iter().position(|n| *n == name);
            if let Some(entry @ None) = slot.and_then(|i| self.fetched.get_mut(i)) {
                *entry = Some(Some(value));
            }
        }
        for entry in &mut self.fetched {
            entry.get_or_insert(None);
        }
    }
}

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let Some(installed) = self.installed.clone() else {
            return Action::Continue;
        };
        let rollout = &installed.rollout;
        self.fetched = vec![None; rollout.headers.len()];
        if rollout.headers.len() >= READ_ALL_HEADERS_FROM {
            self.fetch_all(&rollout.headers);
        }
        let live = installed.live(self);
        let (_, pending) =
            filter::on_request_headers(rollout, self, &mut CellRng(&installed.rng), live);
        self.pending = pending;
        self.fetched = Vec::new();
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        let (Some(installed), Some(pending)) = (self.installed.clone(), self.pending.take()) else {
            return Action::Continue;
        };
        match filter::on_response_headers(&installed.rollout, &pending, self) {
            Some(Verdict::Now(outcome)) => installed.record(outcome),
            Some(Verdict::AtTrailers(awaiting)) if end_of_stream => {
                installed.record(filter::on_stream_lost(&awaiting));
            }
            Some(Verdict::AtTrailers(awaiting)) => self.awaiting = Some(awaiting),
            None => {}
        }
        Action::Continue
    }

    /// Envoy calls it only for responses that have trailers (gRPC's carry
    /// the status), never for a plain HTTP/1.1 response.
    fn on_http_response_trailers(&mut self, _trailers: usize) -> Action {
        if let (Some(installed), Some(awaiting)) = (&self.installed, self.awaiting.take()) {
            let status = self.get_http_response_trailer_bytes("grpc-status");
            installed.record(filter::on_response_trailers(
                &installed.rollout,
                &awaiting,
                status.as_deref(),
            ));
        }
        Action::Continue
    }
}

impl Drop for Stream {
    /// Envoy deletes a stream's context when the stream ends, however it
    /// ends: a gRPC call still waiting for its status never got one.
    fn drop(&mut self) {
        if let (Some(installed), Some(awaiting)) = (&self.installed, self.awaiting.take()) {
            installed.record(filter::on_stream_lost(&awaiting));
        }
    }
}

impl Request for Stream {
    fn header(&mut self, slot: usize, name: &str) -> Option<&[u8]> {
        if matches!(self.fetched.get(slot), Some(None)) {
            // Header values are bytes: the `String` getters panic on a
            // value that is not UTF-8 (a latin-1 byte, say).
            let value = self.get_http_request_header_bytes(name);
            if let Some(entry) = self.fetched.get_mut(slot) {
                *entry = Some(value);
            }
        }
        self.fetched.get(slot)?.as_ref()?.as_deref()
    }
}

impl Host for Stream {
    fn set_request_header(&mut self, name: &str, value: &[u8]) {
        self.set_http_request_header_bytes(name, Some(value));
    }

    fn count(&mut self, version: usize, reason: Reason) {
        // Counted in the VM, flushed to Envoy's counters on the tick.
        if let Some(i) = &self.installed {
            i.requests.add(version, reason);
        }
    }
}

impl ResponseHost for Stream {
    fn set_response_header(&mut self, name: &str, value: &[u8]) {
        self.set_http_response_header_bytes(name, Some(value));
    }

    fn add_response_header(&mut self, name: &str, value: &[u8]) {
        self.add_http_response_header_bytes(name, value);
    }

    fn response_header(&mut self, name: &str) -> Option<Vec<u8>> {
        self.get_http_response_header_bytes(name)
    }

    fn now_ms(&mut self) -> i64 {
        now_ms(self)
    }
}

/// The VM's wyrand, its state in a cell; seeded from the host (WASI
/// `random_get`) on first use.
struct CellRng<'a>(&'a Cell<Option<u64>>);

impl Entropy for CellRng<'_> {
    fn next_u64(&mut self) -> u64 {
        let state = self.0.get().unwrap_or_else(|| {
            let mut seed = [0u8; 8];
            // On failure the seed stays zero: anonymous picks are still
            // spread by the generator, just not unpredictable.
            let _ = getrandom::fill(&mut seed);
            u64::from_le_bytes(seed)
        });
        let mut rng = WyRand(state);
        let value = rng.next_u64();
        self.0.set(Some(rng.0));
        value
    }
}
