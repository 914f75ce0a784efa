//! Native tests of the pure core: config errors, hash vectors, rule
//! precedence, the split, stickiness, the ramp guarantee, and the filter's
//! host-facing behaviour through a fake host.

use crate::config::{ConfigError, Rollout};
use crate::decision::{decide, Entropy, Live, Reason, Request, WyRand};
use crate::filter::{self, Host, ResponseHost};

/// Request headers as (lowercase name, value) pairs.
type Headers<'a> = Vec<(&'a str, &'a [u8])>;

/// A request as a list of (lowercase name, value) headers.
#[derive(Default)]
struct FakeRequest {
    headers: Vec<(String, Vec<u8>)>,
    set: Vec<(String, Vec<u8>)>,
    counted: Vec<(usize, Reason)>,
    /// How many times each header was read from the host.
    reads: Vec<String>,
}

impl FakeRequest {
    fn with(headers: &[(&str, &[u8])]) -> Self {
        FakeRequest {
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_vec()))
                .collect(),
            ..Default::default()
        }
    }
}

impl Request for FakeRequest {
    fn header(&mut self, _slot: usize, name: &str) -> Option<&[u8]> {
        self.reads.push(name.to_string());
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }
}

impl Host for FakeRequest {
    fn set_request_header(&mut self, name: &str, value: &[u8]) {
        self.headers.retain(|(k, _)| k != name);
        self.headers.push((name.to_string(), value.to_vec()));
        self.set.push((name.to_string(), value.to_vec()));
    }
    fn count(&mut self, version: usize, reason: Reason) {
        self.counted.push((version, reason));
    }
}

#[derive(Default)]
struct FakeResponse {
    headers: Vec<(String, String)>,
    status: Option<u16>,
    content_type: Option<&'static str>,
    grpc_status: Option<&'static str>,
    now_ms: i64,
}

impl ResponseHost for FakeResponse {
    fn set_response_header(&mut self, name: &str, value: &[u8]) {
        self.headers.retain(|(k, _)| k != name);
        self.add_response_header(name, value);
    }
    fn add_response_header(&mut self, name: &str, value: &[u8]) {
        self.headers.push((
            name.to_string(),
            String::from_utf8_lossy(value).into_owned(),
        ));
    }
    fn response_header(&mut self, name: &str) -> Option<Vec<u8>> {
        match name {
            ":status" => self.status.map(|s| s.to_string().into_bytes()),
            "content-type" => self.content_type.map(|t| t.as_bytes().to_vec()),
            "grpc-status" => self.grpc_status.map(|t| t.as_bytes().to_vec()),
            _ => None,
        }
    }
    fn now_ms(&mut self) -> i64 {
        self.now_ms
    }
}

fn rollout(json: &str) -> Rollout {
    Rollout::from_json(json.as_bytes()).unwrap_or_else(|e| panic!("config rejected: {e}\n{json}"))
}

fn rejected(json: &str) -> ConfigError {
    match Rollout::from_json(json.as_bytes()) {
        Ok(_) => panic!("config accepted but should not be: {json}"),
        Err(e) => e,
    }
}

fn split(v1: f64, v2: f64) -> Rollout {
    rollout(&format!(
        r#"{{"versions":[{{"name":"model-v1","weight":{v1}}},{{"name":"model-v2","weight":{v2}}}],
            "stickiness":{{"userIdHeaders":["x-user-id"]}}}}"#
    ))
}

fn version_for(r: &Rollout, user: &str) -> String {
    let mut req = FakeRequest::with(&[("x-user-id", user.as_bytes())]);
    let d = decide(r, &mut req, &mut WyRand(1), Live::default());
    assert_eq!(d.reason, Reason::Sticky);
    r.versions[d.version].name.clone()
}

const DEMO: &str = r#"{
  "routingHeader": "x-canary-version",
  "versions": [{"name": "model-v1", "weight": 90}, {"name": "model-v2", "weight": 10.0}],
  "stickiness": {"userIdHeaders": ["x-user-id"], "userIdCookies": ["user_id"]},
  "rules": [
    {"name": "testers", "match": {"headers": {"x-canary-tester": {"exact": "true"}}}, "version": "model-v2"},
    {"name": "stable-pin", "match": {"cookies": {"pin": {"exact": "stable"}}}, "version": "model-v1"}
  ],
  "responseHeader": "x-canary-version"
}"#;

// ---------------------------------------------------------------------------
// Config: accepted forms.
// ---------------------------------------------------------------------------

#[test]
fn demo_config_is_accepted_with_defaults_filled_in() {
    let r = rollout(DEMO);
    assert_eq!(r.routing_header, "x-canary-version");
    assert_eq!(r.versions.len(), 2);
    assert_eq!(r.rules.len(), 2);
    assert_eq!(
        r.salt, "model-v1",
        "default salt is the first version's name"
    );
    assert!(r.salt_is_default);
    assert_eq!(r.response_header.as_deref(), Some("x-canary-version"));
    let s = r.summary();
    assert!(s.contains("model-v1=90% model-v2=10%"), "{s}");
    assert!(s.contains("testers->model-v2"), "{s}");
}

#[test]
fn minimal_config_uses_the_default_routing_header() {
    let r = rollout(r#"{"versions":[{"name":"v1","weight":100}]}"#);
    assert_eq!(r.routing_header, "x-canary-version");
    assert!(r.rules.is_empty() && r.user_ids.is_empty());
    assert!(r.response_header.is_none());
}

#[test]
fn weights_accept_integers_floats_and_fractions() {
    for (a, b) in [
        ("10", "90"),
        ("10.0", "90.0"),
        ("0.5", "99.5"),
        ("1e1", "9e1"),
    ] {
        let r = rollout(&format!(
            r#"{{"versions":[{{"name":"a","weight":{a}}},{{"name":"b","weight":{b}}}]}}"#
        ));
        assert_eq!(r.versions.len(), 2);
    }
    // Thirds that only sum to 100 within float rounding.
    rollout(
        r#"{"versions":[{"name":"a","weight":33.3333333},{"name":"b","weight":33.3333333},{"name":"c","weight":33.3333334}]}"#,
    );
}

#[test]
fn header_names_are_lowercased() {
    let r = rollout(
        r#"{"routingHeader":"X-Model-Version","versions":[{"name":"v1","weight":100}],
            "stickiness":{"userIdHeaders":["X-User-ID"]}}"#,
    );
    assert_eq!(r.routing_header, "x-model-version");
    assert_eq!(r.headers, vec!["x-user-id".to_string()]);
}

#[test]
fn istio_doubles_for_whole_numbers_are_accepted() {
    let r = rollout(
        r#"{"versions":[{"name":"v1","weight":100.0}],
            "stickiness":{"anonymousCookie":{"name":"cid","maxAgeSeconds":3600.0}}}"#,
    );
    assert_eq!(r.anonymous_cookie.as_ref().unwrap().max_age_seconds, 3600);
}

// ---------------------------------------------------------------------------
// Config: every error names its field.
// ---------------------------------------------------------------------------

