//! The proxy-wasm glue, on the proxy-wasm Rust SDK. Only built for `wasm32`.
//!
//! - `root`: the [`root::Plugin`] (the SDK's root context, one per filter
//!   config in the VM), which parses each push, installs it, and ticks;
//! - `installed`: an accepted config and the VM's state for it (each
//!   rollout's `crate::vm` state, series and the polls), and what a push, a
//!   tick or a poll's answer shows: logs, counters, gauges;
//! - `rollout_metrics`: one rollout's series, defined once the proxy
//!   serves the rollout;
//! - `polls`: the mesh verdict's polls as this VM sends them;
//! - `stream`: the HTTP context, one per request, which implements the
//!   core's `Host` and `ResponseHost` with SDK calls and does nothing else
//!   (the decision itself is `filter`'s);
//! - `bodies`: the requests that wait for their body, and what is done with
//!   the body once it came (or when it does not come);
//! - `request`: the request's host calls, for `stream` and `bodies`;
//! - `metrics`: Envoy's counters and gauges, each name defined once per VM;
//! - `logs`: the log lines.
//!
//! Imports go one way: root uses stream, bodies and installed; stream uses
//! bodies and request; bodies uses request; all of them use installed,
//! which uses polls, rollout_metrics, metrics and logs.
//!
//! Envoy calls every callback a module exports on every request, so `make
//! build` prunes the SDK's exports down to the ones implemented here (see
//! the Makefile's `WASM_EXPORTS`; a test checks the two agree).

use std::cell::Cell;
use std::time::UNIX_EPOCH;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::Context;
use proxy_wasm::types::LogLevel;

use crate::shared::{SharedData, VmId};

mod bodies;
mod installed;
mod logs;
mod metrics;
mod polls;
mod request;
mod rollout_metrics;
mod root;
mod stream;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::new(root::Plugin::default()));
}}

fn now_ms(ctx: &dyn Context) -> i64 {
    ctx.get_current_time()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Unix time in ms, asked of the host without a context at hand.
fn now_ms_of_host() -> i64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

thread_local! {
    static VM_ID: Cell<Option<VmId>> = const { Cell::new(None) };
}

/// This VM's id, drawn once (WASI `random_get`): the key of its guard
/// windows in shared data. Should the host give no randomness, the clock
/// and the address of a local stand in: ids need only differ between the
/// VMs of one proxy.
fn vm_id() -> VmId {
    VM_ID.with(|id| {
        id.get().unwrap_or_else(|| {
            let mut seed = [0u8; 8];
            let drawn = match getrandom::fill(&mut seed) {
                Ok(()) => VmId::from_le_bytes(seed),
                Err(_) => {
                    let clock = hostcalls::get_current_time()
                        .ok()
                        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                        .map_or(0, |d| d.as_nanos() as u64);
                    clock ^ (std::ptr::addr_of!(seed) as usize as u64).rotate_left(32)
                }
            };
            id.set(Some(drawn));
            drawn
        })
    })
}

/// The proxy's shared data, through the host.
struct HostShared;

impl SharedData for HostShared {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        hostcalls::get_shared_data(key).unwrap_or((None, None))
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
        hostcalls::set_shared_data(key, Some(value), cas).is_ok()
    }
}
