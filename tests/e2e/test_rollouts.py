"""End to end: one filter, many rollouts, scoped by host and path, as a
shared gateway runs it. Each model's users follow their own rollout's split,
stickiness and rules; the most specific host wins, whatever the port and
letter case; a request no rollout takes passes untouched; a failing model
trips only its own canary, and a push of another rollout leaves that trip in
place; a rejected config keeps the last good one serving."""

import json
import time

from harness import Envoy, expected_version

USERS = [f"user-{i}" for i in range(300)]


def two_versions(name: str, canary_weight: float) -> list[dict]:
    return [{"name": f"{name}-v1", "weight": 100 - canary_weight}, {"name": f"{name}-v2", "weight": canary_weight}]


def rollout(name: str, hosts: list[str], canary_weight: float, **more) -> dict:
    return {
        "name": name,
        "hosts": hosts,
        "versions": two_versions(name, canary_weight),
        "stickiness": {"userIdHeaders": ["x-user-id"]},
        "responseHeader": "x-canary-version",
        "responseReasonHeader": "x-canary-reason",
        **more,
    }


def config() -> dict:
    return {
        "rollouts": [
            rollout(
                "iris",
                ["iris.example.com"],
                10,
                rules=[{"name": "testers", "match": {"headers": {"x-canary-tester": {"exact": "true"}}}, "version": "iris-v2"}],
            ),
            rollout("flowers", ["*.flowers.example.com"], 50),
            rollout("deep", ["*.eu.flowers.example.com"], 100),
            rollout("api-v2", ["api.example.com"], 100, pathPrefixes=["/v2/"]),
            rollout("api", ["api.example.com"], 0, pathPrefixes=["/v1/", "/v2/models/legacy"]),
        ]
    }


def routes(failing: tuple[str, ...] = ()) -> dict:
    """The ingress routes: each version name of the config to the demo model
    server of its number (`*-v1` to model-v1, `*-v2` to model-v2), and a
    request without the header to model-v1. A version in `failing` is
    answered 503 by Envoy itself."""
    versions = [v["name"] for r in config()["rollouts"] for v in r["versions"]]
    out = []
    for v in versions:
        match = {"prefix": "/", "headers": [{"name": "x-canary-version", "string_match": {"exact": v}}]}
        if v in failing:
            out.append({"match": match, "direct_response": {"status": 503}})
        else:
            out.append({"match": match, "route": {"cluster": "model-v2" if v.endswith("-v2") else "model-v1"}})
    out.append(
        {"match": {"prefix": "/", "headers": [{"name": "x-canary-version", "string_match": {"exact": "model-v2"}}]},
         "route": {"cluster": "model-v2"}}
    )
    out.append({"match": {"prefix": "/"}, "route": {"cluster": "model-v1"}})
    return {"name": "models", "virtual_hosts": [{"name": "models", "domains": ["*"], "routes": out}]}


def with_routes(failing: tuple[str, ...] = ()):
    def hook(cfg: dict) -> None:
        (ingress,) = [l for l in cfg["static_resources"]["listeners"] if l["name"] == "ingress"]
        ingress["filter_chains"][0]["filters"][0]["typed_config"]["route_config"] = routes(failing)

    return hook


def entry(cfg: dict, name: str) -> dict:
    (found,) = [r for r in cfg["rollouts"] if r["name"] == name]
    return found


def send(envoy: Envoy, host: str, user: str | None = None, path: str = "/v1/models/m:predict", **headers):
    h = [("host", host)] + ([("x-user-id", user)] if user else []) + list(headers.items())
    return envoy.request([(k.replace("_", "-"), v) for k, v in h], path=path)


def test_each_model_follows_its_own_rollout(start_envoy):
    cfg = config()
    envoy = start_envoy(cfg, bootstrap_hook=with_routes())
    iris, flowers = entry(cfg, "iris"), entry(cfg, "flowers")
    conn_hosts = [("iris.example.com", iris), ("a.flowers.example.com", flowers), ("b.c.flowers.example.com", flowers)]
    for host, r in conn_hosts:
        seen = {}
        for u in USERS:
            got = send(envoy, host, u)
            want = expected_version(r, u)
            assert got.header("x-canary-version") == want, (host, u)
            assert got.header("x-canary-reason") == "sticky"
            assert got.served_by == ("model-v2" if want.endswith("-v2") else "model-v1")
            seen[want] = seen.get(want, 0) + 1
        canary = f"{r['name']}-v2"
        share = seen.get(canary, 0) / len(USERS)
        assert abs(share - r["versions"][1]["weight"] / 100) < 0.08, (host, seen)
    # Each rollout's rules are its own: the testers' header pins iris users
    # only; on flowers it is just a header.
    assert send(envoy, "iris.example.com", "user-1", x_canary_tester="true").header("x-canary-reason") == "rule"
    flowers_tester = send(envoy, "a.flowers.example.com", "user-1", x_canary_tester="true")
    assert flowers_tester.header("x-canary-reason") == "sticky"
    # Counted per rollout, with the rollout as a label.
    envoy.flushed_stats()
    assert envoy.metric("canary_selector_requests_total", rollout="iris", version="iris-v2", reason="rule") == 1
    flowers_total = envoy.metric("canary_selector_requests_total", rollout="flowers")
    assert flowers_total == 2 * len(USERS) + 1
    assert envoy.metric("canary_selector_weight_ppm", rollout="flowers", version="flowers-v2") == 500_000
    assert envoy.metric("canary_selector_weight_ppm", rollout="iris", version="iris-v2") == 100_000


