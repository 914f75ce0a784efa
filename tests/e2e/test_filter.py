"""End to end: the built .wasm in the real Envoy, real HTTP, configs pushed live
over ECDS. Assertions are on what a user sees: which model server answered,
what reached it, the response headers, Envoy's own stats and logs."""

import json
import math
import re

from harness import ECDS_STATS, expected_version

USERS = [f"user-{i}" for i in range(400)]
ROLLOUT = [(100, 0), (99, 1), (90, 10), (50, 50), (0, 100), (100, 0)]


def with_weights(config: dict, v1: float, v2: float) -> dict:
    config = json.loads(json.dumps(config))
    config["versions"] = [{"name": "model-v1", "weight": v1}, {"name": "model-v2", "weight": v2}]
    return config


def assert_share(n_v2: int, n: int, weight: float):
    p = weight / 100
    sigma = math.sqrt(n * p * (1 - p))
    assert abs(n_v2 - n * p) <= 5 * sigma + 1e-9, f"{n_v2}/{n} on model-v2, expected {weight}%"


def test_rollout_steps_pushed_live_route_every_user_as_documented(start_envoy, demo_config):
    envoy = start_envoy(with_weights(demo_config, 100, 0))
    conn = envoy.connection()
    previous: dict[str, str] = {}
    for step, (v1, v2) in enumerate(ROLLOUT):
        config = with_weights(demo_config, v1, v2)
        if step > 0:
            assert envoy.push(config), f"step {v1}/{v2} rejected:\n{envoy.logs()[-2000:]}"
        served: dict[str, str] = {}
        for user in USERS:
            r = envoy.request({"x-user-id": user}, conn=conn)
            assert r.status == 200
            served[user] = r.served_by
            # The response names the version, the backend saw the same header.
            assert r.header("x-canary-version") == r.served_by
            assert r.header("x-upstream-saw-version") == r.served_by
            assert json.loads(r.body)["model_version"] == r.served_by
            assert served[user] == expected_version(config, user), f"{user} at {v1}/{v2}"
        assert_share(sum(v == "model-v2" for v in served.values()), len(USERS), v2)
        # The ramp only moves users forward; the final rollback moves all back.
        if previous and (v1, v2) != (100, 0):
            moved_back = [u for u in USERS if previous[u] == "model-v2" and served[u] == "model-v1"]
            assert not moved_back, f"moved back to model-v1 at {v1}/{v2}: {moved_back[:5]}"
        previous = served
    assert set(previous.values()) == {"model-v1"}, "rollback to 100/0 sends everyone to model-v1"


def test_a_user_stays_on_one_version_across_requests_and_workers(start_envoy, demo_config):
    envoy = start_envoy(with_weights(demo_config, 50, 50), concurrency=2)
    for user in USERS[:50]:
        # Fresh connections land on either worker (each has its own Wasm VM).
        seen = {envoy.request({"x-user-id": user}).served_by for _ in range(4)}
        assert seen == {expected_version(with_weights(demo_config, 50, 50), user)}, user


def test_stickiness_holds_across_a_weight_change(start_envoy, demo_config):
    envoy = start_envoy(with_weights(demo_config, 90, 10))
    before = {u: envoy.request({"x-user-id": u}).served_by for u in USERS}
    assert envoy.push(with_weights(demo_config, 80, 20))
    after = {u: envoy.request({"x-user-id": u}).served_by for u in USERS}
    on_v2_before = [u for u in USERS if before[u] == "model-v2"]
    assert on_v2_before, "some users were on the canary at 10%"
    assert all(after[u] == "model-v2" for u in on_v2_before), "canary users stay on the canary"
    assert all(before[u] == after[u] for u in USERS if after[u] == "model-v1"), "no one else moved to v1"


