//! The proxy-wasm glue: the ABI v0.2.1 exports Envoy calls, and the host
//! calls the filter makes. Only built for `wasm32`.
//!
//! Written against the ABI directly rather than the proxy-wasm Rust SDK: the
//! SDK exports every callback of the ABI (body, trailers, log, done, ...), and
//! Envoy calls each exported callback on every request whether or not it does
//! anything (measured: an empty SDK filter costs about +14 µs per request, a
//! module exporting only what it uses about +8 µs). This module exports only
//! the callbacks the filter needs:
//! `proxy_on_memory_allocate`, `proxy_on_configure`,
//! `proxy_on_request_headers`, `proxy_on_response_headers`, `proxy_on_delete`,
//! and `proxy_on_tick` (called only for root contexts, once a second). Not
//! even `proxy_on_context_create`: see [`stream_root`].
//!
//! Memory the host hands back (header values, the config) is written into a
//! scratch arena that is reset at the start of each callback, so reading
//! headers on the request path allocates nothing.

use std::cell::{Cell, RefCell, UnsafeCell};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::marker::PhantomData;
use std::ptr::null_mut;

use crate::config::{decimal, Rollout, MAX_HEADERS_READ};
use crate::decision::{Entropy, Live, Reason, Request, WyRand};
use crate::filter::{self, Host, Pending, ResponseHost};
use crate::guard::{judge, Window};

// ---------------------------------------------------------------------------
// Host functions (module "env"), ABI v0.2.1.
// ---------------------------------------------------------------------------

const STATUS_OK: u32 = 0;
const STATUS_NOT_FOUND: u32 = 1;

const MAP_REQUEST_HEADERS: u32 = 0;
const MAP_RESPONSE_HEADERS: u32 = 2;
const BUFFER_PLUGIN_CONFIGURATION: u32 = 7;
const METRIC_COUNTER: u32 = 0;
const METRIC_GAUGE: u32 = 1;

const LOG_INFO: u32 = 2;
const LOG_WARN: u32 = 3;
const LOG_ERROR: u32 = 4;

const ACTION_CONTINUE: u32 = 0;

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_log(level: u32, message: *const u8, message_len: usize) -> u32;
    fn proxy_get_buffer_bytes(
        buffer: u32,
        start: usize,
        max_size: usize,
        out_data: *mut *mut u8,
        out_len: *mut usize,
    ) -> u32;
    fn proxy_get_header_map_value(
        map: u32,
        key: *const u8,
        key_len: usize,
        out_data: *mut *mut u8,
        out_len: *mut usize,
    ) -> u32;
    fn proxy_replace_header_map_value(
        map: u32,
        key: *const u8,
        key_len: usize,
        value: *const u8,
        value_len: usize,
    ) -> u32;
    fn proxy_add_header_map_value(
        map: u32,
        key: *const u8,
        key_len: usize,
        value: *const u8,
        value_len: usize,
    ) -> u32;
    fn proxy_get_shared_data(
        key: *const u8,
        key_len: usize,
        out_data: *mut *mut u8,
        out_len: *mut usize,
        out_cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(
        key: *const u8,
        key_len: usize,
        value: *const u8,
        value_len: usize,
        cas: u32,
    ) -> u32;
    fn proxy_define_metric(kind: u32, name: *const u8, name_len: usize, out_id: *mut u32) -> u32;
    fn proxy_increment_metric(id: u32, offset: i64) -> u32;
    fn proxy_get_header_map_pairs(map: u32, out_data: *mut *mut u8, out_len: *mut usize) -> u32;
    fn proxy_record_metric(id: u32, value: u64) -> u32;
    fn proxy_get_current_time_nanoseconds(out: *mut u64) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_get_property(
        path: *const u8,
        path_len: usize,
        out_data: *mut *mut u8,
        out_len: *mut usize,
    ) -> u32;
    fn proxy_call_foreign_function(
        name: *const u8,
        name_len: usize,
        args: *const u8,
        args_len: usize,
        out_data: *mut *mut u8,
        out_len: *mut usize,
    ) -> u32;
}

