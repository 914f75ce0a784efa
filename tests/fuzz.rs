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
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::time::Instant;

use canary_selector::config::{self, Rollout, Source};
use canary_selector::decision::{decide, Decision, Entropy, Live, Reason, Request, WyRand};
use canary_selector::filter::{self, AwaitingTrailers, Host, Outcome, ResponseHost, Verdict};
use canary_selector::guard::{self, Counts, Failure, Stamp, Window};
use canary_selector::hash::murmur3_32;
use canary_selector::matcher::MAX_COOKIE_HEADER_SCAN;
use canary_selector::MAX_USER_ID_LEN;
use serde_json::{json, Map, Value};

// ---------------------------------------------------------------------------
// Runner.
// ---------------------------------------------------------------------------

/// SplitMix64: tiny, seedable, good enough to drive a generator.
struct Rng(u64);

impl Rng {
    fn u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.u64() % n as u64) as usize
    }
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }
    /// True with probability `1 / n`.
    fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
    fn pick_ref<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// Runs `check(generate(rng))` on many cases, each from its own seed derived
/// from (run seed, case index), so any case can be replayed alone. `check`
/// returns how many inputs the case tried. On a panic (a crash of the code
/// under test, or a broken invariant) prints the input and how to replay it.
fn run<I: Debug>(target: &str, generate: impl Fn(&mut Rng) -> I, check: impl Fn(&I) -> u64) {
    let seed = env_u64("FUZZ_SEED").unwrap_or(0x5eed_cafe);
    let seconds = env_u64("FUZZ_SECONDS");
    let cases = env_u64("FUZZ_CASES").unwrap_or(400);
    let only = env_u64("FUZZ_CASE");
    let start = Instant::now();
    let (mut inputs, mut done) = (0u64, 0u64);
    for index in 0u64.. {
        match (only, seconds) {
            (Some(i), _) if index > i => break,
            (Some(i), _) if index < i => continue,
            (None, Some(s)) if start.elapsed().as_secs() >= s => break,
            (None, None) if index >= cases => break,
            _ => {}
        }
        let mut rng = Rng(seed ^ index.wrapping_mul(0xd134_2543_de82_ef95));
        let input = generate(&mut rng);
        match catch_unwind(AssertUnwindSafe(|| check(&input))) {
            Ok(n) => inputs += n,
            Err(panic) => {
                let mut shown = format!("{input:#?}");
                let cut = (0..=shown.len().min(6000))
                    .rev()
                    .find(|&i| shown.is_char_boundary(i));
                shown.truncate(cut.unwrap_or(0));
                eprintln!(
                    "fuzz {target}: case {index} failed. Input:\n{shown}\n\
                     Replay: FUZZ_SEED={seed} FUZZ_CASE={index} cargo test --release --test fuzz {target} -- --nocapture"
                );
                resume_unwind(panic);
            }
        }
        done += 1;
    }
    eprintln!(
        "\nfuzz {target}: {inputs} inputs ({done} cases) in {:.1} s, 0 panics, FUZZ_SEED={seed}",
        start.elapsed().as_secs_f64()
    );
}

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

// ---------------------------------------------------------------------------
// Target: config_bytes.
// ---------------------------------------------------------------------------

/// Text with a readable Debug form for the failure report.
struct Text(Vec<u8>);

impl Debug for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(&self.0))
    }
}

fn gen_config_bytes(rng: &mut Rng) -> Text {
    const TOKENS: &[&[u8]] = &[
        b"{",
        b"}",
        b"[",
        b"]",
        b",",
        b":",
        b"\"",
        b"\\",
        b"\\u0000",
        b"\\ud800",
        b"\\n",
        b"null",
        b"true",
        b"-0",
        b"1e999",
        b"1e-999",
        b"100",
        b"0.5",
        b"-1",
        b"NaN",
        b"\"versions\"",
        b"\"weight\"",
        b"\"name\"",
        b"\"rules\"",
        b"\"match\"",
        b"\"regex\"",
        b"\"schedule\"",
        b"\"guard\"",
        b"\"steps\"",
        b"\xff",
        b"\xef\xbb\xbf",
        b" ",
        b"\t",
        b"\n",
    ];
    if rng.one_in(4) {
        let len = rng.range(0, 200);
        let bytes = (0..len)
            .map(|_| {
                if rng.one_in(2) {
                    rng.pick(b"{}[]\",:0123456789.e-")
                } else {
                    rng.u64() as u8
                }
            })
            .collect();
        return Text(bytes);
    }
    let mut bytes = serde_json::to_vec(&gen_spec(rng).json()).unwrap();
    for _ in 0..rng.range(1, 4) {
        let at = rng.below(bytes.len() + 1);
        match rng.below(5) {
            0 if at < bytes.len() => bytes[at] = rng.u64() as u8,
            1 => {
                let token: &[u8] = rng.pick(TOKENS);
                bytes.splice(at..at, token.iter().copied()).for_each(drop);
            }
            2 => bytes.truncate(at),
            3 => {
                let end = (at + rng.range(1, 30)).min(bytes.len());
                bytes.drain(at..end);
            }
            _ => {
                let end = (at + rng.range(1, 60)).min(bytes.len());
                let copy = bytes[at..end].to_vec();
                bytes.splice(at..at, copy).for_each(drop);
            }
        }
    }
    Text(bytes)
}

#[test]
fn config_bytes() {
    run("config_bytes", gen_config_bytes, |input| {
        let first = parse(&input.0).map(|r| r.summary());
        // Deterministic: the same bytes give the same verdict.
        assert_eq!(first, parse(&input.0).map(|r| r.summary()));
        1
    });
}

// ---------------------------------------------------------------------------
// Target: config_mutated.
// ---------------------------------------------------------------------------

/// Every node of a JSON tree, as a path of keys and indexes.
fn paths(v: &Value, here: &mut Vec<Value>, out: &mut Vec<Vec<Value>>) {
    out.push(here.clone());
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                here.push(json!(k));
                paths(child, here, out);
                here.pop();
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                here.push(json!(i));
                paths(child, here, out);
                here.pop();
            }
        }
        _ => {}
    }
}

