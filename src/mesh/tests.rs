use super::*;
use crate::config::Config;
use crate::shared::MemoryStore;

fn config(json: &str) -> Config {
    Config::from_json(json.as_bytes()).unwrap_or_else(|e| panic!("{e}\n{json}"))
}

const MESH: &str = r#""mesh": {"cluster": "outbound|9090||prometheus.istio-system.svc.cluster.local",
    "authority": "prometheus.istio-system.svc.cluster.local:9090",
    "query": "canary_selector:canary_failing{plugin=\"kserve.canary-selector\"}"}"#;

fn answer(result: &str) -> Vec<u8> {
    format!(r#"{{"status":"success","data":{{"resultType":"vector","result":[{result}]}}}}"#)
        .into_bytes()
}

fn read(status: &[u8], body: Vec<u8>) -> Result<Vec<Series>, PollFailure> {
    let size = body.len();
    read_answer(Some(status), size, || Some(body))
}

#[test]
fn an_answer_is_read_strictly_and_only_its_failing_series_kept() {
    let got = read(
        b"200",
        answer(
            r#"{"metric":{"rollout":"iris","version":"v2"},"value":[1796232086.079,"1"]},
           {"metric":{"version":"v3"},"value":[1796232086.079,"0"]},
           {"metric":{"version":"v4"},"value":[1796232086.079,"NaN"]},
           {"metric":{"version":"v5"},"value":[1796232086.079,"+Inf"]},
           {"metric":{"version":"v6"},"value":[1796232086.079,"0.25"]}"#,
        ),
    )
    .unwrap();
    let versions: Vec<&str> = got.iter().filter_map(|s| s.label("version")).collect();
    assert_eq!(versions, ["v2", "v5", "v6"]);
    assert_eq!(got[0].label("rollout"), Some("iris"));
    // What Prometheus adds besides (warnings, infos, stats) is no failure.
    let with_warnings =
        br#"{"status":"success","warnings":["w"],"data":{"resultType":"vector","result":[]}}"#;
    assert_eq!(read(b"200", with_warnings.to_vec()), Ok(vec![]));

    for (status, body, failure) in [
        (&b"503"[..], answer(""), PollFailure::HttpStatus(503)),
        (b"20x", answer(""), PollFailure::HttpStatus(0)),
        (
            b"200",
            b"<html>gateway</html>".to_vec(),
            PollFailure::BadAnswer,
        ),
        (
            b"200",
            br#"{"status":"error","errorType":"bad_data","error":"parse error"}"#.to_vec(),
            PollFailure::BadAnswer,
        ),
        (
            b"200",
            br#"{"status":"success","data":{"resultType":"scalar","result":[1,"1"]}}"#.to_vec(),
            PollFailure::BadAnswer,
        ),
        (
            b"200",
            br#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#.to_vec(),
            PollFailure::BadAnswer,
        ),
        (
            b"200",
            answer(r#"{"metric":{"version":"v2"},"value":[1,"one"]}"#),
            PollFailure::BadAnswer,
        ),
        (
            b"200",
            answer(r#"{"metric":{"version":2},"value":[1,"1"]}"#),
            PollFailure::BadAnswer,
        ),
        (b"200", Vec::new(), PollFailure::BadAnswer),
        (b"200", b"\xff\xfe".to_vec(), PollFailure::BadAnswer),
    ] {
        assert_eq!(
            read(status, body.clone()),
            Err(failure),
            "{}",
            String::from_utf8_lossy(&body)
        );
    }
    assert_eq!(read_answer(None, 0, || None), Err(PollFailure::NoAnswer));
    assert_eq!(PollFailure::HttpStatus(504).name(), "http_504");
    // A huge body is refused by its size, never read.
    let huge = read_answer(Some(b"200"), MAX_ANSWER_BYTES + 1, || {
        panic!("read a huge body")
    });
    assert_eq!(huge, Err(PollFailure::TooLarge));
}

#[test]
fn the_verdict_names_canaries_of_the_series_rollout_and_never_the_stable_version() {
    let c = config(&format!(
        r#"{{"rollouts":[
          {{"name":"iris","hosts":["iris.example.com"],"guard":{{{MESH}}},
            "versions":[{{"name":"v1","weight":80}},{{"name":"v2","weight":10}},{{"name":"v3","weight":10}}]}},
          {{"name":"flowers","hosts":["flowers.example.com"],"guard":{{{MESH}}},
            "versions":[{{"name":"v1","weight":90}},{{"name":"v2","weight":10}}]}}]}}"#
    ));
    let series = |labels: &[(&str, &str)]| Series {
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    };
    let failing = [
        series(&[("rollout", "iris"), ("version", "v3")]),
        series(&[("rollout", "flowers"), ("version", "v2")]),
        series(&[("rollout", "iris"), ("version", "v1")]), // stable: never
        series(&[("rollout", "iris"), ("version", "v9")]), // unknown
        series(&[("rollout", "tulips"), ("version", "v2")]), // another rollout's
    ];
    let iris = &c.rollouts[0];
    let mesh = iris.guard.as_ref().unwrap().mesh.as_ref().unwrap();
    assert_eq!(
        verdict(&failing, iris, mesh, true),
        Verdict {
            tripped: 1 << 2,
            unknown: 1
        }
    );
    assert_eq!(
        verdict(&failing, &c.rollouts[1], mesh, true),
        Verdict {
            tripped: 1 << 1,
            unknown: 0
        }
    );
    // A series without a rollout label applies to every rollout polling it.
    let all = [series(&[("version", "v2")])];
    assert_eq!(verdict(&all, iris, mesh, true).tripped, 1 << 1);
    assert_eq!(verdict(&all, &c.rollouts[1], mesh, true).tripped, 1 << 1);
    // In a config without rollouts every series applies, whatever its labels.
    assert_eq!(
        verdict(&failing, iris, mesh, false).tripped,
        1 << 2 | 1 << 1
    );
    // A series without the version label names nothing.
    assert_eq!(
        verdict(&[series(&[("rollout", "iris")])], iris, mesh, true),
        Verdict {
            tripped: 0,
            unknown: 1
        }
    );
}

