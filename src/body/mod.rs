//! Reading an OpenAI-style JSON request body (`{"model":"llama-3-8b",
//! "messages":[...],"user":"alice"}`) for the few top-level string fields a
//! rollout routes by, from Envoy's buffer in bounded slices; and rewriting
//! the `model` value in that buffer with the only edits Envoy allows.
//!
//! # Why serde_json, pulled through `io::Read`
//!
//! The JSON is serde_json's: `Deserializer::from_reader` over a reader that
//! fetches one slice at a time (see `feed.rs`), with seeds and visitors that
//! build nothing but the wanted values (see `scan.rs`). Three other
//! maintained streaming crates were measured on the same scan (model and
//! three user ids, duplicates, validity; slices of 64 KiB) on OpenAI-style
//! chat bodies (`messages` with prose, code, escapes and non-ASCII), in MiB
//! per CPU second: natively at the module's opt-level ("z", LTO) for bodies
//! of 1 KiB, 64 KiB and 1 MiB, and built for `wasm32-wasip1` as the module
//! is, run in V8 (Node 20's, V8 11.3), 1 KiB to 1 MiB; the size is what the
//! scan adds to the release module of a crate that already parses with
//! serde_json:
//!
//! | option | native 1 KiB / 64 KiB / 1 MiB | V8 | wasm size | memory held |
//! |---|---|---|---|---|
//! | serde_json `from_reader` (this module) | 98 / 119 / 114 | 47-59 | +22 KB | one slice, one key, the wanted values |
//! | struson 0.7.2 | 130 / 166 / 160 | 42-52 | +46 KB | one slice, one key |
//! | actson 2.1.0 (push) | 204 / 147-198 / 195 | 45-46 | +14 KB | every string whole (a 900 KB message too) |
//! | json-event-parser 0.2.3 (low-level push) | 258 / 352-384 / 275 | 148-216 | +25 KB | every token whole, in one buffer |
//! | `from_slice::<Value>`, body in memory (reference) | 380 / 655 / 450 | 165-371 | | the body, and all of it built |
//!
//! actson and json-event-parser need the longest string of the body in
//! memory at once, which bounded slices exist to avoid; struson is 1.4
//! times as fast natively but no faster in V8, and doubles the module's
//! growth with a crate more; serde_json is already in the module and
//! agrees with the config parser (and with itself on the whole body, see
//! below) on escapes, depth and grammar. The cost is serde_json's `IoRead`,
//! which takes its input one byte per call through five functions that
//! neither LLVM at opt-level "z" nor V8 inlines: natively 1 MiB takes about
//! 9 ms (`cargo bench --bench body`: 1 KiB 10 µs, 64 KiB 0.5 ms), in V8
//! about 17 ms (1 KiB 21 µs, 64 KiB 1.1 ms), where the best scanning parsers
//! (Go) take 0.4 ms and `from_slice::<Value>` on the body in memory 2 to
//! 3 ms natively. In the module, the scan and the rewrite add 23.8 KB:
//! 486,618 bytes without this module, 486,701 with it unused, 510,440 with
//! both referenced from an exported function (`cargo build --release
//! --target wasm32-wasip1`, before the exports are pruned).
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
//! wanted values: its peak heap is 65.7 KB to 78 KB whatever the body
//! holds (`tests/body_memory.rs`: a 3 MiB string, a 2 MiB model, 100,000
//! messages, nesting to the bound, keys at their bound). Nesting is walked
//! on the stack to [`MAX_DEPTH`] levels, never more. A wanted value is
//! skipped by serde_json without being buffered while the reader copies its
//! token up to `6 * max_value + 2` bytes (an escape of 6 bytes decodes to at
//! least one): a longer token, or a decoded value over `max_value`, makes
//! that field `TooLong`, and the scan goes on. Skipping (rather than stopping the scan) keeps the other fields
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

/// The most bytes the scan (and the rewrite) holds of the body at once: one
/// host read. The scan's speed does not depend on it (serde_json reads a
/// byte at a time); a larger slice means fewer host calls (16 reads per MiB
/// scanned, 49 to 52 calls per MiB rewritten, against 64 and 193 to 196 at
/// 16 KiB), a smaller one less of the VM's linear memory, which never
/// shrinks: 64 KiB is small beside the module's own.
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
pub fn scan(
    source: &mut dyn BodySource,
    len: usize,
    fields: &[&str],
    max_value: usize,
) -> Result<Scanned, Unreadable> {
    scan::scan(source, len, fields, max_value, SLICE)
}
