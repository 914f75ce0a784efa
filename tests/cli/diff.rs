//! `diff`: the exact share that moves, the ramp kept forward, a new salt,
//! rule changes.

use super::*;

// --- diff ----------------------------------------------------------------------

#[test]
fn diff_gives_the_exact_share_that_moves_and_keeps_the_ramp_forward() {
    let old = file("w90.json", weights(90.0, 10.0));
    let new = file("w50.json", weights(50.0, 50.0));
    let r = run(&["diff", &old, &new]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.stdout,
        "model-v1 -> model-v2: 40% of users\nstay: model-v1 50%, model-v2 10%\n\
         forward only: no user moves to an earlier-listed version (salt \"model-v1\" unchanged)\n"
    );
    let d = json(&run(&["diff", &old, &new, "-o", "json"]));
    assert_eq!(d["moves"][0]["buckets"], bound(90.0) - bound(50.0));
    assert_eq!(d["backward"], Value::Array(vec![]));

    // Back from 50/50 to 90/10: a rollback, refused unless allowed.
    let r = run(&["diff", &new, &old]);
    assert_eq!(r.code, 1);
    assert!(r.stdout.ends_with(
        "BACKWARD: 40% of users move to an earlier-listed version (model-v2 -> model-v1 40%); pass --allow-backward if this is a rollback\n"
    ), "{}", r.stdout);
    let r = run(&["diff", &new, &old, "--allow-backward"]);
    assert_eq!(r.code, 0);
    assert!(r.stdout.ends_with("backward allowed: 40% of users move to an earlier-listed version (model-v2 -> model-v1 40%)\n"));

    // Three versions: v1 -> v3 slides v2's slice up, moving some v2 users on to v3 (forward).
    let three = |a: u32, b: u32, c: u32| {
        format!(
            r#"{{"versions":[{{"name":"v1","weight":{a}}},{{"name":"v2","weight":{b}}},{{"name":"v3","weight":{c}}}]}}"#
        )
    };
    let d = json(&run(&[
        "diff",
        &file("t1.json", three(80, 10, 10)),
        &file("t2.json", three(60, 10, 30)),
        "-o",
        "json",
    ]));
    let moves: Vec<(String, String, u64)> = d["moves"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["from"].as_str().unwrap().into(),
                m["to"].as_str().unwrap().into(),
                m["buckets"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        moves,
        vec![
            ("v1".into(), "v2".into(), bound(70.0) - bound(60.0)),
            ("v1".into(), "v3".into(), bound(80.0) - bound(70.0)),
            ("v2".into(), "v3".into(), bound(90.0) - bound(80.0)),
        ]
    );
}

#[test]
fn diff_says_a_new_salt_reshuffles_and_lists_rule_changes() {
    let old = wasmplugin(
        "versions: [{name: model-v1, weight: 90}, {name: model-v2, weight: 10}]\n\
         rules:\n- {name: testers, match: {headers: {x-canary-tester: {exact: \"true\"}}}, version: model-v2}\n\
         - {name: old-qa, match: {headers: {x-team: {exact: qa}}}, version: model-v2}",
    );
    let new = wasmplugin(
        "versions: [{name: model-v1, weight: 90}, {name: model-v2, weight: 10}]\nstickiness: {salt: rollout-2}\n\
         rules:\n- {name: qa-accounts, match: {headers: {x-user-id: {prefix: qa-}}}, version: model-v2}\n\
         - {name: testers, match: {headers: {x-canary-tester: {exact: \"yes\"}}}, version: model-v1}",
    );
    // OLD piped in, as `git show HEAD~1:istio/wasmplugin.yaml | canary-selector diff - istio/wasmplugin.yaml`.
    let r = run_with(&["diff", "-", &file("salted.yaml", new)], old.as_bytes());
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(
        r.stdout,
        "every user is drawn again (salt \"model-v1\" -> \"rollout-2\"): the shares below are those of independent draws\n\
         model-v1 -> model-v2: 9% of users\n\
         model-v2 -> model-v1: 9% of users\n\
         stay: model-v1 81%, model-v2 1%\n\
         rule added: qa-accounts -> model-v2 (its share of traffic is not knowable)\n\
         rule removed: old-qa (its share of traffic is not knowable)\n\
         rule changed: testers (version model-v2 -> model-v1, match, position 0 -> 1) (its share of traffic is not knowable)\n\
         salt changed: the ramp guarantee does not carry across this change\n"
    );
    // A config the filter rejects is a finding, named with its file.
    let bad = file("bad.json", weights(90.0, 20.0));
    let r = run(&["diff", "envoy/plugin-config.json", &bad]);
    assert_eq!(r.code, 1);
    assert_eq!(
        r.stdout,
        format!("{bad}: rejected: versions: weights sum to 110, not 100\n")
    );
}
