"""End to end: the mesh verdict with real parts. A real Prometheus (Debian's)
scrapes three Envoys that each run the filter, with the shipped rules loaded;
each Envoy polls it (`guard.mesh`). One Envoy carries most of the traffic to
a failing canary, another a request now and then (far below its local
`minRequests`): the quiet one trips from the mesh verdict, a healthy canary
never trips, stopping Prometheus changes nothing for clients and keeps the
verdict, and each Envoy polls once per interval whatever its worker count
(counted by Envoy's own cluster counter).

The faults Prometheus itself cannot be made to show (a 500, a body that is
not the API's JSON, a huge body, a hang, a series for an unknown version)
come from a scripted HTTP server in their own test; so do the pushes that
change `pollSeconds` and `timeoutMs` (each takes effect at the next tick)
and the push that lands while a poll's call is in flight (its answer
applies nothing).
"""

from __future__ import annotations

import re
import threading
import time
from datetime import datetime

from harness import ROOT, Envoy, Traffic, expected_version, failing_version, hooks, free_port, prometheus_cluster
from prometheus import FakePrometheus, Prometheus, vector
from test_rollouts import rollout, with_routes

MESH_RULES = ROOT / "istio" / "observability" / "canary-selector-mesh-rules.yaml"
# What the filter asks: the shipped recording rule's failing canaries.
QUERY = 'canary_selector:canary_failing{plugin="default.canary-selector"}'
POLL_SECONDS = 1
USERS = [f"user-{i}" for i in range(400)]


def mesh_config(port: int, local: bool = True) -> dict:
    """Two rollouts whose guard polls the Prometheus on `port`, beside a local
    guard (50 requests in 10 s, 20% errors) or (`local=False`) alone."""
    guard = {
        "mesh": {"cluster": "prometheus", "authority": f"127.0.0.1:{port}", "query": QUERY,
                 "pollSeconds": POLL_SECONDS, "timeoutMs": 500},
    }
    if local:
        guard |= {"windowSeconds": 10, "minRequests": 50, "maxErrorRate": 0.2}
    return {"rollouts": [
        rollout("iris", ["iris.example.com"], 50, guard=guard),
        rollout("flowers", ["flowers.example.com"], 50, guard=guard),
    ]}


def send(envoy: Envoy, host: str, user: str, conn=None):
    return envoy.request({"host": host, "x-user-id": user}, conn=conn)


def decided(r) -> tuple[str | None, str | None]:
    return r.header("x-canary-version"), r.header("x-canary-reason")


def polls(envoy: Envoy) -> int:
    """Requests this Envoy sent to Prometheus: its cluster's own counter."""
    return envoy.stats().get("cluster.prometheus.upstream_rq_total", 0)


