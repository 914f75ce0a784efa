"""End to end: what the workers of one proxy share is exact under load. With
8 workers taking requests at once, and pushes landing while they do (pushes
that keep the rollout's generation: a host alias), the guard's window, every
worker's counts added up, holds exactly the responses the clients got."""

import threading
import time
from collections import Counter

from test_rollouts import USERS, send, two_versions, with_routes

WORKERS = 8
CLIENTS = 6
REQUESTS_EACH = 150


def guarded(hosts: list[str]) -> dict:
    return {"rollouts": [{
        "name": "iris",
        "hosts": hosts,
        "versions": two_versions("iris", 30),
        "stickiness": {"userIdHeaders": ["x-user-id"]},
        "responseHeader": "x-canary-version",
        # Judged, never tripped: the window is what is checked.
        "guard": {"windowSeconds": 300, "minRequests": 1000000, "maxErrorRate": 0.5},
    }]}


def test_eight_workers_count_every_response_across_pushes(start_envoy):
    hosts = ["iris.example.com"]
    envoy = start_envoy(guarded(hosts), concurrency=WORKERS, bootstrap_hook=with_routes())
    got: Counter[str] = Counter()
    lock = threading.Lock()
    failures: list[str] = []

    def client(n: int) -> None:
        for i in range(REQUESTS_EACH):
            user = USERS[(n * REQUESTS_EACH + i) % len(USERS)]
            try:
                r = send(envoy, "iris.example.com", user)  # a new connection each: any worker
            except OSError as e:
                failures.append(repr(e))
                continue
            with lock:
                got[r.header("x-canary-version")] += 1

    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    for t in threads:
        t.start()
    # Pushes that only move the rollout land while the workers count.
    for alias in ["iris.models", "iris.models.svc", "iris.models.svc.cluster.local"]:
        time.sleep(0.7)
        hosts = hosts + [alias]
        assert envoy.push(guarded(hosts))
    for t in threads:
        t.join()
    assert not failures, failures[:3]
    sent = sum(got.values())
    assert sent == CLIENTS * REQUESTS_EACH
    # Every worker writes its window on its next tick; the last to judge
    # adds up all of them.
    deadline = time.monotonic() + 10
    while True:
        window = {v: envoy.metric("canary_selector_guard_window_responses", rollout="iris", version=v)
                  for v in ("iris-v1", "iris-v2")}
        if sum(window.values()) == sent or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert window == {v: float(got[v]) for v in ("iris-v1", "iris-v2")}, (window, got)
    assert "moved" in envoy.logs() and "restarted" not in envoy.logs()
