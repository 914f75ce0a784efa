//! `explain`: the rule or the id, its bucket and slice, a schedule at a time.

use super::*;

// --- explain -------------------------------------------------------------------

#[test]
fn explain_names_the_rule_or_the_id_its_bucket_and_slice() {
    let r = run(&[
        "explain",
        "istio/wasmplugin.yaml",
        "-H",
        "x-user-id: user-27",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let b = bucket("model-v1", "user-27");
    assert!(
        u64::from(b) >= bound(90.0),
        "the README's user-27 is on model-v2 at 90/10"
    );
    assert_eq!(
        r.stdout.lines().next().unwrap(),
        format!("model-v2: sticky: header x-user-id is \"user-27\", bucket {b} of 2^32 ({}%), in model-v2's slice [90%, 100%)",
            canary_selector::config::decimal(f64::from(b) * 100.0 / 4_294_967_296.0))
    );
    let r = run(&[
        "explain",
        "istio/wasmplugin.yaml",
        "-H",
        "x-user-id: alice",
        "-H",
        "X-Canary-Tester: true",
    ]);
    assert_eq!(r.stdout, "model-v2: rule testers (rules[0]) matched\n");

    // A cookie, as the demo config reads it after the header.
    let r = run(&[
        "explain",
        "envoy/plugin-config.json",
        "--cookie",
        "theme=dark",
        "--cookie",
        "user_id=42",
        "-o",
        "json",
    ]);
    let e = json(&r);
    assert_eq!(e["reason"], "sticky");
    assert_eq!(e["userId"]["source"], "cookie user_id");
    assert_eq!(e["userId"]["value"], "42");
    assert_eq!(e["userId"]["bucket"], bucket("model-v1", "42"));
    let want = if u64::from(bucket("model-v1", "42")) < bound(90.0) {
        "model-v1"
    } else {
        "model-v2"
    };
    assert_eq!(e["version"], want);

    // No id: random, and the sources tried are named.
    let r = run(&["explain", "istio/wasmplugin.yaml"]);
    assert_eq!(
        r.stdout,
        "random: anonymous (no user id in header x-user-id): each such request is a random pick at model-v1 90%, model-v2 10%\n"
    );
    let e = json(&run(&["explain", "envoy/plugin-config.json", "-o", "json"]));
    assert_eq!(e["version"], Value::Null);
    assert_eq!(e["anonymous"]["cookie"], "canary_id");
}

#[test]
fn explain_evaluates_a_schedule_at_the_time_asked() {
    let config = r#"{"versions":[{"name":"v1","weight":100},{"name":"v2","weight":0}],
        "stickiness":{"userIdHeaders":["x-user-id"]},
        "guard":{"maxErrorRate":0.1},
        "schedule":{"start":"2026-12-01T09:00:00Z","steps":[
          {"afterSeconds":0,"weights":{"v1":50,"v2":50}},
          {"afterSeconds":3600,"weights":{"v2":100}}]}}"#;
    let path = file("schedule.json", config);
    // A user in the upper half: v1 before the start, v2 from the first step on.
    let user = (0..)
        .map(|n| format!("u{n}"))
        .find(|u| u64::from(bucket("v1", u)) >= bound(50.0))
        .unwrap();
    let header = format!("x-user-id: {user}");
    for (at, version, step) in [
        ("2026-12-01T08:59:59Z", "v1", Value::Null),
        ("2026-12-01T10:00:00+01:00", "v2", Value::from(0)),
        ("2026-12-01T10:00:00Z", "v2", Value::from(1)),
    ] {
        let e = json(&run(&[
            "explain", &path, "-H", &header, "--at", at, "-o", "json",
        ]));
        assert_eq!(
            (&e["version"], &e["scheduleStep"]),
            (&Value::from(version), &step),
            "{at}"
        );
        assert_eq!(e["guardWouldDivert"], version != "v1");
    }
    let r = run(&[
        "explain",
        &path,
        "-H",
        &header,
        "--at",
        "2026-12-01T09:30:00Z",
    ]);
    assert!(
        r.stdout
            .contains("\nweights at 2026-12-01T09:30:00Z: schedule step 0: v1 50%, v2 50%\n"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.ends_with(
        "guard assumed untripped: a tripped guard would send this request to the stable version\n"
    ));
    let r = run(&["explain", &path, "--at", "tomorrow"]);
    assert_eq!(r.code, 2);
}
