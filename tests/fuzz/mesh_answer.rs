//! Target `mesh_answer`: the mesh verdict's answer reader
//! (`mesh::read_answer`) on Prometheus' `/api/v1/query` JSON as it may
//! arrive, and `mesh::apply` of what it reads to generated configs.
//!
//! Each case is a config (a `rollouts` list of 1 to 60 rollouts, or one
//! rollout without it; versions, `guard.mesh` on 1 to 3 queries with their
//! own `versionLabel`s, some rollouts polling nothing) and a few answers:
//!
//! - valid ones, from a model: series with random labels (`rollout` naming a
//!   polled rollout, another one, none or one that does not exist; one or
//!   two version labels naming versions of any rollout, the stable one, none
//!   or `""`; labels with control bytes, quotes, unicode, empty names and
//!   values, duplicated names, sets of thousands), values as Prometheus
//!   writes them ("1", "0", "-0", "NaN", "+Inf", "-Inf", "1e-300", "-2",
//!   exponents, subnormals), extra fields where the API may add them,
//!   written with random whitespace and escapes;
//! - broken ones: wrong types at every position (`value` a number, `metric`
//!   a list, `result` an object, ...), an object written as the array of its
//!   fields, members missing or duplicated, `value` of 0, 1 or 3 elements,
//!   `resultType` matrix, scalar or string (with results of their shape),
//!   `status` error, nesting around and far past any reader's bound, lone
//!   surrogates, value strings Prometheus never writes, times out of range;
//!   then bytes flipped, inserted, cut or repeated, and some cut at every
//!   point;
//! - with a status other than 200 (and ones Envoy never sends), none, a host
//!   that gives no body, and body sizes around and far over
//!   `MAX_ANSWER_BYTES`.
//!
//! The oracle is written from the documentation (Prometheus' HTTP API, RFC
//! 8259, docs/guard-and-schedule.md's "What the answer means" and "Faults
//! never make it worse", `mesh::PollFailure`), with a JSON parser of its own:
//!
//! - never a panic;
//! - no answer is `NoAnswer`; a status other than "200" is `HttpStatus` of
//!   its three digits (100 to 599, else 0; a status of other than three
//!   digits, which Envoy never passes, some code or 0), and a body size over
//!   the bound is `TooLarge` (after the status): neither reads the body;
//! - otherwise the answer is `Ok` exactly when the body is UTF-8 JSON (RFC
//!   8259) whose top level is an object with one `status`, `"success"`, and
//!   one `data`, an object with one `resultType`, `"vector"`, and one
//!   `result`, a list of objects each with one `metric`, an object of string
//!   values, and one `value`, `[<number in f64's range>, <string>]` whose
//!   string is a float as Prometheus writes it (`NaN`, `+Inf`, `-Inf` or
//!   JSON's number syntax in range); members besides those are ignored
//!   whatever they hold. It is then the series, each label in order (a
//!   label named twice: RFC 8259 leaves it to the reader; the first copy
//!   is the one that counts), each value as written. Anything else is
//!   `BadAnswer`, as is a host that gives no body. Nesting deeper than 100
//!   or a lone surrogate inside an ignored member may also be refused.
//! - `apply` on each poll of the config (the rollouts polling one query, in
//!   the config's order): a series with a positive finite value names a
//!   failing version in the rollout named by its `rollout` label, by that
//!   rollout's `versionLabel` (a `rollout` label naming a rollout that does
//!   not poll this query, or none: `unknown_rollout`; no such version:
//!   `unknown_version`), or, for a series without a `rollout` label or any
//!   series in a config without `rollouts`, in every rollout of the poll
//!   whose version label names one of its versions (none:
//!   `unknown_version`). The failing bits are exactly those versions', but
//!   the stable version's (index 0), which is never held back; a series
//!   naming only a stable version is used, not ignored. Zero and -0 count
//!   nowhere; a negative, NaN or infinite value is `bad_value`. Every other
//!   series counts in exactly one reason. Each failing version is recorded
//!   in the rollout's held record, and `added` is what was not there yet
//!   (0 for a rollout whose record this VM does not have); applying the same
//!   answer again adds nothing.
//!
//! Where the code is known to differ from this oracle (reported, see
//! `KNOWN`), the case is checked against the code's known behaviour
//! instead, counted and printed after the run; `FUZZ_STRICT=1` makes every
//! such case a failure.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use super::*;
use canary_selector::config::{Config, MAX_VERSIONS};
use canary_selector::mesh::{self, Ignored, PollFailure, Sample, MAX_ANSWER_BYTES};
use canary_selector::shared::held::{self, record_held, Held};
use canary_selector::shared::{Keys, MemoryStore};

// ---------------------------------------------------------------------------
// The config.
// ---------------------------------------------------------------------------

const QUERIES: &[&str] = &[
    "canary_selector:canary_failing",
    "up == 0",
    "canary_selector:quality_failing{plugin=\"p\"}",
];
const VERSION_LABELS: &[&str] = &["version", "destination_version", "model_version", "v"];
/// Rollout names, no two the same once the filter's metric names fold them.
const ROLLOUT_NAMES: &[&str] = &[
    "iris", "flowers", "m0", "m1", "m2", "Iris", "iris-v2", "a.b", "tulips", "x", "~", "9",
];
/// Version names, likewise.
const VERSION_NAMES: &[&str] = &[
    "v1", "v2", "v3", "v4", "v5", "v6", "v7", "v8", "v9", "v10", "v11", "v12", "v13", "v14", "v15",
    "v16", "iris-v1", "iris-v2", "canary", "stable", "B", "b", "model.v2",
];

#[derive(Debug, Clone)]
struct MeshSpec {
    query: usize,
    label: String,
    /// Whether the JSON says `versionLabel` (it may leave out "version").
    label_written: bool,
    poll_seconds: u32,
    timeout_ms: u32,
}

#[derive(Debug, Clone)]
struct RolloutSpec {
    name: String,
    versions: Vec<String>,
    mesh: Option<MeshSpec>,
}

#[derive(Debug, Clone)]
struct MeshConfig {
    scoped: bool,
    rollouts: Vec<RolloutSpec>,
}

fn shuffle<T>(rng: &mut Rng, items: &mut [T]) {
    for i in (1..items.len()).rev() {
        items.swap(i, rng.below(i + 1));
    }
}

