//! The root context: one per plugin config in the VM. It parses each push
//! into a [`Config`] and installs it, and on its tick flushes the counters,
//! moves scheduled weights and runs the guards.

use std::rc::Rc;
use std::time::Duration;

use log::error;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;

use crate::mesh;

use super::installed::Installed;
use super::now_ms;
use super::stream::Stream;
use crate::config::Config;

#[derive(Default)]
pub struct Plugin {
    /// The last config this root accepted; streams share it, so a stream
    /// keeps the config it started with across a push.
    installed: Option<Rc<Installed>>,
}

impl Context for Plugin {
    /// The answer of a poll of Prometheus (or Envoy's word that none came:
    /// no headers at all).
    fn on_http_call_response(
        &mut self,
        token: u32,
        headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        let Some(installed) = self.installed.clone() else {
            return;
        };
        // A call of a config since replaced: its answer is not this one's.
        let Some(poll) = installed.poll_of(token) else {
            return;
        };
        let status = if headers == 0 {
            None
        } else {
            self.get_http_call_response_header_bytes(":status")
        };
        let answer = mesh::read_answer(status.as_deref(), body_size, || {
            self.get_http_call_response_body(0, body_size)
        });
        installed.poll_result(poll, answer);
    }
}

impl RootContext for Plugin {
    fn on_configure(&mut self, _config_size: usize) -> bool {
        let text = self.get_plugin_configuration().unwrap_or_default();
        let config = match Config::from_json(&text) {
            Ok(config) => config,
            Err(e) => {
                error!("config rejected: {e}");
                return false;
            }
        };
        // Shared-data keys and metric names carry the plugin's name
        // (`<namespace>.<name>`), so two plugins in one proxy never share a
        // window, a record or a counter.
        let plugin = self
            .get_property(vec!["plugin_name"])
            .map(|name| String::from_utf8_lossy(&name).into_owned())
            .unwrap_or_default();
        let installed = Installed::install(config, &text, &plugin, now_ms(self));
        self.set_tick_period(Duration::from_millis(installed.tick_ms()));
        self.installed = Some(Rc::new(installed));
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream::new(self.installed.clone())))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    /// Flushes the counters, moves scheduled weights, and runs the guards.
    fn on_tick(&mut self) {
        let Some(installed) = self.installed.clone() else {
            return;
        };
        installed.flush_counts();
        #[cfg(feature = "alloc-stats")]
        super::metrics::alloc_stats::report();
        installed.now_ms.set(now_ms(self));
        installed.show_weights(true);
        installed.tick_guards();
        installed.tick_polls(|poll| {
            let headers = vec![
                (":method", "GET"),
                (":path", poll.path.as_str()),
                (":authority", poll.authority.as_str()),
                ("accept", "application/json"),
            ];
            let timeout = Duration::from_millis(poll.timeout_ms);
            self.dispatch_http_call(&poll.cluster, headers, None, vec![], timeout)
                .ok()
        });
    }
}