fn node<'a>(mut v: &'a mut Value, path: &[Value]) -> &'a mut Value {
    for step in path {
        v = match step {
            Value::String(k) => v.get_mut(k.as_str()).unwrap(),
            _ => v.get_mut(step.as_u64().unwrap() as usize).unwrap(),
        };
    }
    v
}

fn random_value(rng: &mut Rng) -> Value {
    match rng.below(9) {
        0 => Value::Null,
        1 => json!(rng.one_in(2)),
        2 => json!(rng.pick(&[
            -1.0,
            0.0,
            1e-7,
            0.5,
            99.9999999,
            100.0,
            100.0000001,
            1e308,
            -0.0,
            4294967296.0
        ])),
        3 => json!(rng.u64() as i64),
        4 => json!([]),
        5 => json!({}),
        6 => {
            let len = rng.pick(&[1, 64, 65, 128, 129, 256, 257, 512, 513, 1024, 1025]);
            json!(visible(rng, len, len))
        }
        _ => json!(evil_string(rng)),
    }
}

fn mutate(rng: &mut Rng, root: &mut Value) {
    let mut all = Vec::new();
    paths(root, &mut Vec::new(), &mut all);
    let path = rng.pick_ref(&all).clone();
    let target = node(root, &path);
    match rng.below(6) {
        // Replace the node with anything.
        0 | 1 => *target = random_value(rng),
        // Drop a key, add an unknown one, or rename one to an odd name.
        2 => {
            if let Value::Object(m) = target {
                let keys: Vec<String> = m.keys().cloned().collect();
                if !keys.is_empty() {
                    let k = rng.pick_ref(&keys).clone();
                    let v = m.remove(&k).unwrap();
                    if rng.one_in(2) {
                        m.insert(evil_string(rng), v);
                    }
                } else {
                    m.insert(evil_string(rng), random_value(rng));
                }
            } else {
                *target = random_value(rng);
            }
        }
        // Grow a list past its bound (versions, rules, sources).
        3 => {
            if let Value::Array(a) = target {
                if let Some(first) = a.first().cloned() {
                    let n = rng.pick(&[8, 9, 16, 17, 32, 33, 40]);
                    while a.len() < n {
                        a.push(first.clone());
                    }
                }
            }
        }
        // Put CR/LF or odd bytes into a string.
        4 => {
            if let Value::String(s) = target {
                let at = s
                    .char_indices()
                    .map(|(i, _)| i)
                    .nth(rng.below(s.chars().count() + 1))
                    .unwrap_or(s.len());
                let piece: &str =
                    rng.pick(&["\r\n", "\n", "\0", " ", "\u{7f}", "é", ":", ";", "="]);
                s.insert_str(at, piece);
            } else {
                *target = json!(evil_string(rng));
            }
        }
        // Duplicate every entry of an object with a case-changed key.
        _ => {
            if let Value::Object(m) = target {
                let entries: Vec<(String, Value)> = m
                    .iter()
                    .map(|(k, v)| (k.to_ascii_uppercase(), v.clone()))
                    .collect();
                m.extend(entries);
            }
        }
    }
}

#[derive(Debug)]
struct Mutated {
    valid: String,
    mutated: String,
}

#[test]
fn config_mutated() {
    run(
        "config_mutated",
        |rng| {
            let spec = gen_spec(rng);
            let valid = spec.json();
            let mut v = valid.clone();
            for _ in 0..rng.range(0, 3) {
                mutate(rng, &mut v);
            }
            Mutated {
                valid: valid.to_string(),
                mutated: v.to_string(),
            }
        },
        |case| {
            // The generator only writes valid configs: each must be accepted.
            if let Err(e) = parse(case.valid.as_bytes()) {
                panic!("a valid config was rejected: {e}");
            }
            let _ = parse(case.mutated.as_bytes());
            1
        },
    );
}

// ---------------------------------------------------------------------------
// Target: decide.
// ---------------------------------------------------------------------------

/// A request as Envoy hands it to the filter: (lowercase name, value) pairs,
/// repeats allowed; the host returns the first value of a name.
#[derive(Clone, Default)]
struct FakeHost {
    headers: Vec<(String, Vec<u8>)>,
    set: Vec<(String, Vec<u8>)>,
    counted: Vec<(usize, Reason)>,
}

impl Debug for FakeHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown: Vec<(&str, String)> = self
            .headers
            .iter()
            .map(|(k, v)| {
                let mut s = String::from_utf8_lossy(&v[..v.len().min(200)]).into_owned();
                if v.len() > 200 {
                    s = format!("{s}... ({} bytes)", v.len());
                }
                (k.as_str(), s)
            })
            .collect();
        f.debug_list().entries(shown).finish()
    }
}

impl FakeHost {
    fn first(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }
}

impl Request for FakeHost {
    fn header(&mut self, _slot: usize, name: &str) -> Option<&[u8]> {
        self.first(name)
    }
}

impl Host for FakeHost {
    fn set_request_header(&mut self, name: &str, value: &[u8]) {
        self.headers.retain(|(k, _)| k != name);
        self.headers.push((name.to_string(), value.to_vec()));
        self.set.push((name.to_string(), value.to_vec()));
    }
    fn count(&mut self, version: usize, reason: Reason) {
        self.counted.push((version, reason));
    }
}

/// The response as the filter sees it: its status, the clock, and the
/// headers it writes.
#[derive(Default)]
struct FakeResponse {
    status: Option<u16>,
    content_type: Option<&'static str>,
    grpc_status: Option<Vec<u8>>,
    now_ms: i64,
    headers: Vec<(String, Vec<u8>)>,
}

impl ResponseHost for FakeResponse {
    fn set_response_header(&mut self, name: &str, value: &[u8]) {
        self.headers.retain(|(k, _)| k != name);
        self.headers.push((name.to_string(), value.to_vec()));
    }
    fn add_response_header(&mut self, name: &str, value: &[u8]) {
        self.headers.push((name.to_string(), value.to_vec()));
    }
    fn response_header(&mut self, name: &str) -> Option<Vec<u8>> {
        match name {
            ":status" => self.status.map(|s| s.to_string().into_bytes()),
            "content-type" => self.content_type.map(|t| t.as_bytes().to_vec()),
            "grpc-status" => self.grpc_status.clone(),
            _ => None,
        }
    }
    fn now_ms(&mut self) -> i64 {
        self.now_ms
    }
}

