//! Configs that list `rollouts`: `check` wires each rollout to the routes of
//! its hosts and warns about shadowed ones, `explain` names the rollout a host
//! and path take, `diff` reports per rollout.

use super::*;

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
    // A prefix is shown as the filter compares it: `/v1/` is `/v1`.
    assert!(lines[3].starts_with(&format!("{GATEWAY_PLUGIN}: rollout api (hosts api.example.com; /v1): routing header x-canary-version; versions api-v1=100% api-v2=0%;")), "{}", lines[3]);
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
        serde_json::json!(["/v1"])
    );
    assert_eq!(
        report["configs"][0]["unclaimed"],
        serde_json::json!({"removed": ["x-canary-version"], "passedAsSent": []})
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
fn check_resolves_a_services_short_names_in_the_cluster_domain_given() {
    // The VirtualService and its destinations call the Service `model`; the
    // DestinationRule and one rollout name it in the cluster domain
    // example.internal.
    let vs = file(
        "domain-vs.yaml",
        shipped("istio/virtualservice.yaml").replace("model.models.svc.cluster.local", "model"),
    );
    let dr = file(
        "domain-dr.yaml",
        shipped("istio/destinationrule.yaml").replace(
            "model.models.svc.cluster.local",
            "model.models.svc.example.internal",
        ),
    );
    let rollout = |hosts: &str| {
        file(
            "domain.json",
            format!(
                r#"{{"rollouts":[{{"name":"model","hosts":{hosts},"versions":[{{"name":"model-v1","weight":90}},{{"name":"model-v2","weight":10}}]}}]}}"#
            ),
        )
    };
    let full = rollout(r#"["model.models.svc.example.internal"]"#);
    let check = |plugin: &str, domain: Option<&str>| {
        let mut args = vec!["check", plugin, &vs, &dr];
        if let Some(domain) = domain {
            args.extend(["--cluster-domain", domain]);
        }
        run(&args)
    };
    let wired = format!("{full} rollout model with {vs}: VirtualService models/model: wiring ok: model-v1 -> v1, model-v2 -> v2; default route -> v1");
    for domain in ["example.internal", "Example.Internal."] {
        let r = check(&full, Some(domain));
        assert_eq!(
            (r.code, wiring_lines(&r.stdout)),
            (0, vec![wired.as_str()]),
            "{domain}"
        );
    }
    // In cluster.local, the default, `model` is another name.
    let r = check(&full, None);
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert_eq!(
        wiring_lines(&r.stdout),
        [format!("{full} rollout model: wiring: no VirtualService among the files routes the rollout's hosts (model.models.svc.example.internal) on its routing header x-canary-version")]
    );
    // A rollout of the short name is wired either way, but the subsets are
    // the DestinationRule's only in its domain.
    let short = rollout(r#"["model"]"#);
    let r = check(&short, None);
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(r.stdout.contains(": wiring: version model-v1 (route model-v1) goes to subset v1, which no DestinationRule for model.models.svc.cluster.local defines\n"), "{}", r.stdout);
    assert_eq!(check(&short, Some("example.internal")).code, 0);
    for bad in ["", "a..b", "cluster local"] {
        let r = check(&full, Some(bad));
        assert_eq!(r.code, 2, "{bad:?}: {}", r.stderr);
        assert!(
            r.stderr.contains("not a DNS domain such as cluster.local"),
            "{}",
            r.stderr
        );
    }
}

#[test]
fn check_reads_a_routes_hosts_as_the_filter_reads_a_requests() {
    // Letter case, a trailing dot and a port keep no route from its rollout.
    let routes = shipped(GATEWAY_ROUTES)
        .replace("hosts: [iris.example.com]", "hosts: [IRIS.Example.com.]")
        .replace(
            r#"hosts: ["*.flowers.example.com"]"#,
            r#"hosts: ["*.Flowers.example.com."]"#,
        )
        .replace(
            "hostnames: [api.example.com]",
            r#"hostnames: ["api.example.com:443"]"#,
        );
    let r = check_gateway(&routes);
    assert_eq!(r.code, 0, "{}", r.stdout);
    let lines = wiring_lines(&r.stdout);
    assert_eq!(lines.len(), 3, "{}", r.stdout);
    assert!(
        lines.iter().all(|l| l.contains(": wiring ok: ")),
        "{}",
        r.stdout
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
               by the longest path prefix that takes its path, or to no rollout; it never falls through to a less specific pattern";
    let warnings: Vec<&str> = r.stdout.lines().skip(6).collect();
    assert_eq!(
        warnings,
        [
            format!("{path}: warning: rollout catch-all (rollouts[0]; hosts *; every path) never takes requests to the hosts below, though its hosts match them: {why}"),
            format!("{path}:   *.example.com: /v1 -> catalog; any other path -> no rollout (x-canary-version removed)"),
            format!("{path}:   api.example.com: /v2 -> api-v2; /v1, /v2/models/legacy -> api; any other path -> no rollout (x-canary-version removed)"),
            format!("{path}:   iris.example.com: every path -> iris"),
            format!("{path}:   iris.example.org: every path -> iris"),
            format!("{path}: warning: rollout catalog (rollouts[1]; hosts *.example.com; /v1) never takes requests to the hosts below, though its hosts match them: {why}"),
            format!("{path}:   api.example.com: /v2 -> api-v2; /v1, /v2/models/legacy -> api; any other path -> no rollout (x-canary-version removed)"),
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
                {"rollout": 2, "name": "api-v2", "pathPrefixes": ["/v2"]},
                {"rollout": 3, "name": "api", "pathPrefixes": ["/v1", "/v2/models/legacy"]},
            ],
            "otherPathsUnclaimed": true,
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
            "rollouts[1].hosts[1]: \"*.example.com\" (every path) is already claimed by rollouts[0] (\"a\"): a host and path prefix take one rollout of any model".to_string(),
        ),
        (
            format!("rollouts:\n{}\n{}", entry("a", "[a.example.com]", (90, 10)), entry("b", "[\"b.example.com:443\"]", (90, 10))),
            "rollouts[1].hosts[0]: \"b.example.com:443\" holds a port: hosts are matched without the port a client sends".to_string(),
        ),
        (
            format!("routingHeader: x-v\nrollouts:\n{}", entry("a", "[a.example.com]", (90, 10))),
            "routingHeader: belongs in each entry of `rollouts`; the top level of a config with `rollouts` holds only the options about them".to_string(),
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
    assert!(r.stdout.starts_with("rollout api (rollouts[2]): host api.example.com matches api.example.com, prefix /v1 takes path /v1/models/m:predict\napi-v1: sticky"), "{}", r.stdout);
}

#[test]
fn explain_says_a_request_no_rollout_takes_loses_its_routing_header() {
    let removed = "the filter removes the routing header x-canary-version from the request, so that the client cannot pick a version, and changes nothing else (no cookie, no response header)";
    for (args, said) in [
        (vec!["--host", "models.other.org"], format!("no rollout: host models.other.org matches no rollout's hosts: {removed}\n")),
        (
            vec!["--host", "api.example.com", "--path", "/health"],
            format!("no rollout: host api.example.com matches api.example.com, whose rollouts take /v1 (api), not path /health: {removed}\n"),
        ),
        // A prefix takes whole segments: /v1 is not /v1beta.
        (
            vec!["--host", "api.example.com", "--path", "/v1beta/models/m:predict"],
            format!("no rollout: host api.example.com matches api.example.com, whose rollouts take /v1 (api), not path /v1beta/models/m:predict: {removed}\n"),
        ),
        (
            vec!["--host", "flowers.example.com"],
            format!("no rollout: host flowers.example.com matches no rollout's hosts: {removed}\n"),
        ),
        (
            vec!["--path", "/v1/"],
            format!("no rollout: no :authority (--host) given, which only a rollout of hosts * takes, and none lists *: {removed}\n"),
        ),
    ] {
        let mut argv = vec!["explain", GATEWAY, "-H", "x-user-id: u"];
        argv.extend(&args);
        let r = run(&argv);
        assert_eq!((r.code, r.stdout.as_str()), (0, said.as_str()), "{args:?}");
        argv.extend(["-o", "json"]);
        let e = json(&run(&argv));
        assert_eq!((&e["reason"], &e["version"], &e["rollout"]["index"]), (&Value::from("unclaimed"), &Value::Null, &Value::Null));
        assert_eq!(e["unclaimed"], serde_json::json!({"removed": ["x-canary-version"], "passedAsSent": []}));
    }
    // With passUnclaimedRoutingHeaders, the routing header passes as sent.
    let passing = file(
        "gateway-passing.json",
        gateway_config(|_| {}).replacen('{', r#"{"passUnclaimedRoutingHeaders":true,"#, 1),
    );
    let r = run(&["explain", &passing, "--host", "models.other.org"]);
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "no rollout: host models.other.org matches no rollout's hosts: the request passes untouched: passUnclaimedRoutingHeaders lets the routing header x-canary-version through as the client sent it; no cookie, no response header\n")
    );
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
         rollout api: removed (hosts api.example.com; /v1): no rollout takes its requests now (x-canary-version removed)\n\
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
        serde_json::json!({"rollouts": ["flowers"], "unclaimed": false})
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
         requests to a host or path it takes or leaves change rollout (or go to none), and their users are bucketed by the rollout that takes them\n"
    ), "{}", r.stdout);

    // Back: iris moves backward, a finding unless allowed; the others are
    // named as they go and come.
    let r = run(&["diff", &new, GATEWAY]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(r.stdout.contains("rollout api: added (hosts api.example.com; /v1): no rollout took its requests before\n"), "{}", r.stdout);
    assert!(r.stdout.contains("rollout deep: removed (hosts *.eu.flowers.example.com; every path): its requests go to rollout flowers now; their users get the versions of the rollout that takes them\n"), "{}", r.stdout);
    assert!(r.stdout.ends_with(
        "  BACKWARD: 40% of users move to an earlier-listed version (iris-v2 -> iris-v1 40%); pass --allow-backward if this is a rollback\n\
         rollout flowers: unchanged\n\
         rollout api: added (hosts api.example.com; /v1): no rollout took its requests before\n\
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

/// A config with `rollouts`: (name, hosts, path prefixes) each, one
/// version each.
fn rollouts_config(rollouts: &[(&str, &[&str], &[&str])]) -> String {
    let entries: Vec<Value> = rollouts
        .iter()
        .map(|(name, hosts, prefixes)| {
            let mut entry = serde_json::json!({
                "name": name, "hosts": hosts,
                "versions": [{"name": format!("{name}-v1"), "weight": 100}],
            });
            if !prefixes.is_empty() {
                entry["pathPrefixes"] = serde_json::json!(prefixes);
            }
            entry
        })
        .collect();
    serde_json::json!({ "rollouts": entries }).to_string()
}

#[test]
fn diff_finds_where_a_rollouts_requests_went_on_every_part_of_its_hosts_and_paths() {
    // `wide` takes a.example.com's requests from `a`, and any other host of
    // *.example.com's from `any`; `api2`'s /v1 holds api's /v1/models, and
    // paths no rollout took.
    let old = file(
        "elsewhere-old.json",
        rollouts_config(&[
            ("any", &["*"], &[]),
            ("a", &["a.example.com"], &[]),
            ("api", &["api.example.com"], &["/v1/models"]),
        ]),
    );
    let new = file(
        "elsewhere-new.json",
        rollouts_config(&[
            ("any", &["*"], &[]),
            ("wide", &["*.example.com"], &[]),
            ("api2", &["api.example.com"], &["/v1"]),
        ]),
    );
    let r = run(&["diff", &old, &new]);
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (
            0,
            "rollout any: unchanged\n\
             rollout wide: added (hosts *.example.com; every path): its requests went to rollout any, a before; their users now get its versions, by its salt and weights\n\
             rollout api2: added (hosts api.example.com; /v1): its requests went to rollout api or no rollout before; their users now get its versions, by its salt and weights\n\
             rollout a: removed (hosts a.example.com; every path): its requests go to rollout wide now; their users get the versions of the rollout that takes them\n\
             rollout api: removed (hosts api.example.com; /v1/models): its requests go to rollout api2 now; their users get the versions of the rollout that takes them\n\
             rollouts: 1 unchanged (any), 2 added (wide, api2), 2 removed (a, api)\n\
             forward only: no user of any rollout moves to an earlier-listed version\n"
        )
    );
    // A wildcard of the longest domain: its hosts are as long as the filter
    // reads, and were `tail`'s.
    let domain = [
        "a".repeat(63),
        "b".repeat(63),
        "c".repeat(63),
        "d".repeat(61),
    ]
    .join(".");
    let (long, tail) = (format!("*.{domain}"), format!("*.{}", "d".repeat(61)));
    let old = file(
        "elsewhere-long-old.json",
        rollouts_config(&[("any", &["*"], &[]), ("tail", &[&tail], &[])]),
    );
    let new = file(
        "elsewhere-long-new.json",
        rollouts_config(&[
            ("any", &["*"], &[]),
            ("tail", &[&tail], &[]),
            ("long", &[&long], &[]),
        ]),
    );
    let r = run(&["diff", &old, &new]);
    assert!(r.stdout.contains(&format!("rollout long: added (hosts {long}; every path): its requests went to rollout tail before;")), "{}", r.stdout);
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
    assert!(r.stdout.contains("\nnote: OLD has no `rollouts`: its one rollout took every request; each rollout is compared with it, and a request none of them takes now goes to no rollout (x-canary-version removed)\n"), "{}", r.stdout);
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
