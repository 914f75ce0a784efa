//! The HTTP context: one per stream. It finds the stream's rollout, hands
//! the decision to `filter`, and implements the core's host traits with SDK
//! calls. A request whose body the decision needs waits for it
//! (`super::bodies`).

use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, Bytes};

use super::bodies::{self, Waiting};
use super::installed::Installed;
use super::now_ms;
use super::request::{header, host_of, prefix_entry, unclaimed, Calls, CellRng};
use crate::config::PrefixRollouts;
use crate::decision::decide;
use crate::filter::{self, AwaitingTrailers, Judging, Pending, ResponseHost};
use crate::plan::{self, AtHeaders, BodyFacts};

pub struct Stream {
    /// Envoy's id of this stream's context.
    id: u32,
    installed: Option<Rc<Installed>>,
    /// The stream's rollout: an index into the config's rollouts.
    rollout: usize,
    /// What the response phase still has to do.
    pending: Option<Pending>,
    /// A gRPC response the guard judges at its trailers.
    awaiting: Option<AwaitingTrailers>,
}

impl Stream {
    pub fn new(installed: Option<Rc<Installed>>, id: u32) -> Stream {
        Stream {
            id,
            installed,
            rollout: 0,
            pending: None,
            awaiting: None,
        }
    }

    /// Decides at the headers, as in a config that reads no body: the
    /// rollout by host and (only when the host's rollouts differ by path)
    /// path; a config without `rollouts` reads neither.
    fn decide_now(&mut self, installed: &Installed) -> Action {
        let host = host_of(&installed.config);
        let mut path = None;
        let slot = &mut path;
        let index = installed.config.rollout_for(host.as_deref(), move || {
            *slot = header(":path");
            let read: &Option<Bytes> = slot;
            read.as_deref()
        });
        match index {
            Some(index) => self.decided(installed, index, None),
            None => unclaimed(installed),
        }
        Action::Continue
    }

    /// Decides rollout `index` (a decision taken from the headers already,
    /// if `decided`), writes the routing header and counts.
    fn decided(
        &mut self,
        installed: &Installed,
        index: usize,
        decided: Option<crate::decision::Decision>,
    ) {
        let Some(rollout) = installed.config.rollouts.get(index) else {
            return;
        };
        self.rollout = index;
        let mut calls = Calls::new(installed, index, None);
        let live = installed.live(index, || now_ms(self));
        let d = decided
            .unwrap_or_else(|| decide(rollout, &mut calls, &mut CellRng(&installed.rng), live));
        self.pending = filter::apply(rollout, &d, &mut calls, live);
    }