/// A cookie header built from pairs in all the shapes browsers and attackers
/// send, sometimes pushed past the scan bound.
fn cookie_header(rng: &mut Rng, spec: &Spec) -> Vec<u8> {
    let mut names: Vec<String> = spec.id_cookies.clone();
    names.extend(spec.anonymous_cookie.iter().map(|c| c.0.clone()));
    names.extend(
        spec.rules
            .iter()
            .flat_map(|r| r.cookies.iter().map(|c| c.0.clone())),
    );
    names.extend(COOKIE_POOL.iter().map(|c| c.to_string()));
    let mut out = Vec::new();
    if rng.one_in(6) {
        // Filler that ends near the 16 KiB bound, so later pairs straddle it.
        let n = MAX_COOKIE_HEADER_SCAN - rng.range(0, 40);
        out.extend(std::iter::repeat_n(b'z', n));
    }
    for _ in 0..rng.range(0, 5) {
        if !out.is_empty() {
            let separator: &[u8] = rng.pick(&[&b"; "[..], b";", b" ; ", b";;"]);
            out.extend_from_slice(separator);
        }
        let name = rng.pick_ref(&names).clone();
        let rule_value = spec
            .rules
            .iter()
            .flat_map(|r| r.cookies.iter())
            .find(|(c, _)| *c == name)
            .map(|(_, m)| m.candidate(rng));
        let value = match rule_value {
            Some(v) if rng.one_in(2) => v,
            _ => value_bytes(rng),
        };
        match rng.below(6) {
            0 => out.extend_from_slice(name.as_bytes()), // a bare name, no '='
            1 => out.extend(
                format!(" {name} = \"")
                    .into_bytes()
                    .into_iter()
                    .chain(value)
                    .chain(*b"\""),
            ),
            _ => out.extend(format!("{name}=").into_bytes().into_iter().chain(value)),
        }
    }
    out
}

fn gen_request(rng: &mut Rng, spec: &Spec) -> FakeHost {
    let mut headers: Vec<(String, Vec<u8>)> = Vec::new();
    let mut add = |rng: &mut Rng, name: &str, value: Vec<u8>| {
        let at = rng.below(headers.len() + 1);
        headers.insert(at, (name.to_string(), value));
    };
    for h in &spec.id_headers {
        if !rng.one_in(3) {
            let v = value_bytes(rng);
            add(rng, h, v);
        }
    }
    for rule in &spec.rules {
        for (_, h, m) in &rule.headers {
            if !rng.one_in(3) {
                let v = if rng.one_in(4) {
                    value_bytes(rng)
                } else {
                    m.candidate(rng)
                };
                add(rng, h, v);
            }
        }
    }
    if !rng.one_in(3) {
        let v = cookie_header(rng, spec);
        add(rng, "cookie", v);
    }
    // The client's own try at picking a version, and noise.
    if rng.one_in(2) {
        let v = rng.pick_ref(&spec.versions).0.clone().into_bytes();
        add(rng, &spec.routing(), v);
    }
    for _ in 0..rng.range(0, 3) {
        let name = if rng.one_in(2) {
            rng.pick(HEADER_POOL).to_string()
        } else {
            token(rng, 1, 12)
        };
        let v = value_bytes(rng);
        add(rng, &name, v);
    }
    FakeHost {
        headers,
        ..Default::default()
    }
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// The README's cookie rule: `name=value` pairs split on `;` within the first
/// 16 KiB of the header, first occurrence wins, spaces/tabs and one pair of
/// double quotes around the value removed, pairs without `=` skipped.
fn oracle_cookie<'a>(header: &'a [u8], name: &str) -> Option<&'a [u8]> {
    // Cut at the bound, dropping the pair the cut goes through.
    let scanned = if header.len() > MAX_COOKIE_HEADER_SCAN && header[MAX_COOKIE_HEADER_SCAN] != b';'
    {
        let head = &header[..MAX_COOKIE_HEADER_SCAN];
        &head[..head.iter().rposition(|&b| b == b';').unwrap_or(0)]
    } else {
        &header[..header.len().min(MAX_COOKIE_HEADER_SCAN)]
    };
    scanned.split(|&b| b == b';').find_map(|pair| {
        let eq = pair.iter().position(|&b| b == b'=')?;
        (trim(&pair[..eq]) == name.as_bytes()).then(|| {
            let v = trim(&pair[eq + 1..]);
            match v {
                [b'"', inner @ .., b'"'] => inner,
                _ => v,
            }
        })
    })
}

/// The README's bucket formula, computed from scratch.
fn oracle_version(spec: &Spec, weights: &[f64], id: &[u8]) -> usize {
    let salt = spec
        .salt
        .clone()
        .unwrap_or_else(|| spec.versions[0].0.clone());
    let mut key = format!("{salt}:").into_bytes();
    key.extend_from_slice(&id[..id.len().min(MAX_USER_ID_LEN)]);
    oracle_version_of_bucket(weights, murmur3_32(&key, 0))
}

/// The first version whose running slice holds the bucket, or the last
/// version with a positive weight, whichever comes first.
fn oracle_version_of_bucket(weights: &[f64], bucket: u32) -> usize {
    let last = weights.iter().rposition(|&w| w > 0.0).unwrap();
    let mut acc = 0.0;
    for (i, w) in weights.iter().enumerate() {
        acc += w;
        if f64::from(bucket) < (acc * 4_294_967_296.0 / 100.0).floor() || i == last {
            return i;
        }
    }
    unreachable!()
}

/// The buckets around every slice boundary, where rounding matters.
fn boundary_buckets(weights: &[f64]) -> Vec<u32> {
    let mut acc = 0.0;
    let mut out = vec![0, 1, u32::MAX - 1, u32::MAX];
    for w in weights {
        acc += w;
        let edge = (acc * 4_294_967_296.0 / 100.0).floor() as i64;
        out.extend((edge - 1..=edge + 1).filter_map(|b| u32::try_from(b).ok()));
    }
    out
}

