"""Two InferenceServices on KServe's one Gateway, one plugin holding a
rollout for each (istio/kserve/many-models/, envoy/gateway/many-models/),
on both gateway shapes: the wiring of both models' routes, KServe's gRPC
rule outranked by ours, and in the real Envoy each model's split,
stickiness, testers and gRPC calls following its own rollout, a request for
a third model losing the routing header a client sent and nothing else, and
a failing model tripping its own
canary alone, across a push of the other rollout."""

import copy
import time
from pathlib import Path

import grpc
import pytest
from tritonclient.grpc import service_pb2_grpc

import kserve
import mesh
from harness import hooks
import grpc_models  # noqa: E402  (envoy/grpc_models.py, on the path through harness)

SKLEARN, XGBOOST = "sklearn-iris", "xgboost-iris"
USERS = kserve.USERS[:200]
TESTER = kserve.TESTER
# A V2 gRPC call as a client sends it: KServe's gRPC rule matches its path
# and content-type.
GRPC_PATH = "/inference.GRPCInferenceService/ModelInfer"
GRPC_HEADERS = {"content-type": "application/grpc"}


@pytest.fixture
def many_models(gateway_class) -> mesh.Cluster:
    """The cluster after the many-models runbook's deploy step on that gateway."""
    return kserve.shipped_many_models(gateway_class)


@pytest.fixture
def start(tmp_path: Path):
    """Start the gateway's Envoy for a cluster (with one more bootstrap
    hook, if given) and the gRPC model servers behind it; all stopped
    after the test."""
    started = []

    def start(cluster, hook=None, **kwargs):
        envoy = kserve.gateway_proxy(cluster, tmp_path / f"gateway{len(started)}", **kwargs)
        if hook:
            envoy.bootstrap_hook = hooks(envoy.bootstrap_hook, hook) if envoy.bootstrap_hook else hook
        started.append(envoy)
        envoy.start()
        envoy.grpc_servers = [grpc_models.serve(v, envoy.ports[f"{v}-grpc"]) for v in ("model-v1", "model-v2")]
        return envoy

    yield start
    for envoy in started:
        for server, _ in getattr(envoy, "grpc_servers", []):
            server.stop(0)
        envoy.stop()


def rollout(config: dict, name: str) -> dict:
    (entry,) = [r for r in config["rollouts"] if r["name"] == name]
    return entry


def weighted(config: dict, **canary_weights: float) -> dict:
    """The config with each named rollout's canary (model-v2) at that weight."""
    config = copy.deepcopy(config)
    for name, weight in canary_weights.items():
        rollout(config, name)["versions"] = [
            {"name": "model-v1", "weight": 100 - weight},
            {"name": "model-v2", "weight": weight},
        ]
    return config


def shipped_config(cluster) -> dict:
    return copy.deepcopy(kserve.plugin_config(kserve.plugin(cluster)))


def hosts_of(cluster, name: str) -> list[str]:
    return kserve.isvc_hosts(cluster.get("InferenceService", "kserve-test", name))


def route_model(envoy, cluster, config: dict, name: str, users=USERS, extra=None) -> dict[str, str]:
    """One request per user on each of the model's host names: each lands
    where its own rollout decides (kserve.route_users checks the server,
    the header upstream and the response header); user -> version, the
    same on both host names."""
    (first, second) = hosts_of(cluster, name)
    entry = kserve.rollout_for(config, first)
    assert entry is rollout(config, name)
    served = kserve.route_users(envoy, entry, users, extra, hostname=first)
    assert kserve.route_users(envoy, entry, users, extra, hostname=second) == served
    return served


def canaries(served: dict[str, str]) -> set[str]:
    return {u for u, v in served.items() if v == "model-v2"}


# --- The wiring, as each gateway orders the routes ---------------------------


