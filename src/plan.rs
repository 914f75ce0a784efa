//! What the filter does with a request of a config that may read bodies
//! (`models`, `userIdBodyFields`, a version's `model`): at its headers,
//! decide now, leave it unclaimed, or wait for its body; once the body is
//! read, the request's model and why it is unknown. Pure: the glue reads
//! the headers and the body, and carries the plan out.
//!
//! The body is read only where it matters: a rollout scoped by model may
//! take the request and `modelHeader` does not name the model; or the
//! rollout's decision would reach a `userIdBodyFields` source (no rule
//! holds, no header gave an id); or the version decided rewrites the model.
//! Any other request is decided at its headers, as in a config that reads
//! no body.

use std::ops::Range;

use crate::body::{Field, Scanned, Unreadable};
use crate::config::{writable_model, Config, PrefixRollouts, Rollout, Source};
use crate::decision::{read_source, rule_holds, Decision, Request};

/// What the headers say of a request's body.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BodyFacts {
    /// `content-type: application/json`, with or without parameters.
    pub json: bool,
    /// `content-length`, if the request has one (and it is a number).
    pub content_length: Option<u64>,
    /// The headers ended the request: there is no body.
    pub end_of_stream: bool,
}

impl BodyFacts {
    /// Why a body would not be read (`None`: it can be, up to `max_bytes`).
    pub fn unreadable(&self, max_bytes: usize) -> Option<Unknown> {
        if self.end_of_stream || self.content_length == Some(0) {
            Some(Unknown::NoBody)
        } else if !self.json {
            Some(Unknown::NotJsonContentType)
        } else if self
            .content_length
            .is_some_and(|n| n > u64::try_from(max_bytes).unwrap_or(u64::MAX))
        {
            Some(Unknown::TooLarge)
        } else {
            None
        }
    }
}

/// Whether a `content-type` value is JSON: `application/json`, any case,
/// with or without parameters (`; charset=utf-8`).
pub fn is_json(content_type: &[u8]) -> bool {
    let media = content_type
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default();
    media.trim_ascii().eq_ignore_ascii_case(b"application/json")
}

/// Why a request's model, or a body field, is not known (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unknown {
    /// The request has no body.
    NoBody,
    /// Its body is not `application/json`.
    NotJsonContentType,
    /// Its body is longer than `maxBodyBytes` (by `content-length`, or as
    /// it streamed).
    TooLarge,
    /// Its body has no `content-length` and did not arrive whole at once:
    /// the filter does not hold a streamed body (Envoy could answer 413).
    Streamed,
    /// Its body is no JSON object the filter could read (the scan's reason).
    Unreadable(Unreadable),
    /// The body has no top-level `model`.
    Absent,
    /// The body has `model` twice or more: servers keep the last copy and
    /// parsers differ, so no copy routes.
    Duplicate,
    /// `model` is not a string.
    NotString,
    /// `model` is longer than a model name can be.
    TooLong,
    /// Envoy delivered no body while the filter held the headers (the Wasm
    /// filter lacks `allow_on_headers_stop_iteration`): the request was
    /// decided without it.
    NotDelivered,
}

impl Unknown {
    pub fn as_str(self) -> &'static str {
        match self {
            Unknown::NoBody => "no_body",
            Unknown::NotJsonContentType => "not_json_content_type",
            Unknown::TooLarge => "too_large",
            Unknown::Streamed => "streamed",
            Unknown::Unreadable(u) => u.as_str(),
            Unknown::Absent => "absent",
            Unknown::Duplicate => "duplicate",
            Unknown::NotString => "not_string",
            Unknown::TooLong => "too_long",
            Unknown::NotDelivered => "not_delivered",
        }
    }

    /// Every reason, for the counters.
    pub fn all() -> impl Iterator<Item = Unknown> {
        [
            Unknown::NoBody,
            Unknown::NotJsonContentType,
            Unknown::TooLarge,
            Unknown::Streamed,
            Unknown::Absent,
            Unknown::Duplicate,
            Unknown::NotString,
            Unknown::TooLong,
            Unknown::NotDelivered,
        ]
        .into_iter()
        .chain(Unreadable::ALL.map(Unknown::Unreadable))
    }
}