fn gen_config(rng: &mut Rng) -> MeshConfig {
    let scoped = !rng.one_in(4);
    let n = match (scoped, rng.below(10)) {
        (false, _) => 1,
        (true, 0) => rng.range(13, 60),
        _ => rng.range(1, 6),
    };
    let queries = rng.range(1, QUERIES.len());
    let mut names: Vec<String> = ROLLOUT_NAMES.iter().map(|s| s.to_string()).collect();
    shuffle(rng, &mut names);
    let rollouts = (0..n)
        .map(|i| {
            let mesh = (!scoped || !rng.one_in(6)).then(|| {
                let label = if rng.one_in(3) {
                    rng.pick(VERSION_LABELS).to_string()
                } else {
                    "version".to_string()
                };
                let poll_seconds = rng.pick(&[1, 2, 5, 60, 3600]);
                let timeout_ms =
                    rng.range(1, (poll_seconds as usize * 1000 - 1).min(30_000)) as u32;
                MeshSpec {
                    query: rng.below(queries),
                    label_written: label != "version" || rng.one_in(2),
                    label,
                    poll_seconds,
                    timeout_ms,
                }
            });
            let n_versions = if rng.one_in(8) {
                rng.range(5, MAX_VERSIONS)
            } else {
                rng.range(if mesh.is_some() { 2 } else { 1 }, 4)
            };
            let mut versions: Vec<String> = VERSION_NAMES.iter().map(|s| s.to_string()).collect();
            shuffle(rng, &mut versions);
            versions.truncate(n_versions);
            RolloutSpec {
                name: names.get(i).cloned().unwrap_or_else(|| format!("r{i}")),
                versions,
                mesh,
            }
        })
        .collect();
    MeshConfig { scoped, rollouts }
}

impl MeshConfig {
    fn json(&self) -> String {
        let rollouts: Vec<Value> = self
            .rollouts
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let versions: Vec<Value> = r
                    .versions
                    .iter()
                    .enumerate()
                    .map(|(k, v)| json!({ "name": v, "weight": if k == 0 { 100 } else { 0 } }))
                    .collect();
                let mut o = json!({ "versions": versions });
                if let Some(m) = &r.mesh {
                    let mut mesh = json!({
                        "cluster": "prom",
                        "authority": "prom:9090",
                        "query": QUERIES[m.query],
                        "pollSeconds": m.poll_seconds,
                        "timeoutMs": m.timeout_ms,
                    });
                    if m.label_written {
                        mesh["versionLabel"] = json!(m.label);
                    }
                    o["guard"] = json!({ "mesh": mesh });
                }
                if self.scoped {
                    o["name"] = json!(r.name);
                    o["hosts"] = json!([format!("r{i}.example.com")]);
                }
                o
            })
            .collect();
        if self.scoped {
            json!({ "rollouts": rollouts }).to_string()
        } else {
            rollouts[0].to_string()
        }
    }

    /// The polls: the rollouts asking each query, in the order the config
    /// first asks it; each with the shortest interval and timeout.
    fn polls(&self) -> Vec<(Vec<usize>, u64, u64)> {
        let mut out: Vec<(usize, Vec<usize>, u64, u64)> = Vec::new();
        for (i, r) in self.rollouts.iter().enumerate() {
            let Some(m) = &r.mesh else { continue };
            let (ms, timeout) = (u64::from(m.poll_seconds) * 1000, u64::from(m.timeout_ms));
            match out.iter_mut().find(|p| p.0 == m.query) {
                Some(p) => {
                    p.1.push(i);
                    p.2 = p.2.min(ms);
                    p.3 = p.3.min(timeout);
                }
                None => out.push((m.query, vec![i], ms, timeout)),
            }
        }
        out.into_iter().map(|(_, r, ms, t)| (r, ms, t)).collect()
    }

    fn label(&self, rollout: usize) -> &str {
        self.rollouts[rollout].mesh.as_ref().unwrap().label.as_str()
    }

    /// The labels any rollout reads its versions from.
    fn labels(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for r in &self.rollouts {
            if let Some(m) = &r.mesh {
                if !out.contains(&m.label.as_str()) {
                    out.push(&m.label);
                }
            }
        }
        out
    }
}

// ---------------------------------------------------------------------------
// The series, as the model holds them.
// ---------------------------------------------------------------------------

/// Values as Prometheus writes them (Go's `strconv.FormatFloat`, 'e' below
/// 1e-6 and from 1e21), and a few it could: each is a float of the oracle.
const VALUES: &[&str] = &[
    "1",
    "1",
    "1",
    "1",
    "2",
    "0.5",
    "0",
    "0",
    "-0",
    "NaN",
    "+Inf",
    "-Inf",
    "1e-300",
    "-2",
    "-0.25",
    "2.5e+3",
    "1E5",
    "1e-07",
    "1e+21",
    "123456789",
    "0.0",
    "-0.0",
    "0e5",
    "-0E-3",
    "1e-400",
    "4.9e-324",
    "1e308",
    "1.7976931348623157e+308",
    "-1e-300",
];
/// Times as the API writes them (a number of Unix seconds), and odd ones.
const TIMES: &[&str] = &[
    "1796232086.079",
    "1796232086.079",
    "1796232086",
    "0",
    "-0",
    "1.796232086079e9",
    "1E-5",
    "-12.5",
    "18446744073709551616",
    "1e308",
];
/// Value strings Prometheus never writes.
const ODD_VALUES: &[&str] = &[
    " 1", "1 ", "\t1\n", "\r\n0 ", " -0.5", "2\n", "\t+Inf", "Inf", "inf", "+1", "1.", ".5",
    "0x10", "", "nan", "+NaN", "1e400", "-1e400", "Infinity", "-nan", "1e", "--1", "1_0", "٣",
    "１", "0001", "-", "+", "1e+", "NaN ", " NaN", "+inf", "1\u{a0}", "1,5", "true", "null",
    "\"1\"",
];
const NOISE_NAMES: &[&str] = &[
    "__name__",
    "job",
    "instance",
    "namespace",
    "pod",
    "le",
    "a",
    "Rollout",
    "VERSION",
    "é",
    "日本",
    "",
    " ",
    "with space",
    "\0",
    "\"",
    "\\",
    "😀",
    "\u{2028}",
    "\u{7f}",
    "rollout ",
];

#[derive(Debug, Clone)]
struct Series {
    labels: Vec<(String, String)>,
    value: String,
    time: String,
}

fn odd_text(rng: &mut Rng) -> String {
    match rng.below(4) {
        0 => String::new(),
        1 => rng.pick(NOISE_NAMES).to_string(),
        _ => evil_string(rng),
    }
}

