//! Envoy's counters and gauges, kept cheap: a counter is added to in the VM
//! and flushed to Envoy on the tick (a host call per request would cost
//! more than the decision itself); a gauge is set only when its value
//! changes.

use std::cell::Cell;

use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;

use crate::config::Rollout;
use crate::decision::Reason;

pub fn define_metric(kind: MetricType, name: &str) -> u32 {
    hostcalls::define_metric(kind, name).unwrap_or(0)
}

/// Sets the gauge `name` to `value`, defining it if need be.
pub fn set_gauge(name: &str, value: u64) {
    let _ = hostcalls::record_metric(define_metric(MetricType::Gauge, name), value);
}

/// Adds `n` to the counter `name`, defining it if need be: for counts that
/// change far less often than requests (polls, trips).
pub fn add_to_counter(name: &str, n: u64) {
    let id = define_metric(MetricType::Counter, name);
    let _ = hostcalls::increment_metric(id, i64::try_from(n).unwrap_or(i64::MAX));
}

/// A counter kept in the VM and added to Envoy's on the tick.
pub struct Counter {
    id: u32,
    unflushed: Cell<u64>,
}

impl Counter {
    pub fn define(name: &str) -> Counter {
        Counter {
            id: define_metric(MetricType::Counter, name),
            unflushed: Cell::new(0),
        }
    }

    pub fn add(&self) {
        self.unflushed.set(self.unflushed.get() + 1);
    }

    pub fn flush(&self) {
        let n = self.unflushed.take();
        if n > 0 {
            let _ = hostcalls::increment_metric(self.id, i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
}

/// A gauge that is set only when its value changes.
pub struct Gauge {
    id: u32,
    shown: Cell<Option<u64>>,
}

impl Gauge {
    pub fn define(name: &str) -> Gauge {
        Gauge {
            id: define_metric(MetricType::Gauge, name),
            shown: Cell::new(None),
        }
    }

    pub fn show(&self, value: u64) {
        if self.shown.get() != Some(value) {
            let _ = hostcalls::record_metric(self.id, value);
            self.shown.set(Some(value));
        }
    }
}

/// A counter kept in the VM, defined by its first flush with something to
/// add: for counters most of which never count (a failure kind per
/// version).
#[derive(Default)]
pub struct LazyCounter {
    id: Cell<Option<u32>>,
    unflushed: Cell<u64>,
}

impl LazyCounter {
    pub fn add(&self) {
        self.unflushed.set(self.unflushed.get() + 1);
    }

    pub fn flush(&self, name: impl FnOnce() -> String) {
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

/// Counters per (version, reason), at `version * Reason::ALL.len() + reason`,
/// defined with the config so that Prometheus has every series from the
/// start (a rate needs the zero).
#[derive(Default)]
pub struct ByDecision(Vec<Counter>);

impl ByDecision {
    /// The counters of `rollout`'s versions, named by `name` from a version
    /// and a reason; none when `on` is false.
    pub fn define(
        rollout: &Rollout,
        on: bool,
        name: impl Fn(&str, Reason) -> String,
    ) -> ByDecision {
        if !on {
            return ByDecision::default();
        }
        let mut counters = Vec::with_capacity(rollout.versions.len() * Reason::ALL.len());
        for version in &rollout.versions {
            for reason in Reason::ALL {
                counters.push(Counter::define(&name(&version.name, reason)));
            }
        }
        ByDecision(counters)
    }

    pub fn add(&self, version: usize, reason: Reason) {
        if let Some(c) = self.0.get(version * Reason::ALL.len() + reason.index()) {
            c.add();
        }
    }

    pub fn flush(&self) {
        self.0.iter().for_each(Counter::flush);
    }
}

/// `--features alloc-stats`, for `make bench` only: the module's heap
/// allocations, counted around the system allocator and added on each tick
/// to the counter `canary_selector.debug.allocations` (each VM adds its own).
#[cfg(feature = "alloc-stats")]
pub mod alloc_stats {
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