#[test]
fn config_errors_name_the_field_and_reason() {
    let v = r#""versions":[{"name":"v1","weight":90},{"name":"v2","weight":10}]"#;
    let cases: Vec<(String, &str, &str)> = vec![
        ("".into(), "(config)", "empty"),
        ("not json".into(), "(config)", "JSON object"),
        ("[]".into(), "(config)", "JSON object"),
        ("{".into(), "(config)", "EOF"),
        ("{}".into(), "versions", "required"),
        (r#"{"versions":[]}"#.into(), "versions", "at least one"),
        (
            format!(r#"{{{v},"unknown":1}}"#),
            "unknown",
            "unknown field",
        ),
        (
            format!(r#"{{{v},"routingHeader":""}}"#),
            "routingHeader",
            "empty",
        ),
        (
            format!(r#"{{{v},"routingHeader":"x bad"}}"#),
            "routingHeader",
            "not a valid header name",
        ),
        (
            format!(r#"{{{v},"routingHeader":"x-a\r\nx-b"}}"#),
            "routingHeader",
            "not a valid header name",
        ),
        (
            format!(r#"{{{v},"routingHeader":":path"}}"#),
            "routingHeader",
            "pseudo-header",
        ),
        (
            format!(r#"{{{v},"routingHeader":"Host"}}"#),
            "routingHeader",
            "reserved",
        ),
        (
            format!(r#"{{{v},"responseHeader":"set-cookie"}}"#),
            "responseHeader",
            "reserved",
        ),
        (
            format!(r#"{{{v},"routingHeader":7}}"#),
            "routingHeader",
            "invalid type",
        ),
        (
            r#"{"versions":[{"name":"","weight":100}]}"#.into(),
            "versions[0].name",
            "empty",
        ),
        (
            r#"{"versions":[{"name":"v 1","weight":100}]}"#.into(),
            "versions[0].name",
            "valid header value",
        ),
        (
            r#"{"versions":[{"name":"v1\r\nx: y","weight":100}]}"#.into(),
            "versions[0].name",
            "valid header value",
        ),
        (
            r#"{"versions":[{"name":"v\u00e9","weight":100}]}"#.into(),
            "versions[0].name",
            "valid header value",
        ),
        (
            format!(
                r#"{{"versions":[{{"name":"{}","weight":100}}]}}"#,
                "v".repeat(65)
            ),
            "versions[0].name",
            "longer than",
        ),
        (
            r#"{"versions":[{"name":"v1","weight":50},{"name":"v1","weight":50}]}"#.into(),
            "versions[1].name",
            "twice",
        ),
        (
            r#"{"versions":[{"name":"v1","weight":-1},{"name":"v2","weight":101}]}"#.into(),
            "versions[0].weight",
            "between 0 and 100",
        ),
        (
            r#"{"versions":[{"name":"v1","weight":"100"}]}"#.into(),
            "versions[0].weight",
            "invalid type",
        ),
        (
            r#"{"versions":[{"name":"v1"}]}"#.into(),
            "versions[0]",
            "missing field `weight`",
        ),
        (
            r#"{"versions":[{"name":"v1","weight":100,"color":"blue"}]}"#.into(),
            "versions[0].color",
            "unknown field",
        ),
        (
            r#"{"versions":[{"name":"v1","weight":90},{"name":"v2","weight":9}]}"#.into(),
            "versions",
            "sum to 99",
        ),
        (
            format!(r#"{{{v},"stickiness":{{"userIdHeaders":["x y"]}}}}"#),
            "stickiness.userIdHeaders[0]",
            "not a valid header name",
        ),
        (
            format!(r#"{{{v},"stickiness":{{"userIdHeaders":["x-canary-version"]}}}}"#),
            "stickiness.userIdHeaders[0]",
            "routing header",
        ),
        (
            format!(r#"{{{v},"stickiness":{{"userIdHeaders":["a","A"]}}}}"#),
            "stickiness.userIdHeaders[1]",
            "twice",
        ),
        (
            format!(r#"{{{v},"stickiness":{{"userIdCookies":["a;b"]}}}}"#),
            "stickiness.userIdCookies[0]",
            "not a valid cookie name",
        ),
        (
            format!(r#"{{{v},"stickiness":{{"userIdCookies":[""]}}}}"#),
            "stickiness.userIdCookies[0]",
            "empty",
        ),
        (
            format!(r#"{{{v},"stickiness":{{"salt":"{}"}}}}"#, "s".repeat(257)),
            "stickiness.salt",
            "longer than",
        ),
        (
            format!(
                r#"{{{v},"stickiness":{{"anonymousCookie":{{"name":"c","maxAgeSeconds":1.5}}}}}}"#
            ),
            "stickiness.anonymousCookie.maxAgeSeconds",
            "whole number",
        ),
        (
            format!(
                r#"{{{v},"stickiness":{{"anonymousCookie":{{"name":"c","maxAgeSeconds":0}}}}}}"#
            ),
            "stickiness.anonymousCookie.maxAgeSeconds",
            "at least 1",
        ),
        (
            format!(r#"{{{v},"stickiness":{{"anonymousCookie":{{"name":"c=d"}}}}}}"#),
            "stickiness.anonymousCookie.name",
            "not a valid cookie name",
        ),
        (
            format!(r#"{{{v},"stickiness":{{"userIdHeader":["x"]}}}}"#),
            "stickiness.userIdHeader",
            "unknown field",
        ),
        (
            format!(
                r#"{{{v},"rules":[{{"name":"t","match":{{"headers":{{"x-t":{{"exact":"1"}}}}}},"version":"v3"}}]}}"#
            ),
            "rules[0].version",
            "not a listed version",
        ),
        (
            format!(r#"{{{v},"rules":[{{"name":"t","match":{{}},"version":"v2"}}]}}"#),
            "rules[0].match",
            "at least one",
        ),
        (
            format!(r#"{{{v},"rules":[{{"name":"t","version":"v2"}}]}}"#),
            "rules[0].match",
            "at least one",
        ),
        (
            format!(
                r#"{{{v},"rules":[{{"name":"","match":{{"headers":{{"x-t":{{"exact":"1"}}}}}},"version":"v2"}}]}}"#
            ),
            "rules[0].name",
            "1 to",
        ),
        (
            format!(
                r#"{{{v},"rules":[{{"name":"t","match":{{"headers":{{"x-t":{{}}}}}},"version":"v2"}}]}}"#
            ),
            "rules[0].match.headers.x-t",
            "one of exact, prefix or regex",
        ),
        (
            format!(
                r#"{{{v},"rules":[{{"name":"t","match":{{"headers":{{"x-t":{{"exact":"1","prefix":"1"}}}}}},"version":"v2"}}]}}"#
            ),
            "rules[0].match.headers.x-t",
            "exactly one",
        ),
        (
            format!(
                r#"{{{v},"rules":[{{"name":"t","match":{{"headers":{{"x-t":{{"suffix":"1"}}}}}},"version":"v2"}}]}}"#
            ),
            "rules[0].match.headers.x-t.suffix",
            "unknown field",
        ),
        (
            format!(
                r#"{{{v},"rules":[{{"name":"t","match":{{"headers":{{"x-t":{{"regex":"(unclosed"}}}}}},"version":"v2"}}]}}"#
            ),
            "rules[0].match.headers.x-t.regex",
            "invalid regex",
        ),
        (
            format!(
                r#"{{{v},"rules":[{{"name":"t","match":{{"headers":{{"x-t":{{"regex":"{}"}}}}}},"version":"v2"}}]}}"#,
                "a".repeat(513)
            ),
            "rules[0].match.headers.x-t.regex",
            "longer than 512",
        ),
        (
            format!(
                r#"{{{v},"rules":[{{"name":"t","match":{{"headers":{{"X-T":{{"exact":"1"}},"x-t":{{"exact":"2"}}}}}},"version":"v2"}}]}}"#
            ),
            "rules[0].match.headers.x-t",
            "twice",
        ),
        (
            format!(
                r#"{{{v},"rules":[{{"name":"t","match":{{"cookies":{{"a b":{{"exact":"1"}}}}}},"version":"v2"}}]}}"#
            ),
            "rules[0].match.cookies.a b",
            "not a valid cookie name",
        ),
        (
            format!(
                r#"{{{v},"rules":[{{"name":"t","match":{{"headers":{{"x":{{"exact":"1"}}}}}},"version":"v2"}},{{"name":"t","match":{{"headers":{{"y":{{"exact":"1"}}}}}},"version":"v2"}}]}}"#
            ),
            "rules[1].name",
            "earlier rule",
        ),
    ];
    for (json, field, reason) in cases {
        let e = rejected(&json);
        assert_eq!(e.field, field, "config {json}\nerror: {e}");
        assert!(
            e.reason.contains(reason),
            "config {json}\nerror {e:?} lacks {reason:?}"
        );
    }
}

#[test]
fn config_size_limits_are_enforced() {
    let many_versions: Vec<String> = (0..17)
        .map(|i| {
            format!(
                r#"{{"name":"v{i}","weight":{}}}"#,
                if i == 0 { 100 } else { 0 }
            )
        })
        .collect();
    let e = rejected(&format!(r#"{{"versions":[{}]}}"#, many_versions.join(",")));
    assert_eq!(e.field, "versions");

    let rule = |i: usize| {
        format!(
            r#"{{"name":"r{i}","match":{{"headers":{{"x-{i}":{{"exact":"1"}}}}}},"version":"v1"}}"#
        )
    };
    let rules: Vec<String> = (0..33).map(rule).collect();
    let e = rejected(&format!(
        r#"{{"versions":[{{"name":"v1","weight":100}}],"rules":[{}]}}"#,
        rules.join(",")
    ));
    assert_eq!(e.field, "rules");
    // 32 rules, each with its own header, read 32 distinct headers: accepted.
    let rules: Vec<String> = (0..32).map(rule).collect();
    rollout(&format!(
        r#"{{"versions":[{{"name":"v1","weight":100}}],"rules":[{}]}}"#,
        rules.join(",")
    ));
    // One more distinct header (a user id) is one too many.
    let e = rejected(&format!(
        r#"{{"versions":[{{"name":"v1","weight":100}}],"rules":[{}],"stickiness":{{"userIdHeaders":["x-user"]}}}}"#,
        rules.join(",")
    ));
    assert_eq!(e.field, "rules[31].match.headers.x-31");
    assert!(e.reason.contains("distinct headers"), "{e}");
}

#[test]
fn regex_bombs_are_rejected_or_linear() {
    // A pattern whose compiled program would be huge is refused at config time.
    let e = rejected(
        r#"{"versions":[{"name":"v1","weight":100}],
            "rules":[{"name":"t","match":{"headers":{"x":{"regex":"((((((a{100}){100}){100}){100})))"}}},"version":"v1"}]}"#,
    );
    assert_eq!(e.field, "rules[0].match.headers.x.regex");
    // The classic catastrophic-backtracking pattern runs in linear time.
    let r = rollout(
        r#"{"versions":[{"name":"v1","weight":100}],
            "rules":[{"name":"t","match":{"headers":{"x":{"regex":"(a+)+$"}}},"version":"v1"}]}"#,
    );
    let mut value = vec![b'a'; 8192];
    value.push(b'!');
    let mut req = FakeRequest::with(&[("x", &value)]);
    let d = decide(&r, &mut req, &mut WyRand(1), Live::default());
    assert_eq!(d.reason, Reason::Anonymous, "no match, no hang");
}

// ---------------------------------------------------------------------------
// Hash and buckets: reproducible outside the filter.
// ---------------------------------------------------------------------------

/// Vectors computed independently with Python's `mmh3` and the README's
/// formula: bucket = mmh3.hash(salt + ":" + user_id, 0, signed=False).
#[test]
fn bucket_test_vectors_match_the_documented_formula() {
    let r = split(90.0, 10.0); // salt defaults to "model-v1"
    let vectors = [
        ("alice", 0x849b_c28b_u32),
        ("bob", 0x933b_c310),
        ("carol", 0xdee8_5a33),
        ("dave", 0x53eb_3fd8),
        ("user-42", 0x5b1b_2195),
        ("0f8fad5b-d9cb-469f-a165-70867728950e", 0x55d4_f6ad),
        ("user-27", 0xf6e9_7511),
        ("user-31", 0xeac7_0d80),
    ];
    for (id, bucket) in vectors {
        assert_eq!(r.bucket_of(id.as_bytes()), bucket, "{id}");
    }
    for id in ["alice", "bob", "carol", "dave", "user-42"] {
        assert_eq!(version_for(&r, id), "model-v1", "{id} at 90/10");
    }
    for id in ["user-27", "user-31", "user-47"] {
        assert_eq!(version_for(&r, id), "model-v2", "{id} at 90/10");
    }
    let half = split(50.0, 50.0);
    for (id, want) in [
        ("alice", "model-v2"),
        ("bob", "model-v2"),
        ("carol", "model-v2"),
        ("dave", "model-v1"),
        ("user-42", "model-v1"),
    ] {
        assert_eq!(version_for(&half, id), want, "{id} at 50/50");
    }
}

#[test]
fn long_user_ids_are_hashed_over_their_first_256_bytes() {
    let r = rollout(r#"{"versions":[{"name":"v1","weight":100}],"stickiness":{"salt":"s"}}"#);
    let long = "x".repeat(300);
    assert_eq!(r.bucket_of(long.as_bytes()), 0x9f87_a57d);
    assert_eq!(r.bucket_of(&long.as_bytes()[..256]), 0x9f87_a57d);
    assert_eq!(r.bucket_of(b"x"), crate::hash::murmur3_32(b"s:x", 0));
}

#[test]
fn thresholds_follow_the_cumulative_floor_formula() {
    let r = split(90.0, 10.0);
    assert_eq!(
        r.thresholds,
        vec![(0.9f64 * 4294967296.0).floor() as u64, 1 << 32]
    );
    let edge = r.thresholds[0];
    assert_eq!(r.version_of_bucket((edge - 1) as u32), 0);
    assert_eq!(r.version_of_bucket(edge as u32), 1);
    assert_eq!(r.version_of_bucket(u32::MAX), 1);
    assert_eq!(r.version_of_bucket(0), 0);
    // Zero weights never receive anyone, wherever they are listed.
    let r = rollout(
        r#"{"versions":[{"name":"a","weight":0},{"name":"b","weight":100},{"name":"c","weight":0}]}"#,
    );
    for b in [0u32, 1, 1 << 31, u32::MAX] {
        assert_eq!(r.version_of_bucket(b), 1);
    }
}

// ---------------------------------------------------------------------------
// The decision.
// ---------------------------------------------------------------------------

#[test]
fn rules_come_first_and_the_first_match_wins() {
    let r = rollout(DEMO);
    // A tester with a user id that would be on v1: the rule wins.
    let mut req = FakeRequest::with(&[("x-canary-tester", b"true"), ("x-user-id", b"alice")]);
    let d = decide(&r, &mut req, &mut WyRand(1), Live::default());
    assert_eq!((d.version, d.reason), (1, Reason::Rule));
    // Both rules match: the first listed wins.
    let mut req = FakeRequest::with(&[("x-canary-tester", b"true"), ("cookie", b"pin=stable")]);
    assert_eq!(
        decide(&r, &mut req, &mut WyRand(1), Live::default()).version,
        1
    );
    // Only the second rule matches.
    let mut req = FakeRequest::with(&[
        ("x-canary-tester", b"false"),
        ("cookie", b"a=b; pin=stable"),
    ]);
    let d = decide(&r, &mut req, &mut WyRand(1), Live::default());
    assert_eq!((d.version, d.reason), (0, Reason::Rule));
    // Near misses do not match.
    for (name, value) in [
        ("x-canary-tester", &b"TRUE"[..]),
        ("x-canary-tester", b"true "),
        ("x-canary-tester", b""),
        ("cookie", b"pin=stable2"),
        ("cookie", b"xpin=stable"),
    ] {
        let mut req = FakeRequest::with(&[(name, value), ("x-user-id", b"user-27")]);
        let d = decide(&r, &mut req, &mut WyRand(1), Live::default());
        assert_eq!(d.reason, Reason::Sticky, "{name}: {value:?}");
    }
}

#[test]
fn every_condition_of_a_rule_must_hold() {
    let r = rollout(
        r#"{"versions":[{"name":"v1","weight":100},{"name":"v2","weight":0}],
            "rules":[{"name":"qa","match":{
                "headers":{"x-team":{"prefix":"qa-"},":path":{"regex":"/v1/models/[a-z]+:predict"}},
                "cookies":{"beta":{"exact":"1"}}},"version":"v2"}]}"#,
    );
    let full: [(&str, &[u8]); 3] = [
        ("x-team", b"qa-berlin"),
        (":path", b"/v1/models/iris:predict"),
        ("cookie", b"beta=1"),
    ];
    let mut req = FakeRequest::with(&full);
    assert_eq!(
        decide(&r, &mut req, &mut WyRand(1), Live::default()).version,
        1
    );
    for missing in 0..full.len() {
        let partial: Vec<(&str, &[u8])> = full
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != missing)
            .map(|(_, h)| *h)
            .collect();
        let mut req = FakeRequest::with(&partial);
        assert_eq!(
            decide(&r, &mut req, &mut WyRand(1), Live::default()).version,
            0,
            "without {:?}",
            full[missing].0
        );
    }
    let mut req = FakeRequest::with(&[
        ("x-team", b"qa-berlin"),
        (":path", b"/v1/models/iris:predict/extra"),
        ("cookie", b"beta=1"),
    ]);
    assert_eq!(
        decide(&r, &mut req, &mut WyRand(1), Live::default()).version,
        0,
        "regex is anchored"
    );
}

#[test]
fn a_rule_may_pin_a_zero_weight_version() {
    let r = rollout(
        r#"{"versions":[{"name":"v1","weight":100},{"name":"v2","weight":0}],
            "stickiness":{"userIdHeaders":["x-user-id"]},
            "rules":[{"name":"testers","match":{"headers":{"x-canary-tester":{"exact":"true"}}},"version":"v2"}]}"#,
    );
    let mut req = FakeRequest::with(&[("x-canary-tester", b"true")]);
    assert_eq!(
        decide(&r, &mut req, &mut WyRand(1), Live::default()).version,
        1
    );
    for i in 0..2000 {
        assert_eq!(version_for(&r, &format!("user-{i}")), "v1");
    }
}

/// The first seed's convention: testers ask for the canary in the routing
/// header itself (`x-canary-version: v2`). A rule on that header reads what
/// the client sent; the filter then writes the version's own name.
#[test]
fn a_rule_on_the_routing_header_reads_what_the_client_sent() {
    let r = rollout(
        r#"{"versions":[{"name":"model-v1","weight":100},{"name":"model-v2","weight":0}],
            "stickiness":{"userIdHeaders":["x-user-id"]},
            "rules":[{"name":"seed-testers","match":{"headers":{"X-Canary-Version":{"exact":"v2"}}},"version":"model-v2"}]}"#,
    );
    let mut host = FakeRequest::with(&[("x-user-id", b"alice"), ("x-canary-version", b"v2")]);
    let (d, _) = filter::on_request_headers(&r, &mut host, &mut WyRand(1), Live::default());
    assert_eq!((d.version, d.reason), (1, Reason::Rule));
    assert_eq!(
        host.set,
        vec![("x-canary-version".to_string(), b"model-v2".to_vec())]
    );
    // Any other value, or none, is replaced as usual.
    for spoof in [&b"model-v2"[..], b"v3", b""] {
        let mut host = FakeRequest::with(&[("x-user-id", b"alice"), ("x-canary-version", spoof)]);
        let (d, _) = filter::on_request_headers(&r, &mut host, &mut WyRand(1), Live::default());
        assert_eq!((d.version, d.reason), (0, Reason::Sticky));
        assert_eq!(
            host.set,
            vec![("x-canary-version".to_string(), b"model-v1".to_vec())]
        );
    }
}

#[test]
fn user_id_sources_are_tried_in_order() {
    let r = rollout(
        r#"{"versions":[{"name":"v1","weight":50},{"name":"v2","weight":50}],
            "stickiness":{"userIdHeaders":["x-user-id","x-session"],"userIdCookies":["uid","sid"]}}"#,
    );
    let bucket_version = |id: &str| r.version_of_bucket(r.bucket_of(id.as_bytes()));
    let cases: Vec<(Headers, &str)> = vec![
        (
            vec![
                ("x-user-id", b"a"),
                ("x-session", b"b"),
                ("cookie", b"uid=c"),
            ],
            "a",
        ),
        (vec![("x-session", b"b"), ("cookie", b"uid=c; sid=d")], "b"),
        (vec![("cookie", b"sid=d; uid=c")], "c"),
        (vec![("cookie", b"sid=d")], "d"),
        // Empty values are skipped, not hashed.
        (
            vec![
                ("x-user-id", b""),
                ("x-session", b"  "),
                ("cookie", b"uid=; sid=d"),
            ],
            "d",
        ),
        // Surrounding whitespace is not part of the id.
        (vec![("x-user-id", b"  a\t")], "a"),
    ];
    for (headers, id) in cases {
        let mut req = FakeRequest::with(&headers);
        let d = decide(&r, &mut req, &mut WyRand(1), Live::default());
        assert_eq!(d.reason, Reason::Sticky, "{headers:?}");
        assert_eq!(
            d.version,
            bucket_version(id),
            "{headers:?} should use id {id}"
        );
    }
}

#[test]
fn the_cookie_header_is_read_once_per_request() {
    let r = rollout(
        r#"{"versions":[{"name":"v1","weight":50},{"name":"v2","weight":50}],
            "stickiness":{"userIdCookies":["a","b","c"]}}"#,
    );
    assert_eq!(r.headers, vec!["cookie".to_string()]);
    let slots: Vec<_> = r.user_ids.iter().collect();
    assert_eq!(slots.len(), 3);
}

#[test]
fn stickiness_same_id_same_version_always() {
    let r = split(50.0, 50.0);
    for i in 0..500 {
        let id = format!("user-{i}");
        let first = version_for(&r, &id);
        for _ in 0..3 {
            assert_eq!(version_for(&r, &id), first);
        }
    }
}

#[test]
fn the_split_is_within_statistical_bounds_over_100000_ids() {
    for (v1, v2) in [(99.0, 1.0), (90.0, 10.0), (50.0, 50.0), (0.5, 99.5)] {
        let r = split(v1, v2);
        let n = 100_000;
        let on_v2 = (0..n)
            .filter(|i| {
                let id = format!("{i:08x}-user");
                r.version_of_bucket(r.bucket_of(id.as_bytes())) == 1
            })
            .count() as f64;
        let p = v2 / 100.0;
        let expected = p * n as f64;
        // Five standard deviations of a binomial: fails by chance ~1e-6.
        let sigma = (n as f64 * p * (1.0 - p)).sqrt();
        assert!(
            (on_v2 - expected).abs() <= 5.0 * sigma,
            "{v1}/{v2}: {on_v2} on v2, expected {expected} ± {}",
            5.0 * sigma
        );
    }
}

#[test]
fn anonymous_requests_follow_the_split() {
    let r = split(90.0, 10.0);
    let mut rng = WyRand(42);
    let n = 100_000;
    let mut on_v2 = 0;
    for _ in 0..n {
        let d = decide(&r, &mut FakeRequest::default(), &mut rng, Live::default());
        assert_eq!(d.reason, Reason::Anonymous);
        assert!(d.new_id.is_none());
        on_v2 += d.version;
    }
    let sigma = (n as f64 * 0.1 * 0.9).sqrt();
    assert!((on_v2 as f64 - 10_000.0).abs() <= 5.0 * sigma, "{on_v2}");
}

#[test]
fn anonymous_cookie_ids_are_bucketed_like_user_ids() {
    let r = rollout(
        r#"{"versions":[{"name":"v1","weight":50},{"name":"v2","weight":50}],
            "stickiness":{"userIdHeaders":["x-user-id"],"anonymousCookie":{"name":"canary_id"}}}"#,
    );
    let mut rng = WyRand(7);
    let mut seen = std::collections::HashSet::new();
    for _ in 0..200 {
        let d = decide(&r, &mut FakeRequest::default(), &mut rng, Live::default());
        let id = d.new_id.expect("an id is generated");
        assert!(id.0.iter().all(|b| b.is_ascii_hexdigit()));
        assert!(seen.insert(id.0), "ids are unique");
        assert_eq!(d.version, r.version_of_bucket(r.bucket_of(&id.0)));
        // The next request carries the cookie and is sticky on the same version.
        let cookie = [b"canary_id=".as_slice(), &id.0].concat();
        let mut req = FakeRequest::with(&[("cookie", &cookie)]);
        let next = decide(&r, &mut req, &mut rng, Live::default());
        assert_eq!(
            (next.version, next.reason, next.new_id),
            (d.version, Reason::Sticky, None)
        );
    }
}

/// The ramp guarantee: when weight moves from earlier-listed versions to
/// later-listed ones (every prefix sum of weights shrinks or stays), no user
/// moves to an earlier-listed version. Checked for many random weight pairs.
#[test]
fn ramp_guarantee_no_user_moves_backwards() {
    let ids: Vec<String> = (0..3000).map(|i| format!("u{i}")).collect();
    let mut rng = WyRand(99);
    // 0..=100 with three decimals.
    let weight = |rng: &mut WyRand| (rng.next_u64() % 100_001) as f64 / 1000.0;
    for _ in 0..150 {
        // Two versions: v2 grows from a to b >= a.
        let (x, y) = (weight(&mut rng), weight(&mut rng));
        let (a, b) = (x.min(y), x.max(y));
        let before = split(100.0 - a, a);
        let after = split(100.0 - b, b);
        for id in &ids {
            let (vb, va) = (
                before.version_of_bucket(before.bucket_of(id.as_bytes())),
                after.version_of_bucket(after.bucket_of(id.as_bytes())),
            );
            assert!(
                va >= vb,
                "{id} moved back from v{} to v{} when v2 went {a}% -> {b}%",
                vb + 1,
                va + 1
            );
        }
    }
    // Three versions: random weights, then move weight forward.
    for _ in 0..150 {
        let mut w = [weight(&mut rng), weight(&mut rng), 0.0];
        if w[0] + w[1] > 100.0 {
            w = [w[0] / 2.0, w[1] / 2.0, 0.0];
        }
        w[2] = 100.0 - w[0] - w[1];
        let mut moved = w;
        let from = (rng_pick(&mut rng, 2)) as usize; // 0 or 1
        let to = from + 1 + rng_pick(&mut rng, (2 - from) as u64) as usize;
        let amount = moved[from] * ((rng.next_u64() % 101) as f64 / 100.0);
        moved[from] -= amount;
        moved[to] += amount;
        let three = |w: [f64; 3]| {
            rollout(&format!(
                r#"{{"versions":[{{"name":"v1","weight":{}}},{{"name":"v2","weight":{}}},{{"name":"v3","weight":{}}}]}}"#,
                w[0], w[1], w[2]
            ))
        };
        let (before, after) = (three(w), three(moved));
        for id in &ids {
            let vb = before.version_of_bucket(before.bucket_of(id.as_bytes()));
            let va = after.version_of_bucket(after.bucket_of(id.as_bytes()));
            assert!(
                va >= vb,
                "{id}: {w:?} -> {moved:?} moved it back from {vb} to {va}"
            );
        }
    }
}

fn rng_pick(rng: &mut WyRand, n: u64) -> u64 {
    if n == 0 {
        0
    } else {
        rng.next_u64() % n
    }
}

#[test]
fn ramp_users_on_v2_at_1_percent_stay_through_100() {
    let steps = [1.0, 10.0, 50.0, 100.0];
    let ids: Vec<String> = (0..20_000).map(|i| format!("user-{i}")).collect();
    let early: Vec<&String> = ids
        .iter()
        .filter(|id| version_for(&split(99.0, 1.0), id) == "model-v2")
        .collect();
    assert!(!early.is_empty());
    for w in steps {
        let r = split(100.0 - w, w);
        for id in &early {
            assert_eq!(version_for(&r, id), "model-v2", "{id} at {w}%");
        }
    }
    // Rollback sends everyone to v1.
    let r = split(100.0, 0.0);
    assert!(ids.iter().all(|id| version_for(&r, id) == "model-v1"));
}

#[test]
fn salt_reshuffles_who_goes_first() {
    let with_salt = |salt: &str| {
        rollout(&format!(
            r#"{{"versions":[{{"name":"model-v1","weight":90}},{{"name":"model-v2","weight":10}}],
                "stickiness":{{"userIdHeaders":["x-user-id"],"salt":"{salt}"}}}}"#
        ))
    };
    let ids: Vec<String> = (0..20_000).map(|i| format!("user-{i}")).collect();
    let canaries = |r: &Rollout| -> std::collections::HashSet<&String> {
        ids.iter()
            .filter(|id| version_for(r, id) == "model-v2")
            .collect()
    };
    let a = canaries(&with_salt("rollout-1"));
    let b = canaries(&with_salt("rollout-2"));
    let overlap = a.intersection(&b).count();
    // Independent 10% samples overlap in about 10% of their members.
    assert!(overlap < a.len() / 5, "overlap {overlap} of {}", a.len());
    // The default salt is the first version's name: explicit "model-v1" is identical.
    assert_eq!(
        canaries(&with_salt("model-v1")),
        canaries(&split(90.0, 10.0))
    );
}

#[test]
fn odd_bytes_never_panic_and_still_decide() {
    let r = rollout(DEMO);
    let long = vec![b'u'; 8192];
    let odd: Vec<Headers> = vec![
        vec![("x-user-id", b"\xff\xfe\x00latin1 \xe9")],
        vec![("x-user-id", &long)],
        vec![("x-user-id", b"")],
        vec![("cookie", b";;;=;=;user_id")],
        vec![("cookie", b"user_id=\"")],
        vec![("cookie", b"\xff=\xff; user_id=\xe9")],
        vec![("x-canary-tester", b"\xff")],
        vec![("cookie", &long)],
    ];
    for headers in odd {
        let mut req = FakeRequest::with(&headers);
        let d = decide(&r, &mut req, &mut WyRand(3), Live::default());
        assert!(d.version < 2);
    }
}

// ---------------------------------------------------------------------------
// The filter against a fake host.
// ---------------------------------------------------------------------------

#[test]
fn filter_replaces_a_spoofed_routing_header_and_reroutes() {
    let r = rollout(DEMO);
    let mut host = FakeRequest::with(&[("x-user-id", b"alice"), ("x-canary-version", b"model-v2")]);
    let (d, pending) = filter::on_request_headers(&r, &mut host, &mut WyRand(1), Live::default());
    assert_eq!(d.version, 0);
    assert_eq!(
        host.set,
        vec![("x-canary-version".to_string(), b"model-v1".to_vec())]
    );
    assert_eq!(host.counted, vec![(0, Reason::Sticky)]);
    let pending = pending.expect("responseHeader is configured");
    let mut resp = FakeResponse::default();
    filter::on_response_headers(&r, &pending, &mut resp);
    assert_eq!(
        resp.headers,
        vec![("x-canary-version".to_string(), "model-v1".to_string())]
    );
}

#[test]
fn filter_reads_each_header_at_most_once() {
    let r = rollout(
        r#"{"versions":[{"name":"v1","weight":50},{"name":"v2","weight":50}],
            "stickiness":{"userIdCookies":["uid"]},
            "rules":[{"name":"a","match":{"cookies":{"x":{"exact":"1"}}},"version":"v2"},
                     {"name":"b","match":{"cookies":{"y":{"exact":"1"}}},"version":"v2"}]}"#,
    );
    assert_eq!(r.headers, vec!["cookie".to_string()]);
    // The fake re-reads; the real host caches per slot. Check slots are shared.
    for s in &r.user_ids {
        assert!(matches!(s, crate::config::Source::Cookie { slot: 0, .. }));
    }
}

#[test]
fn filter_without_response_work_leaves_nothing_pending() {
    let r = split(90.0, 10.0);
    let mut host = FakeRequest::with(&[("x-user-id", b"bob")]);
    let (_, pending) = filter::on_request_headers(&r, &mut host, &mut WyRand(1), Live::default());
    assert!(
        pending.is_none(),
        "no response header, no cookie: nothing to do on the response"
    );
}

#[test]
fn filter_sets_the_anonymous_cookie_once() {
    let r = rollout(
        r#"{"versions":[{"name":"v1","weight":50},{"name":"v2","weight":50}],
            "stickiness":{"anonymousCookie":{"name":"canary_id","maxAgeSeconds":600,"secure":true}}}"#,
    );
    let mut host = FakeRequest::default();
    let (d, pending) = filter::on_request_headers(&r, &mut host, &mut WyRand(5), Live::default());
    let pending = pending.expect("a new id must be sent back");
    let mut resp = FakeResponse::default();
    filter::on_response_headers(&r, &pending, &mut resp);
    let id = String::from_utf8(d.new_id.unwrap().0.to_vec()).unwrap();
    assert_eq!(
        resp.headers,
        vec![(
            "set-cookie".to_string(),
            format!("canary_id={id}; Max-Age=600; Path=/; HttpOnly; SameSite=Lax; Secure")
        )]
    );
    // Returning with the cookie: sticky, no new cookie.
    let cookie = format!("canary_id={id}");
    let mut host = FakeRequest::with(&[("cookie", cookie.as_bytes())]);
    let (d2, pending) = filter::on_request_headers(&r, &mut host, &mut WyRand(6), Live::default());
    assert_eq!((d2.version, d2.reason), (d.version, Reason::Sticky));
    assert!(pending.is_none());
}

#[test]
fn metric_names_carry_plugin_version_and_reason_as_istio_stat_tags() {
    let names = filter::MetricNames::new("models.canary-selector", None);
    assert_eq!(
        names.requests("model-v2", Reason::Sticky),
        "plugin=.=models.canary-selector;.;version=.=model-v2;.;reason=.=sticky;.;canary_selector_requests_total"
    );
    assert_eq!(
        names.guard_tripped(),
        "plugin=.=models.canary-selector;.;canary_selector_guard_tripped"
    );
    assert_eq!(
        names.weight("v1.2.0"),
        "plugin=.=models.canary-selector;.;version=.=v1.2.0;.;canary_selector_weight_ppm"
    );
    // Istio's extractor for each tag, `(<tag>=\.=(.*?);\.;)`, finds each
    // value whole, and what is left is the metric name.
    let name = names.failed_responses("model-v2", Reason::Guard);
    let mut rest = name.clone();
    let mut tags = Vec::new();
    for tag in ["plugin", "version", "reason"] {
        let open = format!("{tag}=.=");
        let start = name.find(&open).unwrap();
        let len = name[start + open.len()..].find(";.;").unwrap();
        tags.push(name[start + open.len()..][..len].to_string());
        rest = rest.replace(&name[start..start + open.len() + len + 3], "");
    }
    assert_eq!(tags, ["models.canary-selector", "model-v2", "guard"]);
    assert_eq!(rest, "canary_selector_failed_responses_total");
    assert_eq!(
        names.failures("model-v2", crate::guard::Failure::Grpc(13)),
        "plugin=.=models.canary-selector;.;version=.=model-v2;.;failure=.=INTERNAL;.;canary_selector_failures_total"
    );
    // A rollout of a config that lists `rollouts` is a tag of its own.
    let scoped = filter::MetricNames::new("models.canary-selector", Some("iris"));
    assert_eq!(
        scoped.requests("model-v2", Reason::Sticky),
        "plugin=.=models.canary-selector;.;rollout=.=iris;.;version=.=model-v2;.;reason=.=sticky;.;canary_selector_requests_total"
    );
    assert_eq!(
        filter::MetricNames::new("p", None).no_rollout_requests(),
        "plugin=.=p;.;canary_selector_no_rollout_requests_total"
    );
}

#[test]
fn plugin_names_cannot_break_the_stat_tags() {
    // A plugin name is Envoy's filter name, not config: the framing and
    // anything invisible become `_`.
    let names = filter::MetricNames::new("a;.;version=.=b\nc", None);
    assert_eq!(
        names.guard_tripped(),
        "plugin=.=a_._version_._b_c;.;canary_selector_guard_tripped"
    );
}

#[test]
fn weights_are_shown_in_millionths() {
    assert_eq!(filter::weight_ppm(100.0), 1_000_000);
    assert_eq!(filter::weight_ppm(10.0), 100_000);
    assert_eq!(filter::weight_ppm(0.001), 10);
    assert_eq!(filter::weight_ppm(33.333_333_3), 333_333);
    assert_eq!(filter::weight_ppm(0.0), 0);
}

#[test]
fn gauges_of_versions_a_push_drops_are_zeroed() {
    use crate::shared::gauged_names;
    let (dropped, record) = gauged_names(b"", &["model-v1", "model-v2"], 64);
    assert!(dropped.is_empty());
    assert_eq!(record, b"model-v1 model-v2");
    // Promotion: model-v1 goes, and its gauges with it.
    let (dropped, record) = gauged_names(&record, &["model-v2"], 64);
    assert_eq!(dropped, ["model-v1"]);
    assert_eq!(record, b"model-v2 model-v1");
    // It stays in the record (another VM may still show it) until it is
    // listed again or pushed out by newer names.
    let (dropped, record) = gauged_names(&record, &["model-v1"], 64);
    assert_eq!(dropped, ["model-v2"]);
    assert_eq!(record, b"model-v1 model-v2");
    let many: Vec<String> = (0..100).map(|i| format!("old-{i}")).collect();
    let many = many.join(" ");
    let (dropped, record) = gauged_names(many.as_bytes(), &["model-v1", "model-v2"], 64);
    assert_eq!(dropped.len(), 100);
    let kept: Vec<&[u8]> = record.split(|&b| b == b' ').collect();
    assert_eq!(kept.len(), 64);
    assert_eq!(&kept[..3], [&b"model-v1"[..], b"model-v2", b"old-0"]);
    // Foreign bytes in shared data are no name.
    let (dropped, _) = gauged_names(b"\xff\xfe", &["model-v1"], 64);
    assert!(dropped.is_empty());
}

#[test]
fn the_weight_at_a_time_follows_the_schedule() {
    let r = rollout(
        r#"{"versions":[{"name":"v1","weight":100},{"name":"v2","weight":0}],
            "schedule":{"start":"2026-12-01T09:00:00Z","steps":[
              {"afterSeconds":0,"weights":{"v1":90,"v2":10}},
              {"afterSeconds":60,"weights":{"v2":100}}]}}"#,
    );
    let start = crate::config::rfc3339_ms("2026-12-01T09:00:00Z").unwrap();
    let at = |ms: i64| (r.weight_at(ms, 0), r.weight_at(ms, 1), r.weight_at(ms, 2));
    assert_eq!(at(start - 1), (100.0, 0.0, 0.0));
    assert_eq!(at(start), (90.0, 10.0, 0.0));
    assert_eq!(at(start + 60_000), (0.0, 100.0, 0.0));
}

// ---------------------------------------------------------------------------
// Guard and schedule (automatic rollback, scheduled ramps).
// ---------------------------------------------------------------------------

const GUARDED: &str = r#"{
  "versions": [{"name": "model-v1", "weight": 50}, {"name": "model-v2", "weight": 50}],
  "stickiness": {"userIdHeaders": ["x-user-id"]},
  "rules": [{"name": "testers", "match": {"headers": {"x-canary-tester": {"exact": "true"}}}, "version": "model-v2"}],
  "responseReasonHeader": "x-canary-reason",
  "guard": {"windowSeconds": 10, "minRequests": 20, "maxErrorRate": 0.1, "slowResponseMs": 500, "maxSlowRate": 0.5}
}"#;

#[test]
fn guard_config_defaults_and_errors() {
    let r = rollout(GUARDED);
    let g = r.guard.as_ref().unwrap();
    assert_eq!(
        (
            g.window_ms,
            g.min_requests,
            g.max_error_rate,
            g.slow_response_ms,
            g.max_slow_rate
        ),
        (10_000, 20, Some(0.1), Some(500), Some(0.5))
    );
    let r = rollout(
        r#"{"versions":[{"name":"a","weight":90},{"name":"b","weight":10}],"guard":{"maxErrorRateAboveStable":0.02}}"#,
    );
    let g = r.guard.unwrap();
    assert_eq!((g.window_ms, g.min_requests), (60_000, 20), "defaults");

    let v = r#""versions":[{"name":"a","weight":90},{"name":"b","weight":10}]"#;
    let cases = [
        (
            r#"{"versions":[{"name":"a","weight":100}],"guard":{"maxErrorRate":0.1}}"#.to_string(),
            "guard",
            "two versions",
        ),
        (
            format!(r#"{{{v},"guard":{{}}}}"#),
            "guard",
            "needs a threshold",
        ),
        (
            format!(r#"{{{v},"guard":{{"maxErrorRate":1.5}}}}"#),
            "guard.maxErrorRate",
            "between 0 and 1",
        ),
        (
            format!(r#"{{{v},"guard":{{"maxErrorRateAboveStable":-0.1}}}}"#),
            "guard.maxErrorRateAboveStable",
            "between 0 and 1",
        ),
        (
            format!(r#"{{{v},"guard":{{"maxErrorRate":0.1,"windowSeconds":0}}}}"#),
            "guard.windowSeconds",
            "1 to 3600",
        ),
        (
            format!(r#"{{{v},"guard":{{"maxErrorRate":0.1,"windowSeconds":7200}}}}"#),
            "guard.windowSeconds",
            "1 to 3600",
        ),
        (
            format!(r#"{{{v},"guard":{{"maxErrorRate":0.1,"minRequests":0}}}}"#),
            "guard.minRequests",
            "at least 1",
        ),
        (
            format!(r#"{{{v},"guard":{{"slowResponseMs":100}}}}"#),
            "guard.maxSlowRate",
            "required",
        ),
        (
            format!(r#"{{{v},"guard":{{"maxSlowRate":0.1}}}}"#),
            "guard.slowResponseMs",
            "required",
        ),
        (
            format!(r#"{{{v},"guard":{{"maxErrorRate":0.1,"window":5}}}}"#),
            "guard.window",
            "unknown field",
        ),
    ];
    for (json, field, reason) in cases {
        let e = rejected(&json);
        assert_eq!(e.field, field, "{json}\n{e}");
        assert!(e.reason.contains(reason), "{json}\n{e}");
    }
}

fn scheduled(steps: &str) -> Result<Rollout, ConfigError> {
    Rollout::from_json(
        format!(
            r#"{{"versions":[{{"name":"v1","weight":100}},{{"name":"v2","weight":0}}],
                "stickiness":{{"userIdHeaders":["x-user-id"]}},
                "schedule":{{"start":"2026-12-01T09:00:00Z","steps":[{steps}]}}}}"#
        )
        .as_bytes(),
    )
}

#[test]
fn schedule_config_and_errors() {
    let r = scheduled(
        r#"{"afterSeconds":0,"weights":{"v1":99,"v2":1}},{"afterSeconds":60,"weights":{"v2":10,"v1":90}},{"afterSeconds":120.0,"weights":{"v2":100}}"#,
    )
    .unwrap();
    let s = r.schedule.as_ref().unwrap();
    assert_eq!(
        s.start_ms,
        crate::config::rfc3339_ms("2026-12-01T09:00:00Z").unwrap()
    );
    let at: Vec<i64> = s.steps.iter().map(|st| st.at_ms - s.start_ms).collect();
    assert_eq!(at, vec![0, 60_000, 120_000]);
    assert_eq!(s.steps[2].weights, vec![0.0, 100.0]);

    let cases = [
        (
            r#"{"afterSeconds":0,"weights":{"v1":50,"v2":50}},{"afterSeconds":0,"weights":{"v2":100}}"#,
            "schedule.steps[1].afterSeconds",
            "later",
        ),
        (
            r#"{"afterSeconds":0,"weights":{"v1":50,"v3":50}}"#,
            "schedule.steps[0].weights.v3",
            "not a listed version",
        ),
        (
            r#"{"afterSeconds":0,"weights":{"v1":50,"v2":40}}"#,
            "schedule.steps[0].weights",
            "sum to 90",
        ),
        (
            r#"{"afterSeconds":0,"weights":{"v1":50,"v2":50,"v2":0}}"#,
            "schedule.steps[0].weights.v2",
            "twice",
        ),
        (
            r#"{"afterSeconds":0,"weights":{"v1":50,"v2":50}},{"afterSeconds":10,"weights":{"v1":60,"v2":40}}"#,
            "schedule.steps[1].weights",
            "ramp forward",
        ),
        (
            r#"{"afterSeconds":-5,"weights":{"v2":100}}"#,
            "schedule.steps[0].afterSeconds",
            "whole number",
        ),
        (
            r#"{"weights":{"v2":100}}"#,
            "schedule.steps[0]",
            "missing field `afterSeconds`",
        ),
    ];
    for (steps, field, reason) in cases {
        let e = scheduled(steps).map(|_| ()).unwrap_err();
        assert_eq!(e.field, field, "{steps}\n{e}");
        assert!(e.reason.contains(reason), "{steps}\n{e}");
    }
    let e = Rollout::from_json(
        br#"{"versions":[{"name":"v1","weight":100}],"schedule":{"start":"tomorrow","steps":[{"afterSeconds":0,"weights":{"v1":100}}]}}"#,
    )
    .map(|_| ())
    .unwrap_err();
    assert_eq!(e.field, "schedule.start");
    let e = Rollout::from_json(br#"{"versions":[{"name":"v1","weight":100}],"schedule":{"start":"2026-12-01T09:00:00Z","steps":[]}}"#)
        .map(|_| ())
        .unwrap_err();
    assert_eq!(e.field, "schedule.steps");
}

#[test]
fn the_schedule_moves_the_split_at_each_step_and_only_forward() {
    let r = scheduled(
        r#"{"afterSeconds":0,"weights":{"v1":99,"v2":1}},{"afterSeconds":60,"weights":{"v1":90,"v2":10}},{"afterSeconds":120,"weights":{"v1":50,"v2":50}}"#,
    )
    .unwrap();
    let start = r.schedule.as_ref().unwrap().start_ms;
    let share = |now_ms: i64| {
        let live = Live { now_ms, tripped: 0 };
        let on_v2 = (0..20_000)
            .filter(|i| {
                let id = format!("user-{i}");
                let mut req = FakeRequest::with(&[("x-user-id", id.as_bytes())]);
                decide(&r, &mut req, &mut WyRand(1), live).version == 1
            })
            .count();
        on_v2 as f64 / 20_000.0
    };
    assert_eq!(
        share(start - 1),
        0.0,
        "before the start: the listed weights (100/0)"
    );
    assert!((share(start) - 0.01).abs() < 0.004);
    assert!((share(start + 59_999) - 0.01).abs() < 0.004);
    assert!((share(start + 60_000) - 0.10).abs() < 0.01);
    assert!(
        (share(start + 10 * 3_600_000) - 0.50).abs() < 0.02,
        "the last step holds"
    );
    // Nobody moves back between steps.
    for i in 0..5000 {
        let id = format!("user-{i}");
        let mut last = 0;
        for t in [start - 1, start, start + 60_000, start + 120_000] {
            let mut req = FakeRequest::with(&[("x-user-id", id.as_bytes())]);
            let v = decide(
                &r,
                &mut req,
                &mut WyRand(1),
                Live {
                    now_ms: t,
                    tripped: 0,
                },
            )
            .version;
            assert!(v >= last, "{id} moved back at {t}");
            last = v;
        }
    }
}

#[test]
fn a_tripped_guard_sends_unpinned_traffic_to_stable_but_rules_still_apply() {
    let r = rollout(GUARDED);
    let tripped = Live {
        now_ms: 0,
        tripped: Live::ALL_CANARIES,
    };
    let v2_user = (0..1000)
        .map(|i| format!("user-{i}"))
        .find(|u| version_for(&r, u) == "model-v2")
        .unwrap();
    let mut req = FakeRequest::with(&[("x-user-id", v2_user.as_bytes())]);
    let d = decide(&r, &mut req, &mut WyRand(1), tripped);
    assert_eq!((d.version, d.reason), (0, Reason::Guard));
    // Users already on stable keep their ordinary reason.
    let v1_user = (0..1000)
        .map(|i| format!("user-{i}"))
        .find(|u| version_for(&r, u) == "model-v1")
        .unwrap();
    let mut req = FakeRequest::with(&[("x-user-id", v1_user.as_bytes())]);
    assert_eq!(
        decide(&r, &mut req, &mut WyRand(1), tripped).reason,
        Reason::Sticky
    );
    // Testers still reach the canary to debug it.
    let mut req = FakeRequest::with(&[
        ("x-canary-tester", b"true"),
        ("x-user-id", v2_user.as_bytes()),
    ]);
    let d = decide(&r, &mut req, &mut WyRand(1), tripped);
    assert_eq!((d.version, d.reason), (1, Reason::Rule));
}

#[test]
fn guarded_streams_report_errors_and_slow_responses() {
    let r = rollout(GUARDED);
    let v2_user = (0..1000)
        .map(|i| format!("user-{i}"))
        .find(|u| version_for(&r, u) == "model-v2")
        .unwrap();
    let mut host = FakeRequest::with(&[("x-user-id", v2_user.as_bytes())]);
    let live = Live {
        now_ms: 1_000,
        tripped: 0,
    };
    let (_, pending) = filter::on_request_headers(&r, &mut host, &mut WyRand(1), live);
    let pending = pending.expect("the guard counts every response");
    assert_eq!(pending.started_ms, Some(1_000));
    for (status, now, error, slow) in [
        (Some(200), 1_100, false, false),
        (Some(503), 1_100, true, false),
        (Some(599), 1_600, true, true),
        (Some(404), 1_501, false, true),
        (None, 1_000, false, false),
    ] {
        let mut resp = FakeResponse {
            status,
            now_ms: now,
            ..Default::default()
        };
        let Some(filter::Verdict::Now(outcome)) =
            filter::on_response_headers(&r, &pending, &mut resp)
        else {
            panic!("an HTTP response is judged at its headers");
        };
        assert_eq!(
            (outcome.version, outcome.failure.is_some(), outcome.slow),
            (1, error, slow),
            "{status:?} at {now}"
        );
        assert_eq!(
            resp.headers,
            vec![("x-canary-reason".to_string(), "sticky".to_string())]
        );
    }
    // Without a guard nothing is counted.
    let plain = split(50.0, 50.0);
    let pending = filter::Pending {
        version: 1,
        reason: Reason::Sticky,
        new_id: None,
        started_ms: None,
    };
    assert!(filter::on_response_headers(&plain, &pending, &mut FakeResponse::default()).is_none());
    // Nor what a rule pinned: testers debugging a canary cannot trip it.
    let pinned = filter::Pending {
        reason: Reason::Rule,
        ..pending
    };
    let mut resp = FakeResponse {
        status: Some(503),
        ..Default::default()
    };
    assert!(filter::on_response_headers(&r, &pinned, &mut resp).is_none());
}

#[test]
fn errors_in_multi_line_configs_name_the_field() {
    let cases = [
        (
            "{\n  \"versions\": [\n    {\"name\": \"v1\", \"weight\": 90},\n    {\"name\": \"v2\", \"weight\": \"10\"}\n  ]\n}",
            "versions[1].weight",
        ),
        (
            "{\n  \"versions\": [{\"name\": \"v1\", \"weight\": 100}],\n  \"stickiness\": {\n    \"userIdHeaders\": [\"a\", 7]\n  }\n}",
            "stickiness.userIdHeaders[1]",
        ),
        (
            "{\n  \"versions\": [{\"name\": \"v1\", \"weight\": 100}],\n  \"rules\": [\n    {\"name\": \"t\", \"match\": {\"headers\": {\"x-a\": {\"exact\": \"1\", \"sufix\": \"2\"}}}, \"version\": \"v1\"}\n  ]\n}",
            "rules[0].match.headers.x-a.sufix",
        ),
        (
            "{\n  \"versions\": [\n    {\"name\": \"v1\",\n     \"weight\": 100}\n  ],\n  \"stickiness\": {\"anonymousCookie\": {\"name\": \"c\",\n    \"maxAgeSeconds\": 0.5}}\n}",
            "stickiness.anonymousCookie.maxAgeSeconds",
        ),
        ("{\n  \"versions\": [\n    {\"name\": \"v1\"}\n  ]\n}", "versions[0]"),
        ("{\"versions\": [{\"name\": \"v\\\"1\", \"weight\": true}]}", "versions[0].weight"),
    ];
    for (json, field) in cases {
        assert_eq!(rejected(json).field, field, "{json}");
    }
}

#[test]
fn hostile_configs_found_in_review_are_rejected() {
    let v = r#""versions":[{"name":"v1","weight":90},{"name":"v2","weight":10}]"#;
    let cases = [
        // Trailing data after the object: the first object must not silently win.
        (
            format!(r#"{{{v}}} garbage"#),
            "(config)",
            "trailing characters",
        ),
        (
            format!(r#"{{{v}}}{{"versions":[{{"name":"v2","weight":100}}]}}"#),
            "(config)",
            "trailing characters",
        ),
        // Structs written as positional arrays.
        (
            r#"{"versions":[["v1",100]]}"#.to_string(),
            "versions[0]",
            "expected an object",
        ),
        (
            format!(r#"{{{v},"stickiness":[["x-user"],[],null,null]}}"#),
            "stickiness",
            "expected an object",
        ),
        (
            format!(r#"{{{v},"rules":[["t",{{}},"v2"]]}}"#),
            "rules[0]",
            "expected an object",
        ),
        (
            format!(
                r#"{{{v},"rules":[{{"name":"t","match":{{"headers":{{"x":["1"]}}}},"version":"v2"}}]}}"#
            ),
            "rules[0].match.headers.x",
            "expected an object",
        ),
        // A regex that would only balance once wrapped, escaping the anchors.
        (
            format!(
                r#"{{{v},"rules":[{{"name":"t","match":{{"headers":{{"x":{{"regex":"qa)|(?:zz"}}}}}},"version":"v2"}}]}}"#
            ),
            "rules[0].match.headers.x.regex",
            "invalid regex",
        ),
        // Headers the filter must not write.
        (
            format!(r#"{{{v},"routingHeader":"Authorization"}}"#),
            "routingHeader",
            "reserved",
        ),
        (
            format!(r#"{{{v},"routingHeader":"x-forwarded-for"}}"#),
            "routingHeader",
            "reserved",
        ),
        (
            format!(r#"{{{v},"routingHeader":"x-envoy-upstream-alt-stat-name"}}"#),
            "routingHeader",
            "reserved",
        ),
        (
            format!(r#"{{{v},"responseHeader":"x-c","responseReasonHeader":"X-C"}}"#),
            "responseReasonHeader",
            "same header",
        ),
        // Version names that would collide in Prometheus where the stat
        // tags are not extracted.
        (
            r#"{"versions":[{"name":"model-v2","weight":50},{"name":"model.v2","weight":50}]}"#
                .to_string(),
            "versions[1].name",
            "would share one Prometheus metric name where the stat tags are not extracted",
        ),
        // Version names holding the stat tags' framing.
        (
            r#"{"versions":[{"name":"v1;.;reason=.=rule","weight":50},{"name":"v2","weight":50}]}"#
                .to_string(),
            "versions[0].name",
            "holds ';', which frames the metrics' stat tags",
        ),
        (
            r#"{"versions":[{"name":"v1","weight":50},{"name":"v=2","weight":50}]}"#.to_string(),
            "versions[1].name",
            "holds '=', which frames the metrics' stat tags",
        ),
    ];
    for (json, field, reason) in cases {
        let e = rejected(&json);
        assert_eq!(e.field, field, "{json}\n{e}");
        assert!(e.reason.contains(reason), "{json}\n{e}");
    }
}

#[test]
fn a_trailing_weight_zero_version_never_receives_users() {
    // Within the sum tolerance, but short of 100: the leftover buckets go to
    // the last version with a positive weight.
    let r = rollout(r#"{"versions":[{"name":"v1","weight":99.9999995},{"name":"v2","weight":0}]}"#);
    assert_eq!(r.thresholds, vec![1 << 32, 1 << 32]);
    assert_eq!(r.version_of_bucket(u32::MAX), 0);
    let r = rollout(
        r#"{"versions":[{"name":"a","weight":49.9999997},{"name":"b","weight":50},{"name":"c","weight":0}]}"#,
    );
    assert_eq!(r.version_of_bucket(u32::MAX), 1);
}

#[test]
fn config_errors_cannot_forge_log_lines() {
    let e = rejected(
        "{\"x\\n[2026-11-23 15:00:00.000][1][critical][main] forged\": 1, \"versions\": []}",
    );
    let line = e.to_string();
    assert!(!line.contains(['\n', '\r']), "{line}");
    assert!(line.contains("\\n[2026"), "{line}");
}

#[test]
fn the_config_reader_names_deep_fields_and_decodes_escapes() {
    let rule = |m: &str| {
        format!(
            r#"{{"versions":[{{"name":"v1","weight":90}},{{"name":"v2","weight":10}}],
                "rules":[{{"name":"t","match":{{"headers":{{"x-a":{m}}}}},"version":"v2"}}]}}"#
        )
    };
    let e = rejected(&rule(r#"{"exact":7}"#));
    assert_eq!(e.field, "rules[0].match.headers.x-a.exact", "{e}");
    assert!(
        e.reason
            .contains("invalid type: integer `7`, expected a string"),
        "{e}"
    );
    let e = rejected(&rule(r#"{"exact":"a","prefix":[1.5]}"#));
    assert_eq!(e.field, "rules[0].match.headers.x-a.prefix", "{e}");
    assert!(e.reason.contains("invalid type: sequence"), "{e}");
    let e = rejected(&rule(r#"{"exact":"a"},"x-b":{"exact":"b",}"#));
    assert_eq!(e.field, "rules[0].match.headers.x-b", "{e}");
    assert!(e.reason.contains("trailing comma at line 2"), "{e}");
    // Escapes decode (here to a version name the rule then refers to).
    let ok = Rollout::from_json(
        br#"{"versions":[{"name":"v\u0031","weight":100}],"rules":[{"name":"t",
            "match":{"headers":{"x-a":{"exact":"\ud83d\ude00\t\"\\\/"}}},"version":"v1"}]}"#,
    )
    .unwrap();
    assert_eq!(ok.versions[0].name, "v1");
    let matcher = &ok.rules[0].conditions[0].matcher;
    assert!(matcher.matches("\u{1F600}\t\"\\/".as_bytes()));
    for (text, field, reason) in [
        (
            r#"{"versions":[{"name":"v\ud83d","weight":100}]}"#,
            "name",
            "unexpected end of hex escape",
        ),
        (
            r#"{"versions":[{"name":"v1","weight":1e400}]}"#,
            "weight",
            "out of range",
        ),
        (
            r#"{"versions":[{"name":"v1","weight":01}]}"#,
            "weight",
            "invalid number",
        ),
        (
            "{\"versions\":[{\"name\":\"v\u{1}\",\"weight\":100}]}",
            "name",
            "control character",
        ),
    ] {
        let e = rejected(text);
        assert_eq!(e.field, format!("versions[0].{field}"), "{text}: {e}");
        assert!(e.reason.contains(reason), "{text}: {e}");
    }
    // Deep nesting is refused by the schema first, and by serde_json's
    // recursion limit, whatever the schema.
    let deep = format!(
        r#"{{"versions":{}1{}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    assert_eq!(rejected(&deep).field, "versions[0]");
    let deep = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(serde_json::from_str::<serde_json::Value>(&deep).is_err());
    let bad_utf8 = b"{\"versions\":[{\"name\":\"v\xff\",\"weight\":100}]}";
    let e = Rollout::from_json(bad_utf8).unwrap_err();
    assert!(e.reason.contains("UTF-8"), "{e}");
}

#[test]
fn rule_regexes_match_whole_values_with_regex_lite_syntax() {
    use crate::config::whole_value_regex;
    let cases: &[(&str, &[&str], &[&str])] = &[
        (
            "qa-[a-z]+",
            &["qa-x", "qa-team"],
            &["qa-", "xqa-team", "qa-team!", "QA-team"],
        ),
        (
            "/v1/models/[^/]+:predict",
            &["/v1/models/iris:predict"],
            &["/v1/models/a/b:predict"],
        ),
        (r"\d{1,3}", &["7", "123"], &["", "1234", "12a"]),
        ("(?i)beta|canary", &["BETA", "Canary", "canary"], &["betas"]),
        ("a(?i:b)c", &["abc", "aBc"], &["ABC"]),
        (
            "(?P<who>alice|bob)@example\\.com",
            &["bob@example.com"],
            &["bob@exampleXcom"],
        ),
        (r"[\w.-]+", &["user.name-1_x"], &["user name"]),
        ("caf\\x{e9}|na.ve", &["café", "naïve"], &["cafe", "na\nve"]),
        ("^a$|b*", &["a", "", "bbb"], &["ab"]),
        ("(a+)+$", &["aaaa"], &["aaaa!"]),
        // The crate's syntax beyond the old engine's: word boundaries,
        // POSIX classes, the s flag.
        (r"\bqa\b.*", &["qa team"], &["qateam"]),
        ("[[:digit:]]+", &["2026"], &["20x6"]),
        ("(?s)a.b", &["a\nb"], &["ab"]),
        // A multi-line flag inside the pattern cannot undo the whole-value
        // anchors around it.
        ("(?m)a$", &["a"], &["a\nb", "ba\nb"]),
    ];
    for (pattern, yes, no) in cases {
        let re = whole_value_regex(pattern).unwrap();
        for v in *yes {
            assert!(re.is_match(v), "{pattern} should match {v:?}");
        }
        for v in *no {
            assert!(!re.is_match(v), "{pattern} should not match {v:?}");
        }
    }
    for (pattern, reason) in [
        (r"\pL", "Unicode character classes are not supported"),
        ("(?<=a)b", "look-around"),
        (r"(a)\1", "backreferences"),
        ("a)|(b", "closing ')' without matching '('"),
        ("(a", "without closing ')'"),
        ("a{2,1}", "min bigger than its max"),
        ("*a", "must be applied to a sub-expression"),
        (r"(?P<n>a)(?P<n>b)", "duplicate capture group name"),
        ("((a{100}){100}){100}", "exceeded size limit"),
        // Nothing to compile, repeated 10^12 times: refused, not spun on.
        ("(?:){1000}{1000}{1000}{1000}", "exceeded size limit"),
        (
            &format!("{}a{}", "(".repeat(33), ")".repeat(33)),
            "too much nesting",
        ),
    ] {
        let e = whole_value_regex(pattern).unwrap_err().to_string();
        assert!(e.contains(reason), "{pattern}: {e}");
    }
}

#[test]
fn the_regexes_of_one_config_are_bounded_together() {
    // Each regex is bounded by regex-lite's size limit; a config holds at
    // most MAX_REGEXES of them, so one request's regex work is bounded too.
    let big = "[a-z]{1000}";
    assert!(crate::config::whole_value_regex(big).is_ok());
    let e = rejected(&format!(
        r#"{{"versions":[{{"name":"v1","weight":100}}],
            "rules":[{{"name":"t","match":{{"headers":{{"x":{{"regex":"{}"}}}}}},"version":"v1"}}]}}"#,
        "[a-z]{1000}".repeat(2)
    ));
    assert_eq!(e.field, "rules[0].match.headers.x.regex", "{e}");
    assert!(e.reason.contains("exceeded size limit"), "{e}");
    let rules = |n: usize| -> String {
        let rules: Vec<String> = (0..n)
            .map(|i| {
                format!(
                    r#"{{"name":"r{i}","match":{{"headers":{{"x-{i}":{{"regex":"{big}"}}}}}},"version":"v1"}}"#
                )
            })
            .collect();
        format!(
            r#"{{"versions":[{{"name":"v1","weight":100}}],"rules":[{}]}}"#,
            rules.join(",")
        )
    };
    rollout(&rules(crate::config::MAX_REGEXES));
    let e = rejected(&rules(crate::config::MAX_REGEXES + 1));
    assert_eq!(e.field, "rules[16].match.headers.x-16.regex", "{e}");
    assert!(e.reason.contains("a rollout may hold 16"), "{e}");
}

// ---------------------------------------------------------------------------
// gRPC: the guard reads grpc-status, not the HTTP status.
// ---------------------------------------------------------------------------

#[test]
fn grpc_error_codes_by_name_or_number_with_a_default() {
    let codes = |list: &str| {
        let r = rollout(&format!(
            r#"{{"versions":[{{"name":"a","weight":90}},{{"name":"b","weight":10}}],
                "guard":{{"maxErrorRate":0.1{list}}}}}"#
        ));
        r.guard.unwrap().grpc_error_codes
    };
    // UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS.
    assert_eq!(
        codes(""),
        1 << 2 | 1 << 4 | 1 << 12 | 1 << 13 | 1 << 14 | 1 << 15
    );
    assert_eq!(
        codes(r#","grpcErrorCodes":["INTERNAL",14,8.0]"#),
        1 << 13 | 1 << 14 | 1 << 8
    );
    assert_eq!(codes(r#","grpcErrorCodes":[]"#), 0);
    let v = r#""versions":[{"name":"a","weight":90},{"name":"b","weight":10}]"#;
    for (list, field, reason) in [
        (
            r#"["INTERNAL","internal"]"#,
            "guard.grpcErrorCodes[1]",
            "\"internal\" is not a gRPC status code (OK, CANCELLED",
        ),
        (
            "[17]",
            "guard.grpcErrorCodes[0]",
            "17 is not a gRPC status code (0 to 16)",
        ),
        (
            "[-1]",
            "guard.grpcErrorCodes[0]",
            "-1 is not a gRPC status code",
        ),
        (
            "[13.5]",
            "guard.grpcErrorCodes[0]",
            "13.5 is not a gRPC status code",
        ),
        (
            "[true]",
            "guard.grpcErrorCodes[0]",
            "expected a gRPC status code",
        ),
        (r#"["OK"]"#, "guard.grpcErrorCodes[0]", "OK is a success"),
        ("[0]", "guard.grpcErrorCodes[0]", "OK is a success"),
        (
            r#"[13,"INTERNAL"]"#,
            "guard.grpcErrorCodes[1]",
            "INTERNAL is listed twice",
        ),
        (
            r#""INTERNAL""#,
            "guard.grpcErrorCodes",
            "expected a sequence",
        ),
    ] {
        let e = rejected(&format!(
            r#"{{{v},"guard":{{"maxErrorRate":0.1,"grpcErrorCodes":{list}}}}}"#
        ));
        assert_eq!(e.field, field, "{list}: {e}");
        assert!(e.reason.contains(reason), "{list}: {e}");
    }
}

fn canary_pending(r: &Rollout) -> filter::Pending {
    let user = (0..1000)
        .map(|i| format!("user-{i}"))
        .find(|u| version_for(r, u) == "model-v2")
        .unwrap();
    let mut host = FakeRequest::with(&[("x-user-id", user.as_bytes())]);
    let live = Live {
        now_ms: 1_000,
        tripped: 0,
    };
    filter::on_request_headers(r, &mut host, &mut WyRand(1), live)
        .1
        .unwrap()
}

#[test]
fn grpc_responses_are_judged_by_grpc_status_in_headers_or_trailers() {
    use crate::guard::Failure;
    use filter::{AwaitingTrailers, Verdict};
    let r = rollout(GUARDED);
    let pending = canary_pending(&r);
    let judge = |content_type, grpc_status, status| {
        let mut resp = FakeResponse {
            status: Some(status),
            content_type: Some(content_type),
            grpc_status,
            now_ms: 1_100,
            ..Default::default()
        };
        filter::on_response_headers(&r, &pending, &mut resp).unwrap()
    };
    let now = |failure| {
        Verdict::Now(filter::Outcome {
            version: 1,
            reason: Reason::Sticky,
            failure,
            slow: false,
        })
    };
    // Trailers-only replies (Envoy's own, when the upstream is down).
    for ct in [
        "application/grpc",
        "application/grpc+proto",
        "application/grpc;charset=utf-8",
    ] {
        assert_eq!(
            judge(ct, Some("14"), 200),
            now(Some(Failure::Grpc(14))),
            "{ct}"
        );
        assert_eq!(judge(ct, Some("0"), 200), now(None), "{ct}");
    }
    // A client error is the client's: not counted against the canary.
    assert_eq!(judge("application/grpc", Some("5"), 200), now(None));
    // An unknown code is UNKNOWN, which counts.
    assert_eq!(
        judge("application/grpc", Some("99"), 200),
        now(Some(Failure::Grpc(2)))
    );
    // gRPC answers 200 even when the call fails: the HTTP status does not decide.
    assert_eq!(judge("application/grpc", Some("0"), 503), now(None));
    // No grpc-status in the headers: the status comes in the trailers.
    let awaiting = AwaitingTrailers {
        version: 1,
        reason: Reason::Sticky,
        slow: false,
    };
    assert_eq!(
        judge("application/grpc", None, 200),
        Verdict::AtTrailers(awaiting)
    );
    let at_trailers =
        |status: Option<&[u8]>| filter::on_response_trailers(&r, &awaiting, status).failure;
    assert_eq!(at_trailers(Some(b"0")), None);
    assert_eq!(at_trailers(Some(b"13")), Some(Failure::Grpc(13)));
    assert_eq!(at_trailers(Some(b"12")), Some(Failure::Grpc(12)));
    assert_eq!(at_trailers(Some(b"4")), Some(Failure::Grpc(4)));
    assert_eq!(at_trailers(Some(b"5")), None);
    assert_eq!(at_trailers(None), Some(Failure::NoGrpcStatus));
    assert_eq!(
        filter::on_stream_lost(&awaiting).failure,
        Some(Failure::NoGrpcStatus)
    );
    // gRPC-Web and other types are judged as HTTP.
    for ct in [
        "application/grpc-web",
        "application/grpcx",
        "application/json",
    ] {
        assert_eq!(judge(ct, Some("13"), 200), now(None), "{ct}");
        assert_eq!(
            judge(ct, Some("0"), 502),
            now(Some(Failure::Http5xx)),
            "{ct}"
        );
    }
}

#[test]
fn grpc_error_codes_decide_what_counts() {
    use crate::guard::Failure;
    let r = rollout(&GUARDED.replace(
        r#""maxSlowRate": 0.5}"#,
        r#""maxSlowRate": 0.5, "grpcErrorCodes": ["NOT_FOUND", "RESOURCE_EXHAUSTED"]}"#,
    ));
    let awaiting = filter::AwaitingTrailers {
        version: 1,
        reason: Reason::Sticky,
        slow: true,
    };
    let failure = |status: &[u8]| filter::on_response_trailers(&r, &awaiting, Some(status)).failure;
    assert_eq!(failure(b"5"), Some(Failure::Grpc(5)));
    assert_eq!(failure(b"8"), Some(Failure::Grpc(8)));
    assert_eq!(
        failure(b"13"),
        None,
        "INTERNAL is not in this config's list"
    );
    assert!(filter::on_response_trailers(&r, &awaiting, Some(b"0")).slow);
    // What a rule pins stays out of the guard, gRPC or not.
    let pinned = filter::Pending {
        reason: Reason::Rule,
        ..canary_pending(&r)
    };
    let mut resp = FakeResponse {
        status: Some(200),
        content_type: Some("application/grpc"),
        grpc_status: Some("5"),
        ..Default::default()
    };
    assert!(filter::on_response_headers(&r, &pinned, &mut resp).is_none());
}

mod rollouts;
