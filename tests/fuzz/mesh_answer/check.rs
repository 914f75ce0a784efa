//! The code against the oracle: each answer read, each reading applied to
//! every poll of the config.

use std::cell::Cell;

use canary_selector::config::Config;
use canary_selector::mesh::{self, PollFailure, Sample, MAX_ANSWER_BYTES};
use canary_selector::shared::held::{self, record_held, Held};
use canary_selector::shared::{Keys, MemoryStore};

use super::generate::{AnswerCase, Body, MeshCase};
use super::oracle::{oracle, oracle_apply, prom_value, same_value, satisfies, Want, S};
use super::{made, seen, Seen};

/// One body read as the answer of a 200: checked against the oracle; `Ok`
/// applied. Returns the inputs tried, and whether it was `Ok`.
fn check_body(case: &MeshCase, config: &Config, body: &[u8]) -> (u64, bool) {
    let size = body.len();
    let got = mesh::read_answer(Some(b"200"), size, || Some(body.to_vec()));
    let want = oracle(body);
    assert!(
        satisfies(&got, &want),
        "read_answer: {:?}\noracle: {want:?}\nbody: {:?}",
        got.as_ref().map(|s| s.len()),
        Body(body.to_vec())
    );
    match (&got, &want) {
        (Ok(_), _) => seen(Seen::Ok, 1),
        (Err(_), Want::OrBad(_)) => seen(Seen::BadWhereAllowed, 1),
        (Err(_), Want::Unknown) => seen(Seen::PastOracleDepth, 1),
        _ => seen(Seen::BadAnswer, 1),
    }
    let Ok(samples) = got else { return (1, false) };
    seen(Seen::SeriesRead, samples.len() as u64);
    if samples.iter().any(|s| {
        s.labels
            .iter()
            .enumerate()
            .any(|(i, (k, _))| s.labels[..i].iter().any(|(o, _)| o == k))
    }) {
        seen(Seen::DuplicatedLabel, 1);
    }
    (1 + check_apply(case, config, &samples), true)
}

/// `mesh::apply` of `samples` to every poll of the config, against the
/// oracle, twice. Returns the applies made.
pub(super) fn check_apply(case: &MeshCase, config: &Config, samples: &[Sample]) -> u64 {
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
            assert_eq!(
                got.ignored, want.ignored,
                "ignored, poll {:?}, round {round}",
                poll.rollouts
            );
            if round == 0 {
                seen(Seen::Applies, 2);
                seen(Seen::RolloutsTripped, want.failing.len() as u64);
                seen(Seen::UnknownRollout, want.ignored.unknown_rollout);
                seen(Seen::UnknownVersion, want.ignored.unknown_version);
                seen(Seen::BadValue, want.ignored.bad_value);
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

pub(super) fn check_answer(case: &MeshCase, config: &Config, a: &AnswerCase) -> u64 {
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
        seen(Seen::NoAnswer, 1);
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
        seen(Seen::HttpStatus, 1);
        return 1;
    }
    if size > MAX_ANSWER_BYTES {
        assert_eq!(got, Err(PollFailure::TooLarge));
        assert!(!called.get(), "a body over the bound was read");
        seen(Seen::TooLarge, 1);
        return 1;
    }
    assert!(called.get(), "the body was not read");
    let Some(body) = body else {
        assert_eq!(got, Err(PollFailure::BadAnswer), "no body from the host");
        seen(Seen::BadAnswer, 1);
        return 1;
    };
    if let Some(series) = &a.pristine {
        let want: Vec<S> = series
            .iter()
            .map(|s| (s.labels.clone(), prom_value(&s.value).unwrap()))
            .collect();
        match oracle(body) {
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
        seen(Seen::PristineRead, 1);
    }
    let (mut tried, ok) = check_body(case, config, body);
    made(&a.made, ok);
    if a.every_prefix {
        for cut in 0..body.len() {
            tried += check_body(case, config, &body[..cut]).0;
        }
        seen(Seen::Prefixes, body.len() as u64);
    }
    tried
}