def test_the_most_specific_host_wins_whatever_the_port_and_letter_case(start_envoy):
    envoy = start_envoy(config(), bootstrap_hook=with_routes())
    for host, version in [
        ("iris.example.com", None),  # sticky: the user's own version on iris
        ("IRIS.Example.COM:10000", None),
        ("iris.example.com.", None),
        ("x.flowers.example.com", None),
        ("x.eu.flowers.example.com", "deep-v2"),  # the longer wildcard
        ("X.EU.Flowers.Example.com:443", "deep-v2"),
    ]:
        r = send(envoy, host, "user-7")
        if version:
            assert r.header("x-canary-version") == version, host
        else:
            assert r.header("x-canary-version") in {"iris-v1", "iris-v2", "flowers-v1", "flowers-v2"}, host
    iris = expected_version(entry(config(), "iris"), "user-7")
    assert send(envoy, "Iris.Example.Com:8080", "user-7").header("x-canary-version") == iris
    # The longest path prefix of the host's rollouts.
    assert send(envoy, "api.example.com", "u", path="/v2/models/x/infer").header("x-canary-version") == "api-v2-v2"
    assert send(envoy, "api.example.com", "u", path="/v2/models/legacy/infer").header("x-canary-version") == "api-v1"
    assert send(envoy, "api.example.com", "u", path="/v1/models/x:predict").header("x-canary-version") == "api-v1"


UNCLAIMED = [
    ("models.other.org", "/v1/models/m:predict"),  # a host no rollout lists
    ("flowers.example.com", "/"),  # `*.flowers.example.com` needs a label before it
    ("api.example.com", "/health"),  # the host's rollouts take /v1/ and /v2/ only
    ("api.example.com", "/v1x/models"),  # /v1/ takes whole segments
]


def test_a_request_no_rollout_takes_loses_the_routing_header_and_nothing_else(start_envoy):
    cfg = config()
    cfg["rollouts"][0]["stickiness"]["anonymousCookie"] = {"name": "canary_id"}
    envoy = start_envoy(cfg, bootstrap_hook=with_routes())
    for host, path in UNCLAIMED:
        # A client cannot pick model-v2 by a host or path no rollout lists.
        r = send(envoy, host, path=path, x_canary_version="model-v2")
        assert r.status == 200
        assert r.served_by == "model-v1", f"the client's own header reached the router: {host}{path}"
        assert r.header("x-upstream-saw-version") in (None, ""), host
        assert r.header("x-canary-version") is None and r.header("x-canary-reason") is None, host
        assert r.header("set-cookie") is None
    # An anonymous iris user gets the cookie; the same request elsewhere does not.
    assert (send(envoy, "iris.example.com").header("set-cookie") or "").startswith("canary_id=")
    envoy.flushed_stats()
    assert envoy.metric("canary_selector_no_rollout_requests_total") == len(UNCLAIMED)
    assert envoy.metric("canary_selector_requests_total") == 1, "no rollout counted the others"


def test_a_gateway_where_another_system_writes_the_header_can_pass_it(start_envoy):
    cfg = config()
    cfg["passUnclaimedRoutingHeaders"] = True
    envoy = start_envoy(cfg, bootstrap_hook=with_routes())
    for host, path in UNCLAIMED:
        r = send(envoy, host, path=path, x_canary_version="model-v2")
        assert r.served_by == "model-v2", f"{host}{path}"
        assert r.header("x-upstream-saw-version") == "model-v2"
    # A claimed request's header is the filter's, as always.
    users = [u for u in USERS if expected_version(entry(cfg, "iris"), u) == "iris-v1"]
    r = send(envoy, "iris.example.com", users[0], x_canary_version="iris-v2")
    assert r.header("x-canary-version") == "iris-v1"


def guarded(cfg: dict) -> dict:
    for r in cfg["rollouts"]:
        r["guard"] = {"windowSeconds": 10, "minRequests": 20, "maxErrorRate": 0.2}
    return cfg


