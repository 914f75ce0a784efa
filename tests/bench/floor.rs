//! Reference modules for the benchmark's breakdown of canary-selector's
//! per-request cost (`VARIANTS=... make bench`, see BENCHMARKS.md). Not part
//! of the filter. One `no_std`, bare-ABI source, built with `rustc` into a
//! few modules that differ by `--cfg` flag:
//!
//! - no flag: exports only `proxy_on_context_create` and
//!   `proxy_on_request_headers`, which does nothing: the floor any Wasm
//!   filter pays per request;
//! - `--cfg work`: the request callback does canary-selector's host calls
//!   for a sticky request and nothing else: read `x-canary-tester` and
//!   `x-user-id`, replace `x-canary-version` (model-v2 when the id's last byte
//!   is `0`, a 10% split for the bench's ids), call `clear_route_cache`;
//! - `--cfg pairs` (with `work`): reads the two headers with one
//!   `proxy_get_header_map_pairs` call instead of two lookups;
//! - `--cfg noclear` (with `work`): without the `clear_route_cache` call
//!   (then Envoy keeps the route it picked before the filter ran);
//! - `--cfg metric`: also increments one counter, as canary-selector does;
//! - `--cfg callbacks`: also exports no-op `proxy_on_response_headers` and
//!   `proxy_on_delete`, canary-selector's other per-request callbacks;
//! - `--cfg nocreate`: does not export `proxy_on_context_create` (neither
//!   does canary-selector).
//!
//! rustc --edition 2021 --target wasm32-wasip1 --crate-type cdylib -O \
//!   -C panic=abort --cfg work -o floor-work.wasm tests/bench/floor.rs
#![no_std]
#![allow(unexpected_cfgs, dead_code)]

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    core::arch::wasm32::unreachable()
}

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_value(
        map: u32,
        key: *const u8,
        key_len: usize,
        out_data: *mut *mut u8,
        out_len: *mut usize,
    ) -> u32;
    fn proxy_get_header_map_pairs(map: u32, out_data: *mut *mut u8, out_len: *mut usize) -> u32;
    fn proxy_replace_header_map_value(
        map: u32,
        key: *const u8,
        key_len: usize,
        value: *const u8,
        value_len: usize,
    ) -> u32;
    fn proxy_call_foreign_function(
        name: *const u8,
        name_len: usize,
        args: *const u8,
        args_len: usize,
        out_data: *mut *mut u8,
        out_len: *mut usize,
    ) -> u32;
    fn proxy_define_metric(kind: u32, name: *const u8, name_len: usize, out_id: *mut u32) -> u32;
    fn proxy_increment_metric(id: u32, offset: i64) -> u32;
}

/// Bump arena for memory the host hands back; reset on every request.
static mut ARENA: [u8; 16384] = [0; 16384];
static mut USED: usize = 0;
static mut METRIC: u32 = u32::MAX;

#[no_mangle]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    // SAFETY: one thread per VM; the arena outlives every use.
    unsafe {
        let start = (USED + 7) & !7;
        if start + size > 16384 {
            return core::ptr::null_mut();
        }
        USED = start + size;
        core::ptr::addr_of_mut!(ARENA).cast::<u8>().add(start)
    }
}

/// The value of `name` in a serialised header map (`proxy_get_header_map_pairs`:
/// count, then (key length, value length) pairs, then each key and value
/// followed by a NUL; all integers u32 little-endian).
#[cfg(pairs)]
fn pair_value<'a>(data: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let word = |at: usize| -> Option<usize> {
        let b = data.get(at..at + 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let count = word(0)?;
    let mut at = 4 + count * 8;
    for i in 0..count {
        let (key_len, value_len) = (word(4 + i * 8)?, word(8 + i * 8)?);
        let key = data.get(at..at + key_len)?;
        let value = data.get(at + key_len + 1..at + key_len + 1 + value_len)?;
        if key == name {
            return Some(value);
        }
        at += key_len + value_len + 2;
    }
    None
}

#[no_mangle]
pub extern "C" fn proxy_abi_version_0_2_1() {}

#[cfg(not(nocreate))]
#[no_mangle]
pub extern "C" fn proxy_on_context_create(_context_id: u32, _parent_id: u32) {}

#[no_mangle]
pub extern "C" fn proxy_on_request_headers(_context_id: u32, _headers: usize, _eos: u32) -> u32 {
    #[cfg(any(work, metric))]
    // SAFETY: plain host calls with valid pointers and lengths.
    unsafe {
        USED = 0;
        #[cfg(not(pairs))]
        let last = {
            let (mut ptr, mut len) = (core::ptr::null_mut(), 0);
            let tester = b"x-canary-tester";
            proxy_get_header_map_value(0, tester.as_ptr(), tester.len(), &mut ptr, &mut len);
            let user = b"x-user-id";
            let (mut ptr, mut len) = (core::ptr::null_mut(), 0);
            proxy_get_header_map_value(0, user.as_ptr(), user.len(), &mut ptr, &mut len);
            if ptr.is_null() || len == 0 {
                0
            } else {
                *ptr.add(len - 1)
            }
        };
        #[cfg(pairs)]
        let last = {
            let (mut ptr, mut len) = (core::ptr::null_mut(), 0);
            proxy_get_header_map_pairs(0, &mut ptr, &mut len);
            let pairs = if ptr.is_null() {
                &[][..]
            } else {
                core::slice::from_raw_parts(ptr, len)
            };
            let _tester = pair_value(pairs, b"x-canary-tester");
            pair_value(pairs, b"x-user-id")
                .and_then(|v| v.last().copied())
                .unwrap_or(0)
        };
        let version: &[u8] = if last == b'0' {
            b"model-v2"
        } else {
            b"model-v1"
        };
        let name = b"x-canary-version";
        proxy_replace_header_map_value(
            0,
            name.as_ptr(),
            name.len(),
            version.as_ptr(),
            version.len(),
        );
        #[cfg(not(noclear))]
        {
            let clear = b"clear_route_cache";
            let (mut out, mut out_len) = (core::ptr::null_mut(), 0);
            proxy_call_foreign_function(
                clear.as_ptr(),
                clear.len(),
                clear.as_ptr(),
                0,
                &mut out,
                &mut out_len,
            );
        }
        #[cfg(metric)]
        {
            if METRIC == u32::MAX {
                let metric = b"floor.requests";
                proxy_define_metric(
                    0,
                    metric.as_ptr(),
                    metric.len(),
                    core::ptr::addr_of_mut!(METRIC),
                );
            }
            proxy_increment_metric(METRIC, 1);
        }
    }
    0
}

#[cfg(callbacks)]
#[no_mangle]
pub extern "C" fn proxy_on_response_headers(_context_id: u32, _headers: usize, _eos: u32) -> u32 {
    0
}

#[cfg(callbacks)]
#[no_mangle]
pub extern "C" fn proxy_on_delete(_context_id: u32) {}