    /// At the headers of a config that may read bodies: decide, leave the
    /// request unclaimed, or wait for the body (only where it matters).
    fn plan(&mut self, installed: &Rc<Installed>, end_of_stream: bool) -> Action {
        let config = &installed.config;
        let host = host_of(config);
        let entry = prefix_entry(config, host.as_deref());
        // A request whose rollout is known without its model, and whose
        // rollout never reads a body, is decided as in a config that reads
        // none: no header more is read for it.
        if !entry.is_some_and(PrefixRollouts::by_model) {
            let rollout = match (&config.index, entry) {
                (None, _) => Some(0),
                (Some(_), entry) => entry.and_then(PrefixRollouts::any_model),
            };
            match rollout {
                None => {
                    unclaimed(installed);
                    return Action::Continue;
                }
                Some(index) if !config.rollouts.get(index).is_some_and(plan::reads_body) => {
                    self.decided(installed, index, None);
                    return Action::Continue;
                }
                Some(_) => {}
            }
        }
        // An empty model header names no model (as `plan::at_headers` and
        // `bodies` read it): the body is read, and the header written.
        let model = config
            .body
            .model_header
            .as_deref()
            .and_then(header)
            .filter(|m| !m.is_empty());
        let facts = BodyFacts {
            json: header("content-type").is_some_and(|t| plan::is_json(&t)),
            content_length: header("content-length")
                .and_then(|v| std::str::from_utf8(&v).ok()?.trim().parse().ok()),
            end_of_stream,
        };
        // Why the body will not be read, if it will not: what the headers
        // say of it, or that Envoy delivers no body while the filter holds
        // the headers (`super::bodies`).
        let unreadable = facts.unreadable(config.body.max_bytes).or_else(|| {
            (!installed.bodies.held_while_read()).then_some(plan::Unknown::NotDelivered)
        });
        let readable = unreadable.is_none();
        // Scoped by model, and the body could not say which: counted once,
        // whatever else the body was wanted for, and whether a rollout of
        // any model takes the request or none does (as `bodies` counts a
        // body that did not say).
        let unknown_model = entry.is_some_and(PrefixRollouts::by_model) && model.is_none();
        match plan::at_headers(config, entry, model.as_deref(), readable) {
            AtHeaders::Unclaimed => {
                if let (true, Some(why)) = (unknown_model, unreadable) {
                    installed.count_model_unknown(why);
                }
                unclaimed(installed);
                Action::Continue
            }
            AtHeaders::WaitForModel => self.wait(installed, Waiting::ForModel, &facts),
            AtHeaders::Rollout(index) => {
                let Some(rollout) = config.rollouts.get(index) else {
                    return Action::Continue;
                };
                if let (true, Some(why)) = (unknown_model, unreadable) {
                    installed.count_model_unknown(why);
                }
                let mut calls = Calls::new(installed, index, None);
                if readable && plan::reaches_body(rollout, &mut calls) {
                    return self.wait(installed, Waiting::ForId { rollout: index }, &facts);
                }
                let live = installed.live(index, || now_ms(self));
                let d = decide(rollout, &mut calls, &mut CellRng(&installed.rng), live);
                if readable && plan::rewrites(rollout, &d).is_some() {
                    return self.wait(
                        installed,
                        Waiting::ToRewrite {
                            rollout: index,
                            decision: d,
                        },
                        &facts,
                    );
                }
                if let (Some(_), Some(why), false) =
                    (plan::rewrites(rollout, &d), unreadable, unknown_model)
                {
                    // The version asks for another model, in a body the
                    // filter cannot read: the request goes as it is.
                    installed.count_model_unknown(why);
                }
                self.rollout = index;
                self.pending = filter::apply(rollout, &d, &mut calls, live);
                Action::Continue
            }
        }
    }

    fn wait(&mut self, installed: &Rc<Installed>, waiting: Waiting, facts: &BodyFacts) -> Action {
        // The client's routing headers go before the request is held: were
        // Envoy ever to pass it on undecided, it carries none of them.
        filter::on_unclaimed_request(&installed.config, &mut Calls::bare(installed));
        bodies::wait(
            self.id,
            installed.clone(),
            waiting,
            now_ms(self),
            facts.content_length,
        );
        Action::Pause
    }

    /// What a waiting request was decided as, once its body came (or the
    /// filter stopped waiting for it).
    fn take_decided(&mut self) {
        if let Some((rollout, pending)) = bodies::take_decided(self.id) {
            self.rollout = rollout;
            self.pending = pending;
        }
    }
}

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        let Some(installed) = self.installed.clone() else {
            return Action::Continue;
        };
        if installed.config.body.reads {
            self.plan(&installed, end_of_stream)
        } else {
            self.decide_now(&installed)
        }
    }

    /// Only a request that waits for its body has anything to do here: the
    /// others continue at once.
    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let action = bodies::on_body(self.id, body_size, end_of_stream);
        if action == Action::Continue {
            self.take_decided();
        }
        action
    }

    fn on_http_response_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        self.take_decided();
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
    /// ends: a gRPC call still waiting for its status never got one, and a
    /// request still waiting for its body waits no more.
    fn drop(&mut self) {
        bodies::forget(self.id);
        if let (Some(installed), Some(awaiting)) = (&self.installed, self.awaiting.take()) {
            installed.record(self.rollout, filter::on_stream_lost(&awaiting));
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
