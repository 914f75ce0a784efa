"""Two InferenceServices behind KServe's one Gateway (sklearn-iris, and
xgboost-iris with REST and gRPC), one plugin resource holding a rollout for
each (istio/kserve/many-models/, envoy/gateway/many-models/), in the real
Envoy shaped like each gateway: each model split, stuck and pinned by its
own rollout; a model with no rollout untouched; gRPC calls reaching our
routes past KServe's gRPC rule; a failing model tripping only its own
canary, and a push of the other model keeping that trip."""

import copy
import time
from pathlib import Path

import grpc
import pytest
from tritonclient.grpc import service_pb2_grpc

import kserve
import mesh
from harness import expected_version, hooks
from kserve import TESTER, USERS, push, route_users

import grpc_models  # noqa: E402  (envoy/grpc_models.py, on the path through harness)

SKLEARN, XGBOOST = "sklearn-iris", "xgboost-iris"
SKLEARN_HOSTS = ["sklearn-iris-kserve-test.example.com", "sklearn-iris-predictor-kserve-test.example.com"]
XGBOOST_HOSTS = ["xgboost-iris-kserve-test.example.com", "xgboost-iris-predictor-kserve-test.example.com"]
# A third model on the Gateway that no rollout names.
OTHER = "lightgbm-iris"
OTHER_HOST = "lightgbm-iris-kserve-test.example.com"


def rollout(config: dict, name: str) -> dict:
    (found,) = [r for r in config["rollouts"] if r["name"] == name]
    return found


def ramped(config: dict, name: str, v2: float) -> dict:
    """The config with one rollout's canary at v2 percent, the rest as it was."""
    config = copy.deepcopy(config)
    rollout(config, name)["versions"] = [
        {"name": "model-v1", "weight": 100 - v2},
        {"name": "model-v2", "weight": v2},
    ]
    return config


def canary_share(served: dict[str, str]) -> int:
    return sum(v == "model-v2" for v in served.values())


@pytest.fixture
def many_models(gateway_class):
    """The cluster after the many-models deploy step on that gateway."""
    return kserve.shipped_many_models(gateway_class)


@pytest.fixture
def start_with_hook(tmp_path: Path):
    """Start the gateway's Envoy with one more bootstrap hook (after the
    gateway's own shape); stopped after the test."""
    started = []

    def start(cluster, hook):
        envoy = kserve.gateway_proxy(cluster, tmp_path / f"gateway{len(started)}")
        envoy.bootstrap_hook = hooks(*[h for h in (envoy.bootstrap_hook, hook) if h])
        started.append(envoy)
        return envoy.start()

    yield start
    for envoy in started:
        envoy.stop()


def test_one_plugin_splits_sticks_and_pins_each_model_by_its_own_rollout(start_gateway, many_models):
    shipped = kserve.plugin_config(kserve.plugin(many_models))
    assert [r["name"] for r in shipped["rollouts"]] == [SKLEARN, XGBOOST]
    envoy = start_gateway(many_models)
    # As applied: both dark launches. Everyone on model-v1, testers on model-v2.
    for name, hosts in ((SKLEARN, SKLEARN_HOSTS), (XGBOOST, XGBOOST_HOSTS)):
        for hostname in hosts:
            assert set(route_users(envoy, rollout(shipped, name), USERS[:50], hostname=hostname).values()) == {
                "model-v1"
            }
            assert set(route_users(envoy, rollout(shipped, name), USERS[:20], TESTER, hostname=hostname).values()) == {
                "model-v2"
            }

    # sklearn-iris at 10%, xgboost-iris at 50%: each by its own rollout.
    config = ramped(ramped(shipped, SKLEARN, 10), XGBOOST, 50)
    push(envoy, config)
    served = {}
    for name, hosts, share in ((SKLEARN, SKLEARN_HOSTS, 10), (XGBOOST, XGBOOST_HOSTS, 50)):
        for hostname in hosts:
            served[hostname] = route_users(envoy, rollout(config, name), hostname=hostname)
            mesh.assert_share(canary_share(served[hostname]), len(USERS), share)
        # Sticky: a user's second request lands where the first did.
        assert route_users(envoy, rollout(config, name), USERS[:100], hostname=hosts[1]) == {
            u: served[hosts[0]][u] for u in USERS[:100]
        }
    # Each rollout hashes with its own salt: at 50%, xgboost-iris' canary
    # users are not sklearn-iris' 10% plus some.
    sklearn_canary = {u for u, v in served[SKLEARN_HOSTS[0]].items() if v == "model-v2"}
    xgboost_canary = {u for u, v in served[XGBOOST_HOSTS[0]].items() if v == "model-v2"}
    assert not sklearn_canary <= xgboost_canary


