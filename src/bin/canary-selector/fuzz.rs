//! Fuzz target `cli_scope`: what the CLI says about hosts and paths against
//! what the filter does, on random configs with `rollouts` over a small
//! alphabet of host labels (so that patterns overlap and nest) and path
//! prefixes that nest by segment:
//!
//! - `explain`, given `--host` and `--path` (ports, letter case, trailing
//!   dots, IPv6, hosts around the filter's 255-byte cap, queries, `:verb`s),
//!   names the rollout that `Config::rollout_for` gives the request, the
//!   pattern and the prefix that took it and the less specific patterns
//!   passed over (against a linear oracle of the precedence), and for a
//!   request no rollout takes, the routing headers the filter removes
//!   (`Config::unclaimed_removes`) or passes;
//! - `check`'s `Patterns::takes_some` says that a route's host (a name in
//!   any spelling, `*.suffix` or `*`) reaches a pattern exactly when the
//!   filter takes some host the route stands for to that pattern;
//! - `check`'s shadowing warning names, for each rollout, exactly the
//!   patterns that the filter takes some of the rollout's hosts to instead;
//! - `diff` says where the other config sends the requests of a rollout
//!   added or removed: exactly the rollouts (or none) the filter gives them
//!   there.
//!
//! "Some host" means some host of a finite universe: every name of one to
//! three labels of the alphabet and of one more label that no pattern lists
//! (a longer or other name is taken as one of these is); paths likewise.
//!
//! Where it runs: the CLI is a binary crate, which tests/fuzz/ cannot call
//! into, so this target is a test inside the binary. It calls `explain` and
//! `diff` where `main` does, past the reading of files, and reads their
//! `-o json` answers; `check`'s `Patterns::takes_some` and `shadowed`
//! directly. It runs on the seeded runner of tests/fuzz/ (included by path):
//! `FUZZ_SEED`,
//! `FUZZ_CASES`, `FUZZ_SECONDS` and `FUZZ_CASE` work as for the other
//! targets. `cargo test --features cli` runs its short pass with the
//! binary's tests; `make fuzz` runs it for `FUZZ_SECONDS` after the others.

use serde_json::{json, Value};

use canary_selector::config::{authority_host, Config, HostRollouts, MAX_AUTHORITY_HOST_LEN};

use crate::diff::diff;
use crate::explain::{explain_request, RequestArgs};
use crate::hosts::{shadowed, Patterns};
use crate::input::PluginConfig;
use crate::{At, Report};

#[path = "../../../tests/fuzz/runner.rs"]
mod runner;
use runner::{run, Rng};

/// The labels patterns are made of.
const LABELS: &[&str] = &["a", "b", "models", "x-1"];
/// A label no pattern lists: it stands for every other label (the CLI's
/// probe labels `0`, `1`, ... among them).
const FRESH: &str = "zz";
const PREFIXES: &[&str] = &[
    "/",
    "/v1",
    "/v1/",
    "/v1/models",
    "/v1/models/",
    "/v1/models/a",
    "/v2",
];
/// What follows a prefix in a request's path.
const PATH_ENDS: &[&str] = &["", "/x", "s", ":predict", "?q=/x", "s?q=/", "//"];

#[derive(Debug)]
struct ScopeCase {
    /// Two configs with `rollouts`, as written.
    old: Value,
    new: Value,
    /// `--host` and `--path` of the requests explained against `new`.
    requests: Vec<(Option<String>, Option<String>)>,
    /// Route hosts, as a VirtualService or HTTPRoute may write them.
    route_hosts: Vec<String>,
}

fn name(rng: &mut Rng, labels: &[&str], most: usize) -> String {
    let n = rng.range(1, most);
    let picked: Vec<&str> = (0..n).map(|_| rng.pick(labels)).collect();
    picked.join(".")
}

fn pattern(rng: &mut Rng) -> String {
    match rng.below(6) {
        0 => "*".into(),
        1 | 2 => format!("*.{}", name(rng, LABELS, 2)),
        _ => name(rng, LABELS, 2),
    }
}

