//! Host patterns (`name.example.com`, `*.example.com`, `*`; lowercased by
//! the config's validation) for what the filter has no use for: `check`'s
//! warning about rollouts that more specific patterns keep from some of
//! their hosts and its wiring of a rollout to the routes of its hosts, and
//! `diff`'s where a rollout's requests went before. Those reason about
//! patterns against patterns and route hosts; which pattern takes a host is
//! never decided here: the host, or for a wildcard a probe host of it, is
//! asked to the filter's own index ([`HostIndex::lookup`]), through the
//! filter's own [`authority_host`] and its cap.

use serde::Serialize;

use canary_selector::config::{
    authority_host, Config, HostIndex, HostRollouts, MAX_AUTHORITY_HOST_LEN,
};

/// The host patterns of a config with `rollouts`, with the filter's index
/// of them.
pub struct Patterns<'c> {
    index: &'c HostIndex,
    /// Every pattern, each once, in the order the config first lists it.
    pub listed: Vec<&'c str>,
}

impl<'c> Patterns<'c> {
    /// `None` for a config without `rollouts`, whose one rollout takes
    /// every host.
    pub fn of(config: &'c Config) -> Option<Patterns<'c>> {
        let index = config.index.as_ref()?;
        let mut listed: Vec<&str> = Vec::new();
        for host in config
            .rollouts
            .iter()
            .flat_map(|r| r.scope.iter().flat_map(|s| &s.hosts))
        {
            if !listed.contains(&host.as_str()) {
                listed.push(host);
            }
        }
        Some(Patterns { index, listed })
    }

    /// The pattern the filter takes a request to `host` to: `host` is an
    /// `:authority` as a client sends it (a port, a trailing dot, any case);
    /// one the filter cannot read (empty, or past its cap) only `*` takes.
    fn taking(&self, host: &str) -> Option<&'c str> {
        let mut buf = [0u8; MAX_AUTHORITY_HOST_LEN];
        let host = authority_host(host.as_bytes(), &mut buf);
        self.index.lookup(host).map(HostRollouts::pattern)
    }

    /// Whether `pattern` (one of the config's) takes some host the filter
    /// can read: its probe host is taken to it.
    fn takes_any(&self, pattern: &str) -> bool {
        probe(pattern, &self.listed).is_some_and(|host| self.taking(&host) == Some(pattern))
    }

    /// Whether the filter takes a request to some host that `route_host`
    /// stands for (a route's host as written: a name, `*.suffix` or `*`) to
    /// `pattern`: a name is asked as it is; a wildcard overlaps `pattern`
    /// or not, and on the overlap a probe host of the narrower of the two
    /// is asked.
    pub fn takes_some(&self, pattern: &str, route_host: &str) -> bool {
        let mut buf = [0u8; MAX_AUTHORITY_HOST_LEN];
        let normal = authority_host(route_host.as_bytes(), &mut buf)
            .and_then(|h| std::str::from_utf8(h).ok());
        let wildcard = match normal {
            Some(wildcard) if wildcard.starts_with('*') => wildcard,
            // A name, or a host the filter cannot read.
            _ => return self.taking(route_host) == Some(pattern),
        };
        let narrower = if wildcard == pattern || covers(wildcard, pattern) {
            pattern
        } else if covers(pattern, wildcard) {
            wildcard
        } else {
            return false;
        };
        probe(narrower, &self.listed).is_some_and(|host| self.taking(&host) == Some(pattern))
    }
}

/// Whether every host `narrower` matches, `wider` matches too, and `wider`
/// is the less specific of the two (two patterns overlap only so, or are
/// the same): the index then takes those hosts to `narrower`'s rollouts
/// only.
fn covers(wider: &str, narrower: &str) -> bool {
    if wider == narrower {
        return false;
    }
    if wider == "*" {
        return true;
    }
    match (wider.strip_prefix('*'), narrower.strip_prefix('*')) {
        // `*.a.example.com` within `*.example.com`.
        (Some(outer), Some(inner)) => inner.len() > outer.len() && inner.ends_with(outer),
        // `a.example.com` within `*.example.com`.
        (Some(suffix), None) => narrower.len() > suffix.len() && narrower.ends_with(suffix),
        (None, _) => false,
    }
}

