//! The floor reference for `make bench`'s memory figures: a minimal filter on
//! the proxy-wasm SDK that does what every canary filter must, and nothing
//! more: read `x-user-id`, write `x-canary-version` (model-v2 for ids ending
//! in `0`), with its exports pruned like canary-selector's. Not part of the
//! filter; built as the `sdk-floor` example for wasm32-wasip1.
//!
//! What a crate costs in memory, measured by adding it to the floor
//! (BENCHMARKS.md, "Memory"): `RUSTFLAGS="--cfg floor_serde_json"` parses the
//! plugin config with serde_json at configure time, `--cfg floor_regex_lite`
//! compiles a rule regex with regex-lite.

#![allow(unexpected_cfgs)]

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| Box::new(Root));
}}

struct Root;

impl Context for Root {}

impl RootContext for Root {
    #[cfg(any(floor_serde_json, floor_regex_lite))]
    fn on_configure(&mut self, _config_size: usize) -> bool {
        let _config = self.get_plugin_configuration().unwrap_or_default();
        #[cfg(floor_serde_json)]
        if serde_json::from_slice::<serde_json::Value>(&_config).is_err() {
            return false;
        }
        #[cfg(floor_regex_lite)]
        if regex_lite::Regex::new("^(?:qa-[a-z]+)$").is_err() {
            return false;
        }
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Stream;

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let canary = self
            .get_http_request_header_bytes("x-user-id")
            .is_some_and(|id| id.ends_with(b"0"));
        let version: &[u8] = if canary { b"model-v2" } else { b"model-v1" };
        self.set_http_request_header_bytes("x-canary-version", Some(version));
        Action::Continue
    }
}
