//! A config that lists `rollouts`: the contract (names, hosts, path
//! prefixes, and the errors that name `rollouts[i]`), the precedence of the
//! host index, and the isolation of each rollout's guard in shared data.

use crate::config::{authority_host, Config, HostRollouts, MAX_AUTHORITY_HOST_LEN};
use crate::guard::Failure;
use crate::shared::held::ALL_CANARIES;
use crate::shared::{Held, Keys, MemoryStore, News, VmId};
use crate::vm::{Event, State};

use super::{config, rejected_config as rejected};

/// A `rollouts` entry named `name` on `hosts`, with `extra` fields.
fn entry(name: &str, hosts: &[&str], extra: &str) -> String {
    let hosts: Vec<String> = hosts.iter().map(|h| format!("{h:?}")).collect();
    format!(
        r#"{{"name":{name:?},"hosts":[{}],"versions":[{{"name":"v1","weight":90}},{{"name":"v2","weight":10}}]{extra}}}"#,
        hosts.join(",")
    )
}

fn rollouts(entries: &[String]) -> String {
    format!(r#"{{"rollouts":[{}]}}"#, entries.join(","))
}

/// The name of the rollout a request to `authority` and `path` takes.
fn pick<'c>(c: &'c Config, authority: &str, path: &str) -> Option<&'c str> {
    let mut buf = [0u8; MAX_AUTHORITY_HOST_LEN];
    let host = authority_host(authority.as_bytes(), &mut buf);
    let i = c.rollout_for(host, || Some(path.as_bytes()))?;
    c.rollouts[i].name()
}

const TWO_MODELS: &str = r#"{"rollouts": [
  {"name": "iris", "hosts": ["sklearn-iris-kserve-test.example.com", "Sklearn-Iris.kserve-test.svc.cluster.local"],
   "versions": [{"name": "iris-v1", "weight": 90}, {"name": "iris-v2", "weight": 10}],
   "stickiness": {"userIdHeaders": ["x-user-id"]}},
  {"name": "flowers", "hosts": ["flowers-kserve-test.example.com"], "routingHeader": "x-flowers-version",
   "versions": [{"name": "flowers-v1", "weight": 50}, {"name": "flowers-v2", "weight": 50.0}],
   "rules": [{"name": "testers", "match": {"headers": {"x-tester": {"exact": "1"}}}, "version": "flowers-v2"}]}
]}"#;

#[test]
fn each_entry_is_a_full_rollout_with_a_name_and_hosts() {
    let c = config(TWO_MODELS);
    assert!(c.index.is_some());
    assert_eq!(c.rollouts.len(), 2);
    let iris = &c.rollouts[0];
    assert_eq!(iris.name(), Some("iris"));
    let scope = iris.scope.as_ref().unwrap();
    assert_eq!(
        scope.hosts,
        [
            "sklearn-iris-kserve-test.example.com",
            "sklearn-iris.kserve-test.svc.cluster.local"
        ],
        "host patterns are kept lowercased"
    );
    assert!(scope.path_prefixes.is_empty(), "every path by default");
    assert_eq!(iris.routing_header, "x-canary-version");
    assert_eq!(
        iris.salt, "iris-v1",
        "each rollout's salt defaults to its own stable version"
    );
    let flowers = &c.rollouts[1];
    assert_eq!(flowers.routing_header, "x-flowers-version");
    assert_eq!(flowers.rules.len(), 1);
    assert_eq!(
        pick(&c, "flowers-kserve-test.example.com", "/"),
        Some("flowers")
    );
    assert_eq!(
        pick(&c, "sklearn-iris-kserve-test.example.com", "/"),
        Some("iris")
    );
    assert_eq!(
        pick(&c, "other.example.com", "/"),
        None,
        "a host no rollout lists"
    );
}

