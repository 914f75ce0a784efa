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
    // The KServe scenario's plugins (namespace kserve, attached to its
    // Gateway) are checked, and wired to the HTTPRoute attached to that
    // Gateway from another namespace, not to the models namespace's
    // VirtualService; the Grafana dashboard in the directory is no plugin
    // config.
    assert!(
        r.stdout
            .contains("istio/kserve/wasmplugin.yaml: WasmPlugin kserve/canary-selector: accepted"),
        "{}",
        r.stdout
    );
    for plugin in [
        "istio/kserve/wasmplugin.yaml: WasmPlugin kserve/canary-selector",
        "istio/kserve/trafficextension/canary-selector.yaml: TrafficExtension kserve/canary-selector",
    ] {
        let wired: Vec<&str> = r
            .stdout
            .lines()
            .filter(|l| l.starts_with(&format!("{plugin} with")))
            .collect();
        // One rollout for every host: the routes of both models are its.
        // xgboost-iris's has a gRPC and a REST rule per version, both to
        // the version's Service: wired.
        assert_eq!(
            wired,
            [
                format!("{plugin} with istio/kserve/httproute.yaml: HTTPRoute kserve-test/sklearn-iris-canary-selector: \
                     wiring ok: model-v1 -> sklearn-iris-model-v1-predictor, model-v2 -> sklearn-iris-model-v2-predictor; \
                     no rule without matches: a request the filter did not touch is left to other routes"),
                format!("{plugin} with istio/kserve/many-models/httproute.yaml: HTTPRoute kserve-test/xgboost-iris-canary-selector: \
                     wiring ok: model-v1 -> xgboost-iris-model-v1-predictor, model-v2 -> xgboost-iris-model-v2-predictor; \
                     no rule without matches: a request the filter did not touch is left to other routes"),
            ],
            "{}",
            r.stdout
        );
    }
    // The many-models plugin: each rollout wired to its own model's route alone.
    let plugin = "istio/kserve/many-models/wasmplugin.yaml: WasmPlugin kserve/canary-selector";
    assert!(
        r.stdout.contains(&format!(
            "{plugin}: accepted: 2 rollouts (sklearn-iris, xgboost-iris)"
        )),
        "{}",
        r.stdout
    );
    let wired: Vec<&str> = r
        .stdout
        .lines()
        .filter(|l| l.starts_with(&format!("{plugin} rollout")) && l.contains(" with "))
        .collect();
    assert_eq!(
        wired,
        [
            format!("{plugin} rollout sklearn-iris with istio/kserve/httproute.yaml: HTTPRoute kserve-test/sklearn-iris-canary-selector: \
                 wiring ok: model-v1 -> sklearn-iris-model-v1-predictor, model-v2 -> sklearn-iris-model-v2-predictor; \
                 no rule without matches: a request the filter did not touch is left to other routes"),
            format!("{plugin} rollout xgboost-iris with istio/kserve/many-models/httproute.yaml: HTTPRoute kserve-test/xgboost-iris-canary-selector: \
                 wiring ok: model-v1 -> xgboost-iris-model-v1-predictor, model-v2 -> xgboost-iris-model-v2-predictor; \
                 no rule without matches: a request the filter did not touch is left to other routes"),
        ],
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
            "version model-v2 has no route matching x-canary-version: model-v2; its requests take the default route to subset v1",
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

/// The first seed's header-based routing, verbatim: `x-canary-version: v2`
/// to subset v2, every other request (the default route) to subset v1.
const SEED_VIRTUALSERVICE: &str = "apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: model-virtual-service
spec:
  hosts:
  - model-service
  http:
  - match:
    - headers:
        x-canary-version:
          exact: v2
    route:
    - destination:
        host: model-service
        subset: v2
      weight: 100
  - route: # Default route for all other traffic
    - destination:
        host: model-service
        subset: v1
      weight: 100
";

const SEED_DESTINATIONRULE: &str = "apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata:
  name: model-destination
spec:
  host: model-service # This should match the Kubernetes Service name
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
";

/// A WasmPlugin of the seed's namespace (none given: `default`).
fn seed_plugin(versions: &str) -> String {
    format!(
        "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata:\n  name: canary-selector\n\
         spec:\n  url: oci://registry.example.com/ml/canary-selector:0.1.0\n  pluginConfig:\n    versions: {versions}\n"
    )
}

#[test]
fn check_wires_the_stable_version_by_the_seeds_default_route() {
    // v1 has no route of its own: its requests, like those the filter never
    // touched, take the default route to subset v1. That is wired.
    let plugin = file(
        "seed-plugin.yaml",
        seed_plugin("[{name: v1, weight: 90}, {name: v2, weight: 10}]"),
    );
    let vs = file("seed-vs.yaml", SEED_VIRTUALSERVICE);
    let dr = file("seed-dr.yaml", SEED_DESTINATIONRULE);
    let r = run(&["check", &plugin, &vs, &dr]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.ends_with(&format!(
        "{plugin}: WasmPlugin canary-selector with {vs}: VirtualService model-virtual-service: wiring ok: v1 -> v1 (default route), v2 -> v2; default route -> v1\n"
    )), "{}", r.stdout);
    let report = json(&run(&["check", &plugin, &vs, &dr, "-o", "json"]));
    assert_eq!(
        report["wiring"][0]["routes"],
        serde_json::json!([
            {"version": "v1", "to": "v1", "byDefaultRoute": true},
            {"version": "v2", "to": "v2"},
        ])
    );
    // A canary without a route of its own is still a finding: its users
    // would get the stable subset.
    let plugin = file(
        "seed-plugin3.yaml",
        seed_plugin("[{name: v1, weight: 80}, {name: v2, weight: 10}, {name: v3, weight: 10}]"),
    );
    let r = run(&["check", &plugin, &vs, &dr]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(r.stdout.ends_with(
        "wiring: version v3 has no route matching x-canary-version: v3; its requests take the default route to subset v1\n"
    ), "{}", r.stdout);
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

// --- many rollouts -------------------------------------------------------------

const GATEWAY: &str = "tests/fixtures/rollouts/wasmplugin.yaml";
const GATEWAY_ROUTES: &str = "tests/fixtures/rollouts/routes.yaml";
const GATEWAY_PLUGIN: &str =
    "tests/fixtures/rollouts/wasmplugin.yaml: WasmPlugin istio-system/canary-selector";

/// The wiring lines of `check`'s output.
fn wiring_lines(stdout: &str) -> Vec<&str> {
    stdout.lines().filter(|l| l.contains(": wiring")).collect()
}

#[test]
fn check_wires_each_rollout_to_the_routes_of_its_hosts() {
    let r = run(&["check", "tests/fixtures/rollouts/"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(
        lines[0],
        format!("{GATEWAY_PLUGIN}: accepted: 3 rollouts (iris, flowers, api)")
    );
    assert_eq!(
        lines[1],
        format!("{GATEWAY_PLUGIN}: rollout iris (hosts iris.example.com; every path): routing header x-canary-version; \
                 versions iris-v1=90% iris-v2=10%; rules []; user ids [header x-user-id]; salt \"iris-v1\" (default: first version); \
                 anonymous users random per request; response header off")
    );
    assert!(lines[3].starts_with(&format!("{GATEWAY_PLUGIN}: rollout api (hosts api.example.com; /v1/): routing header x-canary-version; versions api-v1=100% api-v2=0%;")), "{}", lines[3]);
    // Each rollout with the routes of its own hosts only: iris's
    // VirtualService also routes on x-canary-version, but not flowers' hosts.
    assert_eq!(
        wiring_lines(&r.stdout),
        [
            format!("{GATEWAY_PLUGIN} rollout iris with {GATEWAY_ROUTES}: VirtualService iris/iris: wiring ok: iris-v1 -> v1, iris-v2 -> v2; default route -> v1"),
            format!("{GATEWAY_PLUGIN} rollout flowers with {GATEWAY_ROUTES}: VirtualService flowers/flowers: wiring ok: flowers-v1 -> v1, flowers-v2 -> v2; default route -> v1"),
            format!("{GATEWAY_PLUGIN} rollout api with {GATEWAY_ROUTES}: HTTPRoute api/api: wiring ok: api-v1 -> api-v1, api-v2 -> api-v2; default route -> api-v1"),
        ]
    );
    let report = json(&run(&["check", "tests/fixtures/rollouts/", "-o", "json"]));
    assert_eq!(
        report["configs"][0]["rollouts"][2]["pathPrefixes"],
        serde_json::json!(["/v1/"])
    );
    let wired: Vec<(&str, &str)> = report["wiring"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            let routes = w.get("virtualService").or(w.get("httpRoute")).unwrap();
            (w["rollout"].as_str().unwrap(), routes.as_str().unwrap())
        })
        .collect();
    assert_eq!(
        wired,
        [
            (
                "iris",
                "tests/fixtures/rollouts/routes.yaml: VirtualService iris/iris"
            ),
            (
                "flowers",
                "tests/fixtures/rollouts/routes.yaml: VirtualService flowers/flowers"
            ),
            (
                "api",
                "tests/fixtures/rollouts/routes.yaml: HTTPRoute api/api"
            ),
        ]
    );
}

/// `check` of the gateway plugin with its routes edited.
fn check_gateway(routes: &str) -> Run {
    let path = file("gateway-routes.yaml", routes);
    run(&["check", GATEWAY, &path])
}

#[test]
fn check_finds_the_broken_wiring_of_one_rollout() {
    let routes = shipped(GATEWAY_ROUTES);
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("cli/gateway-routes.yaml")
        .display()
        .to_string();
    let cases = [
        (
            routes.replace("exact: flowers-v2", "exact: flowers-v3"),
            format!("{GATEWAY_PLUGIN} rollout flowers with {path}: VirtualService flowers/flowers: wiring: version flowers-v2 has no route matching x-canary-version: flowers-v2; its requests take the default route to subset v1"),
        ),
        // The HTTPRoute: a version's rule to another's backend, the default rule elsewhere.
        (
            routes.replace("backendRefs: [{ name: api-v2, port: 8080 }]", "backendRefs: [{ name: api-v1, port: 8080 }]"),
            format!("{GATEWAY_PLUGIN} rollout api with {path}: HTTPRoute api/api: wiring: versions api-v1 and api-v2 both route to backend api-v1"),
        ),
        (
            routes.replace(
                "  - name: stable\n    backendRefs: [{ name: api-v1, port: 8080 }]",
                "  - name: stable\n    backendRefs: [{ name: api-v2, port: 8080 }]",
            ),
            format!("{GATEWAY_PLUGIN} rollout api with {path}: HTTPRoute api/api: wiring: the default rule goes to backend api-v2, not to the stable version api-v1's backend api-v1"),
        ),
        (
            routes.replace(
                "backendRefs: [{ name: api-v2, port: 8080 }]",
                "backendRefs: [{ name: api-v2, port: 8080 }, { name: api-v1, port: 8080 }]",
            ),
            format!("{GATEWAY_PLUGIN} rollout api with {path}: HTTPRoute api/api: wiring: version api-v2 (rule api-v2) has 2 backendRefs; it needs exactly one backendRef"),
        ),
        // The API's routes are not among the files, or serve another host.
        (
            routes[..routes.find("---\napiVersion: gateway.networking.k8s.io/v1").unwrap()].to_string(),
            format!("{GATEWAY_PLUGIN} rollout api: wiring: no VirtualService among the files routes the rollout's hosts (api.example.com) on its routing header x-canary-version"),
        ),
        (
            routes.replace("hostnames: [api.example.com]", "hostnames: [api.example.org]"),
            format!("{GATEWAY_PLUGIN} rollout api: wiring: no VirtualService or HTTPRoute among the files routes the rollout's hosts (api.example.com) on its routing header x-canary-version"),
        ),
    ];
    for (routes, problem) in cases {
        let r = check_gateway(&routes);
        assert_eq!(r.code, 1, "{problem}\n{}", r.stdout);
        let broken: Vec<&str> = wiring_lines(&r.stdout)
            .into_iter()
            .filter(|l| !l.contains(": wiring ok: "))
            .collect();
        assert_eq!(broken, [problem.as_str()], "{}", r.stdout);
        // The other rollouts are still wired.
        assert_eq!(wiring_lines(&r.stdout).len(), 3, "{}", r.stdout);
    }
}

#[test]
fn check_reads_a_virtualservices_short_names_as_a_client_calls_the_service() {
    // A rollout for the Service's short name, and one for its full name: the
    // VirtualService of `model` in namespace models serves both.
    let config = r#"{"rollouts":[
        {"name":"short","hosts":["model"],"versions":[{"name":"model-v1","weight":90},{"name":"model-v2","weight":10}]},
        {"name":"full","hosts":["model.models.svc.cluster.local"],"versions":[{"name":"model-v1","weight":90},{"name":"model-v2","weight":10}]},
        {"name":"elsewhere","hosts":["*.example.com"],"versions":[{"name":"other-v1","weight":100}]}]}"#;
    let plugin = file("short-names.json", config);
    let r = run(&[
        "check",
        &plugin,
        "istio/virtualservice.yaml",
        "istio/destinationrule.yaml",
    ]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert_eq!(
        wiring_lines(&r.stdout),
        [
            format!("{plugin} rollout short with istio/virtualservice.yaml: VirtualService models/model: wiring ok: model-v1 -> v1, model-v2 -> v2; default route -> v1"),
            format!("{plugin} rollout full with istio/virtualservice.yaml: VirtualService models/model: wiring ok: model-v1 -> v1, model-v2 -> v2; default route -> v1"),
            format!("{plugin} rollout elsewhere: wiring: no VirtualService among the files routes the rollout's hosts (*.example.com) on its routing header x-canary-version"),
        ]
    );
}

#[test]
fn check_warns_about_rollouts_more_specific_host_patterns_keep_out() {
    let config = r#"{"rollouts":[
        {"name":"catch-all","hosts":["*"],"versions":[{"name":"all-v1","weight":100}]},
        {"name":"catalog","hosts":["*.example.com"],"pathPrefixes":["/v1/"],"versions":[{"name":"cat-v1","weight":100}]},
        {"name":"api-v2","hosts":["api.example.com"],"pathPrefixes":["/v2/"],"versions":[{"name":"api2-v1","weight":100}]},
        {"name":"api","hosts":["api.example.com"],"pathPrefixes":["/v1/","/v2/models/legacy"],"versions":[{"name":"api-v1","weight":100}]},
        {"name":"iris","hosts":["iris.example.com","iris.example.org"],"versions":[{"name":"iris-v1","weight":100}]}]}"#;
    let path = file("shadowed.json", config);
    let r = run(&["check", &path]);
    assert_eq!(r.code, 0, "a warning is no finding: {}", r.stdout);
    let why = "a request goes to the rollouts of its host's most specific pattern (an exact name, then the longest *.suffix, then *) \
               by the longest path prefix, or passes untouched; it never falls through to a less specific pattern";
    let warnings: Vec<&str> = r.stdout.lines().skip(6).collect();
    assert_eq!(
        warnings,
        [
            format!("{path}: warning: rollout catch-all (rollouts[0]; hosts *; every path) never takes requests to the hosts below, though its hosts match them: {why}"),
            format!("{path}:   *.example.com: /v1/ -> catalog; any other path -> no rollout, untouched"),
            format!("{path}:   api.example.com: /v2/ -> api-v2; /v1/, /v2/models/legacy -> api; any other path -> no rollout, untouched"),
            format!("{path}:   iris.example.com: every path -> iris"),
            format!("{path}:   iris.example.org: every path -> iris"),
            format!("{path}: warning: rollout catalog (rollouts[1]; hosts *.example.com; /v1/) never takes requests to the hosts below, though its hosts match them: {why}"),
            format!("{path}:   api.example.com: /v2/ -> api-v2; /v1/, /v2/models/legacy -> api; any other path -> no rollout, untouched"),
            format!("{path}:   iris.example.com: every path -> iris"),
        ]
    );
    let report = json(&run(&["check", &path, "-o", "json"]));
    assert_eq!(report["ok"], true);
    let catalog = &report["configs"][0]["shadowed"][1];
    assert_eq!(catalog["name"], "catalog");
    assert_eq!(
        catalog["covered"][0],
        serde_json::json!({
            "pattern": "api.example.com", "within": "*.example.com",
            "takenBy": [
                {"rollout": 2, "name": "api-v2", "pathPrefixes": ["/v2/"]},
                {"rollout": 3, "name": "api", "pathPrefixes": ["/v1/", "/v2/models/legacy"]},
            ],
            "otherPathsUntouched": true,
        })
    );
    // What the warning says, the filter does: catalog's /v1/ on api.example.com is api's.
    let e = json(&run(&[
        "explain",
        &path,
        "--host",
        "api.example.com",
        "--path",
        "/v1/x",
        "-o",
        "json",
    ]));
    assert_eq!(e["rollout"]["name"], "api");
    // A long list is cut in text, whole in JSON.
    let many: Vec<String> = (0..12)
        .map(|i| format!(r#"{{"name":"m{i}","hosts":["m{i}.example.com"],"versions":[{{"name":"v1","weight":100}}]}}"#))
        .collect();
    let path = file(
        "many.json",
        format!(
            r#"{{"rollouts":[{{"name":"any","hosts":["*"],"versions":[{{"name":"v1","weight":100}}]}},{}]}}"#,
            many.join(",")
        ),
    );
    let r = run(&["check", &path]);
    assert!(r.stdout.ends_with(&format!("{path}:   m9.example.com: every path -> m9\n{path}:   and 2 more host patterns (-o json lists them all)\n")), "{}", r.stdout);
    let report = json(&run(&["check", &path, "-o", "json"]));
    assert_eq!(
        report["configs"][0]["shadowed"][0]["covered"]
            .as_array()
            .unwrap()
            .len(),
        12
    );
}

#[test]
fn check_names_the_rollouts_entry_of_an_error() {
    let entry = |name: &str, hosts: &str, weights: (u32, u32)| {
        format!(
            "- {{name: {name}, hosts: {hosts}, versions: [{{name: {name}-v1, weight: {}}}, {{name: {name}-v2, weight: {}}}]}}",
            weights.0, weights.1
        )
    };
    for (config, error) in [
        (
            format!("rollouts:\n{}\n{}", entry("iris", "[iris.example.com]", (90, 10)), entry("flowers", "[\"*.flowers.example.com\"]", (90, 20))),
            "rollouts[1].versions: weights sum to 110, not 100".to_string(),
        ),
        (
            format!("rollouts:\n{}\n{}", entry("a", "[\"*.example.com\"]", (90, 10)), entry("b", "[x.example.org, \"*.Example.com\"]", (90, 10))),
            "rollouts[1].hosts[1]: \"*.example.com\" (every path) is already claimed by rollouts[0] (\"a\"): a host and path prefix take one rollout".to_string(),
        ),
        (
            format!("rollouts:\n{}\n{}", entry("a", "[a.example.com]", (90, 10)), entry("b", "[\"b.example.com:443\"]", (90, 10))),
            "rollouts[1].hosts[0]: \"b.example.com:443\" holds a port: hosts are matched without the port a client sends".to_string(),
        ),
        (
            format!("routingHeader: x-v\nrollouts:\n{}", entry("a", "[a.example.com]", (90, 10))),
            "routingHeader: belongs in each entry of `rollouts`; a config with `rollouts` holds nothing else".to_string(),
        ),
    ] {
        let path = file("rollouts-bad.yaml", wasmplugin(&config));
        let r = run(&["check", &path]);
        assert_eq!(r.code, 1, "{config}: {}{}", r.stdout, r.stderr);
        assert_eq!(
            r.stdout,
            format!("{path}: WasmPlugin models/canary-selector: rejected: {error}\n")
        );
        // explain and diff report the same error.
        let r = run(&["explain", &path, "--host", "a.example.com"]);
        assert_eq!((r.code, r.stdout.as_str()), (1, format!("rejected: {error}\n").as_str()));
        let r = run(&["diff", GATEWAY, &path]);
        assert_eq!(
            (r.code, r.stdout.as_str()),
            (1, format!("{path}: WasmPlugin models/canary-selector: rejected: {error}\n").as_str())
        );
    }
}

#[test]
fn explain_names_the_rollout_the_host_and_path_take() {
    let r = run(&[
        "explain",
        GATEWAY,
        "--host",
        "IRIS.example.com:443",
        "-H",
        "x-user-id: user-27",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let b = bucket("iris-v1", "user-27");
    let version = if u64::from(b) < bound(90.0) {
        "iris-v1"
    } else {
        "iris-v2"
    };
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(
        lines[0],
        "rollout iris (rollouts[0]): host iris.example.com matches iris.example.com, every path"
    );
    assert!(
        lines[1].starts_with(&format!(
            "{version}: sticky: header x-user-id is \"user-27\", bucket {b} of 2^32"
        )),
        "{}",
        r.stdout
    );
    // `Host` is the :authority, as Envoy hands it over.
    let r = run(&[
        "explain",
        GATEWAY,
        "-H",
        "Host: a.b.Flowers.example.com",
        "-H",
        "x-user-id: u",
        "-o",
        "json",
    ]);
    let e = json(&r);
    assert_eq!(
        (
            &e["rollout"]["name"],
            &e["rollout"]["pattern"],
            &e["rollout"]["index"]
        ),
        (
            &Value::from("flowers"),
            &Value::from("*.flowers.example.com"),
            &Value::from(1)
        )
    );
    let flowers = if u64::from(bucket("flowers-v1", "u")) < bound(50.0) {
        "flowers-v1"
    } else {
        "flowers-v2"
    };
    assert_eq!(e["version"], flowers);
    let r = run(&[
        "explain",
        GATEWAY,
        "--host",
        "api.example.com",
        "--path",
        "/v1/models/m:predict",
        "-H",
        "x-user-id: u",
    ]);
    assert!(r.stdout.starts_with("rollout api (rollouts[2]): host api.example.com matches api.example.com, path /v1/models/m:predict starts with /v1/\napi-v1: sticky"), "{}", r.stdout);
}

#[test]
fn explain_says_a_request_no_rollout_takes_passes_untouched() {
    let untouched = "the request passes untouched (no routing header written or removed, no cookie, no response header)";
    for (args, said) in [
        (vec!["--host", "models.other.org"], format!("no rollout: host models.other.org matches no rollout's hosts: {untouched}\n")),
        (
            vec!["--host", "api.example.com", "--path", "/health"],
            format!("no rollout: host api.example.com matches api.example.com, whose rollouts take /v1/ (api), not path /health: {untouched}\n"),
        ),
        (
            vec!["--host", "flowers.example.com"],
            format!("no rollout: host flowers.example.com matches no rollout's hosts: {untouched}\n"),
        ),
        (
            vec!["--path", "/v1/"],
            format!("no rollout: no :authority (--host) given, which only a rollout of hosts * takes, and none lists *: {untouched}\n"),
        ),
    ] {
        let mut argv = vec!["explain", GATEWAY, "-H", "x-user-id: u"];
        argv.extend(&args);
        let r = run(&argv);
        assert_eq!((r.code, r.stdout.as_str()), (0, said.as_str()), "{args:?}");
        argv.extend(["-o", "json"]);
        let e = json(&run(&argv));
        assert_eq!((&e["reason"], &e["version"], &e["rollout"]["index"]), (&Value::from("untouched"), &Value::Null, &Value::Null));
    }
    // The flag and -H may not both give the host.
    let r = run(&[
        "explain",
        GATEWAY,
        "--host",
        "a.example.com",
        "-H",
        "host: b.example.com",
    ]);
    assert_eq!(r.code, 2);
    assert_eq!(r.stderr, "canary-selector: --host and -H ':authority: ...' both give the request's :authority; give it once\n");
}

#[test]
fn explain_accepts_host_and_path_for_a_config_without_rollouts_and_picks_nothing() {
    let plain = run(&[
        "explain",
        "istio/wasmplugin.yaml",
        "-H",
        "x-user-id: user-27",
    ]);
    let with = run(&[
        "explain",
        "istio/wasmplugin.yaml",
        "-H",
        "x-user-id: user-27",
        "--host",
        "anything.example.org",
        "--path",
        "/x",
    ]);
    assert_eq!((with.code, &with.stdout), (0, &plain.stdout));
    assert!(json(&run(&[
        "explain",
        "istio/wasmplugin.yaml",
        "--host",
        "a",
        "-o",
        "json"
    ]))
    .get("rollout")
    .is_none());
    let help = run(&["explain", "--help"]).stdout;
    assert!(
        help.contains("A config without `rollouts` takes every host: there it picks"),
        "{help}"
    );
    assert!(
        help.contains("A config without `rollouts` takes every path: there it picks"),
        "{help}"
    );
}

/// The gateway fixture's pluginConfig as JSON, edited.
fn gateway_config(edit: impl FnOnce(&mut Vec<Value>)) -> String {
    let doc: Value = serde_saphyr::from_str(&shipped(GATEWAY)).unwrap();
    let mut config = doc["spec"]["pluginConfig"].clone();
    let Value::Array(rollouts) = &mut config["rollouts"] else {
        panic!("{config}")
    };
    edit(rollouts);
    config.to_string()
}

#[test]
fn diff_reports_each_rollout_added_removed_unchanged_or_changed() {
    let new = file(
        "gateway-next.json",
        gateway_config(|rollouts| {
            // iris ramps to 50/50, flowers stays, api goes, deep comes.
            rollouts[0]["versions"] = serde_json::json!([{"name": "iris-v1", "weight": 50}, {"name": "iris-v2", "weight": 50}]);
            rollouts[0]["rules"] = serde_json::json!([{"name": "testers", "match": {"headers": {"x-canary-tester": {"exact": "true"}}}, "version": "iris-v2"}]);
            rollouts.remove(2);
            rollouts.push(serde_json::json!({"name": "deep", "hosts": ["*.eu.flowers.example.com"], "versions": [{"name": "deep-v1", "weight": 100}]}));
        }),
    );
    let r = run(&["diff", GATEWAY, &new]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(
        r.stdout,
        "rollout iris: changed\n\
         \x20 iris-v1 -> iris-v2: 40% of users\n\
         \x20 stay: iris-v1 50%, iris-v2 10%\n\
         \x20 rule added: testers -> iris-v2 (its share of traffic is not knowable)\n\
         \x20 forward only: no user moves to an earlier-listed version (salt \"iris-v1\" unchanged)\n\
         rollout flowers: unchanged\n\
         rollout deep: added (hosts *.eu.flowers.example.com; every path): its requests went to rollout flowers before; their users now get its versions, by its salt and weights\n\
         rollout api: removed (hosts api.example.com; /v1/): its requests pass untouched now\n\
         rollouts: 1 changed (iris), 1 unchanged (flowers), 1 added (deep), 1 removed (api)\n\
         forward only: no user of any rollout moves to an earlier-listed version\n"
    );
    let d = json(&run(&["diff", GATEWAY, &new, "-o", "json"]));
    assert_eq!(
        (&d["changed"], &d["unchanged"], &d["added"], &d["removed"]),
        (
            &serde_json::json!(["iris"]),
            &serde_json::json!(["flowers"]),
            &serde_json::json!(["deep"]),
            &serde_json::json!(["api"])
        )
    );
    let statuses: Vec<(&str, &str)> = d["rollouts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["name"].as_str().unwrap(), r["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        statuses,
        [
            ("iris", "changed"),
            ("flowers", "unchanged"),
            ("deep", "added"),
            ("api", "removed")
        ]
    );
    let iris = &d["rollouts"][0];
    assert_eq!(iris["moves"][0]["buckets"], bound(90.0) - bound(50.0));
    assert_eq!(iris["old"]["salt"], "iris-v1");
    assert_eq!(
        d["rollouts"][2]["elsewhere"],
        serde_json::json!({"rollouts": ["flowers"], "untouched": false})
    );
    assert!(
        d.get("moves").is_none(),
        "the per-rollout analysis is in `rollouts`"
    );

    // The same behaviour written otherwise (key order, 50.0, another
    // rollout's edit) is unchanged: the filter's fingerprint decides.
    let reordered = file(
        "gateway-reordered.json",
        gateway_config(|rollouts| {
            rollouts[1] = serde_json::json!({"versions": [{"weight": 50.0, "name": "flowers-v1"}, {"name": "flowers-v2", "weight": 50}],
                "stickiness": {"userIdHeaders": ["X-User-Id"]}, "hosts": ["*.Flowers.example.com"], "name": "flowers"});
        }),
    );
    let r = run(&["diff", GATEWAY, &reordered]);
    assert!(
        r.stdout.contains("rollout flowers: unchanged\n"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("rollouts: 3 unchanged (iris, flowers, api)\n"),
        "{}",
        r.stdout
    );

    // A rollout that only takes more hosts: nobody of its own moves, and the
    // note says who changes rollout.
    let wider = file(
        "gateway-wider.json",
        gateway_config(|rollouts| {
            rollouts[0]["hosts"] = serde_json::json!(["iris.example.com", "iris.example.org"]);
        }),
    );
    let r = run(&["diff", GATEWAY, &wider]);
    assert_eq!(r.code, 0, "{}", r.stdout);
    assert!(r.stdout.starts_with(
        "rollout iris: changed\n  no user moves\n  stay: iris-v1 90%, iris-v2 10%\n\
         \x20 note: its scope changes (hosts iris.example.com; every path -> hosts iris.example.com, iris.example.org; every path): \
         requests to a host or path it takes or leaves change rollout, or pass untouched, and their users are bucketed by that rollout\n"
    ), "{}", r.stdout);

    // Back: iris moves backward, a finding unless allowed; the others are
    // named as they go and come.
    let r = run(&["diff", &new, GATEWAY]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(r.stdout.contains("rollout api: added (hosts api.example.com; /v1/): its requests passed untouched before\n"), "{}", r.stdout);
    assert!(r.stdout.contains("rollout deep: removed (hosts *.eu.flowers.example.com; every path): its requests go to rollout flowers now; their users get the versions of the rollout that takes them\n"), "{}", r.stdout);
    assert!(r.stdout.ends_with(
        "  BACKWARD: 40% of users move to an earlier-listed version (iris-v2 -> iris-v1 40%); pass --allow-backward if this is a rollback\n\
         rollout flowers: unchanged\n\
         rollout api: added (hosts api.example.com; /v1/): its requests passed untouched before\n\
         rollout deep: removed (hosts *.eu.flowers.example.com; every path): its requests go to rollout flowers now; their users get the versions of the rollout that takes them\n\
         rollouts: 1 changed (iris), 1 unchanged (flowers), 1 added (api), 1 removed (deep)\n\
         BACKWARD: users move to an earlier-listed version in rollout iris (40%); pass --allow-backward if this is a rollback\n"
    ), "{}", r.stdout);
    let r = run(&["diff", &new, GATEWAY, "--allow-backward"]);
    assert_eq!(r.code, 0);
    assert!(
        r.stdout.ends_with(
            "backward allowed: users move to an earlier-listed version in rollout iris (40%)\n"
        ),
        "{}",
        r.stdout
    );
}

#[test]
fn diff_compares_a_config_without_rollouts_with_each_rollout_that_replaces_it() {
    let one = file("one.json", weights(90.0, 10.0));
    let split = file(
        "split.json",
        r#"{"rollouts":[
            {"name":"models","hosts":["*"],"versions":[{"name":"model-v1","weight":80},{"name":"model-v2","weight":20}],"stickiness":{"userIdHeaders":["x-user-id"]}},
            {"name":"fresh","hosts":["fresh.example.com"],"versions":[{"name":"fresh-v1","weight":100}],"stickiness":{"userIdHeaders":["x-user-id"]}}]}"#,
    );
    let r = run(&["diff", &one, &split]);
    assert_eq!(r.code, 0, "{}", r.stdout);
    assert!(
        r.stdout.starts_with(
            "rollout models: changed (against OLD's one rollout, which took every request)\n\
         \x20 model-v1 -> model-v2: 10% of users\n\
         \x20 stay: model-v1 80%, model-v2 10%\n"
        ),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("rollout fresh: changed (against OLD's one rollout, which took every request)\n  every user is drawn again (salt \"model-v1\" -> \"fresh-v1\")"), "{}", r.stdout);
    assert!(r.stdout.contains("\nnote: OLD has no `rollouts`: its one rollout took every request; each rollout is compared with it, and a request no rollout takes now passes untouched\n"), "{}", r.stdout);
    assert!(r.stdout.ends_with("salt changed in rollout fresh: the ramp guarantee does not carry across this change for its users\n"), "{}", r.stdout);
    // And back: each rollout against the one that takes every request again.
    let r = run(&["diff", &split, &one]);
    assert_eq!(
        r.code, 1,
        "models' 80/20 back to 90/10 is a backward move: {}",
        r.stdout
    );
    assert!(
        r.stdout.starts_with(
            "rollout models: changed (against NEW's one rollout, which takes every request)\n"
        ),
        "{}",
        r.stdout
    );
    // Two configs without rollouts diff as before: no `rollouts` in the JSON.
    let d = json(&run(&[
        "diff",
        &one,
        &file("w50b.json", weights(50.0, 50.0)),
        "-o",
        "json",
    ]));
    assert!(d.get("rollouts").is_none() && d["moves"].is_array(), "{d}");
}

#[test]
fn check_wires_a_version_s_grpc_and_rest_rules_to_one_service_and_no_more() {
    // KServe's predictors that serve REST and gRPC take two rules of ours
    // per version (istio/kserve/many-models/httproute.yaml): to the one
    // Service, on its gRPC and its REST port. Two rules to two Services
    // still leave the version's requests to chance.
    let plugin = "istio/kserve/many-models/wasmplugin.yaml";
    let route = shipped("istio/kserve/many-models/httproute.yaml");
    let sklearn = "istio/kserve/httproute.yaml";
    let r = run(&["check", plugin, sklearn, &file("grpc-route.yaml", &route)]);
    assert_eq!(r.code, 0, "{}", r.stdout);
    assert!(r.stdout.contains("wiring ok: model-v1 -> xgboost-iris-model-v1-predictor, model-v2 -> xgboost-iris-model-v2-predictor"), "{}", r.stdout);
    let split = route.replacen(
        "name: xgboost-iris-model-v1-predictor, port: 8081",
        "name: xgboost-iris-model-v2-predictor, port: 8081",
        1,
    );
    let r = run(&[
        "check",
        plugin,
        sklearn,
        &file("grpc-route-split.yaml", &split),
    ]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(
        r.stdout.contains("wiring: version model-v1 has 2 rules matching x-canary-version: model-v1 (model-v1-grpc, model-v1)"),
        "{}",
        r.stdout
    );
}