/// A host `pattern` stands for that none of `listed` names, so that no more
/// specific pattern of theirs takes it: the pattern itself if it is a name;
/// else the shortest of `0`, `1`, ... that is free before the wildcard's
/// suffix (a label without dots: no deeper wildcard matches it either).
/// `None` when no such host fits the filter's host cap
/// ([`MAX_AUTHORITY_HOST_LEN`]): the filter reads no longer host, and takes
/// a request with one only to `*`.
fn probe(pattern: &str, listed: &[&str]) -> Option<String> {
    let Some(suffix) = pattern.strip_prefix('*') else {
        return Some(pattern.to_string()).filter(|h| h.len() <= MAX_AUTHORITY_HOST_LEN);
    };
    (0..=listed.len())
        .map(|n| format!("{n}{suffix}"))
        .take_while(|h| h.len() <= MAX_AUTHORITY_HOST_LEN)
        .find(|h| !listed.contains(&h.as_str()))
}

/// Hosts that stand for every host `pattern` matches, as the patterns of
/// `listed` cut them up: a probe of `pattern`, and of each listed pattern
/// within it. A host `pattern` matches has the same patterns of `listed`
/// matching it as one of these (its most specific one's probe), so an index
/// of those patterns takes it where it takes that probe.
pub fn probes_within(pattern: &str, listed: &[&str]) -> Vec<String> {
    std::iter::once(pattern)
        .chain(listed.iter().copied().filter(|p| covers(pattern, p)))
        .filter_map(|p| probe(p, listed))
        .collect()
}

/// What the filter does with the routing headers of a request no rollout
/// of a config with `rollouts` takes; nothing else of it changes (no
/// cookie, no response header, no guard counts it) but the model header,
/// written for a model read from the body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Unclaimed {
    /// The routing headers removed (`Config::unclaimed_removes`), so that a
    /// client cannot pick a version by a host or path no rollout lists.
    pub removed: Vec<String>,
    /// With `passUnclaimedRoutingHeaders`: the routing headers that pass as
    /// the client sent them.
    pub passed_as_sent: Vec<String>,
    /// `modelHeader: <model>`, written for the model the filter read from
    /// the body (explain, given the request): KServe's model-routing rules
    /// route the request by it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_header: Option<String>,
}

impl Unclaimed {
    pub fn of(config: &Config) -> Unclaimed {
        let mut passed_as_sent: Vec<String> = Vec::new();
        if config.unclaimed_removes.is_empty() {
            for header in config.rollouts.iter().map(|r| &r.routing_header) {
                if !passed_as_sent.contains(header) {
                    passed_as_sent.push(header.clone());
                }
            }
        }
        Unclaimed {
            removed: config.unclaimed_removes.clone(),
            passed_as_sent,
            model_header: None,
        }
    }

    /// In a few words: `x-canary-version removed`, or `x-canary-version
    /// passed as sent`.
    pub fn short(&self) -> String {
        match (self.removed.as_slice(), self.passed_as_sent.as_slice()) {
            ([], passed) => format!("{} passed as sent", passed.join(", ")),
            (removed, _) => format!("{} removed", removed.join(", ")),
        }
    }

