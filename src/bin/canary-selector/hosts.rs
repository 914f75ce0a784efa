//! Host patterns as a config with `rollouts` writes them (`name.example.com`,
//! `*.example.com`, `*`; lowercased by the config's validation), compared
//! with each other and with the hosts of routes. The filter never needs
//! these relations (it looks a request's host up in its index); the CLI
//! does, to wire a rollout to the routes of its hosts and to show which
//! rollout a host's most specific pattern leaves out. The tests check them
//! against the filter's own [`Config::rollout_for`].

use serde::Serialize;

use canary_selector::config::Config;

/// Whether `pattern` matches `host` (lowercase, without port): `*` every
/// host, `*.suffix` a host with at least one character before `.suffix`,
/// any other pattern only itself.
pub fn matches(pattern: &str, host: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_prefix('*') {
        Some(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
        None => pattern == host,
    }
}

/// Whether every host `narrower` matches, `wider` matches too, and `wider`
/// is the less specific of the two: the index then takes those hosts to
/// `narrower`'s rollouts only.
pub fn covers(wider: &str, narrower: &str) -> bool {
    if wider == narrower {
        return false;
    }
    if wider == "*" {
        return true;
    }
    match (wider.strip_prefix('*'), narrower.strip_prefix('*')) {
        // `*.a.example.com` within `*.example.com`.
        (Some(outer), Some(inner)) => inner.len() > outer.len() && inner.ends_with(outer),
        (Some(_), None) => matches(wider, narrower),
        (None, _) => false,
    }
}

/// How specific a pattern is, as the index ranks the patterns matching a
/// host: an exact name, then the longest `*.` suffix, then `*`.
fn specificity(pattern: &str) -> (u8, usize) {
    if pattern == "*" {
        (0, 0)
    } else if pattern.starts_with("*.") {
        (1, pattern.len())
    } else {
        (2, pattern.len())
    }
}

/// The most specific of `patterns` that matches `host`.
pub fn most_specific<'a>(
    patterns: impl IntoIterator<Item = &'a str>,
    host: &str,
) -> Option<&'a str> {
    patterns
        .into_iter()
        .filter(|p| matches(p, host))
        .max_by_key(|p| specificity(p))
}

/// A host whose most specific pattern among `patterns` is `pattern` (one of
/// them): the pattern itself for an exact name, else a label no pattern
/// lists before the wildcard's suffix (a label without dots, so no deeper
/// wildcard matches it either).
pub fn representative(patterns: &[&str], pattern: &str) -> String {
    let suffix = match pattern.strip_prefix('*') {
        Some(suffix) => suffix,
        None => return pattern.to_string(),
    };
    (0..patterns.len() + 1)
        .map(|n| format!("host{n}{suffix}"))
        .find(|h| !patterns.contains(&h.as_str()))
        .unwrap_or_default()
}

/// Whether a request to some host that `host` stands for (a route's host:
/// a name, `*.suffix` or `*`) is taken by `pattern`, given every pattern of
/// the config: the two overlap, and on their overlap no more specific
/// pattern takes every host first.
pub fn takes_some(patterns: &[&str], pattern: &str, host: &str) -> bool {
    let narrower = if host == pattern || covers(host, pattern) {
        pattern
    } else if covers(pattern, host) {
        host
    } else {
        return false;
    };
    let probe = representative(patterns, narrower);
    most_specific(patterns.iter().copied(), &probe) == Some(pattern)
}

/// Every host pattern of a config with `rollouts`, each once.
pub fn patterns(config: &Config) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for host in config
        .rollouts
        .iter()
        .flat_map(|r| r.scope.iter().flat_map(|s| &s.hosts))
    {
        if !out.contains(&host.as_str()) {
            out.push(host);
        }
    }
    out
}

/// A rollout that takes requests on a host pattern, by path prefix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Taker {
    /// Its index in `rollouts`.
    pub rollout: usize,
    pub name: String,
    /// Its path prefixes; empty for every path.
    pub path_prefixes: Vec<String>,
}

/// A host pattern more specific than one of a rollout's own, held by other
/// rollouts only: on its hosts that rollout is never reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Covered {
    pub pattern: String,
    /// The rollout's own, less specific pattern that `pattern` falls within.
    pub within: String,
    /// The rollouts the pattern holds: they take its hosts' requests.
    pub taken_by: Vec<Taker>,
    /// No rollout of the pattern takes every path: a request to its hosts
    /// whose path none of their prefixes starts passes untouched, whatever
    /// the less specific patterns hold.
    pub other_paths_untouched: bool,
}

/// A rollout of a config with `rollouts` that loses the hosts of more
/// specific patterns to other rollouts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Shadowed {
    pub rollout: usize,
    pub name: String,
    pub hosts: Vec<String>,
    pub path_prefixes: Vec<String>,
    /// The patterns whose hosts it never takes, in the order the config
    /// first lists them.
    pub covered: Vec<Covered>,
}