def test_kserve_writes_a_grpc_rule_first_for_the_model_that_serves_grpc(many_models):
    """xgboost-iris lists a REST and a gRPC port: its Services have both,
    and KServe's HTTPRoutes put the gRPC rule first (to port 8081), the REST
    rule second (to port 80); sklearn-iris keeps its one rule. All of it
    passes the schemas."""
    for doc in many_models.objects.values():
        assert mesh.validate(doc) == [], (doc["kind"], doc["metadata"]["name"])
    service = many_models.get("Service", "kserve-test", "xgboost-iris-model-v2-predictor")
    assert [(p["name"], p["port"], p.get("appProtocol")) for p in service["spec"]["ports"]] == [
        ("http", 80, None),
        ("grpc-port", 8081, "kubernetes.io/h2c"),
    ]
    route = many_models.get("HTTPRoute", "kserve-test", "xgboost-iris")
    assert [
        (r["matches"][0]["path"]["value"], r["matches"][0].get("headers"), {b["port"] for b in r["backendRefs"]})
        for r in route["spec"]["rules"]
    ] == [
        (kserve.GRPC_PATH, [kserve.GRPC_CONTENT_TYPE], {8081}),
        (kserve.FALLBACK_PATH, None, {80}),
    ]
    assert len(many_models.get("HTTPRoute", "kserve-test", "sklearn-iris")["spec"]["rules"]) == 1


def landing(cluster, gateway_class, hostname, headers, path="/v2/models/m/infer") -> tuple[str, int] | None:
    """(Service, port) a request lands on, None for a 404."""
    e = kserve.resolve(cluster, gateway_class, hostname, headers, path)
    if e is None:
        return None
    (backend,) = [b for b in e.rule["backendRefs"] if b.get("weight", 1) > 0]
    return backend["name"], backend["port"]


@pytest.mark.parametrize("name", [SKLEARN, XGBOOST])
def test_each_models_versions_reach_its_own_services_over_rest_and_grpc(many_models, gateway_class, name):
    grpc_port = 8081 if name == XGBOOST else 80  # sklearn-iris serves REST alone
    for hostname in hosts_of(many_models, name):
        for version in ("model-v1", "model-v2"):
            service = f"{name}-{version}-predictor"
            header = {"x-canary-version": version}
            assert landing(many_models, gateway_class, hostname, header) == (service, 80)
            assert landing(many_models, gateway_class, hostname, {**header, **GRPC_HEADERS}, GRPC_PATH) == (
                service,
                grpc_port,
            )
        # What the filter never touched: KServe's rules, all weight on model-v1.
        assert landing(many_models, gateway_class, hostname, {}) == (f"{name}-model-v1-predictor", 80)
        assert landing(many_models, gateway_class, hostname, GRPC_HEADERS, GRPC_PATH) == (
            f"{name}-model-v1-predictor",
            grpc_port,
        )


def test_without_our_grpc_rules_kserves_grpc_rule_takes_every_grpc_call(many_models, gateway_class):
    """The gap: KServe's gRPC rule has the longer path regex, which both
    gateways rank above our one-header ^/.*$ rules, so a gRPC call for
    model-v2 (a tester's, say) lands on KServe's split, model-v1. Our gRPC
    rules (the same regex and content-type match, plus the routing header)
    are what take it."""
    ours = many_models.get("HTTPRoute", "kserve-test", "xgboost-iris-canary-selector")
    ours["spec"]["rules"] = [r for r in ours["spec"]["rules"] if not r["name"].endswith("-grpc")]
    hostname = hosts_of(many_models, XGBOOST)[0]
    call = {"x-canary-version": "model-v2", **GRPC_HEADERS}
    assert landing(many_models, gateway_class, hostname, call, GRPC_PATH) == ("xgboost-iris-model-v1-predictor", 8081)
    # REST still reaches model-v2 by our rule.
    assert landing(many_models, gateway_class, hostname, {"x-canary-version": "model-v2"}) == (
        "xgboost-iris-model-v2-predictor",
        80,
    )


