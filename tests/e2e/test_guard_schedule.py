"""End to end: the rollout steering itself in the data plane. A failing canary
trips the guard and sends users back to stable (testers still reach it); a
healthy one never trips; a schedule moves the split at the right times."""

import json
import re
import time
from datetime import datetime, timedelta, timezone

from harness import expected_version, failing

USERS = [f"user-{i}" for i in range(300)]


def guarded(demo_config: dict, **guard) -> dict:
    config = json.loads(json.dumps(demo_config))
    config["versions"] = [{"name": "model-v1", "weight": 50}, {"name": "model-v2", "weight": 50}]
    config["responseReasonHeader"] = "x-canary-reason"
    config["guard"] = {"windowSeconds": 10, "minRequests": 20, **guard}
    return config


def decided(r) -> tuple[str, str]:
    """(version the filter chose, reason) as the response echoes them; the
    version is echoed even when the model server failed the request."""
    return r.header("x-canary-version"), r.header("x-canary-reason")


def test_a_failing_canary_trips_the_guard_and_users_go_back_to_stable(start_envoy, demo_config):
    config = guarded(demo_config, maxErrorRate=0.1)
    envoy = start_envoy(config, concurrency=2, bootstrap_hook=failing("model-v2", 30))
    canary_users = [u for u in USERS if expected_version(config, u) == "model-v2"]
    assert canary_users

    # Before the trip, canary users are on model-v2, and about 30% of them fail.
    started = time.monotonic()
    statuses = []
    while envoy.metric("canary_selector_guard_trips_total") == 0:
        assert time.monotonic() - started < 15, "the guard did not trip within the window"
        for u in USERS[:100]:
            r = envoy.request({"x-user-id": u})
            if decided(r)[1] != "guard":
                assert decided(r) == (expected_version(config, u), "sticky")
            statuses.append(r.status)
    tripped_after = time.monotonic() - started
    assert 503 in statuses, "the canary was failing before the trip"
    assert tripped_after < 12

    # Give every worker a tick to learn of the trip, then: every user on
    # stable, served fine, the reason visible; testers still reach the canary.
    time.sleep(1.5)
    for u in canary_users:
        r = envoy.request({"x-user-id": u})  # fresh connection: either worker
        assert (r.status, r.served_by) == (200, "model-v1"), u
        assert decided(r) == ("model-v1", "guard")
    tester = [envoy.request({"x-user-id": canary_users[0], "x-canary-tester": "true"}) for _ in range(20)]
    assert {decided(r) for r in tester} == {("model-v2", "rule")}
    assert any(r.served_by == "model-v2" for r in tester)

    envoy.flushed_stats()
    assert envoy.metric("canary_selector_guard_trips_total") == 1, "one trip for the whole proxy"
    assert envoy.metric("canary_selector_guard_trips_total", version="model-v2") == 1
    assert envoy.metric("canary_selector_guard_tripped") == 1
    assert envoy.metric("canary_selector_requests_total", version="model-v1", reason="guard") >= len(canary_users)
    logs = envoy.wait_for_log("guard tripped")
    trip_lines = [l for l in logs.splitlines() if "guard tripped" in l]
    assert len(trip_lines) == 1 and "[warning]" in trip_lines[0], trip_lines
    assert "model-v2 error rate above maxErrorRate over the last 10s" in trip_lines[0]
    assert re.search(r"responses failed \(rate [0-9.]+; http_5xx\)", trip_lines[0]), trip_lines[0]

    # A new config re-arms the guard: the canary gets its users back.
    tripped_config = json.loads(json.dumps(config))
    config["guard"]["maxErrorRate"] = 0.5
    assert envoy.push(config)
    assert "guard reset" in envoy.wait_for_log("guard reset")
    assert envoy.metric("canary_selector_guard_tripped") == 0
    for u in canary_users[:30]:
        assert decided(envoy.request({"x-user-id": u})) == ("model-v2", "sticky")
    # Pushing the tripped config again (a revert) starts it afresh too: no
    # silent trip inherited from its old window.
    assert envoy.push(tripped_config)
    time.sleep(1.5)  # every worker ticks at least once
    for u in canary_users[:5]:
        assert decided(envoy.request({"x-user-id": u})) == ("model-v2", "sticky")


def test_a_healthy_canary_never_trips(start_envoy, demo_config):
    # Both versions fail alike (a shared dependency is flaky): a guard relative
    # to stable must not blame the canary; and an absolute guard with a bound
    # above the shared failure rate must not trip either.
    config = guarded(demo_config, maxErrorRateAboveStable=0.1, maxErrorRate=0.3)
    hooks = [failing("model-v1", 10), failing("model-v2", 10)]
    envoy = start_envoy(config, concurrency=2, bootstrap_hook=lambda cfg: [h(cfg) for h in hooks])
    conn = envoy.connection()
    deadline = time.monotonic() + 15
    served = 0
    while time.monotonic() < deadline:
        for u in USERS:
            r = envoy.request({"x-user-id": u}, conn=conn)
            assert decided(r) == (expected_version(config, u), "sticky"), u
            served += 1
    assert served > 1000
    assert envoy.metric("canary_selector_guard_trips_total") == 0
    assert "guard tripped" not in envoy.logs()


def rfc3339(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def test_a_schedule_moves_the_split_at_the_right_times(start_envoy, demo_config):
    start = datetime.now(timezone.utc) + timedelta(seconds=4)
    config = json.loads(json.dumps(demo_config))
    config["versions"] = [{"name": "model-v1", "weight": 100}, {"name": "model-v2", "weight": 0}]
    config["schedule"] = {
        "start": rfc3339(start),
        "steps": [
            {"afterSeconds": 0, "weights": {"model-v1": 90, "model-v2": 10}},
            {"afterSeconds": 3, "weights": {"model-v1": 50, "model-v2": 50}},
            {"afterSeconds": 6, "weights": {"model-v2": 100}},
        ],
    }
    envoy = start_envoy(config, concurrency=2)
    conn = envoy.connection()

    def at(weights: tuple[int, int]) -> dict:
        c = json.loads(json.dumps(config))
        c["versions"] = [{"name": "model-v1", "weight": weights[0]}, {"name": "model-v2", "weight": weights[1]}]
        return c

    # (seconds after start to sample at, weights live then); samples stay
    # 0.5 s clear of every step boundary.
    for offset, weights in [(-1.5, (100, 0)), (0.5, (90, 10)), (3.5, (50, 50)), (6.5, (0, 100))]:
        wait = (start + timedelta(seconds=offset) - datetime.now(timezone.utc)).total_seconds()
        assert wait > -0.3, f"test fell behind the schedule at {offset}s"
        time.sleep(max(wait, 0))
        t0 = time.monotonic()
        expected = at(weights)
        for u in USERS[:200]:
            r = envoy.request({"x-user-id": u}, conn=conn)
            assert r.served_by == expected_version(expected, u), f"{u} at start{offset:+}s"
        assert time.monotonic() - t0 < 0.45, "sampling took too long to stay clear of the next step"
