//! The `io::Read` that serde_json pulls the body through: one slice of the
//! body at a time from a [`BodySource`], UTF-8 checked a slice at a time, one
//! byte per `read` (serde_json's `IoRead` asks for one byte per call, through
//! `io::Bytes`; neither LLVM at opt-level "z" nor V8 inlines the calls, which
//! is where the scan's time goes: `super`'s notes), with the byte offset of
//! every byte it hands out.
//!
//! The visitors in `scan.rs` cannot reach this reader (serde_json owns it), so
//! the two share a [`Watch`] by reference: the last byte handed out (which
//! tells a visitor the first byte of the value serde_json has just peeked),
//! and a mode that, while a key or a wanted value is read, counts the key's
//! bytes or copies the value's token.

use std::cell::{Cell, RefCell};
use std::io;

use super::{BodySource, Unreadable};

/// What the reader does with each byte besides handing it out.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Mode {
    Off,
    /// A key is being read: fail with `too_long_key` past `Watch::key_left`.
    Key,
    /// A wanted value is being read: copy its token (from its first
    /// non-whitespace byte) into `Watch::capture`, up to its capacity.
    Capture,
}

/// The token copied while in [`Mode::Capture`].
#[derive(Default, Debug)]
pub(super) struct Capture {
    /// Body offset of the token's first byte, once seen.
    pub start: Option<usize>,
    pub bytes: Vec<u8>,
    /// Bytes past the bound were not copied.
    pub overflow: bool,
    /// Copy at most this many bytes.
    pub bound: usize,
}

/// State shared by the reader (inside serde_json) and the visitors.
#[derive(Debug)]
pub(super) struct Watch {
    pub last: Cell<u8>,
    pub mode: Cell<Mode>,
    pub key_left: Cell<usize>,
    pub capture: RefCell<Capture>,
    /// Why the reader (or a visitor) stopped the parse, when it was not
    /// serde_json's own error.
    pub fault: Cell<Option<Unreadable>>,
    /// The parse has failed (a fault, or an error of serde_json's seen by a
    /// visitor): serde_json still reads a little to close its containers,
    /// but nothing more is fetched and no later fault is recorded, so the
    /// first error in the text is the one reported.
    pub stopped: Cell<bool>,
    /// The top-level object has begun.
    pub started: Cell<bool>,
    /// The longest key, in bytes as written.
    pub key_bound: usize,
}

impl Watch {
    pub fn new(key_bound: usize) -> Self {
        Watch {
            last: Cell::new(0),
            mode: Cell::new(Mode::Off),
            key_left: Cell::new(0),
            capture: RefCell::new(Capture::default()),
            fault: Cell::new(None),
            stopped: Cell::new(false),
            started: Cell::new(false),
            key_bound,
        }
    }

    /// Records why the parse stops (the first reason wins) and gives the
    /// error that makes serde_json stop.
    pub fn fail(&self, why: Unreadable) -> io::Error {
        if !self.stopped.replace(true) {
            self.fault.set(Some(why));
        }
        io::ErrorKind::InvalidData.into()
    }

    /// Passes on a result of serde_json's, noting that the parse stopped if
    /// it is an error.
    pub fn seen<T, E>(&self, result: Result<T, E>) -> Result<T, E> {
        if result.is_err() {
            self.stopped.set(true);
        }
        result
    }
}

/// Pulls `[0, len)` from `source` in slices of at most `slice` bytes. The
/// source is a trait object: one instantiation of serde_json's deserializer
/// serves every source (the glue's, and the token decoded in memory).
pub(super) struct Feed<'a> {
    source: &'a mut dyn BodySource,
    len: usize,
    slice: usize,
    watch: &'a Watch,
    /// The slice held: body bytes `[base, base + bytes.len())`.
    bytes: Vec<u8>,
    base: usize,
    /// Next byte to hand out, as an index into `bytes`.
    pos: usize,
    /// `bytes[..end]` is valid UTF-8 (up to a character boundary) and may be
    /// handed out; what follows is either a character cut by the slice's end
    /// (fetched again with the next slice) or, if `bad`, not UTF-8.
    end: usize,
    bad: bool,
}