    /// What the filter does, as a sentence's end.
    pub fn text(&self) -> String {
        let named = |headers: &[String]| match headers {
            [one] => (format!("routing header {one}"), "it"),
            more => (format!("routing headers {}", more.join(", ")), "them"),
        };
        let writes = match &self.model_header {
            Some(header) => format!(", writes {header} (the model read from the body)"),
            None => String::new(),
        };
        match (self.removed.as_slice(), self.passed_as_sent.as_slice()) {
            ([], passed) => {
                let (headers, them) = named(passed);
                let untouched = if writes.is_empty() { "passes untouched" } else { "passes" };
                format!("the request {untouched}: passUnclaimedRoutingHeaders lets the {headers} through as the client sent {them}{writes}; no cookie, no response header")
            }
            (removed, _) => format!(
                "the filter removes the {} from the request, so that the client cannot pick a version{writes}, and changes nothing else (no cookie, no response header)",
                named(removed).0
            ),
        }
    }
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

/// The rollouts of `config` that list `pattern`, in config order.
pub fn held_by(config: &Config, pattern: &str) -> Vec<Taker> {
    config
        .rollouts
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            let scope = r.scope.as_ref()?;
            scope.hosts.iter().any(|h| h == pattern).then(|| Taker {
                rollout: i,
                name: scope.name.clone(),
                path_prefixes: scope.path_prefixes.clone(),
            })
        })
        .collect()
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
    /// whose path none of their prefixes takes is taken by no rollout,
    /// whatever the less specific patterns hold.
    pub other_paths_unclaimed: bool,
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
/// never reached, even for paths the other rollouts do not take. A pattern
/// that takes no host the filter can read keeps nothing from anyone.
pub fn shadowed(config: &Config) -> Vec<Shadowed> {
    let Some(patterns) = Patterns::of(config) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, rollout) in config.rollouts.iter().enumerate() {
        let Some(scope) = &rollout.scope else {
            continue;
        };
        let covered: Vec<Covered> = patterns
            .listed
            .iter()
            .filter(|pattern| !scope.hosts.iter().any(|own| own == *pattern))
            .filter_map(|pattern| {
                let within = scope.hosts.iter().find(|own| covers(own, pattern))?;
                if !patterns.takes_any(pattern) {
                    return None;
                }
                let taken_by = held_by(config, pattern);
                Some(Covered {
                    pattern: (*pattern).to_string(),
                    within: within.clone(),
                    other_paths_unclaimed: taken_by.iter().all(|t| !t.path_prefixes.is_empty()),
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
        assert!(covers("*", "*.example.com") && covers("*", "a.example.com"));
        assert!(covers("*.example.com", "*.eu.example.com"));
        assert!(covers("*.example.com", "api.example.com"));
        assert!(covers("*.example.com", "a.b.example.com"));
        assert!(!covers("*.example.com", "example.com"));
        assert!(!covers("*.example.com", ".example.com"));
        assert!(!covers("*.example.com", "*.example.com"));
        assert!(!covers("*.eu.example.com", "*.example.com"));
        assert!(
            !covers("*.ample.com", "*.example.com"),
            "a suffix is at a dot"
        );
        assert!(!covers("api.example.com", "api.example.com"));
        assert!(!covers("a.example.com", "b.example.com"));
    }

    #[test]
    fn a_probe_is_taken_by_its_pattern_and_routes_by_what_takes_them() {
        let c = config(&[
            ("any", &["*"], &[]),
            ("wide", &["*.example.com", "0.example.com"], &[]),
            ("deep", &["*.eu.example.com"], &[]),
            ("iris", &["iris.example.com"], &[]),
        ]);
        let patterns = Patterns::of(&c).unwrap();
        for (r, rollout) in c.rollouts.iter().enumerate() {
            for pattern in &rollout.scope.as_ref().unwrap().hosts {
                let host = probe(pattern, &patterns.listed).unwrap();
                assert_eq!(filter_pick(&c, &host, "/"), Some(r), "{pattern}: {host}");
            }
        }
        assert_eq!(
            probe("*.example.com", &patterns.listed).as_deref(),
            Some("1.example.com"),
            "0.example.com is listed"
        );
        // Routes for these hosts: which patterns take some of their requests.
        let takers = |route_host: &str| -> Vec<&str> {
            patterns
                .listed
                .iter()
                .copied()
                .filter(|p| patterns.takes_some(p, route_host))
                .collect()
        };
        assert_eq!(takers("iris.example.com"), ["iris.example.com"]);
        // A route's host as the filter reads a request's: port, dot, case.
        assert_eq!(takers("IRIS.Example.com."), ["iris.example.com"]);
        assert_eq!(takers("iris.example.com:8080"), ["iris.example.com"]);
        assert_eq!(takers("a.eu.example.com"), ["*.eu.example.com"]);
        assert_eq!(takers("*.eu.example.com"), ["*.eu.example.com"]);
        assert_eq!(takers("*.EU.example.com."), ["*.eu.example.com"]);
        assert_eq!(
            takers("*.example.com"),
            [
                "*.example.com",
                "0.example.com",
                "*.eu.example.com",
                "iris.example.com"
            ]
        );
        assert_eq!(takers("other.org"), ["*"]);
        assert_eq!(takers("*"), patterns.listed);
    }

    #[test]
    fn probes_and_findings_keep_to_the_filters_host_cap() {
        // A wildcard of the longest domain: its probe is exactly as long as
        // the longest host the filter reads, and the filter takes it there.
        let labels = [
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(61),
        ];
        let domain = labels.join(".");
        assert_eq!(domain.len(), 253);
        let wildcard = format!("*.{domain}");
        // An IPv6 literal past the cap: accepted, but no host the filter
        // reads is it, so it keeps nothing from `*`.
        let literal = format!("[{}]", "1".repeat(MAX_AUTHORITY_HOST_LEN));
        let c = config(&[
            ("any", &["*"], &[]),
            ("long", &[&wildcard], &[]),
            ("literal", &[&literal], &[]),
        ]);
        let patterns = Patterns::of(&c).unwrap();
        let zero = probe(&wildcard, &patterns.listed).unwrap();
        assert_eq!(zero.len(), MAX_AUTHORITY_HOST_LEN);
        assert_eq!(filter_pick(&c, &zero, "/"), Some(1));
        assert_eq!(probe(&literal, &patterns.listed), None);
        assert_eq!(filter_pick(&c, &literal, "/"), Some(0));
        assert!(patterns.takes_some(&wildcard, "*"));
        assert!(!patterns.takes_some(&literal, "*"));
        assert!(
            patterns.takes_some("*", &literal),
            "the filter takes it to `*`"
        );
        let found = shadowed(&c);
        assert_eq!(found.len(), 1);
        let covered: Vec<&str> = found[0]
            .covered
            .iter()
            .map(|c| c.pattern.as_str())
            .collect();
        assert_eq!(covered, [wildcard.as_str()]);
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
                        .map(|c| (c.pattern.clone(), c.other_paths_unclaimed))
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
        // What each finding says, against the filter: on a probe host of the
        // covered pattern, each prefix goes to its taker, another path to no
        // rollout exactly when `other_paths_unclaimed`, and the shadowed
        // rollout never takes any of them.
        let listed = Patterns::of(&c).unwrap().listed;
        for s in &found {
            for covered in &s.covered {
                let host = probe(&covered.pattern, &listed).unwrap();
                for t in &covered.taken_by {
                    for p in &t.path_prefixes {
                        assert_eq!(filter_pick(&c, &host, p), Some(t.rollout), "{host}{p}");
                    }
                }
                for path in ["/v1/", "/v2/", "/elsewhere", "/"] {
                    let pick = filter_pick(&c, &host, path);
                    assert_ne!(pick, Some(s.rollout), "{host}{path}");
                    if path == "/elsewhere" {
                        assert_eq!(pick.is_none(), covered.other_paths_unclaimed, "{host}");
                    }
                }
                // And a host of its own pattern that no more specific one
                // holds is the shadowed rollout's (for its own paths).
                let own = probe(&covered.within, &listed).unwrap();
                let path = s.path_prefixes.first().map_or("/any", String::as_str);
                assert_eq!(filter_pick(&c, &own, path), Some(s.rollout), "{own}");
            }
        }
    }

    #[test]
    fn an_unclaimed_request_loses_the_routing_headers_unless_the_config_passes_them() {
        let c = config(&[("a", &["a.example.com"], &[])]);
        let u = Unclaimed::of(&c);
        assert_eq!(u.short(), "x-canary-version removed");
        assert_eq!(u.text(), "the filter removes the routing header x-canary-version from the request, so that the client cannot pick a version, and changes nothing else (no cookie, no response header)");
        let passing = Config::from_json(
            br#"{"passUnclaimedRoutingHeaders":true,"rollouts":[
                {"name":"a","hosts":["a"],"versions":[{"name":"v1","weight":100}]},
                {"name":"b","hosts":["b"],"routingHeader":"x-b","versions":[{"name":"v1","weight":100}]}]}"#,
        )
        .unwrap();
        let u = Unclaimed::of(&passing);
        assert_eq!(u.short(), "x-canary-version, x-b passed as sent");
        assert_eq!(u.text(), "the request passes untouched: passUnclaimedRoutingHeaders lets the routing headers x-canary-version, x-b through as the client sent them; no cookie, no response header");
    }
}
