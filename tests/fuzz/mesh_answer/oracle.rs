//! The oracle, written from the documentation: what an answer of the API
//! must read as, and what a reading says of the rollouts of a poll.

use std::collections::HashMap;

use canary_selector::mesh::{Ignored, PollFailure, Sample};

use super::config::MeshConfig;
use super::parse::{parse_json, Unparsed, DEPTH_ANY_READER_TAKES, P};

// ---------------------------------------------------------------------------
// The API's answer.
// ---------------------------------------------------------------------------

/// A series as the oracle reads it.
pub(super) type S = (Vec<(String, String)>, f64);

/// What the answer must read as.
#[derive(Debug)]
pub(super) enum Want {
    Exactly(Result<Vec<S>, ()>),
    /// These series, or `BadAnswer`.
    OrBad(Vec<S>),
    /// `Ok` of anything or `BadAnswer` (nesting past the oracle's parser).
    Unknown,
}

/// A float as Prometheus writes it: `NaN`, `+Inf`, `-Inf`, or a finite
/// number in JSON's syntax.
pub(super) fn prom_value(text: &str) -> Option<f64> {
    match text {
        "NaN" => return Some(f64::NAN),
        "+Inf" => return Some(f64::INFINITY),
        "-Inf" => return Some(f64::NEG_INFINITY),
        _ => {}
    }
    // The parser takes whitespace around a value; Prometheus writes none.
    if text.trim_matches([' ', '\t', '\n', '\r']) != text {
        return None;
    }
    match parse_json(text.as_bytes()) {
        Ok((P::Num(v), _)) if v.is_finite() => Some(v),
        _ => None,
    }
}

struct Reading {
    /// Something a reader may refuse: a lone surrogate in an ignored member.
    may_refuse: bool,
}

impl Reading {
    /// The members `fields` of an object (each at most once; every key must
    /// be text, as a reader reads each to know whether it wants it); the
    /// others are ignored whatever they hold. Not an object: not read.
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
                let v = prom_value(v).ok_or(())?;
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

pub(super) fn oracle(body: &[u8]) -> Want {
    let (top, deepest) = match parse_json(body) {
        Ok(parsed) => parsed,
        Err(Unparsed::Invalid) => return Want::Exactly(Err(())),
        Err(Unparsed::TooDeep) => return Want::Unknown,
    };
    let mut reading = Reading {
        may_refuse: deepest > DEPTH_ANY_READER_TAKES,
    };
    match reading.answer(&top) {
        Ok(series) if reading.may_refuse => Want::OrBad(series),
        read => Want::Exactly(read),
    }
}

pub(super) fn same_value(a: f64, b: f64) -> bool {
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

pub(super) fn satisfies(got: &Result<Vec<Sample>, PollFailure>, want: &Want) -> bool {
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
// What an answer says of the rollouts of a poll.
// ---------------------------------------------------------------------------

#[derive(Debug, Default, PartialEq)]
pub(super) struct Verdict {
    /// (rollout, failing bits), in the poll's order.
    pub(super) failing: Vec<(usize, u32)>,
    pub(super) ignored: Ignored,
}

fn label<'a>(labels: &'a [(String, String)], name: &str) -> Option<&'a str> {
    labels
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

pub(super) fn oracle_apply(cfg: &MeshConfig, poll: &[usize], samples: &[S]) -> Verdict {
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