fn gen_series(rng: &mut Rng, cfg: &MeshConfig, few_labels: bool) -> Series {
    let mut labels: Vec<(String, String)> = Vec::new();
    if rng.one_in(2) {
        labels.push(("__name__".into(), "canary_selector:canary_failing".into()));
    }
    let any_rollout = |rng: &mut Rng| rng.pick_ref(&cfg.rollouts);
    let with_rollout = if cfg.scoped {
        !rng.one_in(4)
    } else {
        rng.one_in(3)
    };
    if with_rollout {
        let name = match rng.below(8) {
            0..=4 => any_rollout(rng).name.clone(),
            5 => rng.pick(ROLLOUT_NAMES).to_string(),
            6 => rng
                .pick(&["tulips", "IRIS", "iris ", "", "é", "iris\0", "r999"])
                .to_string(),
            _ => odd_text(rng),
        };
        labels.push(("rollout".into(), name));
    }
    let labels_read = cfg.labels();
    let k = match rng.below(10) {
        0 => 0,
        1 | 2 => 2,
        _ => 1,
    };
    for _ in 0..k {
        let label = if rng.one_in(5) || labels_read.is_empty() {
            rng.pick(VERSION_LABELS).to_string()
        } else {
            rng.pick(&labels_read).to_string()
        };
        let value = match rng.below(8) {
            0..=4 => {
                let r = any_rollout(rng);
                // The stable version now and then, a canary mostly.
                if rng.one_in(4) {
                    r.versions[0].clone()
                } else {
                    rng.pick_ref(&r.versions).clone()
                }
            }
            5 => rng.pick(VERSION_NAMES).to_string(),
            6 => rng.pick(&["", "V2", "v2 ", "v99", "v1\0"]).to_string(),
            _ => odd_text(rng),
        };
        labels.push((label, value));
    }
    let noise = if !few_labels && rng.one_in(30) {
        rng.range(300, 3000)
    } else {
        rng.range(0, 3)
    };
    for j in 0..noise {
        let name = if noise > 10 || rng.one_in(3) {
            format!("l{j}")
        } else {
            rng.pick(NOISE_NAMES).to_string()
        };
        let value = if rng.one_in(3) {
            odd_text(rng)
        } else {
            token(rng, 0, 12)
        };
        labels.push((name, value));
    }
    if rng.one_in(15) && !labels.is_empty() {
        // A label written twice, with another value, before or after.
        let (name, _) = rng.pick_ref(&labels).clone();
        let value = if rng.one_in(2) {
            rng.pick_ref(&cfg.rollouts).name.clone()
        } else {
            rng.pick(VERSION_NAMES).to_string()
        };
        let at = rng.below(labels.len() + 1);
        labels.insert(at, (name, value));
    }
    if rng.one_in(3) {
        shuffle(rng, &mut labels);
    }
    Series {
        labels,
        value: rng.pick(VALUES).to_string(),
        time: rng.pick(TIMES).to_string(),
    }
}

fn gen_series_list(rng: &mut Rng, cfg: &MeshConfig) -> Vec<Series> {
    let n = match rng.below(20) {
        0 => 0,
        1 => rng.range(200, 2000),
        _ => rng.range(1, 12),
    };
    (0..n).map(|_| gen_series(rng, cfg, n > 100)).collect()
}

// ---------------------------------------------------------------------------
// JSON, as the generator builds and writes it.
// ---------------------------------------------------------------------------

/// A key written as is (its quotes included): for lone surrogates in keys.
const RAW_KEY: char = '\u{f8ff}';

#[derive(Debug, Clone)]
enum J {
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

fn s(text: &str) -> J {
    J::Str(text.to_string())
}

const EXTRA_KEYS: &[&str] = &[
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

fn small_value(rng: &mut Rng, depth: usize) -> J {
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
fn object(rng: &mut Rng, mut members: Vec<(&str, J)>) -> J {
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

fn answer_tree(rng: &mut Rng, series: &[Series]) -> J {
    let result = series
        .iter()
        .map(|se| {
            let metric = J::Obj(se.labels.iter().map(|(k, v)| (k.clone(), s(v))).collect());
            let value = J::Arr(vec![J::Num(se.time.clone()), s(&se.value)]);
            object(rng, vec![("metric", metric), ("value", value)])
        })
        .collect();
    let data = object(
        rng,
        vec![("resultType", s("vector")), ("result", J::Arr(result))],
    );
    object(rng, vec![("status", s("success")), ("data", data)])
}

struct Style {
    pretty: bool,
    /// Escape some characters that need none.
    escape: bool,
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

fn write_json(rng: &mut Rng, j: &J, style: &Style, indent: usize, out: &mut String) {
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

// ---------------------------------------------------------------------------
// Breaking an answer.
// ---------------------------------------------------------------------------

/// The path of every node down to `max_depth` (into at most the first 8
/// items of a list), by depth.
fn paths(j: &J, path: &mut Vec<usize>, max_depth: usize, out: &mut Vec<Vec<Vec<usize>>>) {
    if out.len() <= path.len() {
        out.push(Vec::new());
    }
    out[path.len()].push(path.clone());
    if path.len() >= max_depth {
        return;
    }
    let children: Vec<&J> = match j {
        J::Arr(items) => items.iter().take(8).collect(),
        J::Obj(members) => members.iter().take(8).map(|(_, v)| v).collect(),
        _ => return,
    };
    for (i, child) in children.into_iter().enumerate() {
        path.push(i);
        paths(child, path, max_depth, out);
        path.pop();
    }
}

fn at_ref<'a>(j: &'a J, path: &[usize]) -> &'a J {
    match path.split_first() {
        None => j,
        Some((&i, rest)) => match j {
            J::Arr(items) => at_ref(&items[i], rest),
            J::Obj(members) => at_ref(&members[i].1, rest),
            _ => unreachable!(),
        },
    }
}

fn at<'a>(j: &'a mut J, path: &[usize]) -> &'a mut J {
    match path.split_first() {
        None => j,
        Some((&i, rest)) => match j {
            J::Arr(items) => at(&mut items[i], rest),
            J::Obj(members) => at(&mut members[i].1, rest),
            _ => unreachable!(),
        },
    }
}

/// A node at a random depth (each depth as likely as any other).
fn random_node<'a>(rng: &mut Rng, top: &'a mut J, want: impl Fn(&J) -> bool) -> Option<&'a mut J> {
    let mut by_depth = Vec::new();
    paths(top, &mut Vec::new(), 6, &mut by_depth);
    let mut fitting: Vec<Vec<Vec<usize>>> = by_depth
        .into_iter()
        .map(|level| {
            level
                .into_iter()
                .filter(|p| want(at_ref(top, p)))
                .collect::<Vec<_>>()
        })
        .filter(|level| !level.is_empty())
        .collect();
    if fitting.is_empty() {
        return None;
    }
    let level = rng.below(fitting.len());
    let level = &mut fitting[level];
    let path = level.swap_remove(rng.below(level.len()));
    Some(at(top, &path))
}

fn other_type(rng: &mut Rng, was: &J) -> J {
    loop {
        let j = match rng.below(9) {
            0 => J::Null,
            1 => J::Bool(rng.one_in(2)),
            2 => J::Num(rng.pick(&["1", "0", "-2.5e3", "1796232086.079"]).into()),
            3 => s(rng.pick(&["1", "success", "vector", "", "{}"])),
            4 => J::Arr(vec![]),
            5 => J::Arr(vec![J::Num("1".into()), s("1")]),
            6 => J::Arr(vec![s("version"), s("v2")]),
            7 => J::Obj(vec![]),
            _ => J::Obj(vec![("version".into(), s("v2")), ("0".into(), s("1"))]),
        };
        if std::mem::discriminant(&j) != std::mem::discriminant(was) {
            return j;
        }
    }
}

