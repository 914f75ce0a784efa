//! The config contract: the forms accepted, and every error naming its
//! field and reason (hostile configs found in review and fuzzing included).

use super::*;

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

#[test]
fn a_long_summary_is_cut_on_a_character_boundary() {
    // The summary of a config kept for the log line of a rejected push is
    // cut to a length; a salt of multi-byte characters must not make the
    // cut panic (it would trap the VM on configure).
    let rules: Vec<String> = (0..32)
        .map(|i| format!(r#"{{"name":"testers-{i:02}","match":{{"headers":{{"x-t":{{"exact":"{i}"}}}}}},"version":"model-v2"}}"#))
        .collect();
    let json = format!(
        r#"{{"versions":[{{"name":"model-v1","weight":90}},{{"name":"model-v2","weight":10}}],"rules":[{}],"stickiness":{{"userIdHeaders":["x-user-id"],"salt":"{}"}}}}"#,
        rules.join(","),
        "é".repeat(128)
    );
    let config = crate::config::Config::from_json(json.as_bytes()).unwrap();
    let whole = config.summary();
    assert!(whole.len() > 1024 && whole.contains("éé"), "{whole}");
    for max in 3..whole.len() {
        let cut = config.summary_within(max);
        assert!(
            cut.len() <= max && cut.ends_with("..."),
            "{max}: {}",
            cut.len()
        );
    }
    assert_eq!(config.summary_within(whole.len()), whole);
}
