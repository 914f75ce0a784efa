//! The decision: rule precedence, user id sources, stickiness, the split,
//! anonymous users, the ramp guarantee, and odd bytes.

use super::*;

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