def test_a_model_no_rollout_names_is_untouched(start_gateway, many_models):
    """A third InferenceService on the Gateway, with KServe's routes only:
    its requests keep what the client sent (a routing header too), get no
    response header, and KServe's rule sends them to its stable predictor."""
    isvc = copy.deepcopy(many_models.get("InferenceService", "kserve-test", SKLEARN))
    isvc["metadata"]["name"] = OTHER
    isvc["spec"]["canary"][0]["trafficPercent"] = 0
    many_models.objects[("InferenceService", "kserve-test", OTHER)] = isvc
    kserve.reconcile(many_models)
    config = ramped(ramped(kserve.plugin_config(kserve.plugin(many_models)), SKLEARN, 0.0001), XGBOOST, 100)
    envoy = start_gateway(kserve.configured(many_models, config))
    for user in USERS[:50]:
        r = envoy.request({"host": OTHER_HOST, "x-user-id": user, **TESTER})
        assert (r.status, r.served_by, r.header("x-upstream-saw-version"), r.header("x-canary-version")) == (
            200,
            "model-v1",
            None,
            None,
        ), user
        assert r.header("set-cookie") is None
        # The routing header as the client sent it, not the filter's pick.
        r = envoy.request({"host": OTHER_HOST, "x-user-id": user, "x-canary-version": "model-v7"})
        assert (r.header("x-upstream-saw-version"), r.header("x-canary-version")) == ("model-v7", None)
        # The same user on a model with a rollout is decided.
        assert envoy.request({"host": XGBOOST_HOSTS[0], "x-user-id": user}).header("x-canary-version") == "model-v2"


# --- gRPC: KServe's gRPC rule and ours ----------------------------------------


class GrpcModels:
    """The gRPC model servers behind the gateway's model-v1-grpc and
    model-v2-grpc clusters, and a client calling through the gateway with
    a host name as its :authority."""

    def __init__(self, envoy, hostname: str):
        self.servers = [grpc_models.serve(v, envoy.ports[f"{v}-grpc"])[0] for v in ("model-v1", "model-v2")]
        self.channel = grpc.insecure_channel(
            f"127.0.0.1:{envoy.ports['ingress']}", options=[("grpc.default_authority", hostname)]
        )
        self.stub = service_pb2_grpc.GRPCInferenceServiceStub(self.channel)

    def infer(self, **metadata) -> dict:
        """One ModelInfer call; its initial metadata (who served it, the
        routing header it saw)."""
        _, call = self.stub.ModelInfer.with_call(
            grpc_models.infer_request(), metadata=list(metadata.items()), timeout=5
        )
        return dict(call.initial_metadata())

    def close(self) -> None:
        self.channel.close()
        for server in self.servers:
            server.stop(0)


@pytest.fixture
def grpc_models_for():
    opened = []

    def open_(envoy, hostname):
        opened.append(GrpcModels(envoy, hostname))
        return opened[-1]

    yield open_
    for m in opened:
        m.close()


def test_kserves_grpc_rule_comes_first_in_its_routes_for_a_rest_and_grpc_predictor(many_models):
    (rest, grpc_rule) = [
        kserve.resolve(many_models, kserve.ISTIO, XGBOOST_HOSTS[0], headers, path)
        for headers, path in (
            ({}, "/v2/models/xgboost-iris/infer"),
            ({"content-type": "application/grpc"}, "/inference.GRPCInferenceService/ModelInfer"),
        )
    ]
    assert kserve.is_kserve_owned(rest.route) and kserve.is_kserve_owned(grpc_rule.route)
    assert grpc_rule.match["path"]["value"] == kserve.GRPC_PATH
    assert kserve.weighted_clusters(grpc_rule) == {"kserve-test/xgboost-iris-model-v1-predictor:8081": 100}
    assert kserve.weighted_clusters(rest) == {"kserve-test/xgboost-iris-model-v1-predictor:80": 100}


def test_grpc_calls_follow_the_rollout_past_kserves_grpc_rule(start_gateway, many_models, gateway_class, grpc_models_for):
    config = ramped(kserve.plugin_config(kserve.plugin(many_models)), XGBOOST, 50)
    envoy = start_gateway(kserve.configured(many_models, config))
    models = grpc_models_for(envoy, XGBOOST_HOSTS[1])
    xgboost = rollout(config, XGBOOST)
    served = []
    for user in USERS[:200]:
        md = models.infer(**{"x-user-id": user})
        want = expected_version(xgboost, user)
        assert (md["x-served-by"], md["x-upstream-saw-version"], md.get("x-canary-version")) == (want,) * 3, user
        served.append(md["x-served-by"])
    mesh.assert_share(served.count("model-v2"), len(served), 50)
    assert {models.infer(**{"x-user-id": u, **TESTER})["x-served-by"] for u in USERS[:20]} == {"model-v2"}


