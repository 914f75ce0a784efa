//! Envoy's counters and gauges, kept cheap and bounded:
//! - each metric name is defined once per VM ([`define`]): Envoy keeps every
//!   `define_metric` (a new id and the storage of its name) for the VM's
//!   life, even for a name defined before, so a VM that defined its names on
//!   every push would grow Envoy's heap with each push;
//! - a counter is added to in the VM and flushed to Envoy on the tick (a
//!   host call per request would cost more than the decision itself);
//! - a gauge is set only when its value changes.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;

thread_local! {
    /// Every metric name this VM defined, with Envoy's id for it. It grows
    /// only by names never seen before: a push that keeps its rollouts and
    /// versions defines nothing.
    static DEFINED: RefCell<HashMap<Box<str>, u32>> = RefCell::new(HashMap::new());
}

/// The id of metric `name`, defined in Envoy the first time this VM asks.
pub fn define(kind: MetricType, name: &str) -> Option<u32> {
    if let Some(id) = DEFINED.with(|d| d.borrow().get(name).copied()) {
        return Some(id);
    }
    let id = hostcalls::define_metric(kind, name).ok()?;
    DEFINED.with(|d| d.borrow_mut().insert(name.into(), id));
    Some(id)
}

/// Whether this VM defined metric `name`.
pub fn defined(name: &str) -> bool {
    DEFINED.with(|d| d.borrow().contains_key(name))
}

/// Sets the gauge `name` to `value`.
pub fn set_gauge(name: &str, value: u64) {
    if let Some(id) = define(MetricType::Gauge, name) {
        let _ = hostcalls::record_metric(id, value);
    }
}

/// Adds `n` to the counter `name`: for counts that change far less often
/// than requests (polls, trips).
pub fn add_to_counter(name: &str, n: u64) {
    if let Some(id) = define(MetricType::Counter, name) {
        let _ = hostcalls::increment_metric(id, i64::try_from(n).unwrap_or(i64::MAX));
    }
}

/// A counter kept in the VM and added to Envoy's on the tick; its id is
/// looked up when it is first flushed (or [`Counter::define`]d).
#[derive(Default)]
pub struct Counter {
    id: Cell<Option<u32>>,
    unflushed: Cell<u64>,
}

impl Counter {
    pub fn add(&self) {
        self.unflushed.set(self.unflushed.get().saturating_add(1));
    }

    pub fn has_news(&self) -> bool {
        self.unflushed.get() > 0
    }

    /// Defines the counter `name` now, so that Prometheus sees it at zero.
    pub fn define(&self, name: &str) {
        if self.id.get().is_none() {
            self.id.set(define(MetricType::Counter, name));
        }
    }

    /// Adds what was counted since the last flush; `name` gives the
    /// counter's name if it is not defined yet.
    pub fn flush(&self, name: impl FnOnce() -> String) {
        let n = self.unflushed.take();
        if n == 0 {
            return;
        }
        if self.id.get().is_none() {
            self.define(&name());
        }
        if let Some(id) = self.id.get() {
            let _ = hostcalls::increment_metric(id, i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
}

/// A gauge that is set only when its value changes.
#[derive(Default)]
pub struct Gauge {
    id: Cell<Option<u32>>,
    shown: Cell<Option<u64>>,
}

impl Gauge {
    pub fn show(&self, name: impl FnOnce() -> String, value: u64) {
        if self.shown.get() == Some(value) {
            return;
        }
        if self.id.get().is_none() {
            self.id.set(define(MetricType::Gauge, &name()));
        }
        if let Some(id) = self.id.get() {
            let _ = hostcalls::record_metric(id, value);
            self.shown.set(Some(value));
        }
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
        let n = ALLOCATIONS.swap(0, Relaxed);
        super::add_to_counter("canary_selector.debug.allocations", n);
    }
}
