//! The filter against a fake host: what it writes and reads on a stream,
//! and the metric names it reports under.

use super::*;

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