def test_user_id_from_cookie_when_no_header(start_envoy, demo_config):
    config = with_weights(demo_config, 50, 50)
    envoy = start_envoy(config)
    for user in USERS[:60]:
        r = envoy.request({"cookie": f"theme=dark; user_id={user}"})
        assert r.served_by == expected_version(config, user), user
        # The header wins over the cookie.
        r = envoy.request({"x-user-id": "alice", "cookie": f"user_id={user}"})
        assert r.served_by == expected_version(config, "alice")


def test_testers_rule_pins_the_canary_before_any_user_gets_it(start_envoy, demo_config):
    envoy = start_envoy(with_weights(demo_config, 100, 0))
    for user in USERS[:50]:
        assert envoy.request({"x-user-id": user, "x-canary-tester": "true"}).served_by == "model-v2"
        assert envoy.request({"x-user-id": user, "x-canary-tester": "yes"}).served_by == "model-v1"
        assert envoy.request({"x-user-id": user}).served_by == "model-v1"
    envoy.flushed_stats()
    assert envoy.metric("canary_selector_requests_total", version="model-v2", reason="rule") == 50
    assert envoy.metric("canary_selector_requests_total", version="model-v1", reason="sticky") == 100


def test_a_spoofed_routing_header_is_replaced(start_envoy, demo_config):
    envoy = start_envoy(with_weights(demo_config, 100, 0))
    for spoof in (
        [("x-canary-version", "model-v2")],
        [("x-canary-version", "model-v2"), ("x-canary-version", "model-v2")],
        [("X-Canary-Version", "model-v2")],
        [("x-canary-version", "")],
    ):
        r = envoy.request([("x-user-id", "alice"), *spoof])
        assert r.status == 200
        assert r.served_by == "model-v1", spoof
        assert r.header("x-upstream-saw-version") == "model-v1", spoof
    # Anonymous spoofers too.
    r = envoy.request([("x-canary-version", "model-v2")])
    assert (r.served_by, r.header("x-upstream-saw-version")) == ("model-v1", "model-v1")


def test_testers_may_ask_for_the_canary_in_the_routing_header_itself(start_envoy, demo_config):
    """The first seed's convention: testers send `x-canary-version: v2`, the
    header the VirtualService matches. With a rule on that header the filter
    reads the client's value, then writes the version's own name; any other
    value is replaced as usual."""
    config = with_weights(demo_config, 100, 0)
    config["rules"] = [
        {"name": "seed-testers", "match": {"headers": {"x-canary-version": {"exact": "v2"}}}, "version": "model-v2"}
    ]
    envoy = start_envoy(config)
    for user in USERS[:30]:
        r = envoy.request({"x-user-id": user, "x-canary-version": "v2"})
        assert (r.served_by, r.header("x-upstream-saw-version")) == ("model-v2", "model-v2"), user
        for other in ("model-v2", "V2", "v22", "v1"):
            r = envoy.request([("x-user-id", user), ("x-canary-version", other)])
            assert (r.served_by, r.header("x-upstream-saw-version")) == ("model-v1", "model-v1"), other
        assert envoy.request({"x-user-id": user}).served_by == "model-v1"
    envoy.flushed_stats()
    assert envoy.metric("canary_selector_requests_total", version="model-v2", reason="rule") == 30


def test_a_bad_config_is_rejected_and_the_last_good_one_keeps_serving(start_envoy, demo_config):
    good = with_weights(demo_config, 50, 50)
    envoy = start_envoy(good)
    baseline = {u: envoy.request({"x-user-id": u}).served_by for u in USERS[:100]}
    bad_pushes = [
        ("{not json", "(config)"),
        (with_weights(demo_config, 50, 40), "versions: weights sum to 90"),
        ({**good, "colour": "blue"}, "unknown field `colour`"),
        ({**good, "rules": [{"name": "t", "match": {"headers": {"x-t": {"exact": "1"}}}, "version": "model-v3"}]},
         "rules[0].version"),
        ({**good, "routingHeader": "bad header"}, "routingHeader"),
    ]
    for config, message in bad_pushes:
        fails = envoy.stats()[f"{ECDS_STATS}.config_fail"]
        assert not envoy.push(config), f"accepted a bad config: {config}"
        assert envoy.stats()[f"{ECDS_STATS}.config_fail"] == fails + 1
        assert message in envoy.wait_for_log(message), f"no error naming {message!r} in Envoy's log"
        after = {u: envoy.request({"x-user-id": u}).served_by for u in USERS[:100]}
        assert after == baseline, "the last good config keeps serving"
    # One error line per rejected push, at error level, naming the field.
    errors = [l for l in envoy.logs().splitlines() if "config rejected:" in l]
    assert errors and all("[error]" in l for l in errors)
    # And a good push after the bad ones still works.
    assert envoy.push(with_weights(demo_config, 0, 100))
    assert {envoy.request({"x-user-id": u}).served_by for u in USERS[:20]} == {"model-v2"}


