//! Target `body_scan`: `body::scan` on JSON request bodies generated as
//! values (random nesting, key order, escapes, duplicates injected in the
//! text, long strings, deep nesting, tops that are no object) and on the
//! same bodies with bytes flipped, inserted, cut or repeated; and
//! `body::rewrite_plan` carried out on a buffer with Envoy's semantics.
//!
//! The oracle is serde_json on the whole body in memory, not the module:
//! `from_slice::<Value>` for the verdict (a valid object or not), and a map
//! visitor of its own over the top-level object that counts every copy of a
//! key (`Value` keeps only the last) for the fields.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use super::*;
use canary_selector::body::{self, BodyBuffer, BodySource, Field, Unreadable};
use serde::de::{DeserializeSeed, Deserializer, MapAccess, Visitor};

const FIELDS: &[&str] = &["model", "user", "safety_identifier", "prompt_cache_key"];
const KEYS: &[&str] = &[
    "model",
    "user",
    "safety_identifier",
    "prompt_cache_key",
    "messages",
    "role",
    "content",
    "metadata",
    "temperature",
    "Model",
    "model ",
    "",
    "stream",
    "é",
];
/// Reads of at most this many bytes: every result must be the same.
const CAPS: &[usize] = &[1, 7, 64, 16 << 10, usize::MAX];

#[derive(Debug)]
struct BodyCase {
    body: Vec<u8>,
    max_value: usize,
    /// The new model name and the rewrite's slice.
    new_model: String,
    slice: usize,
}

// ---------------------------------------------------------------------------
// Generators.
// ---------------------------------------------------------------------------

fn gen_string(rng: &mut Rng, max_value: usize) -> String {
    match rng.below(10) {
        0 => evil_string(rng),
        1 => "é😀日".repeat(rng.range(0, 4)),
        // Around the bound on wanted values, and long enough to span slices.
        2 => "m".repeat(rng.range(max_value.saturating_sub(2), max_value + 2)),
        3 if rng.one_in(4) => "c".repeat(rng.range(10_000, 70_000)),
        _ => token(rng, 0, 12),
    }
}

fn gen_value(rng: &mut Rng, depth: usize, max_value: usize) -> Value {
    let leaf = depth > 4 || rng.one_in(2);
    match rng.below(if leaf { 6 } else { 8 }) {
        0 => Value::Null,
        1 => Value::Bool(rng.one_in(2)),
        2 => json!(rng.u64() as i64 >> rng.below(64)),
        3 => json!(rng.range(0, 1_000_000) as f64 / 1000.0 - 500.0),
        4 | 5 => Value::String(gen_string(rng, max_value)),
        6 => Value::Array(
            (0..rng.range(0, 4))
                .map(|_| gen_value(rng, depth + 1, max_value))
                .collect(),
        ),
        _ => Value::Object(gen_object(rng, depth + 1, max_value)),
    }
}

fn gen_object(rng: &mut Rng, depth: usize, max_value: usize) -> Map<String, Value> {
    let mut m = Map::new();
    for _ in 0..rng.range(0, 6) {
        let key = if rng.one_in(40) {
            // Around the bound on keys (6 * max_value + 1 bytes).
            "k".repeat(rng.range(6 * max_value, 6 * max_value + 3))
        } else if rng.one_in(8) {
            evil_string(rng).chars().take(20).collect()
        } else {
            rng.pick(KEYS).to_string()
        };
        let value = if FIELDS.contains(&key.as_str()) && rng.one_in(2) {
            Value::String(gen_string(rng, max_value))
        } else {
            gen_value(rng, depth, max_value)
        };
        m.insert(key, value);
    }
    m
}

/// `text` with `from` replaced by `to` at some of its places.
fn replace_some(rng: &mut Rng, text: &str, from: &str, to: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find(from) {
        out.push_str(&rest[..at]);
        out.push_str(if rng.one_in(2) { to } else { from });
        rest = &rest[at + from.len()..];
    }
    out.push_str(rest);
    out
}

