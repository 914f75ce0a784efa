//! `check`: the shipped manifests and their wiring, the filter's own errors,
//! `pluginConfig` as Istio delivers it, and broken wiring.

use super::*;

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
                     no rule without matches: a request without the routing header is left to other routes"),
                format!("{plugin} with istio/kserve/many-models/httproute.yaml: HTTPRoute kserve-test/xgboost-iris-canary-selector: \
                     wiring ok: model-v1 -> xgboost-iris-model-v1-predictor, model-v2 -> xgboost-iris-model-v2-predictor; \
                     no rule without matches: a request without the routing header is left to other routes"),
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
                 no rule without matches: a request without the routing header is left to other routes"),
            format!("{plugin} rollout xgboost-iris with istio/kserve/many-models/httproute.yaml: HTTPRoute kserve-test/xgboost-iris-canary-selector: \
                 wiring ok: model-v1 -> xgboost-iris-model-v1-predictor, model-v2 -> xgboost-iris-model-v2-predictor; \
                 no rule without matches: a request without the routing header is left to other routes"),
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
