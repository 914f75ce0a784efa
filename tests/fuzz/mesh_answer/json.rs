//! JSON, as the generator builds and writes it: a tree that keeps numbers
//! as written, members in their order with any copies of a key, and text
//! written as is (a lone surrogate's escape, nesting too deep for a tree).

use super::generate::odd_text;
use super::shuffle;
use crate::runner::Rng;

/// A key written as is (its quotes included): for lone surrogates in keys.
pub(super) const RAW_KEY: char = '\u{f8ff}';

#[derive(Debug, Clone)]
pub(super) enum J {
    Null,
    Bool(bool),
    /// As written.
    Num(String),
    Str(String),
    Arr(Vec<J>),
    Obj(Vec<(String, J)>),
    /// Written as is.
    Raw(String),
}

pub(super) fn s(text: &str) -> J {
    J::Str(text.to_string())
}

pub(super) const EXTRA_KEYS: &[&str] = &[
    "warnings",
    "infos",
    "stats",
    "Status",
    "DATA",
    "values",
    "histogram",
    "errorType",
    "x",
    "",
    "é",
];

pub(super) fn small_value(rng: &mut Rng, depth: usize) -> J {
    match rng.below(if depth > 3 { 5 } else { 7 }) {
        0 => J::Null,
        1 => J::Bool(rng.one_in(2)),
        2 => J::Num(
            rng.pick(&["1", "-0", "1e400", "3.5E-2", "12345678901234567890123"])
                .into(),
        ),
        3 => J::Str(odd_text(rng)),
        4 => s("warning: a long query"),
        5 => J::Arr(
            (0..rng.range(0, 3))
                .map(|_| small_value(rng, depth + 1))
                .collect(),
        ),
        _ => J::Obj(
            (0..rng.range(0, 3))
                .map(|_| {
                    (
                        rng.pick(EXTRA_KEYS).to_string(),
                        small_value(rng, depth + 1),
                    )
                })
                .collect(),
        ),
    }
}

/// An object of `members`, in another order now and then, with members the
/// API may add.
pub(super) fn object(rng: &mut Rng, mut members: Vec<(&str, J)>) -> J {
    if rng.one_in(3) {
        shuffle(rng, &mut members);
    }
    let mut out: Vec<(String, J)> = members
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    if rng.one_in(6) {
        for _ in 0..rng.range(1, 3) {
            let at = rng.below(out.len() + 1);
            out.insert(at, (rng.pick(EXTRA_KEYS).to_string(), small_value(rng, 0)));
        }
    }
    J::Obj(out)
}

pub(super) struct Style {
    pub(super) pretty: bool,
    /// Escape some characters that need none.
    pub(super) escape: bool,
}

fn write_str(rng: &mut Rng, text: &str, style: &Style, out: &mut String) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' if rng.one_in(2) => out.push_str("\\n"),
            '\t' if rng.one_in(2) => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            '/' if style.escape && rng.one_in(2) => out.push_str("\\/"),
            c if style.escape && rng.one_in(if c.is_ascii() { 12 } else { 2 }) => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    if rng.one_in(2) {
                        out.push_str(&format!("\\u{u:04X}"));
                    } else {
                        out.push_str(&format!("\\u{u:04x}"));
                    }
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn newline(style: &Style, indent: usize, out: &mut String) {
    if style.pretty {
        out.push('\n');
        for _ in 0..indent {
            out.push_str("  ");
        }
    }
}

pub(super) fn write_json(rng: &mut Rng, j: &J, style: &Style, indent: usize, out: &mut String) {
    match j {
        J::Null => out.push_str("null"),
        J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        J::Num(n) | J::Raw(n) => out.push_str(n),
        J::Str(text) => write_str(rng, text, style, out),
        J::Arr(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                newline(style, indent + 1, out);
                write_json(rng, item, style, indent + 1, out);
            }
            if !items.is_empty() {
                newline(style, indent, out);
            }
            out.push(']');
        }
        J::Obj(members) => {
            out.push('{');
            for (i, (k, v)) in members.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                newline(style, indent + 1, out);
                match k.strip_prefix(RAW_KEY) {
                    Some(raw) => out.push_str(raw),
                    None => write_str(rng, k, style, out),
                }
                out.push_str(if style.pretty { ": " } else { ":" });
                write_json(rng, v, style, indent + 1, out);
            }
            if !members.is_empty() {
                newline(style, indent, out);
            }
            out.push('}');
        }
    }
}
