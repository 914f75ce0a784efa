//! The documented bounds, each at its limit (accepted) and one past it
//! (rejected, naming the field), the header-injection checks on every name
//! the filter writes, and the request-side bounds (long user ids, long cookie
//! headers) that must still give a deterministic decision.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use canary_selector::config::{self, Rollout};
use canary_selector::decision::{decide, Basis, Decision, Live, Reason, Request, WyRand};
use canary_selector::matcher::MAX_COOKIE_HEADER_SCAN;
use canary_selector::MAX_USER_ID_LEN;
use serde_json::{json, Value};

fn base() -> Value {
    json!({
        "versions": [{ "name": "v1", "weight": 50 }, { "name": "v2", "weight": 50 }],
        "stickiness": { "userIdHeaders": ["x-user-id"], "userIdCookies": ["uid"] },
    })
}

fn rule(name: &str, headers: Value) -> Value {
    json!({ "name": name, "match": { "headers": headers }, "version": "v2" })
}

fn parse(config: &Value) -> Result<Rollout, config::ConfigError> {
    Rollout::from_json(config.to_string().as_bytes())
}

/// `at` is accepted; `past` is rejected with an error on `field`.
fn bound(what: &str, at: Value, past: Value, field: &str) {
    if let Err(e) = parse(&at) {
        panic!("{what}: the config at the bound was rejected: {e}");
    }
    match parse(&past) {
        Ok(_) => panic!("{what}: the config past the bound was accepted"),
        Err(e) => assert!(
            e.field.starts_with(field) && !e.reason.is_empty(),
            "{what}: error on {:?} ({}), expected {field:?}",
            e.field,
            e.reason
        ),
    }
}

fn with(key: &str, value: Value) -> Value {
    let mut c = base();
    c[key] = value;
    c
}

