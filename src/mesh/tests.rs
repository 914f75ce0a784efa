use super::*;
use crate::config::Config;
use crate::shared::{held, Keys, MemoryStore};

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

fn read(status: &[u8], body: Vec<u8>) -> Result<Vec<Sample>, PollFailure> {
    let size = body.len();
    read_answer(Some(status), size, || Some(body))
}

#[test]
fn an_answer_is_read_strictly_with_every_series_and_its_value() {
    let got = read(
        b"200",
        answer(
            r#"{"metric":{"rollout":"iris","version":"v2"},"value":[1796232086.079,"1"]},
           {"metric":{"version":"v3"},"value":[1796232086.079,"0"]},
           {"metric":{"version":"v4"},"value":[1796232086.079,"NaN"]},
           {"metric":{"version":"v5"},"value":[1796232086.079,"+Inf"]},
           {"metric":{"version":"v6"},"value":[1796232086.079,"-0.25"]}"#,
        ),
    )
    .unwrap();
    let versions: Vec<&str> = got.iter().filter_map(|s| s.label("version")).collect();
    assert_eq!(versions, ["v2", "v3", "v4", "v5", "v6"]);
    assert_eq!(got[0].label("rollout"), Some("iris"));
    assert_eq!(got[0].value, 1.0);
    assert!(got[2].value.is_nan());
    assert_eq!((got[3].value, got[4].value), (f64::INFINITY, -0.25));
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

fn sample(labels: &[(&str, &str)], value: f64) -> Sample {
    Sample {
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        value,
    }
}

/// Applies `samples` to every poll of `config` as one VM, with each
/// rollout's keys under plugin `p` and push generation 1.
fn applied(config: &Config, store: &MemoryStore, samples: &[Sample]) -> Vec<Applied> {
    let keys: Vec<Keys> = config
        .rollouts
        .iter()
        .map(|r| Keys::new("p", r.name()))
        .collect();
    polls(config)
        .iter()
        .map(|poll| apply(samples, poll, config, |i| Some((keys.get(i)?, 1)), store))
        .collect()
}

const TWO_ROLLOUTS: &str = r#"{"rollouts":[
  {"name":"iris","hosts":["iris.example.com"],"guard":{MESH},
    "versions":[{"name":"v1","weight":80},{"name":"v2","weight":10},{"name":"v3","weight":10}]},
  {"name":"flowers","hosts":["flowers.example.com"],"guard":{MESH},
    "versions":[{"name":"v1","weight":90},{"name":"v2","weight":10}]}]}"#;

fn two_rollouts() -> Config {
    config(&TWO_ROLLOUTS.replace("{MESH}", &format!("{{{MESH}}}")))
}

#[test]
fn the_verdict_names_canaries_of_the_series_rollout_and_never_the_stable_version() {
    let c = two_rollouts();
    let store = MemoryStore::default();
    let answer = [
        sample(&[("rollout", "iris"), ("version", "v3")], 1.0),
        sample(&[("rollout", "flowers"), ("version", "v2")], 0.5),
        sample(&[("rollout", "iris"), ("version", "v1")], 1.0), // stable: never
        sample(&[("rollout", "iris"), ("version", "v2")], 0.0), // not failing
        sample(&[("rollout", "iris"), ("version", "v9")], 1.0), // unknown version
        sample(&[("rollout", "iris")], 1.0),                    // no version label
        sample(&[("rollout", "tulips"), ("version", "v2")], 1.0), // unknown rollout
    ];
    let [got] = &applied(&c, &store, &answer)[..] else {
        panic!("one poll")
    };
    assert_eq!(
        got.verdicts,
        [
            RolloutVerdict {
                rollout: 0,
                failing: 1 << 2,
                added: 1 << 2
            },
            RolloutVerdict {
                rollout: 1,
                failing: 1 << 1,
                added: 1 << 1
            },
        ]
    );
    assert_eq!(
        got.ignored,
        Ignored {
            unknown_rollout: 1,
            unknown_version: 2,
            bad_value: 0
        }
    );
    // Recorded for the proxy: another VM's answer adds nothing new.
    assert_eq!(
        held::read(&store, &Keys::new("p", Some("iris")).held(), 1).mesh,
        1 << 2
    );
    let again = applied(&c, &store, &answer);
    assert!(again[0].verdicts.iter().all(|v| v.added == 0));

    // A series without a rollout label applies to every rollout polling it;
    // one naming a version no rollout has is ignored once.
    let all = [
        sample(&[("version", "v2")], 1.0),
        sample(&[("version", "v7")], 2.0),
    ];
    let got = &applied(&c, &MemoryStore::default(), &all)[0];
    let failing: Vec<u32> = got.verdicts.iter().map(|v| v.failing).collect();
    assert_eq!(failing, [1 << 1, 1 << 1]);
    assert_eq!(got.ignored.unknown_version, 1);
}