#[test]
fn a_config_without_rollouts_is_one_rollout_for_every_request() {
    let c = config(r#"{"versions":[{"name":"v1","weight":100}]}"#);
    assert!(c.index.is_none());
    assert_eq!(c.rollouts[0].name(), None);
    let mut read_path = false;
    assert_eq!(
        c.rollout_for(None, || {
            read_path = true;
            None
        }),
        Some(0)
    );
    assert!(!read_path, "neither the host nor the path is read");
}

#[test]
fn the_most_specific_host_wins_then_the_longest_path_prefix() {
    let c = config(&rollouts(&[
        entry("any", &["*"], ""),
        entry("wide", &["*.example.com"], ""),
        entry("narrow", &["*.models.example.com"], ""),
        entry(
            "exact",
            &["iris.models.example.com"],
            r#","pathPrefixes":["/v1/models/iris"]"#,
        ),
        entry(
            "exact-v2",
            &["iris.models.example.com"],
            r#","pathPrefixes":["/v2/models/iris", "/v2"]"#,
        ),
    ]));
    // Exact, then the longest wildcard, then `*`.
    assert_eq!(
        pick(&c, "iris.models.example.com", "/v1/models/iris:predict"),
        Some("exact")
    );
    assert_eq!(pick(&c, "flowers.models.example.com", "/"), Some("narrow"));
    assert_eq!(
        pick(&c, "a.b.models.example.com", "/"),
        Some("narrow"),
        "any depth below the wildcard"
    );
    assert_eq!(pick(&c, "www.example.com", "/"), Some("wide"));
    assert_eq!(
        pick(&c, "example.com", "/"),
        Some("any"),
        "`*.example.com` needs a label before it"
    );
    assert_eq!(pick(&c, "models.example.com", "/"), Some("wide"));
    assert_eq!(pick(&c, "example.org", "/"), Some("any"));
    // Among one host's rollouts, the longest prefix the path starts with.
    assert_eq!(
        pick(&c, "iris.models.example.com", "/v2/models/iris/infer"),
        Some("exact-v2")
    );
    assert_eq!(
        pick(&c, "iris.models.example.com", "/v2/health"),
        Some("exact-v2")
    );
    // No prefix of the most specific host matches: unclaimed, even though
    // a less specific pattern would have taken the request.
    assert_eq!(pick(&c, "iris.models.example.com", "/metrics"), None);
}

#[test]
fn a_path_prefix_takes_whole_segments_and_kserve_s_verb() {
    let c = config(&rollouts(&[
        entry(
            "iris",
            &["models.example.com"],
            r#","pathPrefixes":["/v1/models/iris"]"#,
        ),
        entry(
            "v2",
            &["models.example.com"],
            r#","pathPrefixes":["/v2/models/"]"#,
        ),
        entry(
            "iris2",
            &["models.example.com"],
            r#","pathPrefixes":["/v2/models/iris2"]"#,
        ),
    ]));
    for (path, want) in [
        ("/v1/models/iris", Some("iris")),
        ("/v1/models/iris/explain", Some("iris")),
        ("/v1/models/iris:predict", Some("iris")),
        ("/v1/models/iris?x=1", Some("iris")),
        ("/v1/models/iris:predict?x=/y", Some("iris")),
        ("/v1/models/iris2:predict", None),
        ("/v1/models/iris-xl/infer", None),
        ("/v1/models/irisx", None),
        ("/v1/models/iri", None),
        ("/v1/models", None),
        // A longer name under another rollout's prefix goes to that one.
        ("/v2/models/iris2/infer", Some("iris2")),
        ("/v2/models/iris2-xl/infer", Some("v2")),
        ("/v2/models/flowers/infer", Some("v2")),
        // A trailing `/` is ignored, as Gateway API's PathPrefix ignores it.
        ("/v2/models", Some("v2")),
        ("/v2/modelsx", None),
        // The query is no part of the path.
        ("/v2?/models/flowers", None),
    ] {
        assert_eq!(pick(&c, "models.example.com", path), want, "{path}");
    }
    let root = config(&rollouts(&[entry(
        "all",
        &["a.example.com"],
        r#","pathPrefixes":["/"]"#,
    )]));
    assert_eq!(pick(&root, "a.example.com", "/anything"), Some("all"));
    assert_eq!(pick(&root, "a.example.com", "*"), None);
    // The same prefix written twice, with and without its slash.
    let e = rejected(&rollouts(&[entry(
        "a",
        &["*"],
        r#","pathPrefixes":["/v1/models/","/v1/models"]"#,
    )]));
    assert_eq!(e.field, "rollouts[0].pathPrefixes[1]", "{e}");
    assert!(e.reason.contains("trailing `/` is ignored"), "{e}");
    let e = rejected(&rollouts(&[entry(
        "a",
        &["*"],
        r#","pathPrefixes":["/v1?x=1"]"#,
    )]));
    assert!(e.reason.contains("query"), "{e}");
}

#[test]
fn the_claim_names_the_pattern_and_the_prefix_the_filter_took() {
    let c = config(&rollouts(&[
        entry(
            "a",
            &["*.example.com"],
            r#","pathPrefixes":["/v1/", "/v2/models"]"#,
        ),
        entry("b", &["*"], ""),
    ]));
    let index = c.index.as_ref().unwrap();
    let mut buf = [0u8; MAX_AUTHORITY_HOST_LEN];
    let host = authority_host(b"X.Example.com:443", &mut buf);
    let claim = index
        .claim(host, || Some(b"/v2/models/iris:predict"))
        .unwrap();
    assert_eq!(claim.pattern, "*.example.com");
    assert_eq!(claim.taker, Some((0, "/v2/models")));
    let claim = index.claim(host, || Some(b"/health")).unwrap();
    assert_eq!((claim.pattern, claim.taker), ("*.example.com", None));
    let claim = index.claim(None, || None).unwrap();
    assert_eq!((claim.pattern, claim.taker), ("*", Some((1, ""))));
}

#[test]
fn every_pattern_matching_a_host_comes_most_specific_first_and_the_first_takes_it() {
    let c = config(&rollouts(&[
        entry("any", &["*"], ""),
        entry("wide", &["*.example.com"], ""),
        entry("deep", &["*.eu.example.com", "api.eu.example.com"], ""),
    ]));
    let index = c.index.as_ref().unwrap();
    let matching = |host: Option<&[u8]>| -> Vec<&str> {
        index.matching(host).map(HostRollouts::pattern).collect()
    };
    assert_eq!(
        matching(Some(b"api.eu.example.com")),
        [
            "api.eu.example.com",
            "*.eu.example.com",
            "*.example.com",
            "*"
        ]
    );
    assert_eq!(
        matching(Some(b"x.eu.example.com")),
        ["*.eu.example.com", "*.example.com", "*"]
    );
    assert_eq!(matching(Some(b".example.com")), ["*"]);
    assert_eq!(matching(Some(b"example.com")), ["*"]);
    assert_eq!(matching(None), ["*"]);
    for host in [&b"api.eu.example.com"[..], b"x.example.com", b"example.com"] {
        let first = index.matching(Some(host)).next().map(HostRollouts::pattern);
        assert_eq!(index.lookup(Some(host)).map(HostRollouts::pattern), first);
    }
}

#[test]
fn a_request_no_rollout_takes_loses_the_routing_headers_unless_the_config_passes_them() {
    let two = rollouts(&[
        entry("a", &["a.example.com"], ""),
        entry("b", &["b.example.com"], r#","routingHeader":"X-B-Version""#),
        entry("c", &["c.example.com"], ""),
    ]);
    let c = config(&two);
    assert_eq!(c.unclaimed_removes, ["x-canary-version", "x-b-version"]);
    let mut req = super::FakeRequest::with(&[
        ("x-canary-version", b"v2"),
        ("x-b-version", b"v2"),
        ("x-other", b"kept"),
    ]);
    crate::filter::on_unclaimed_request(&c, &mut req);
    assert_eq!(req.headers, [("x-other".to_string(), b"kept".to_vec())]);
    assert!(req.set.is_empty() && req.counted.is_empty());

    let passing = config(&two.replacen("{", r#"{"passUnclaimedRoutingHeaders":true,"#, 1));
    assert!(passing.unclaimed_removes.is_empty());
    let off = config(&two.replacen("{", r#"{"passUnclaimedRoutingHeaders":false,"#, 1));
    assert_eq!(off.unclaimed_removes, c.unclaimed_removes);

    // Only at the top of a config with rollouts.
    let e =
        rejected(r#"{"passUnclaimedRoutingHeaders":true,"versions":[{"name":"v1","weight":100}]}"#);
    assert_eq!(e.field, "passUnclaimedRoutingHeaders", "{e}");
    let e = rejected(&rollouts(&[entry(
        "a",
        &["*"],
        r#","passUnclaimedRoutingHeaders":true"#,
    )]));
    assert_eq!(e.field, "rollouts[0].passUnclaimedRoutingHeaders", "{e}");
    let e = rejected(&two.replacen("{", r#"{"passUnclaimedRoutingHeaders":"yes","#, 1));
    assert_eq!(e.field, "passUnclaimedRoutingHeaders", "{e}");
}

#[test]
fn a_request_a_rollout_takes_loses_the_other_rollouts_routing_headers() {
    // Rollouts told apart by model on one host and prefix are routed by
    // their headers alone: a client must not pick b's version on a request
    // a takes.
    let two = rollouts(&[
        entry("a", &["*"], r#","models":["a"]"#),
        entry(
            "b",
            &["*"],
            r#","models":["b"],"routingHeader":"X-B-Version""#,
        ),
    ]);
    let c = config(&two);
    let sent: &[(&str, &[u8])] = &[
        ("x-canary-version", b"v2"),
        ("x-b-version", b"v2"),
        ("x-other", b"kept"),
    ];
    for (i, kept) in [(0, "x-canary-version"), (1, "x-b-version")] {
        let mut req = super::FakeRequest::with(sent);
        let rollout = &c.rollouts[i];
        crate::filter::on_request_headers(
            rollout,
            &mut req,
            &mut crate::decision::WyRand(1),
            crate::decision::Live::default(),
        );
        let mut names: Vec<&str> = req.headers.iter().map(|(n, _)| n.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, [kept, "x-other"], "rollout {i}");
    }
    // Passed as sent: nothing of another rollout's is removed.
    let passing = config(&two.replacen("{", r#"{"passUnclaimedRoutingHeaders":true,"#, 1));
    assert!(passing
        .rollouts
        .iter()
        .all(|r| r.foreign_routing_headers.is_empty()));
}

#[test]
fn the_authority_is_matched_without_its_port_and_in_any_letter_case() {
    let c = config(&rollouts(&[
        entry("a", &["Models.Example.COM"], ""),
        entry("v6", &["[2001:DB8::1]"], ""),
    ]));
    for authority in [
        "models.example.com",
        "MODELS.example.com",
        "models.example.com:8080",
        "models.example.com.",
        "Models.Example.Com.:443",
    ] {
        assert_eq!(pick(&c, authority, "/"), Some("a"), "{authority}");
    }
    assert_eq!(pick(&c, "[2001:db8::1]:8080", "/"), Some("v6"));
    assert_eq!(pick(&c, "[2001:db8::1]", "/"), Some("v6"));
    assert_eq!(pick(&c, "models.example.com.evil", "/"), None);
    assert_eq!(pick(&c, "", "/"), None);
    let mut buf = [0u8; MAX_AUTHORITY_HOST_LEN];
    assert_eq!(authority_host(b":80", &mut buf), None);
    let long = "a".repeat(MAX_AUTHORITY_HOST_LEN + 1);
    assert_eq!(authority_host(long.as_bytes(), &mut buf), None);
    assert_eq!(
        authority_host(b"\xff\xfe.Example.com", &mut buf),
        Some(&b"\xff\xfe.example.com"[..])
    );
    // A request without a usable host is taken by `*` only.
    let star = config(&rollouts(&[
        entry("any", &["*"], ""),
        entry("a", &["a.example.com"], ""),
    ]));
    assert_eq!(
        star.rollout_for(None, || None)
            .map(|i| star.rollouts[i].name()),
        Some(Some("any"))
    );
    assert_eq!(c.rollout_for(None, || None), None);
}

#[test]
fn the_path_is_read_only_where_the_host_s_rollouts_differ_by_path() {
    let c = config(&rollouts(&[
        entry("a", &["a.example.com"], ""),
        entry("b", &["b.example.com"], r#","pathPrefixes":["/v1"]"#),
    ]));
    let mut buf = [0u8; MAX_AUTHORITY_HOST_LEN];
    let mut reads = 0;
    let host = authority_host(b"a.example.com", &mut buf);
    assert_eq!(
        c.rollout_for(host, || {
            reads += 1;
            Some(b"/x")
        }),
        Some(0)
    );
    assert_eq!(reads, 0);
    let host = authority_host(b"b.example.com", &mut buf);
    assert_eq!(
        c.rollout_for(host, || {
            reads += 1;
            Some(b"/v1/x")
        }),
        Some(1)
    );
    assert_eq!(reads, 1);
    // No `:path` at all: only an every-path rollout could take it.
    assert_eq!(c.rollout_for(host, || None), None);
}

#[test]
fn errors_name_the_entry_and_the_field() {
    let cases: Vec<(String, &str, &str)> = vec![
        (
            rollouts(&[
                entry("a", &["a.example.com"], ""),
                entry("b", &["b.example.com", "b..example.com"], ""),
            ]),
            "rollouts[1].hosts[1]",
            "each dot-separated label",
        ),
        (
            rollouts(&[entry("a", &["a.example.com:8080"], "")]),
            "rollouts[0].hosts[0]",
            "holds a port",
        ),
        (
            rollouts(&[entry("a", &["*.*.example.com"], "")]),
            "rollouts[0].hosts[0]",
            "a wildcard is `*` alone",
        ),
        (
            rollouts(&[entry("a", &["foo*.example.com"], "")]),
            "rollouts[0].hosts[0]",
            "a wildcard is `*` alone",
        ),
        (
            rollouts(&[entry("a", &["example.com."], "")]),
            "rollouts[0].hosts[0]",
            "trailing dot",
        ),
        (
            rollouts(&[entry("a", &["exa mple.com"], "")]),
            "rollouts[0].hosts[0]",
            "is not a host name",
        ),
        (
            rollouts(&[entry("a", &["[nope]"], "")]),
            "rollouts[0].hosts[0]",
            "IPv6",
        ),
        (
            rollouts(&[entry("a", &["A.example.com", "a.example.com"], "")]),
            "rollouts[0].hosts[1]",
            "listed twice",
        ),
        (
            rollouts(&[entry("a", &[], "")]),
            "rollouts[0].hosts",
            "at least one host",
        ),
        (
            rollouts(&[r#"{"name":"a","versions":[{"name":"v1","weight":100}]}"#.into()]),
            "rollouts[0].hosts",
            "is required",
        ),
        (
            rollouts(&[r#"{"hosts":["*"],"versions":[{"name":"v1","weight":100}]}"#.into()]),
            "rollouts[0].name",
            "is required",
        ),
        (
            rollouts(&[entry("a", &["*"], ""), entry("a", &["b.example.com"], "")]),
            "rollouts[1].name",
            "listed twice",
        ),
        (
            rollouts(&[
                entry("a", &["*"], ""),
                entry("A", &["b.example.com"], ""),
                entry("a-b", &["c"], ""),
                entry("a.b", &["d"], ""),
            ]),
            "rollouts[3].name",
            "would share one Prometheus metric name",
        ),
        (
            rollouts(&[entry("a;b", &["*"], "")]),
            "rollouts[0].name",
            "frames the metrics' stat tags",
        ),
        (
            rollouts(&[
                entry("a", &["*.example.com"], ""),
                entry("b", &["*.EXAMPLE.com"], ""),
            ]),
            "rollouts[1].hosts[0]",
            "\"*.example.com\" (every path) is already claimed by rollouts[0] (\"a\")",
        ),
        (
            rollouts(&[
                entry("a", &["x.example.com"], r#","pathPrefixes":["/v1","/v2"]"#),
                entry("b", &["x.example.com"], r#","pathPrefixes":["/v3","/v2"]"#),
            ]),
            "rollouts[1].pathPrefixes[1]",
            "\"/v2\" on \"x.example.com\" is already claimed by rollouts[0]",
        ),
        (
            rollouts(&[entry("a", &["*"], r#","pathPrefixes":["v1"]"#)]),
            "rollouts[0].pathPrefixes[0]",
            "does not start with `/`",
        ),
        (
            rollouts(&[entry("a", &["*"], r#","pathPrefixes":[]"#)]),
            "rollouts[0].pathPrefixes",
            "at least one prefix",
        ),
        (
            rollouts(&[entry("a", &["*"], r#","pathPrefixes":["/a","/a"]"#)]),
            "rollouts[0].pathPrefixes[1]",
            "listed twice",
        ),
        // The fields of a rollout, wrong inside an entry, with the entry's path.
        (
            rollouts(&[
                entry("a", &["*"], ""),
                r#"{"name":"b","hosts":["b"],"versions":[{"name":"v1","weight":101}]}"#.into(),
            ]),
            "rollouts[1].versions[0].weight",
            "not between 0 and 100",
        ),
        (
            rollouts(&[entry(
                "a",
                &["*"],
                r#","guard":{"windowSeconds":"ten","maxErrorRate":0.1}"#,
            )]),
            "rollouts[0].guard.windowSeconds",
            "expected a number",
        ),
        (
            rollouts(&[entry("a", &["*"], r#","color":"red""#)]),
            "rollouts[0].color",
            "unknown field",
        ),
        // The top level holds `rollouts` and nothing else, and a rollout's
        // scope only makes sense inside the list.
        (
            format!(
                r#"{{"routingHeader":"x-v","rollouts":[{}]}}"#,
                entry("a", &["*"], "")
            ),
            "routingHeader",
            "belongs in each entry",
        ),
        (
            r#"{"hosts":["*"],"versions":[{"name":"v1","weight":100}]}"#.into(),
            "hosts",
            "scopes an entry of `rollouts`",
        ),
        (
            r#"{"name":"a","versions":[{"name":"v1","weight":100}]}"#.into(),
            "name",
            "scopes an entry of `rollouts`",
        ),
        (
            r#"{"rollouts":[]}"#.into(),
            "rollouts",
            "at least one rollout",
        ),
        (
            r#"{"rollouts":{}}"#.into(),
            "rollouts",
            "expected a sequence",
        ),
        (
            rollouts(&[format!(
                r#"{{"name":"a","hosts":["*"],"rollouts":[{}],"versions":[{{"name":"v1","weight":100}}]}}"#,
                entry("b", &["*"], "")
            )]),
            "rollouts[0].rollouts",
            "do not nest",
        ),
    ];
    for (json, field, reason) in cases {
        let e = rejected(&json);
        assert_eq!(e.field, field, "{e}\n{json}");
        assert!(e.reason.contains(reason), "{e}\n{json}");
    }
}

#[test]
fn a_config_holds_500_rollouts_of_two_hosts_each_and_refuses_more_than_its_limits() {
    let many = |n: usize, hosts_each: usize| -> String {
        let entries: Vec<String> = (0..n)
            .map(|i| {
                let hosts: Vec<String> = (0..hosts_each)
                    .map(|h| format!("m{i}-{h}.example.com"))
                    .collect();
                let hosts: Vec<&str> = hosts.iter().map(String::as_str).collect();
                entry(&format!("model-{i}"), &hosts, "")
            })
            .collect();
        rollouts(&entries)
    };
    let c = config(&many(500, 4));
    assert_eq!(c.rollouts.len(), 500);
    assert_eq!(pick(&c, "m499-3.example.com", "/"), Some("model-499"));
    let e = rejected(&many(crate::config::MAX_ROLLOUTS + 1, 1));
    assert_eq!(
        (
            e.field.as_str(),
            e.reason.contains("more than 1000 rollouts")
        ),
        ("rollouts", true),
        "{e}"
    );
    let e = rejected(&many(1000, 5));
    assert_eq!(e.field, "rollouts[800].hosts", "{e}");
    assert!(e.reason.contains("past 4000 host patterns"), "{e}");
    let e = rejected(&many(1, crate::config::MAX_HOSTS_PER_ROLLOUT + 1));
    assert_eq!(e.field, "rollouts[0].hosts", "{e}");
}

#[test]
fn the_regex_bound_is_per_rollout_with_a_higher_total() {
    let with_regexes = |n: usize, each: usize| -> String {
        let entries: Vec<String> = (0..n)
            .map(|i| {
                let rules: Vec<String> = (0..each)
                    .map(|r| format!(r#"{{"name":"r{r}","match":{{"headers":{{"x-{r}":{{"regex":"t[0-9]+"}}}}}},"version":"v2"}}"#))
                    .collect();
                entry(&format!("m{i}"), &[&format!("m{i}.example.com")], &format!(r#","rules":[{}]"#, rules.join(",")))
            })
            .collect();
        rollouts(&entries)
    };
    // 20 rollouts with one regex each, and a rollout with 16: accepted.
    config(&with_regexes(20, 1));
    config(&with_regexes(2, crate::config::MAX_REGEXES));
    let e = rejected(&with_regexes(1, crate::config::MAX_REGEXES + 1));
    assert_eq!(
        e.field, "rollouts[0].rules[16].match.headers.x-16.regex",
        "{e}"
    );
    // All rollouts together hold at most MAX_REGEXES_TOTAL.
    let e = rejected(&with_regexes(65, 16));
    assert_eq!(e.field, "rollouts[64].rules", "{e}");
    assert!(e.reason.contains("past 1024 regexes"), "{e}");
}

#[test]
fn a_rollout_s_fingerprint_changes_with_what_it_does_not_with_how_it_is_written() {
    let a = config(TWO_MODELS);
    // The same config, keys reordered, numbers as Istio writes them, spaced out.
    let b = config(
        r#"{"rollouts":[
      {"versions":[{"weight":90.0,"name":"iris-v1"},{"name":"iris-v2","weight":10.0}],
       "stickiness":{"userIdHeaders":["X-User-Id"]},
       "hosts":["sklearn-iris-kserve-test.example.com","sklearn-iris.kserve-test.svc.cluster.local"],"name":"iris"},
      {"name":"flowers","hosts":["flowers-kserve-test.example.com"],"routingHeader":"x-flowers-version",
       "versions":[{"name":"flowers-v1","weight":50},{"name":"flowers-v2","weight":50}],
       "rules":[{"name":"testers","match":{"headers":{"x-tester":{"exact":"1"}}},"version":"flowers-v2"}]}]}"#,
    );
    assert_eq!(a.rollouts[0].fingerprint(), b.rollouts[0].fingerprint());
    assert_eq!(a.rollouts[1].fingerprint(), b.rollouts[1].fingerprint());
    // A ramp of flowers changes flowers alone.
    let ramped = config(&TWO_MODELS.replace(
        r#""weight": 50}, {"name": "flowers-v2", "weight": 50.0}"#,
        r#""weight": 10}, {"name": "flowers-v2", "weight": 90}"#,
    ));
    assert_eq!(
        a.rollouts[0].fingerprint(),
        ramped.rollouts[0].fingerprint()
    );
    assert_ne!(
        a.rollouts[1].fingerprint(),
        ramped.rollouts[1].fingerprint()
    );
    // Where it applies is not what it decides: a new host, a path prefix,
    // another place in the list.
    let moved =
        config(&TWO_MODELS.replace("flowers-kserve-test.example.com", "tulips.example.com"));
    assert_eq!(a.rollouts[1].fingerprint(), moved.rollouts[1].fingerprint());
    let prefixed = config(&TWO_MODELS.replace(
        r#""name": "flowers","#,
        r#""name": "flowers", "pathPrefixes": ["/v1/models/flowers"],"#,
    ));
    assert_eq!(
        a.rollouts[1].fingerprint(),
        prefixed.rollouts[1].fingerprint()
    );
    // What it decides is: a rule, a header, the stickiness.
    for (from, to) in [
        (r#"{"exact": "1"}"#, r#"{"exact": "2"}"#),
        ("x-flowers-version", "x-flowers-v"),
    ] {
        let changed = config(&TWO_MODELS.replace(from, to));
        assert_ne!(
            a.rollouts[1].fingerprint(),
            changed.rollouts[1].fingerprint(),
            "{to}"
        );
    }
}

/// One VM (`me`) taking the push of `c`, after `previous`.
fn vm(store: &MemoryStore, c: &Config, me: VmId, previous: Option<&State>) -> (State, Vec<Event>) {
    State::install(store, "ns.gateway", c, me, previous)
}

const GUARDED: &str = r#"{"rollouts": [
  {"name": "iris", "hosts": ["iris.example.com"], "guard": {"windowSeconds": 10, "minRequests": 10, "maxErrorRate": 0.1},
   "versions": [{"name": "v1", "weight": 50}, {"name": "v2", "weight": 50}]},
  {"name": "flowers", "hosts": ["flowers.example.com"], "guard": {"windowSeconds": 10, "minRequests": 10, "maxErrorRate": 0.1},
   "versions": [{"name": "v1", "weight": 50}, {"name": "v2", "weight": 50}]}
]}"#;

#[test]
fn a_failing_model_trips_only_its_own_rollout_and_a_push_of_another_keeps_the_trip() {
    let store = MemoryStore::default();
    let c = config(GUARDED);
    let (first, pushed) = vm(&store, &c, 1, None);
    assert_eq!(
        pushed.len(),
        2,
        "the first VM tells of both rollouts: {pushed:?}"
    );
    let (second, pushed) = vm(&store, &c, 2, None);
    assert!(pushed.is_empty(), "{pushed:?}");
    // flowers' canary fails on the first VM, iris is healthy on both.
    for t in 0..20 {
        first.rollouts[1].record(1_000 + t, 1, Some(Failure::Http5xx), false);
        first.rollouts[0].record(1_000 + t, 1, None, false);
        second.rollouts[0].record(1_000 + t, 1, None, false);
    }
    let events = first.tick(&store, &c, 2_000);
    let tripped: Vec<usize> = events
        .iter()
        .filter_map(|e| match e {
            Event::Tripped { rollout, trip } if trip.version == 1 => Some(*rollout),
            _ => None,
        })
        .collect();
    assert_eq!(tripped, [1], "{events:?}");
    // The other VM learns of flowers' trip, not of one for iris.
    let events = second.tick(&store, &c, 2_000);
    assert!(events.contains(&Event::HeldBack {
        rollout: 1,
        versions: ALL_CANARIES
    }));
    assert_eq!(second.rollouts[0].held_back(), 0);
    assert_eq!(
        crate::shared::count(&store, &Keys::new("ns.gateway", None).trips()),
        1
    );

    // A push that ramps iris: iris starts afresh, flowers (unchanged) stays
    // tripped, and so does a flowers given one more host name.
    let ramped = config(&GUARDED.replacen(
        r#""weight": 50}, {"name": "v2", "weight": 50}"#,
        r#""weight": 40}, {"name": "v2", "weight": 60}"#,
        1,
    ));
    let (third, pushed) = vm(&store, &ramped, 1, Some(&first));
    assert_eq!(
        pushed,
        [Event::Pushed {
            rollout: 0,
            news: News::Restarted,
            reset: Held::default()
        }]
    );
    assert_eq!(
        third.rollouts[0].held_back(),
        0,
        "iris changed: a fresh window"
    );
    assert_eq!(
        third.rollouts[1].held_back(),
        ALL_CANARIES,
        "flowers unchanged"
    );
    let alias_text = GUARDED
        .replacen(
            r#""weight": 50}, {"name": "v2", "weight": 50}"#,
            r#""weight": 40}, {"name": "v2", "weight": 60}"#,
            1,
        )
        .replace(
            r#"["flowers.example.com"]"#,
            r#"["flowers.example.com", "flowers.models.svc"]"#,
        );
    // Its hosts, then its models, are where it applies: each push a move,
    // the trip kept.
    let by_model = alias_text.replace(
        r#""flowers.models.svc"]"#,
        r#""flowers.models.svc"], "models": ["flowers"]"#,
    );
    let mut fourth = third;
    for (text, what) in [(&alias_text, "hosts"), (&by_model, "models")] {
        let (next, pushed) = vm(&store, &config(text), 1, Some(&fourth));
        assert_eq!(
            pushed,
            [Event::Pushed {
                rollout: 1,
                news: News::Moved,
                reset: Held::default()
            }],
            "{what}"
        );
        assert_eq!(
            next.rollouts[1].held_back(),
            ALL_CANARIES,
            "only its {what} changed"
        );
        fourth = next;
    }
    // A push that changes what flowers decides resets flowers alone, and
    // says what it let go.
    let fixed = config(&GUARDED.replace(
        r#""flowers", "hosts": ["flowers.example.com"], "guard": {"windowSeconds": 10, "minRequests": 10, "maxErrorRate": 0.1}"#,
        r#""flowers", "hosts": ["flowers.example.com"], "guard": {"windowSeconds": 10, "minRequests": 10, "maxErrorRate": 0.5}"#,
    ));
    let (fifth, pushed) = vm(&store, &fixed, 1, Some(&fourth));
    assert_eq!(
        fifth.rollouts[1].held_back(),
        0,
        "flowers changed: re-armed"
    );
    assert!(pushed.contains(&Event::Pushed {
        rollout: 1,
        news: News::Restarted,
        reset: Held {
            local: Some(1),
            mesh: 0
        }
    }));
}

#[test]
fn the_accepted_line_counts_and_names_the_rollouts() {
    let one = config(&rollouts(&[entry("iris", &["iris.example.com"], "")]));
    assert_eq!(one.summary(), "1 rollout (iris)");
    let two = config(&rollouts(&[
        entry("iris", &["iris.example.com"], ""),
        entry("flowers", &["*.flowers.example.com"], ""),
    ]));
    assert_eq!(two.summary(), "2 rollouts (iris, flowers)");
    // Without `rollouts`: the one rollout's own summary, as before.
    let plain = Config::from_json(br#"{"versions":[{"name":"v1","weight":100}]}"#).unwrap();
    assert!(plain
        .summary()
        .starts_with("routing header x-canary-version; versions v1=100%"));
}