fn headers(n: usize) -> Value {
    (0..n)
        .map(|i| (format!("x-h{i}"), json!({ "exact": "1" })))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

#[test]
fn every_config_bound_is_enforced_at_its_limit() {
    let versions = |n: usize| {
        let v: Vec<Value> = (0..n)
            .map(|i| json!({ "name": format!("v{}", i + 1), "weight": if i == 0 { 100 } else { 0 } }))
            .collect();
        with("versions", json!(v))
    };
    bound(
        "versions",
        versions(config::MAX_VERSIONS),
        versions(config::MAX_VERSIONS + 1),
        "versions",
    );

    let name = |n: usize| {
        with(
            "versions",
            json!([{ "name": "v1", "weight": 50 }, { "name": "v".repeat(n), "weight": 50 }]),
        )
    };
    let n = config::MAX_VERSION_NAME_LEN;
    bound("version name", name(n), name(n + 1), "versions[1].name");

    let rules = |n: usize| {
        let r: Vec<Value> = (0..n)
            .map(|i| rule(&format!("r{i}"), json!({ "x-t": { "exact": "1" } })))
            .collect();
        with("rules", json!(r))
    };
    bound(
        "rules",
        rules(config::MAX_RULES),
        rules(config::MAX_RULES + 1),
        "rules",
    );

    let conditions = |n: usize| with("rules", json!([rule("r", headers(n))]));
    let n = config::MAX_CONDITIONS_PER_RULE;
    bound(
        "conditions per rule",
        conditions(n),
        conditions(n + 1),
        "rules[0].match",
    );

    let sources = |n: usize| {
        let h: Vec<String> = (0..n - 1).map(|i| format!("x-id-{i}")).collect();
        with(
            "stickiness",
            json!({ "userIdHeaders": h, "userIdCookies": ["uid"] }),
        )
    };
    let n = config::MAX_USER_ID_SOURCES;
    bound("user id sources", sources(n), sources(n + 1), "stickiness");

    // Distinct headers read: `x-user-id` and `cookie`, and one per rule.
    let read = |n: usize| {
        let r: Vec<Value> = (0..n - 2)
            .map(|i| {
                rule(
                    &format!("r{i}"),
                    json!({ format!("x-h{i}"): { "exact": "1" } }),
                )
            })
            .collect();
        with("rules", json!(r))
    };
    let n = config::MAX_HEADERS_READ;
    bound("distinct headers read", read(n), read(n + 1), "rules[");

    let n = config::MAX_NAME_LEN;
    let header_name = |n: usize| {
        with(
            "rules",
            json!([rule("r", json!({ "x".repeat(n): { "exact": "1" } }))]),
        )
    };
    bound(
        "rule header name",
        header_name(n),
        header_name(n + 1),
        "rules[0].match.headers",
    );
    let rule_name = |n: usize| {
        with(
            "rules",
            json!([rule(&"r".repeat(n), json!({ "x-t": { "exact": "1" } }))]),
        )
    };
    bound("rule name", rule_name(n), rule_name(n + 1), "rules[0].name");
    let cookie_name = |n: usize| with("stickiness", json!({ "userIdCookies": ["c".repeat(n)] }));
    bound(
        "cookie name",
        cookie_name(n),
        cookie_name(n + 1),
        "stickiness.userIdCookies[0]",
    );
    let id_header = |n: usize| with("stickiness", json!({ "userIdHeaders": ["h".repeat(n)] }));
    bound(
        "user id header name",
        id_header(n),
        id_header(n + 1),
        "stickiness.userIdHeaders[0]",
    );
    let routing = |n: usize| with("routingHeader", json!("r".repeat(n)));
    bound(
        "routing header name",
        routing(n),
        routing(n + 1),
        "routingHeader",
    );

    let n = config::MAX_MATCH_VALUE_LEN;
    for kind in ["exact", "prefix"] {
        let value = |n: usize| {
            with(
                "rules",
                json!([rule("r", json!({ "x-t": { kind: "v".repeat(n) } }))]),
            )
        };
        bound(kind, value(n), value(n + 1), "rules[0].match.headers.x-t");
    }
    let n = config::MAX_REGEX_LEN;
    let regex = |n: usize| {
        with(
            "rules",
            json!([rule("r", json!({ "x-t": { "regex": "a".repeat(n) } }))]),
        )
    };
    bound(
        "regex",
        regex(n),
        regex(n + 1),
        "rules[0].match.headers.x-t.regex",
    );
    // regex-lite's size limit: `a{n}` compiles to about 32 bytes per `a`.
    let counted = |n: usize| {
        with(
            "rules",
            json!([rule(
                "r",
                json!({ "x-t": { "regex": format!("a{{{n}}}") } })
            )]),
        )
    };
    bound(
        "regex size",
        counted(config::MAX_REGEX_SIZE / 64),
        counted(config::MAX_REGEX_SIZE / 16),
        "rules[0].match.headers.x-t.regex",
    );
    let regexes = |n: usize| {
        let rules: Vec<Value> = (0..n)
            .map(|i| {
                rule(
                    &format!("r{i}"),
                    json!({ format!("x-{i}"): { "regex": "a+" } }),
                )
            })
            .collect();
        with("rules", json!(rules))
    };
    bound(
        "regexes",
        regexes(config::MAX_REGEXES),
        regexes(config::MAX_REGEXES + 1),
        "rules[16].match.headers.x-16.regex",
    );

    let n = config::MAX_SALT_LEN;
    let salt = |n: usize| with("stickiness", json!({ "salt": "s".repeat(n) }));
    bound("salt", salt(n), salt(n + 1), "stickiness.salt");

    let steps = |n: usize| {
        let s: Vec<Value> = (0..n)
            .map(|i| json!({ "afterSeconds": i * 60, "weights": { "v1": 50, "v2": 50 } }))
            .collect();
        with(
            "schedule",
            json!({ "start": "2026-12-01T09:00:00Z", "steps": s }),
        )
    };
    let n = config::MAX_SCHEDULE_STEPS;
    bound("schedule steps", steps(n), steps(n + 1), "schedule.steps");

    let window = |n: u32| with("guard", json!({ "windowSeconds": n, "maxErrorRate": 0.1 }));
    let n = config::MAX_GUARD_WINDOW_SECONDS;
    bound(
        "guard window",
        window(n),
        window(n + 1),
        "guard.windowSeconds",
    );
}

/// Bytes that would let a config inject a header line, or write an invalid
/// header value, if they reached a version name (written as a value).
const BAD_VALUES: &[&str] = &[
    "a\r\nx-evil: 1",
    "a\n",
    "a\r",
    "a b",
    "a\0",
    "a\t",
    "a\u{7f}",
    "é",
    "",
];

#[test]
fn no_config_can_inject_bytes_into_a_header_the_filter_writes() {
    // Names the filter writes: tokens only.
    for bad in BAD_VALUES
        .iter()
        .chain(&["a:b", "a;b", "a=b", "a,b", "\"a\"", "a/b"])
    {
        for (field, config) in [
            ("routingHeader", with("routingHeader", json!(bad))),
            ("responseHeader", with("responseHeader", json!(bad))),
            (
                "responseReasonHeader",
                with("responseReasonHeader", json!(bad)),
            ),
            (
                "stickiness.anonymousCookie.name",
                with("stickiness", json!({ "anonymousCookie": { "name": bad } })),
            ),
        ] {
            match parse(&config) {
                Ok(_) => panic!("{field} = {bad:?} was accepted"),
                Err(e) => assert_eq!(e.field, field, "{bad:?}: {e}"),
            }
        }
    }
    // Version names, written as the routing header's value: visible ASCII.
    for bad in BAD_VALUES {
        let config = with(
            "versions",
            json!([{ "name": "v1", "weight": 50 }, { "name": bad, "weight": 50 }]),
        );
        match parse(&config) {
            Ok(_) => panic!("version name {bad:?} was accepted"),
            Err(e) => assert_eq!(e.field, "versions[1].name", "{bad:?}: {e}"),
        }
    }
}

#[test]
fn a_routing_header_that_envoy_owns_cannot_be_written() {
    for reserved in [
        "host",
        "cookie",
        "set-cookie",
        "content-length",
        "transfer-encoding",
        "connection",
        ":path",
        ":authority",
    ] {
        for field in ["routingHeader", "responseHeader"] {
            let e = parse(&with(field, json!(reserved)))
                .map(|_| ())
                .expect_err(reserved);
            assert_eq!(e.field, field, "{reserved}: {e}");
        }
    }
}

// ---------------------------------------------------------------------------
// Request-side bounds.
// ---------------------------------------------------------------------------

struct Req(Vec<(&'static str, Vec<u8>)>);

impl Request for Req {
    fn header(&mut self, _slot: usize, name: &str) -> Option<&[u8]> {
        self.0
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_slice())
    }
}

fn decide_on(r: &Rollout, headers: Vec<(&'static str, Vec<u8>)>) -> Decision {
    decide(r, &mut Req(headers), &mut WyRand(1), Live::default())
}

/// What a decision gave the user: version, reason and, for an id, its
/// bucket (whichever header or cookie the id came from).
fn outcome(d: Decision) -> (usize, Reason, Option<u32>) {
    let bucket = match d.basis {
        Basis::UserId { bucket, .. } => Some(bucket),
        _ => None,
    };
    (d.version, d.reason, bucket)
}

#[test]
fn user_ids_past_256_bytes_decide_by_their_first_256() {
    let r = parse(&base()).unwrap();
    for seed in 0..200u32 {
        let prefix: Vec<u8> = format!("user-{seed}-")
            .bytes()
            .cycle()
            .take(MAX_USER_ID_LEN)
            .collect();
        let mut long = prefix.clone();
        long.extend(std::iter::repeat_n(b'x', 60 * 1024));
        let mut other = prefix.clone();
        other.extend_from_slice(format!("-{seed}").as_bytes());
        let want = decide_on(&r, vec![("x-user-id", prefix.clone())]);
        assert_eq!(want.reason, Reason::Sticky);
        assert_eq!(decide_on(&r, vec![("x-user-id", long)]), want);
        assert_eq!(decide_on(&r, vec![("x-user-id", other)]), want);
        // The same through the cookie.
        let mut cookie = b"uid=".to_vec();
        cookie.extend_from_slice(&prefix);
        cookie.extend(std::iter::repeat_n(b'y', 1000));
        assert_eq!(
            outcome(decide_on(&r, vec![("cookie", cookie)])),
            outcome(want)
        );
    }
}

#[test]
fn cookie_headers_are_searched_in_their_first_16_kib_only() {
    let r = parse(&base()).unwrap();
    let sticky = |id: &[u8]| decide_on(&r, vec![("x-user-id", id.to_vec())]);
    // Before the bound: found. Past it: absent, so the request is anonymous.
    let mut early = b"uid=alice; ".to_vec();
    early.extend(std::iter::repeat_n(b'z', 60 * 1024));
    assert_eq!(
        outcome(decide_on(&r, vec![("cookie", early)])),
        outcome(sticky(b"alice"))
    );
    let mut late = vec![b'z'; MAX_COOKIE_HEADER_SCAN];
    late.extend_from_slice(b"; uid=alice");
    assert_eq!(
        decide_on(&r, vec![("cookie", late)]).reason,
        Reason::Anonymous
    );
    // A 60 KiB header of pairs gives the same decision every time.
    let big: Vec<u8> = (0..6000)
        .flat_map(|i| format!("k{i}=v{i}; ").into_bytes())
        .collect();
    let first = decide_on(&r, vec![("cookie", big.clone())]);
    assert_eq!(decide_on(&r, vec![("cookie", big)]), first);
}