#[test]
fn only_a_positive_finite_value_names_a_failing_version() {
    let c = two_rollouts();
    let values = [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -1.0, -0.0];
    let answer: Vec<Sample> = values
        .iter()
        .map(|&v| sample(&[("rollout", "iris"), ("version", "v2")], v))
        .collect();
    let got = &applied(&c, &MemoryStore::default(), &answer)[0];
    assert!(got.verdicts.is_empty());
    // -0.0 is zero: it names nothing and is no bad value.
    assert_eq!(got.ignored.bad_value, 4);
    let tiny = [sample(&[("rollout", "iris"), ("version", "v2")], 1e-300)];
    assert_eq!(
        applied(&c, &MemoryStore::default(), &tiny)[0].verdicts[0].failing,
        1 << 1
    );
}

#[test]
fn in_a_config_without_rollouts_every_series_applies() {
    let c = config(&format!(
        r#"{{"versions":[{{"name":"v1","weight":90}},{{"name":"v2","weight":10}}],"guard":{{{MESH}}}}}"#
    ));
    let answer = [sample(&[("rollout", "anything"), ("version", "v2")], 1.0)];
    let got = &applied(&c, &MemoryStore::default(), &answer)[0];
    assert_eq!(got.verdicts[0].failing, 1 << 1);
    assert_eq!(got.ignored, Ignored::default());
}

#[test]
fn the_version_label_is_the_config_s() {
    let c = config(
        r#"{"versions":[{"name":"v1","weight":90},{"name":"v2","weight":10}],
            "guard":{"mesh":{"cluster":"prometheus","authority":"prometheus:9090",
              "query":"istio_canary_failing","versionLabel":"destination_version"}}}"#,
    );
    let s = sample(&[("destination_version", "v2"), ("version", "v9")], 1.0);
    let got = &applied(&c, &MemoryStore::default(), &[s])[0];
    assert_eq!(got.verdicts[0].failing, 1 << 1);
    assert_eq!(got.ignored, Ignored::default());
}

#[test]
fn one_vm_polls_per_interval_whatever_the_number_of_workers() {
    let store = MemoryStore::default();
    let key = "canary-selector.p.mesh.0.turn";
    // Four workers tick at their own moments.
    let mut polled = Vec::new();
    for t in (0..20_000).step_by(250) {
        for worker in 0..4 {
            if take_turn(&store, key, 7, t + worker * 7, 5000).is_ok() {
                polled.push(t + worker * 7);
            }
        }
    }
    assert_eq!(polled, [0, 5000, 10_000, 15_000], "one poll per 5 s");
    // A VM that lost the turn learns when to ask again.
    assert_eq!(take_turn(&store, key, 7, 15_100, 5000), Err(20_000));
}

#[test]
fn a_turn_given_back_is_due_at_once_unless_another_vm_took_one_since() {
    let store = MemoryStore::default();
    assert_eq!(take_turn(&store, "k", 7, 1_000, 5_000), Ok(()));
    release_turn(&store, "k", 7, 1_000);
    assert_eq!(take_turn(&store, "k", 7, 1_500, 5_000), Ok(()));
    // Sent again at 1.5 s: giving back the 1 s call changes nothing.
    release_turn(&store, "k", 7, 1_000);
    assert_eq!(take_turn(&store, "k", 7, 2_000, 5_000), Err(6_500));
}

#[test]
fn a_shorter_interval_another_poll_or_a_clock_stepping_back_polls_at_once() {
    let store = MemoryStore::default();
    let key = "k";
    assert_eq!(take_turn(&store, key, 7, 1_000, 3_600_000), Ok(()));
    assert_eq!(take_turn(&store, key, 7, 6_000, 3_600_000), Err(3_601_000));
    // A push down to 5 s: due at once, not when the hour is up.
    assert_eq!(take_turn(&store, key, 7, 6_000, 5_000), Ok(()));
    assert_eq!(take_turn(&store, key, 7, 7_000, 5_000), Err(11_000));
    // Another poll in this place (the config's polls changed).
    assert_eq!(take_turn(&store, key, 8, 7_000, 5_000), Ok(()));
    // A VM whose tick read the clock just before another sent the poll.
    assert_eq!(take_turn(&store, key, 8, 6_999, 5_000), Err(12_000));
    // The clock stepped back an hour.
    assert_eq!(take_turn(&store, key, 8, 7_000 - 3_600_000, 5_000), Ok(()));
    assert_eq!(
        take_turn(&store, key, 8, 8_000 - 3_600_000, 5_000),
        Err(12_000 - 3_600_000)
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
    let polls = polls(&c);
    assert_eq!(polls.len(), 2);
    assert_eq!(polls[0].rollouts.len(), 501);
    assert_eq!((polls[0].interval_ms, polls[0].timeout_ms), (2000, 1000));
    assert_eq!(
        polls[0].path,
        "/api/v1/query?query=canary_selector%3Acanary_failing"
    );
    assert_eq!(polls[1].path, "/api/v1/query?query=up+%3D%3D+0");
    assert_eq!((polls[0].index, polls[1].index), (0, 1));
    assert_ne!(polls[0].identity, polls[1].identity);
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