/// What the README says the decision is, given the random part: the
/// version (`None` for a random pick: anonymous, no cookie) and the reason,
/// before the guard.
fn oracle_choice(spec: &Spec, req: &FakeHost, now_ms: i64) -> (Option<usize>, Reason) {
    let cookies = req.first("cookie");
    let cookie = |name: &str| cookies.and_then(|h| oracle_cookie(h, name));
    for rule in &spec.rules {
        let headers_hold = rule
            .headers
            .iter()
            .all(|(_, h, m)| req.first(h).is_some_and(|v| m.holds(v)));
        let cookies_hold = rule
            .cookies
            .iter()
            .all(|(c, m)| cookie(c).is_some_and(|v| m.holds(v)));
        if headers_hold && cookies_hold {
            return (Some(rule.version), Reason::Rule);
        }
    }
    let ids = spec
        .id_headers
        .iter()
        .map(|h| req.first(h))
        .chain(spec.id_cookies.iter().map(|c| cookie(c)))
        .chain(spec.anonymous_cookie.iter().map(|c| cookie(&c.0)));
    for id in ids.flatten().map(trim) {
        if !id.is_empty() {
            return (
                Some(oracle_version(spec, &spec.weights_at(now_ms), id)),
                Reason::Sticky,
            );
        }
    }
    (None, Reason::Anonymous)
}