/// Every rollout that some more specific host pattern of other rollouts
/// keeps from a part of its hosts. A request takes its host's most specific
/// pattern's rollouts and nothing else, so on those hosts the rollout is
/// never reached, even for paths the other rollouts do not take.
pub fn shadowed(config: &Config) -> Vec<Shadowed> {
    // Each pattern once, with the rollouts that list it, in config order.
    let mut patterns: Vec<(&str, Vec<usize>)> = Vec::new();
    for (i, rollout) in config.rollouts.iter().enumerate() {
        for host in rollout.scope.iter().flat_map(|s| &s.hosts) {
            match patterns.iter_mut().find(|(p, _)| *p == host.as_str()) {
                Some((_, held)) => held.push(i),
                None => patterns.push((host, vec![i])),
            }
        }
    }
    let mut out = Vec::new();
    for (i, rollout) in config.rollouts.iter().enumerate() {
        let Some(scope) = &rollout.scope else {
            continue;
        };
        let covered: Vec<Covered> = patterns
            .iter()
            .filter(|(_, held)| !held.contains(&i))
            .filter_map(|(pattern, held)| {
                let within = scope.hosts.iter().find(|own| covers(own, pattern))?;
                let taken_by: Vec<Taker> = held
                    .iter()
                    .filter_map(|&r| {
                        let s = config.rollouts.get(r)?.scope.as_ref()?;
                        Some(Taker {
                            rollout: r,
                            name: s.name.clone(),
                            path_prefixes: s.path_prefixes.clone(),
                        })
                    })
                    .collect();
                Some(Covered {
                    pattern: (*pattern).to_string(),
                    within: within.clone(),
                    other_paths_untouched: taken_by.iter().all(|t| !t.path_prefixes.is_empty()),
                    taken_by,
                })
            })
            .collect();
        if !covered.is_empty() {
            out.push(Shadowed {
                rollout: i,
                name: scope.name.clone(),
                hosts: scope.hosts.clone(),
                path_prefixes: scope.path_prefixes.clone(),
                covered,
            });
        }
    }
    out
}