def test_with_preserve_route_order_on_envoy_gateway_the_route_created_first_takes_the_request():
    """EnvoyProxy spec.preserveRouteOrder: true skips the ranking. Our
    HTTPRoute, applied with the InferenceService, comes before the routes
    KServe writes once the predictor is ready, and wins; written after
    KServe's (re-created, say), it never sees a request: KServe's ^/.*$
    rule takes them all, REST and gRPC."""
    many_models = kserve.shipped_many_models(kserve.ENVOY_GATEWAY)
    hostname = hosts_of(many_models, XGBOOST)[0]
    rest = ({"x-canary-version": "model-v2"}, "/v2/models/m/infer")
    grpc_call = ({"x-canary-version": "model-v2", **GRPC_HEADERS}, GRPC_PATH)

    def lands(headers, path):
        e = kserve.resolve(many_models, kserve.ENVOY_GATEWAY, hostname, headers, path, preserve_route_order=True)
        return sorted(kserve.backends(e))

    assert lands(*rest) == lands(*grpc_call) == ["kserve-test/xgboost-iris-model-v2-predictor"]
    key = ("HTTPRoute", "kserve-test", "xgboost-iris-canary-selector")
    many_models.objects[key] = many_models.objects.pop(key)  # now the newest
    assert lands(*rest) == lands(*grpc_call) == ["kserve-test/xgboost-iris-model-v1-predictor"]


def test_the_plugin_resources_hold_one_rollout_per_model_keyed_by_kserves_host_names():
    (wp,) = mesh.load(kserve.MANY_MODELS_DIR / "wasmplugin.yaml")
    (eep,) = mesh.load(kserve.ENVOY_GATEWAY_MANY_MODELS_DIR / "envoyextensionpolicy.yaml")
    (single_wp,) = mesh.load(kserve.KSERVE_DIR / "wasmplugin.yaml")
    (single_eep,) = mesh.load(kserve.ENVOY_GATEWAY_DIR / "envoyextensionpolicy.yaml")
    # The same resources as the single model's (applying replaces them),
    # the same config on both gateways.
    assert wp["metadata"] == single_wp["metadata"] and eep["metadata"] == single_eep["metadata"]
    assert {k: v for k, v in wp["spec"].items() if k != "pluginConfig"} == {
        k: v for k, v in single_wp["spec"].items() if k != "pluginConfig"
    }
    assert kserve.plugin_config(eep) == kserve.plugin_config(wp)
    config = kserve.plugin_config(wp)
    for entry, isvc_file in zip(config["rollouts"], (kserve.KSERVE_DIR, kserve.MANY_MODELS_DIR)):
        (isvc,) = mesh.load(isvc_file / "inferenceservice.yaml")
        assert entry["name"] == isvc["metadata"]["name"]
        assert entry["hosts"] == kserve.isvc_hosts(isvc)
        assert [v["name"] for v in entry["versions"]] == [p for p, *_ in kserve.predictors(isvc)]
        assert entry["routingHeader"] == "x-canary-version"
    # sklearn-iris's rollout is the single model's config, scoped: moving
    # to this file moves none of its users.
    single = kserve.plugin_config(single_wp)
    assert {k: v for k, v in rollout(config, SKLEARN).items() if k not in ("name", "hosts", "guard")} == {
        "routingHeader": "x-canary-version",
        **single,
    }


# --- In the real Envoy --------------------------------------------------------