/// `text` with random letters in upper case.
fn spelled(rng: &mut Rng, text: &str) -> String {
    text.chars()
        .map(|c| {
            if rng.one_in(3) {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect()
}

/// A prefix as the docs say it is compared: without a trailing `/`, but `/`.
fn oracle_prefix(written: &str) -> String {
    match written.trim_end_matches('/') {
        "" => "/".into(),
        trimmed => trimmed.into(),
    }
}

/// A config with `rollouts` whose host patterns and prefixes claim each
/// pair once (anything else is rejected, which the other targets test).
fn gen_config(rng: &mut Rng) -> Value {
    let mut claimed: Vec<(String, String)> = Vec::new();
    let mut entries = Vec::new();
    for i in 0..rng.range(1, 6) {
        let mut prefixes: Vec<&str> = Vec::new();
        if rng.one_in(2) {
            for _ in 0..rng.range(1, 2) {
                let prefix = rng.pick(PREFIXES);
                if prefixes
                    .iter()
                    .all(|p| oracle_prefix(p) != oracle_prefix(prefix))
                {
                    prefixes.push(prefix);
                }
            }
        }
        let compared: Vec<String> = match prefixes.as_slice() {
            [] => vec![String::new()],
            written => written.iter().map(|p| oracle_prefix(p)).collect(),
        };
        let mut hosts: Vec<String> = Vec::new();
        for _ in 0..rng.range(1, 3) {
            let host = pattern(rng);
            let clash = hosts.contains(&host)
                || compared
                    .iter()
                    .any(|p| claimed.contains(&(host.clone(), p.clone())));
            if !clash {
                hosts.push(host);
            }
        }
        if hosts.is_empty() {
            continue;
        }
        for host in &hosts {
            for prefix in &compared {
                claimed.push((host.clone(), prefix.clone()));
            }
        }
        let written: Vec<String> = hosts.iter().map(|h| spelled(rng, h)).collect();
        let mut entry = json!({
            "name": format!("r{i}"),
            "hosts": written,
            "versions": [{"name": format!("r{i}-v1"), "weight": 100}],
        });
        if !prefixes.is_empty() {
            entry["pathPrefixes"] = json!(prefixes);
        }
        if rng.one_in(3) {
            entry["routingHeader"] = json!(rng.pick(&["x-route", "X-Canary-Version", "x-model"]));
        }
        entries.push(entry);
    }
    let mut config = json!({ "rollouts": entries });
    if rng.one_in(4) {
        config["passUnclaimedRoutingHeaders"] = json!(rng.one_in(2));
    }
    config
}

fn gen_case(rng: &mut Rng) -> ScopeCase {
    let all_labels = [LABELS, &[FRESH]].concat();
    let requests = (0..20)
        .map(|_| {
            let authority = match rng.below(10) {
                0 => None,
                1 => Some("[::1]:8080".to_string()),
                2 => Some(String::new()),
                3 => {
                    // Around the filter's cap: a longer host matches only `*`.
                    let tail = name(rng, LABELS, 2);
                    let long = MAX_AUTHORITY_HOST_LEN - tail.len() + rng.range(0, 3) - 2;
                    Some(format!("{}.{tail}", "h".repeat(long)))
                }
                _ => {
                    let host = name(rng, &all_labels, 3);
                    let mut host = spelled(rng, &host);
                    match rng.below(4) {
                        0 => host.push_str(":8080"),
                        1 => host.push('.'),
                        _ => {}
                    }
                    Some(host)
                }
            };
            let path = match rng.below(8) {
                0 => None,
                1 => Some("*".to_string()),
                _ => Some(format!("{}{}", rng.pick(PREFIXES), rng.pick(PATH_ENDS))),
            };
            (authority, path)
        })
        .collect();
    let route_hosts = (0..10)
        .map(|_| match rng.below(6) {
            0 => "*".to_string(),
            1 | 2 => {
                let wildcard = format!("*.{}", name(rng, &all_labels, 2));
                spelled(rng, &wildcard)
            }
            _ => {
                let host = name(rng, &all_labels, 3);
                let mut host = spelled(rng, &host);
                if rng.one_in(4) {
                    host.push('.');
                }
                host
            }
        })
        .collect();
    ScopeCase {
        old: gen_config(rng),
        new: gen_config(rng),
        requests,
        route_hosts,
    }
}

/// Whether `pattern` (or a route's host: a name, `*.suffix` or `*`,
/// normalized) matches `host`, as the docs say.
fn oracle_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix('*') {
        Some("") => true,
        Some(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
        None => host == pattern,
    }
}

/// A host as the docs say it is matched: no port, no trailing dot,
/// lowercase; none if empty or longer than the filter reads.
fn oracle_host(authority: &str) -> Option<String> {
    let host = match authority.strip_prefix('[') {
        Some(rest) => match rest.find(']') {
            Some(end) => &authority[..end + 2],
            None => authority,
        },
        None => authority.split(':').next().unwrap_or_default(),
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    (!host.is_empty() && host.len() <= MAX_AUTHORITY_HOST_LEN).then(|| host.to_ascii_lowercase())
}

/// How specifically `pattern` matches `host`: an exact name beats the
/// longest wildcard suffix beats `*`; `None` if it does not match.
fn oracle_specificity(pattern: &str, host: Option<&str>) -> Option<(u8, usize)> {
    if pattern == "*" {
        return Some((0, 0));
    }
    let host = host?;
    match pattern.strip_prefix('*') {
        Some(suffix) => oracle_matches(pattern, host).then_some((1, suffix.len())),
        None => (host == pattern).then_some((2, 0)),
    }
}

/// docs/many-models.md: the path without its query equals the prefix or
/// goes on after it with `/` or `:`; `/` takes every path.
fn oracle_takes(prefix: &str, path: &str) -> bool {
    let path = path.split('?').next().unwrap_or_default();
    if prefix == "/" {
        return path.starts_with('/');
    }
    path == prefix
        || path.starts_with(&format!("{prefix}/"))
        || path.starts_with(&format!("{prefix}:"))
}

/// The rollout the filter gives a request.
fn filter_rollout(config: &Config, host: &str, path: &str) -> Option<usize> {
    let mut buf = [0u8; MAX_AUTHORITY_HOST_LEN];
    let host = authority_host(host.as_bytes(), &mut buf);
    config.rollout_for(host, || Some(path.as_bytes()))
}

/// The pattern the filter takes a host to.
fn filter_pattern<'c>(config: &'c Config, host: &str) -> Option<&'c str> {
    let mut buf = [0u8; MAX_AUTHORITY_HOST_LEN];
    let host = authority_host(host.as_bytes(), &mut buf);
    config
        .index
        .as_ref()?
        .lookup(host)
        .map(HostRollouts::pattern)
}

fn plugin(config: &Value) -> PluginConfig {
    PluginConfig {
        file: "c.json".into(),
        resource: None,
        json: config.to_string(),
        target_gateways: Vec::new(),
        undeliverable: None,
    }
}

fn sorted(mut list: Vec<String>) -> Vec<String> {
    list.sort();
    list.dedup();
    list
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// `explain` against the filter and the oracle; returns the requests tried.
fn check_explain(
    config: &Config,
    written: &Value,
    requests: &[(Option<String>, Option<String>)],
) -> u64 {
    let at = At { text: None, ms: 0 };
    let listed = Patterns::of(config).unwrap().listed;
    // (pattern, prefix as compared, rollout), as the oracle's index.
    let mut claims: Vec<(&str, &str, usize)> = Vec::new();
    for (i, rollout) in config.rollouts.iter().enumerate() {
        let scope = rollout.scope.as_ref().unwrap();
        for host in &scope.hosts {
            if scope.path_prefixes.is_empty() {
                claims.push((host, "", i));
            }
            for prefix in &scope.path_prefixes {
                claims.push((host, prefix, i));
            }
        }
    }
    for (authority, path) in requests {
        let headers = ["x-user-id: u".to_string()];
        let args = RequestArgs {
            headers: &headers,
            cookies: &[],
            host: authority.as_deref(),
            path: path.as_deref(),
            body: None,
        };
        let e = explain_request(&plugin(written), &args, at.clone()).unwrap();
        let got = serde_json::to_value(&e).unwrap();
        let asked = format!("{authority:?} {path:?} in {written}");
        let host = authority.as_deref().and_then(oracle_host);
        // The filter's answer.
        let mut buf = [0u8; MAX_AUTHORITY_HOST_LEN];
        let filter_host = authority
            .as_deref()
            .and_then(|a| authority_host(a.as_bytes(), &mut buf));
        let want = config.rollout_for(filter_host, || path.as_deref().map(str::as_bytes));
        let pick = &got["rollout"];
        assert_eq!(pick["index"].as_u64().map(|i| i as usize), want, "{asked}");
        // The oracle's: the most specific pattern, then its longest prefix.
        let mut matching: Vec<((u8, usize), &str)> = listed
            .iter()
            .filter_map(|p| Some((oracle_specificity(p, host.as_deref())?, *p)))
            .collect();
        matching.sort_by_key(|&(specificity, _)| std::cmp::Reverse(specificity));
        let best = matching.first().map(|&(_, p)| p);
        assert_eq!(pick["pattern"].as_str(), best, "{asked}");
        let passed_over: Vec<&str> = matching.iter().skip(1).map(|&(_, p)| p).collect();
        assert_eq!(strings(&pick["passedOver"]), passed_over, "{asked}");
        let taker = claims
            .iter()
            .filter(|(h, prefix, _)| {
                Some(*h) == best
                    && (prefix.is_empty()
                        || path.as_deref().is_some_and(|p| oracle_takes(prefix, p)))
            })
            .max_by_key(|(_, prefix, _)| prefix.len());
        assert_eq!(taker.map(|t| t.2), want, "the oracle: {asked}");
        let text = e.text();
        match taker {
            Some(&(_, prefix, i)) => {
                let name = config.rollouts[i].name().unwrap();
                assert_eq!(pick["name"], name, "{asked}");
                let prefix = (!prefix.is_empty()).then_some(prefix);
                assert_eq!(pick["pathPrefix"].as_str(), prefix, "{asked}");
                assert_ne!(got["reason"], "unclaimed", "{asked}");
                assert!(
                    text.starts_with(&format!("rollout {name} (rollouts[{i}]): ")),
                    "{text}"
                );
            }
            None => {
                assert_eq!(got["reason"], "unclaimed", "{asked}");
                let removed = strings(&got["unclaimed"]["removed"]);
                assert_eq!(removed, config.unclaimed_removes, "{asked}");
                let passed = strings(&got["unclaimed"]["passedAsSent"]);
                let pass = written["passUnclaimedRoutingHeaders"] == true;
                assert_eq!(removed.is_empty(), pass, "{asked}");
                assert_eq!(passed.is_empty(), !pass, "{asked}");
                let routing: Vec<String> = config
                    .rollouts
                    .iter()
                    .map(|r| r.routing_header.clone())
                    .collect();
                assert_eq!(
                    sorted([removed, passed].concat()),
                    sorted(routing),
                    "{asked}"
                );
                assert!(text.starts_with("no rollout: "), "{text}");
                for header in &config.unclaimed_removes {
                    assert!(text.contains(header.as_str()), "{text}");
                }
            }
        }
    }
    requests.len() as u64
}

/// Every host of the universe: one to three labels.
fn universe() -> Vec<String> {
    let labels = [LABELS, &[FRESH]].concat();
    let mut hosts: Vec<String> = Vec::new();
    let mut shorter: Vec<String> = labels.iter().map(|l| l.to_string()).collect();
    for _ in 0..3 {
        hosts.extend(shorter.iter().cloned());
        shorter = shorter
            .iter()
            .flat_map(|h| labels.iter().map(move |l| format!("{l}.{h}")))
            .collect();
    }
    hosts
}

/// Every path of the universe: one of each way a path goes on after a
/// prefix (the prefix itself, a segment, a `:verb`, a longer segment), and
/// two no prefix takes.
fn paths() -> Vec<String> {
    PREFIXES
        .iter()
        .flat_map(|p| ["", "/x", ":predict", "s"].map(|end| format!("{p}{end}")))
        .chain(["/other".to_string(), "*".to_string()])
        .collect()
}

/// `check`'s route hosts and shadowing warning against the filter on the
/// universe; returns the answers checked.
fn check_patterns(config: &Config, route_hosts: &[String], universe: &[String]) -> u64 {
    let patterns = Patterns::of(config).unwrap();
    let taken: Vec<(&str, Option<&str>)> = universe
        .iter()
        .map(|h| (h.as_str(), filter_pattern(config, h)))
        .collect();
    let mut checked = 0;
    for route_host in route_hosts {
        let normal = route_host
            .strip_suffix('.')
            .unwrap_or(route_host)
            .to_ascii_lowercase();
        for pattern in &patterns.listed {
            let truth = taken
                .iter()
                .any(|(h, p)| oracle_matches(&normal, h) && *p == Some(*pattern));
            assert_eq!(
                patterns.takes_some(pattern, route_host),
                truth,
                "route host {route_host:?}, pattern {pattern:?}, patterns {:?}",
                patterns.listed
            );
            checked += 1;
        }
    }
    let found = shadowed(config);
    for (i, rollout) in config.rollouts.iter().enumerate() {
        let own = &rollout.scope.as_ref().unwrap().hosts;
        let truth: Vec<String> = sorted(
            taken
                .iter()
                .filter(|(h, _)| own.iter().any(|w| oracle_matches(w, h)))
                .filter_map(|(_, p)| *p)
                .filter(|p| !own.iter().any(|w| w == p))
                .map(str::to_string)
                .collect(),
        );
        let warned = found.iter().find(|s| s.rollout == i);
        let covered: Vec<String> = sorted(
            warned
                .map(|s| s.covered.iter().map(|c| c.pattern.clone()).collect())
                .unwrap_or_default(),
        );
        assert_eq!(
            covered, truth,
            "rollout {i}, patterns {:?}",
            patterns.listed
        );
        for c in warned.iter().flat_map(|s| &s.covered) {
            assert!(own.contains(&c.within), "{c:?}");
            let holders: Vec<usize> = config
                .rollouts
                .iter()
                .enumerate()
                .filter(|(_, r)| r.scope.as_ref().unwrap().hosts.contains(&c.pattern))
                .map(|(j, _)| j)
                .collect();
            let takers: Vec<usize> = c.taken_by.iter().map(|t| t.rollout).collect();
            assert_eq!(takers, holders, "{c:?}");
            let every_path = c.taken_by.iter().any(|t| t.path_prefixes.is_empty());
            assert_eq!(c.other_paths_unclaimed, !every_path, "{c:?}");
        }
        checked += 1;
    }
    checked
}

/// `diff`'s where an added or removed rollout's requests went, against the
/// filter on the universe; returns the rollouts checked.
fn check_elsewhere(case: &ScopeCase, old: &Config, new: &Config, universe: &[String]) -> u64 {
    let at = At { text: None, ms: 0 };
    let report =
        serde_json::to_value(diff(&plugin(&case.old), &plugin(&case.new), &at, true)).unwrap();
    let index =
        |config: &Config, name: &str| config.rollouts.iter().position(|r| r.name() == Some(name));
    let paths = paths();
    let mut checked = 0;
    for change in report["rollouts"].as_array().unwrap() {
        let name = change["name"].as_str().unwrap();
        let (own, other) = match change["status"].as_str() {
            Some("added") => (new, old),
            Some("removed") => (old, new),
            _ => continue,
        };
        let rollout = index(own, name).unwrap();
        let mut went: Vec<String> = Vec::new();
        let mut unclaimed = false;
        for host in universe {
            // The hosts its own config takes to one of its patterns.
            let own_pattern = filter_pattern(own, host);
            if !own.rollouts[rollout]
                .scope
                .as_ref()
                .unwrap()
                .hosts
                .iter()
                .any(|p| Some(p.as_str()) == own_pattern)
            {
                continue;
            }
            for path in &paths {
                if filter_rollout(own, host, path) != Some(rollout) {
                    continue;
                }
                match filter_rollout(other, host, path) {
                    Some(j) => went.push(other.rollouts[j].name().unwrap().to_string()),
                    None => unclaimed = true,
                }
            }
        }
        let elsewhere = &change["elsewhere"];
        assert_eq!(
            (
                sorted(strings(&elsewhere["rollouts"])),
                elsewhere["unclaimed"].as_bool()
            ),
            (sorted(went), Some(unclaimed)),
            "{} rollout {name}",
            change["status"]
        );
        checked += 1;
    }
    checked
}

#[test]
fn cli_scope() {
    let universe = universe();
    run("cli_scope", gen_case, |case| {
        let parse = |written: &Value| {
            Config::from_json(written.to_string().as_bytes())
                .unwrap_or_else(|e| panic!("rejected: {e}\n{written}"))
        };
        let (old, new) = (parse(&case.old), parse(&case.new));
        check_explain(&new, &case.new, &case.requests)
            + check_patterns(&new, &case.route_hosts, &universe)
            + check_patterns(&old, &case.route_hosts, &universe)
            + check_elsewhere(case, &old, &new, &universe)
    });
}
