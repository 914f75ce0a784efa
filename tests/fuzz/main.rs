//! Fuzz targets for the config parser and the request decision, run natively
//! on stable Rust: a seeded, structure-aware generator (no nightly, no
//! coverage instrumentation) with independent oracles for every invariant.
//!
//! - `config_bytes`: `Rollout::from_json` on arbitrary and byte-mutated input.
//! - `config_mutated`: valid configs with structural mutations (keys dropped,
//!   values swapped for other types, names with CR/LF or odd bytes, lists
//!   pushed past their bounds); whatever is accepted must be within bounds.
//! - `decide`: `filter::on_request_headers` and `on_response_headers` against
//!   arbitrary valid rollouts (rules, schedules, guards), with arbitrary header
//!   bytes, cookies, user ids, clocks and guard states, checked against an
//!   oracle written from the README (rules, then the bucket formula).
//! - `guard_window`: the guard's sliding window (record, merge, totals, the
//!   shared-data encoding) against a model, and `Window::decode` on
//!   arbitrary bytes (another VM's shared data).
//! - `rfc3339`: schedule start times (the `time` crate, as the config reads
//!   them), against an independent calendar.
//! - `rollout_scope`: configs that list `rollouts` over a small alphabet of
//!   host labels (so patterns overlap and collide), and requests with odd
//!   authorities (ports, letter case, dots, IPv6, bytes that are no text),
//!   checked against a linear oracle of the precedence: exact host, longest
//!   wildcard, `*`, then the longest path prefix; duplicates are rejected.
//! - `body_scan`: `body::scan` on JSON request bodies generated as values and
//!   byte-mutated, checked against serde_json on the whole body (the verdict,
//!   the fields with every copy of a key counted, the spans), the same for
//!   every read size; and `body::rewrite_plan` on a buffer with Envoy's
//!   semantics.
//! - `mesh_answer`: `mesh::read_answer` on Prometheus' query answers
//!   generated from a model and broken (wrong types, shapes, duplicates,
//!   nesting, bytes flipped, cut at every point; statuses and body sizes),
//!   against a JSON parser and a reading of the API of its own; and
//!   `mesh::apply` of what it reads to generated configs, against the
//!   documented verdict (which versions trip, which series count as ignored
//!   and why).
//!
//! One file per target (`mesh_answer/` a folder, its `mod.rs` says what is
//! where); `runner.rs` holds the seeded runner (shared with the CLI's target
//! `cli_scope`, inside the binary: src/bin/canary-selector/fuzz.rs), this
//! one the generators, the spec of a valid config and the invariants of any
//! accepted config, which the targets share.
//!
//! `cargo test` runs a short deterministic pass (fixed seed). The long pass is
//! `make fuzz FUZZ_SECONDS=...` (release mode, one target after another,
//! a fresh seed each run). Environment:
//!
//! - `FUZZ_SECONDS`: run each target for this long instead of a fixed count;
//! - `FUZZ_CASES`: cases per target in the count-based pass (default 400);
//! - `FUZZ_SEED`: the run's seed (printed; default fixed);
//! - `FUZZ_CASE`: run only this case (to reproduce a reported failure).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::fmt::Debug;

use canary_selector::config::{self, Rollout, Source};
use canary_selector::decision::{decide, Decision, Entropy, Live, Reason, Request, WyRand};
use canary_selector::filter::{self, AwaitingTrailers, Host, Judging, Outcome, ResponseHost};
use canary_selector::guard::{self, Counts, Failure, Window};
use canary_selector::hash::murmur3_32;
use canary_selector::matcher::MAX_COOKIE_HEADER_SCAN;
use canary_selector::MAX_USER_ID_LEN;
use serde_json::{json, Map, Value};

// ---------------------------------------------------------------------------
// Runner: tests/fuzz/runner.rs, shared with the CLI's target.
// ---------------------------------------------------------------------------

mod runner;
use runner::{mutate_json_bytes, run, Rng};

// ---------------------------------------------------------------------------
// Generators of names and values.
// ---------------------------------------------------------------------------

const TCHAR_EXTRA: &[u8] = b"!#$%&'*+-.^_`|~";