def test_a_quiet_proxy_follows_the_mesh_verdict_and_keeps_it_without_prometheus(start_envoy, tmp_path):
    port = free_port()
    cfg = mesh_config(port)
    fault = failing_version("iris-v2", 50)
    # The busy proxy follows the mesh verdict alone: its own guard would trip
    # on its first 50 responses and then send the canary nothing, below the
    # 100 responses a minute the rules need before they judge, so the mesh
    # would never see the canary fail.
    busy = start_envoy(mesh_config(port, local=False), concurrency=2, bootstrap_hook=hooks(with_routes(), fault, prometheus_cluster(port)))
    quiet = start_envoy(cfg, concurrency=2, bootstrap_hook=hooks(with_routes(), fault, prometheus_cluster(port)))
    idle = start_envoy(cfg, concurrency=4, bootstrap_hook=hooks(with_routes(), fault, prometheus_cluster(port)))
    for e in (busy, quiet, idle):
        e.set_runtime("fault.http.abort.abort_percent", "50")
    # The shipped rules evaluate every 5 s (their groups' interval wins over
    # the test Prometheus' evaluation_interval); it scrapes every second, not
    # every 15 s as Istio's addon does, to keep the test short: the bench
    # (tests/bench/mesh.py) times the follow with the addon's scrape.
    prom = Prometheus(tmp_path, [(e.ports["admin"], {"namespace": "kserve", "pod": f"gateway-{i}"})
                                 for i, e in enumerate((busy, quiet, idle))],
                      [MESH_RULES], port).start()
    iris = cfg["rollouts"][0]
    canary_users = [u for u in USERS if expected_version(iris, u) == "iris-v2"]
    flowers_canary = [u for u in USERS if expected_version(cfg["rollouts"][1], u) == "flowers-v2"]
    # New users to both models on one keep-alive connection, until stopped.
    traffic = Traffic(busy, hosts=["iris.example.com", "flowers.example.com"], user_prefix="busy")
    try:
        # The quiet proxy's canary users are on the canary, failing now and then.
        assert {decided(send(quiet, "iris.example.com", u))[0] for u in canary_users[:10]} == {"iris-v2"}
        traffic.start()
        started = time.monotonic()
        # Its few requests: one every half second.
        k = 10
        while quiet.metric("canary_selector_mesh_trips_total", rollout="iris", version="iris-v2") == 0:
            assert time.monotonic() - started < 40, "the quiet proxy did not follow the mesh verdict"
            send(quiet, "iris.example.com", canary_users[k % len(canary_users)])
            k += 1
            time.sleep(0.5)
        followed_after = time.monotonic() - started
        assert quiet.metric("canary_selector_guard_trips_total") == 0, "not its own guard: it saw too little"
        assert quiet.metric("canary_selector_responses_total", rollout="iris") < 50
        # Every worker of every proxy holds the canary's users on stable now,
        # the idle one too (it never saw a request).
        time.sleep(1.5)
        for e in (quiet, idle):
            for u in canary_users[:30]:
                assert decided(send(e, "iris.example.com", u)) == ("iris-v1", "guard"), u
            assert e.metric("canary_selector_mesh_trips_total", rollout="iris", version="iris-v2") == 1
            assert e.metric("canary_selector_guard_tripped", rollout="iris") == 1
        # flowers' canary is healthy: never tripped, anywhere.
        for e in (busy, quiet, idle):
            for u in flowers_canary[:20]:
                assert decided(send(e, "flowers.example.com", u)) == ("flowers-v2", "sticky"), u
            assert e.metric("canary_selector_mesh_trips_total", rollout="flowers") == 0
            assert e.metric("canary_selector_guard_tripped", rollout="flowers") == 0
        assert "guard tripped of rollout iris by the mesh verdict: Prometheus names iris-v2 failing" in (
            quiet.wait_for_log("by the mesh verdict"))

        # One poll per interval per proxy, whatever its workers (2 and 4).
        before = [(e, polls(e)) for e in (quiet, idle)]
        time.sleep(10)
        for e, n in before:
            sent = polls(e) - n
            assert 10 // POLL_SECONDS - 2 <= sent <= 10 // POLL_SECONDS + 1, (e.concurrency, sent)
        assert all(e.metric("canary_selector_mesh_polls_total", result="ok") > 5 for e in (busy, quiet, idle))

        # Prometheus goes away: clients see nothing of it, the verdict holds.
        prom.stop()
        time.sleep(3 * POLL_SECONDS)
        for u in canary_users[:30]:
            r = send(quiet, "iris.example.com", u)
            assert (r.status, *decided(r)) == (200, "iris-v1", "guard")
        for u in flowers_canary[:10]:
            assert decided(send(quiet, "flowers.example.com", u)) == ("flowers-v2", "sticky")
        for e in (busy, quiet, idle):
            # Envoy answers a call it cannot connect for with its own 503.
            before = e.metric("canary_selector_mesh_polls_total", result="http_503")
            wait_for(lambda: e.metric("canary_selector_mesh_polls_total", result="http_503") >= before + 2)
            logs = e.logs()
            assert_logged_once_a_minute(logs, "mesh verdict: the poll of")
            assert "panicked" not in logs
    finally:
        traffic.stop()
        if prom.proc.poll() is None:
            prom.stop()
    assert set(traffic.statuses) <= {200, 503}
    print(f"quiet proxy followed the mesh verdict {followed_after:.1f} s after the canary began to fail")