/// The field order of the reader's shapes: an object written as the list
/// of its fields' values (what a serde struct also reads).
fn as_field_list(j: &J) -> Option<J> {
    let J::Obj(members) = j else { return None };
    let get = |k: &str| members.iter().find(|(m, _)| m == k).map(|(_, v)| v.clone());
    for fields in [
        ["status", "data"],
        ["resultType", "result"],
        ["metric", "value"],
    ] {
        if let (Some(a), Some(b)) = (get(fields[0]), get(fields[1])) {
            return Some(J::Arr(vec![a, b]));
        }
    }
    None
}

fn nested(rng: &mut Rng, depth: usize) -> String {
    if rng.one_in(2) {
        format!("{}{}", "[".repeat(depth), "]".repeat(depth))
    } else {
        format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth))
    }
}

const DEPTHS: &[usize] = &[
    5, 60, 95, 99, 100, 101, 126, 127, 128, 129, 200, 399, 400, 401, 5000, 100_000,
];

/// What the mutation did, for the outcome counts.
fn mutate_tree(rng: &mut Rng, top: &mut J) -> &'static str {
    let is_obj = |j: &J| matches!(j, J::Obj(_));
    match rng.below(13) {
        0 | 1 => {
            if let Some(node) = random_node(rng, top, |_| true) {
                *node = other_type(rng, node);
            }
            "wrong type"
        }
        2 => {
            if let Some(J::Obj(members)) =
                random_node(rng, top, |j| matches!(j, J::Obj(m) if !m.is_empty()))
            {
                let (k, v) = rng.pick_ref(members).clone();
                let v = if rng.one_in(2) {
                    v
                } else {
                    other_type(rng, &v)
                };
                let at = rng.below(members.len() + 1);
                members.insert(at, (k, v));
            }
            "duplicate key"
        }
        3 => {
            if let Some(J::Obj(members)) =
                random_node(rng, top, |j| matches!(j, J::Obj(m) if !m.is_empty()))
            {
                let i = rng.below(members.len());
                members.remove(i);
            }
            "member missing"
        }
        4 => {
            if let Some(J::Obj(members)) = random_node(
                rng,
                top,
                |j| matches!(j, J::Obj(m) if m.iter().any(|(k, _)| k == "resultType")),
            ) {
                let shape = rng.pick(&["matrix", "scalar", "string", "Vector", "vector ", ""]);
                for (k, v) in members.iter_mut() {
                    if k == "resultType" {
                        *v = s(shape);
                    } else if k == "result" && rng.one_in(2) {
                        *v = match shape {
                            "scalar" => J::Arr(vec![J::Num("1796232086.079".into()), s("1")]),
                            "string" => J::Arr(vec![J::Num("1796232086.079".into()), s("v2")]),
                            _ => J::Arr(vec![J::Obj(vec![
                                ("metric".into(), J::Obj(vec![("version".into(), s("v2"))])),
                                (
                                    "values".into(),
                                    J::Arr(vec![J::Arr(vec![J::Num("1".into()), s("1")])]),
                                ),
                            ])]),
                        };
                    }
                }
            }
            "resultType"
        }
        5 => {
            if let J::Obj(members) = top {
                for (k, v) in members.iter_mut() {
                    if k == "status" {
                        *v = s(rng.pick(&["error", "Success", "success ", ""]));
                    }
                }
                members.push(("errorType".into(), s("bad_data")));
                members.push(("error".into(), s("1:1: parse error")));
                if rng.one_in(2) {
                    members.retain(|(k, _)| k != "data");
                }
            }
            "status error"
        }
        6 => {
            let depth = rng.pick(DEPTHS);
            let deep = J::Raw(nested(rng, depth));
            if rng.one_in(3) {
                if let Some(node) = random_node(rng, top, |_| true) {
                    *node = deep;
                }
            } else if let Some(J::Obj(members)) = random_node(rng, top, is_obj) {
                members.push(("deep".into(), deep));
            }
            "deep nesting"
        }
        7 => {
            let lone = rng.pick(&[
                "\"\\ud800\"",
                "\"a\\udc00b\"",
                "\"\\ud800\\u0041\"",
                "\"\\udbff\"",
            ]);
            match rng.below(3) {
                0 => {
                    if let Some(node) = random_node(rng, top, |j| matches!(j, J::Str(_))) {
                        *node = J::Raw(lone.into());
                    }
                }
                1 => {
                    if let Some(J::Obj(members)) = random_node(rng, top, is_obj) {
                        members.push((format!("{RAW_KEY}{lone}"), s("x")));
                    }
                }
                _ => {
                    if let Some(J::Obj(members)) = random_node(rng, top, is_obj) {
                        members.push(("warnings".into(), J::Arr(vec![J::Raw(lone.into())])));
                    }
                }
            }
            "lone surrogate"
        }
        8 => {
            let odd = rng.pick(ODD_VALUES);
            if let Some(J::Arr(items)) = random_node(
                rng,
                top,
                |j| matches!(j, J::Arr(v) if v.len() == 2 && matches!(v[1], J::Str(_))),
            ) {
                items[1] = s(odd);
            }
            "odd value"
        }
        9 => {
            let long = format!("1{}", "0".repeat(400));
            let odd = rng.pick(&[
                "1e400",
                "-1e400",
                long.as_str(),
                "-0",
                "0.0000001",
                "1.5E+2",
            ]);
            if let Some(J::Arr(items)) = random_node(
                rng,
                top,
                |j| matches!(j, J::Arr(v) if v.len() == 2 && matches!(v[0], J::Num(_))),
            ) {
                items[0] = if rng.one_in(4) {
                    s("1796232086.079")
                } else {
                    J::Num(odd.to_string())
                };
            }
            "odd time"
        }
        10 => {
            if let Some(J::Arr(items)) = random_node(
                rng,
                top,
                |j| matches!(j, J::Arr(v) if v.len() == 2 && matches!(v[0], J::Num(_))),
            ) {
                match rng.below(3) {
                    0 => items.clear(),
                    1 => {
                        items.pop();
                    }
                    _ => items.push(s("1")),
                }
            }
            "value arity"
        }
        11 => {
            if let Some(node) = random_node(rng, top, |j| as_field_list(j).is_some()) {
                *node = as_field_list(node).unwrap();
            }
            "object as a list"
        }
        _ => {
            if let Some(J::Obj(members)) = random_node(rng, top, is_obj) {
                members.push((rng.pick(EXTRA_KEYS).to_string(), small_value(rng, 0)));
            }
            "extra member"
        }
    }
}

