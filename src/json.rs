//! A small JSON reader that drives serde's derived deserializers for the
//! plugin config (serde with `deny_unknown_fields` stays the contract's
//! schema), in place of serde_json.
//!
//! Why not serde_json: the config is read once per push, but its code stays
//! in every Wasm VM of every proxy. serde_json and what its error messages
//! pull in (float formatting for "invalid type: floating point `1.5`")
//! were about a fifth of the module. This reader also knows the path of
//! the value it is reading, so an error names its field exactly
//! (`versions[1].weight`) instead of being located from a line and column.
//!
//! It reads RFC 8259 JSON: objects, arrays, strings (UTF-8, with every
//! escape), numbers, `true`, `false`, `null`; nesting is bounded, and
//! nothing may follow the top-level value.

use std::fmt::{self, Display};

use serde::de::{self, DeserializeSeed, Expected, IntoDeserializer, Unexpected, Visitor};

/// Objects and arrays nested deeper than this are rejected (the config's
/// deepest value is 5 levels down); it bounds the reader's recursion.
const MAX_DEPTH: usize = 32;

/// Why a text could not be read, and where (`versions[1].weight`; `None` for
/// the top level).
#[derive(Debug, PartialEq, Eq)]
pub struct Error {
    pub path: Option<String>,
    pub reason: String,
}

impl Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.path.as_deref().unwrap_or("(config)"))?;
        f.write_str(": ")?;
        f.write_str(&self.reason)
    }
}

impl std::error::Error for Error {}

impl de::Error for Error {
    fn custom<T: Display>(msg: T) -> Self {
        Error {
            path: None,
            reason: msg.to_string(),
        }
    }

    // serde's default wording for these formats floats through core's
    // float formatting; `Value` says the same without it.
    fn invalid_type(unexp: Unexpected<'_>, exp: &dyn Expected) -> Self {
        de::Error::custom(format_args!(
            "invalid type: {}, expected {exp}",
            Value(unexp)
        ))
    }

    fn invalid_value(unexp: Unexpected<'_>, exp: &dyn Expected) -> Self {
        de::Error::custom(format_args!(
            "invalid value: {}, expected {exp}",
            Value(unexp)
        ))
    }
}

/// What was expected, in JSON's words (not the Rust type's).
struct Kind(&'static str);

impl Expected for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// What was found instead, in JSON's words.
struct Value<'a>(Unexpected<'a>);

impl Display for Value<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Unexpected::Bool(b) => write!(f, "boolean `{b}`"),
            Unexpected::Unsigned(n) => write!(f, "integer `{n}`"),
            Unexpected::Signed(n) => write!(f, "integer `{n}`"),
            Unexpected::Float(v) => write!(f, "number `{}`", crate::config::decimal(v)),
            Unexpected::Char(c) => write!(f, "character `{c}`"),
            Unexpected::Str(s) => write!(f, "string \"{s}\""),
            Unexpected::Unit => f.write_str("null"),
            Unexpected::Seq => f.write_str("array"),
            Unexpected::Map => f.write_str("object"),
            Unexpected::Other(other) => f.write_str(other),
            _ => f.write_str("value"),
        }
    }
}

/// Reads one JSON value from `text` into `T`; nothing but whitespace may
/// follow it.
pub fn from_slice<'de, T: de::Deserialize<'de>>(text: &'de [u8]) -> Result<T, Error> {
    let mut reader = Reader {
        text,
        pos: 0,
        path: Vec::new(),
    };
    let value = T::deserialize(&mut reader)?;
    reader.skip_whitespace();
    if reader.pos < text.len() {
        return Err(reader.fail("trailing characters"));
    }
    Ok(value)
}

