//! Unit tests of the body scan and the rewrite plan.

use super::scan::token_bound;
use super::*;

/// A body in memory that gives at most `cap` bytes per read, and counts
/// reads.
struct Mem<'a> {
    body: &'a [u8],
    cap: usize,
    reads: usize,
    /// Reads at or past this offset fail.
    fail_at: Option<usize>,
}

impl<'a> Mem<'a> {
    fn new(body: &'a [u8], cap: usize) -> Self {
        Mem {
            body,
            cap,
            reads: 0,
            fail_at: None,
        }
    }
}

impl BodySource for Mem<'_> {
    fn slice(&mut self, start: usize, max: usize) -> Option<Vec<u8>> {
        self.reads += 1;
        assert!(max <= SLICE, "asked for {max} bytes, more than a slice");
        if self.fail_at.is_some_and(|at| start >= at) {
            return None;
        }
        let end = self.body.len().min(start + max.min(self.cap));
        self.body.get(start..end).map(<[u8]>::to_vec)
    }
}

const FIELDS: &[&str] = &["model", "user", "safety_identifier"];

/// The scan of `body` with every slice size from 1 to 70, some larger ones,
/// and sources that give fewer bytes than asked: all must agree.
fn scan_all(body: &[u8], fields: &[&str], max_value: usize) -> Result<Scanned, Unreadable> {
    let reference = scan(
        &mut Mem::new(body, usize::MAX),
        body.len(),
        fields,
        max_value,
    );
    let sizes = (1..=70).chain([127, 128, 1000, 4096, 16384, SLICE]);
    for slice in sizes {
        let got = scan::scan(
            &mut Mem::new(body, usize::MAX),
            body.len(),
            fields,
            max_value,
            slice,
        );
        assert_eq!(got, reference, "slice {slice} on {:?}", show(body));
        let short = scan(&mut Mem::new(body, slice), body.len(), fields, max_value);
        assert_eq!(short, reference, "reads of {slice} on {:?}", show(body));
    }
    if let Ok(found) = &reference {
        for field in &found.fields {
            if let Field::Present { value, span } = field {
                let token = &body[span.clone()];
                assert!(token.starts_with(b"\"") && token.ends_with(b"\""));
                assert_eq!(&serde_json::from_slice::<String>(token).unwrap(), value);
            }
        }
    }
    reference
}

fn show(body: &[u8]) -> String {
    let s = String::from_utf8_lossy(body);
    s.chars().take(200).collect()
}

fn fields(body: &str) -> Vec<Field> {
    match scan_all(body.as_bytes(), FIELDS, DEFAULT_MAX_VALUE) {
        Ok(s) => s.fields,
        Err(e) => panic!("{body:?}: {e}"),
    }
}

fn reason(body: &[u8]) -> Unreadable {
    match scan_all(body, FIELDS, DEFAULT_MAX_VALUE) {
        Ok(s) => panic!("{:?} was read: {s:?}", show(body)),
        Err(e) => e,
    }
}

fn present(body: &str, value: &str) -> Field {
    let token = serde_json::to_string(value).unwrap();
    let start = body.find(&token).unwrap();
    Field::Present {
        value: value.to_owned(),
        span: start..start + token.len(),
    }
}

#[test]
fn a_chat_body() {
    let body =
        r#"{"model":"llama-3-8b","messages":[{"role":"user","content":"hi"}],"user":"alice"}"#;
    assert_eq!(
        fields(body),
        [
            present(body, "llama-3-8b"),
            present(body, "alice"),
            Field::Absent
        ]
    );
    let found = scan_all(body.as_bytes(), FIELDS, 64).unwrap();
    assert_eq!(found.value(0), Some("llama-3-8b"));
    assert_eq!(found.value(1), Some("alice"));
    assert_eq!(found.value(2), None);
    assert_eq!(found.field(9), &Field::Absent);
}

#[test]
fn every_reason_has_its_label() {
    let labels: Vec<&str> = Unreadable::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(
        labels,
        [
            "empty_body",
            "not_json",
            "not_object",
            "truncated",
            "not_utf8",
            "too_deep",
            "too_long_key",
            "read_failed"
        ]
    );
    assert_eq!(Unreadable::TooDeep.to_string(), "too_deep");
}

