"""End to end: the scope of a rollout is exact, in the real Envoy. Path
prefixes take whole segments (and KServe's `:verb`, the query ignored); a
push that only moves a rollout (a host alias) keeps its trip, one that
changes what it decides (a weight) drops it; a proxy exports the series of
the rollouts it serves, not of every rollout its config lists; a push that
switches between a config with `rollouts` and one without zeroes the
gauges of the shape it left; the CLI's `explain` names the rollout the
filter takes for each path of the same table."""

import json
import time

from harness import canary_selector, expected_version
from test_rollouts import USERS, send, two_versions, with_routes

TABLE = [
    # (path, the rollout that takes it, or None)
    ("/v1/models/iris", "iris"),
    ("/v1/models/iris/explain", "iris"),
    ("/v1/models/iris:predict", "iris"),
    ("/v1/models/iris?x=1", "iris"),
    ("/v1/models/iris2:predict", None),
    ("/v1/models/iris-xl/infer", None),
    ("/v1/models/irisx", None),
    ("/v2/models/iris2/infer", "iris2"),
    ("/v2/models/flowers/infer", "v2"),
    ("/v2/models", "v2"),
]


def scoped() -> dict:
    def rollout(name: str, prefix: str) -> dict:
        return {
            "name": name,
            "hosts": ["models.example.com"],
            "pathPrefixes": [prefix],
            "versions": two_versions(name, 100),
            "stickiness": {"userIdHeaders": ["x-user-id"]},
            "responseHeader": "x-canary-version",
        }

    return {"rollouts": [rollout("iris", "/v1/models/iris"), rollout("v2", "/v2/models/"),
                         rollout("iris2", "/v2/models/iris2")]}


def test_a_path_prefix_takes_whole_segments_and_the_cli_agrees(start_envoy, tmp_path):
    cfg = scoped()
    envoy = start_envoy(cfg, bootstrap_hook=with_routes())
    config_file = tmp_path / "scoped.json"
    config_file.write_text(json.dumps(cfg))
    for path, want in TABLE:
        r = send(envoy, "models.example.com", "user-1", path=path, x_canary_version="iris-v2")
        taken = r.header("x-canary-version")
        assert taken == (f"{want}-v2" if want else None), path
        if want is None:
            # Unclaimed: the client's routing header was removed.
            assert r.served_by == "model-v1" and r.header("x-upstream-saw-version") in (None, ""), path
        cli = canary_selector("explain", str(config_file), "--host", "models.example.com", "--path", path,
                              "--header", "x-user-id: user-1", "--output", "json")
        assert cli.returncode == 0, cli.stderr
        explained = json.loads(cli.stdout)
        rollout = explained.get("rollout") or {}
        assert rollout.get("name") == want, (path, explained)


def guarded() -> dict:
    return {"rollouts": [{
        "name": "flowers",
        "hosts": ["flowers.example.com"],
        "versions": two_versions("flowers", 50),
        "stickiness": {"userIdHeaders": ["x-user-id"]},
        "responseHeader": "x-canary-version",
        "responseReasonHeader": "x-canary-reason",
        "guard": {"windowSeconds": 30, "minRequests": 20, "maxErrorRate": 0.1},
    }]}


def test_a_trip_is_kept_across_a_host_alias_and_dropped_across_a_weight_change(start_envoy):
    cfg = guarded()
    envoy = start_envoy(cfg, concurrency=2, bootstrap_hook=with_routes(failing=("flowers-v2",)))
    flowers = cfg["rollouts"][0]
    canary = [u for u in USERS if expected_version(flowers, u) == "flowers-v2"][:30]
    started = time.monotonic()
    while envoy.metric("canary_selector_guard_trips_total", rollout="flowers") == 0:
        assert time.monotonic() - started < 15, "the guard did not trip"
        for u in USERS[:60]:
            send(envoy, "flowers.example.com", u)
    time.sleep(1.5)
    assert {send(envoy, "flowers.example.com", u).header("x-canary-reason") for u in canary} == {"guard"}

    # One more host name: where it applies, not what it decides.
    flowers["hosts"] = ["flowers.example.com", "flowers.models.svc"]
    assert envoy.push(cfg)
    assert "rollout flowers moved" in envoy.wait_for_log("rollout flowers moved")
    time.sleep(1.5)
    for host in ("flowers.example.com", "flowers.models.svc"):
        reasons = {send(envoy, host, u).header("x-canary-reason") for u in canary}
        assert reasons == {"guard"}, f"the alias sent users back to the failing canary: {host}"
    assert "guard reset" not in envoy.logs()

    # A weight change is what it decides: a fresh guard.
    flowers["versions"] = two_versions("flowers", 60)
    assert envoy.push(cfg)
    assert "guard reset of rollout flowers" in envoy.wait_for_log("guard reset of rollout flowers")
    time.sleep(1.5)
    now_canary = [u for u in USERS if expected_version(flowers, u) == "flowers-v2"][:10]
    assert {send(envoy, "flowers.example.com", u).header("x-canary-reason") for u in now_canary} == {"sticky"}