/// The value of a JSON number (already checked against JSON's grammar).
///
/// Not core's `str::parse::<f64>`: its correctly rounded algorithm brings
/// about 17 KB of code and tables into the module. Config numbers are
/// weights, rates and whole numbers: up to 19 significant digits are kept
/// (more cannot change a value the config uses), and the result is exact
/// whenever the digits fit in 53 bits and the power of ten is at most 22
/// (`10`, `10.0`, `33.5`, `0.05`); otherwise within a few units in the last
/// place of the correctly rounded value.
fn decimal_to_f64(text: &str) -> Option<f64> {
    // Exactly representable powers of ten.
    const POW10: [f64; 23] = [
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
        1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
    ];
    let (negative, rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa_text, exponent_text) = match rest.find(['e', 'E']) {
        Some(at) => (rest.get(..at)?, rest.get(at + 1..)?),
        None => (rest, ""),
    };
    let mut exponent: i64 = match exponent_text {
        "" => 0,
        e => {
            // Saturate: `1e999999999999` is out of range either way.
            let (sign, digits) = match e.as_bytes().first() {
                Some(b'-') => (-1, e.get(1..)?),
                Some(b'+') => (1, e.get(1..)?),
                _ => (1, e),
            };
            let magnitude = digits.bytes().fold(0i64, |n, d| {
                (n * 10 + i64::from(d.wrapping_sub(b'0'))).min(1_000_000)
            });
            sign * magnitude
        }
    };
    let (mut mantissa, mut kept, mut seen_dot) = (0u64, 0u32, false);
    for b in mantissa_text.bytes() {
        if b == b'.' {
            seen_dot = true;
            continue;
        }
        if mantissa == 0 && b == b'0' {
            // Leading zeros carry no digit, only position.
            exponent -= i64::from(seen_dot);
            continue;
        }
        if kept < 19 {
            mantissa = mantissa * 10 + u64::from(b.wrapping_sub(b'0'));
            kept += 1;
            exponent -= i64::from(seen_dot);
        } else {
            // A digit past the 19th: dropped, but one in the integer part
            // still scales the value.
            exponent += i64::from(!seen_dot);
        }
    }
    #[allow(clippy::cast_precision_loss)] // rounded once, to nearest
    let mut value = mantissa as f64;
    if mantissa != 0 {
        while exponent > 0 {
            let step = exponent.min(22);
            value *= POW10.get(usize::try_from(step).ok()?)?;
            exponent -= step;
        }
        while exponent < 0 {
            let step = (-exponent).min(22);
            value /= POW10.get(usize::try_from(step).ok()?)?;
            exponent += step;
        }
    }
    Some(if negative { -value } else { value })
}

enum Number {
    Unsigned(u64),
    Signed(i64),
    Float(f64),
}

enum Segment {
    /// The key being read in an object (empty before the first).
    Key(String),
    Index(usize),
}

struct Reader<'de> {
    text: &'de [u8],
    pos: usize,
    /// Where the value being read sits.
    path: Vec<Segment>,
}

impl<'de> Reader<'de> {
    fn peek(&self) -> Option<u8> {
        self.text.get(self.pos).copied()
    }

    fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    /// An error at the current path.
    fn fail(&self, reason: &str) -> Error {
        let mut path = String::new();
        for segment in &self.path {
            match segment {
                Segment::Key(key) if key.is_empty() => {}
                Segment::Key(key) => {
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(key);
                }
                Segment::Index(i) => {
                    path.push('[');
                    path.push_str(&i.to_string());
                    path.push(']');
                }
            }
        }
        Error {
            path: (!path.is_empty()).then_some(path),
            reason: reason.into(),
        }
    }

    /// Gives an error raised below this point (by a visitor, which cannot
    /// know where it is) the current path, unless it already has a deeper one.
    fn locate(&self, e: Error) -> Error {
        if e.path.is_some() {
            return e;
        }
        Error {
            path: self.fail("").path,
            reason: e.reason,
        }
    }

    fn expect_literal(&mut self, word: &[u8]) -> Result<(), Error> {
        match self.text.get(self.pos..self.pos + word.len()) {
            Some(found) if found == word => {
                self.pos += word.len();
                Ok(())
            }
            Some(_) => Err(self.fail("expected value")),
            None => Err(self.fail("EOF while parsing a value")),
        }
    }