#[derive(Debug, Clone)]
struct Moment {
    live: Live,
    seed: u64,
    status: Option<u16>,
    content_type: Option<&'static str>,
    grpc_status: Option<Vec<u8>>,
    /// The trailers' `grpc-status`; `None`: the stream ended without trailers.
    trailer_status: Option<Option<Vec<u8>>>,
    response_ms: i64,
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

fn grpc_status_value(rng: &mut Rng) -> Vec<u8> {
    match rng.below(6) {
        0 => rng
            .pick(&[&b"99"[..], b"17", b"", b"+5", b" 13", b"013", b"\xff"])
            .to_vec(),
        _ => rng.below(17).to_string().into_bytes(),
    }
}

fn gen_moment(rng: &mut Rng, spec: &Spec) -> Moment {
    let now_ms = match &spec.schedule {
        // Around a step's start, where the weights switch.
        Some((_, start, steps)) if !rng.one_in(4) => {
            let (after, _) = rng.pick_ref(steps);
            start + i64::from(*after) * 1000 + rng.range(0, 2) as i64 - 1
        }
        _ => 1_700_000_000_000 + (rng.u64() % (1 << 40)) as i64,
    };
    Moment {
        live: Live {
            now_ms,
            // The guard holds back every canary (a local trip), the ones
            // a mesh verdict named, or none.
            tripped: match rng.below(4) {
                0 => Live::ALL_CANARIES,
                1 => rng.u64() as u32,
                _ => 0,
            },
        },
        seed: rng.u64(),
        status: rng
            .one_in(5)
            .then(|| rng.pick(&[200, 204, 404, 499, 500, 503, 599, 600])),
        content_type: rng.one_in(2).then(|| {
            rng.pick(&[
                "application/grpc",
                "application/grpc+proto",
                "application/grpc;x=1",
                "application/grpc-web",
                "application/grpcx",
                "application/json",
            ])
        }),
        grpc_status: rng.one_in(2).then(|| grpc_status_value(rng)),
        trailer_status: (!rng.one_in(4)).then(|| rng.one_in(4).then(|| grpc_status_value(rng))),
        response_ms: now_ms + rng.range(0, 10_000) as i64 - 100,
    }
}

fn check_request(spec: &Spec, rollout: &Rollout, request: &FakeHost, m: &Moment) -> Decision {
    let mut host = request.clone();
    let (d, pending) = filter::on_request_headers(rollout, &mut host, &mut WyRand(m.seed), m.live);
    let n = spec.versions.len();
    assert!(d.version < n, "version index {} of {n}", d.version);

    let (choice, reason) = oracle_choice(spec, request, m.live.now_ms);
    let weights = spec.weights_at(m.live.now_ms);
    let anonymous_id = reason == Reason::Anonymous && spec.anonymous_cookie.is_some();
    assert_eq!(
        d.new_id.is_some(),
        anonymous_id,
        "a new id for anonymous users, when configured"
    );
    let chosen = match (choice, d.new_id) {
        (Some(v), _) => Some(v),
        // The generated id is bucketed like any user id.
        (None, Some(id)) => Some(oracle_version(spec, &weights, &id.0)),
        (None, None) => None,
    };
    // A version the guard holds back gets only what a rule pins to it;
    // the rest goes to stable. Stable itself is never held back.
    let held = |v: usize| v != 0 && reason != Reason::Rule && (m.live.tripped >> v) & 1 == 1;
    match chosen {
        Some(v) if held(v) => assert_eq!((d.version, d.reason), (0, Reason::Guard)),
        Some(v) => assert_eq!((d.version, d.reason), (v, reason)),
        None => match d.reason {
            Reason::Guard => assert_eq!(d.version, 0),
            Reason::Anonymous => assert!(!held(d.version)),
            other => panic!("a random pick with reason {other:?}"),
        },
    }
    if let Some(id) = d.new_id {
        assert!(id.0.iter().all(|b| b.is_ascii_hexdigit()));
    }

    // What Envoy sees: the routing header replaced by a listed name, once.
    let name = spec.versions[d.version].0.as_bytes();
    assert_eq!(host.set, vec![(spec.routing(), name.to_vec())]);
    assert_eq!(host.first(&spec.routing()), Some(name));
    assert_eq!(
        host.headers
            .iter()
            .filter(|(k, _)| *k == spec.routing())
            .count(),
        1
    );
    assert_eq!(host.counted, vec![(d.version, d.reason)]);

    // The response: reason and version headers, the anonymous cookie, and
    // what the guard counts.
    let respond = spec.response_header.is_some()
        || spec.response_reason_header.is_some()
        || spec.guard.is_some()
        || d.new_id.is_some();
    assert_eq!(pending.is_some(), respond, "pending response work");
    let Some(p) = pending else {
        return d;
    };
    assert_eq!(
        (p.version, p.reason, p.new_id),
        (d.version, d.reason, d.new_id)
    );
    let slow_bound = spec.guard.as_ref().and_then(|g| g.1);
    assert_eq!(p.started_ms, slow_bound.map(|_| m.live.now_ms));
    let mut resp = FakeResponse {
        status: m.status,
        content_type: m.content_type,
        grpc_status: m.grpc_status.clone(),
        now_ms: m.response_ms,
        ..Default::default()
    };
    let outcome = filter::on_response_headers(rollout, &p, &mut resp);
    let mut want_resp = Vec::new();
    if let Some(h) = &spec.response_reason_header {
        want_resp.push((h.clone(), d.reason.as_str().as_bytes().to_vec()));
    }
    if let Some(h) = &spec.response_header {
        want_resp.retain(|(k, _)| *k != h.to_ascii_lowercase());
        want_resp.push((h.to_ascii_lowercase(), name.to_vec()));
    }
    if let (Some(id), Some((cookie, max_age, secure))) = (d.new_id, &spec.anonymous_cookie) {
        let max_age = max_age.unwrap_or(config::DEFAULT_ANONYMOUS_COOKIE_MAX_AGE);
        let id = String::from_utf8(id.0.to_vec()).unwrap();
        let secure = if *secure { "; Secure" } else { "" };
        let value =
            format!("{cookie}={id}; Max-Age={max_age}; Path=/; HttpOnly; SameSite=Lax{secure}");
        want_resp.push(("set-cookie".into(), value.into_bytes()));
    }
    assert_eq!(resp.headers, want_resp);
    // The guard counts what it protects: not the traffic a rule pins. A
    // gRPC response (application/grpc, with or without +suffix or
    // parameters) is judged by grpc-status, in its headers or else in its
    // trailers; a stream without one failed. Anything else by its 5xx status.
    let counted = spec.guard.as_ref().filter(|_| d.reason != Reason::Rule);
    let (version, reason) = (d.version, d.reason);
    let slow = slow_bound.is_some_and(|b| m.response_ms - m.live.now_ms > i64::from(b));
    let grpc = m.content_type.is_some_and(|t| {
        t == "application/grpc"
            || t.starts_with("application/grpc+")
            || t.starts_with("application/grpc;")
    });
    let code_of = |v: &[u8]| -> usize {
        let digits = !v.is_empty() && v.iter().all(u8::is_ascii_digit);
        let n = std::str::from_utf8(v)
            .ok()
            .filter(|_| digits)
            .and_then(|t| t.parse::<usize>().ok());
        n.filter(|&c| c < GRPC_NAMES.len()).unwrap_or(2)
    };
    let want_outcome = counted.map(|&(_, _, codes)| {
        let failed = |code: usize| (codes & 1 << code != 0).then_some(Failure::Grpc(code as u8));
        match (grpc, &m.grpc_status) {
            (true, Some(v)) => Verdict::Now(Outcome {
                version,
                reason,
                failure: failed(code_of(v)),
                slow,
            }),
            (true, None) => Verdict::AtTrailers(AwaitingTrailers {
                version,
                reason,
                slow,
            }),
            (false, _) => Verdict::Now(Outcome {
                version,
                reason,
                failure: m
                    .status
                    .is_some_and(|s| (500..600).contains(&s))
                    .then_some(Failure::Http5xx),
                slow,
            }),
        }
    });
    assert_eq!(outcome, want_outcome);
    if let (Some(Verdict::AtTrailers(awaiting)), Some(&(_, _, codes))) = (outcome, counted) {
        let (got, failure) = match &m.trailer_status {
            Some(status) => (
                filter::on_response_trailers(rollout, &awaiting, status.as_deref()),
                status.as_deref().map_or(Some(Failure::NoGrpcStatus), |v| {
                    let code = code_of(v);
                    (codes & 1 << code != 0).then_some(Failure::Grpc(code as u8))
                }),
            ),
            None => (
                filter::on_stream_lost(&awaiting),
                Some(Failure::NoGrpcStatus),
            ),
        };
        assert_eq!(
            got,
            Outcome {
                version,
                reason,
                failure,
                slow
            }
        );
    }
    d
}

#[derive(Debug)]
struct DecideCase {
    config: String,
    spec: Spec,
    requests: Vec<(FakeHost, Moment)>,
}

#[test]
fn decide_requests() {
    run(
        "decide",
        |rng| {
            let spec = gen_spec(rng);
            let requests = (0..32)
                .map(|_| (gen_request(rng, &spec), gen_moment(rng, &spec)))
                .collect();
            DecideCase {
                config: spec.json().to_string(),
                spec,
                requests,
            }
        },
        |case| {
            let rollout = Rollout::from_json(case.config.as_bytes())
                .unwrap_or_else(|e| panic!("a valid config was rejected: {e}"));
            for (_, moment) in case.requests.iter().take(4) {
                let weights = case.spec.weights_at(moment.live.now_ms);
                let live = rollout.thresholds_at(moment.live.now_ms);
                for bucket in boundary_buckets(&weights) {
                    let got = rollout.version_of_bucket_in(live, bucket);
                    assert_eq!(
                        got,
                        oracle_version_of_bucket(&weights, bucket),
                        "bucket {bucket}"
                    );
                }
            }
            for (request, moment) in &case.requests {
                let d = check_request(&case.spec, &rollout, request, moment);
                // Deterministic: the same request and entropy decide the same.
                let again = decide(
                    &rollout,
                    &mut request.clone(),
                    &mut WyRand(moment.seed),
                    moment.live,
                );
                assert_eq!(again, d, "same input, different decision");
                // Rules and user ids never use entropy at all.
                if d.new_id.is_none()
                    && oracle_choice(&case.spec, request, moment.live.now_ms)
                        .0
                        .is_some()
                {
                    decide(&rollout, &mut request.clone(), &mut NoEntropy, moment.live);
                }
            }
            case.requests.len() as u64
        },
    );
}

/// Entropy that must not be used.
struct NoEntropy;

impl Entropy for NoEntropy {
    fn next_u64(&mut self) -> u64 {
        panic!("entropy used for a request that has a rule or a user id");
    }
}

// ---------------------------------------------------------------------------
// Target: guard_window.
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    /// Window A or B counts a response at `t` (versions past the shape are
    /// ignored).
    Record {
        b: bool,
        t: u64,
        version: usize,
        failure: Option<Failure>,
        slow: bool,
    },
    /// A takes in B's counts.
    Merge,
    Totals {
        ahead: u64,
    },
    RoundTrip {
        stamp: Stamp,
    },
}

