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
//! Any reading or apply other than the oracle's fails the case.
//!
//! The files: `config.rs` the generated config and its polls,
//! `generate.rs` the series and the answers made of them (`json.rs` the
//! JSON tree they are built and written as, `mutate.rs` how one is broken),
//! `parse.rs` and `oracle.rs` the oracle (its JSON parser; the API's answer
//! and the verdict of a poll), `check.rs` the code against the oracle.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use canary_selector::config::Config;
use canary_selector::mesh::Sample;

use crate::runner::{run, Rng};

mod check;
mod config;
mod generate;
mod json;
mod mutate;
mod oracle;
mod parse;

#[test]
fn mesh_answer() {
    run("mesh_answer", generate::gen_case, |case| {
        let config = Config::from_json(case.config_json.as_bytes()).unwrap_or_else(|e| {
            panic!("the generated config is refused: {e}\n{}", case.config_json)
        });
        // The model's series as they are, and through each answer.
        let samples: Vec<Sample> = case
            .series
            .iter()
            .map(|s| Sample {
                labels: s.labels.clone(),
                value: oracle::prom_value(&s.value).unwrap(),
            })
            .collect();
        let mut tried = check::check_apply(case, &config, &samples);
        for a in &case.answers {
            tried += check::check_answer(case, &config, a);
        }
        tried
    });
    let counts: Vec<String> = Seen::NAMES
        .iter()
        .zip(&SEEN)
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
}

fn shuffle<T>(rng: &mut Rng, items: &mut [T]) {
    for i in (1..items.len()).rev() {
        items.swap(i, rng.below(i + 1));
    }
}

// ---------------------------------------------------------------------------
// What the run saw, printed after it: that the generator reaches each
// outcome, not just that none failed.
// ---------------------------------------------------------------------------

#[derive(Clone, Copy)]
enum Seen {
    Ok,
    BadAnswer,
    TooLarge,
    HttpStatus,
    NoAnswer,
    /// `BadAnswer` where the oracle allows it besides its series.
    BadWhereAllowed,
    PastOracleDepth,
    Prefixes,
    Applies,
    RolloutsTripped,
    UnknownRollout,
    UnknownVersion,
    BadValue,
    SeriesRead,
    DuplicatedLabel,
    PristineRead,
}

impl Seen {
    /// In the order of the variants.
    const NAMES: [&str; 16] = [
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
        "series read",
        "answers with a duplicated label",
        "unbroken answers the oracle read as the model",
    ];
}

static SEEN: [AtomicU64; Seen::NAMES.len()] = [const { AtomicU64::new(0) }; Seen::NAMES.len()];

fn seen(what: Seen, n: u64) {
    SEEN[what as usize].fetch_add(n, Ordering::Relaxed);
}

/// Per way an answer was made: (answers read, of which `Ok`).
static MADE: Mutex<Vec<(&str, u64, u64)>> = Mutex::new(Vec::new());

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
