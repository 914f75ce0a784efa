//! The HTTP context: one per stream. It finds the stream's rollout, hands
//! the decision to `filter`, and implements the core's host traits with SDK
//! calls.

use std::cell::Cell;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, Bytes};

use super::installed::Installed;
use super::now_ms;
use crate::config::{authority_host, MAX_AUTHORITY_HOST_LEN};
use crate::decision::{Entropy, Reason, Request, WyRand};
use crate::filter::{self, AwaitingTrailers, Host, Judging, Pending, ResponseHost};

/// A config reading this many distinct request headers or more gets them
/// with one call for the whole header map instead of one call per header:
/// measured, one call per header was cheaper up to 8 headers and dearer at
/// 32 (BENCHMARKS.md, "Reading headers").
const READ_ALL_HEADERS_FROM: usize = 16;

pub struct Stream {
    installed: Option<Rc<Installed>>,
    /// The stream's rollout: an index into the config's rollouts.
    rollout: usize,
    /// The request headers the rollout reads, by slot: `None` until
    /// fetched. Emptied when the request headers have passed.
    fetched: Vec<Option<Option<Bytes>>>,
    /// What the response phase still has to do.
    pending: Option<Pending>,
    /// A gRPC response the guard judges at its trailers.
    awaiting: Option<AwaitingTrailers>,
}

impl Stream {
    pub fn new(installed: Option<Rc<Installed>>) -> Stream {
        Stream {
            installed,
            rollout: 0,
            fetched: Vec::new(),
            pending: None,
            awaiting: None,
        }
    }

    /// The rollout that takes this request, if any: with `rollouts`, by its
    /// `:authority` and, only when the host's rollouts differ by path, its
    /// `:path`. A config without them reads neither.
    fn rollout_of(&self, installed: &Installed) -> Option<usize> {
        if installed.config.index.is_none() {
            return Some(0);
        }
        let authority = self.get_http_request_header_bytes(":authority");
        let mut buf = [0u8; MAX_AUTHORITY_HOST_LEN];
        let host = authority
            .as_deref()
            .and_then(|a| authority_host(a, &mut buf));
        let mut path = None;
        let slot = &mut path;
        installed.config.rollout_for(host, move || {
            *slot = self.get_http_request_header_bytes(":path");
            let read: &Option<Bytes> = slot;
            read.as_deref()
        })
    }

    /// Fetches every header the rollout reads with one call for the whole
    /// map.
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
        // No rollout takes the request: it passes, without the routing
        // headers a client may have sent.
        let Some((index, rollout)) = self
            .rollout_of(&installed)
            .and_then(|i| Some((i, installed.config.rollouts.get(i)?)))
        else {
            installed.count_unclaimed();
            filter::on_unclaimed_request(&installed.config, self);
            return Action::Continue;
        };
        self.rollout = index;
        self.fetched = vec![None; rollout.headers.len()];
        if rollout.headers.len() >= READ_ALL_HEADERS_FROM {
            self.fetch_all(&rollout.headers);
        }
        let live = installed.live(index, || now_ms(self));
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
        let Some(rollout) = installed.config.rollouts.get(self.rollout) else {
            return Action::Continue;
        };
        match filter::on_response_headers(rollout, &pending, self) {
            Some(Judging::Now(outcome)) => installed.record(self.rollout, outcome),
            Some(Judging::AtTrailers(awaiting)) if end_of_stream => {
                installed.record(self.rollout, filter::on_stream_lost(&awaiting));
            }
            Some(Judging::AtTrailers(awaiting)) => self.awaiting = Some(awaiting),
            None => {}
        }
        Action::Continue
    }

    /// Envoy calls it only for responses that have trailers (gRPC's carry
    /// the status), never for a plain HTTP/1.1 response.
    fn on_http_response_trailers(&mut self, _trailers: usize) -> Action {
        let Some(installed) = self.installed.clone() else {
            return Action::Continue;
        };
        if let (Some(rollout), Some(awaiting)) = (
            installed.config.rollouts.get(self.rollout),
            self.awaiting.take(),
        ) {
            let status = self.get_http_response_trailer_bytes("grpc-status");
            installed.record(
                self.rollout,
                filter::on_response_trailers(rollout, &awaiting, status.as_deref()),
            );
        }
        Action::Continue
    }
}

impl Drop for Stream {
    /// Envoy deletes a stream's context when the stream ends, however it
    /// ends: a gRPC call still waiting for its status never got one.
    fn drop(&mut self) {
        if let (Some(installed), Some(awaiting)) = (&self.installed, self.awaiting.take()) {
            installed.record(self.rollout, filter::on_stream_lost(&awaiting));
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

    fn remove_request_header(&mut self, name: &str) {
        // Looked up first: a removal clears Envoy's route cache, which a
        // request without the header (nearly every one) need not pay for.
        if self.get_http_request_header_bytes(name).is_some() {
            self.set_http_request_header_bytes(name, None);
        }
    }

    fn count(&mut self, version: usize, reason: Reason) {
        // Counted in the VM, flushed to Envoy's counters on the tick.
        if let Some(installed) = &self.installed {
            installed.count_request(self.rollout, version, reason);
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