#[derive(Debug)]
struct WindowCase {
    versions: usize,
    window_ms: u64,
    ops: Vec<Op>,
    /// Bytes handed to `Window::decode` as (bytes, versions, window_ms).
    foreign: (Vec<u8>, usize, u64),
    guard: config::Guard,
}

fn gen_window_case(rng: &mut Rng) -> WindowCase {
    let versions = rng.range(1, 5);
    let window_ms = rng.pick(&[1, 9, 10, 11, 1000, 60_000, 3_600_000]);
    let mut t = rng.u64() % (1 << 44);
    let ops = (0..rng.range(1, 60))
        .map(|_| match rng.below(10) {
            0 => Op::Merge,
            1 => Op::Totals {
                ahead: rng.pick(&[0, 1, window_ms / 2, window_ms, window_ms * 2]),
            },
            2 => Op::RoundTrip {
                stamp: Stamp {
                    generation: rng.u64() as u32,
                    tripped: rng.one_in(2).then(|| rng.below(versions)),
                },
            },
            _ => {
                t += rng.pick(&[0, 1, 7, window_ms / 10, window_ms, window_ms * 3]);
                let version = if rng.one_in(20) {
                    versions
                } else {
                    rng.below(versions)
                };
                Op::Record {
                    b: rng.one_in(3),
                    t,
                    version,
                    failure: rng.one_in(3).then(|| {
                        let all: Vec<Failure> = Failure::all().collect();
                        *rng.pick_ref(&all)
                    }),
                    slow: rng.one_in(4),
                }
            }
        })
        .collect();
    let shape_versions = if rng.one_in(4) {
        rng.range(1, 5)
    } else {
        versions
    };
    let foreign = match rng.below(3) {
        0 => (0..rng.range(0, 600)).map(|_| rng.u64() as u8).collect(),
        _ => {
            let mut w = Window::new(shape_versions, window_ms);
            w.record(t, rng.below(shape_versions), Some(Failure::Http5xx), false);
            let mut bytes = w.encode(Stamp {
                generation: rng.u64() as u32,
                tripped: rng.one_in(2).then(|| rng.below(300)),
            });
            for _ in 0..rng.range(0, 3) {
                let at = rng.below(bytes.len());
                bytes[at] = rng.u64() as u8;
            }
            if rng.one_in(4) {
                bytes.truncate(rng.below(bytes.len() + 1));
            }
            bytes
        }
    };
    let rate = |rng: &mut Rng| rng.one_in(2).then(|| rng.below(101) as f64 / 100.0);
    let guard = config::Guard {
        window_ms,
        min_requests: rng.range(1, 5) as u32,
        max_error_rate: rate(rng),
        max_error_rate_above_stable: rate(rng),
        slow_response_ms: Some(100),
        max_slow_rate: rng.one_in(2).then(|| rng.below(101) as f64 / 100.0),
        grpc_error_codes: config::DEFAULT_GRPC_ERROR_CODES,
        mesh: None,
    };
    WindowCase {
        versions,
        window_ms,
        ops,
        foreign: (foreign, versions, window_ms),
        guard,
    }
}

/// The window's meaning: the responses of the last `SLOTS` slots, the
/// current one included.
fn model_totals(
    events: &[(u64, usize, Option<Failure>, bool)],
    versions: usize,
    window_ms: u64,
    now: u64,
) -> Vec<Counts> {
    let slot = (window_ms / guard::SLOTS as u64).max(1);
    let mut totals = vec![Counts::default(); versions];
    for &(t, v, failure, slow) in events {
        let age = (now / slot).checked_sub(t / slot);
        if v < versions && age.is_some_and(|a| a < guard::SLOTS as u64) {
            totals[v].requests += 1;
            totals[v].errors += u32::from(failure.is_some());
            totals[v].slow += u32::from(slow);
            // Which kinds failed: gRPC codes first, then no status, then HTTP.
            let bit = match failure {
                Some(Failure::Grpc(code)) => Some(u32::from(code)),
                Some(Failure::NoGrpcStatus) => Some(17),
                Some(Failure::Http5xx) => Some(18),
                None => None,
            };
            totals[v].failures |= bit.map_or(0, |b| 1 << b);
        }
    }
    totals
}

/// The guard's documented judgement: the first canary with at least
/// `minRequests` responses over a threshold.
fn model_judge(g: &config::Guard, totals: &[Counts]) -> Option<usize> {
    let rate = |part: u32, whole: u32| {
        if whole == 0 {
            0.0
        } else {
            f64::from(part) / f64::from(whole)
        }
    };
    let stable = rate(totals[0].errors, totals[0].requests);
    (1..totals.len()).find(|&v| {
        let c = totals[v];
        let errors = rate(c.errors, c.requests);
        c.requests >= g.min_requests
            && (g.max_error_rate.is_some_and(|m| errors > m)
                || g.max_error_rate_above_stable
                    .is_some_and(|m| errors - stable > m)
                || g.max_slow_rate
                    .is_some_and(|m| rate(c.slow, c.requests) > m))
    })
}

#[test]
fn guard_window() {
    run("guard_window", gen_window_case, |case| {
        let (n, window_ms) = (case.versions, case.window_ms);
        let (mut a, mut b) = (Window::new(n, window_ms), Window::new(n, window_ms));
        let (mut in_a, mut in_b) = (Vec::new(), Vec::new());
        let mut now = 0;
        for op in &case.ops {
            match *op {
                Op::Record {
                    b: to_b,
                    t,
                    version,
                    failure,
                    slow,
                } => {
                    now = t;
                    let (w, events) = if to_b {
                        (&mut b, &mut in_b)
                    } else {
                        (&mut a, &mut in_a)
                    };
                    w.record(t, version, failure, slow);
                    events.push((t, version, failure, slow));
                }
                Op::Merge => {
                    a.merge(&b);
                    in_a.extend(in_b.iter().copied());
                }
                Op::Totals { ahead } => {
                    let totals = a.totals(now + ahead);
                    assert_eq!(
                        totals,
                        model_totals(&in_a, n, window_ms, now + ahead),
                        "totals"
                    );
                    let trip = guard::judge(&case.guard, &totals).map(|t| t.version);
                    assert_eq!(trip, model_judge(&case.guard, &totals), "judge");
                }
                Op::RoundTrip { stamp } => {
                    let decoded = Window::decode(&a.encode(stamp), n, window_ms);
                    assert_eq!(decoded, Some((a.clone(), stamp)), "encode then decode");
                }
            }
        }
        // Another VM's bytes: anything, of any shape; never a panic, and
        // whatever decodes encodes back to the same bytes.
        let (bytes, versions, window_ms) = &case.foreign;
        if let Some((w, stamp)) = Window::decode(bytes, *versions, *window_ms) {
            let again = w.encode(stamp);
            assert_eq!((&again[..2], &again[4..]), (&bytes[..2], &bytes[4..]));
            assert!(stamp.tripped.is_none_or(|v| v < 255));
            let _ = w.totals(now);
        }
        1
    });
}