def test_a_push_that_keeps_a_rollout_keeps_its_mesh_trip_and_one_that_changes_it_starts_afresh(start_envoy, tmp_path):
    fake = FakePrometheus()
    try:
        cfg = mesh_config(fake.port)
        envoy = start_envoy(cfg, concurrency=2, bootstrap_hook=hooks(with_routes(), prometheus_cluster(fake.port)))
        iris = cfg["rollouts"][0]
        canary = [u for u in USERS if expected_version(iris, u) == "iris-v2"][:20]
        fake.answer = vector([{"rollout": "iris", "version": "iris-v2"}])
        wait_for(lambda: envoy.metric("canary_selector_mesh_trips_total", rollout="iris") == 1)
        time.sleep(1.5)
        assert {decided(send(envoy, "iris.example.com", u)) for u in canary} == {("iris-v1", "guard")}
        # Prometheus no longer names it (its users left it): the trip holds.
        fake.answer = vector([])
        cfg["rollouts"][1]["versions"] = [{"name": "flowers-v1", "weight": 40}, {"name": "flowers-v2", "weight": 60}]
        assert envoy.push(cfg)
        time.sleep(2 * POLL_SECONDS)
        assert {decided(send(envoy, "iris.example.com", u)) for u in canary} == {("iris-v1", "guard")}
        # A push that changes iris starts it afresh.
        iris["versions"] = [{"name": "iris-v1", "weight": 40}, {"name": "iris-v2", "weight": 60}]
        assert envoy.push(cfg)
        time.sleep(2 * POLL_SECONDS)
        now_canary = [u for u in USERS if expected_version(iris, u) == "iris-v2"][:20]
        assert {decided(send(envoy, "iris.example.com", u)) for u in now_canary} == {("iris-v2", "sticky")}
    finally:
        fake.stop()