fn mutate_bytes(rng: &mut Rng, body: &mut Vec<u8>) {
    const BYTES: &[u8] = b"\"\\{}[]:, \n0e-tnu\xff\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\x00\x1f";
    for _ in 0..rng.range(1, 4) {
        let at = rng.below(body.len() + 1);
        match rng.below(6) {
            0 if at < body.len() => body[at] ^= 1 << rng.below(8),
            1 => body.insert(at, rng.pick(BYTES)),
            2 if at < body.len() => {
                let end = rng.range(at, body.len().min(at + 8));
                body.drain(at..end);
            }
            3 => body.truncate(at),
            4 if at < body.len() => {
                let end = rng.range(at, body.len().min(at + 16));
                let piece = body[at..end].to_vec();
                body.splice(at..at, piece);
            }
            _ => body.insert(at, rng.u64() as u8),
        }
    }
}

// ---------------------------------------------------------------------------
// A case.
// ---------------------------------------------------------------------------

struct Body(Vec<u8>);

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = String::from_utf8_lossy(&self.0);
        let cut: String = text.chars().take(3000).collect();
        write!(f, "{} bytes: {cut:?}", self.0.len())
    }
}

#[derive(Debug)]
struct AnswerCase {
    status: Option<Vec<u8>>,
    /// What Envoy says the body holds (`None`: the body's length).
    size: Option<usize>,
    /// `None`: the host gives no body.
    body: Option<Body>,
    /// Also every prefix of the body.
    every_prefix: bool,
    /// The model's series, if the body is the model's answer unbroken: the
    /// oracle must read exactly them (a check of the oracle).
    pristine: Option<Vec<Series>>,
    made: Vec<&'static str>,
}

#[derive(Debug)]
struct MeshCase {
    config: MeshConfig,
    config_json: String,
    /// The push generation of every rollout in this VM.
    generation: u32,
    /// What each rollout's held record holds already.
    held_before: Vec<u32>,
    /// The rollouts whose record this VM does not have.
    no_record: Vec<bool>,
    /// Series applied as they are, without JSON.
    series: Vec<Series>,
    answers: Vec<AnswerCase>,
}

const STATUSES: &[&[u8]] = &[
    b"503",
    b"500",
    b"504",
    b"404",
    b"204",
    b"301",
    b"100",
    b"599",
    b"600",
    b"000",
    b"099",
    b"20x",
    b"2 0",
    b"",
    b"0200",
    b"+503",
    b"200 ",
    b" 200",
    b"20",
    b"2000",
    b"\xff\xfe",
    b"-20",
    b"+20",
    b"\xd9\xa3\xd9\xa3\xd9\xa3",
];

fn gen_answer(rng: &mut Rng, cfg: &MeshConfig) -> AnswerCase {
    let mut made = Vec::new();
    let status = match rng.below(30) {
        0 => None,
        1..=3 => Some(rng.pick(STATUSES).to_vec()),
        _ => Some(b"200".to_vec()),
    };
    let series = gen_series_list(rng, cfg);
    let mut tree = answer_tree(rng, &series);
    let mut pristine = Some(series);
    if rng.one_in(2) {
        pristine = None;
        for _ in 0..rng.range(1, 3) {
            made.push(mutate_tree(rng, &mut tree));
        }
    } else {
        made.push("valid");
    }
    let style = Style {
        pretty: rng.one_in(4),
        escape: rng.one_in(3),
    };
    let mut text = String::new();
    write_json(rng, &tree, &style, 0, &mut text);
    // Whitespace around the answer, a byte order mark, something after it.
    let (before, after): (&[u8], &[u8]) = match rng.below(30) {
        0 => (b" \r\n\t", b""),
        1 => {
            pristine = None;
            (b"\xef\xbb\xbf", b"")
        }
        2 => (b"", b"\n \t"),
        3 => {
            pristine = None;
            (b"", rng.pick(&[&b"x"[..], b",", b"{}", b"\0"]))
        }
        _ => (b"", b""),
    };
    let mut body = [before, &text.into_bytes(), after].concat();
    if rng.one_in(4) {
        mutate_bytes(rng, &mut body);
        made.push("bytes mutated");
        pristine = None;
    }
    let mut size = None;
    match rng.below(40) {
        0 | 1 => {
            size = Some(
                MAX_ANSWER_BYTES
                    + rng.pick(&[1, 2, 1000, MAX_ANSWER_BYTES, usize::MAX - MAX_ANSWER_BYTES]),
            );
            made.push("over the bound");
        }
        2 => {
            // Exactly the bound: read. One byte more: refused.
            let over = rng.one_in(2);
            let len = MAX_ANSWER_BYTES + usize::from(over);
            if body.len() < len {
                body.resize(len, b' ');
            }
            made.push(if over { "bound + 1" } else { "at the bound" });
        }
        _ => {}
    }
    let every_prefix = body.len() <= 1500 && rng.one_in(6);
    let body = if rng.one_in(40) {
        made.push("no body from the host");
        None
    } else {
        Some(Body(body))
    };
    AnswerCase {
        status,
        size,
        body,
        every_prefix,
        pristine,
        made,
    }
}

fn gen_case(rng: &mut Rng) -> MeshCase {
    let config = gen_config(rng);
    let n = config.rollouts.len();
    let answers = (0..rng.range(2, 6))
        .map(|_| gen_answer(rng, &config))
        .collect();
    MeshCase {
        config_json: config.json(),
        generation: rng.range(1, 1000) as u32,
        held_before: (0..n)
            .map(|_| {
                if rng.one_in(4) {
                    rng.u64() as u32 & 0xfffe
                } else {
                    0
                }
            })
            .collect(),
        no_record: (0..n).map(|_| rng.one_in(10)).collect(),
        series: gen_series_list(rng, &config),
        answers,
        config,
    }
}

// ---------------------------------------------------------------------------
// The oracle: JSON (RFC 8259), parsed here.
// ---------------------------------------------------------------------------