/// Unix time in ms from the host's clock.
fn now_ms() -> i64 {
    let mut ns = 0u64;
    // SAFETY: valid out-pointer.
    unsafe {
        proxy_get_current_time_nanoseconds(&mut ns);
    }
    i64::try_from(ns / 1_000_000).unwrap_or(i64::MAX)
}

fn log(level: u32, message: &str) {
    // SAFETY: pointer and length describe a live string.
    unsafe {
        proxy_log(level, message.as_ptr(), message.len());
    }
}

// ---------------------------------------------------------------------------
// Scratch arena for host-returned memory.
// ---------------------------------------------------------------------------

const ARENA_SIZE: usize = 64 * 1024;

/// The arena's bytes, in a static of its own: all zeros, so it lands in
/// `.bss` and costs nothing in the module's size.
#[repr(align(16))]
struct ArenaBuf(UnsafeCell<[u8; ARENA_SIZE]>);

// SAFETY: a proxy-wasm VM runs one thread; nothing here is shared across
// threads.
unsafe impl Sync for ArenaBuf {}

static ARENA_BUF: ArenaBuf = ArenaBuf(UnsafeCell::new([0; ARENA_SIZE]));

/// State of the VM's only thread. Envoy runs each VM on one thread and this
/// module is built without Wasm threads, so a plain static is enough
/// (`thread_local!` would add its lazy-initialisation code, a few KB of
/// module, and a check on every access).
struct VmLocal<T>(T);

// SAFETY: no Wasm threads (checked below), so there is only one thread.
unsafe impl<T> Sync for VmLocal<T> {}

#[cfg(target_feature = "atomics")]
compile_error!("VmLocal assumes a module without Wasm threads");

/// Bytes of the arena handed out since the last reset.
static ARENA_USED: VmLocal<Cell<usize>> = VmLocal(Cell::new(0));
/// Requests that did not fit; freed at the next reset.
static OVERFLOW: VmLocal<RefCell<Vec<Box<[u8]>>>> = VmLocal(RefCell::new(Vec::new()));

fn arena_alloc(size: usize) -> *mut u8 {
    let start = (ARENA_USED.0.get() + 7) & !7;
    if let Some(end) = start.checked_add(size).filter(|&end| end <= ARENA_SIZE) {
        ARENA_USED.0.set(end);
        // SAFETY: start + size is within the buffer.
        return unsafe { ARENA_BUF.0.get().cast::<u8>().add(start) };
    }
    let mut block = vec![0u8; size].into_boxed_slice();
    let ptr = block.as_mut_ptr();
    match OVERFLOW.0.try_borrow_mut() {
        Ok(mut overflow) => overflow.push(block),
        // Unreachable (the host never allocates re-entrantly); leak rather
        // than free memory the host is about to write.
        Err(_) => std::mem::forget(block),
    }
    ptr
}

/// One callback's view of the arena. Slices read from the host borrow the
/// scope, so they cannot outlive the reset that starts the next callback.
struct Scope(PhantomData<*mut ()>);

impl Scope {
    /// # Safety
    /// Resets the arena: no slice from an earlier scope may be used after
    /// this. Call it once, at the start of a callback.
    unsafe fn begin() -> Scope {
        ARENA_USED.0.set(0);
        if let Ok(mut overflow) = OVERFLOW.0.try_borrow_mut() {
            overflow.clear();
        }
        Scope(PhantomData)
    }

    /// Turns a host-returned (pointer, length) into a slice tied to the scope.
    fn slice(&self, ptr: *mut u8, len: usize) -> &[u8] {
        if ptr.is_null() || len == 0 {
            return &[];
        }
        // SAFETY: the host wrote `len` bytes at `ptr`, which it obtained from
        // `proxy_on_memory_allocate` during this scope; the arena is not reset
        // while the scope lives.
        unsafe { std::slice::from_raw_parts(ptr, len) }
    }

    fn header(&self, map: u32, name: &str) -> Option<&[u8]> {
        let (mut ptr, mut len) = (null_mut(), 0);
        // SAFETY: valid key pointer/length and out-pointers.
        let status = unsafe {
            proxy_get_header_map_value(map, name.as_ptr(), name.len(), &mut ptr, &mut len)
        };
        (status == STATUS_OK).then(|| self.slice(ptr, len))
    }

