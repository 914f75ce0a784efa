//! Target `rollout_scope`: which rollout takes a request, against a linear
//! oracle of the precedence.

use super::*;

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
    let prefixes = [
        "/",
        "/v1",
        "/v1/",
        "/v1/models",
        "/v1/models/",
        "/v2",
        "/v1/models/a",
    ];
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
                    format!(
                        "{}{}",
                        rng.pick(&prefixes),
                        rng.pick(&["", "/x", "s", ":predict", "?q=/x", "s?q=/", "//"])
                    )
                    .into_bytes(),
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
            // A trailing `/` is ignored, as Gateway API's PathPrefix does.
            let prefixes: Vec<String> = if paths.is_empty() {
                vec![String::new()]
            } else {
                paths.iter().map(|p| oracle_prefix(p)).collect()
            };
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
            // The CLI's list of the patterns matching the host starts with
            // the one the filter looks up.
            let index = config.index.as_ref().unwrap();
            let first = index
                .matching(host)
                .next()
                .map(config::HostRollouts::pattern);
            assert_eq!(first, index.lookup(host).map(config::HostRollouts::pattern));
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
                                || path.as_deref().is_some_and(|p| oracle_takes(prefix, p)))
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

/// A prefix as the docs say it is compared: without a trailing `/`, but `/`.
fn oracle_prefix(written: &str) -> String {
    match written.trim_end_matches('/') {
        "" => "/".into(),
        trimmed => trimmed.into(),
    }
}

/// docs/many-models.md: the path without its query equals the prefix or
/// goes on after it with `/` or `:`; `/` takes every path.
fn oracle_takes(prefix: &str, path: &[u8]) -> bool {
    let path = String::from_utf8_lossy(path);
    let path = path.split('?').next().unwrap_or_default();
    if prefix == "/" {
        return path.starts_with('/');
    }
    path == prefix
        || path.starts_with(&format!("{prefix}/"))
        || path.starts_with(&format!("{prefix}:"))
}