def test_one_filter_splits_each_model_by_its_own_rollout_and_a_third_model_cannot_pick_a_version(
    start, many_models, gateway_class
):
    config = weighted(shipped_config(many_models), **{SKLEARN: 10, XGBOOST: 50})
    # A third model behind the Gateway, no rollout of ours: KServe's routes alone.
    other = copy.deepcopy(many_models.get("InferenceService", "kserve-test", SKLEARN))
    other["metadata"]["name"] = "other-iris"
    del other["spec"]["canary"]
    many_models.objects[("InferenceService", "kserve-test", "other-iris")] = other
    kserve.reconcile(many_models)
    envoy = start(kserve.configured(many_models, config))

    sklearn = route_model(envoy, many_models, config, SKLEARN)
    xgboost = route_model(envoy, many_models, config, XGBOOST)
    mesh.assert_share(len(canaries(sklearn)), len(USERS), 10)
    mesh.assert_share(len(canaries(xgboost)), len(USERS), 50)
    # Its own salt: xgboost-iris's canary users are a draw of their own.
    assert not canaries(sklearn) <= canaries(xgboost)
    for name in (SKLEARN, XGBOOST):
        assert set(route_model(envoy, many_models, config, name, USERS[:30], TESTER).values()) == {"model-v2"}

    # The third model: its requests reach it without a routing header (one
    # a client sent is removed: no rollout of ours lets it pick), nothing
    # added.
    for sent in ({}, {"x-canary-version": "model-v2"}):
        for user in USERS[:30]:
            r = envoy.request({"host": "other-iris-kserve-test.example.com", "x-user-id": user, **TESTER, **sent})
            assert (r.status, r.served_by, r.header("x-upstream-saw-version"), r.header("x-canary-version")) == (
                200,
                "model-v1",
                None,
                None,
            ), sent
    # A host behind no route at all: 404, untouched too.
    r = envoy.request({"host": "nobody-kserve-test.example.com", "x-user-id": "u"})
    assert (r.status, r.header("x-canary-version")) == (404, None)


def test_ramping_one_model_moves_its_users_forward_and_no_user_of_the_other(start, many_models):
    config = shipped_config(many_models)
    envoy = start(many_models)
    before = {name: route_model(envoy, many_models, config, name) for name in (SKLEARN, XGBOOST)}
    assert set(before[SKLEARN].values()) == set(before[XGBOOST].values()) == {"model-v1"}
    steps = []
    for weight in (10, 50):
        config = weighted(config, **{SKLEARN: weight})
        kserve.push(envoy, config)
        steps.append(route_model(envoy, many_models, config, SKLEARN))
        assert route_model(envoy, many_models, config, XGBOOST) == before[XGBOOST]
    assert canaries(steps[0]) <= canaries(steps[1]), "the ramp moves users forward only"
    # Roll sklearn-iris back alone, while xgboost-iris ramps.
    config = weighted(config, **{SKLEARN: 0, XGBOOST: 50})
    kserve.push(envoy, config)
    assert set(route_model(envoy, many_models, config, SKLEARN).values()) == {"model-v1"}
    mesh.assert_share(len(canaries(route_model(envoy, many_models, config, XGBOOST))), len(USERS), 50)


def grpc_call(envoy, hostname: str, **metadata) -> dict:
    """One V2 ModelInfer call for `hostname` through the gateway; its
    initial metadata (the server's name, the routing header it saw, the
    filter's response header)."""
    channel = grpc.insecure_channel(
        f"127.0.0.1:{envoy.ports['ingress']}", options=[("grpc.default_authority", hostname)]
    )
    try:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        response, call = stub.ModelInfer.with_call(
            grpc_models.infer_request(), metadata=list(metadata.items()), timeout=5
        )
        seen = dict(call.initial_metadata())
        assert response.outputs[0].contents.int64_contents == [grpc_models.PREDICTION[seen["x-served-by"]]]
        return seen
    finally:
        channel.close()