    /// A proxy-wide shared value (shared by every VM of this plugin in the
    /// Envoy process) and its CAS token.
    fn shared_data(&self, key: &str) -> (Option<&[u8]>, u32) {
        let (mut ptr, mut len, mut cas) = (null_mut(), 0, 0);
        // SAFETY: valid key pointer/length and out-pointers.
        let status =
            unsafe { proxy_get_shared_data(key.as_ptr(), key.len(), &mut ptr, &mut len, &mut cas) };
        ((status == STATUS_OK).then(|| self.slice(ptr, len)), cas)
    }

    /// A host property; `path` is its segments joined by NUL bytes.
    fn property(&self, path: &[u8]) -> Option<&[u8]> {
        let (mut ptr, mut len) = (null_mut(), 0);
        // SAFETY: valid path pointer/length and out-pointers.
        let status = unsafe { proxy_get_property(path.as_ptr(), path.len(), &mut ptr, &mut len) };
        (status == STATUS_OK).then(|| self.slice(ptr, len))
    }

    fn plugin_configuration(&self, size: usize) -> &[u8] {
        let (mut ptr, mut len) = (null_mut(), 0);
        // SAFETY: valid out-pointers.
        let status = unsafe {
            proxy_get_buffer_bytes(BUFFER_PLUGIN_CONFIGURATION, 0, size, &mut ptr, &mut len)
        };
        if status == STATUS_OK {
            self.slice(ptr, len)
        } else {
            &[]
        }
    }
}

#[no_mangle]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    arena_alloc(size)
}

// ---------------------------------------------------------------------------
// Host trait implementations.
// ---------------------------------------------------------------------------

fn replace_header(map: u32, name: &str, value: &[u8]) {
    // SAFETY: valid pointers and lengths.
    unsafe {
        proxy_replace_header_map_value(map, name.as_ptr(), name.len(), value.as_ptr(), value.len());
    }
}

/// Cleared when the host says it has no `clear_route_cache` foreign
/// function (Envoy before 1.33 clears the cache itself on header writes).
static HAS_CLEAR_ROUTE_CACHE: VmLocal<Cell<bool>> = VmLocal(Cell::new(true));

struct EnvoyRequest<'s> {
    scope: &'s Scope,
    /// The header names the config reads, by slot.
    names: &'s [String],
    counts: &'s [Cell<u64>],
    fetched: [Option<Option<&'s [u8]>>; MAX_HEADERS_READ],
}

impl EnvoyRequest<'_> {
    /// Fetches every header the config reads with one host call; false if
    /// the host's map could not be read.
    fn fetch_all(&mut self) -> bool {
        let (mut ptr, mut len) = (null_mut(), 0);
        // SAFETY: valid out-pointers.
        let status = unsafe { proxy_get_header_map_pairs(MAP_REQUEST_HEADERS, &mut ptr, &mut len) };
        if status != STATUS_OK {
            return false;
        }
        let mut found = [None; MAX_HEADERS_READ];
        if !crate::pairs::lookup(self.scope.slice(ptr, len), self.names, &mut found) {
            return false;
        }
        for (f, value) in self.fetched.iter_mut().zip(found).take(self.names.len()) {
            *f = Some(value);
        }
        true
    }
}

impl Request for EnvoyRequest<'_> {
    fn header(&mut self, slot: usize, name: &str) -> Option<&[u8]> {
        if let Some(Some(cached)) = self.fetched.get(slot) {
            return *cached;
        }
        // Reading two or more headers: one host call for all of them is
        // cheaper than one call each (measured: see BENCHMARKS.md).
        if self.names.len() >= 2 && self.fetch_all() {
            return self.fetched.get(slot).copied().flatten().flatten();
        }
        let value = self.scope.header(MAP_REQUEST_HEADERS, name);
        if let Some(entry) = self.fetched.get_mut(slot) {
            *entry = Some(value);
        }
        value
    }
}

