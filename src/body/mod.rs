//! Reading an OpenAI-style JSON request body (`{"model":"llama-3-8b",
//! "messages":[...],"user":"alice"}`) for the few top-level string fields a
//! rollout routes by, from Envoy's buffer in bounded slices; and rewriting
//! the `model` value in that buffer with the only edits Envoy allows.
//!
//! FIGURES
//!
//! # What a scan gives
//!
//! [`scan`] reads the body `[0, len)` from a [`BodySource`] (the glue reads
//! Envoy's buffer with `get_http_request_body`; tests use memory) and gives,
//! for each wanted top-level field, a [`Field`]: absent; present once with a
//! string value (decoded: escapes resolved, UTF-8) and the span of its token
//! in the body (opening quote to closing quote, inclusive); present twice or
//! more (`Duplicate`: servers keep the last copy and parsers differ, so
//! neither copy may route); present but not a string (`null` included); or
//! longer than `max_value` bytes once decoded (`TooLong`). Keys are compared
//! after unescaping (`"mod\u0065l"` is `model`, as Python's `json` and Go's
//! `encoding/json` read it); a field inside a nested object is not the
//! top-level field.
//!
//! Or the body is [`Unreadable`], for one reason (a snake_case metric label,
//! [`Unreadable::as_str`]): `empty_body` (no byte, or only whitespace),
//! `not_json` (a syntax error, or bytes after the object), `not_object`
//! (JSON whose first value is not an object: not read further), `truncated`
//! (the text ends inside the object), `not_utf8` (a byte sequence that is not
//! UTF-8 anywhere in the body, even inside a string nobody reads, as RFC 8259
//! requires and serde_json checks; or a wanted string holding an escaped lone
//! surrogate, which no UTF-8 string can hold), `too_deep` (nesting deeper
//! than [`MAX_DEPTH`], serde_json's own limit, which is never reached),
//! `too_long_key` (a key, at any depth, longer than the bound on values, as
//! written: serde_json reads each key whole, so this is what bounds its
//! buffer), `read_failed` (the source gave no bytes before `len`).
//!
//! # Bounded memory, and why a long value is skipped, not fatal
//!
//! The scan holds one slice ([`SLICE`] bytes), one key (at most
//! `6 * max_value + 2` bytes as written, the token bound below) and the
//! wanted values. Nesting is walked on the stack to [`MAX_DEPTH`] levels,
//! never more. A wanted value is skipped by serde_json without being
//! buffered while the reader copies its token up to `6 * max_value + 2`
//! bytes (an escape of 6 bytes decodes to at least one): a longer token, or
//! a decoded value over `max_value`, makes that field `TooLong`, and the scan
//! goes on. Skipping (rather than stopping the scan) keeps the other fields
//! and the verdict on the whole body: a 5 KB `user` id must not stop a
//! rollout that routes by `model`, and the body must still be checked to be
//! JSON before anything is routed by it.
//!
//! # Where the verdict differs from `serde_json::from_slice::<Value>`
//!
//! Only on text that RFC 8259's grammar allows and `Value` still refuses: a
//! number out of `f64`'s range (`1e400`) and an escaped lone surrogate
//! (`"\ud800"`) in a string no one reads. The scan accepts both, as Python's
//! `json` does (and Go's `encoding/json` decoding into a struct): neither is
//! read, and neither changes what the body means to the server.
//!
//! # The rewrite
//!
//! [`replacement`] gives the new token for a model name (escaped by
//! serde_json) and the body's new length; [`rewrite_plan`] the edits of
//! Envoy's buffer that put it in place of the old token's span, a slice at a
//! time ([`Op`] says what the glue does for each).

mod feed;
mod rewrite;
mod scan;

#[cfg(test)]
mod tests;

use std::fmt;
use std::ops::Range;

pub use rewrite::{apply, replacement, rewrite_plan, BodyBuffer, Op, Replacement};

/// The most bytes the scan holds of the body at once (one host read).
pub const SLICE: usize = 64 * 1024;

/// A sensible bound on a wanted value (a model name, a user id), decoded.
pub const DEFAULT_MAX_VALUE: usize = 1024;

/// The deepest nesting read (the top-level object is depth 1): as deep as
/// `serde_json::from_slice::<Value>` reads (its recursion limit refuses the
/// 128th level), so the verdicts agree.
pub const MAX_DEPTH: usize = 127;

/// The body, as Envoy's buffer gives it.
pub trait BodySource {
    /// Up to `max` bytes from offset `start`. Fewer is fine (the scan asks
    /// again from where they end); `None` or no byte at all is a failed read.
    fn slice(&mut self, start: usize, max: usize) -> Option<Vec<u8>>;
}

/// What the body says of one wanted top-level field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    Absent,
    /// Present once, a string: its decoded value and its token's span in
    /// the body, quotes included.
    Present {
        value: String,
        span: Range<usize>,
    },
    /// Present twice or more (whatever the values).
    Duplicate,
    /// Present once, not a string (`null` included).
    NotString,
    /// Present once, a string longer than the bound (decoded).
    TooLong,
}

/// Every wanted field's state, in the order they were asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scanned {
    pub fields: Vec<Field>,
}

impl Scanned {
    /// The state of the `index`th wanted field.
    pub fn field(&self, index: usize) -> &Field {
        self.fields.get(index).unwrap_or(&Field::Absent)
    }

    /// The value of the `index`th wanted field, if present once as a string.
    pub fn value(&self, index: usize) -> Option<&str> {
        match self.field(index) {
            Field::Present { value, .. } => Some(value),
            _ => None,
        }
    }
}

/// Why a body cannot be read as one JSON object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreadable {
    EmptyBody,
    NotJson,
    NotObject,
    Truncated,
    NotUtf8,
    TooDeep,
    TooLongKey,
    ReadFailed,
}

impl Unreadable {
    pub const ALL: [Unreadable; 8] = [
        Unreadable::EmptyBody,
        Unreadable::NotJson,
        Unreadable::NotObject,
        Unreadable::Truncated,
        Unreadable::NotUtf8,
        Unreadable::TooDeep,
        Unreadable::TooLongKey,
        Unreadable::ReadFailed,
    ];

    /// The reason as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Unreadable::EmptyBody => "empty_body",
            Unreadable::NotJson => "not_json",
            Unreadable::NotObject => "not_object",
            Unreadable::Truncated => "truncated",
            Unreadable::NotUtf8 => "not_utf8",
            Unreadable::TooDeep => "too_deep",
            Unreadable::TooLongKey => "too_long_key",
            Unreadable::ReadFailed => "read_failed",
        }
    }
}

impl fmt::Display for Unreadable {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Reads the body `[0, len)` from `source`, a [`SLICE`] at a time, for the
/// top-level fields named in `fields`; a string longer than `max_value`
/// bytes (decoded) is `TooLong`. A name listed twice gets the same state.
pub fn scan<S: BodySource + ?Sized>(
    source: &mut S,
    len: usize,
    fields: &[&str],
    max_value: usize,
) -> Result<Scanned, Unreadable> {
    scan::scan(source, len, fields, max_value, SLICE)
}
