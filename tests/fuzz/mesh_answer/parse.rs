//! The oracle's JSON (RFC 8259), parsed here rather than by serde_json, the
//! reader of the code under test.

/// A JSON value; a string that is no Unicode text (a lone surrogate) is
/// `None`.
#[derive(Debug, Clone)]
pub(super) enum P {
    Null,
    Bool,
    Num(f64),
    Str(Option<String>),
    Arr(Vec<P>),
    Obj(Vec<(Option<String>, P)>),
}

/// The parser stops past this depth (its own stack).
const PARSE_DEPTH: usize = 400;
/// Up to this depth every reader must read the answer; deeper, it may
/// refuse it (serde_json's documented limit is 128).
pub(super) const DEPTH_ANY_READER_TAKES: usize = 100;

#[derive(Debug, PartialEq)]
pub(super) enum Unparsed {
    Invalid,
    TooDeep,
}

struct Parser<'a> {
    b: &'a [u8],
    i: usize,
    depth: usize,
    deepest: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while matches!(self.b.get(self.i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        let hit = self.b.get(self.i) == Some(&c);
        self.i += usize::from(hit);
        hit
    }

    fn value(&mut self) -> Result<P, Unparsed> {
        self.ws();
        let Some(&c) = self.b.get(self.i) else {
            return Err(Unparsed::Invalid);
        };
        match c {
            b'{' | b'[' => {
                self.depth += 1;
                self.deepest = self.deepest.max(self.depth);
                if self.depth > PARSE_DEPTH {
                    return Err(Unparsed::TooDeep);
                }
                self.i += 1;
                let v = if c == b'{' {
                    self.object()?
                } else {
                    self.array()?
                };
                self.depth -= 1;
                Ok(v)
            }
            b'"' => {
                self.i += 1;
                Ok(P::Str(self.string()?))
            }
            b't' => self.literal(b"true", P::Bool),
            b'f' => self.literal(b"false", P::Bool),
            b'n' => self.literal(b"null", P::Null),
            b'-' | b'0'..=b'9' => self.number(),
            _ => Err(Unparsed::Invalid),
        }
    }

    fn literal(&mut self, word: &[u8], v: P) -> Result<P, Unparsed> {
        if self.b[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(v)
        } else {
            Err(Unparsed::Invalid)
        }
    }

    fn object(&mut self) -> Result<P, Unparsed> {
        let mut members = Vec::new();
        self.ws();
        if self.eat(b'}') {
            return Ok(P::Obj(members));
        }
        loop {
            self.ws();
            if !self.eat(b'"') {
                return Err(Unparsed::Invalid);
            }
            let key = self.string()?;
            self.ws();
            if !self.eat(b':') {
                return Err(Unparsed::Invalid);
            }
            members.push((key, self.value()?));
            self.ws();
            if self.eat(b'}') {
                return Ok(P::Obj(members));
            }
            if !self.eat(b',') {
                return Err(Unparsed::Invalid);
            }
        }
    }

    fn array(&mut self) -> Result<P, Unparsed> {
        let mut items = Vec::new();
        self.ws();
        if self.eat(b']') {
            return Ok(P::Arr(items));
        }
        loop {
            items.push(self.value()?);
            self.ws();
            if self.eat(b']') {
                return Ok(P::Arr(items));
            }
            if !self.eat(b',') {
                return Err(Unparsed::Invalid);
            }
        }
    }

    fn hex4(&mut self) -> Result<u32, Unparsed> {
        let digits = self.b.get(self.i..self.i + 4).ok_or(Unparsed::Invalid)?;
        let text = std::str::from_utf8(digits).map_err(|_| Unparsed::Invalid)?;
        if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Unparsed::Invalid);
        }
        self.i += 4;
        Ok(u32::from_str_radix(text, 16).unwrap())
    }

    /// After the opening quote.
    fn string(&mut self) -> Result<Option<String>, Unparsed> {
        let mut out = String::new();
        let mut text = true;
        loop {
            let Some(&c) = self.b.get(self.i) else {
                return Err(Unparsed::Invalid);
            };
            match c {
                b'"' => {
                    self.i += 1;
                    return Ok(text.then_some(out));
                }
                b'\\' => {
                    let e = *self.b.get(self.i + 1).ok_or(Unparsed::Invalid)?;
                    self.i += 2;
                    match e {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let u = self.hex4()?;
                            let c = if (0xd800..0xdc00).contains(&u) {
                                // A high surrogate: a low one must follow.
                                if self.b.get(self.i..self.i + 2) == Some(b"\\u") {
                                    let back = self.i;
                                    self.i += 2;
                                    let lo = self.hex4()?;
                                    if (0xdc00..0xe000).contains(&lo) {
                                        char::from_u32(
                                            0x10000 + ((u - 0xd800) << 10) + (lo - 0xdc00),
                                        )
                                    } else {
                                        self.i = back;
                                        None
                                    }
                                } else {
                                    None
                                }
                            } else {
                                char::from_u32(u)
                            };
                            match c {
                                Some(c) => out.push(c),
                                None => text = false,
                            }
                        }
                        _ => return Err(Unparsed::Invalid),
                    }
                }
                0x00..=0x1f => return Err(Unparsed::Invalid),
                _ => {
                    // The body is UTF-8: copy the whole character.
                    let len = match c {
                        0x00..=0x7f => 1,
                        0xc0..=0xdf => 2,
                        0xe0..=0xef => 3,
                        _ => 4,
                    };
                    out.push_str(std::str::from_utf8(&self.b[self.i..self.i + len]).unwrap());
                    self.i += len;
                }
            }
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while matches!(self.b.get(self.i), Some(b'0'..=b'9')) {
            self.i += 1;
        }
        self.i - start
    }

    fn number(&mut self) -> Result<P, Unparsed> {
        let start = self.i;
        self.eat(b'-');
        if !self.eat(b'0') && self.digits() == 0 {
            return Err(Unparsed::Invalid);
        }
        if self.eat(b'.') && self.digits() == 0 {
            return Err(Unparsed::Invalid);
        }
        if self.eat(b'e') || self.eat(b'E') {
            let _ = self.eat(b'+') || self.eat(b'-');
            if self.digits() == 0 {
                return Err(Unparsed::Invalid);
            }
        }
        let text = std::str::from_utf8(&self.b[start..self.i]).unwrap();
        Ok(P::Num(text.parse::<f64>().unwrap()))
    }
}

/// The body as JSON, and how deep it nests.
pub(super) fn parse_json(body: &[u8]) -> Result<(P, usize), Unparsed> {
    if std::str::from_utf8(body).is_err() {
        return Err(Unparsed::Invalid);
    }
    let mut p = Parser {
        b: body,
        i: 0,
        depth: 0,
        deepest: 0,
    };
    let v = p.value()?;
    p.ws();
    if p.i != body.len() {
        return Err(Unparsed::Invalid);
    }
    Ok((v, p.deepest))
}