def test_a_failing_model_trips_only_its_own_canary_and_a_push_of_another_keeps_the_trip(start_envoy):
    cfg = guarded(config())
    envoy = start_envoy(cfg, concurrency=2, bootstrap_hook=with_routes(failing=("flowers-v2",)))
    flowers = entry(cfg, "flowers")
    canary_users = [u for u in USERS if expected_version(flowers, u) == "flowers-v2"]
    started = time.monotonic()
    while envoy.metric("canary_selector_guard_trips_total", rollout="flowers") == 0:
        assert time.monotonic() - started < 15, "flowers' guard did not trip"
        for u in USERS[:60]:
            send(envoy, "a.flowers.example.com", u)
            # iris' canary is healthy and busy beside it.
            send(envoy, "iris.example.com", u)
    time.sleep(1.5)  # every worker ticks
    for u in canary_users[:40]:
        r = send(envoy, "a.flowers.example.com", u)
        assert (r.status, r.header("x-canary-version"), r.header("x-canary-reason")) == (200, "flowers-v1", "guard")
    iris = entry(cfg, "iris")
    iris_canary = [u for u in USERS if expected_version(iris, u) == "iris-v2"]
    assert iris_canary
    for u in iris_canary:
        r = send(envoy, "iris.example.com", u)
        assert (r.header("x-canary-version"), r.header("x-canary-reason"), r.served_by) == ("iris-v2", "sticky", "model-v2")
    envoy.flushed_stats()
    assert envoy.metric("canary_selector_guard_tripped", rollout="flowers") == 1
    assert envoy.metric("canary_selector_guard_tripped", rollout="iris") == 0
    assert envoy.metric("canary_selector_guard_trips_total", rollout="iris") == 0
    log = envoy.wait_for_log("guard tripped of rollout flowers")
    assert "guard tripped of rollout flowers: flowers-v2 error rate above maxErrorRate" in log

    # Ramp iris: its rollout changes, flowers' does not, so flowers stays
    # tripped and iris users move forward.
    entry(cfg, "iris")["versions"] = two_versions("iris", 50)
    assert envoy.push(cfg)
    time.sleep(1.5)
    for u in canary_users[:20]:
        assert send(envoy, "a.flowers.example.com", u).header("x-canary-reason") == "guard", u
    for u in USERS[:100]:
        assert send(envoy, "iris.example.com", u).header("x-canary-version") == expected_version(entry(cfg, "iris"), u)
    assert envoy.metric("canary_selector_guard_tripped", rollout="flowers") == 1
    assert "guard reset of rollout flowers" not in envoy.logs()
    after = envoy.wait_for_log("rollout iris restarted").split("rollout iris restarted")[-1]
    assert "rollout flowers" not in after, "a push of iris says nothing of flowers"

    # A push that changes flowers re-arms flowers' guard alone.
    entry(cfg, "flowers")["guard"]["maxErrorRate"] = 0.9
    assert envoy.push(cfg)
    assert "guard reset of rollout flowers" in envoy.wait_for_log("guard reset of rollout flowers")
    time.sleep(1.5)
    for u in canary_users[:20]:
        assert send(envoy, "a.flowers.example.com", u).header("x-canary-reason") == "sticky", u
    assert envoy.metric("canary_selector_guard_tripped", rollout="flowers") == 0


def test_a_rejected_config_keeps_the_last_good_one_serving(start_envoy):
    cfg = config()
    envoy = start_envoy(cfg, bootstrap_hook=with_routes())
    bad = json.loads(json.dumps(cfg))
    bad["rollouts"][1]["hosts"] = ["*.flowers.example.com", "iris.example.com:8080"]
    assert not envoy.push(bad)
    assert "config rejected: rollouts[1].hosts[1]" in envoy.wait_for_log("config rejected")
    clash = json.loads(json.dumps(cfg))
    clash["rollouts"].append(rollout("copy", ["IRIS.example.com"], 50))
    assert not envoy.push(clash)
    assert "rollouts[5].hosts[0]: \"iris.example.com\" (every path) is already claimed by rollouts[0] (\"iris\")" in (
        envoy.wait_for_log("already claimed")
    )
    for u in USERS[:50]:
        assert send(envoy, "iris.example.com", u).header("x-canary-version") == expected_version(entry(cfg, "iris"), u)
        assert send(envoy, "a.flowers.example.com", u).header("x-canary-version") == expected_version(
            entry(cfg, "flowers"), u
        )


def test_a_request_a_rollout_takes_carries_only_its_own_routing_header(start_envoy):
    """A rollout routed by another header (bert's x-bert-version, as two
    rollouts told apart by model are): a request bert takes loses the
    x-canary-version the client sent, so the routes that match it (iris',
    and model-v2) never see it; with passUnclaimedRoutingHeaders, another
    system's header passes."""
    cfg = config()
    cfg["rollouts"].append(rollout("bert", ["bert.example.com"], 0, routingHeader="x-bert-version"))
    envoy = start_envoy(cfg, bootstrap_hook=with_routes())
    for user in USERS[:20]:
        r = send(envoy, "bert.example.com", user, x_canary_version="model-v2")
        assert (r.status, r.header("x-canary-version")) == (200, "bert-v1"), user
        assert r.served_by == "model-v1", "the client's x-canary-version reached the router on bert's request"
        assert r.header("x-upstream-saw-version") in (None, ""), user
    # iris' own header is the filter's, as always.
    iris = send(envoy, "iris.example.com", "user-1", x_canary_version="model-v2")
    assert iris.header("x-upstream-saw-version") == expected_version(entry(cfg, "iris"), "user-1")

    cfg["passUnclaimedRoutingHeaders"] = True
    envoy.push(cfg)
    r = send(envoy, "bert.example.com", "user-1", x_canary_version="model-v2")
    assert (r.header("x-canary-version"), r.served_by) == ("bert-v1", "model-v2")
