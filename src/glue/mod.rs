//! The proxy-wasm glue, on the proxy-wasm Rust SDK. Only built for `wasm32`.
//!
//! - `root`: the [`root::Plugin`] (the SDK's root context, one per filter
//!   config in the VM), which parses the config and installs it, and ticks;
//! - `installed`: an accepted config and the VM's state for each of its
//!   rollouts (counters, gauges, guard);
//! - `stream`: the HTTP context, one per request, which implements the
//!   core's `Host` and `ResponseHost` with SDK calls and does nothing else
//!   (the decision itself is `filter`'s);
//! - `poll`: the mesh verdict's polls of Prometheus and what each
//!   rollout learnt from them;
//! - `metrics`: Envoy's counters and gauges, flushed on the tick.
//!
//! Envoy calls every callback a module exports on every request, so `make
//! build` prunes the SDK's exports down to the ones implemented here (see
//! the Makefile's `WASM_EXPORTS`; a test checks the two agree).

use std::time::UNIX_EPOCH;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::Context;
use proxy_wasm::types::LogLevel;

use crate::shared::SharedData;

mod installed;
mod metrics;
mod poll;
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