fn gen_body(rng: &mut Rng, max_value: usize) -> Vec<u8> {
    let top = if rng.one_in(12) {
        gen_value(rng, 0, max_value)
    } else {
        Value::Object(gen_object(rng, 0, max_value))
    };
    let mut text = if rng.one_in(3) {
        serde_json::to_string_pretty(&top).unwrap()
    } else {
        top.to_string()
    };
    // Duplicates, written in at the top level's start or end.
    if rng.one_in(4) && text.starts_with('{') {
        let field = rng.pick(FIELDS);
        let value = Value::String(gen_string(rng, max_value));
        let member = format!("\"{field}\":{value}");
        if rng.one_in(2) || text.len() <= 2 {
            let sep = if text.len() > 2 { "," } else { "" };
            text = format!("{{{member}{sep}{}", &text[1..]);
        } else {
            text = format!("{},{member}}}", &text[..text.len() - 1]);
        }
    }
    // Escapes where serde_json writes characters: in keys and values.
    if rng.one_in(3) {
        text = replace_some(rng, &text, "é", "\\u00e9");
        text = replace_some(rng, &text, "😀", "\\ud83d\\ude00");
        text = replace_some(rng, &text, "\"model\"", "\"mod\\u0065l\"");
        text = replace_some(rng, &text, "\"user\"", "\"\\u0075ser\"");
        text = replace_some(rng, &text, "/", "\\/");
    }
    if rng.one_in(20) {
        text = replace_some(rng, &text, "é", "\\ud800");
    }
    if rng.one_in(20) {
        text = replace_some(rng, &text, "500", "5e400");
    }
    // Deep nesting in a value, around the bound.
    if rng.one_in(10) && text.starts_with('{') {
        let depth = rng.range(body::MAX_DEPTH - 2, body::MAX_DEPTH + 2);
        let nested = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let sep = if text.len() > 2 { "," } else { "" };
        text = format!("{{\"deep\":{nested}{sep}{}", &text[1..]);
    }
    // Whitespace around the object.
    if rng.one_in(4) {
        text = format!(" \n{text}\t\r\n ");
    }
    text.into_bytes()
}

fn gen_body_case(rng: &mut Rng) -> BodyCase {
    let max_value = rng.pick(&[8, 64, body::DEFAULT_MAX_VALUE]);
    let mut body = gen_body(rng, max_value);
    if rng.one_in(3) {
        mutate_json_bytes(rng, &mut body);
    }
    let new_model = if rng.one_in(2) {
        evil_string(rng)
    } else {
        format!("model-v{}", rng.below(9))
    };
    BodyCase {
        body,
        max_value,
        new_model,
        slice: rng.pick(&[1, 3, 8, 64, 1000, body::SLICE]),
    }
}

// ---------------------------------------------------------------------------
// The oracle.
// ---------------------------------------------------------------------------

/// The top-level object's wanted keys: how many copies, and the first.
struct Top;
type Copies = Vec<(usize, Option<Value>)>;

impl<'de> DeserializeSeed<'de> for Top {
    type Value = Copies;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Copies, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Top {
    type Value = Copies;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Copies, A::Error> {
        let mut copies: Copies = vec![(0, None); FIELDS.len()];
        while let Some(key) = map.next_key::<String>()? {
            let value: Value = map.next_value()?;
            if let Some(i) = FIELDS.iter().position(|f| *f == key) {
                copies[i].0 += 1;
                copies[i].1.get_or_insert(value);
            }
        }
        Ok(copies)
    }
}

/// What the fields must be, if the body is a valid object by
/// `from_slice::<Value>`; `Err` with Value's error otherwise.
fn oracle(body: &[u8], max_value: usize) -> Result<Vec<Field>, String> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(_)) => {}
        Ok(other) => return Err(format!("not an object: {}", other.to_string().len())),
        Err(e) => return Err(e.to_string()),
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let copies = Top.deserialize(&mut de).map_err(|e| e.to_string())?;
    Ok(copies
        .into_iter()
        .map(|(n, first)| match (n, first) {
            (0, _) => Field::Absent,
            (1, Some(Value::String(s))) if s.len() > max_value => Field::TooLong,
            (1, Some(Value::String(s))) => Field::Present {
                value: s,
                span: 0..0,
            },
            (1, _) => Field::NotString,
            _ => Field::Duplicate,
        })
        .collect())
}

