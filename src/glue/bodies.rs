//! Requests that wait for their body: their headers are held (Pause) while
//! Envoy buffers the body, which is read in bounded slices once it is whole
//! (`crate::body::scan`), then the request is decided, its headers written,
//! its model rewritten if the version asks for it, and it continues.
//!
//! Envoy hands a module the body of a request whose headers it holds only
//! when the Wasm filter's `allow_on_headers_stop_iteration` is on (Envoy
//! 1.35 and later); without it, Envoy delivers nothing until the module
//! resumes the request. So a waiting request is never left waiting: the
//! root's tick decides without the body any request that has waited a tick
//! with no byte of its body delivered, and resumes it; after three such
//! rescues with no body ever delivered, this config stops waiting for
//! bodies in this VM, and says so.
//!
//! A body longer than `maxBodyBytes` (by `content-length`, or as it
//! streams), or of unknown length and not whole at its first callback, is
//! not read: its model is unknown, and it goes on.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::ops::Range;
use std::rc::Rc;

use log::warn;
use proxy_wasm::hostcalls;
use proxy_wasm::types::{Action, BufferType};

use super::installed::Installed;
use super::now_ms_of_host;
use super::stream::{self, Calls, CellRng};
use crate::body::{self, BodyBuffer, BodySource, Scanned, DEFAULT_MAX_VALUE, SLICE};
use crate::config::Config;
use crate::decision::{decide, Decision};
use crate::filter::{self, Pending};
use crate::plan::{self, Unknown};

/// Why a request waits for its body.
pub enum Waiting {
    /// Its model picks its rollout.
    ForModel,
    /// Its rollout's decision needs a user id from the body.
    ForId { rollout: usize },
    /// Its version (decided from the headers) rewrites the model.
    ToRewrite { rollout: usize, decision: Decision },
}

struct Waiter {
    installed: Rc<Installed>,
    waiting: Waiting,
    since_ms: i64,
    /// A body callback came: Envoy delivers bodies while it holds headers.
    delivered: bool,
}

thread_local! {
    /// The requests waiting for their body, by context id.
    static WAITING: RefCell<HashMap<u32, Waiter>> = RefCell::new(HashMap::new());
    /// What a request that waited was decided as (its rollout, and what
    /// its response phase has to do), until its stream takes it.
    static DECIDED: RefCell<HashMap<u32, (usize, Option<Pending>)>> = RefCell::new(HashMap::new());
}

/// A config's record, in this VM, of whether Envoy delivers the bodies of
/// requests whose headers the filter holds.
#[derive(Default)]
pub struct Deliveries {
    delivered: Cell<u64>,
    rescued: Cell<u64>,
}

/// Rescues with no body ever delivered after which a config stops waiting.
const RESCUES_BEFORE_GIVING_UP: u64 = 3;

impl Deliveries {
    /// Whether to hold a request's headers while its body comes.
    pub fn held_while_read(&self) -> bool {
        self.delivered.get() > 0 || self.rescued.get() < RESCUES_BEFORE_GIVING_UP
    }
}

/// Holds request `id` until its body comes.
pub fn wait(id: u32, installed: Rc<Installed>, waiting: Waiting, now_ms: i64) {
    let waiter = Waiter {
        installed,
        waiting,
        since_ms: now_ms,
        delivered: false,
    };
    WAITING.with(|w| w.borrow_mut().insert(id, waiter));
}

/// A body callback of request `id`: Pause while a waiting request's body
/// comes, Continue once it was decided (or for any other request).
pub fn on_body(id: u32, size: usize, end_of_stream: bool) -> Action {
    let Some(mut waiter) = WAITING.with(|w| w.borrow_mut().remove(&id)) else {
        return Action::Continue;
    };
    if !waiter.delivered {
        waiter.delivered = true;
        let d = &waiter.installed.bodies.delivered;
        d.set(d.get().saturating_add(1));
    }
    let installed = waiter.installed.clone();
    if let Some(why) = past_hold(&installed, size, end_of_stream) {
        finish(id, waiter, Err(why), size);
        return Action::Continue;
    }
    if !end_of_stream {
        WAITING.with(|w| w.borrow_mut().insert(id, waiter));
        return Action::Pause;
    }
    let fields: Vec<&str> = installed
        .config
        .body
        .fields
        .iter()
        .map(String::as_str)
        .collect();
    let scanned =
        body::scan(&mut HostBody, size, &fields, DEFAULT_MAX_VALUE).map_err(Unknown::Unreadable);
    installed.count_body_read();
    finish(id, waiter, scanned, size);
    Action::Continue
}

