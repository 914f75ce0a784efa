"""The KServe manifests (istio/kserve/, envoy/gateway/): valid for the API
server they are applied to, consistent with what KServe writes for the
InferenceService, and routed as the README says on each gateway."""

import copy

import pytest

import kserve
import mesh

MANIFESTS = [
    pytest.param(path, i, id=f"{path.relative_to(mesh.ROOT)}#{i}")
    for path in kserve.manifest_files()
    for i, _ in enumerate(mesh.load(path))
]


@pytest.mark.parametrize("path,index", MANIFESTS)
def test_every_manifest_passes_the_schema_of_its_api_version(path, index):
    assert mesh.validate(mesh.load(path)[index]) == []


def test_the_manifests_are_the_documented_set():
    kinds = sorted(
        (str(p.relative_to(mesh.ROOT)), d["kind"], d["metadata"]["name"])
        for p in kserve.manifest_files()
        for d in mesh.load(p)
    )
    assert kinds == [
        ("envoy/gateway/envoyextensionpolicy.yaml", "EnvoyExtensionPolicy", "canary-selector"),
        ("envoy/gateway/many-models/envoyextensionpolicy.yaml", "EnvoyExtensionPolicy", "canary-selector"),
        ("istio/kserve/httproute.yaml", "HTTPRoute", "sklearn-iris-canary-selector"),
        ("istio/kserve/inferenceservice.yaml", "InferenceService", "sklearn-iris"),
        ("istio/kserve/many-models/httproute.yaml", "HTTPRoute", "xgboost-iris-canary-selector"),
        ("istio/kserve/many-models/inferenceservice.yaml", "InferenceService", "xgboost-iris"),
        ("istio/kserve/many-models/wasmplugin.yaml", "WasmPlugin", "canary-selector"),
        ("istio/kserve/namespace.yaml", "Namespace", "kserve-test"),
        # Testers by their token (docs/operations.md, "Security"): applied instead of wasmplugin.yaml.
        ("istio/kserve/security/requestauthentication.yaml", "RequestAuthentication", "canary-testers"),
        ("istio/kserve/security/wasmplugin.yaml", "WasmPlugin", "canary-selector"),
        ("istio/kserve/trafficextension/canary-selector.yaml", "TrafficExtension", "canary-selector"),
        ("istio/kserve/wasmplugin.yaml", "WasmPlugin", "canary-selector"),
    ]


def test_what_kserve_and_its_install_write_passes_the_schemas_too(cluster):
    """The model of KServe's controller (its Services and HTTPRoutes) and
    the Gateway of its install are objects the API server would take, so
    the routes the tests build from them are routes KServe can write."""
    for doc in cluster.objects.values():
        assert mesh.validate(doc) == [], (doc["kind"], doc["metadata"]["name"])
    written = sorted((d["kind"], d["metadata"]["name"]) for d in cluster.objects.values() if kserve.is_kserve_owned(d))
    assert written == [
        ("HTTPRoute", "sklearn-iris"),
        ("HTTPRoute", "sklearn-iris-predictor"),
        ("Service", "sklearn-iris-model-v1-predictor"),
        ("Service", "sklearn-iris-model-v2-predictor"),
    ]


def _set(path: str, value):
    def change(doc):
        *parents, last = path.split(".")
        node = doc
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        if value is DELETE:
            del node[int(last) if isinstance(node, list) else last]
        else:
            node[int(last) if isinstance(node, list) else last] = value

    return change


DELETE = object()