    /// A string's contents, the opening quote already consumed.
    fn string(&mut self) -> Result<String, Error> {
        let mut out = Vec::new();
        loop {
            let start = self.pos;
            while let Some(b) = self.peek() {
                if b == b'"' || b == b'\\' || b < 0x20 {
                    break;
                }
                self.pos += 1;
            }
            out.extend_from_slice(self.text.get(start..self.pos).unwrap_or_default());
            match self.peek() {
                None => return Err(self.fail("EOF while parsing a string")),
                Some(b'"') => {
                    self.pos += 1;
                    return String::from_utf8(out)
                        .map_err(|_| self.fail("invalid UTF-8 in a string"));
                }
                Some(b'\\') => {
                    self.pos += 1;
                    let escaped = self.peek();
                    self.pos += 1;
                    let c = match escaped {
                        Some(b'"') => '"',
                        Some(b'\\') => '\\',
                        Some(b'/') => '/',
                        Some(b'b') => '\u{8}',
                        Some(b'f') => '\u{c}',
                        Some(b'n') => '\n',
                        Some(b'r') => '\r',
                        Some(b't') => '\t',
                        Some(b'u') => self.unicode_escape()?,
                        Some(_) => return Err(self.fail("invalid escape in a string")),
                        None => return Err(self.fail("EOF while parsing a string")),
                    };
                    let mut buf = [0; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
                Some(_) => {
                    return Err(self
                        .fail("control character (\\u0000-\\u001F) found while parsing a string"))
                }
            }
        }
    }

    fn hex4(&mut self) -> Result<u32, Error> {
        let digits = self
            .text
            .get(self.pos..self.pos + 4)
            .ok_or_else(|| self.fail("EOF while parsing a string"))?;
        let mut n = 0;
        for &d in digits {
            let v = char::from(d)
                .to_digit(16)
                .ok_or_else(|| self.fail("invalid \\u escape in a string"))?;
            n = n * 16 + v;
        }
        self.pos += 4;
        Ok(n)
    }

    /// The character of a `\uXXXX` escape (the `\u` consumed), joining a
    /// surrogate pair.
    fn unicode_escape(&mut self) -> Result<char, Error> {
        let first = self.hex4()?;
        let code = match first {
            0xD800..=0xDBFF => {
                if self.text.get(self.pos..self.pos + 2) != Some(b"\\u") {
                    return Err(self.fail("lone leading surrogate in a \\u escape"));
                }
                self.pos += 2;
                let second = self.hex4()?;
                if !(0xDC00..=0xDFFF).contains(&second) {
                    return Err(self.fail("lone leading surrogate in a \\u escape"));
                }
                0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
            }
            0xDC00..=0xDFFF => return Err(self.fail("lone trailing surrogate in a \\u escape")),
            n => n,
        };
        char::from_u32(code).ok_or_else(|| self.fail("invalid \\u escape in a string"))
    }

    /// A number, as JSON writes them: `-? int frac? exp?`.
    fn number(&mut self) -> Result<Number, Error> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        let digits = |r: &mut Self| {
            let from = r.pos;
            while r.peek().is_some_and(|b| b.is_ascii_digit()) {
                r.pos += 1;
            }
            r.pos - from
        };
        let int_start = self.pos;
        let int_len = digits(self);
        if int_len == 0 || (int_len > 1 && self.text.get(int_start) == Some(&b'0')) {
            return Err(self.fail("invalid number"));
        }
        let mut integer = true;
        if self.peek() == Some(b'.') {
            self.pos += 1;
            integer = false;
            if digits(self) == 0 {
                return Err(self.fail("invalid number"));
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.pos += 1;
            integer = false;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if digits(self) == 0 {
                return Err(self.fail("invalid number"));
            }
        }
        // The slice is ASCII digits and signs: always UTF-8.
        let text = std::str::from_utf8(self.text.get(start..self.pos).unwrap_or_default())
            .map_err(|_| self.fail("invalid number"))?;
        if integer {
            if let Ok(n) = text.parse::<u64>() {
                return Ok(Number::Unsigned(n));
            }
            if let Ok(n) = text.parse::<i64>() {
                return Ok(Number::Signed(n));
            }
        }
        match decimal_to_f64(text) {
            Some(v) if v.is_finite() => Ok(Number::Float(v)),
            _ => Err(self.fail("number out of range")),
        }
    }

    /// The error for a value of the wrong kind: what is there, against
    /// what was expected.
    fn mismatch(&mut self, expected: &dyn Expected) -> Error {
        let text;
        let found = match self.peek() {
            None => return self.fail("EOF while parsing a value"),
            Some(b'{') => Unexpected::Map,
            Some(b'[') => Unexpected::Seq,
            Some(b't') => Unexpected::Bool(true),
            Some(b'f') => Unexpected::Bool(false),
            Some(b'n') => Unexpected::Unit,
            Some(b'"') => {
                self.pos += 1;
                text = match self.string() {
                    Ok(text) => text,
                    Err(e) => return e,
                };
                Unexpected::Str(&text)
            }
            Some(b'-' | b'0'..=b'9') => match self.number() {
                Ok(Number::Unsigned(n)) => Unexpected::Unsigned(n),
                Ok(Number::Signed(n)) => Unexpected::Signed(n),
                Ok(Number::Float(v)) => Unexpected::Float(v),
                Err(e) => return e,
            },
            Some(_) => return self.fail("expected value"),
        };
        de::Error::invalid_type(found, expected)
    }

    /// Skips whitespace; true if the next value starts with `first`.
    fn at(&mut self, first: u8) -> bool {
        self.skip_whitespace();
        self.peek() == Some(first)
    }

    fn enter(&mut self, segment: Segment) -> Result<(), Error> {
        if self.path.len() >= MAX_DEPTH {
            return Err(self.fail("nested too deeply"));
        }
        self.pos += 1;
        self.path.push(segment);
        Ok(())
    }
}

// Each method reads only the kind of value it is asked for, and calls one
// visitor method: a method that dispatched on whatever comes next would be
// instantiated in full for every derived visitor (tens of KB of module).
impl<'de> de::Deserializer<'de> for &mut Reader<'de> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.skip_whitespace();
        match self.peek() {
            Some(b'{') => self.deserialize_map(visitor),
            Some(b'[') => self.deserialize_seq(visitor),
            Some(b'"') => self.deserialize_string(visitor),
            Some(b't' | b'f') => self.deserialize_bool(visitor),
            Some(b'n') => {
                self.expect_literal(b"null")?;
                visitor.visit_unit()
            }
            _ => self.deserialize_f64(visitor),
        }
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        if !self.at(b'{') {
            return Err(self.mismatch(&Kind("an object")));
        }
        self.enter(Segment::Key(String::new()))?;
        let value = visitor.visit_map(Entries {
            reader: &mut *self,
            first: true,
        });
        self.path.pop();
        value
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_map(visitor)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        if !self.at(b'[') {
            return Err(self.mismatch(&Kind("an array")));
        }
        self.enter(Segment::Index(0))?;
        let value = visitor.visit_seq(Entries {
            reader: &mut *self,
            first: true,
        });
        self.path.pop();
        value
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        if !self.at(b'"') {
            return Err(self.mismatch(&Kind("a string")));
        }
        self.pos += 1;
        let s = self.string()?;
        visitor.visit_string(s)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_string(visitor)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_string(visitor)
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        if self.at(b't') {
            self.expect_literal(b"true")?;
            visitor.visit_bool(true)
        } else if self.at(b'f') {
            self.expect_literal(b"false")?;
            visitor.visit_bool(false)
        } else {
            Err(self.mismatch(&Kind("a boolean")))
        }
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.skip_whitespace();
        if !matches!(self.peek(), Some(b'-' | b'0'..=b'9')) {
            return Err(self.mismatch(&Kind("a number")));
        }
        match self.number()? {
            Number::Unsigned(n) => visitor.visit_u64(n),
            Number::Signed(n) => visitor.visit_i64(n),
            Number::Float(v) => visitor.visit_f64(v),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        if self.at(b'n') {
            self.expect_literal(b"null")?;
            visitor.visit_none()
        } else {
            visitor.visit_some(self)
        }
    }

    serde::forward_to_deserialize_any! {
        i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 char
        bytes byte_buf unit unit_struct newtype_struct tuple
        tuple_struct enum ignored_any
    }
}

/// The members of an object or the elements of an array being read.
struct Entries<'r, 'de> {
    reader: &'r mut Reader<'de>,
    first: bool,
}

impl Entries<'_, '_> {
    /// The next member's key and its `:` (not generic over the visitor, so
    /// it is in the module once), or None at the closing `}`.
    fn key(&mut self) -> Result<Option<String>, Error> {
        if !self.next(b'}', "an object")? {
            return Ok(None);
        }
        let r = &mut *self.reader;
        // Until the key is read, an error is about the object.
        if let Some(Segment::Key(current)) = r.path.last_mut() {
            current.clear();
        }
        match r.peek() {
            Some(b'"') => r.pos += 1,
            None => return Err(r.fail("EOF while parsing an object")),
            Some(_) => return Err(r.fail("key must be a string")),
        }
        let key = r.string()?;
        if let Some(Segment::Key(current)) = r.path.last_mut() {
            current.clone_from(&key);
        }
        r.skip_whitespace();
        match r.peek() {
            Some(b':') => r.pos += 1,
            None => return Err(r.fail("EOF while parsing an object")),
            Some(_) => return Err(r.fail("expected `:`")),
        }
        Ok(Some(key))
    }