#[test]
fn empty_bodies() {
    assert_eq!(
        scan(&mut Mem::new(b"", 1), 0, FIELDS, 1024),
        Err(Unreadable::EmptyBody)
    );
    for body in [&b" "[..], b"\n", b" \t\r\n  "] {
        assert_eq!(reason(body), Unreadable::EmptyBody);
    }
    // A byte that is not whitespace is not an empty body.
    for body in [&b"\0"[..], b" \0 ", b"\x0b", b"\x0c{}", b"\xc2\xa0{}"] {
        assert_eq!(reason(body), Unreadable::NotJson, "{body:?}");
    }
    // A top-level literal cut short.
    for body in [&b"n"[..], b" nu", b"nul"] {
        assert_eq!(reason(body), Unreadable::Truncated, "{body:?}");
    }
}

#[test]
fn not_json() {
    for body in [
        &b"x"[..],
        b"{model}",
        b"{'model':'a'}",
        b"{\"model\":}",
        b"{\"model\" \"a\"}",
        b"{\"a\":1,}",
        b"{,}",
        b"{\"a\":01}",
        b"{\"a\":1.}",
        b"{\"a\":tru}",
        b"{\"a\":nul}",
        b"{\"a\":[1,]}",
        b"{\"a\":\"\x01\"}",
        b"{\"a\":\"\\x\"}",
        b"{\"mode\\l\":\"a\"}",
        b"{\"a\":\"\\u12G4\"}",
        b"{} x",
        b"{}{}",
        b"{\"model\":\"a\"}\"",
        b"\xef\xbb\xbf{}",
        b"{\"a\":1}\x00",
        b"]",
        b"/* */{}",
    ] {
        assert_eq!(reason(body), Unreadable::NotJson, "{:?}", show(body));
    }
}

#[test]
fn not_an_object() {
    for body in [
        &b"[]"[..],
        b"[{\"model\":\"a\"}]",
        b"\"model\"",
        b"1",
        b"-1",
        b"null",
        b"true",
        b"false",
        b"  [1,2",
        b"\n\"abc",
    ] {
        assert_eq!(reason(body), Unreadable::NotObject, "{:?}", show(body));
    }
}

#[test]
fn truncated() {
    let body =
        br#"{"model":"llama","messages":[{"role":"user","content":"h\u00e9"}],"user":"alice"}"#;
    for cut in 1..body.len() {
        let head = &body[..cut];
        // Cut after whitespace-free JSON ends: always inside the object.
        assert_eq!(
            scan(&mut Mem::new(head, 7), head.len(), FIELDS, 1024),
            Err(Unreadable::Truncated),
            "cut at {cut}"
        );
    }
    // `len` shorter than what the source holds: only `len` bytes are read.
    assert_eq!(
        scan(&mut Mem::new(body, 64), body.len() - 1, FIELDS, 1024),
        Err(Unreadable::Truncated)
    );
}

#[test]
fn not_utf8_anywhere() {
    for body in [
        &b"{\"a\":\"\xff\"}"[..],
        b"{\"messages\":[{\"content\":\"caf\xc3\"}]}",
        b"{\"a\xe9\":1}",
        b"{\"model\":\"\xed\xa0\x80\"}",
        b"{\"a\":\"\xf4\x90\x80\x80\"}",
        b"{\"a\":\"\xc0\xaf\"}",
        b"{\"model\":\"a\"}\xff",
        b"\xff",
        b"{\"a\":1,\xe2\x82}",
        // An escaped lone surrogate in a wanted field: no UTF-8 string.
        b"{\"model\":\"\\ud800\"}",
        b"{\"user\":\"a\\udc00b\"}",
        b"{\"model\":\"\\ud83d\\u0041\"}",
    ] {
        assert_eq!(reason(body), Unreadable::NotUtf8, "{:?}", show(body));
    }
    // Cut inside a character at the body's end.
    let body = "{\"a\":1}é".as_bytes();
    assert_eq!(reason(&body[..body.len() - 1]), Unreadable::NotUtf8);
}