/// Value refuses it, though RFC 8259's grammar allows it (the documented
/// differences: numbers out of f64's range, escaped lone surrogates).
fn grammar_only(value_error: &str) -> bool {
    ["out of range", "surrogate", "hex escape"]
        .iter()
        .any(|s| value_error.contains(s))
}

// ---------------------------------------------------------------------------
// Sources: memory, and Envoy's buffer.
// ---------------------------------------------------------------------------

struct Mem<'a> {
    body: &'a [u8],
    cap: usize,
    /// Reads from this offset on fail.
    fail_at: usize,
}

impl BodySource for Mem<'_> {
    fn slice(&mut self, start: usize, max: usize) -> Option<Vec<u8>> {
        assert!(max <= body::SLICE);
        if start >= self.fail_at {
            return None;
        }
        let end = self.body.len().min(start + max.min(self.cap));
        self.body.get(start..end).map(<[u8]>::to_vec)
    }
}

/// `Buffer::copyFrom` and `get_http_request_body`, as Envoy does them.
struct Envoy {
    buffer: Vec<u8>,
    largest_read: usize,
}

impl BodySource for Envoy {
    fn slice(&mut self, start: usize, max: usize) -> Option<Vec<u8>> {
        self.largest_read = self.largest_read.max(max);
        let end = self.buffer.len().min(start.saturating_add(max));
        self.buffer.get(start..end).map(<[u8]>::to_vec)
    }
}

impl BodyBuffer for Envoy {
    fn set(&mut self, start: usize, length: usize, data: &[u8]) -> bool {
        if start == 0 && length <= self.buffer.len() {
            let rest = self.buffer.split_off(length);
            self.buffer = [data, &rest].concat();
            true
        } else if start != 0 && start >= self.buffer.len() {
            self.buffer.extend_from_slice(data);
            true
        } else {
            false
        }
    }
}

fn scan(body: &[u8], cap: usize, max_value: usize) -> Result<body::Scanned, Unreadable> {
    let fail_at = usize::MAX;
    body::scan(
        &mut Mem { body, cap, fail_at },
        body.len(),
        FIELDS,
        max_value,
    )
}

/// Carries out the rewrite of `span` to `new` and checks the bytes.
fn check_rewrite(body: &[u8], span: std::ops::Range<usize>, new: &str, slice: usize) -> Vec<u8> {
    let r = body::replacement(body.len(), &span, new);
    assert_eq!(serde_json::from_slice::<String>(&r.token).unwrap(), new);
    let ops = body::rewrite_plan(body.len(), &span, &r.token, slice);
    let mut envoy = Envoy {
        buffer: body.to_vec(),
        largest_read: 0,
    };
    assert_eq!(body::apply(&mut envoy, body.len(), &ops), Ok(()), "{ops:?}");
    let want = [&body[..span.start], &r.token[..], &body[span.end..]].concat();
    assert!(
        envoy.buffer == want,
        "rewrite of {span:?} went wrong: {ops:?}"
    );
    assert_eq!(r.new_len, want.len());
    assert!(envoy.largest_read <= slice.max(1));
    envoy.buffer
}

/// How often each outcome came up (printed after the run, to show the
/// generator reaches them all).
static SEEN: [AtomicU64; 16] = [const { AtomicU64::new(0) }; 16];
const SEEN_NAMES: [&str; 16] = [
    "read",
    "empty_body",
    "not_json",
    "not_object",
    "truncated",
    "not_utf8",
    "too_deep",
    "too_long_key",
    "read_failed (host)",
    "present",
    "duplicate",
    "not_string",
    "too_long",
    "grammar_only",
    "rewritten",
    "-",
];

fn seen(i: usize) {
    SEEN[i].fetch_add(1, Ordering::Relaxed);
}