def test_without_our_grpc_rules_kserves_grpc_rule_takes_every_grpc_call(
    start_gateway, many_models, gateway_class, grpc_models_for
):
    """Why our HTTPRoute repeats KServe's gRPC match: with our ^/.*$ rules
    alone, both gateways rank KServe's longer path regex first, and testers'
    calls land on model-v1 though the filter chose model-v2."""
    ours = many_models.get("HTTPRoute", "kserve-test", "xgboost-iris-canary-selector")
    ours["spec"]["rules"] = [r for r in ours["spec"]["rules"] if not r["name"].endswith("-grpc")]
    envoy = start_gateway(many_models)
    models = grpc_models_for(envoy, XGBOOST_HOSTS[0])
    md = models.infer(**{"x-user-id": "alice", **TESTER})
    assert (md["x-upstream-saw-version"], md["x-served-by"]) == ("model-v2", "model-v1")


# --- The guard: per model ----------------------------------------------------


def failing_model(isvc: str, version: str, percent: int):
    """A bootstrap hook: the demo server playing `version` answers 503 to
    `percent`% of the requests for InferenceService `isvc` (the
    KServe-Isvc-Name header the routes set), the other models' beside it
    stay healthy."""

    def hook(cfg: dict) -> None:
        (listener,) = [l for l in cfg["static_resources"]["listeners"] if l["name"] == version]
        hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["http_filters"].insert(
            0,
            {
                "name": "envoy.filters.http.fault",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
                    "abort": {"http_status": 503, "percentage": {"numerator": percent, "denominator": "HUNDRED"}},
                    "headers": [{"name": "kserve-isvc-name", "string_match": {"exact": isvc}}],
                },
            },
        )

    return hook


def guarded(config: dict) -> dict:
    config = copy.deepcopy(config)
    for r in config["rollouts"]:
        r["guard"] = {"windowSeconds": 10, "minRequests": 20, "maxErrorRate": 0.1}
        r["responseReasonHeader"] = "x-canary-reason"
    return config


def reasons(envoy, hostname: str, users) -> set[str]:
    return {envoy.request({"host": hostname, "x-user-id": u}).header("x-canary-reason") for u in users}


def test_a_failing_model_trips_only_its_canary_and_a_push_of_the_other_keeps_the_trip(
    start_with_hook, many_models, gateway_class
):
    config = guarded(ramped(ramped(kserve.plugin_config(kserve.plugin(many_models)), SKLEARN, 50), XGBOOST, 50))
    envoy = start_with_hook(kserve.configured(many_models, config), failing_model(XGBOOST, "model-v2", 40))
    xgboost_canary = [u for u in USERS if expected_version(rollout(config, XGBOOST), u) == "model-v2"]
    sklearn_canary = [u for u in USERS if expected_version(rollout(config, SKLEARN), u) == "model-v2"]
    started = time.monotonic()
    while reasons(envoy, XGBOOST_HOSTS[0], xgboost_canary[:10]) != {"guard"}:
        assert time.monotonic() - started < 20, "xgboost-iris' guard did not trip"
        for u in USERS[:60]:
            envoy.request({"host": XGBOOST_HOSTS[0], "x-user-id": u})
            envoy.request({"host": SKLEARN_HOSTS[0], "x-user-id": u})  # healthy, busy beside it
    time.sleep(1.5)  # every worker ticks
    for u in xgboost_canary[:40]:
        r = envoy.request({"host": XGBOOST_HOSTS[1], "x-user-id": u})
        assert (r.header("x-canary-version"), r.header("x-canary-reason"), r.served_by) == ("model-v1", "guard", "model-v1")
    for u in sklearn_canary[:40]:
        r = envoy.request({"host": SKLEARN_HOSTS[0], "x-user-id": u})
        assert (r.header("x-canary-version"), r.header("x-canary-reason"), r.served_by) == ("model-v2", "sticky", "model-v2")
    assert "guard tripped of rollout xgboost-iris" in envoy.logs()
    assert "guard tripped of rollout sklearn-iris" not in envoy.logs()

    # Ramp sklearn-iris back to 10%: xgboost-iris' rollout is unchanged, so
    # its trip holds (on Envoy Gateway, through a listener update).
    config = ramped(config, SKLEARN, 10)
    push(envoy, config)
    assert envoy.wait_for_log("rollout sklearn-iris accepted")
    time.sleep(1.5)
    assert reasons(envoy, XGBOOST_HOSTS[0], xgboost_canary[:40]) == {"guard"}
    served = route_users(envoy, rollout(config, SKLEARN), hostname=SKLEARN_HOSTS[0])
    mesh.assert_share(canary_share(served), len(USERS), 10)
    assert "guard reset of rollout xgboost-iris" not in envoy.logs()
