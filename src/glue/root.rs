//! The root context: one per plugin config in the VM. It parses each push
//! into a [`Config`] and installs it, and on its tick flushes the counters,
//! moves scheduled weights, runs the guards and polls Prometheus.

use std::rc::Rc;
use std::time::Duration;

use log::error;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;

use super::bodies;
use super::installed::{serving, Installed, BODY_RESCUE_MS};
use super::logs;
use super::now_ms;
use super::stream::Stream;
use crate::config::Config;
use crate::mesh;

#[derive(Default)]
pub struct Plugin {
    /// The last config this root accepted; streams share it, so a stream
    /// keeps the config it started with across a push.
    installed: Option<Rc<Installed>>,
}

impl Plugin {
    /// The plugin's name (Istio: `<namespace>.<name>`): shared-data keys and
    /// metric names carry it, so two plugins in one proxy never share a
    /// window, a record or a counter.
    fn plugin_name(&self) -> String {
        self.get_property(vec!["plugin_name"])
            .map(|name| String::from_utf8_lossy(&name).into_owned())
            .unwrap_or_default()
    }
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
        installed.on_answer(token, || {
            let status = if headers == 0 {
                None
            } else {
                self.get_http_call_response_header_bytes(":status")
            };
            mesh::read_answer(status.as_deref(), body_size, || {
                self.get_http_call_response_body(0, body_size)
            })
        });
    }
}

impl RootContext for Plugin {
    fn on_configure(&mut self, _config_size: usize) -> bool {
        let text = self.get_plugin_configuration().unwrap_or_default();
        let plugin = self.plugin_name();
        let config = match Config::from_json(&text) {
            Ok(config) => config,
            Err(e) => {
                error!("{}", logs::rejected(&e, serving(&plugin).as_deref()));
                return false;
            }
        };
        let installed = Installed::install(config, &text, &plugin, now_ms(self));
        self.set_tick_period(Duration::from_millis(installed.tick_ms()));
        self.installed = Some(installed);
        true
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream::new(self.installed.clone(), context_id)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn on_tick(&mut self) {
        let Some(installed) = self.installed.clone() else {
            return;
        };
        #[cfg(feature = "alloc-stats")]
        super::metrics::alloc_stats::report();
        let now = now_ms(self);
        // Whatever this config reads: a request held under the config a
        // push replaced is rescued too.
        bodies::rescue(now, i64::try_from(BODY_RESCUE_MS).unwrap_or(i64::MAX));
        installed.tick(now, |poll| {
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
