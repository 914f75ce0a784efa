//! The scan: serde_json's streaming deserializer over [`Feed`], with seeds
//! and visitors that build nothing but the wanted fields.
//!
//! Every value is first met through `deserialize_option`, which makes
//! serde_json peek the value's first byte (the reader's last byte) and hand
//! the deserializer back: a `{` or `[` is then walked with
//! `deserialize_any` (so serde_json counts the depth, and this module stops
//! at [`MAX_DEPTH`] first), anything else is skipped with
//! `deserialize_ignored_any` (serde_json checks a string's grammar without
//! copying it). Keys are read by serde_json into its scratch buffer, so the
//! reader bounds them; a wanted value is skipped the same way while the
//! reader copies its token, which is then decoded alone.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::feed::{Feed, Mode, Watch};
use super::{BodySource, Field, Scanned, Unreadable, MAX_DEPTH};

/// How long a token may be, in bytes as written, for its value to fit
/// `max_value` bytes once decoded: an escape of 6 bytes (`\u00e9`) decodes
/// to at least one byte, and the quotes add two.
pub(super) fn token_bound(max_value: usize) -> usize {
    max_value.saturating_mul(6).saturating_add(2)
}

pub(super) fn scan(
    source: &mut dyn BodySource,
    len: usize,
    fields: &[&str],
    max_value: usize,
    slice: usize,
) -> Result<Scanned, Unreadable> {
    if len == 0 {
        return Err(Unreadable::EmptyBody);
    }
    let watch = Watch::new(token_bound(max_value));
    let feed = Feed::new(source, len, slice, &watch);
    let mut de = serde_json::Deserializer::from_reader(feed);
    let top = Top {
        fields,
        max_value,
        watch: &watch,
    };
    let result = (&mut de)
        .deserialize_option(top)
        .and_then(|found| de.end().map(|()| found));
    match result {
        Ok(mut found) => {
            // A name listed twice gets the state of its first listing.
            for i in 0..fields.len() {
                let first = fields.iter().position(|f| Some(f) == fields.get(i));
                if let Some(first) = first.filter(|&first| first < i) {
                    let state = found.get(first).cloned().unwrap_or(Field::Absent);
                    if let Some(slot) = found.get_mut(i) {
                        *slot = state;
                    }
                }
            }
            Ok(Scanned { fields: found })
        }
        Err(e) => Err(match watch.fault.get() {
            Some(why) => why,
            None => match e.classify() {
                // The text ended before any value began: only whitespace
                // (the last byte read is whitespace, or there was none).
                serde_json::error::Category::Eof
                    if !watch.started.get()
                        && matches!(watch.last.get(), 0 | b' ' | b'\t' | b'\n' | b'\r') =>
                {
                    Unreadable::EmptyBody
                }
                serde_json::error::Category::Eof => Unreadable::Truncated,
                _ => Unreadable::NotJson,
            },
        }),
    }
}

/// A string token copied from the body, decoded by the same deserializer
/// type as the scan's (no second instantiation of serde_json's code).
fn decode(token: &[u8]) -> Result<String, serde_json::Error> {
    struct Token<'a>(&'a [u8]);
    impl BodySource for Token<'_> {
        fn slice(&mut self, start: usize, max: usize) -> Option<Vec<u8>> {
            let end = self.0.len().min(start.saturating_add(max));
            self.0.get(start..end).map(<[u8]>::to_vec)
        }
    }
    let watch = Watch::new(0);
    let mut source = Token(token);
    let feed = Feed::new(&mut source, token.len(), token.len(), &watch);
    let mut de = serde_json::Deserializer::from_reader(feed);
    let value = <String as de::Deserialize>::deserialize(&mut de)?;
    de.end().map(|()| value)
}

/// Stops the parse for `why`.
fn fail<E: de::Error>(watch: &Watch, why: Unreadable) -> E {
    let _ = watch.fail(why);
    E::custom(why.as_str())
}

/// The whole body: must be one object.
struct Top<'a> {
    fields: &'a [&'a str],
    max_value: usize,
    watch: &'a Watch,
}

