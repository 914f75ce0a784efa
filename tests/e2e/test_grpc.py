"""End to end over gRPC: a real gRPC client (grpcio) calling KServe V2 /
Triton's `inference.GRPCInferenceService` through the real Envoy and the
filter, to real gRPC model servers (envoy/grpc_models.py). Routing and
stickiness work as over HTTP; the guard judges a call by its grpc-status
(in the trailers, or in the headers of a trailers-only reply such as
Envoy's own when the upstream is down), not by the HTTP status, which is
200 either way."""

from __future__ import annotations

import json
import re
import time

import grpc
import pytest
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from harness import expected_version
import grpc_models  # noqa: E402  (envoy/grpc_models.py, on the path through harness)

USERS = [f"user-{i}" for i in range(200)]


def trips(envoy) -> float:
    return envoy.metric("canary_selector_guard_trips_total")


def failures(envoy, version: str, failure: str) -> float:
    """The canary's failed responses of one kind, once the tick has flushed them."""
    time.sleep(1.3)
    return envoy.metric("canary_selector_failures_total", version=version, failure=failure)


def guarded(demo_config: dict, **guard) -> dict:
    config = json.loads(json.dumps(demo_config))
    config["versions"] = [{"name": "model-v1", "weight": 50}, {"name": "model-v2", "weight": 50}]
    config["guard"] = {"windowSeconds": 10, "minRequests": 20, "maxErrorRate": 0.2, **guard}
    return config


class Models:
    """The two gRPC model servers on the ports the harness gave their
    clusters; `down` stops one (Envoy then answers UNAVAILABLE itself)."""

    def __init__(self, envoy, v1: str = "ok", v2: str = "ok"):
        self.envoy = envoy
        self.servers = {}
        for version, mode in (("model-v1", v1), ("model-v2", v2)):
            self.servers[version] = grpc_models.serve(version, envoy.ports[f"{version}-grpc"], mode)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{envoy.ports['ingress']}")
        self.stub = service_pb2_grpc.GRPCInferenceServiceStub(self.channel)

    def set_mode(self, version: str, mode: str) -> None:
        self.servers[version][1].mode = mode

    def down(self, version: str) -> None:
        self.servers[version][0].stop(0).wait()

    def close(self) -> None:
        self.channel.close()
        for server, _ in self.servers.values():
            server.stop(0)

    def infer(self, **metadata) -> tuple[grpc.StatusCode, dict, pb.ModelInferResponse | None]:
        """One ModelInfer call: its status code, its initial metadata, its
        response (None when it failed)."""
        try:
            response, call = self.stub.ModelInfer.with_call(
                grpc_models.infer_request(), metadata=list(metadata.items()), timeout=5
            )
            return grpc.StatusCode.OK, dict(call.initial_metadata()), response
        except grpc.RpcError as e:
            return e.code(), dict(e.initial_metadata() or ()), None

    def stream(self, requests: int = 1, **metadata):
        """A ModelStreamInfer call with `requests` requests: the server answers
        each with several responses, then ends the call."""
        return self.stub.ModelStreamInfer(
            iter([grpc_models.infer_request()] * requests), metadata=list(metadata.items()), timeout=10
        )


@pytest.fixture
def grpc_envoy(start_envoy):
    """Starts Envoy with `config`, and the gRPC model servers behind it."""
    started: list[Models] = []

    def start(config: dict, v1: str = "ok", v2: str = "ok", **kwargs):
        envoy = start_envoy(config, **kwargs)
        models = Models(envoy, v1, v2)
        started.append(models)
        return envoy, models

    yield start
    for m in started:
        m.close()


def test_grpc_calls_split_and_stick_by_x_user_id_metadata(grpc_envoy, demo_config):
    config = guarded(demo_config)
    envoy, models = grpc_envoy(config)
    served = {}
    for user in USERS:
        code, headers, response = models.infer(**{"x-user-id": user})
        assert code == grpc.StatusCode.OK, user
        assert response.model_version == headers["x-served-by"] == expected_version(config, user), user
        assert headers["x-upstream-saw-version"] == response.model_version
        served[user] = response.model_version
    on_v2 = sum(v == "model-v2" for v in served.values())
    assert 60 <= on_v2 <= 140, f"{on_v2} of {len(USERS)} on model-v2 at 50/50"
    # Sticky: the same users again, on the same versions.
    for user in USERS[:50]:
        assert models.infer(**{"x-user-id": user})[2].model_version == served[user], user
    # The testers' rule, on gRPC metadata like any header.
    for user in USERS[:20]:
        response = models.infer(**{"x-user-id": user, "x-canary-tester": "true"})[2]
        assert response.model_version == "model-v2", user


def wait_for_trip(envoy, models, seconds: float = 15) -> float:
    """Sends canary traffic until the guard trips; returns how long it took."""
    started = time.monotonic()
    while trips(envoy) == 0:
        assert time.monotonic() - started < seconds, f"the guard did not trip in {seconds}s:\n{envoy.logs()[-2000:]}"
        for user in USERS[:60]:
            models.infer(**{"x-user-id": user})
    return time.monotonic() - started


def canary_users(config: dict) -> list[str]:
    return [u for u in USERS if expected_version(config, u) == "model-v2"]