impl Host for EnvoyRequest<'_> {
    fn set_request_header(&mut self, name: &str, value: &[u8]) {
        replace_header(MAP_REQUEST_HEADERS, name, value);
    }

    fn clear_route_cache(&mut self) {
        if !HAS_CLEAR_ROUTE_CACHE.0.get() {
            return;
        }
        const NAME: &str = "clear_route_cache";
        let (mut ptr, mut len) = (null_mut(), 0);
        // SAFETY: valid name pointer/length, no arguments, valid out-pointers.
        let status = unsafe {
            proxy_call_foreign_function(
                NAME.as_ptr(),
                NAME.len(),
                [].as_ptr(),
                0,
                &mut ptr,
                &mut len,
            )
        };
        if status == STATUS_NOT_FOUND {
            HAS_CLEAR_ROUTE_CACHE.0.set(false);
        }
    }

    fn count(&mut self, version: usize, reason: Reason) {
        // Counted in the VM and flushed to Envoy's counters on each tick: a
        // host call per request would cost more than the rest of the
        // decision (measured: see BENCHMARKS.md).
        if let Some(c) = self
            .counts
            .get(version * Reason::ALL.len() + reason.index())
        {
            c.set(c.get() + 1);
        }
    }
}

struct EnvoyResponse<'s> {
    scope: &'s Scope,
}

impl ResponseHost for EnvoyResponse<'_> {
    fn status(&mut self) -> Option<u16> {
        let value = self.scope.header(MAP_RESPONSE_HEADERS, ":status")?;
        std::str::from_utf8(value).ok()?.parse().ok()
    }

    fn now_ms(&mut self) -> i64 {
        now_ms()
    }

    fn set_response_header(&mut self, name: &str, value: &[u8]) {
        replace_header(MAP_RESPONSE_HEADERS, name, value);
    }

    fn add_response_header(&mut self, name: &str, value: &[u8]) {
        // SAFETY: valid pointers and lengths.
        unsafe {
            proxy_add_header_map_value(
                MAP_RESPONSE_HEADERS,
                name.as_ptr(),
                name.len(),
                value.as_ptr(),
                value.len(),
            );
        }
    }
}

/// Seeded from the host (WASI `random_get`) on first use.
struct LazyRng(Option<WyRand>);

impl Entropy for LazyRng {
    fn next_u64(&mut self) -> u64 {
        let rng = self.0.get_or_insert_with(|| {
            let mut seed = [0u8; 8];
            // On failure the seed stays zero: anonymous picks are still
            // spread by the generator, just not unpredictable.
            let _ = getrandom::fill(&mut seed);
            WyRand(u64::from_le_bytes(seed))
        });
        rng.next_u64()
    }
}

// ---------------------------------------------------------------------------
// Contexts.
// ---------------------------------------------------------------------------

/// The guard's per-VM state for one accepted config.
struct GuardState {
    /// Responses counted on this VM since the last merge into shared data.
    local: Window,
    /// Latched until a new config is pushed.
    tripped: bool,
    /// Shared-data key of the proxy-wide window: plugin name and config hash,
    /// so a new config starts a fresh window.
    key: String,
    /// Shared-data key marking that this plugin's guard tripped, so the
    /// next push can log the reset.
    marker: String,
    trips_metric: u32,
    tripped_metric: u32,
}

/// A config accepted by `proxy_on_configure`, with its metric ids.
struct Installed {
    rollout: Rollout,
    /// Metric id per (version, reason): `version * Reason::ALL.len() + reason`.
    counters: Vec<u32>,
    /// Decisions counted since the last flush, same layout as `counters`.
    counts: Vec<Cell<u64>>,
    guard: Option<GuardState>,
    /// Unix ms at the last tick; the guard's clock between ticks.
    now_ms: i64,
}

impl Installed {
    /// Adds the decisions counted since the last flush to Envoy's counters.
    fn flush_counts(&self) {
        for (&id, count) in self.counters.iter().zip(&self.counts) {
            let n = count.take();
            if n > 0 {
                // SAFETY: plain host call.
                unsafe {
                    proxy_increment_metric(id, i64::try_from(n).unwrap_or(i64::MAX));
                }
            }
        }
    }

    /// What the decision needs from the clock and the guard. The clock is
    /// read per request only when a schedule or a latency bound needs it.
    fn live(&self) -> Live {
        let needs_clock = self.rollout.schedule.is_some()
            || self
                .rollout
                .guard
                .as_ref()
                .is_some_and(|g| g.slow.is_some());
        Live {
            now_ms: if needs_clock { now_ms() } else { self.now_ms },
            guard_tripped: self.guard.as_ref().is_some_and(|g| g.tripped),
        }
    }
}

