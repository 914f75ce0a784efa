//! Target `config_mutated`: valid configs with structural mutations; whatever
//! is accepted must be within bounds.

use super::*;

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
