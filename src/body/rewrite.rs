//! Replacing the `model` token in Envoy's request buffer.
//!
//! Envoy's `set_buffer(start, length, data)` on the request body
//! (`Buffer::copyFrom`) does two things only: with `start == 0` it drains
//! `length` bytes from the front, then prepends `data`; with `start` at or
//! past the buffer's length it appends `data`; anything else is an error.
//! Nothing can be cut from the middle or the back, so a token in the middle
//! is reached by rotation: the bytes before it are moved, a slice at a time,
//! from the front to the back, the token is replaced at the front, and the
//! bytes after it (new token first) are moved to the back the same way,
//! which restores the order. When the bytes before the token fit in one
//! slice, they are read and put back with the new token in one edit instead.
//!
//! Host calls, with `S` the slice: one read and one edit when the token
//! starts within the first `S` bytes; otherwise one read and two edits per
//! slice moved plus one edit, `3 * (ceil(P / S) + ceil((T + Q) / S)) + 1`
//! with `P` the bytes before the old token, `T` the new token's length and
//! `Q` the bytes after: 49 to 52 calls for a body of 1 MiB at
//! [`super::SLICE`] (64 KiB), 193 to 196 at 16 KiB. Each byte but the old
//! token's is read into the VM once and written back once, and the VM never
//! holds more than one slice (and the new token) of it.

use std::ops::Range;

use super::BodySource;

/// One step of a rewrite, as the glue carries it out on Envoy's buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Read the first `n` bytes (`get_http_request_body(0, n)`), drain them
    /// (`set_buffer(0, n, "")`) and append them (`set_buffer(len, 0,
    /// bytes)`, with `len` the length left, at least 1).
    MoveFrontToBack(usize),
    /// Read the first `keep` bytes (none if 0), then drain `keep + drain`
    /// bytes and prepend the kept bytes followed by `with`, in one
    /// `set_buffer(0, keep + drain, kept ++ with)`.
    ReplaceFront {
        keep: usize,
        drain: usize,
        with: Vec<u8>,
    },
}

/// The token that replaces the old one, and the body's length after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replacement {
    /// `new_value` as a JSON string: quoted, with `"`, `\` and control
    /// characters escaped (by serde_json).
    pub token: Vec<u8>,
    pub new_len: usize,
}

/// The token for `new_value` and the length of a body of `body_len` bytes
/// once `span` (the old token, from [`super::Field::Present`]) is replaced by
/// it.
pub fn replacement(body_len: usize, span: &Range<usize>, new_value: &str) -> Replacement {
    // Serializing a `str` cannot fail; the quotes alone if it ever did.
    let token = serde_json::to_vec(new_value).unwrap_or_else(|_| b"\"\"".to_vec());
    let new_len = body_len
        .saturating_sub(span.len())
        .saturating_add(token.len());
    Replacement { token, new_len }
}

/// The edits of a buffer of `body_len` bytes that replace the bytes in
/// `span` by `token`, holding at most `slice` bytes of the body at a time.
/// An empty plan if `span` is not within the body.
pub fn rewrite_plan(body_len: usize, span: &Range<usize>, token: &[u8], slice: usize) -> Vec<Op> {
    let slice = slice.max(1);
    if span.start > span.end || span.end > body_len {
        return Vec::new();
    }
    if span.start <= slice {
        return vec![Op::ReplaceFront {
            keep: span.start,
            drain: span.len(),
            with: token.to_vec(),
        }];
    }
    let mut ops = Vec::new();
    let moves = |ops: &mut Vec<Op>, mut n: usize| {
        while n > 0 {
            let step = n.min(slice);
            ops.push(Op::MoveFrontToBack(step));
            n -= step;
        }
    };
    moves(&mut ops, span.start);
    ops.push(Op::ReplaceFront {
        keep: 0,
        drain: span.len(),
        with: token.to_vec(),
    });
    moves(&mut ops, token.len() + (body_len - span.end));
    ops
}

/// Envoy's request buffer as the glue edits it: [`BodySource::slice`] is
/// `get_http_request_body`, [`BodyBuffer::set`] is
/// `set_http_request_body(start, length, data)` with the semantics in the
/// module doc (`false` when Envoy refuses).
pub trait BodyBuffer: BodySource {
    fn set(&mut self, start: usize, length: usize, data: &[u8]) -> bool;
}

/// Carries out `ops` on a buffer of `body_len` bytes with host calls: what
/// the glue runs, tested natively against a fake with Envoy's semantics.
/// `Err(i)`: op `i` failed (a read short of what it asked, or an edit
/// refused); the buffer is then partly rotated and the request must fail.
pub fn apply<B: BodyBuffer + ?Sized>(
    buffer: &mut B,
    body_len: usize,
    ops: &[Op],
) -> Result<(), usize> {
    fn read<B: BodySource + ?Sized>(buffer: &mut B, n: usize) -> Option<Vec<u8>> {
        match n {
            0 => Some(Vec::new()),
            _ => buffer.slice(0, n).filter(|bytes| bytes.len() == n),
        }
    }
    let mut len = body_len;
    for (i, op) in ops.iter().enumerate() {
        let done = match op {
            Op::MoveFrontToBack(n) => read(buffer, *n).is_some_and(|front| {
                let rest = len.saturating_sub(*n);
                buffer.set(0, *n, &[]) && buffer.set(rest.max(1), 0, &front)
            }),
            Op::ReplaceFront { keep, drain, with } => {
                read(buffer, *keep).is_some_and(|mut front| {
                    front.extend_from_slice(with);
                    let cut = keep.saturating_add(*drain);
                    let done = buffer.set(0, cut, &front);
                    len = len.saturating_sub(cut).saturating_add(front.len());
                    done
                })
            }
        };
        if !done {
            return Err(i);
        }
    }
    Ok(())
}
