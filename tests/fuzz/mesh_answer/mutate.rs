//! Breaking an answer: as a tree (a node of another type, members missing
//! or duplicated, other result types, an error status, deep nesting, lone
//! surrogates, odd values and times, `value` of another arity, an object as
//! a list, extra members), or as bytes.

use super::json::{s, small_value, EXTRA_KEYS, J, RAW_KEY};
use crate::runner::Rng;

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

/// An answer, its `data` or a series written as the list of its fields'
/// values in the reader's order: what serde's derived `Deserialize` would
/// read as the struct, and the API never writes.
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

/// Value strings Prometheus never writes.
const ODD_VALUES: &[&str] = &[
    " 1", "1 ", "\t1\n", "\r\n0 ", " -0.5", "2\n", "\t+Inf", "Inf", "inf", "+1", "1.", ".5",
    "0x10", "", "nan", "+NaN", "1e400", "-1e400", "Infinity", "-nan", "1e", "--1", "1_0", "٣",
    "１", "0001", "-", "+", "1e+", "NaN ", " NaN", "+inf", "1\u{a0}", "1,5", "true", "null",
    "\"1\"",
];

const DEPTHS: &[usize] = &[
    5, 60, 95, 99, 100, 101, 126, 127, 128, 129, 200, 399, 400, 401, 5000, 100_000,
];

/// What the mutation did, for the outcome counts.
pub(super) fn mutate_tree(rng: &mut Rng, top: &mut J) -> &'static str {
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