/// One root context per plugin instance (per filter config) in this VM.
struct Root {
    id: u32,
    /// The plugin's name (`<namespace>.<name>` under Istio), which tells
    /// apart the configs of two plugins that share this VM.
    plugin: String,
    installed: Option<Installed>,
}

struct Stream {
    root: u32,
    pending: Option<Pending>,
}

/// Context ids are small sequential integers: hash them with one multiply.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8 | u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

struct Plugin {
    roots: Vec<Root>,
    /// Streams with work left for the response phase, until it runs or the
    /// stream is deleted.
    streams: HashMap<u32, Stream, BuildHasherDefault<IdHasher>>,
    rng: LazyRng,
}

impl Plugin {
    fn installed_mut(&mut self, root_id: u32) -> Option<&mut Installed> {
        self.roots
            .iter_mut()
            .find(|r| r.id == root_id)
            .and_then(|r| r.installed.as_mut())
    }
}

static PLUGIN: VmLocal<RefCell<Plugin>> = VmLocal(RefCell::new(Plugin {
    roots: Vec::new(),
    streams: HashMap::with_hasher(BuildHasherDefault::new()),
    rng: LazyRng(None),
}));

fn with_plugin<R>(f: impl FnOnce(&mut Plugin) -> R) -> Option<R> {
    PLUGIN.0.try_borrow_mut().ok().map(|mut p| f(&mut p))
}

fn define_metric(kind: u32, name: &str) -> u32 {
    let mut id = 0;
    // SAFETY: valid name pointer/length and out-pointer.
    unsafe {
        proxy_define_metric(kind, name.as_ptr(), name.len(), &mut id);
    }
    id
}

fn set_shared_data(key: &str, value: &[u8], cas: u32) -> bool {
    // SAFETY: valid key and value pointers/lengths.
    let status =
        unsafe { proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas) };
    status == STATUS_OK
}

#[no_mangle]
pub extern "C" fn proxy_abi_version_0_2_1() {}

/// The root context (the config) serving the stream being processed.
///
/// Envoy names a stream's root only in `proxy_on_context_create`, which this
/// module does not export: Envoy would enter the VM for it on every request
/// (measured: about 1.4 µs of the filter's 10, see BENCHMARKS.md). With one
/// config in the VM, that is the one. With several (two plugins sharing the
/// VM, or a push while the previous config still has streams) the stream's
/// plugin name tells which plugin, and its newest config serves it, as Envoy
/// gives every new stream the newest.
fn stream_root<'r>(roots: &'r [Root], scope: &Scope) -> Option<&'r Root> {
    let mut installed = roots.iter().filter(|r| r.installed.is_some());
    let first = installed.next()?;
    if installed.next().is_none() {
        return Some(first);
    }
    let plugin = scope.property(b"plugin_name")?;
    roots
        .iter()
        .rev()
        .find(|r| r.installed.is_some() && r.plugin.as_bytes() == plugin)
}