fn token(rng: &mut Rng, lo: usize, hi: usize) -> String {
    let len = rng.range(lo, hi);
    (0..len)
        .map(|_| {
            if rng.one_in(6) {
                char::from(rng.pick(TCHAR_EXTRA))
            } else {
                char::from(rng.pick(b"abcdefghijklmnopqrstuvwxyz0123456789"))
            }
        })
        .collect()
}

/// A string of visible ASCII (what a version name or rule name may hold).
fn visible(rng: &mut Rng, lo: usize, hi: usize) -> String {
    let len = rng.range(lo, hi);
    (0..len)
        .map(|_| char::from(rng.range(0x21, 0x7e) as u8))
        .collect()
}

/// A string meant to break things: control bytes, CR/LF, quotes, non-ASCII,
/// lengths around the bounds.
fn evil_string(rng: &mut Rng) -> String {
    const PIECES: &[&str] = &[
        "\r\n", "\n", "\r", "\0", " ", "\t", "\"", "\\", ";", "=", ":", ",", "é", "\u{2028}",
        "\u{fffd}", "😀", "x-a", "model-v1", "${x}", "%0d%0a", "{", "}",
    ];
    let len = match rng.below(6) {
        0 => 0,
        1 => rng.pick(&[63, 64, 65, 127, 128, 129, 255, 256, 257]),
        2 => rng.pick(&[511, 512, 513, 1023, 1024, 1025, 4000]),
        _ => rng.range(1, 12),
    };
    let mut s = String::new();
    while s.len() < len {
        if rng.one_in(3) {
            let piece: &str = rng.pick(PIECES);
            s.push_str(piece);
        } else {
            s.push(char::from(rng.range(0x20, 0x7e) as u8));
        }
    }
    s
}

/// Bytes for a header value: mostly plausible, sometimes anything at all,
/// sometimes past the documented bounds.
fn value_bytes(rng: &mut Rng) -> Vec<u8> {
    match rng.below(8) {
        0 => Vec::new(),
        1 => (0..rng.range(1, 40)).map(|_| rng.u64() as u8).collect(),
        2 => {
            let n = rng.pick(&[255, 256, 257, 300, 4096]);
            (0..n).map(|_| b'a' + rng.below(3) as u8).collect()
        }
        3 => format!(" \t{}\t ", token(rng, 0, 8)).into_bytes(),
        4 => b"\xff\xfe\xe9caf\xc3".to_vec(),
        _ => token(rng, 1, 16).into_bytes(),
    }
}

// ---------------------------------------------------------------------------
// Valid configs, as a spec the oracle can read and as the JSON users write.
// ---------------------------------------------------------------------------