#[test]
fn a_syntax_error_before_bad_bytes_is_reported_first() {
    // Whatever the slices, the first fault in the text wins.
    assert_eq!(reason(b"{\"a\" 1, \"b\":\"\xff\"}"), Unreadable::NotJson);
    // serde_json reads on after its error to close the object: what it
    // reads then is no fault of the body's.
    assert_eq!(reason(b"{\"a\":tx\xff}"), Unreadable::NotJson);
    assert_eq!(reason(b"{\"a\":[1 x\xff]}"), Unreadable::NotJson);
    assert_eq!(reason(b"{\"a\":{\"b\" x\xff"), Unreadable::NotJson);
    assert_eq!(reason(b"{\"a\":{\"b\" \xff"), Unreadable::NotUtf8);
    let mut mem = Mem::new(b"{\"a\":tx   ", 1);
    mem.fail_at = Some(8);
    assert_eq!(scan(&mut mem, 11, FIELDS, 1024), Err(Unreadable::NotJson));
    assert_eq!(reason(b"{\"a\":\"\xff\" 1}"), Unreadable::NotUtf8);
}

#[test]
fn lone_surrogates_nobody_reads_are_accepted() {
    // As Python's json and Go's encoding/json read them (serde_json's
    // `Value` refuses them: the one documented difference, with `1e400`).
    let body = r#"{"x":"\ud800","model":"m","y":1e400,"z":[-1e999]}"#;
    assert_eq!(fields(body)[0], present(body, "m"));
}

#[test]
fn depth() {
    let nested = |depth: usize| {
        // The top-level object is depth 1.
        let inner = depth - 1;
        format!(
            r#"{{"model":"m","a":{}1{}}}"#,
            "[".repeat(inner),
            "]".repeat(inner)
        )
    };
    assert_eq!(
        fields(&nested(MAX_DEPTH))[0],
        present(&nested(MAX_DEPTH), "m")
    );
    assert_eq!(
        reason(nested(MAX_DEPTH + 1).as_bytes()),
        Unreadable::TooDeep
    );
    assert_eq!(reason(nested(1000).as_bytes()), Unreadable::TooDeep);
    // Objects count as arrays do, and so does a wanted field's value.
    let objects = format!(
        r#"{{"model":{}1{}}}"#,
        r#"{"a":"#.repeat(MAX_DEPTH),
        "}".repeat(MAX_DEPTH)
    );
    assert_eq!(reason(objects.as_bytes()), Unreadable::TooDeep);
    // 1,000 brackets and nothing else: too deep, and no stack overflow.
    let brackets = format!("{{\"a\":{}", "[".repeat(1000));
    assert_eq!(reason(brackets.as_bytes()), Unreadable::TooDeep);
    assert_eq!(
        reason("[".repeat(100_000).as_bytes()),
        Unreadable::NotObject
    );
}

#[test]
fn the_depth_bound_is_serde_jsons() {
    // MAX_DEPTH is what `from_slice::<Value>` reads and no more, so the
    // verdicts agree on depth.
    let nested = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    assert!(serde_json::from_str::<serde_json::Value>(&nested(MAX_DEPTH)).is_ok());
    assert!(serde_json::from_str::<serde_json::Value>(&nested(MAX_DEPTH + 1)).is_err());
}