impl<'a> Feed<'a> {
    pub fn new(source: &'a mut dyn BodySource, len: usize, slice: usize, watch: &'a Watch) -> Self {
        Feed {
            source,
            len,
            slice: slice.max(1),
            watch,
            bytes: Vec::new(),
            base: 0,
            pos: 0,
            end: 0,
            bad: false,
        }
    }

    /// Makes `pos < end` with the next slice; `Ok(false)` at the body's end.
    #[inline(never)]
    fn refill(&mut self) -> io::Result<bool> {
        // serde_json reads on after an error (to close the object): nothing
        // more is fetched once the scan has failed.
        if self.watch.stopped.get() {
            return Err(io::ErrorKind::InvalidData.into());
        }
        if self.bad {
            return Err(self.watch.fail(Unreadable::NotUtf8));
        }
        let from = self.base + self.end;
        if from >= self.len {
            return Ok(false);
        }
        // The slice handed out is dropped before the next is fetched: one
        // slice in memory at a time.
        self.bytes = Vec::new();
        let mut bytes = self.fetch(from, self.slice)?;
        // A slice that holds only the start of a character (slices shorter
        // than 4 bytes, or a short read): fetch the rest of it, at most 4
        // bytes in all.
        while let Err(e) = std::str::from_utf8(&bytes) {
            let cut = e.valid_up_to() == 0 && e.error_len().is_none();
            let more_at = from + bytes.len();
            if !cut || more_at >= self.len {
                break;
            }
            let more = self.fetch(more_at, 4 - bytes.len().min(3))?;
            bytes.extend_from_slice(&more);
        }
        let (end, bad) = match std::str::from_utf8(&bytes) {
            Ok(_) => (bytes.len(), false),
            // Cut inside a character: hand out what precedes it and fetch
            // it again with the next slice, unless the body ends there.
            Err(e) if e.error_len().is_none() && from + bytes.len() < self.len => {
                (e.valid_up_to(), false)
            }
            Err(e) => (e.valid_up_to(), true),
        };
        self.bytes = bytes;
        self.base = from;
        self.pos = 0;
        self.end = end;
        self.bad = bad;
        if end == 0 {
            return Err(self.watch.fail(Unreadable::NotUtf8));
        }
        Ok(true)
    }

    /// `[at, at + max)` clipped to the body, as the source gives it (a
    /// shorter slice is fine; none at all is not).
    fn fetch(&mut self, at: usize, max: usize) -> io::Result<Vec<u8>> {
        let want = max.min(self.len - at);
        match self.source.slice(at, want) {
            Some(mut bytes) if !bytes.is_empty() => {
                bytes.truncate(want);
                Ok(bytes)
            }
            _ => Err(self.watch.fail(Unreadable::ReadFailed)),
        }
    }

    /// The byte at body offset `at` was just handed out in a watched mode.
    #[inline(never)]
    fn watched(&self, byte: u8, at: usize) -> io::Result<()> {
        match self.watch.mode.get() {
            Mode::Off => Ok(()),
            Mode::Key => match self.watch.key_left.get().checked_sub(1) {
                Some(left) => {
                    self.watch.key_left.set(left);
                    Ok(())
                }
                None => Err(self.watch.fail(Unreadable::TooLongKey)),
            },
            Mode::Capture => {
                if let Ok(mut c) = self.watch.capture.try_borrow_mut() {
                    if c.start.is_none() {
                        if matches!(byte, b' ' | b'\t' | b'\n' | b'\r') {
                            return Ok(());
                        }
                        c.start = Some(at);
                    }
                    if c.bytes.len() < c.bound {
                        c.bytes.push(byte);
                    } else {
                        c.overflow = true;
                    }
                }
                Ok(())
            }
        }
    }
}

impl io::Read for Feed<'_> {
    /// Hands out one byte (serde_json asks for one at a time).
    #[inline]
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(out) = buf.first_mut() else {
            return Ok(0);
        };
        if self.pos >= self.end && !self.refill()? {
            return Ok(0);
        }
        let Some(&byte) = self.bytes.get(self.pos) else {
            return Ok(0);
        };
        *out = byte;
        self.watch.last.set(byte);
        if self.watch.mode.get() != Mode::Off {
            self.watched(byte, self.base + self.pos)?;
        }
        self.pos += 1;
        Ok(1)
    }
}