#[test]
fn body_scan() {
    run("body_scan", gen_body_case, |case| {
        let body = &case.body[..];
        let got = scan(body, usize::MAX, case.max_value);
        match &got {
            Ok(found) => {
                seen(0);
                for f in &found.fields {
                    match f {
                        Field::Absent => {}
                        Field::Present { .. } => seen(9),
                        Field::Duplicate => seen(10),
                        Field::NotString => seen(11),
                        Field::TooLong => seen(12),
                    }
                }
            }
            Err(why) => seen(1 + Unreadable::ALL.iter().position(|r| r == why).unwrap()),
        }
        for &cap in CAPS {
            assert_eq!(scan(body, cap, case.max_value), got, "reads of {cap} bytes");
        }
        // A host read that fails part way: the same result if the scan
        // ended before it, else read_failed.
        let fail_at = case.slice.min(body.len()) * 5 / 7;
        let mut failing = Mem {
            body,
            cap: 7,
            fail_at,
        };
        let partial = body::scan(&mut failing, body.len(), FIELDS, case.max_value);
        assert!(
            partial == got || partial == Err(Unreadable::ReadFailed),
            "{partial:?}"
        );
        if partial == Err(Unreadable::ReadFailed) {
            seen(8);
        }
        let mut tried = 2;
        // A key over the bound: with a bound that fits it, the body reads
        // as the oracle says.
        let (got, max_value) = match got {
            Err(Unreadable::TooLongKey) => {
                let max = body.len();
                let again = scan(body, usize::MAX, max);
                assert_ne!(again, Err(Unreadable::TooLongKey));
                (again, max)
            }
            got => (got, case.max_value),
        };
        let want = oracle(body, max_value);
        match (&got, &want) {
            (Ok(found), Ok(want)) => {
                assert_eq!(found.fields.len(), want.len());
                for (field, want) in found.fields.iter().zip(want) {
                    match (field, want) {
                        (Field::Present { value, span }, Field::Present { value: v, .. }) => {
                            assert_eq!(value, v);
                            let token = &body[span.clone()];
                            assert_eq!(token.first(), Some(&b'"'));
                            assert_eq!(&serde_json::from_slice::<String>(token).unwrap(), value);
                        }
                        (field, want) => assert_eq!(field, want),
                    }
                }
            }
            (Err(why), Err(_)) => {
                if std::str::from_utf8(body).is_ok() {
                    let surrogate = want.as_ref().is_err_and(|e| grammar_only(e));
                    assert!(*why != Unreadable::NotUtf8 || surrogate, "{why} on UTF-8");
                }
                let blank = body.iter().all(|b| b" \t\r\n".contains(b));
                assert_eq!(blank, *why == Unreadable::EmptyBody, "{why}");
            }
            (Ok(_), Err(e)) if grammar_only(e) => {
                seen(13);
                serde_json::from_slice::<serde::de::IgnoredAny>(body).unwrap();
            }
            _ => panic!("scan: {got:?}\noracle: {want:?}"),
        }
        // The rewrite of the model, then the rewritten body read again.
        if let Ok(found) = &got {
            if let Field::Present { span, .. } = found.field(0) {
                let new = check_rewrite(body, span.clone(), &case.new_model, case.slice);
                tried += 1;
                seen(14);
                if case.new_model.len() <= max_value {
                    // The same fields, those after the model moved by the
                    // change in length.
                    let again = scan(&new, usize::MAX, max_value).unwrap();
                    assert_eq!(again.value(0), Some(case.new_model.as_str()));
                    for (i, (after, before)) in
                        again.fields.iter().zip(&found.fields).enumerate().skip(1)
                    {
                        match (after, before) {
                            (
                                Field::Present { value: a, span: sa },
                                Field::Present { value: b, span: sb },
                            ) => {
                                assert_eq!(a, b);
                                let shift = |at: usize| {
                                    if at > span.start {
                                        at + new.len() - body.len()
                                    } else {
                                        at
                                    }
                                };
                                assert_eq!(*sa, shift(sb.start)..shift(sb.end), "field {i}");
                            }
                            _ => assert_eq!(after, before, "field {i}"),
                        }
                    }
                }
            }
        }
        // Any span of any body.
        if !body.is_empty() {
            let start = case.body.len() * (case.slice % 7) / 7;
            let end = start + (body.len() - start) / 3;
            check_rewrite(body, start..end, &case.new_model, case.slice);
            tried += 1;
        }
        tried + CAPS.len() as u64
    });
    let counts: Vec<String> = SEEN_NAMES
        .iter()
        .zip(&SEEN)
        .filter(|(name, _)| **name != "-")
        .map(|(name, n)| format!("{name} {}", n.load(Ordering::Relaxed)))
        .collect();
    eprintln!("fuzz body_scan outcomes: {}", counts.join(", "));
}