# A mistake in each manifest, and what the API server would say about it
# (a schema error, or the CRD's CEL rule's message).
MISTAKES = [
    (
        "istio/kserve/inferenceservice.yaml",
        _set("spec.canary.0.trafficPercent", 110),
        "110 is greater than the maximum of 100",
    ),
    (
        "istio/kserve/inferenceservice.yaml",
        _set("spec.canary.0.predictor.model.name", DELETE),
        "'name' is a required property",
    ),
    ("istio/kserve/inferenceservice.yaml", _set("spec.canary.0.predictor.name", "Model_V2"), "does not match"),
    (
        "istio/kserve/inferenceservice.yaml",
        _set("spec.canaryTrafficPercent", 10),
        "'canaryTrafficPercent' was unexpected",
    ),
    (
        "istio/kserve/httproute.yaml",
        _set("spec.rules.0.matches.0.path", {"type": "PathPrefix", "value": "v1"}),
        "must be an absolute path",
    ),
    ("istio/kserve/httproute.yaml", _set("spec.rules.0.matches.0.path.type", "Regex"), "is not one of"),
    (
        "istio/kserve/httproute.yaml",
        _set("spec.rules.0.backendRefs.0.port", DELETE),
        "Must have port for Service reference",
    ),
    ("istio/kserve/httproute.yaml", _set("spec.rules.0.timeouts.request", "1 minute"), "does not match"),
    ("istio/kserve/httproute.yaml", _set("spec.hostnames.0", "Sklearn_Iris.example.com"), "does not match"),
    (
        "istio/kserve/wasmplugin.yaml",
        _set("spec.targetRefs.0.namespace", "kserve-test"),
        "cross namespace referencing is not currently supported",
    ),
    (
        "istio/kserve/wasmplugin.yaml",
        _set("spec.selector", {"matchLabels": {"app": "x"}}),
        "only one of targetRefs or selector",
    ),
    (
        "istio/kserve/trafficextension/canary-selector.yaml",
        _set("spec.wasm.url", "ftp://registry.example.com/x"),
        "url must have schema",
    ),
    # The RequestAuthentication against the schema written from Istio's API
    # reference (tests/istio/mesh/request_authentication.py; no CRD at hand).
    (
        "istio/kserve/security/requestauthentication.yaml",
        _set("spec.jwtRules.0.outputClaimToHeaders.0.header", "x-jwt canary"),
        "does not match",
    ),
    (
        "istio/kserve/security/requestauthentication.yaml",
        _set("spec.jwtRules.0.outputClaimToHeader", []),
        "'outputClaimToHeader' was unexpected",
    ),
    (
        "istio/kserve/security/requestauthentication.yaml",
        _set("spec.jwtRules.0.outputClaimToHeaders.0.claim", DELETE),
        "'claim' is a required property",
    ),
    (
        "istio/kserve/security/requestauthentication.yaml",
        _set("spec.jwtRules.0.jwks", '{"keys": []}'),
        "only one of jwks or jwksUri",
    ),
    (
        "istio/kserve/security/requestauthentication.yaml",
        _set("spec.jwtRules.0.jwksUri", "auth.example.com/jwks.json"),
        "url must have scheme",
    ),
    (
        "istio/kserve/security/requestauthentication.yaml",
        _set("spec.selector", {"matchLabels": {"app": "x"}}),
        "only one of targetRefs or selector",
    ),
    (
        "istio/kserve/security/requestauthentication.yaml",
        _set("spec.targetRefs.0.namespace", "kserve-test"),
        "cross namespace referencing is not currently supported",
    ),
    (
        "envoy/gateway/envoyextensionpolicy.yaml",
        _set("spec.wasm.0.code.type", "HTTP"),
        "If type is HTTP, http field needs to be set",
    ),
    (
        "envoy/gateway/envoyextensionpolicy.yaml",
        _set("spec.targetRefs.0.kind", "Service"),
        "can only have a targetRefs[*].kind of Gateway",
    ),
    (
        "envoy/gateway/envoyextensionpolicy.yaml",
        _set("spec.targetRefs", DELETE),
        "either targetRef or targetRefs must be used",
    ),
    ("envoy/gateway/envoyextensionpolicy.yaml", _set("spec.wasm.0.failOpen", "yes"), "is not of type 'boolean'"),
]


@pytest.mark.parametrize("name,mistake,message", MISTAKES, ids=[f"{m[0]}:{m[2]}" for m in MISTAKES])
def test_the_schema_checks_reject_what_the_api_server_would(name, mistake, message):
    doc = copy.deepcopy(mesh.load(mesh.ROOT / name)[0])
    mistake(doc)
    errors = mesh.validate(doc)
    assert any(message in e for e in errors), errors


def test_the_shipped_manifests_are_consistent(cluster):
    assert kserve.inconsistencies(cluster) == []


def _ours(cluster):
    return cluster.get("HTTPRoute", "kserve-test", "sklearn-iris-canary-selector")