#[no_mangle]
pub extern "C" fn proxy_on_configure(root_id: u32, config_size: usize) -> u32 {
    // SAFETY: the callback's only scope.
    let scope = unsafe { Scope::begin() };
    let config = scope.plugin_configuration(config_size);
    let rollout = match Rollout::from_json(config) {
        Ok(rollout) => rollout,
        Err(e) => {
            log(LOG_ERROR, &format!("config rejected: {e}"));
            return 0;
        }
    };
    let mut counters = Vec::with_capacity(rollout.versions.len() * Reason::ALL.len());
    for version in &rollout.versions {
        for reason in Reason::ALL {
            counters.push(define_metric(
                METRIC_COUNTER,
                &filter::metric_name(&version.name, reason),
            ));
        }
    }
    // Shared-data keys carry the plugin's name (`<namespace>.<name>`), so
    // two plugins in one proxy never share a window or a log-once record.
    let plugin =
        String::from_utf8_lossy(scope.property(b"plugin_name").unwrap_or_default()).into_owned();
    let first = first_to_accept(&scope, &plugin, config);
    if first {
        log(LOG_INFO, &format!("config accepted: {}", rollout.summary()));
        // A tripped guard holds until a new config arrives: this is it.
        let marker = tripped_marker(&plugin);
        if let (Some(b"1"), cas) = scope.shared_data(&marker) {
            set_shared_data(&marker, b"0", cas);
            log(
                LOG_WARN,
                "guard reset: a new config was pushed; canary versions get their share again",
            );
        }
    }
    let guard = rollout.guard.as_ref().map(|g| {
        let state = GuardState {
            local: Window::new(rollout.versions.len(), g.window_ms),
            tripped: false,
            key: format!(
                "canary-selector.{plugin}.guard.{:08x}",
                crate::hash::murmur3_32(config, 0)
            ),
            marker: tripped_marker(&plugin),
            trips_metric: define_metric(METRIC_COUNTER, filter::GUARD_TRIPS_METRIC),
            tripped_metric: define_metric(METRIC_GAUGE, filter::GUARD_TRIPPED_METRIC),
        };
        if first {
            // A push starts a fresh window, even for a config seen before
            // (A, B, then A again): its old window, tripped or not, is gone.
            // Writing it now also gives every later merge a real CAS token.
            set_shared_data(&state.key, &state.local.encode(None), 0);
            // SAFETY: plain host call.
            unsafe {
                proxy_record_metric(state.tripped_metric, 0);
            }
        }
        state
    });
    // Ticks flush the decision counters once a second; with a guard they
    // also merge and judge its window, a few times per slot.
    let period = guard.as_ref().map_or(1000, |g| {
        u32::try_from(g.local.slot_ms().clamp(100, 1000)).unwrap_or(1000)
    });
    // SAFETY: plain host call; applies to the root context being configured.
    unsafe {
        proxy_set_tick_period_milliseconds(period);
    }
    with_plugin(|p| {
        let installed = Installed {
            rollout,
            counts: counters.iter().map(|_| Cell::new(0)).collect(),
            counters,
            guard,
            now_ms: now_ms(),
        };
        match p.roots.iter_mut().find(|r| r.id == root_id) {
            Some(root) => root.installed = Some(installed),
            None => p.roots.push(Root {
                id: root_id,
                plugin,
                installed: Some(installed),
            }),
        }
    })
    .map_or(0, |()| 1)
}

fn tripped_marker(plugin: &str) -> String {
    format!("canary-selector.{plugin}.guard-tripped")
}

/// Envoy runs one VM per worker thread (plus one on the main thread), and
/// each configures itself. So that an accepted config is logged once per
/// proxy rather than once per VM, the first VM to accept it records its hash
/// in shared data; the others see it there and stay quiet.
fn first_to_accept(scope: &Scope, plugin: &str, config: &[u8]) -> bool {
    let key = format!("canary-selector.{plugin}.last-config");
    let digest = crate::hash::murmur3_32(config, 0x5eed).to_le_bytes();
    let (seen, cas) = scope.shared_data(&key);
    if seen == Some(&digest[..]) {
        return false;
    }
    // Lost a race with another VM that just recorded it: that VM logs.
    set_shared_data(&key, &digest, cas)
}

#[no_mangle]
pub extern "C" fn proxy_on_request_headers(
    context_id: u32,
    _headers: usize,
    _end_of_stream: u32,
) -> u32 {
    // SAFETY: the callback's only scope.
    let scope = unsafe { Scope::begin() };
    with_plugin(|p| {
        let Plugin {
            roots,
            streams,
            rng,
        } = p;
        let Some((root, Some(installed))) =
            stream_root(roots, &scope).map(|r| (r.id, r.installed.as_ref()))
        else {
            return;
        };
        let mut request = EnvoyRequest {
            scope: &scope,
            names: &installed.rollout.headers,
            counts: &installed.counts,
            fetched: [None; MAX_HEADERS_READ],
        };
        let (_, pending) =
            filter::on_request_headers(&installed.rollout, &mut request, rng, installed.live());
        if pending.is_some() {
            streams.insert(context_id, Stream { root, pending });
        }
    });
    ACTION_CONTINUE
}