/// A JSON value; a string that is no Unicode text (a lone surrogate) is
/// `None`.
#[derive(Debug, Clone)]
enum P {
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
const DEPTH_ANY_READER_TAKES: usize = 100;

#[derive(Debug, PartialEq)]
enum Unparsed {
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
fn parse_json(body: &[u8]) -> Result<(P, usize), Unparsed> {
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

// ---------------------------------------------------------------------------
// The oracle: the API's answer.
// ---------------------------------------------------------------------------

/// A series as the oracle reads it.
type S = (Vec<(String, String)>, f64);

/// Where the code is known to read otherwise than the oracle.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
struct Lenient {
    /// A value string with JSON whitespace around a number is read as the
    /// number.
    padded_value: bool,
    /// An answer, its `data` or a series written as the list of its
    /// fields' values (`["success", {...}]`) is read as the object.
    field_list: bool,
}

/// What the answer must read as.
#[derive(Debug)]
enum Want {
    Exactly(Result<Vec<S>, ()>),
    /// These series, or `BadAnswer`.
    OrBad(Vec<S>),
    /// `Ok` of anything or `BadAnswer` (nesting past the oracle's parser).
    Unknown,
}

/// A float as Prometheus writes it: `NaN`, `+Inf`, `-Inf`, or a finite
/// number in JSON's syntax.
fn prom_value(text: &str, lenient: Lenient) -> Option<f64> {
    match text {
        "NaN" => return Some(f64::NAN),
        "+Inf" => return Some(f64::INFINITY),
        "-Inf" => return Some(f64::NEG_INFINITY),
        _ => {}
    }
    let bare = text.trim_matches([' ', '\t', '\n', '\r']);
    if bare != text && !lenient.padded_value {
        return None;
    }
    match parse_json(bare.as_bytes()) {
        Ok((P::Num(v), _)) if v.is_finite() => Some(v),
        _ => None,
    }
}

struct Reading {
    lenient: Lenient,
    /// Something a reader may refuse: a lone surrogate in an ignored member.
    may_refuse: bool,
}

impl Reading {
    /// The members `fields` of an object (each at most once; every key must
    /// be text, as a reader reads each to know whether it wants it); the
    /// others are ignored whatever they hold. With `field_list`, a list of
    /// exactly their values in order.
    fn fields<'p, const N: usize>(
        &mut self,
        v: &'p P,
        fields: [&str; N],
    ) -> Result<[Option<&'p P>; N], ()> {
        let mut out = [None; N];
        match v {
            P::Obj(members) => {
                for (k, v) in members {
                    let k = k.as_deref().ok_or(())?;
                    match fields.iter().position(|f| *f == k) {
                        Some(i) if out[i].is_some() => return Err(()),
                        Some(i) => out[i] = Some(v),
                        None => self.may_refuse |= !text_only(v),
                    }
                }
                Ok(out)
            }
            P::Arr(items) if self.lenient.field_list && items.len() == N => {
                for (o, v) in out.iter_mut().zip(items) {
                    *o = Some(v);
                }
                Ok(out)
            }
            _ => Err(()),
        }
    }

    fn answer(&mut self, top: &P) -> Result<Vec<S>, ()> {
        let [status, data] = self.fields(top, ["status", "data"])?;
        match status {
            Some(P::Str(Some(s))) if s == "success" => {}
            _ => return Err(()),
        }
        let [result_type, result] = self.fields(data.ok_or(())?, ["resultType", "result"])?;
        match result_type {
            Some(P::Str(Some(s))) if s == "vector" => {}
            _ => return Err(()),
        }
        let Some(P::Arr(items)) = result else {
            return Err(());
        };
        items.iter().map(|item| self.series(item)).collect()
    }

    fn series(&mut self, item: &P) -> Result<S, ()> {
        let [metric, value] = self.fields(item, ["metric", "value"])?;
        let Some(P::Obj(labels)) = metric else {
            return Err(());
        };
        let labels = labels
            .iter()
            .map(|(k, v)| match (k, v) {
                (Some(k), P::Str(Some(v))) => Ok((k.clone(), v.clone())),
                _ => Err(()),
            })
            .collect::<Result<Vec<_>, ()>>()?;
        let Some(P::Arr(pair)) = value else {
            return Err(());
        };
        match &pair[..] {
            [P::Num(t), P::Str(Some(v))] if t.is_finite() => {
                let v = prom_value(v, self.lenient).ok_or(())?;
                Ok((labels, v))
            }
            _ => Err(()),
        }
    }
}

/// Whether every string and key in `v` is text.
fn text_only(v: &P) -> bool {
    match v {
        P::Str(s) => s.is_some(),
        P::Arr(items) => items.iter().all(text_only),
        P::Obj(members) => members.iter().all(|(k, v)| k.is_some() && text_only(v)),
        _ => true,
    }
}

fn oracle(body: &[u8], lenient: Lenient) -> Want {
    let (top, deepest) = match parse_json(body) {
        Ok(parsed) => parsed,
        Err(Unparsed::Invalid) => return Want::Exactly(Err(())),
        Err(Unparsed::TooDeep) => return Want::Unknown,
    };
    let mut reading = Reading {
        lenient,
        may_refuse: deepest > DEPTH_ANY_READER_TAKES,
    };
    match reading.answer(&top) {
        Ok(series) if reading.may_refuse => Want::OrBad(series),
        read => Want::Exactly(read),
    }
}

fn same_value(a: f64, b: f64) -> bool {
    (a.is_nan() && b.is_nan())
        || (a == b && a.is_sign_negative() == b.is_sign_negative())
        // serde_json's default float parsing is within an ulp or two.
        || (a.is_finite() && b.is_finite() && a != 0.0 && (a - b).abs() <= a.abs() * 4.0 * f64::EPSILON)
}

fn same_series(got: &[Sample], want: &[S]) -> bool {
    got.len() == want.len()
        && got
            .iter()
            .zip(want)
            .all(|(g, (labels, v))| g.labels == *labels && same_value(g.value, *v))
}

fn satisfies(got: &Result<Vec<Sample>, PollFailure>, want: &Want) -> bool {
    match (got, want) {
        (Err(PollFailure::BadAnswer), Want::Exactly(Err(())) | Want::OrBad(_) | Want::Unknown) => {
            true
        }
        (Ok(g), Want::Exactly(Ok(w)) | Want::OrBad(w)) => same_series(g, w),
        (Ok(_), Want::Unknown) => true,
        _ => false,
    }
}

// ---------------------------------------------------------------------------
// The oracle: what an answer says of the rollouts of a poll.
// ---------------------------------------------------------------------------

#[derive(Debug, Default, PartialEq)]
struct Verdict {
    /// (rollout, failing bits), in the poll's order.
    failing: Vec<(usize, u32)>,
    ignored: Ignored,
    /// What the code is known to count besides in `unknown_version` (see
    /// `KNOWN`): a series without a `rollout` label counted once per version
    /// label of the poll it has that names no version.
    extra_unknown_version: u64,
}

fn label<'a>(labels: &'a [(String, String)], name: &str) -> Option<&'a str> {
    labels
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn oracle_apply(cfg: &MeshConfig, poll: &[usize], samples: &[S]) -> Verdict {
    let mut bits: HashMap<usize, u32> = HashMap::new();
    let mut v = Verdict::default();
    let version_in = |r: usize, labels: &[(String, String)]| {
        let named = label(labels, cfg.label(r))?;
        cfg.rollouts[r].versions.iter().position(|n| n == named)
    };
    for (labels, value) in samples {
        if *value == 0.0 {
            continue;
        }
        if !(value.is_finite() && *value > 0.0) {
            v.ignored.bad_value += 1;
            continue;
        }
        let named = if cfg.scoped {
            label(labels, "rollout")
        } else {
            None
        };
        match named {
            Some(name) => {
                let Some(&r) = poll.iter().find(|&&r| cfg.rollouts[r].name == name) else {
                    v.ignored.unknown_rollout += 1;
                    continue;
                };
                match version_in(r, labels) {
                    Some(i) => *bits.entry(r).or_default() |= 1 << i,
                    None => v.ignored.unknown_version += 1,
                }
            }
            None => {
                let mut used = false;
                for &r in poll {
                    if let Some(i) = version_in(r, labels) {
                        *bits.entry(r).or_default() |= 1 << i;
                        used = true;
                    }
                }
                if !used {
                    v.ignored.unknown_version += 1;
                }
                // KNOWN: the code counts each (version label, value) pair
                // that names no version of the rollouts reading that label.
                let mut distinct: Vec<&str> = poll.iter().map(|&r| cfg.label(r)).collect();
                distinct.dedup();
                distinct.sort_unstable();
                distinct.dedup();
                let unmatched = distinct
                    .iter()
                    .filter(|&&l| {
                        label(labels, l).is_some_and(|named| {
                            !poll.iter().any(|&r| {
                                cfg.label(r) == l
                                    && cfg.rollouts[r].versions.iter().any(|n| n == named)
                            })
                        })
                    })
                    .count() as u64;
                let any = distinct.iter().any(|&l| label(labels, l).is_some());
                let counted = if any { unmatched } else { 1 };
                v.extra_unknown_version += counted - u64::from(!used);
            }
        }
    }
    for &r in poll {
        let b = bits.get(&r).copied().unwrap_or(0) & !1;
        if b != 0 {
            v.failing.push((r, b));
        }
    }
    v
}

// ---------------------------------------------------------------------------
// Known differences, and what the run saw.
// ---------------------------------------------------------------------------

/// The code's known departures from the oracle (reported): each case that
/// shows one is checked against the code's behaviour instead, and counted.
const KNOWN: [&str; 3] = [
    "a value string with JSON whitespace around a number (\" 1\", \"1\\n\") is read as the number (serde_json::from_str trims it), not refused",
    "an answer, its data or a series written as the list of its fields' values ([\"success\", {...}]) is read as the object (serde's derived Deserialize takes a sequence)",
    "a series without a rollout label is counted in unknown_version once per version label of the poll it carries that names no version, even when another of its labels named a version it tripped",
];

fn strict() -> bool {
    std::env::var("FUZZ_STRICT").is_ok_and(|v| v != "0" && !v.is_empty())
}

static SEEN: [AtomicU64; 20] = [const { AtomicU64::new(0) }; 20];
const SEEN_NAMES: [&str; 20] = [
    "ok",
    "bad_answer",
    "too_large",
    "http_status",
    "no_answer",
    "ok or bad: bad",
    "past the oracle's depth",
    "prefixes",
    "applies",
    "rollouts tripped",
    "unknown_rollout",
    "unknown_version",
    "bad_value",
    "known 1 (padded value)",
    "known 2 (field list)",
    "known 3 (counted per label)",
    "series read",
    "answers with a duplicated label",
    "unbroken answers the oracle read as the model",
    "-",
];

fn seen(i: usize, n: u64) {
    SEEN[i].fetch_add(n, Ordering::Relaxed);
}

/// Per way an answer was made: (answers read, of which `Ok`).
static MADE: std::sync::Mutex<Vec<(&str, u64, u64)>> = std::sync::Mutex::new(Vec::new());

fn made(ways: &[&'static str], ok: bool) {
    let mut made = MADE.lock().unwrap();
    for &way in ways {
        match made.iter_mut().find(|(w, _, _)| *w == way) {
            Some(m) => {
                m.1 += 1;
                m.2 += u64::from(ok);
            }
            None => made.push((way, 1, u64::from(ok))),
        }
    }
}

// ---------------------------------------------------------------------------
// The checks.
// ---------------------------------------------------------------------------

/// One body read as the answer of a 200: checked against the oracle; `Ok`
/// applied. Returns the inputs tried, and whether it was `Ok`.
fn check_body(case: &MeshCase, config: &Config, body: &[u8]) -> (u64, bool) {
    let size = body.len();
    let got = mesh::read_answer(Some(b"200"), size, || Some(body.to_vec()));
    let want = oracle(body, Lenient::default());
    if !satisfies(&got, &want) {
        let known = [
            Lenient {
                padded_value: true,
                field_list: false,
            },
            Lenient {
                padded_value: false,
                field_list: true,
            },
            Lenient {
                padded_value: true,
                field_list: true,
            },
        ]
        .into_iter()
        .find(|&l| satisfies(&got, &oracle(body, l)));
        match known {
            Some(l) if !strict() => {
                if l.padded_value {
                    seen(13, 1);
                }
                if l.field_list {
                    seen(14, 1);
                }
            }
            _ => panic!(
                "read_answer: {:?}\noracle: {want:?}\nbody: {:?}",
                got.as_ref().map(|s| s.len()),
                Body(body.to_vec())
            ),
        }
    }
    match (&got, &want) {
        (Ok(_), _) => seen(0, 1),
        (Err(_), Want::OrBad(_)) => seen(5, 1),
        (Err(_), Want::Unknown) => seen(6, 1),
        _ => seen(1, 1),
    }
    let Ok(samples) = got else { return (1, false) };
    seen(16, samples.len() as u64);
    if samples.iter().any(|s| {
        s.labels
            .iter()
            .enumerate()
            .any(|(i, (k, _))| s.labels[..i].iter().any(|(o, _)| o == k))
    }) {
        seen(17, 1);
    }
    (1 + check_apply(case, config, &samples), true)
}

/// `mesh::apply` of `samples` to every poll of the config, against the
/// oracle, twice. Returns the applies made.
fn check_apply(case: &MeshCase, config: &Config, samples: &[Sample]) -> u64 {
    let cfg = &case.config;
    let as_oracle: Vec<S> = samples
        .iter()
        .map(|s| (s.labels.clone(), s.value))
        .collect();
    let polls = mesh::polls(config);
    let want_polls = cfg.polls();
    assert_eq!(
        polls
            .iter()
            .map(|p| (p.rollouts.clone(), p.interval_ms, p.timeout_ms))
            .collect::<Vec<_>>(),
        want_polls,
        "polls"
    );
    let keys: Vec<Keys> = cfg
        .rollouts
        .iter()
        .map(|r| Keys::new("p", cfg.scoped.then_some(r.name.as_str())))
        .collect();
    let generation = case.generation;
    let mut applies = 0;
    for poll in &polls {
        let want = oracle_apply(cfg, &poll.rollouts, &as_oracle);
        let store = MemoryStore::default();
        for &r in &poll.rollouts {
            if case.held_before[r] != 0 {
                let before = Held {
                    local: None,
                    mesh: case.held_before[r],
                };
                record_held(&store, &keys[r].held(), generation, before);
            }
        }
        let records = |i: usize| (!case.no_record[i]).then(|| (&keys[i], generation));
        for round in 0..2 {
            let got = mesh::apply(samples, poll, config, records, &store);
            applies += 1;
            let failing: Vec<(usize, u32)> = got
                .verdicts
                .iter()
                .map(|v| (v.rollout, v.failing))
                .collect();
            assert_eq!(
                failing, want.failing,
                "failing versions, poll {:?}",
                poll.rollouts
            );
            for v in &got.verdicts {
                let r = v.rollout;
                let added = if case.no_record[r] || round == 1 {
                    0
                } else {
                    v.failing & !case.held_before[r]
                };
                assert_eq!(v.added, added, "added, rollout {r}, round {round}");
            }
            if got.ignored != want.ignored {
                let mut known = want.ignored;
                known.unknown_version += want.extra_unknown_version;
                assert!(
                    got.ignored == known && want.extra_unknown_version > 0 && !strict(),
                    "ignored: {:?}, oracle {:?} (known extra {})",
                    got.ignored,
                    want.ignored,
                    want.extra_unknown_version
                );
                if round == 0 {
                    seen(15, 1);
                }
            }
            if round == 0 {
                seen(8, 2);
                seen(9, want.failing.len() as u64);
                seen(10, want.ignored.unknown_rollout);
                seen(11, want.ignored.unknown_version);
                seen(12, want.ignored.bad_value);
            }
        }
        // The held records: what was there, and what the answer named.
        for &r in &poll.rollouts {
            let named = want
                .failing
                .iter()
                .find(|(i, _)| *i == r)
                .map_or(0, |(_, b)| *b);
            let recorded = if case.no_record[r] { 0 } else { named };
            let held = held::read(&store, &keys[r].held(), generation);
            assert_eq!(
                held.mesh,
                case.held_before[r] | recorded,
                "held record of rollout {r}"
            );
            assert_eq!(held.local, None);
        }
    }
    applies
}

/// The three digits of a status Envoy passes, as the counter names it.
fn status_code(status: &[u8]) -> Option<u16> {
    if status.len() != 3 || !status.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let code = std::str::from_utf8(status).unwrap().parse::<u16>().unwrap();
    Some(if (100..600).contains(&code) { code } else { 0 })
}

fn check_answer(case: &MeshCase, config: &Config, a: &AnswerCase) -> u64 {
    let body = a.body.as_ref().map(|b| &b.0[..]);
    let size = a.size.unwrap_or_else(|| body.map_or(0, <[u8]>::len));
    let called = Cell::new(false);
    let got = mesh::read_answer(a.status.as_deref(), size, || {
        called.set(true);
        body.map(<[u8]>::to_vec)
    });
    let Some(status) = a.status.as_deref() else {
        assert_eq!(got, Err(PollFailure::NoAnswer));
        assert!(!called.get(), "the body of no answer was read");
        seen(4, 1);
        return 1;
    };
    if status != b"200" {
        match (status_code(status), &got) {
            (Some(code), _) => assert_eq!(got, Err(PollFailure::HttpStatus(code))),
            // Not three digits: Envoy never passes it; some code or 0.
            (None, Err(PollFailure::HttpStatus(c))) => {
                assert!(*c == 0 || (100..600).contains(c), "{c}")
            }
            (None, got) => panic!("{got:?} for status {status:?}"),
        }
        assert!(!called.get(), "the body of a {status:?} was read");
        seen(3, 1);
        return 1;
    }
    if size > MAX_ANSWER_BYTES {
        assert_eq!(got, Err(PollFailure::TooLarge));
        assert!(!called.get(), "a body over the bound was read");
        seen(2, 1);
        return 1;
    }
    assert!(called.get(), "the body was not read");
    let Some(body) = body else {
        assert_eq!(got, Err(PollFailure::BadAnswer), "no body from the host");
        seen(1, 1);
        return 1;
    };
    if let Some(series) = &a.pristine {
        let want: Vec<S> = series
            .iter()
            .map(|s| {
                (
                    s.labels.clone(),
                    prom_value(&s.value, Lenient::default()).unwrap(),
                )
            })
            .collect();
        match oracle(body, Lenient::default()) {
            Want::Exactly(Ok(read)) if read.len() == want.len() => {
                for (r, w) in read.iter().zip(&want) {
                    assert!(
                        r.0 == w.0 && same_value(r.1, w.1),
                        "the oracle misread {r:?} as {w:?}"
                    );
                }
            }
            other => panic!("the oracle misread the model's answer: {other:?}"),
        }
        seen(18, 1);
    }
    let (mut tried, ok) = check_body(case, config, body);
    made(&a.made, ok);
    if a.every_prefix {
        for cut in 0..body.len() {
            tried += check_body(case, config, &body[..cut]).0;
        }
        seen(7, body.len() as u64);
    }
    tried
}

#[test]
fn mesh_answer() {
    run("mesh_answer", gen_case, |case| {
        let config = Config::from_json(case.config_json.as_bytes()).unwrap_or_else(|e| {
            panic!("the generated config is refused: {e}\n{}", case.config_json)
        });
        // The model's series as they are, and through each answer.
        let samples: Vec<Sample> = case
            .series
            .iter()
            .map(|s| Sample {
                labels: s.labels.clone(),
                value: prom_value(&s.value, Lenient::default()).unwrap(),
            })
            .collect();
        let mut tried = check_apply(case, &config, &samples);
        for a in &case.answers {
            tried += check_answer(case, &config, a);
        }
        tried
    });
    let counts: Vec<String> = SEEN_NAMES
        .iter()
        .zip(&SEEN)
        .filter(|(name, _)| **name != "-")
        .map(|(name, n)| format!("{name} {}", n.load(Ordering::Relaxed)))
        .collect();
    eprintln!("fuzz mesh_answer outcomes: {}", counts.join(", "));
    let ways: Vec<String> = MADE
        .lock()
        .unwrap()
        .iter()
        .map(|(way, n, ok)| format!("{way} {ok}/{n}"))
        .collect();
    eprintln!(
        "fuzz mesh_answer answers read Ok, by how they were made: {}",
        ways.join(", ")
    );
    for (i, what) in KNOWN.iter().enumerate() {
        let n = SEEN[13 + i].load(Ordering::Relaxed);
        if n > 0 {
            eprintln!(
                "fuzz mesh_answer: known difference {} ({n} cases): {what}",
                i + 1
            );
        }
    }
}