def _config(cluster):
    return kserve.plugin_config(kserve.plugin(cluster))


def _promote_kserve_only(cluster):
    isvc = cluster.get("InferenceService", "kserve-test", "sklearn-iris")
    isvc["spec"]["predictor"] = isvc["spec"].pop("canary")[0]["predictor"]
    kserve.reconcile(cluster)


def _canary_weight(percent):
    def change(cluster):
        cluster.get("InferenceService", "kserve-test", "sklearn-iris")["spec"]["canary"][0]["trafficPercent"] = percent
        kserve.reconcile(cluster)

    return change


def _swap_plugin_kind(cluster):
    """The other gateway's plugin resource in place of this one's."""
    doc = kserve.plugin(cluster)
    cluster.delete(doc["kind"], doc["metadata"]["namespace"], doc["metadata"]["name"])
    other = kserve.ENVOY_GATEWAY_DIR if doc["kind"] != "EnvoyExtensionPolicy" else kserve.KSERVE_DIR / "wasmplugin.yaml"
    cluster.apply(other)


# A change that would misroute, and how the check names it.
MISROUTES = [
    (lambda c: _config(c)["versions"].append({"name": "model-v3", "weight": 0}), "'model-v3' is no predictor"),
    (lambda c: _config(c)["versions"].reverse(), "the stable predictor (spec.predictor.name) is 'model-v1'"),
    (lambda c: _config(c).update(routingHeader="x-model-version"), "the plugin writes 'x-model-version'"),
    (
        lambda c: _ours(c)["spec"]["rules"][1]["backendRefs"][0].update(name="sklearn-iris-model-v1-predictor"),
        "model-v2 lands on",
    ),
    (lambda c: _ours(c)["spec"]["hostnames"].pop(), "are not KServe's for the InferenceService"),
    (lambda c: _ours(c)["spec"].update(hostnames=["sklearn-iris.example.org"]), "are not KServe's"),
    (
        lambda c: kserve.plugin(c)["spec"]["targetRefs"][0].update(
            kind="HTTPRoute", name="sklearn-iris-canary-selector"
        ),
        "must target the Gateway",
    ),
    (_canary_weight(10), "a request without x-canary-version lands on"),
    (_promote_kserve_only, "which KServe did not make"),
    (_swap_plugin_kind, "does nothing on a Gateway of class"),
]


@pytest.mark.parametrize("change,message", MISROUTES, ids=[m[1] for m in MISROUTES])
def test_the_consistency_check_catches_a_misroute(cluster, change, message):
    change(cluster)
    problems = kserve.inconsistencies(cluster)
    assert any(message in p for p in problems), problems


HOSTS = ["sklearn-iris-kserve-test.example.com", "sklearn-iris-predictor-kserve-test.example.com"]


@pytest.mark.parametrize("hostname", HOSTS)
def test_our_rules_win_by_their_header_match_and_the_rest_lands_on_stable(cluster, gateway_class, hostname):
    """The precedence the README states. On both hosts our rules and
    KServe's have the same path match (RegularExpression ^/.*$), which ties
    on path type and length however the gateway ranks RegularExpression;
    the next criterion, the number of header matches, puts ours first.
    Without the header, KServe's rule: all weight on model-v1."""
    order = kserve.entries(cluster, gateway_class)[hostname]
    assert [e.route["metadata"]["name"] for e in order][:2] == ["sklearn-iris-canary-selector"] * 2
    key = kserve._precedence(gateway_class)
    ours, theirs = key(order[0]), key(order[-1])
    assert ours[:2] == theirs[:2], "path type and length tie"
    headers = 3 if gateway_class == kserve.ISTIO else 2  # after the method criterion on Istio
    assert (ours[headers], theirs[headers]) == (-1, 0), "decided by the header matches"
    for version in ("model-v1", "model-v2"):
        e = kserve.resolve(cluster, gateway_class, hostname, {"x-canary-version": version})
        assert kserve.backends(e) == {f"kserve-test/sklearn-iris-{version}-predictor": 1}
    e = kserve.resolve(cluster, gateway_class, hostname, {})
    assert e.route["metadata"]["name"] in ("sklearn-iris", "sklearn-iris-predictor")
    assert kserve.backends(e) == {"kserve-test/sklearn-iris-model-v1-predictor": 100}
    # Another model behind the same Gateway is not ours.
    assert (
        kserve.resolve(cluster, gateway_class, "other-kserve-test.example.com", {"x-canary-version": "model-v2"})
        is None
    )