/// Regexes with an independent description of what each one matches (the
/// whole value, as Istio's RE2 full match), and values near the edge.
const REGEXES: &[(&str, &[&str])] = &[
    (
        "qa-[a-z]+",
        &["qa-alice", "qa-", "qa-Bob", "xqa-a", "qa-b\n"],
    ),
    ("[0-9]{1,3}", &["7", "123", "1234", "", "12a"]),
    ("(a|b)*", &["", "abba", "abc", "b"]),
    (".*", &["", "anything", "two\nlines", "é"]),
    (
        "/v1/models/[^/]+:predict",
        &[
            "/v1/models/iris:predict",
            "/v1/models/a/b:predict",
            "/v1/models/:predict",
        ],
    ),
    (
        "(a+)+",
        &["a", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa!", "aaaa", ""],
    ),
    ("café|naïve", &["café", "naïve", "cafe", "CAFÉ"]),
    ("[^\\x00-\\x7f]+", &["é", "😀é", "aé", ""]),
];

fn regex_holds(pattern: usize, s: &str) -> bool {
    let all = |f: fn(char) -> bool| s.chars().all(f);
    match pattern {
        0 => s
            .strip_prefix("qa-")
            .is_some_and(|r| !r.is_empty() && r.chars().all(|c| c.is_ascii_lowercase())),
        1 => (1..=3).contains(&s.len()) && all(|c| c.is_ascii_digit()),
        2 => all(|c| c == 'a' || c == 'b'),
        3 => !s.contains('\n'),
        4 => s
            .strip_prefix("/v1/models/")
            .and_then(|r| r.strip_suffix(":predict"))
            .is_some_and(|m| !m.is_empty() && !m.contains('/')),
        5 => !s.is_empty() && all(|c| c == 'a'),
        6 => s == "café" || s == "naïve",
        7 => !s.is_empty() && all(|c| !c.is_ascii()),
        _ => unreachable!(),
    }
}

#[derive(Debug, Clone)]
enum Match {
    Exact(String),
    Prefix(String),
    Regex(usize),
}

impl Match {
    fn holds(&self, value: &[u8]) -> bool {
        match self {
            Match::Exact(want) => value == want.as_bytes(),
            Match::Prefix(p) => value.starts_with(p.as_bytes()),
            Match::Regex(i) => {
                value.len() <= canary_selector::matcher::MAX_REGEX_INPUT
                    && std::str::from_utf8(value).is_ok_and(|s| regex_holds(*i, s))
            }
        }
    }
    /// A value that this match may or may not accept.
    fn candidate(&self, rng: &mut Rng) -> Vec<u8> {
        match self {
            Match::Exact(v) | Match::Prefix(v) => {
                let mut out = v.clone().into_bytes();
                match rng.below(4) {
                    0 => out.extend(value_bytes(rng)),
                    1 => {
                        out.pop();
                    }
                    _ => {}
                }
                out
            }
            Match::Regex(i) => rng.pick(REGEXES[*i].1).as_bytes().to_vec(),
        }
    }
    fn json(&self) -> Value {
        match self {
            Match::Exact(v) => json!({ "exact": v }),
            Match::Prefix(v) => json!({ "prefix": v }),
            Match::Regex(i) => json!({ "regex": REGEXES[*i].0 }),
        }
    }
}

#[derive(Debug, Clone)]
struct RuleSpec {
    name: String,
    /// (name as written, lowercased name, match).
    headers: Vec<(String, String, Match)>,
    cookies: Vec<(String, Match)>,
    version: usize,
}

/// A scheduled ramp: (start as written, start in Unix ms, steps of
/// (afterSeconds, weights)).
type ScheduleSpec = (&'static str, i64, Vec<(u32, Vec<f64>)>);

/// Schedule starts with their Unix ms, computed independently (Python's
/// datetime).
const STARTS: &[(&str, i64)] = &[
    ("2026-12-01T09:00:00Z", 1_796_115_600_000),
    ("2026-11-23T16:00:00+01:00", 1_795_446_000_000),
    ("2024-02-29T23:59:59.500Z", 1_709_251_199_500),
    ("1999-12-31T23:00:00-05:00", 946_699_200_000),
];

#[derive(Debug, Clone)]
struct Spec {
    routing_header: Option<String>,
    response_header: Option<String>,
    response_reason_header: Option<String>,
    /// The guard's JSON and its slow-response bound in ms, if any.
    /// The guard's JSON, its slow bound, and the gRPC codes it counts (bit c).
    guard: Option<(Value, Option<u32>, u32)>,
    schedule: Option<ScheduleSpec>,
    versions: Vec<(String, f64)>,
    id_headers: Vec<String>,
    id_cookies: Vec<String>,
    salt: Option<String>,
    /// (name, maxAgeSeconds, secure).
    anonymous_cookie: Option<(String, Option<u32>, bool)>,
    rules: Vec<RuleSpec>,
}

const HEADER_POOL: &[&str] = &[
    "x-user-id",
    "x-session-id",
    "x-team",
    "x-canary-tester",
    "x-tenant",
    "user-agent",
    "x-a",
    "x-b",
    ":path",
    ":authority",
    ":method",
    "x-forwarded-for",
];
const COOKIE_POOL: &[&str] = &[
    "user_id",
    "uid",
    "beta",
    "pin",
    "canary_id",
    "sid",
    "a",
    "b",
];
const ROUTING_POOL: &[&str] = &[
    "x-canary-version",
    "x-route",
    "x-model-subset",
    "X-Canary-Version",
];

fn random_case(rng: &mut Rng, name: &str) -> String {
    name.chars()
        .map(|c| {
            if rng.one_in(4) {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect()
}

fn weights(rng: &mut Rng, n: usize, whole: bool) -> Vec<f64> {
    let mut w = vec![0.0; n];
    match if whole { rng.below(2) } else { rng.below(4) } {
        0 => w[rng.below(n)] = 100.0,
        1 => {
            // Integers: cut 0..=100 at random points.
            let mut cuts: Vec<usize> = (1..n).map(|_| rng.range(0, 100)).collect();
            cuts.push(0);
            cuts.push(100);
            cuts.sort_unstable();
            for i in 0..n {
                w[i] = (cuts[i + 1] - cuts[i]) as f64;
            }
        }
        _ => {
            // Fractions (three decimals), the remainder on the last version.
            let raw: Vec<f64> = (0..n).map(|_| (rng.below(1000) as f64).powi(2)).collect();
            let total: f64 = raw.iter().sum::<f64>().max(1.0);
            let mut used = 0.0;
            for i in 0..n - 1 {
                w[i] = (raw[i] / total * 100_000.0).floor() / 1000.0;
                used += w[i];
            }
            w[n - 1] = ((100.0 - used) * 1000.0).round() / 1000.0;
        }
    }
    w
}

fn gen_spec(rng: &mut Rng) -> Spec {
    let n = if rng.one_in(8) {
        rng.range(1, config::MAX_VERSIONS)
    } else {
        rng.range(1, 3)
    };
    let mut names: Vec<String> = Vec::new();
    while names.len() < n {
        let name = if rng.one_in(2) {
            format!("model-v{}", names.len() + 1)
        } else {
            visible(rng, 1, config::MAX_VERSION_NAME_LEN)
        };
        // Unique, also as Prometheus sees them (non-alphanumerics become `_`),
        // and without the stat tags' framing.
        let metric = |n: &str| n.replace(|c: char| !c.is_ascii_alphanumeric(), "_");
        if !names.iter().any(|seen| metric(seen) == metric(&name))
            && !name.contains(|c| config::STAT_TAG_FRAMING.contains(c))
        {
            names.push(name);
        }
    }
    let scheduled = n >= 2 && rng.one_in(4);
    let mut w = weights(rng, n, scheduled);
    if !scheduled && n >= 2 && rng.one_in(4) {
        // Edges: weight-0 versions at the end, and sums a hair under 100.
        if rng.one_in(2) {
            w[0] += w[n - 1];
            w[n - 1] = 0.0;
        }
        let max = (0..n).max_by(|&a, &b| w[a].total_cmp(&w[b])).unwrap();
        w[max] -= 5e-7;
    }
    let versions: Vec<(String, f64)> = names.into_iter().zip(w).collect();
    let schedule = scheduled.then(|| {
        let (text, ms) = rng.pick(STARTS);
        // Each step moves whole percents to later-listed versions only.
        let mut w: Vec<f64> = versions.iter().map(|v| v.1).collect();
        let mut after = 0u32;
        let steps = (0..rng.range(1, 4))
            .map(|i| {
                if i > 0 || rng.one_in(2) {
                    after += rng.range(1, 100_000) as u32;
                }
                let from = rng.below(n - 1);
                let to = rng.range(from + 1, n - 1);
                let moved = rng.range(0, w[from] as usize) as f64;
                w[from] -= moved;
                w[to] += moved;
                (after, w.clone())
            })
            .collect();
        (text, ms, steps)
    });
    let guard = (n >= 2 && rng.one_in(4)).then(|| {
        let slow = rng.one_in(2).then(|| rng.range(1, 5000) as u32);
        let mut g =
            json!({ "windowSeconds": rng.range(1, 3600), "minRequests": rng.range(1, 100) });
        if rng.one_in(2) || slow.is_none() {
            g["maxErrorRate"] = json!(rng.below(101) as f64 / 100.0);
        }
        if rng.one_in(2) {
            g["maxErrorRateAboveStable"] = json!(rng.below(101) as f64 / 100.0);
        }
        if let Some(ms) = slow {
            g["slowResponseMs"] = json!(ms);
            g["maxSlowRate"] = json!(rng.below(101) as f64 / 100.0);
        }
        // The README's default: UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED,
        // INTERNAL, UNAVAILABLE, DATA_LOSS.
        let mut codes = 1 << 2 | 1 << 4 | 1 << 12 | 1 << 13 | 1 << 14 | 1 << 15;
        if rng.one_in(2) {
            let listed: Vec<usize> = (1..GRPC_NAMES.len()).filter(|_| rng.one_in(4)).collect();
            codes = listed.iter().fold(0, |m, &c| m | 1 << c);
            g["grpcErrorCodes"] = listed
                .iter()
                .map(|&c| {
                    if rng.one_in(2) {
                        json!(GRPC_NAMES[c])
                    } else {
                        json!(c)
                    }
                })
                .collect();
        }
        (g, slow, codes)
    });

    let routing_header = rng.one_in(2).then(|| rng.pick(ROUTING_POOL).to_string());
    let routing = routing_header
        .as_deref()
        .unwrap_or(config::DEFAULT_ROUTING_HEADER)
        .to_ascii_lowercase();
    let response_header = rng.one_in(2).then(|| {
        rng.pick(&["x-canary-version", "x-served-version"])
            .to_string()
    });
    let response_reason_header = rng.one_in(3).then(|| "x-canary-reason".to_string());
    let usable_headers: Vec<&str> = HEADER_POOL
        .iter()
        .copied()
        .filter(|h| !h.starts_with(':') && *h != routing)
        .collect();

    let mut id_headers: Vec<String> = Vec::new();
    for _ in 0..rng.range(0, 3) {
        let h = rng.pick(&usable_headers).to_string();
        if !id_headers.contains(&h) {
            id_headers.push(h);
        }
    }
    let mut id_cookies: Vec<String> = Vec::new();
    for _ in 0..rng.range(0, 3) {
        let c = if rng.one_in(4) {
            token(rng, 1, 10)
        } else {
            rng.pick(COOKIE_POOL).to_string()
        };
        if !id_cookies.contains(&c) {
            id_cookies.push(c);
        }
    }
    let anonymous_cookie = rng.one_in(3).then(|| {
        let name = rng.pick(COOKIE_POOL).to_string();
        let max_age = rng.one_in(2).then(|| rng.range(1, 100_000) as u32);
        (name, max_age, rng.one_in(2))
    });
    let salt = match rng.below(4) {
        0 => Some(String::new()),
        1 => Some(visible(rng, 1, 40)),
        2 => Some("é-".repeat(rng.range(1, 60))),
        _ => None,
    };

    let mut rules = Vec::new();
    for r in 0..rng.range(0, 6) {
        let mut headers: Vec<(String, String, Match)> = Vec::new();
        let mut cookies: Vec<(String, Match)> = Vec::new();
        for _ in 0..rng.range(1, 3) {
            let m = match rng.below(4) {
                0 => Match::Exact(token(rng, 0, 6)),
                1 => Match::Prefix(token(rng, 0, 3)),
                2 => Match::Regex(rng.below(REGEXES.len())),
                _ => Match::Exact(rng.pick(&["true", "1", "qa-alice", "café"]).to_string()),
            };
            if rng.one_in(3) {
                let c = rng.pick(COOKIE_POOL).to_string();
                if !cookies.iter().any(|(k, _)| *k == c) {
                    cookies.push((c, m));
                }
            } else {
                let h = rng.pick(HEADER_POOL);
                if h != routing && !headers.iter().any(|(_, k, _)| k == h) {
                    headers.push((random_case(rng, h), h.to_string(), m));
                }
            }
        }
        if headers.is_empty() && cookies.is_empty() {
            cookies.push(("beta".into(), Match::Exact("1".into())));
        }
        rules.push(RuleSpec {
            name: format!("rule-{r}"),
            headers,
            cookies,
            version: rng.below(versions.len()),
        });
    }

    Spec {
        routing_header,
        response_header,
        response_reason_header,
        guard,
        schedule,
        versions,
        id_headers,
        id_cookies,
        salt,
        anonymous_cookie,
        rules,
    }
}

impl Spec {
    fn json(&self) -> Value {
        let mut root = Map::new();
        if let Some(h) = &self.routing_header {
            root.insert("routingHeader".into(), json!(h));
        }
        let versions: Vec<Value> = self
            .versions
            .iter()
            .map(|(name, weight)| json!({ "name": name, "weight": weight }))
            .collect();
        root.insert("versions".into(), Value::Array(versions));
        let mut st = Map::new();
        if !self.id_headers.is_empty() {
            st.insert("userIdHeaders".into(), json!(self.id_headers));
        }
        if !self.id_cookies.is_empty() {
            st.insert("userIdCookies".into(), json!(self.id_cookies));
        }
        if let Some(salt) = &self.salt {
            st.insert("salt".into(), json!(salt));
        }
        if let Some((name, max_age, secure)) = &self.anonymous_cookie {
            let mut c = Map::new();
            c.insert("name".into(), json!(name));
            if let Some(m) = max_age {
                c.insert("maxAgeSeconds".into(), json!(m));
            }
            c.insert("secure".into(), json!(secure));
            st.insert("anonymousCookie".into(), Value::Object(c));
        }
        if !st.is_empty() {
            root.insert("stickiness".into(), Value::Object(st));
        }
        if !self.rules.is_empty() {
            let rules: Vec<Value> = self
                .rules
                .iter()
                .map(|r| {
                    let headers: Map<String, Value> = r
                        .headers
                        .iter()
                        .map(|(h, _, m)| (h.clone(), m.json()))
                        .collect();
                    let cookies: Map<String, Value> = r
                        .cookies
                        .iter()
                        .map(|(c, m)| (c.clone(), m.json()))
                        .collect();
                    json!({
                        "name": r.name,
                        "match": { "headers": headers, "cookies": cookies },
                        "version": self.versions[r.version].0,
                    })
                })
                .collect();
            root.insert("rules".into(), Value::Array(rules));
        }
        if let Some(h) = &self.response_header {
            root.insert("responseHeader".into(), json!(h));
        }
        if let Some(h) = &self.response_reason_header {
            root.insert("responseReasonHeader".into(), json!(h));
        }
        if let Some((g, _, _)) = &self.guard {
            root.insert("guard".into(), g.clone());
        }
        if let Some((start, _, steps)) = &self.schedule {
            let steps: Vec<Value> = steps
                .iter()
                .map(|(after, w)| {
                    let weights: Map<String, Value> = self
                        .versions
                        .iter()
                        .zip(w)
                        .map(|((name, _), w)| (name.clone(), json!(w)))
                        .collect();
                    json!({ "afterSeconds": after, "weights": weights })
                })
                .collect();
            root.insert("schedule".into(), json!({ "start": start, "steps": steps }));
        }
        Value::Object(root)
    }

    /// The weights live at `now_ms`: the latest step begun, else the listed.
    fn weights_at(&self, now_ms: i64) -> Vec<f64> {
        let listed = self.versions.iter().map(|v| v.1).collect();
        let Some((_, start, steps)) = &self.schedule else {
            return listed;
        };
        steps
            .iter()
            .rev()
            .find(|(after, _)| now_ms >= start + i64::from(*after) * 1000)
            .map_or(listed, |(_, w)| w.clone())
    }

    fn routing(&self) -> String {
        self.routing_header
            .as_deref()
            .unwrap_or(config::DEFAULT_ROUTING_HEADER)
            .to_ascii_lowercase()
    }
}

// ---------------------------------------------------------------------------
// Invariants of any accepted config.
// ---------------------------------------------------------------------------

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || TCHAR_EXTRA.contains(&b)
}

fn valid_header_name(name: &str, pseudo: bool) -> bool {
    let body = if pseudo {
        name.strip_prefix(':').unwrap_or(name)
    } else {
        name
    };
    !body.is_empty()
        && name.len() <= config::MAX_NAME_LEN
        && body.bytes().all(is_tchar)
        && name == name.to_ascii_lowercase()
}

/// What every accepted config must satisfy, checked on the validated form.
fn check_rollout(r: &Rollout) {
    let n = r.versions.len();
    assert!((1..=config::MAX_VERSIONS).contains(&n), "{n} versions");
    for (i, v) in r.versions.iter().enumerate() {
        assert!(
            (1..=config::MAX_VERSION_NAME_LEN).contains(&v.name.len())
                && v.name.bytes().all(|b| b.is_ascii_graphic()),
            "version name {:?} is not a safe header value",
            v.name
        );
        // README: `;` and `=` frame the metrics' stat tags.
        assert!(
            !v.name.contains([';', '=']),
            "version name {:?} would break the stat tags",
            v.name
        );
        assert!(
            r.versions[..i].iter().all(|o| o.name != v.name),
            "duplicate {:?}",
            v.name
        );
        assert!((0.0..=100.0).contains(&v.weight), "weight {}", v.weight);
    }
    let sum: f64 = r.versions.iter().map(|v| v.weight).sum();
    assert!((sum - 100.0).abs() <= 1e-6, "weights sum to {sum}");
    assert_eq!(r.thresholds.len(), n);
    assert!(
        r.thresholds.windows(2).all(|w| w[0] <= w[1]),
        "thresholds not monotone"
    );
    assert_eq!(r.thresholds.last(), Some(&(1u64 << 32)));

    let written = [&r.response_header, &r.response_reason_header];
    for h in std::iter::once(&r.routing_header).chain(written.into_iter().flatten()) {
        assert!(valid_header_name(h, false), "written header {h:?}");
        assert!(![
            "host",
            "cookie",
            "set-cookie",
            "content-length",
            "transfer-encoding",
            "connection"
        ]
        .contains(&h.as_str()));
    }
    assert!(r.headers.len() <= config::MAX_HEADERS_READ);
    for h in &r.headers {
        assert!(valid_header_name(h, true), "read header {h:?}");
    }
    assert!(
        !r.headers.contains(&r.routing_header),
        "the routing header is read as input"
    );
    let source_ok = |s: &Source| match s {
        Source::Header { slot } => *slot < r.headers.len(),
        Source::Cookie { slot, name } => {
            r.headers.get(*slot).is_some_and(|h| h == "cookie")
                && !name.is_empty()
                && name.len() <= config::MAX_NAME_LEN
                && name.iter().copied().all(is_tchar)
        }
        Source::BodyField { name } => !name.is_empty() && name.len() <= config::MAX_NAME_LEN,
    };
    assert!(r.user_ids.len() <= config::MAX_USER_ID_SOURCES + 1);
    assert!(r.user_ids.iter().all(source_ok));
    assert!(r.rules.len() <= config::MAX_RULES);
    for rule in &r.rules {
        assert!(rule.version < n);
        assert!((1..=config::MAX_CONDITIONS_PER_RULE).contains(&rule.conditions.len()));
        assert!(rule.conditions.iter().all(|c| source_ok(&c.source)));
        assert!(rule.name.bytes().all(|b| b.is_ascii_graphic()));
    }
    assert!(r.salt.len() <= config::MAX_SALT_LEN);
    if let Some(c) = &r.anonymous_cookie {
        assert!(
            !c.name.is_empty() && c.name.bytes().all(is_tchar),
            "cookie name {:?}",
            c.name
        );
        assert!(c.max_age_seconds >= 1);
    }
    // Summaries go to the log: one line.
    assert!(!r.summary().contains(['\n', '\r']));
}

fn parse(bytes: &[u8]) -> Result<Rollout, config::ConfigError> {
    let result = Rollout::from_json(bytes);
    match &result {
        Ok(r) => check_rollout(r),
        Err(e) => {
            assert!(
                !e.field.is_empty() && !e.reason.is_empty(),
                "error without field or reason: {e:?}"
            );
            // The logged line can never be split or forged.
            assert!(!e.to_string().contains(['\n', '\r']), "{e:?}");
        }
    }
    result
}

/// grpc's status code names, 0 to 16, written out here for the oracle.
const GRPC_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

mod body_scan;
mod config_bytes;
mod config_mutated;
mod decide;
mod guard_window;
mod mesh_answer;
mod rfc3339;
mod rollout_scope;