def test_grpc_calls_follow_the_rollout_through_our_grpc_rules(start, many_models):
    """Over both gateway shapes: a V2 gRPC call for xgboost-iris reaches
    the gRPC server of the version its rollout decides, testers' calls
    model-v2's, by our gRPC rules (without them, KServe's would take every
    call to model-v1: test_without_our_grpc_rules_...)."""
    config = weighted(shipped_config(many_models), **{XGBOOST: 50})
    envoy = start(kserve.configured(many_models, config))
    entry = rollout(config, XGBOOST)
    served = {}
    for hostname in hosts_of(many_models, XGBOOST):
        for user in USERS[:60]:
            seen = grpc_call(envoy, hostname, **{"x-user-id": user})
            want = mesh.expected(entry, {"x-user-id": user})
            assert (seen["x-served-by"], seen["x-upstream-saw-version"], seen["x-canary-version"]) == (want,) * 3
            served[user] = want
        seen = grpc_call(envoy, hostname, **{"x-user-id": "alice", **TESTER})
        assert (seen["x-served-by"], seen["x-canary-version"]) == ("model-v2", "model-v2")
    assert set(served.values()) == {"model-v1", "model-v2"}


def failing_model(isvc: str, version: str):
    """A bootstrap hook: the demo server of `version` answers 503 to every
    request KServe's or our route sends it for InferenceService `isvc` (the
    routes set KServe-Isvc-Name), and serves the other model's as before."""

    def hook(cfg: dict) -> None:
        (listener,) = [l for l in cfg["static_resources"]["listeners"] if l["name"] == version]
        hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["http_filters"].insert(
            0,
            {
                "name": "envoy.filters.http.fault",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
                    "abort": {"http_status": 503, "percentage": {"numerator": 100, "denominator": "HUNDRED"}},
                    "headers": [{"name": "kserve-isvc-name", "string_match": {"exact": isvc}}],
                },
            },
        )

    return hook


def test_a_failing_model_trips_its_own_canary_alone_and_a_push_of_the_other_keeps_the_trip(
    start, many_models, gateway_class
):
    config = weighted(shipped_config(many_models), **{SKLEARN: 50, XGBOOST: 50})
    for entry in config["rollouts"]:
        entry["guard"] = {"windowSeconds": 10, "minRequests": 20, "maxErrorRate": 0.2}
        entry["responseReasonHeader"] = "x-canary-reason"
    envoy = start(kserve.configured(many_models, config), hook=failing_model(XGBOOST, "model-v2"))
    hosts = {name: hosts_of(many_models, name)[0] for name in (SKLEARN, XGBOOST)}
    canary_users = {
        name: [u for u in USERS if mesh.expected(rollout(config, name), {"x-user-id": u}) == "model-v2"][:40]
        for name in hosts
    }

    def answers(name: str) -> set[tuple[int, str, str]]:
        out = set()
        for u in canary_users[name]:
            r = envoy.request({"host": hosts[name], "x-user-id": u})
            out.add((r.status, r.header("x-canary-version"), r.header("x-canary-reason")))
        return out

    started = time.monotonic()
    while "guard tripped of rollout xgboost-iris" not in envoy.logs():
        assert time.monotonic() - started < 20, "xgboost-iris's guard did not trip"
        answers(SKLEARN), answers(XGBOOST)
    time.sleep(1.5)  # every worker ticks once
    # xgboost-iris's canary users are back on its stable version;
    # sklearn-iris's, on the same model-v2 server, are where they were.
    assert answers(XGBOOST) == {(200, "model-v1", "guard")}
    assert answers(SKLEARN) == {(200, "model-v2", "sticky")}
    assert "guard tripped of rollout sklearn-iris" not in envoy.logs()

    # A push that changes sklearn-iris alone leaves xgboost-iris's trip.
    changed = weighted(config, **{SKLEARN: 60})
    kserve.push(envoy, changed)
    assert answers(XGBOOST) == {(200, "model-v1", "guard")}
    time.sleep(1.5)
    assert answers(XGBOOST) == {(200, "model-v1", "guard")}
    assert answers(SKLEARN) == {(200, "model-v2", "sticky")}
    assert "guard reset of rollout xgboost-iris" not in envoy.logs()
    # Testers still reach the tripped canary (and see it fail).
    r = envoy.request({"host": hosts[XGBOOST], "x-user-id": "alice", **TESTER})
    assert (r.status, r.header("x-canary-version"), r.header("x-canary-reason")) == (503, "model-v2", "rule")