/// The body's model, as a scan found it: its name and its token's span.
pub fn model_of(scanned: &Result<Scanned, Unknown>) -> Result<(&str, Range<usize>), Unknown> {
    match scanned {
        Err(why) => Err(*why),
        // The model is the first field a scan asks for.
        Ok(s) => match s.field(0) {
            Field::Present { value, span } => Ok((value.as_str(), span.clone())),
            Field::Absent => Err(Unknown::Absent),
            Field::Duplicate => Err(Unknown::Duplicate),
            Field::NotString => Err(Unknown::NotString),
            Field::TooLong => Err(Unknown::TooLong),
        },
    }
}

/// The rollout of a request at its headers, for a config that reads bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtHeaders {
    /// No rollout takes it.
    Unclaimed,
    /// Rollout `rollout` takes it. Its decision may still need the body:
    /// [`reaches_body`], and a version that [`rewrites`] the model.
    Rollout(usize),
    /// Its model picks its rollout, and only its body names the model: read
    /// the body first.
    WaitForModel,
}

/// The rollout of a request at its headers, for a config that reads bodies.
/// `entry` holds the rollouts of the longest path prefix that takes the
/// request (`None`: in a config with `rollouts`, none does), `model` is the
/// `modelHeader` value, `readable` whether the body can be read
/// ([`BodyFacts::unreadable`]).
pub fn at_headers(
    config: &Config,
    entry: Option<&PrefixRollouts>,
    model: Option<&[u8]>,
    readable: bool,
) -> AtHeaders {
    let rollout = match (config.index.as_ref(), entry) {
        (None, _) => Some(0),
        (Some(_), None) => None,
        (Some(_), Some(entry)) => match model.filter(|m| !m.is_empty()) {
            Some(m) => entry.rollout_for(Some(m)),
            None if entry.by_model() && readable => return AtHeaders::WaitForModel,
            None => entry.any_model(),
        },
    };
    rollout.map_or(AtHeaders::Unclaimed, AtHeaders::Rollout)
}

/// Whether `rollout` may need a request's body: a `userIdBodyFields`
/// source, or a version that rewrites the model.
pub fn reads_body(rollout: &Rollout) -> bool {
    rollout
        .user_ids
        .iter()
        .any(|s| matches!(s, Source::BodyField { .. }))
        || rollout.versions.iter().any(|v| v.model.is_some())
}

/// Whether deciding `rollout` for the request would read a body field: no
/// rule holds, and no user id source before the first body field gives an
/// id.
pub fn reaches_body(rollout: &Rollout, req: &mut impl Request) -> bool {
    if !rollout
        .user_ids
        .iter()
        .any(|s| matches!(s, Source::BodyField { .. }))
    {
        return false;
    }
    if rollout
        .rules
        .iter()
        .any(|rule| rule_holds(rollout, rule, req))
    {
        return false;
    }
    for source in &rollout.user_ids {
        if matches!(source, Source::BodyField { .. }) {
            return true;
        }
        if read_source(rollout, req, source).is_some_and(|id| !crate::matcher::trim(id).is_empty())
        {
            return false;
        }
    }
    false
}

/// The model a decision's version asks for, if it rewrites the request's.
pub fn rewrites<'r>(rollout: &'r Rollout, d: &Decision) -> Option<&'r str> {
    rollout.versions.get(d.version)?.model.as_deref()
}

/// What the filter writes into `modelHeader` once the body is read: the
/// model the version asked for when the body was rewritten to it; else the
/// model the body names, when the request did not name one in the header
/// (KServe's model-based routes match this header, whether or not a
/// rollout took the request), and only a model a header can carry as it
/// is. Never a model the body does not name.
pub fn model_header_value<'a>(
    rewritten_to: Option<&'a str>,
    body_model: Option<&'a str>,
    header_named: bool,
) -> Option<&'a str> {
    match rewritten_to {
        Some(model) => Some(model),
        None if header_named => None,
        None => body_model.filter(|m| !m.is_empty() && writable_model(m)),
    }
}