impl<'de> Visitor<'de> for Top<'_> {
    type Value = Vec<Field>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    /// `null`: JSON, not an object.
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Err(fail(self.watch, Unreadable::NotObject))
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        match self.watch.last.get() {
            b'{' => {
                self.watch.started.set(true);
                d.deserialize_map(self)
            }
            // The start of another JSON value: not read further.
            b'[' | b'"' | b'-' | b'0'..=b'9' | b't' | b'f' => {
                Err(fail(self.watch, Unreadable::NotObject))
            }
            // Nothing but whitespace (serde_json peeked no byte), or a byte
            // no JSON value starts with: serde_json's error says which.
            _ => {
                self.watch.seen(d.deserialize_ignored_any(IgnoredAny))?;
                Err(fail(self.watch, Unreadable::NotJson))
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = vec![Field::Absent; self.fields.len()];
        let watch = self.watch;
        let skip = Skip { depth: 1, watch };
        while let Some(wanted) = watch.seen(map.next_key_seed(Key {
            fields: Some(self.fields),
            watch,
            bound: watch.key_bound,
        }))? {
            match wanted.and_then(|i| found.get_mut(i)) {
                Some(slot @ Field::Absent) => {
                    *slot = watch.seen(map.next_value_seed(Wanted {
                        max_value: self.max_value,
                        watch,
                    }))?;
                }
                Some(slot) => {
                    *slot = Field::Duplicate;
                    watch.seen(map.next_value_seed(skip))?;
                }
                None => watch.seen(map.next_value_seed(skip))?,
            }
        }
        Ok(found)
    }
}

/// A key, at any depth: read whole by serde_json (unescaped, UTF-8), so the
/// reader stops it at `bound` bytes. At the top level it is compared with
/// the wanted names: the index of the first it equals.
struct Key<'a> {
    fields: Option<&'a [&'a str]>,
    watch: &'a Watch,
    bound: usize,
}

impl<'de> DeserializeSeed<'de> for Key<'_> {
    type Value = Option<usize>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.watch.key_left.set(self.bound);
        self.watch.mode.set(Mode::Key);
        let watch = self.watch;
        let result = d.deserialize_str(self);
        watch.mode.set(Mode::Off);
        result
    }
}

impl<'de> Visitor<'de> for Key<'_> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
        Ok(self
            .fields
            .and_then(|fields| fields.iter().position(|f| *f == key)))
    }
}

/// Any value, skipped: containers are walked (depth counted), scalars
/// checked by serde_json without being built.
#[derive(Clone, Copy)]
struct Skip<'a> {
    /// The depth of the container this value is in.
    depth: usize,
    watch: &'a Watch,
}

impl<'de> DeserializeSeed<'de> for Skip<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for Skip<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        match self.watch.last.get() {
            b'{' | b'[' => {
                let depth = self.depth + 1;
                if depth > MAX_DEPTH {
                    return Err(fail(self.watch, Unreadable::TooDeep));
                }
                self.watch.seen(d.deserialize_any(Skip { depth, ..self }))
            }
            _ => self
                .watch
                .seen(d.deserialize_ignored_any(IgnoredAny))
                .map(|_| ()),
        }
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while self.watch.seen(seq.next_element_seed(self))?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let key = || Key {
            fields: None,
            watch: self.watch,
            bound: self.watch.key_bound,
        };
        while self.watch.seen(map.next_key_seed(key()))?.is_some() {
            self.watch.seen(map.next_value_seed(self))?;
        }
        Ok(())
    }
}

/// A wanted field's value (its first copy): skipped like any value while the
/// reader copies its token, which is decoded alone if it is a string.
struct Wanted<'a> {
    max_value: usize,
    watch: &'a Watch,
}

impl<'de> DeserializeSeed<'de> for Wanted<'_> {
    type Value = Field;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Field, D::Error> {
        if let Ok(mut c) = self.watch.capture.try_borrow_mut() {
            c.start = None;
            c.bytes.clear();
            c.overflow = false;
            c.bound = token_bound(self.max_value);
        }
        self.watch.mode.set(Mode::Capture);
        let watch = self.watch;
        let result = d.deserialize_option(self);
        watch.mode.set(Mode::Off);
        result
    }
}

impl<'de> Visitor<'de> for Wanted<'_> {
    type Value = Field;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_none<E: de::Error>(self) -> Result<Field, E> {
        Ok(Field::NotString)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Field, D::Error> {
        if self.watch.last.get() != b'"' {
            // Not a string: no need to copy it.
            self.watch.mode.set(Mode::Off);
            Skip {
                depth: 1,
                watch: self.watch,
            }
            .visit_some(d)?;
            return Ok(Field::NotString);
        }
        self.watch.seen(d.deserialize_ignored_any(IgnoredAny))?;
        self.watch.mode.set(Mode::Off);
        let Ok(c) = self.watch.capture.try_borrow() else {
            return Ok(Field::TooLong);
        };
        let Some(start) = c.start else {
            return Ok(Field::TooLong);
        };
        if c.overflow {
            return Ok(Field::TooLong);
        }
        // Grammar, control characters and UTF-8 are already checked; what
        // serde_json can still refuse here is an escaped lone surrogate
        // (`"\ud800"`), which no UTF-8 string can hold.
        match decode(&c.bytes) {
            Ok(value) if value.len() > self.max_value => Ok(Field::TooLong),
            Ok(value) => Ok(Field::Present {
                value,
                span: start..start + c.bytes.len(),
            }),
            Err(_) => Err(fail(self.watch, Unreadable::NotUtf8)),
        }
    }
}