/// Path prefixes as a person reads them: `every path`, or the list.
pub fn paths_text(prefixes: &[String]) -> String {
    if prefixes.is_empty() {
        "every path".into()
    } else {
        prefixes.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use canary_selector::config::{authority_host, MAX_AUTHORITY_HOST_LEN};
    use serde_json::json;

    /// The rollout the filter's own index gives a request.
    fn filter_pick(config: &Config, host: &str, path: &str) -> Option<usize> {
        let mut buf = [0u8; MAX_AUTHORITY_HOST_LEN];
        let host = authority_host(host.as_bytes(), &mut buf);
        config.rollout_for(host, || Some(path.as_bytes()))
    }

    fn config(rollouts: &[(&str, &[&str], &[&str])]) -> Config {
        let entries: Vec<_> = rollouts
            .iter()
            .map(|(name, hosts, prefixes)| {
                let mut e = json!({
                    "name": name, "hosts": hosts,
                    "versions": [{"name": "v1", "weight": 100}],
                });
                if !prefixes.is_empty() {
                    e["pathPrefixes"] = json!(prefixes);
                }
                e
            })
            .collect();
        Config::from_json(json!({ "rollouts": entries }).to_string().as_bytes()).unwrap()
    }

    #[test]
    fn relations_between_patterns() {
        assert!(matches("*.example.com", "a.example.com"));
        assert!(matches("*.example.com", "a.b.example.com"));
        assert!(!matches("*.example.com", "example.com"));
        assert!(!matches("*.example.com", ".example.com"));
        assert!(!matches("a.example.com", "b.example.com"));
        assert!(covers("*", "*.example.com") && covers("*", "a.example.com"));
        assert!(covers("*.example.com", "*.eu.example.com"));
        assert!(covers("*.example.com", "api.example.com"));
        assert!(!covers("*.example.com", "example.com"));
        assert!(!covers("*.example.com", "*.example.com"));
        assert!(!covers("*.eu.example.com", "*.example.com"));
        assert!(
            !covers("*.ample.com", "*.example.com"),
            "a suffix is at a dot"
        );
        assert!(!covers("api.example.com", "api.example.com"));
        assert_eq!(
            most_specific(
                ["*", "*.example.com", "*.eu.example.com", "x.example.com"],
                "a.eu.example.com"
            ),
            Some("*.eu.example.com")
        );
        assert_eq!(most_specific(["*.example.com"], "example.com"), None);
    }

    #[test]
    fn the_most_specific_pattern_is_the_one_the_filter_picks() {
        let c = config(&[
            ("any", &["*"], &[]),
            ("wide", &["*.example.com"], &[]),
            ("deep", &["*.eu.example.com"], &[]),
            ("api", &["api.example.com"], &["/v1/"]),
        ]);
        let patterns: Vec<&str> = c
            .rollouts
            .iter()
            .flat_map(|r| {
                r.scope
                    .iter()
                    .flat_map(|s| s.hosts.iter().map(String::as_str))
            })
            .collect();
        for host in [
            "a.example.com",
            "x.eu.example.com",
            "api.example.com",
            "example.com",
            "other.org",
            "eu.example.com",
        ] {
            let pattern = most_specific(patterns.iter().copied(), host).unwrap();
            let owner = c.rollouts.iter().position(|r| {
                r.scope
                    .as_ref()
                    .is_some_and(|s| s.hosts.iter().any(|p| p == pattern))
            });
            assert_eq!(filter_pick(&c, host, "/v1/x"), owner, "{host}");
        }
    }

    #[test]
    fn a_representative_host_is_taken_by_its_pattern_and_routes_by_what_takes_them() {
        let c = config(&[
            ("any", &["*"], &[]),
            ("wide", &["*.example.com", "host0.example.com"], &[]),
            ("deep", &["*.eu.example.com"], &[]),
            ("iris", &["iris.example.com"], &[]),
        ]);
        let all = patterns(&c);
        for (r, rollout) in c.rollouts.iter().enumerate() {
            for pattern in &rollout.scope.as_ref().unwrap().hosts {
                let host = representative(&all, pattern);
                assert_eq!(filter_pick(&c, &host, "/"), Some(r), "{pattern}: {host}");
            }
        }
        // Routes for these hosts: which patterns take some of their requests.
        let takers = |route_host: &str| -> Vec<&str> {
            all.iter()
                .copied()
                .filter(|p| takes_some(&all, p, route_host))
                .collect()
        };
        assert_eq!(takers("iris.example.com"), ["iris.example.com"]);
        assert_eq!(takers("a.eu.example.com"), ["*.eu.example.com"]);
        assert_eq!(takers("*.eu.example.com"), ["*.eu.example.com"]);
        assert_eq!(
            takers("*.example.com"),
            [
                "*.example.com",
                "host0.example.com",
                "*.eu.example.com",
                "iris.example.com"
            ]
        );
        assert_eq!(takers("other.org"), ["*"]);
        assert_eq!(takers("*"), all);
    }

    #[test]
    fn shadowed_rollouts_are_those_the_filter_never_reaches_there() {
        let c = config(&[
            ("catch-all", &["*"], &[]),
            ("catalog", &["*.example.com"], &["/v1/"]),
            ("api-v2", &["api.example.com"], &["/v2/"]),
            ("api", &["api.example.com"], &["/v1/", "/v2/models/legacy"]),
            ("iris", &["iris.example.com", "*.iris.example.com"], &[]),
            ("both", &["*.both.example.com", "x.both.example.com"], &[]),
        ]);
        let found = shadowed(&c);
        let summary: Vec<(String, Vec<(String, bool)>)> = found
            .iter()
            .map(|s| {
                (
                    s.name.clone(),
                    s.covered
                        .iter()
                        .map(|c| (c.pattern.clone(), c.other_paths_untouched))
                        .collect(),
                )
            })
            .collect();
        let want = |name: &str, covered: &[(&str, bool)]| {
            (
                name.to_string(),
                covered
                    .iter()
                    .map(|(p, u)| (p.to_string(), *u))
                    .collect::<Vec<_>>(),
            )
        };
        assert_eq!(
            summary,
            vec![
                want(
                    "catch-all",
                    &[
                        ("*.example.com", true),
                        ("api.example.com", true),
                        ("iris.example.com", false),
                        ("*.iris.example.com", false),
                        ("*.both.example.com", false),
                        ("x.both.example.com", false),
                    ]
                ),
                want(
                    "catalog",
                    &[
                        ("api.example.com", true),
                        ("iris.example.com", false),
                        ("*.iris.example.com", false),
                        ("*.both.example.com", false),
                        ("x.both.example.com", false),
                    ]
                ),
            ],
            "a rollout listing both a wildcard and a name within it loses nothing to itself"
        );
        // What each finding says, against the filter: on a representative
        // host of the covered pattern, each prefix goes to its taker, another
        // path to no rollout exactly when `other_paths_untouched`, and the
        // shadowed rollout never takes any of them.
        for s in &found {
            for covered in &s.covered {
                let host = representative(&patterns(&c), &covered.pattern);
                for t in &covered.taken_by {
                    for p in &t.path_prefixes {
                        assert_eq!(filter_pick(&c, &host, p), Some(t.rollout), "{host}{p}");
                    }
                }
                for path in ["/v1/", "/v2/", "/elsewhere", "/"] {
                    let pick = filter_pick(&c, &host, path);
                    assert_ne!(pick, Some(s.rollout), "{host}{path}");
                    if path == "/elsewhere" {
                        assert_eq!(pick.is_none(), covered.other_paths_untouched, "{host}");
                    }
                }
                // And a host of its own pattern that no more specific one
                // holds is the shadowed rollout's (for its own paths).
                let own = representative(&patterns(&c), &covered.within);
                let path = s.path_prefixes.first().map_or("/any", String::as_str);
                assert_eq!(filter_pick(&c, &own, path), Some(s.rollout), "{own}");
            }
        }
    }
}