    /// Moves past the separator before the next member; false at the
    /// closing bracket (consumed).
    fn next(&mut self, close: u8, what: &str) -> Result<bool, Error> {
        let r = &mut *self.reader;
        r.skip_whitespace();
        match r.peek() {
            Some(b) if b == close => {
                r.pos += 1;
                return Ok(false);
            }
            None => return Err(r.fail(&format!("EOF while parsing {what}"))),
            Some(b',') if !self.first => {
                r.pos += 1;
                r.skip_whitespace();
            }
            Some(_) if self.first => {}
            Some(_) => return Err(r.fail(&format!("expected `,` or `{}`", char::from(close)))),
        }
        self.first = false;
        Ok(true)
    }
}

impl<'de> de::MapAccess<'de> for Entries<'_, 'de> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        let Some(key) = self.key()? else {
            return Ok(None);
        };
        let key: de::value::StringDeserializer<Error> = key.into_deserializer();
        let r = &mut *self.reader;
        seed.deserialize(key).map(Some).map_err(|e| r.locate(e))
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let r = &mut *self.reader;
        seed.deserialize(&mut *r).map_err(|e| r.locate(e))
    }
}

impl<'de> de::SeqAccess<'de> for Entries<'_, 'de> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        let first = self.first;
        if !self.next(b']', "a list")? {
            return Ok(None);
        }
        let r = &mut *self.reader;
        if let (false, Some(Segment::Index(i))) = (first, r.path.last_mut()) {
            *i += 1;
        }
        seed.deserialize(&mut *r).map(Some).map_err(|e| r.locate(e))
    }
}