def assert_logged_once_a_minute(logs: str, text: str) -> None:
    """`text` is in the log, and at most once in any minute."""
    times = [datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S.%f") for line in logs.splitlines() if text in line]
    assert times, f"{text!r} was never logged"
    assert all((b - a).total_seconds() >= 60 for a, b in zip(times, times[1:])), times


def wait_for(condition, what: str = "", timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out: {what}"
        time.sleep(0.2)


def test_faults_never_make_it_worse(start_envoy):
    fake = FakePrometheus()
    try:
        cfg = mesh_config(fake.port)
        envoy = start_envoy(cfg, concurrency=2, bootstrap_hook=hooks(with_routes(), prometheus_cluster(fake.port)))
        iris, flowers = cfg["rollouts"]
        iris_canary = [u for u in USERS if expected_version(iris, u) == "iris-v2"][:20]
        flowers_canary = [u for u in USERS if expected_version(flowers, u) == "flowers-v2"][:20]
        wait_for(lambda: fake.queries >= 2)
        assert fake.last_path == "/api/v1/query?query=canary_selector%3Acanary_failing%7Bplugin%3D%22default.canary-selector%22%7D"
        fake.answer = vector([{"rollout": "iris", "version": "iris-v2"}])
        wait_for(lambda: envoy.metric("canary_selector_mesh_trips_total", rollout="iris") == 1)
        for label, set_fault in [
            ("http_500", lambda: setattr(fake, "status", 500)),
            ("bad_answer", lambda: setattr(fake, "answer", b"<html>upstream connect error</html>")),
            ("bad_answer", lambda: setattr(fake, "answer", b'{"status":"error","errorType":"timeout"}')),
            ("too_large", lambda: setattr(fake, "answer", vector([{"rollout": "flowers", "version": "flowers-v2"}] * 20000))),
            # Past timeoutMs: Envoy answers the call with its own 504.
            ("http_504", lambda: setattr(fake, "hang", 0.8)),
        ]:
            fake.status, fake.hang, fake.answer = 200, 0.0, vector([])
            set_fault()
            before = envoy.metric("canary_selector_mesh_polls_total", result=label)
            wait_for(lambda: envoy.metric("canary_selector_mesh_polls_total", result=label) >= before + 2,
                     f"{label}: {[l for l in envoy.prometheus().splitlines() if 'mesh_polls' in l]}")
            # Nothing is untripped, nothing else tripped, every request served.
            for u in iris_canary:
                r = send(envoy, "iris.example.com", u)
                assert (r.status, *decided(r)) == (200, "iris-v1", "guard"), label
            for u in flowers_canary:
                assert decided(send(envoy, "flowers.example.com", u)) == ("flowers-v2", "sticky"), label
        # A series for a version or rollout the config does not know, and the
        # stable version: ignored (the unknown ones counted), nothing tripped.
        fake.status, fake.hang = 200, 0.0
        fake.answer = vector([{"rollout": "flowers", "version": "flowers-v9"}, {"rollout": "flowers", "version": "flowers-v1"},
                              {"rollout": "tulips", "version": "v2"}])
        wait_for(lambda: envoy.metric("canary_selector_mesh_ignored_series_total") >= 2)
        assert envoy.metric("canary_selector_mesh_ignored_series_total", reason="unknown_rollout") >= 1
        assert envoy.metric("canary_selector_mesh_ignored_series_total", reason="unknown_version") >= 1
        assert envoy.metric("canary_selector_mesh_trips_total", rollout="flowers") == 0
        assert {decided(send(envoy, "flowers.example.com", u)) for u in flowers_canary} == {("flowers-v2", "sticky")}
        # A value that counts nothing (a raw ratio's NaN, a difference below
        # zero, an infinity) trips nothing and is counted.
        for value in ["NaN", "-0.2", "-Inf", "+Inf"]:
            before = envoy.metric("canary_selector_mesh_ignored_series_total", reason="bad_value")
            fake.answer = vector([{"rollout": "flowers", "version": "flowers-v2"}], value=value)
            wait_for(lambda: envoy.metric("canary_selector_mesh_ignored_series_total", reason="bad_value") > before, value)
        assert envoy.metric("canary_selector_mesh_trips_total", rollout="flowers") == 0
        assert {decided(send(envoy, "flowers.example.com", u)) for u in flowers_canary} == {("flowers-v2", "sticky")}
        logs = envoy.logs()
        assert "panicked" not in logs
        # Each kind logged once a minute, whatever the faults, and one kind
        # never hides another.
        assert_logged_once_a_minute(logs, "canary-selector: mesh verdict: the poll of")
        assert_logged_once_a_minute(logs, "name no rollout polling it, or no version")
        assert_logged_once_a_minute(logs, "have a value that is negative, NaN or infinite")
        first = next(line for line in logs.splitlines() if "canary-selector: mesh verdict: the poll of" in line)
        assert re.search(r"mesh verdict: the poll of 127\.0\.0\.1:\d+ \(cluster prometheus\) failed \(http_500\)", first)
    finally:
        fake.stop()


def test_a_cluster_envoy_does_not_know_is_counted_and_changes_nothing(start_envoy):
    cfg = mesh_config(9)
    for r in cfg["rollouts"]:
        r["guard"]["mesh"]["cluster"] = "no-such-cluster"
    envoy = start_envoy(cfg, concurrency=2, bootstrap_hook=with_routes())
    wait_for(lambda: envoy.metric("canary_selector_mesh_polls_total", result="unreachable") >= 2)
    iris = cfg["rollouts"][0]
    for u in USERS[:50]:
        r = send(envoy, "iris.example.com", u)
        assert (r.status, decided(r)) == (200, (expected_version(iris, u), "sticky"))


def with_poll(cfg: dict, poll_seconds: int, timeout_ms: int) -> dict:
    """`cfg` with every rollout's guard.mesh polling every `poll_seconds`
    with `timeout_ms`."""
    for r in cfg["rollouts"]:
        r["guard"]["mesh"] |= {"pollSeconds": poll_seconds, "timeoutMs": timeout_ms}
    return cfg


def test_a_new_poll_interval_or_timeout_takes_effect_at_the_next_tick(start_envoy):
    fake = FakePrometheus()
    try:
        # An hour between polls; the first is sent at once.
        cfg = with_poll(mesh_config(fake.port, local=False), 3600, 1000)
        envoy = start_envoy(cfg, concurrency=2, bootstrap_hook=hooks(with_routes(), prometheus_cluster(fake.port)))
        wait_for(lambda: fake.queries >= 1, "the first poll")
        time.sleep(3)
        assert fake.queries == 1, fake.arrived

        # Down to 1 s: the next query comes at the next tick, not in an hour.
        pushed = time.monotonic()
        assert envoy.push(with_poll(cfg, 1, 500))
        wait_for(lambda: fake.queries >= 2, "a query after the push to pollSeconds 1", timeout=5)
        after = fake.arrived[1] - pushed
        assert after < 2.5, f"the first query at the new interval came {after:.2f} s after the push"
        n = fake.queries
        time.sleep(4)
        assert 3 <= fake.queries - n <= 5, fake.queries - n

        # Back up to an hour: at most the poll already due, then none.
        assert envoy.push(with_poll(cfg, 3600, 1000))
        time.sleep(1.5)
        n = fake.queries
        time.sleep(3)
        assert fake.queries == n, fake.arrived[-3:]

        # The timeout: a hang of 0.8 s is answered under timeoutMs 1500...
        fake.hang = 0.8
        timeouts = "cluster.prometheus.upstream_rq_timeout"
        ok = envoy.metric("canary_selector_mesh_polls_total", result="ok")
        assert envoy.push(with_poll(cfg, 2, 1500))
        wait_for(lambda: envoy.metric("canary_selector_mesh_polls_total", result="ok") >= ok + 2, "answers at 1500 ms")
        assert envoy.stats().get(timeouts, 0) == 0
        assert envoy.metric("canary_selector_mesh_polls_total", result="http_504") == 0
        # ...and times out at the new bound once timeoutMs is pushed to 300.
        assert envoy.push(with_poll(cfg, 2, 300))
        n = fake.queries
        wait_for(lambda: fake.queries > n, "a query at timeoutMs 300", timeout=5)
        arrived = fake.arrived[-1]
        while envoy.stats().get(timeouts, 0) == 0:
            assert time.monotonic() - arrived < 3, "Envoy did not time the call out"
            time.sleep(0.02)
        timed_out = time.monotonic() - arrived
        assert timed_out < 0.75, f"the call timed out {timed_out:.2f} s after the query came, past the hang"
        wait_for(lambda: envoy.metric("canary_selector_mesh_polls_total", result="http_504") >= 1, "http_504 counted")
        print(f"first query at pollSeconds 1: {after:.2f} s after the push; "
              f"timeout at timeoutMs 300: {timed_out:.2f} s after the query came")
        assert "panicked" not in envoy.logs()
    finally:
        fake.stop()


def test_an_answer_superseded_by_a_push_is_counted_applies_nothing_and_is_asked_again(start_envoy):
    """A push lands while a poll's call is in flight, its answer naming
    iris' canary. The answer is for a config no rollout serves now: it
    trips nothing and is never counted `ok`; the push counts the call
    `superseded` (whichever VM sent it: Envoy may cancel the call of a VM
    whose old root context it tears down, and the call counts all the
    same), and gives its turn back, so the new config asks again at its
    next tick instead of a whole `pollSeconds` (30 s here) later."""
    fake = FakePrometheus()
    try:
        cfg = with_poll(mesh_config(fake.port, local=False), 30, 2500)
        envoy = start_envoy(cfg, concurrency=2, bootstrap_hook=hooks(with_routes(), prometheus_cluster(fake.port)))
        wait_for(lambda: fake.queries >= 1, "the first poll")
        time.sleep(0.5)
        # The next poll hangs 1.5 s, and only its answer names iris' canary.
        n = fake.queries
        failing = vector([{"rollout": "iris", "version": "iris-v2"}])
        in_flight = n + 1
        fake.hang, fake.answer_for = 1.5, lambda number: failing if number == in_flight else vector([])
        assert envoy.push(with_poll(cfg, 1, 900))  # due at once at the shorter interval...
        wait_for(lambda: fake.queries > n, "a query in flight", timeout=5)
        ok = envoy.metric("canary_selector_mesh_polls_total", result="ok")
        superseded = envoy.metric("canary_selector_mesh_polls_total", result="superseded")
        # ...and a push that changes only flowers while it is in flight.
        cfg = with_poll(cfg, 30, 2500)
        cfg["rollouts"][1]["versions"] = [{"name": "flowers-v1", "weight": 40}, {"name": "flowers-v2", "weight": 60}]
        fake.hang = 0.0
        pushed = time.monotonic()
        n = fake.queries
        assert envoy.push(cfg)
        wait_for(lambda: envoy.metric("canary_selector_mesh_polls_total", result="superseded") > superseded,
                 "the call counted superseded", timeout=5)
        # Asked again at once, not 30 s later, and answered.
        wait_for(lambda: fake.queries > n, "the poll asked again", timeout=5)
        asked_again = fake.arrived[-1] - pushed
        assert asked_again < 3, asked_again
        time.sleep(2)
        assert envoy.metric("canary_selector_mesh_polls_total", result="superseded") == superseded + 1
        assert envoy.metric("canary_selector_mesh_trips_total", rollout="iris") == 0
        assert envoy.metric("canary_selector_guard_tripped", rollout="iris") == 0
        assert envoy.metric("canary_selector_mesh_polls_total", result="ok") >= ok + 1
        logs = envoy.logs()
        assert "by the mesh verdict" not in logs and "panicked" not in logs
        print(f"asked again {asked_again:.2f} s after the push")
    finally:
        fake.stop()