/// Whether a waiting request's body callback of `size` bytes goes past
/// what the filter holds: `Some(why)` to stop waiting. A body with a
/// `content-length` is waited for only if it is no longer than
/// `maxBodyBytes`, so it fits an Envoy buffer limit that large (Envoy
/// answers 413 when a body it buffers for a filter passes its limit). One
/// of unknown length (a chunked upload) is read only if it arrives whole
/// with its first callback: Envoy adds each read, which can be as large as
/// its buffer limit, to the buffer before the filter sees it, so holding
/// any part of a streamed body longer than the limit could make Envoy
/// answer 413: measured with a 2 MiB upload in 4 KiB chunks while holding at
/// most 16 KiB of it, 2 times in 360 (docs/generative-models.md,
/// "maxBodyBytes and Envoy's buffer limit").
fn past_hold(installed: &Installed, size: usize, end_of_stream: bool) -> Option<Unknown> {
    if size > installed.config.body.max_bytes {
        return Some(Unknown::TooLarge);
    }
    let known = stream::header("content-length").is_some();
    (!known && !end_of_stream).then_some(Unknown::Streamed)
}

/// What request `id` was decided as, once it waited for its body.
pub fn take_decided(id: u32) -> Option<(usize, Option<Pending>)> {
    DECIDED.with(|d| d.borrow_mut().remove(&id))
}

/// Request `id` ended.
pub fn forget(id: u32) {
    WAITING.with(|w| w.borrow_mut().remove(&id));
    DECIDED.with(|d| d.borrow_mut().remove(&id));
}

/// The root's tick: decides without its body, and resumes, each request of
/// `installed`'s config that has waited `after_ms` with no byte of its body
/// delivered.
pub fn rescue(installed: &Rc<Installed>, now_ms: i64, after_ms: i64) {
    let stuck: Vec<u32> = WAITING.with(|w| {
        w.borrow()
            .iter()
            .filter(|(_, waiter)| {
                Rc::ptr_eq(&waiter.installed, installed)
                    && !waiter.delivered
                    && now_ms.saturating_sub(waiter.since_ms) >= after_ms
            })
            .map(|(&id, _)| id)
            .collect()
    });
    for id in stuck {
        let Some(waiter) = WAITING.with(|w| w.borrow_mut().remove(&id)) else {
            continue;
        };
        if hostcalls::set_effective_context(id).is_err() {
            continue;
        }
        let r = &installed.bodies.rescued;
        r.set(r.get().saturating_add(1));
        let waited = now_ms.saturating_sub(waiter.since_ms);
        finish(id, waiter, Err(Unknown::NotDelivered), 0);
        let _ = hostcalls::resume_http_request();
        if installed.log_due("bodies-not-delivered", now_ms) {
            warn!(
                "a request waited {waited} ms for its body and Envoy delivered none: turn on the Wasm filter's \
                 allow_on_headers_stop_iteration (Envoy 1.35 and later) for the filter to read bodies; \
                 requests are decided without theirs until it is on"
            );
        }
    }
}