def test_a_canary_failing_with_internal_trips_the_guard_while_testers_still_reach_it(grpc_envoy, demo_config):
    config = guarded(demo_config)
    envoy, models = grpc_envoy(config, v2="INTERNAL")
    users = canary_users(config)
    codes = {models.infer(**{"x-user-id": u})[0] for u in users}
    assert codes == {grpc.StatusCode.INTERNAL}, "the canary fails every call before the trip"
    assert wait_for_trip(envoy, models) < 12
    time.sleep(1.5)  # every worker learns of the trip on its next tick
    for user in users:
        code, headers, response = models.infer(**{"x-user-id": user})
        assert (code, response.model_version) == (grpc.StatusCode.OK, "model-v1"), user
    # Testers still reach the failing canary, to debug it.
    code, headers, _ = models.infer(**{"x-user-id": users[0], "x-canary-tester": "true"})
    assert (code, headers["x-served-by"]) == (grpc.StatusCode.INTERNAL, "model-v2")
    logs = envoy.wait_for_log("guard tripped")
    (line,) = [l for l in logs.splitlines() if "guard tripped" in l]
    assert re.search(r"model-v2 error rate above maxErrorRate .* responses failed \(rate [0-9.]+; INTERNAL\)", line), line
    assert trips(envoy) == 1
    assert failures(envoy, "model-v2", "INTERNAL") >= 20
    assert envoy.metric("canary_selector_failures_total", version="model-v1") == 0


def test_a_canary_that_is_down_trips_the_guard(grpc_envoy, demo_config):
    config = guarded(demo_config)
    envoy, models = grpc_envoy(config)
    models.down("model-v2")
    users = canary_users(config)
    # Envoy answers for the server that is not there: UNAVAILABLE, in a
    # trailers-only reply (HTTP 200, grpc-status 14 in the headers).
    assert {models.infer(**{"x-user-id": u})[0] for u in users} == {grpc.StatusCode.UNAVAILABLE}
    wait_for_trip(envoy, models)
    time.sleep(1.5)
    assert {models.infer(**{"x-user-id": u})[2].model_version for u in users} == {"model-v1"}
    assert "; UNAVAILABLE), 0 slow" in envoy.wait_for_log("guard tripped")
    assert failures(envoy, "model-v2", "UNAVAILABLE") >= 20


def serve_traffic(models, seconds: float) -> int:
    deadline, calls = time.monotonic() + seconds, 0
    while time.monotonic() < deadline:
        for user in USERS:
            models.infer(**{"x-user-id": user})
            calls += 1
    return calls


def test_a_canary_failing_with_a_client_error_does_not_trip(grpc_envoy, demo_config):
    """NOT_FOUND is the caller's mistake, not the server's: not in the
    default grpcErrorCodes."""
    config = guarded(demo_config)
    envoy, models = grpc_envoy(config, v2="NOT_FOUND")
    assert {models.infer(**{"x-user-id": u})[0] for u in canary_users(config)} == {grpc.StatusCode.NOT_FOUND}
    assert serve_traffic(models, 4) > 200
    time.sleep(1.5)
    assert trips(envoy) == 0
    assert "guard tripped" not in envoy.logs()
    # Listed in grpcErrorCodes, the same failures trip it.
    assert envoy.push(guarded(demo_config, grpcErrorCodes=["NOT_FOUND"]))
    wait_for_trip(envoy, models)
    assert "; NOT_FOUND), 0 slow" in envoy.wait_for_log("guard tripped")


def test_a_healthy_grpc_canary_never_trips(grpc_envoy, demo_config):
    config = guarded(demo_config, maxErrorRate=0.0)
    envoy, models = grpc_envoy(config)
    assert serve_traffic(models, 5) > 300
    time.sleep(1.5)
    assert trips(envoy) == 0
    assert envoy.metric("canary_selector_failures_total") == 0
    assert envoy.metric("canary_selector_responses_total", version="model-v2") > 100


def test_streaming_calls_are_counted_once_at_their_end(grpc_envoy, demo_config):
    config = guarded(demo_config, minRequests=1000)
    envoy, models = grpc_envoy(config, v2="INTERNAL")
    user = canary_users(config)[0]
    # A stream that has sent its responses but not yet ended is not counted...
    gate = {"open": True}

    def held_open():
        yield grpc_models.infer_request()
        while gate["open"]:
            time.sleep(0.05)

    call = models.stub.ModelStreamInfer(held_open(), metadata=[("x-user-id", user)], timeout=10)
    responses = [next(call) for _ in range(grpc_models.STREAM_RESPONSES)]
    assert {r.infer_response.model_version for r in responses} == {"model-v2"}
    assert failures(envoy, "model-v2", "INTERNAL") == 0, "counted before the stream ended"
    # ...it is, once, when it ends with INTERNAL in its trailers.
    gate["open"] = False
    with pytest.raises(grpc.RpcError) as ended:
        list(call)
    assert ended.value.code() == grpc.StatusCode.INTERNAL
    assert failures(envoy, "model-v2", "INTERNAL") == 1
    # Five more streams of two requests each (six responses): five more.
    for _ in range(5):
        with pytest.raises(grpc.RpcError):
            list(models.stream(requests=2, **{"x-user-id": user}))
    assert failures(envoy, "model-v2", "INTERNAL") == 6