// ---------------------------------------------------------------------------
// Target: rfc3339.
// ---------------------------------------------------------------------------

#[derive(Debug)]
struct TimeCase {
    text: String,
    /// What parsing must give (`None`: not a valid time), computed
    /// independently; unknown for texts broken at random.
    want: Option<Option<i64>>,
}

fn days_in_month(year: i64, month: i64) -> i64 {
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ][(month - 1) as usize]
}

/// Days from 1970-01-01, counted a year and a month at a time.
fn days_since_epoch(year: i64, month: i64, day: i64) -> i64 {
    let year_days = |y: i64| (1..=12).map(|m| days_in_month(y, m)).sum::<i64>();
    let mut days: i64 = if year >= 1970 {
        (1970..year).map(year_days).sum()
    } else {
        -(year..1970).map(year_days).sum::<i64>()
    };
    days += (1..month).map(|m| days_in_month(year, m)).sum::<i64>();
    days + day - 1
}

fn gen_time(rng: &mut Rng) -> TimeCase {
    let year = rng.range(1900, 2200) as i64;
    let (mut month, mut day) = (rng.range(0, 13) as i64, rng.range(0, 32) as i64);
    let (mut hour, mut minute, mut second) = (
        rng.range(0, 24) as i64,
        rng.range(0, 60) as i64,
        rng.range(0, 60) as i64,
    );
    // Now and then a leap second, 23:59:60, at the end of a month or just
    // before it.
    let leap = rng.one_in(8);
    if leap {
        month = rng.range(1, 12) as i64;
        day = days_in_month(year, month) - rng.below(2) as i64;
        (hour, minute, second) = (23, 59, 60);
    }
    let time_ok = hour <= 23 && minute <= 59 && second <= 60;
    let frac_digits = if rng.one_in(2) {
        None
    } else {
        Some(rng.range(0, 10))
    };
    let frac: String = (0..frac_digits.unwrap_or(0))
        .map(|_| char::from(b'0' + rng.below(10) as u8))
        .collect();
    let (oh, om) = (rng.range(0, 24) as i64, rng.range(0, 60) as i64);
    let offset_ok = oh <= 23 && om <= 59;
    let (offset, offset_minutes) = match rng.below(if leap { 8 } else { 4 }) {
        1 => ("z".to_string(), 0),
        2 => (format!("+{oh:02}:{om:02}"), oh * 60 + om),
        3 => (format!("-{oh:02}:{om:02}"), -(oh * 60 + om)),
        _ => ("Z".to_string(), 0),
    };
    let sep = rng.pick(&['T', 't', ' ']);
    let dot = frac_digits.map_or(String::new(), |_| format!(".{frac}"));
    let mut text =
        format!("{year:04}-{month:02}-{day:02}{sep}{hour:02}:{minute:02}:{second:02}{dot}{offset}");
    let valid_date = (1..=12).contains(&month) && day >= 1 && day <= days_in_month(year, month);
    let valid =
        valid_date && time_ok && frac_digits != Some(0) && (offset_minutes == 0 || offset_ok);
    // The instant in UTC, a leap second counted as second 59.
    let utc =
        days_since_epoch(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second.min(59)
            - offset_minutes * 60;
    // RFC 3339 allows 23:59:60 in UTC on the last day of a month (where a
    // leap second may be inserted); it reads as the last instant of 23:59:59.
    // (The UTC date is the written one, the day before or the day after,
    // so the next UTC day can only start this month or the next.)
    let month_ends = || {
        let next_day = utc.div_euclid(86_400) + 1;
        let next = if month >= 12 {
            (year + 1, 1)
        } else {
            (year, month + 1)
        };
        [(year, month), next]
            .iter()
            .any(|&(y, m)| days_since_epoch(y, m, 1) == next_day)
    };
    let leap_ok = second < 60 || (utc.rem_euclid(86_400) == 86_399 && month_ends());
    let mut want = Some((valid && leap_ok).then(|| {
        if second == 60 {
            return utc * 1000 + 999;
        }
        let millis: i64 = frac
            .bytes()
            .chain(std::iter::repeat(b'0'))
            .take(3)
            .fold(0, |m, b| m * 10 + i64::from(b - b'0'));
        utc * 1000 + millis
    }));
    // Now and then, break it.
    if rng.one_in(4) {
        let mut bytes = text.into_bytes();
        let at = rng.below(bytes.len());
        match rng.below(3) {
            0 => bytes[at] = rng.pick(b"0123456789-:T+Z. x\xff"),
            1 => bytes.truncate(at),
            _ => bytes.insert(at, rng.pick(b"0:-.")),
        }
        text = String::from_utf8_lossy(&bytes).into_owned();
        want = None;
    }
    TimeCase { text, want }
}

#[test]
fn rfc3339() {
    run("rfc3339", gen_time, |case| {
        let got = config::rfc3339_ms(&case.text);
        if let Some(want) = case.want {
            assert_eq!(got, want);
        }
        1
    });
}

// ---------------------------------------------------------------------------
// rollout_scope: which rollout takes a request.
// ---------------------------------------------------------------------------

#[derive(Debug)]
struct ScopeCase {
    /// Per rollout: host patterns as written, path prefixes (empty: every path).
    rollouts: Vec<(Vec<String>, Vec<String>)>,
    /// (authority bytes, path bytes) of the requests.
    requests: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

const SCOPE_LABELS: &[&str] = &["a", "b", "models", "example", "com", "x-1"];

fn scope_name(rng: &mut Rng) -> String {
    let n = rng.range(1, 3);
    let labels: Vec<&str> = (0..n).map(|_| rng.pick(SCOPE_LABELS)).collect();
    random_case(rng, &labels.join("."))
}

fn gen_scope_case(rng: &mut Rng) -> ScopeCase {
    let prefixes = ["/", "/v1", "/v1/models", "/v2", "/v1/models/a"];
    let rollouts = (0..rng.range(1, 6))
        .map(|_| {
            let hosts = (0..rng.range(1, 3))
                .map(|_| match rng.below(6) {
                    0 => "*".to_string(),
                    1 | 2 => format!("*.{}", scope_name(rng)),
                    _ => scope_name(rng),
                })
                .collect();
            let paths = if rng.one_in(2) {
                Vec::new()
            } else {
                (0..rng.range(1, 2))
                    .map(|_| rng.pick(&prefixes).to_string())
                    .collect()
            };
            (hosts, paths)
        })
        .collect();
    let requests = (0..20)
        .map(|_| {
            let mut authority = scope_name(rng).into_bytes();
            if rng.one_in(3) {
                authority = [b"q.".as_slice(), &authority].concat();
            }
            match rng.below(8) {
                0 => authority.extend_from_slice(b":8080"),
                1 => authority.push(b'.'),
                2 => authority = b"[::1]:80".to_vec(),
                3 => authority.insert(0, 0xff),
                4 => authority.clear(),
                _ => {}
            }
            let path = match rng.below(6) {
                0 => None,
                _ => Some(
                    format!("{}{}", rng.pick(&prefixes), rng.pick(&["", "/x", "s"])).into_bytes(),
                ),
            };
            (authority, path)
        })
        .collect();
    ScopeCase { rollouts, requests }
}

/// The host of an authority as the README says it is matched: no port, no
/// trailing dot, lowercase.
fn oracle_host(authority: &[u8]) -> Option<Vec<u8>> {
    let host: Vec<u8> = if authority.first() == Some(&b'[') {
        match authority.iter().position(|&b| b == b']') {
            Some(end) => authority[..=end].to_vec(),
            None => authority.to_vec(),
        }
    } else {
        authority
            .split(|&b| b == b':')
            .next()
            .unwrap_or_default()
            .to_vec()
    };
    let host = host.strip_suffix(b".").map(<[u8]>::to_vec).unwrap_or(host);
    (!host.is_empty() && host.len() <= config::MAX_AUTHORITY_HOST_LEN)
        .then(|| host.to_ascii_lowercase())
}

/// How specifically `pattern` matches `host`: exact beats the longest
/// wildcard suffix beats `*`; `None` if it does not match.
fn oracle_specificity(pattern: &str, host: Option<&[u8]>) -> Option<(u8, usize)> {
    if pattern == "*" {
        return Some((0, 0));
    }
    let host = host?;
    match pattern.strip_prefix('*') {
        Some(suffix) => (host.len() > suffix.len() && host.ends_with(suffix.as_bytes()))
            .then_some((1, suffix.len())),
        None => (host == pattern.as_bytes()).then_some((2, 0)),
    }
}

#[test]
fn rollout_scope() {
    run("rollout_scope", gen_scope_case, |case| {
        let entries: Vec<Value> = case
            .rollouts
            .iter()
            .enumerate()
            .map(|(i, (hosts, paths))| {
                let mut e = json!({
                    "name": format!("r{i}"),
                    "hosts": hosts,
                    "versions": [{"name": "v1", "weight": 100}],
                });
                if !paths.is_empty() {
                    e["pathPrefixes"] = json!(paths);
                }
                e
            })
            .collect();
        let text = json!({ "rollouts": entries }).to_string();
        // The oracle's index: (lowercased pattern, prefix) -> rollout, and
        // whether any pair, or a rollout's own list, repeats.
        let mut claims: Vec<(String, String, usize)> = Vec::new();
        let mut clash = false;
        for (i, (hosts, paths)) in case.rollouts.iter().enumerate() {
            let lower: Vec<String> = hosts.iter().map(|h| h.to_ascii_lowercase()).collect();
            let every = vec![String::new()];
            let prefixes = if paths.is_empty() { &every } else { paths };
            for (h, host) in lower.iter().enumerate() {
                clash |= lower[..h].contains(host);
                for (p, prefix) in prefixes.iter().enumerate() {
                    clash |= prefixes[..p].contains(prefix);
                    clash |= claims.iter().any(|(ch, cp, _)| ch == host && cp == prefix);
                    claims.push((host.clone(), prefix.clone(), i));
                }
            }
        }
        let config = match config::Config::from_json(text.as_bytes()) {
            Ok(c) => {
                assert!(
                    !clash,
                    "accepted a config whose rollouts claim a host and prefix twice: {text}"
                );
                c
            }
            Err(e) => {
                assert!(clash, "rejected a valid config: {e}\n{text}");
                assert!(e.field.starts_with("rollouts["), "{e}");
                return 1;
            }
        };
        for (authority, path) in &case.requests {
            let mut buf = [0u8; config::MAX_AUTHORITY_HOST_LEN];
            let host = config::authority_host(authority, &mut buf);
            let want_host = oracle_host(authority);
            assert_eq!(host.map(<[u8]>::to_vec), want_host, "{authority:?}");
            let got = config.rollout_for(host, || path.as_deref());
            // The most specific matching pattern, then its longest prefix.
            let best = claims
                .iter()
                .filter_map(|(h, _, _)| oracle_specificity(h, want_host.as_deref()).map(|s| (s, h)))
                .max_by_key(|(s, _)| *s)
                .map(|(_, h)| h.clone());
            let want = best.and_then(|best| {
                claims
                    .iter()
                    .filter(|(h, prefix, _)| {
                        *h == best
                            && (prefix.is_empty()
                                || path
                                    .as_deref()
                                    .is_some_and(|p| p.starts_with(prefix.as_bytes())))
                    })
                    .max_by_key(|(_, prefix, _)| prefix.len())
                    .map(|&(_, _, i)| i)
            });
            assert_eq!(
                got,
                want,
                "{:?} {:?} in {text}",
                String::from_utf8_lossy(authority),
                path
            );
        }
        case.requests.len() as u64
    });
}