#[test]
fn too_long_keys() {
    let bound = token_bound(8);
    let key = |n: usize| format!(r#"{{"{}":1,"model":"m"}}"#, "k".repeat(n));
    // The bound counts the key's bytes after its opening quote.
    let at = key(bound - 1);
    assert_eq!(
        scan_all(at.as_bytes(), FIELDS, 8).unwrap().fields[0],
        present(&at, "m")
    );
    assert_eq!(
        scan_all(key(bound).as_bytes(), FIELDS, 8),
        Err(Unreadable::TooLongKey)
    );
    // Nested keys too: serde_json reads every key whole.
    let nested = format!(r#"{{"model":"m","a":{{"{}":1}}}}"#, "k".repeat(5000));
    assert_eq!(
        scan_all(nested.as_bytes(), FIELDS, 8),
        Err(Unreadable::TooLongKey)
    );
    assert!(scan_all(nested.as_bytes(), FIELDS, 1024).is_ok());
}

#[test]
fn failed_reads() {
    let body = br#"{"model":"m","messages":[]}"#;
    let mut mem = Mem::new(body, 4);
    mem.fail_at = Some(10);
    assert_eq!(
        scan(&mut mem, body.len(), FIELDS, 1024),
        Err(Unreadable::ReadFailed)
    );
    // A body shorter than `len`.
    assert_eq!(
        scan(&mut Mem::new(body, 64), body.len() + 5, FIELDS, 1024),
        Err(Unreadable::ReadFailed)
    );
    // A failed read stops the scan at once: no read after the failed one.
    let mut mem = Mem::new(body, 1);
    mem.fail_at = Some(3);
    assert_eq!(
        scan(&mut mem, body.len(), FIELDS, 1024),
        Err(Unreadable::ReadFailed)
    );
    assert_eq!(mem.reads, 4);
}

#[test]
fn keys_are_compared_unescaped() {
    for key in [
        r#""mod\u0065l""#,
        r#""\u006d\u006f\u0064\u0065\u006c""#,
        r#""\u006D\u006F\u0064\u0065\u006C""#,
    ] {
        let body = format!(r#"{{{key}:"m"}}"#);
        assert_eq!(fields(&body)[0], present(&body, "m"), "{key}");
    }
    // Not the same name: case, whitespace, a solidus escape elsewhere.
    for key in [r#""Model""#, r#"" model""#, r#""model ""#, r#""mo\/del""#] {
        let body = format!(r#"{{{key}:"m"}}"#);
        assert_eq!(fields(&body)[0], Field::Absent, "{key}");
    }
    // An escaped key and a plain one are the same key twice.
    assert_eq!(
        fields(r#"{"model":"a","mod\u0065l":"b"}"#)[0],
        Field::Duplicate
    );
    // Wanted names with escapes and non-ASCII, compared decoded.
    let body = r#"{"us\u00e9r":"a","n\"q":"b"}"#;
    let got = scan_all(body.as_bytes(), &["usér", "n\"q"], 64).unwrap();
    assert_eq!(got.value(0), Some("a"));
    assert_eq!(got.value(1), Some("b"));
}

#[test]
fn values_with_escapes_and_unicode() {
    let body = r#"{"model":"l\u00e9\"q\"\\\/\n\t\b\f\r😀\ud83d\ude00日本","user":"é"}"#;
    let got = fields(body);
    let Field::Present { value, span } = &got[0] else {
        panic!("{got:?}")
    };
    assert_eq!(value, "lé\"q\"\\/\n\t\u{8}\u{c}\r😀😀日本");
    assert_eq!(span.start, 9);
    assert_eq!(&body[span.end..span.end + 8], r#","user":"#);
    assert_eq!(got[1], present(body, "é"));
}

#[test]
fn whitespace_everywhere() {
    let body = " \n\t{\r\n \"model\" \n\t:\r \"m\" \n,\t\"user\"  :  \"u\"\n,\"a\" : [ 1 , { \"b\" : null } ] \n}\r\n\t ";
    assert_eq!(
        fields(body),
        [present(body, "m"), present(body, "u"), Field::Absent]
    );
    assert_eq!(fields("{}"), [Field::Absent, Field::Absent, Field::Absent]);
    assert_eq!(
        fields(" { } "),
        [Field::Absent, Field::Absent, Field::Absent]
    );
}

#[test]
fn slice_boundaries_inside_tokens_escapes_and_characters() {
    // scan_all cuts at every offset of these bodies (slices of 1 to 70 bytes
    // from 0, so a cut falls inside every token, escape and character).
    for body in [
        r#"{"model":"ab\u00e9\"c😀d","user":"\ud83d\ude00"}"#,
        "{\"model\":\"é日😀\",\"user\":\"€\"}",
        "{\"x\":\"😀😀😀😀😀😀\",\"model\":\"m😀\",\"user\":\"😀\"}",
        r#"{"mo\u0064el":"x\\y","user":"\n\n\n"}"#,
    ] {
        let got = fields(body);
        assert!(matches!(got[0], Field::Present { .. }), "{body}: {got:?}");
        assert!(matches!(got[1], Field::Present { .. }), "{body}: {got:?}");
    }
}

#[test]
fn duplicates() {
    for body in [
        r#"{"model":"a","model":"a"}"#,
        r#"{"model":"a","x":1,"model":"b"}"#,
        r#"{"x":1,"model":"a","model":null}"#,
        r#"{"model":null,"model":"a"}"#,
        r#"{"model":"a","model":"b","model":"c"}"#,
        r#"{"model":"a","messages":[],"model":{"deep":[1,2]}}"#,
    ] {
        assert_eq!(fields(body)[0], Field::Duplicate, "{body}");
    }
    // A too long first copy, then a short one: still a duplicate.
    let long = format!(r#"{{"model":"{}","model":"a"}}"#, "x".repeat(2000));
    assert_eq!(fields(&long)[0], Field::Duplicate);
    // Duplicates of fields nobody wants change nothing.
    let body = r#"{"x":1,"x":2,"model":"m"}"#;
    assert_eq!(fields(body)[0], present(body, "m"));
    // A name listed twice gets the same state in both places.
    let body = r#"{"user":"u"}"#;
    let got = scan_all(body.as_bytes(), &["user", "model", "user"], 64).unwrap();
    assert_eq!(got.fields[0], got.fields[2]);
    assert_eq!(got.value(2), Some("u"));
}

#[test]
fn nested_decoys_are_not_the_field() {
    let body = r#"{"metadata":{"model":"x","user":"y"},"messages":[{"model":"z"},"model",["model"]],"model":"real"}"#;
    assert_eq!(
        fields(body),
        [present(body, "real"), Field::Absent, Field::Absent]
    );
    let body = r#"{"metadata":{"model":"x"},"a":{"b":{"model":"y"}}}"#;
    assert_eq!(fields(body)[0], Field::Absent);
    // A key-looking value is not a key.
    let body = r#"{"a":"model","b":["model",":","x"]}"#;
    assert_eq!(fields(body)[0], Field::Absent);
}

#[test]
fn not_strings() {
    for value in [
        "null",
        "1",
        "-0.5e3",
        "true",
        "false",
        "[]",
        r#"["m"]"#,
        r#"{"model":"m"}"#,
    ] {
        let body = format!(r#"{{"model":{value},"user":"u"}}"#);
        let got = fields(&body);
        assert_eq!(got[0], Field::NotString, "{value}");
        assert_eq!(got[1], present(&body, "u"));
    }
}

#[test]
fn long_values() {
    let max = 16;
    let body = |value: &str| format!(r#"{{"model":"{value}","user":"u"}}"#);
    let at = body(&"m".repeat(max));
    let got = scan_all(at.as_bytes(), FIELDS, max).unwrap();
    assert_eq!(got.value(0).map(str::len), Some(max));
    // One byte over, decoded: too long; the other fields are still read.
    for value in [
        "m".repeat(max + 1),
        "é".repeat(max / 2 + 1),
        "\\u00e9".repeat(9),
    ] {
        let past = body(&value);
        let got = scan_all(past.as_bytes(), FIELDS, max).unwrap();
        assert_eq!(got.fields[0], Field::TooLong, "{value}");
        assert_eq!(got.value(1), Some("u"));
    }
    // Escapes count decoded: 16 escaped characters fit 16 bytes.
    let escaped = body(&"\\u0041".repeat(max));
    let got = scan_all(escaped.as_bytes(), FIELDS, max).unwrap();
    assert_eq!(got.value(0), Some("A".repeat(max).as_str()));
    // A huge value, and a huge string nobody reads: skipped, not held.
    let huge = format!(
        r#"{{"messages":[{{"content":"{}"}}],"model":"{}","user":"u"}}"#,
        "c".repeat(3 << 20),
        "m".repeat(2 << 20)
    );
    let mut mem = Mem::new(huge.as_bytes(), usize::MAX);
    let got = scan(&mut mem, huge.len(), FIELDS, 1024).unwrap();
    assert_eq!(got.fields[0], Field::TooLong);
    assert_eq!(got.value(1), Some("u"));
    assert_eq!(mem.reads, huge.len().div_ceil(SLICE));
}

#[test]
fn whole_body_verdicts_agree_with_serde_json() {
    // Spot checks of what the fuzz target checks at random.
    for body in [
        &br#"{"a":[1,2,{"b":[true,false,null,"s",-0.0,1E+2]}],"model":"m"}"#[..],
        br#"{"a":"\u0000"}"#,
        b"{\"a\":\"\x7f\"}",
        b"{\"\":\"\"}",
        b"{\"a\":[[[]]],\"b\":{}}",
    ] {
        let want = serde_json::from_slice::<serde_json::Value>(body).is_ok_and(|v| v.is_object());
        let got = scan_all(body, FIELDS, 1024);
        assert_eq!(got.is_ok(), want, "{:?}: {got:?}", show(body));
    }
}

// ---------------------------------------------------------------------------
// The rewrite.
// ---------------------------------------------------------------------------

/// Envoy's request buffer: `get_http_request_body` and `set_buffer` exactly
/// as `Buffer::copyFrom` behaves, counting host calls.
struct Envoy {
    buffer: Vec<u8>,
    calls: usize,
    /// The most bytes read into the VM at once.
    largest_read: usize,
}

impl BodySource for Envoy {
    fn slice(&mut self, start: usize, max: usize) -> Option<Vec<u8>> {
        self.calls += 1;
        self.largest_read = self.largest_read.max(max);
        let end = self.buffer.len().min(start.saturating_add(max));
        self.buffer.get(start..end).map(<[u8]>::to_vec)
    }
}

impl BodyBuffer for Envoy {
    fn set(&mut self, start: usize, length: usize, data: &[u8]) -> bool {
        self.calls += 1;
        if start == 0 {
            if length > self.buffer.len() {
                return false;
            }
            self.buffer.drain(..length);
            self.buffer.splice(0..0, data.iter().copied());
            true
        } else if start >= self.buffer.len() {
            self.buffer.extend_from_slice(data);
            true
        } else {
            false
        }
    }
}

/// Rewrites `body`'s span to `new` through the plan; checks the bytes, and
/// gives the host calls made.
fn rewrite(body: &[u8], span: std::ops::Range<usize>, new: &str, slice: usize) -> usize {
    let r = replacement(body.len(), &span, new);
    let ops = rewrite_plan(body.len(), &span, &r.token, slice);
    let mut envoy = Envoy {
        buffer: body.to_vec(),
        calls: 0,
        largest_read: 0,
    };
    assert_eq!(apply(&mut envoy, body.len(), &ops), Ok(()));
    let mut want = body[..span.start].to_vec();
    want.extend_from_slice(&r.token);
    want.extend_from_slice(&body[span.end..]);
    assert_eq!(envoy.buffer, want, "span {span:?}, slice {slice}: {ops:?}");
    assert_eq!(envoy.buffer.len(), r.new_len);
    assert!(envoy.largest_read <= slice, "{ops:?}");
    envoy.calls
}

#[test]
fn replacement_tokens_are_escaped() {
    let r = replacement(20, &(5..10), "a\"b\\c\n\u{1}é");
    assert_eq!(r.token, r#""a\"b\\c\n\u0001é""#.as_bytes());
    assert_eq!(r.new_len, 20 - 5 + r.token.len());
    assert_eq!(replacement(2, &(0..2), "").token, b"\"\"");
}

#[test]
fn rewrite_the_model_first_last_and_in_the_middle() {
    for (size, slice) in [
        (64usize, 8usize),
        (1000, 64),
        (200_000, SLICE),
        (4096, 4096),
    ] {
        for place in ["first", "middle", "last"] {
            let filler = "x".repeat(size);
            let body = match place {
                "first" => format!(r#"{{"model":"llama-3-8b","messages":"{filler}"}}"#),
                "middle" => format!(
                    r#"{{"a":"{}","model":"llama-3-8b","b":"{}"}}"#,
                    &filler[..size / 2],
                    &filler[size / 2..]
                ),
                _ => format!(r#"{{"messages":"{filler}","model":"llama-3-8b"}}"#),
            };
            // (Every slice size only for the small ones: debug builds.)
            let got = match body.len() {
                0..5000 => scan_all(body.as_bytes(), FIELDS, 1024),
                _ => scan(
                    &mut Mem::new(body.as_bytes(), 4096),
                    body.len(),
                    FIELDS,
                    1024,
                ),
            };
            let Ok(found) = got else { panic!("{got:?}") };
            let Field::Present { span, .. } = found.fields[0].clone() else {
                panic!("{found:?}")
            };
            for new in ["m", "llama-3-8b", "llama-3-70b-instruct-canary", "q\"\\é😀"] {
                rewrite(body.as_bytes(), span.clone(), new, slice);
            }
        }
    }
}

#[test]
fn rewrite_at_every_slice_boundary() {
    // Tokens placed at, before and after every multiple of the slice, and
    // bodies whose length is a multiple of it.
    let slice = 8;
    for before in 0..40 {
        for after in 0..20 {
            let mut body = vec![b'a'; before];
            body.extend_from_slice(b"\"tok\"");
            body.extend(std::iter::repeat_n(b'z', after));
            let span = before..before + 5;
            for new in ["", "t", "tok", "a-longer-token", "0123456789abcdef"] {
                rewrite(&body, span.clone(), new, slice);
            }
        }
    }
}

#[test]
fn rewrite_costs() {
    // Token within the first slice: one read, one edit.
    let body = vec![b'x'; 3 << 20];
    assert_eq!(rewrite(&body, 10..20, "m", SLICE), 2);
    assert_eq!(rewrite(&body, 0..20, "m", SLICE), 1);
    // Past it: a read and two edits per slice moved (the bytes before the
    // old token, then the new token and the bytes after it), and one edit.
    let mib = 1 << 20;
    let moves = |before: usize, after: usize| before.div_ceil(SLICE) + (3 + after).div_ceil(SLICE);
    let calls = rewrite(&body[..mib], mib / 2..mib / 2 + 10, "m", SLICE);
    assert_eq!(calls, 3 * moves(mib / 2, mib / 2 - 10) + 1);
    assert_eq!(calls, 3 * 16 + 1);
    let calls = rewrite(&body[..mib], mib - 20..mib - 10, "m", SLICE);
    assert_eq!(calls, 3 * moves(mib - 20, 10) + 1);
    assert_eq!(calls, 3 * 17 + 1);
    // Ops only for spans within the body.
    assert!(rewrite_plan(10, &(5..11), b"x", 4).is_empty());
    assert!(matches!(
        rewrite_plan(10, &(5..10), b"x", 4).first(),
        Some(Op::MoveFrontToBack(4))
    ));
}

#[test]
fn a_refused_edit_stops_the_rewrite() {
    struct Refusing(Envoy);
    impl BodySource for Refusing {
        fn slice(&mut self, start: usize, max: usize) -> Option<Vec<u8>> {
            self.0.slice(start, max)
        }
    }
    impl BodyBuffer for Refusing {
        fn set(&mut self, _: usize, _: usize, _: &[u8]) -> bool {
            false
        }
    }
    let mut envoy = Refusing(Envoy {
        buffer: vec![b'x'; 100],
        calls: 0,
        largest_read: 0,
    });
    let ops = rewrite_plan(100, &(50..60), b"\"m\"", 8);
    assert_eq!(apply(&mut envoy, 100, &ops), Err(0));
    // A read short of what the op asks for (the buffer is not what the
    // plan was made for).
    let mut envoy = Envoy {
        buffer: vec![b'x'; 5],
        calls: 0,
        largest_read: 0,
    };
    assert_eq!(apply(&mut envoy, 100, &ops), Err(0));
}