/// Decides request `id`, which waited for its body (`scanned`: what the
/// body gave, or why not; `size`: its length), and carries the decision
/// out on the request Envoy holds: the routing header, the model header, the
/// model rewritten in the body.
fn finish(id: u32, waiter: Waiter, scanned: Result<Scanned, Unknown>, size: usize) {
    let installed = &waiter.installed;
    let config = &installed.config;
    let model = plan::model_of(&scanned);
    // Whether this request was counted in `model_unknown` already: a
    // request is counted once, whatever the body was wanted for.
    let mut counted = false;
    let (index, decided) = match waiter.waiting {
        Waiting::ForModel => {
            let host = stream::host_of(config);
            let entry = stream::prefix_entry(config, host.as_deref());
            if let Err(why) = &model {
                installed.count_model_unknown(*why);
                counted = true;
            }
            let known = model.as_ref().ok().map(|(m, _)| m.as_bytes());
            match entry.and_then(|e| e.rollout_for(known)) {
                Some(index) => (index, None),
                None => {
                    // No rollout of its model: the model still routes it.
                    write_model_header(config, None, &model);
                    stream::unclaimed(installed);
                    return;
                }
            }
        }
        Waiting::ForId { rollout } => (rollout, None),
        Waiting::ToRewrite { rollout, decision } => (rollout, Some(decision)),
    };
    let Some(rollout) = config.rollouts.get(index) else {
        return;
    };
    let body = scanned.as_ref().ok();
    let mut calls = Calls::new(installed, index, body);
    let live = installed.live(index, now_ms_of_host);
    let d =
        decided.unwrap_or_else(|| decide(rollout, &mut calls, &mut CellRng(&installed.rng), live));
    let pending = filter::apply(rollout, &d, &mut calls, live);
    let rewrite = plan::rewrites(rollout, &d);
    let rewritten = match (rewrite, &model) {
        (Some(new_model), Ok((_, span))) => rewrite_model(installed, size, span, new_model),
        (Some(_), Err(why)) => {
            if !counted {
                installed.count_model_unknown(*why);
            }
            false
        }
        (None, _) => false,
    };
    write_model_header(config, rewrite.filter(|_| rewritten), &model);
    DECIDED.with(|d| d.borrow_mut().insert(id, (index, pending)));
}

/// Writes `modelHeader` (if the config names one) as
/// [`plan::model_header_value`] says.
fn write_model_header(
    config: &Config,
    rewritten_to: Option<&str>,
    model: &Result<(&str, Range<usize>), Unknown>,
) {
    let Some(header) = &config.body.model_header else {
        return;
    };
    let body_model = model.as_ref().ok().map(|(m, _)| *m);
    let named = stream::header(header).is_some();
    if let Some(value) = plan::model_header_value(rewritten_to, body_model, named) {
        let _ = hostcalls::set_map_value_bytes(
            proxy_wasm::types::MapType::HttpRequestHeaders,
            header,
            Some(value.as_bytes()),
        );
    }
}

/// Replaces the body's `model` token (`span`) by `new_model`, and the
/// request's `content-length` if it had one; false if it did not. A body the
/// rewrite would take past `maxBodyBytes` is left as it is (Envoy's buffer
/// limit is at least that large: a longer body would be answered 413). A
/// rewrite Envoy refuses half way would leave a body nobody sent: the
/// request is answered 503 instead.
fn rewrite_model(
    installed: &Installed,
    size: usize,
    span: &std::ops::Range<usize>,
    new_model: &str,
) -> bool {
    let r = body::replacement(size, span, new_model);
    if r.new_len > installed.config.body.max_bytes {
        installed.count_model_unknown(Unknown::TooLarge);
        return false;
    }
    let ops = body::rewrite_plan(size, span, &r.token, SLICE);
    if body::apply(&mut HostBody, size, &ops).is_err() {
        installed.count_model_unknown(Unknown::Unreadable(body::Unreadable::ReadFailed));
        let _ = hostcalls::send_http_response(
            503,
            vec![("x-canary-selector", "model rewrite failed")],
            Some(b"the model could not be rewritten\n"),
        );
        return false;
    }
    if stream::header("content-length").is_some() {
        let length = r.new_len.to_string();
        let _ = hostcalls::set_map_value_bytes(
            proxy_wasm::types::MapType::HttpRequestHeaders,
            "content-length",
            Some(length.as_bytes()),
        );
    }
    true
}

/// The request body Envoy holds, read and edited with host calls.
struct HostBody;

impl BodySource for HostBody {
    fn slice(&mut self, start: usize, max: usize) -> Option<Vec<u8>> {
        hostcalls::get_buffer(BufferType::HttpRequestBody, start, max)
            .ok()
            .flatten()
    }
}

impl BodyBuffer for HostBody {
    fn set(&mut self, start: usize, length: usize, data: &[u8]) -> bool {
        hostcalls::set_buffer(BufferType::HttpRequestBody, start, length, data).is_ok()
    }
}