#[test]
fn the_version_label_is_the_config_s() {
    let c = config(
        r#"{"versions":[{"name":"v1","weight":90},{"name":"v2","weight":10}],
            "guard":{"mesh":{"cluster":"prometheus","authority":"prometheus:9090",
              "query":"istio_canary_failing","versionLabel":"destination_version"}}}"#,
    );
    let r = &c.rollouts[0];
    let mesh = r.guard.as_ref().unwrap().mesh.as_ref().unwrap();
    let s = Series {
        labels: vec![
            ("destination_version".into(), "v2".into()),
            ("version".into(), "v9".into()),
        ],
    };
    assert_eq!(
        verdict(&[s], r, mesh, false),
        Verdict {
            tripped: 1 << 1,
            unknown: 0
        }
    );
}

#[test]
fn one_vm_polls_per_interval_whatever_the_number_of_workers() {
    let store = MemoryStore::default();
    let key = "canary-selector.p.mesh.1.turn";
    // Four workers tick at their own moments.
    let mut polled = Vec::new();
    for t in (0..20_000).step_by(250) {
        for worker in 0..4 {
            if take_turn(&store, key, t + worker * 7, 5000).is_ok() {
                polled.push(t + worker * 7);
            }
        }
    }
    assert_eq!(polled, [0, 5000, 10_000, 15_000], "one poll per 5 s");
    // A VM that lost the turn learns when to ask again.
    assert_eq!(take_turn(&store, key, 15_100, 5000), Err(20_000));
}

#[test]
fn a_failure_is_logged_at_most_once_a_minute_per_proxy() {
    let store = MemoryStore::default();
    assert!(log_due(&store, "l", 1_000));
    assert!(!log_due(&store, "l", 30_000));
    assert!(!log_due(&store, "l", 60_999));
    assert!(log_due(&store, "l", 61_000));
}

#[test]
fn mesh_trips_latch_per_push_and_the_vm_that_adds_one_is_told() {
    let store = MemoryStore::default();
    let keys = Keys::new("p", Some("iris"));
    start_trips(&store, &keys, 3);
    assert_eq!(recorded_trips(&store, &keys, 3), 0);
    assert_eq!(
        record_trips(&store, &keys, 3, 0b010),
        0b010,
        "the first VM adds it"
    );
    assert_eq!(
        record_trips(&store, &keys, 3, 0b010),
        0,
        "a second VM finds it there"
    );
    assert_eq!(record_trips(&store, &keys, 3, 0b110), 0b100);
    assert_eq!(recorded_trips(&store, &keys, 3), 0b110);
    assert_eq!(
        recorded_trips(&store, &keys, 2),
        0,
        "another push's trips are not this one's"
    );
    // A VM still on an older push leaves the newer record alone.
    assert_eq!(record_trips(&store, &keys, 2, 0b001), 0);
    assert_eq!(recorded_trips(&store, &keys, 3), 0b110);
    // The next push starts afresh; another rollout's record is its own.
    start_trips(&store, &keys, 4);
    assert_eq!(recorded_trips(&store, &keys, 4), 0);
    assert_eq!(
        recorded_trips(&store, &Keys::new("p", Some("flowers")), 3),
        0
    );
}

