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
//! with no byte of its body delivered, while Envoy has delivered no body
//! under its config, and resumes it; after three such rescues with no body
//! ever delivered, this config stops waiting for bodies in this VM, and
//! says so.
//!
//! A body longer than `maxBodyBytes` (by `content-length`, or as it
//! streams), or of unknown length and not whole at its first callback, is
//! not read: its model is unknown, and it goes on.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ops::Range;
use std::rc::Rc;

use log::warn;
use proxy_wasm::hostcalls;
use proxy_wasm::types::{Action, BufferType};

use super::installed::Installed;
use super::now_ms_of_host;
use super::request::{self, Calls, CellRng};
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
    /// The request's `content-length`, as its headers said it.
    content_length: Option<u64>,
}

thread_local! {
    /// The requests waiting for their body, by context id.
    static WAITING: RefCell<HashMap<u32, Waiter>> = RefCell::new(HashMap::new());
    /// What a request that waited was decided as (its rollout, and what
    /// its response phase has to do), until its stream takes it.
    static DECIDED: RefCell<HashMap<u32, (usize, Option<Pending>)>> = RefCell::new(HashMap::new());
}

/// Holds request `id`, whose headers gave `content_length`, until its body
/// comes.
pub fn wait(
    id: u32,
    installed: Rc<Installed>,
    waiting: Waiting,
    now_ms: i64,
    content_length: Option<u64>,
) {
    let waiter = Waiter {
        installed,
        waiting,
        since_ms: now_ms,
        delivered: false,
        content_length,
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
        waiter.installed.bodies.note_delivered();
    }
    let installed = waiter.installed.clone();
    let content_length = waiter.content_length;
    if let Some(why) = past_hold(&installed, size, end_of_stream, content_length.is_some()) {
        return finish(id, waiter, Err(why), size);
    }
    // Whole at its end, or once `content-length` bytes came (a request
    // with trailers: its body's last callback is not the stream's end).
    let whole = end_of_stream || content_length.is_some_and(|l| size as u64 >= l);
    if !whole {
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
    finish(id, waiter, scanned, size)
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
fn past_hold(
    installed: &Installed,
    size: usize,
    end_of_stream: bool,
    known_length: bool,
) -> Option<Unknown> {
    if size > installed.config.body.max_bytes {
        return Some(Unknown::TooLarge);
    }
    (!known_length && !end_of_stream).then_some(Unknown::Streamed)
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

/// A root's tick: decides without its body, and resumes, each waiting
/// request (of any config of this VM: one a push replaced included) that has
/// waited `after_ms` with no byte of its body delivered, under a config for
/// which Envoy has delivered no body yet. Once Envoy delivered one, it
/// delivers bodies: a request whose body is slow to come waits for it (a
/// slow client is Envoy's timeouts' to judge, not a reason to route it
/// without its model).
pub fn rescue(now_ms: i64, after_ms: i64) {
    let stuck: Vec<u32> = WAITING.with(|w| {
        w.borrow()
            .iter()
            .filter(|(_, waiter)| {
                !waiter.delivered
                    && !waiter.installed.bodies.any_delivered()
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
        let installed = waiter.installed.clone();
        installed.bodies.note_rescued();
        let waited = now_ms.saturating_sub(waiter.since_ms);
        // Not read, so never rewritten: it goes on.
        let _ = finish(id, waiter, Err(Unknown::NotDelivered), 0);
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
/// model rewritten in the body. Pause if the filter answered the request
/// itself (a rewrite Envoy refused half way), else Continue.
fn finish(id: u32, waiter: Waiter, scanned: Result<Scanned, Unknown>, size: usize) -> Action {
    let installed = &waiter.installed;
    let config = &installed.config;
    let model = plan::model_of(&scanned);
    // Whether this request was counted in `model_unknown` already: a
    // request is counted once, whatever the body was wanted for.
    let mut counted = false;
    let (index, decided) = match waiter.waiting {
        Waiting::ForModel => {
            let host = request::host_of(config);
            let entry = request::prefix_entry(config, host.as_deref());
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
                    request::unclaimed(installed);
                    return Action::Continue;
                }
            }
        }
        Waiting::ForId { rollout } => (rollout, None),
        Waiting::ToRewrite { rollout, decision } => (rollout, Some(decision)),
    };
    let Some(rollout) = config.rollouts.get(index) else {
        return Action::Continue;
    };
    let body = scanned.as_ref().ok();
    let mut calls = Calls::new(installed, index, body);
    let live = installed.live(index, now_ms_of_host);
    let d =
        decided.unwrap_or_else(|| decide(rollout, &mut calls, &mut CellRng(&installed.rng), live));
    let pending = filter::apply(rollout, &d, &mut calls, live);
    let rewrite = plan::rewrites(rollout, &d);
    let rewritten = match (rewrite, &model) {
        (Some(new_model), Ok((_, span))) => {
            let had_length = waiter.content_length.is_some();
            rewrite_model(installed, size, span, new_model, had_length)
        }
        (Some(_), Err(why)) => {
            if !counted {
                installed.count_model_unknown(*why);
            }
            Rewrite::Left
        }
        (None, _) => Rewrite::Left,
    };
    if rewritten == Rewrite::Refused {
        // Answered 503 by the filter: no model server saw it, and the guard
        // does not judge the filter's own answer.
        return Action::Pause;
    }
    write_model_header(
        config,
        rewrite.filter(|_| rewritten == Rewrite::Done),
        &model,
    );
    DECIDED.with(|d| d.borrow_mut().insert(id, (index, pending)));
    Action::Continue
}

/// What became of a model rewrite.
#[derive(PartialEq, Eq)]
enum Rewrite {
    /// The body (and `content-length`) say the new model.
    Done,
    /// Not made: the request goes on as sent.
    Left,
    /// Envoy refused it half way: the filter answered the request 503.
    Refused,
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
    let named = request::header(header).is_some_and(|v| !v.is_empty());
    if let Some(value) = plan::model_header_value(rewritten_to, body_model, named) {
        let _ = hostcalls::set_map_value_bytes(
            proxy_wasm::types::MapType::HttpRequestHeaders,
            header,
            Some(value.as_bytes()),
        );
    }
}

/// Replaces the body's `model` token (`span`) by `new_model`, and the
/// request's `content-length` if it had one (`had_length`). A body the
/// rewrite would take past `maxBodyBytes` is left as it is (Envoy's buffer
/// limit is at least that large: a longer body would be answered 413). A
/// rewrite Envoy refuses half way would leave a body nobody sent: the
/// request is answered 503 instead.
fn rewrite_model(
    installed: &Installed,
    size: usize,
    span: &std::ops::Range<usize>,
    new_model: &str,
    had_length: bool,
) -> Rewrite {
    let r = body::replacement(size, span, new_model);
    if r.new_len > installed.config.body.max_bytes {
        installed.count_model_unknown(Unknown::TooLarge);
        return Rewrite::Left;
    }
    let ops = body::rewrite_plan(size, span, &r.token, SLICE);
    if body::apply(&mut HostBody, size, &ops).is_err() {
        installed.count_model_unknown(Unknown::Unreadable(body::Unreadable::ReadFailed));
        let _ = hostcalls::send_http_response(
            503,
            vec![("x-canary-selector", "model rewrite failed")],
            Some(b"the model could not be rewritten\n"),
        );
        return Rewrite::Refused;
    }
    if had_length {
        let length = r.new_len.to_string();
        let _ = hostcalls::set_map_value_bytes(
            proxy_wasm::types::MapType::HttpRequestHeaders,
            "content-length",
            Some(length.as_bytes()),
        );
    }
    Rewrite::Done
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