def test_odd_requests_are_served_and_never_break_the_filter(start_envoy, demo_config):
    config = with_weights(demo_config, 50, 50)
    envoy = start_envoy(config, concurrency=1)
    odd = [
        [("x-user-id", b"caf\xe9-latin1")],
        [("x-user-id", b"\xff\xfe\xfd")],
        [("x-user-id", "u" * 8192)],
        [("x-user-id", "")],
        [("x-user-id", "a"), ("x-user-id", "b")],
        [("cookie", ";;;==; user_id")],
        [("cookie", 'user_id="')],
        [("cookie", b"user_id=\xe9\xff; x=\x80")],
        [("cookie", "x" * 8000)],
        [("x-canary-tester", b"\xff")],
        [("x-canary-tester", "true"), ("x-canary-tester", "false")],
    ]
    for headers in odd:
        r = envoy.request(headers)
        assert r.status == 200, headers
        assert r.served_by in ("model-v1", "model-v2"), headers
        assert r.header("x-canary-version") == r.served_by, f"filter did not run for {headers}"
    # Byte-exact stickiness for a non-UTF-8 id, and the 8 KB id is hashed over
    # its first 256 bytes as documented.
    assert envoy.request([("x-user-id", b"caf\xe9")]).served_by == expected_version(config, b"caf\xe9")
    assert envoy.request([("x-user-id", "u" * 8192)]).served_by == expected_version(config, "u" * 256)
    # The VM is alive and still deciding: known users still land as expected.
    for user in USERS[:50]:
        assert envoy.request({"x-user-id": user}).served_by == expected_version(config, user)
    stats = envoy.stats()
    assert not any(k.endswith("vm_reload") and v for k, v in stats.items() if k.startswith("wasm."))


def test_anonymous_users_get_an_id_cookie_and_stick(start_envoy, demo_config):
    config = with_weights(demo_config, 50, 50)
    envoy = start_envoy(config)
    for _ in range(40):
        first = envoy.request({})
        cookies = first.all("set-cookie")
        assert len(cookies) == 1, first.headers
        m = re.fullmatch(r"canary_id=([0-9a-f]{32}); Max-Age=2592000; Path=/; HttpOnly; SameSite=Lax", cookies[0])
        assert m, cookies[0]
        anon_id = m.group(1)
        # The cookie carries an id, not a version: the version follows the formula.
        assert first.served_by == expected_version(config, anon_id)
        again = envoy.request({"cookie": f"canary_id={anon_id}"})
        assert again.served_by == first.served_by
        assert again.all("set-cookie") == [], "no new cookie once the user has one"


def test_anonymous_requests_without_a_cookie_are_split_at_random(start_envoy, demo_config):
    config = with_weights(demo_config, 50, 50)
    del config["stickiness"]["anonymousCookie"]
    envoy = start_envoy(config)
    served = [envoy.request({}).served_by for _ in range(400)]
    assert all(r.startswith("model-v") for r in served)
    assert_share(served.count("model-v2"), 400, 50)