#[test]
fn rollouts_that_ask_the_same_query_share_one_poll_at_the_shortest_interval() {
    let entry = |name: &str, query: &str, poll: u32| {
        format!(
            r#"{{"name":"{name}","hosts":["{name}.example.com"],"versions":[{{"name":"v1","weight":90}},{{"name":"v2","weight":10}}],
                "guard":{{"mesh":{{"cluster":"prom","authority":"prom:9090","query":"{query}","pollSeconds":{poll}}}}}}}"#
        )
    };
    let mut entries: Vec<String> = (0..500)
        .map(|i| entry(&format!("m{i}"), "canary_selector:canary_failing", 5))
        .collect();
    entries.push(entry("fast", "canary_selector:canary_failing", 2));
    entries.push(entry("other", "up == 0", 5));
    let c = config(&format!(r#"{{"rollouts":[{}]}}"#, entries.join(",")));
    let polls = polls(&c, "kserve.canary-selector");
    assert_eq!(polls.len(), 2);
    assert_eq!(polls[0].rollouts.len(), 501);
    assert_eq!((polls[0].interval_ms, polls[0].timeout_ms), (2000, 1000));
    assert_eq!(
        polls[0].path,
        "/api/v1/query?query=canary_selector%3Acanary_failing"
    );
    assert_eq!(polls[1].path, "/api/v1/query?query=up+%3D%3D+0");
    assert_ne!(polls[0].turn_key, polls[1].turn_key);
    assert_ne!(
        polls[0].turn_key,
        super::polls(&c, "other.plugin")[0].turn_key
    );
}

#[test]
fn guard_mesh_is_validated_field_by_field() {
    let with = |mesh: &str, more: &str| {
        format!(
            r#"{{"versions":[{{"name":"v1","weight":90}},{{"name":"v2","weight":10}}],
                "guard":{{"mesh":{{{mesh}}}{more}}}}}"#
        )
    };
    let ok = r#""cluster":"outbound|9090||prometheus.istio-system.svc.cluster.local","authority":"prometheus.istio-system.svc.cluster.local:9090","query":"canary_selector:canary_failing""#;
    // A guard may follow the mesh verdict alone, with the defaults filled in.
    let c = config(&with(ok, ""));
    let g = c.rollouts[0].guard.as_ref().unwrap();
    assert!(!g.judges_locally());
    let m = g.mesh.as_ref().unwrap();
    assert_eq!(
        (m.version_label.as_str(), m.poll_ms, m.timeout_ms),
        ("version", 5000, 1000)
    );
    // Beside local thresholds; and slowResponseMs alone counts slow
    // responses for the mesh's rules.
    assert!(config(&with(ok, r#","maxErrorRate":0.1"#)).rollouts[0]
        .guard
        .as_ref()
        .unwrap()
        .judges_locally());
    let slow = config(&with(ok, r#","slowResponseMs":800"#));
    assert_eq!(
        slow.rollouts[0].guard.as_ref().unwrap().slow_response_ms,
        Some(800)
    );
    let e = Config::from_json(
        br#"{"versions":[{"name":"v1","weight":90},{"name":"v2","weight":10}],"guard":{"slowResponseMs":800}}"#,
    )
    .unwrap_err();
    assert_eq!(e.field, "guard.maxSlowRate", "{e}");

    let cases = [
        (
            r#""cluster":"PassthroughCluster","authority":"p:9090","query":"q""#,
            "guard.mesh.cluster",
            "original-destination",
        ),
        (
            r#""cluster":"","authority":"p:9090","query":"q""#,
            "guard.mesh.cluster",
            "Envoy cluster name",
        ),
        (
            r#""cluster":"p","authority":"p 9090","query":"q""#,
            "guard.mesh.authority",
            "host[:port]",
        ),
        (
            r#""cluster":"p","authority":"p:9090","query":"  ""#,
            "guard.mesh.query",
            "is empty",
        ),
        (
            r#""cluster":"p","authority":"p:9090","query":"q","versionLabel":"1version""#,
            "guard.mesh.versionLabel",
            "label name",
        ),
        (
            r#""cluster":"p","authority":"p:9090","query":"q","pollSeconds":0"#,
            "guard.mesh.pollSeconds",
            "1 to 3600",
        ),
        (
            r#""cluster":"p","authority":"p:9090","query":"q","pollSeconds":1,"timeoutMs":1000"#,
            "guard.mesh.timeoutMs",
            "shorter than pollSeconds",
        ),
        (
            r#""cluster":"p","authority":"p:9090","query":"q","timeoutMs":0"#,
            "guard.mesh.timeoutMs",
            "at least 1",
        ),
        (
            r#""cluster":"p","authority":"p:9090""#,
            "guard.mesh",
            "missing field `query`",
        ),
        (
            r#""cluster":"p","authority":"p:9090","query":"q","interval":5"#,
            "guard.mesh.interval",
            "unknown field",
        ),
    ];
    for (mesh, field, reason) in cases {
        let e = Config::from_json(with(mesh, "").as_bytes()).unwrap_err();
        assert_eq!(e.field, field, "{e}");
        assert!(e.reason.contains(reason), "{e}");
    }
    let long = format!(
        r#""cluster":"p","authority":"p:9090","query":"{}""#,
        "x".repeat(4097)
    );
    assert_eq!(
        Config::from_json(with(&long, "").as_bytes())
            .unwrap_err()
            .field,
        "guard.mesh.query"
    );
    // Numbers as Istio delivers them.
    let istio = config(&with(
        r#""cluster":"p","authority":"p:9090","query":"q","pollSeconds":2.0,"timeoutMs":500.0"#,
        "",
    ));
    let m = istio.rollouts[0]
        .guard
        .as_ref()
        .unwrap()
        .mesh
        .as_ref()
        .unwrap();
    assert_eq!((m.poll_ms, m.timeout_ms), (2000, 500));
}
