//! The guard's config and its effect on a stream, and the schedule's steps.

use super::*;

// ---------------------------------------------------------------------------
// Guard and schedule (automatic rollback, scheduled ramps).
// ---------------------------------------------------------------------------

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
        let live = Live {
            now_ms,
            held_back: 0,
        };
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
                    held_back: 0,
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
        held_back: crate::decision::ALL_CANARIES,
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
        held_back: 0,
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
        let Some(filter::Judging::Now(outcome)) =
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