def test_counters_by_version_and_reason_are_in_prometheus(start_envoy, demo_config):
    config = with_weights(demo_config, 50, 50)
    envoy = start_envoy(config, concurrency=1)
    expected_v2 = sum(expected_version(config, u) == "model-v2" for u in USERS[:100])
    for u in USERS[:100]:
        envoy.request({"x-user-id": u})
    for _ in range(7):
        envoy.request({"x-canary-tester": "true"})
    envoy.flushed_stats()
    prom = envoy.prometheus()
    # One metric, its labels extracted by envoy/envoy.yaml's stats_tags (the
    # extractors Istio adds for extraStatTags).
    series = 'canary_selector_requests_total{{plugin="default.canary-selector",version="{}",reason="{}"}} {}'
    for version, reason, n in [
        ("model-v2", "sticky", expected_v2),
        ("model-v1", "sticky", 100 - expected_v2),
        ("model-v2", "rule", 7),
        ("model-v1", "rule", 0),
    ]:
        assert series.format(version, reason, n) in prom.splitlines(), (version, reason)
    assert "# TYPE canary_selector_requests_total counter" in prom
    # Without a guard the filter does not judge responses, so it counts none
    # (test_guard_schedule.py counts them with one).
    assert envoy.metric("canary_selector_responses_total") == 0
    assert envoy.metric("canary_selector_weight_ppm", version="model-v2") == 500_000
    assert envoy.metric("canary_selector_stable_version", version="model-v1") == 1
    assert envoy.metric("canary_selector_stable_version", version="model-v2") == 0
    # Istio's default inclusion keeps stats whose Envoy name starts with "wasm".
    stats = envoy.stats()
    assert (
        "wasmcustom.plugin=.=default.canary-selector;.;version=.=model-v2;.;reason=.=sticky;.;"
        "canary_selector_requests_total" in stats
    )
    assert all(name.startswith("wasmcustom.") for name in stats if "canary_selector" in name)


def test_a_push_that_drops_a_version_zeroes_its_gauges(start_envoy, demo_config):
    envoy = start_envoy(with_weights(demo_config, 50, 50))
    weight = lambda v: envoy.metric("canary_selector_weight_ppm", version=v)  # noqa: E731
    assert (weight("model-v1"), weight("model-v2")) == (500_000, 500_000)
    # Promotion: model-v2 alone. model-v1's gauges must not keep showing a
    # weight (an alert would see a weighted version getting no traffic).
    promoted = json.loads(json.dumps(demo_config))
    promoted["versions"] = [{"name": "model-v2", "weight": 100}]
    promoted["rules"] = []
    assert envoy.push(promoted)
    assert (weight("model-v1"), weight("model-v2")) == (0, 1_000_000)
    assert envoy.metric("canary_selector_stable_version", version="model-v1") == 0
    assert envoy.metric("canary_selector_stable_version", version="model-v2") == 1


def test_one_info_line_per_accepted_config_without_user_ids(start_envoy, demo_config):
    envoy = start_envoy(with_weights(demo_config, 90, 10), concurrency=2)
    for u in ("alice-secret-id", "bob-secret-id"):
        envoy.request({"x-user-id": u})
    assert envoy.push(with_weights(demo_config, 80, 20))
    logs = envoy.wait_for_log("model-v1=80% model-v2=20%")
    accepted = [l for l in logs.splitlines() if "config accepted:" in l]
    # One line per config for the whole proxy, although each of its three
    # Wasm VMs (main thread and two workers) configures itself.
    assert len(accepted) == 2, accepted
    assert all("[info]" in l for l in accepted)
    assert "model-v1=90% model-v2=10%" in accepted[0]
    assert "model-v1=80% model-v2=20%" in accepted[1]
    assert "secret-id" not in logs, "user ids must not be logged above debug"