def many(n: int) -> dict:
    return {"rollouts": [{
        "name": f"m{i}",
        "hosts": [f"m{i}.models.svc.cluster.local", f"m{i}.models"],
        "versions": two_versions(f"m{i}", 10),
        "stickiness": {"userIdHeaders": ["x-user-id"]},
        "guard": {"windowSeconds": 30, "minRequests": 50, "maxErrorRate": 0.5},
    } for i in range(n)]}


def rollouts_exported(envoy) -> set[str]:
    out = set()
    for line in envoy.prometheus().splitlines():
        if line.startswith("canary_selector_") and 'rollout="' in line:
            out.add(line.split('rollout="', 1)[1].split('"', 1)[0])
    return out


def test_a_proxy_exports_the_series_of_the_rollouts_it_serves(start_envoy):
    envoy = start_envoy(many(200), bootstrap_hook=with_routes())
    time.sleep(1.2)
    assert rollouts_exported(envoy) == set(), "no series before any request"
    for u in USERS[:20]:
        send(envoy, "m3.models", u)
        send(envoy, "m150.models.svc.cluster.local", u)
    envoy.flushed_stats()
    time.sleep(1.2)
    assert rollouts_exported(envoy) == {"m3", "m150"}
    assert envoy.metric("canary_selector_requests_total", rollout="m3") == 20
    # Each served rollout has every series from then on (a rate needs the
    # zero), and its gauges.
    assert envoy.metric("canary_selector_weight_ppm", rollout="m3", version="m3-v2") == 100000
    # A push that ramps every rollout defines nothing new, and keeps the
    # served ones' gauges current.
    cfg = many(200)
    for r in cfg["rollouts"]:
        r["versions"] = two_versions(r["name"], 20)
    assert envoy.push(cfg)
    time.sleep(1.2)
    assert rollouts_exported(envoy) == {"m3", "m150"}
    assert envoy.metric("canary_selector_weight_ppm", rollout="m3", version="m3-v2") == 200000


def test_a_push_that_switches_the_config_s_shape_zeroes_the_gauges_it_left(start_envoy, demo_config):
    envoy = start_envoy(demo_config, bootstrap_hook=with_routes())
    send(envoy, "any.example.com", "user-1")
    time.sleep(1.2)
    assert envoy.metric("canary_selector_weight_ppm", version="model-v1") == 900000
    # To a config with rollouts: the old shape's weights go to 0.
    cfg = scoped()
    assert envoy.push(cfg)
    send(envoy, "models.example.com", "user-1", path="/v1/models/iris:predict")
    time.sleep(1.5)
    unnamed = [line for line in envoy.prometheus().splitlines()
               if line.startswith("canary_selector_weight_ppm{") and "rollout=" not in line]
    assert unnamed and all(line.endswith(" 0") for line in unnamed), unnamed
    assert envoy.metric("canary_selector_weight_ppm", rollout="iris", version="iris-v2") == 1000000
    # And back: every rollout's gauges go to 0.
    assert envoy.push(demo_config)
    time.sleep(1.5)
    assert envoy.metric("canary_selector_weight_ppm", rollout="iris", version="iris-v2") == 0
    assert envoy.metric("canary_selector_weight_ppm", version="model-v1") >= 900000