def test_a_path_prefix_rule_would_lose_to_kserves_on_envoy_gateway_only(cluster, gateway_class):
    """Why our rules copy KServe's RegularExpression path: with PathPrefix /
    they win on Istio (Exact > PathPrefix > RegularExpression there) but
    lose on Envoy Gateway (Exact > RegularExpression > PathPrefix), where
    every request then takes KServe's rule and the header is ignored."""
    for rule in _ours(cluster)["spec"]["rules"]:
        rule["matches"][0]["path"] = {"type": "PathPrefix", "value": "/"}
    e = kserve.resolve(cluster, gateway_class, HOSTS[0], {"x-canary-version": "model-v2"})
    landed = sorted(kserve.backends(e))
    if gateway_class == kserve.ISTIO:
        assert landed == ["kserve-test/sklearn-iris-model-v2-predictor"]
    else:
        assert landed == ["kserve-test/sklearn-iris-model-v1-predictor"]
    assert any("precedence depends on the gateway" in p for p in kserve.inconsistencies(cluster))


def test_the_plugin_resources_are_one_plugin():
    """The WasmPlugin, the TrafficExtension and the EnvoyExtensionPolicy
    carry the same config and module, target KServe's Gateway from its
    namespace, and fail open."""
    (wp,) = mesh.load(kserve.KSERVE_DIR / "wasmplugin.yaml")
    (te,) = mesh.load(kserve.KSERVE_DIR / "trafficextension" / "canary-selector.yaml")
    (eep,) = mesh.load(kserve.ENVOY_GATEWAY_DIR / "envoyextensionpolicy.yaml")
    for doc in (wp, te, eep):
        assert doc["metadata"] == {"name": "canary-selector", "namespace": "kserve"}
        assert kserve.target_refs(doc) == [
            {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "kserve-ingress-gateway"}
        ]
        assert kserve.plugin_config(doc) == kserve.plugin_config(wp)
    spec = dict(wp["spec"])
    for key in ("targetRefs", "phase", "priority"):
        assert te["spec"][key] == spec.pop(key), key
    assert te["spec"]["wasm"] == spec
    (wasm,) = eep["spec"]["wasm"]
    assert (wasm["code"]["image"]["url"], wasm["code"]["pullPolicy"], wasm["failOpen"]) == (
        wp["spec"]["url"],
        "IfNotPresent",
        True,
    )
    assert (wasm["name"], wasm["rootID"]) == (wp["spec"]["pluginName"],) * 2
    assert (wp["spec"]["failStrategy"], wp["spec"]["phase"], wp["spec"]["priority"]) == ("FAIL_OPEN", "AUTHZ", 10)
    # A dark launch, KServe's trafficPercent 0: everyone on model-v1, testers on model-v2.
    config = kserve.plugin_config(wp)
    assert [(v["name"], v["weight"]) for v in config["versions"]] == [("model-v1", 100), ("model-v2", 0)]
    assert config["rules"] == [
        {"name": "testers", "match": {"headers": {"x-canary-tester": {"exact": "true"}}}, "version": "model-v2"}
    ]


def test_the_inference_service_is_the_seeds_in_standard_mode():
    (isvc,) = mesh.load(kserve.KSERVE_DIR / "inferenceservice.yaml")
    assert isvc["metadata"]["annotations"] == {"serving.kserve.io/deploymentMode": "Standard"}
    assert kserve.predictors(isvc) == [
        ("model-v1", "sklearn-iris-model-v1-predictor", 100),
        ("model-v2", "sklearn-iris-model-v2-predictor", 0),
    ]
    models = [isvc["spec"]["predictor"]["model"], isvc["spec"]["canary"][0]["predictor"]["model"]]
    assert [m["storageUri"] for m in models] == [
        "gs://kfserving-examples/models/sklearn/1.0/model",
        "gs://kfserving-examples/models/sklearn/1.0/model-2",
    ]