def test_two_plugins_sharing_a_vm_each_apply_their_own_config(start_envoy, demo_config):
    """Two canary-selector filters with the same module and VM settings (two
    WasmPlugins on one proxy) run in the same Wasm VMs. Each stream's filter
    must apply its own plugin's config, also after one of them is pushed."""
    import ecds  # envoy/ecds.py, on the path through harness
    from harness import WASM

    team_b = {
        "routingHeader": "x-team-b-version",
        "responseHeader": "x-team-b-version",
        "versions": [{"name": "b1", "weight": 0}, {"name": "b2", "weight": 100}],
        "rules": [{"name": "qa", "match": {"headers": {"x-team": {"exact": "qa"}}}, "version": "b1"}],
    }

    def add_team_b(cfg: dict) -> None:
        for listener in cfg["static_resources"]["listeners"]:
            if listener["name"] != "ingress":
                continue
            hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
            other = ecds.resource(json.dumps(team_b), str(WASM), name="team-b.canary-selector")["resources"][0]
            hcm["http_filters"].insert(0, {"name": other["name"], "typed_config": other["typed_config"]})

    def live_vms(e) -> str:
        return e._admin("/stats?filter=^wasm\\.envoy\\.wasm\\.runtime\\.v8\\.active$")

    alone = start_envoy(demo_config, concurrency=1)
    vms_alone = live_vms(alone)
    alone.stop()
    envoy = start_envoy(demo_config, concurrency=1, bootstrap_hook=add_team_b)
    # As many live VMs as with one plugin: the two share them.
    assert live_vms(envoy) == vms_alone, (live_vms(envoy), vms_alone)

    def check(config: dict) -> None:
        for user in USERS[:100]:
            r = envoy.request({"x-user-id": user})
            assert r.status == 200
            assert r.served_by == expected_version(config, user), user
            assert r.header("x-canary-version") == r.served_by
            assert r.header("x-team-b-version") == "b2", user
        r = envoy.request({"x-user-id": "alice", "x-team": "qa", "x-canary-tester": "true"})
        assert (r.served_by, r.header("x-team-b-version")) == ("model-v2", "b1")

    check(demo_config)
    # A push to one plugin leaves the other's config alone.
    pushed = with_weights(demo_config, 50, 50)
    assert envoy.push(pushed), envoy.logs()[-2000:]
    check(pushed)
    envoy.flushed_stats()
    # Each plugin's series carry its name: they no longer add up.
    team_b_series = {"plugin": "team-b.canary-selector", "version": "b2"}
    assert envoy.metric("canary_selector_requests_total", reason="anonymous", **team_b_series) >= 200
    assert envoy.metric("canary_selector_requests_total", plugin="default.canary-selector", version="b2") == 0
    assert envoy.metric("canary_selector_requests_total", plugin="default.canary-selector") >= 200


def test_a_header_the_filter_sets_reroutes_a_request_whose_route_was_already_picked(start_envoy, demo_config):
    """Envoy picks a request's route before the HTTP filters run, and a filter
    in front of ours (here the fault filter, which reads its per-route
    config) may look it up again. The module makes no clear_route_cache call:
    Envoy clears the cached route itself when a module of ABI 0.2.1 (the
    proxy-wasm SDK's) writes a request header. `make test-matrix` runs this
    on Envoy 1.36 to 1.40; were it not so on one of them, the testers below
    would land on the default route (model-v1)."""

    def fault_filter_first(cfg: dict) -> None:
        for listener in cfg["static_resources"]["listeners"]:
            if listener["name"] == "ingress":
                hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
                hcm["http_filters"].insert(0, {
                    "name": "envoy.filters.http.fault",
                    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"},
                })

    config = with_weights(demo_config, 50, 50)
    envoy = start_envoy(config, bootstrap_hook=fault_filter_first)
    conn = envoy.connection()
    for user in USERS[:100]:
        r = envoy.request({"x-user-id": user, "x-canary-tester": "true"}, conn=conn)
        assert (r.served_by, r.header("x-upstream-saw-version")) == ("model-v2", "model-v2"), user
        r = envoy.request({"x-user-id": user}, conn=conn)
        assert r.served_by == expected_version(config, user), user