#[no_mangle]
pub extern "C" fn proxy_on_response_headers(
    context_id: u32,
    _headers: usize,
    _end_of_stream: u32,
) -> u32 {
    with_plugin(|p| {
        let Some(Stream {
            root,
            pending: Some(pending),
        }) = p.streams.remove(&context_id)
        else {
            return;
        };
        let Some(installed) = p.installed_mut(root) else {
            return;
        };
        // SAFETY: the callback's only scope.
        let scope = unsafe { Scope::begin() };
        let outcome = filter::on_response_headers(
            &installed.rollout,
            &pending,
            &mut EnvoyResponse { scope: &scope },
        );
        if let (Some(o), Some(g)) = (outcome, installed.guard.as_mut()) {
            let at = u64::try_from(installed.now_ms).unwrap_or(0);
            g.local.record(at, o.version, o.error, o.slow);
        }
    });
    ACTION_CONTINUE
}

/// Merges this VM's guard counts into the proxy-wide window and judges it.
#[no_mangle]
pub extern "C" fn proxy_on_tick(root_id: u32) {
    // SAFETY: the callback's only scope.
    let scope = unsafe { Scope::begin() };
    with_plugin(|p| {
        let Some(installed) = p.installed_mut(root_id) else {
            return;
        };
        installed.flush_counts();
        installed.now_ms = now_ms();
        let now = u64::try_from(installed.now_ms).unwrap_or(0);
        let (Some(g), Some(config)) = (installed.guard.as_mut(), installed.rollout.guard.as_ref())
        else {
            return;
        };
        if g.tripped {
            return;
        }
        let versions = installed.rollout.versions.len();
        // Compare-and-swap: retry when another VM updated the window between
        // our read and our write. (The very first write, to an absent key,
        // cannot be guarded by a CAS token: two VMs racing on it may lose one
        // tick of one VM's counts, once.)
        for _ in 0..8 {
            let (bytes, cas) = scope.shared_data(&g.key);
            let (mut shared, tripped) = bytes
                .and_then(|b| Window::decode(b, versions, config.window_ms))
                .unwrap_or_else(|| (Window::new(versions, config.window_ms), None));
            if tripped.is_some() {
                // Another VM tripped it: latch, and say so in the gauge.
                g.tripped = true;
                g.local.clear();
                // SAFETY: plain host call.
                unsafe {
                    proxy_record_metric(g.tripped_metric, 1);
                }
                return;
            }
            if g.local.is_empty() {
                return;
            }
            shared.merge(&g.local);
            let trip = judge(config, &shared.totals(now));
            if !set_shared_data(
                &g.key,
                &shared.encode(trip.as_ref().map(|t| t.version)),
                cas,
            ) {
                continue;
            }
            g.local.clear();
            if let Some(t) = trip {
                g.tripped = true;
                set_shared_data(&g.marker, b"1", 0);
                // SAFETY: plain host calls.
                unsafe {
                    proxy_increment_metric(g.trips_metric, 1);
                    proxy_record_metric(g.tripped_metric, 1);
                }
                let rollout = &installed.rollout;
                let name = |i: usize| rollout.versions.get(i).map_or("?", |v| v.name.as_str());
                log(
                    LOG_WARN,
                    &format!(
                        "guard tripped: {} {} over the last {}s: {} of {} responses failed (rate {}), {} slow; \
                         stable {}: {} of {} failed (rate {}). Every request no rule pins now goes to {} \
                         until a new config is pushed",
                        name(t.version),
                        t.cause,
                        config.window_ms / 1000,
                        t.counts.errors,
                        t.counts.requests,
                        decimal(t.counts.error_rate()),
                        t.counts.slow,
                        name(0),
                        t.stable.errors,
                        t.stable.requests,
                        decimal(t.stable.error_rate()),
                        name(0),
                    ),
                );
            }
            return;
        }
    });
}

#[no_mangle]
pub extern "C" fn proxy_on_delete(context_id: u32) {
    with_plugin(|p| {
        if p.streams.remove(&context_id).is_none() {
            p.roots.retain(|r| {
                if r.id != context_id {
                    return true;
                }
                if let Some(installed) = &r.installed {
                    installed.flush_counts();
                }
                false
            });
        }
    });
}
