//! The `canary-selector` binary, run as an operator runs it: on the shipped
//! manifests, on broken and hostile files, and on requests and weight
//! changes whose answer follows from the README's bucket formula.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use canary_selector::hash::murmur3_32;
use serde_json::Value;

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run_with(args: &[&str], stdin: &[u8]) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_canary-selector"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The binary may exit before reading all of stdin (a refused file).
    let _ = child.stdin.take().unwrap().write_all(stdin);
    let out = child.wait_with_output().unwrap();
    Run {
        code: out.status.code().expect("exited, not killed"),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

fn run(args: &[&str]) -> Run {
    run_with(args, b"")
}

/// A file under cargo's scratch directory for integration tests.
fn file(name: &str, contents: impl AsRef<[u8]>) -> String {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path.display().to_string()
}

fn json(r: &Run) -> Value {
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {}", r.stdout))
}

fn shipped(path: &str) -> String {
    std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
}

/// The shipped WasmPlugin with its pluginConfig replaced.
fn wasmplugin(plugin_config_yaml: &str) -> String {
    let text = shipped("istio/wasmplugin.yaml");
    let head = &text[..text.find("  pluginConfig:").unwrap()];
    let body: String = plugin_config_yaml
        .lines()
        .map(|l| format!("    {l}\n"))
        .collect();
    format!("{head}  pluginConfig:\n{body}")
}

/// `floor(cumulative_percent * 2^32 / 100)`, the README's slice bound.
fn bound(cumulative_percent: f64) -> u64 {
    (cumulative_percent * 4_294_967_296.0 / 100.0).floor() as u64
}

/// An unreadable file: exit 2, one line on stderr naming it, no panic.
fn assert_refused(r: &Run, file: &str, reason: &str) {
    assert_eq!(r.code, 2, "stdout: {}\nstderr: {}", r.stdout, r.stderr);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(
        r.stderr.starts_with(&format!("canary-selector: {file}")),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains(reason), "{}", r.stderr);
    assert!(!r.stderr.contains("panicked") && !r.stderr.contains("backtrace"));
    assert_eq!(r.stdout, "");
}

// --- check -------------------------------------------------------------------

#[test]
fn check_accepts_the_shipped_manifests_and_their_wiring() {
    let r = run(&["check", "istio/"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    for plugin in [
        "istio/wasmplugin.yaml: WasmPlugin models/canary-selector",
        "istio/trafficextension/canary-selector.yaml: TrafficExtension models/canary-selector",
    ] {
        assert!(
            r.stdout.contains(&format!(
                "{plugin}: accepted: routing header x-canary-version; versions model-v1=90% model-v2=10%"
            )),
            "{}",
            r.stdout
        );
        assert!(r.stdout.contains(&format!(
            "{plugin} with istio/virtualservice.yaml: VirtualService models/model: wiring ok: model-v1 -> v1, model-v2 -> v2; default route -> v1"
        )), "{}", r.stdout);
    }
    // The KServe scenario's plugins (namespace kserve) are checked, and not
    // wired to the models namespace's VirtualService; the Grafana dashboard
    // in the directory is no plugin config.
    assert!(
        r.stdout
            .contains("istio/kserve/wasmplugin.yaml: WasmPlugin kserve/canary-selector: accepted"),
        "{}",
        r.stdout
    );
    assert!(
        !r.stdout.contains("kserve/canary-selector with"),
        "{}",
        r.stdout
    );
    assert!(!r.stdout.contains("dashboard"), "{}", r.stdout);
    let r = run(&["check", "envoy/plugin-config.json", "-o", "json"]);
    assert_eq!(r.code, 0);
    let report = json(&r);
    assert_eq!(report["ok"], true);
    assert_eq!(report["configs"][0]["accepted"], true);
    assert_eq!(report["wiring"], Value::Array(vec![]));
}

#[test]
fn check_prints_the_filters_own_error_per_config_and_exits_1() {
    let two = format!(
        "{}---\n{}",
        wasmplugin("versions: [{name: model-v1, weight: 80}, {name: model-v2, weight: 10}]"),
        wasmplugin("versions: [{name: model-v1, weight: 90}, {name: model-v2, weight: \"10\"}]")
            .replace("name: canary-selector\n", "name: second\n")
    );
    let path = file("two-bad.yaml", two);
    let r = run(&["check", &path]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert_eq!(
        r.stdout,
        format!(
            "{path}: WasmPlugin models/canary-selector: rejected: versions: weights sum to 90, not 100\n\
             {path}: WasmPlugin models/second: rejected: versions[1].weight: invalid type: string \"10\", expected a number\n"
        )
    );
    // The JSON form carries the same error.
    let report = json(&run(&["check", &path, "--output", "json"]));
    assert_eq!(report["ok"], false);
    assert_eq!(
        report["configs"][1]["error"],
        "versions[1].weight: invalid type: string \"10\", expected a number"
    );
}

#[test]
fn check_reads_pluginconfig_as_istio_delivers_it() {
    // Whole numbers arrive as doubles: 2592000.0 is a whole number.
    let ok = wasmplugin(
        "versions: [{name: model-v1, weight: 90.0}, {name: model-v2, weight: 10}]\n\
         stickiness: {anonymousCookie: {name: cid, maxAgeSeconds: 2592000.0, secure: yes}}",
    );
    let r = run(&["check", &file("doubles.yaml", ok)]);
    assert_eq!(r.code, 0, "{}", r.stdout);
    assert!(
        r.stdout.contains("anonymous users get cookie cid"),
        "{}",
        r.stdout
    );
    let half = wasmplugin(
        "versions: [{name: model-v1, weight: 100}]\nstickiness: {anonymousCookie: {name: cid, maxAgeSeconds: 1.5}}",
    );
    let r = run(&["check", &file("half.yaml", half)]);
    assert_eq!(r.code, 1);
    assert!(r.stdout.ends_with(
        "rejected: stickiness.anonymousCookie.maxAgeSeconds: expected a whole number from 0 to 4294967295, got 1.5\n"
    ), "{}", r.stdout);
    // No pluginConfig at all: the filter gets an empty config.
    let none = shipped("istio/wasmplugin.yaml");
    let none = &none[..none.find("  pluginConfig:").unwrap()];
    let r = run(&["check", &file("none.yaml", none)]);
    assert_eq!(r.code, 1);
    assert!(
        r.stdout.ends_with(
            "rejected: (config): is empty; at least `versions` (or `rollouts`) is required\n"
        ),
        "{}",
        r.stdout
    );
}

fn wiring(virtualservice: &str, destinationrule: &str) -> Run {
    let vs = file("vs.yaml", virtualservice);
    let dr = file("dr.yaml", destinationrule);
    run(&["check", "istio/wasmplugin.yaml", &vs, &dr])
}

#[test]
fn check_finds_broken_wiring() {
    let (vs, dr) = (
        shipped("istio/virtualservice.yaml"),
        shipped("istio/destinationrule.yaml"),
    );
    let cases = [
        (
            vs.replace("exact: model-v2", "exact: model-v3"),
            dr.clone(),
            "version model-v2 has no route matching x-canary-version: model-v2",
        ),
        (
            vs.replace("exact: model-v1", "exact: model-v2"),
            dr.clone(),
            "version model-v2 has 2 routes matching x-canary-version: model-v2 (model-v1, model-v2)",
        ),
        (
            vs.replace("subset: v2", "subset: v1"),
            dr.clone(),
            "versions model-v1 and model-v2 both route to subset v1",
        ),
        (
            vs.clone(),
            dr.replace("- name: v2", "- name: canary"),
            "version model-v2 (route model-v2) goes to subset v2, which no DestinationRule for model.models.svc.cluster.local defines",
        ),
        (
            {
                let cut = vs.find("  - name: stable").unwrap();
                format!("{}  - name: stable\n    route:\n    - destination: {{ host: model, subset: v2 }}\n", &vs[..cut])
            },
            dr.clone(),
            "the default route goes to subset v2, not to the stable version model-v1's subset v1",
        ),
        (
            vs.replace("x-canary-version", "x-other"),
            dr.clone(),
            "no VirtualService among the files routes on the routing header x-canary-version",
        ),
    ];
    for (vs, dr, problem) in cases {
        let r = wiring(&vs, &dr);
        assert_eq!(r.code, 1, "{problem}\n{}", r.stdout);
        assert!(
            r.stdout.lines().any(|l| l
                .starts_with("istio/wasmplugin.yaml: WasmPlugin models/canary-selector")
                && l.ends_with(&format!("wiring: {problem}"))),
            "want {problem:?} in\n{}",
            r.stdout
        );
    }
    // Short host names resolve in the resource's namespace: still wired.
    let r = wiring(
        &vs.replace("host: model.models.svc.cluster.local", "host: model"),
        &dr,
    );
    assert_eq!(r.code, 0, "{}", r.stdout);
}

// --- bad files -----------------------------------------------------------------

#[test]
fn unreadable_files_get_one_line_and_exit_2() {
    assert_refused(
        &run(&["check", "no/such.yaml"]),
        "no/such.yaml",
        "No such file or directory",
    );
    let path = file("latin1.json", b"{\"versions\": \"caf\xe9\"}");
    assert_refused(
        &run(&["check", &path]),
        &path,
        "not UTF-8 (byte 17 is not valid)",
    );
    let path = file("broken.json", "{\"versions\": [");
    assert_refused(
        &run(&["check", &path]),
        &path,
        "not JSON: EOF while parsing a list",
    );
    let path = file("broken.yaml", "kind: WasmPlugin\n  spec: [\n");
    assert_refused(&run(&["check", &path]), &path, "cannot be read as YAML");
    assert_refused(
        &run(&["check", "istio/namespace.yaml", "istio/model.yaml"]),
        "istio/namespace.yaml, istio/model.yaml",
        "no pluginConfig found",
    );
    assert_refused(
        &run(&["explain", "istio/", "-H", "x-user-id: a"]),
        "istio/",
        "holds more than one plugin config",
    );
    assert_refused(
        &run(&["diff", "-", "-"]),
        "-",
        "stdin can be read only once",
    );
    let r = run(&["check"]);
    assert_eq!(r.code, 2, "clap's usage error");
}

#[test]
fn hostile_yaml_is_refused_without_expanding_it() {
    // A billion laughs: ten levels of ten aliases each, 10^10 nodes expanded.
    let mut bomb = String::from("apiVersion: v1\nkind: ConfigMap\ndata:\n  a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..=10 {
        let p = format!("*a{}", i - 1);
        bomb.push_str(&format!("  a{i}: &a{i} [{}]\n", vec![p; 10].join(", ")));
    }
    let path = file("bomb.yaml", &bomb);
    let started = std::time::Instant::now();
    assert_refused(&run(&["check", &path]), &path, "cannot be read as YAML");
    assert!(started.elapsed().as_secs() < 10);
    // Deep nesting.
    let path = file(
        "deep.yaml",
        format!("a: {}{}", "[".repeat(100_000), "]".repeat(100_000)),
    );
    assert_refused(&run(&["check", &path]), &path, "cannot be read as YAML");
    // Very large documents, on disk and on stdin.
    let big = format!(
        "apiVersion: v1\nkind: ConfigMap\ndata:\n  x: \"{}\"\n",
        "x".repeat(5 << 20)
    );
    let path = file("big.yaml", &big);
    assert_refused(&run(&["check", &path]), &path, "larger than 4 MiB");
    assert_refused(
        &run_with(&["check", "-"], big.as_bytes()),
        "-",
        "larger than 4 MiB",
    );
    // Many small nodes under the size bound.
    let wide = format!("a: [{}]\n", vec!["1"; 1_000_000].join(","));
    let path = file("wide.yaml", wide);
    assert_refused(&run(&["check", &path]), &path, "cannot be read as YAML");
    // Wrong types where the filter expects objects, lists and strings.
    for (config, error) in [
        (
            "versions: {name: model-v1}",
            "versions: invalid type: map, expected a sequence",
        ),
        (
            "versions: [model-v1]",
            "versions[0]: invalid type: string \"model-v1\", expected an object",
        ),
        (
            "versions: [{name: [1], weight: 100}]",
            "versions[0].name: invalid type: sequence, expected a string",
        ),
        (
            "versions: [{name: model-v1, weight: 100}]\nrules: yes",
            "rules: invalid type: boolean `true`, expected a sequence",
        ),
    ] {
        let r = run(&["check", &file("types.yaml", wasmplugin(config))]);
        assert_eq!(r.code, 1, "{config}: {}{}", r.stdout, r.stderr);
        assert!(
            r.stdout.ends_with(&format!("rejected: {error}\n")),
            "{config}: {}",
            r.stdout
        );
    }
}

// --- explain -------------------------------------------------------------------

fn bucket(salt: &str, id: &str) -> u32 {
    murmur3_32(format!("{salt}:{id}").as_bytes(), 0)
}

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

// --- diff ----------------------------------------------------------------------

fn weights(v1: f64, v2: f64) -> String {
    format!(
        r#"{{"versions":[{{"name":"model-v1","weight":{v1}}},{{"name":"model-v2","weight":{v2}}}],"stickiness":{{"userIdHeaders":["x-user-id"]}}}}"#
    )
}

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
