"""The plugin in the real Envoy shaped like each gateway KServe runs behind,
delivered as that gateway delivers it, with the routes the HTTPRoutes
translate to (KServe's and ours, in that gateway's order): the 90/10 split,
the testers' rule, requests the filter never touched, and on Envoy Gateway
what a listener update does to stickiness and to the guard."""

import copy
import json
import time

import pytest

import kserve
import mesh
from harness import expected_version, failing
from kserve import (
    HOSTS,
    TESTER,
    USERS,
    assert_untouched_on_stable,
    configured,
    fail_open,
    push,
    route_users,
    with_weights,
)


def kept_alive_get(envoy, conn, user: str):
    """A GET on `conn`, which must still be the connection it was: the demo
    model servers answer before reading a request body, and Envoy then
    closes a connection that carried a POST now and then, so connection
    tests send no body."""
    sock = conn.sock
    r = envoy.request({"host": HOSTS[0], "x-user-id": user}, conn=conn, method="GET", body=b"")
    assert sock is None or conn.sock in (sock, None), "http.client reconnected"
    return r


def plugin_of(cluster, kind: str) -> None:
    """Make `kind` the plugin resource in force (the TrafficExtension in
    place of the WasmPlugin)."""
    if kind == mesh.TRAFFIC_EXTENSION:
        cluster.delete(mesh.WASM_PLUGIN, "kserve", "canary-selector")
        cluster.apply(kserve.KSERVE_DIR / "trafficextension")


def dumped_wasm(envoy) -> dict:
    """The Wasm filter config Envoy holds, as the gateway delivered it."""
    if isinstance(envoy, kserve.EnvoyGatewayProxy):
        dump = json.loads(envoy._admin("/config_dump?resource=dynamic_listeners"))
        (listener,) = [c["active_state"]["listener"] for c in dump["configs"]]
        hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
        (f,) = [f for f in hcm["http_filters"] if f["name"] == envoy.names["filter"]]
        assert f["disabled"] is True, "enabled per route, as for every Envoy Gateway policy"
        for vh in hcm["route_config"]["virtual_hosts"]:
            for route in vh["routes"]:
                assert envoy.names["filter"] in route["typed_per_filter_config"], route["name"]
        return f["typed_config"]["config"]
    (dump,) = json.loads(envoy._admin("/config_dump?resource=ecds_filters"))["configs"]
    assert dump["ecds_filter"]["name"] == "kserve.canary-selector"
    return dump["ecds_filter"]["typed_config"]["config"]


PLUGINS = [
    pytest.param(kserve.ISTIO, mesh.WASM_PLUGIN, id="istio-WasmPlugin"),
    pytest.param(kserve.ISTIO, mesh.TRAFFIC_EXTENSION, id="istio-TrafficExtension"),
    pytest.param(kserve.ENVOY_GATEWAY, "EnvoyExtensionPolicy", id="envoy-gateway-EnvoyExtensionPolicy"),
]


@pytest.mark.parametrize("gateway_class,kind", PLUGINS)
def test_the_plugin_as_the_gateway_delivers_it_splits_users_and_pins_testers(start_gateway, gateway_class, kind):
    cluster = kserve.shipped(gateway_class)
    plugin_of(cluster, kind)
    doc = kserve.plugin(cluster)
    envoy = start_gateway(cluster)
    wasm = dumped_wasm(envoy)
    if gateway_class == kserve.ISTIO:
        # Istio: ECDS, <namespace>.<name>, root_id pluginName, jsonpb JSON.
        assert (wasm["name"], wasm["root_id"], wasm["failure_policy"]) == (
            "kserve.canary-selector",
            "canary-selector",
            "FAIL_OPEN",
        )
        assert wasm["configuration"]["value"] == mesh.plugin_config_json(kserve.plugin_config(doc))
    else:
        # Envoy Gateway: its own VM, the module over HTTP with its sha256,
        # the config's JSON as stored, failOpen.
        assert (wasm["name"], wasm["root_id"], wasm["vm_config"]["vm_id"]) == (
            "canary-selector",
            "canary-selector",
            "envoyextensionpolicy/kserve/canary-selector/wasm/0",
        )
        assert wasm["vm_config"]["code"]["remote"]["sha256"] == envoy.module_server.sha256
        assert wasm["configuration"]["value"] == kserve.eg_config_text(kserve.plugin_config(doc))
        assert wasm["fail_open"] is True

    # As applied: a dark launch. Everyone on model-v1, testers on model-v2.
    shipped = kserve.plugin_config(doc)
    assert set(route_users(envoy, shipped, USERS[:100]).values()) == {"model-v1"}
    assert set(route_users(envoy, shipped, USERS[:20], TESTER).values()) == {"model-v2"}

    # 90/10 on both of KServe's host names, sticky by the README's formula.
    # user-27 is on model-v2 at 90/10: on a connection opened before the
    # push, Istio's next request already has the new config (ECDS), Envoy
    # Gateway's still the old one (a listener update; see the drain test).
    kept_alive = envoy.connection()
    assert kept_alive_get(envoy, kept_alive, "user-27").served_by == "model-v1"
    config = with_weights(shipped, 90, 10)
    push(envoy, config)
    assert kept_alive_get(envoy, kept_alive, "user-27").served_by == (
        "model-v2" if gateway_class == kserve.ISTIO else "model-v1"
    )
    for hostname in HOSTS:
        served = route_users(envoy, config, hostname=hostname)
        mesh.assert_share(sum(v == "model-v2" for v in served.values()), len(USERS), 10)
    assert set(route_users(envoy, config, USERS[:50], TESTER).values()) == {"model-v2"}
    # A model behind the same Gateway that is not ours: no route here.
    assert envoy.request({"host": "other-kserve-test.example.com", "x-user-id": "user-27"}).status == 404


def test_a_request_the_filter_never_touched_lands_on_stable(start_gateway, gateway_class, cluster):
    config = with_weights(kserve.plugin_config(kserve.plugin(cluster)), 90, 10)
    envoy = start_gateway(configured(cluster, config))
    assert "model-v2" in route_users(envoy, config).values()
    fail_open(envoy, cluster)
    assert_untouched_on_stable(envoy)
    # Nothing replaces a routing header the client sent itself, so our rule
    # follows it (README, Fail strategy).
    assert envoy.request({"host": HOSTS[0], "x-canary-version": "model-v2"}).served_by == "model-v2"
    # The module back: split again.
    push(envoy, config)
    route_users(envoy, config, USERS[:100])


def test_with_kserves_weights_set_too_only_untouched_requests_follow_them(start_gateway, gateway_class, cluster):
    """Both set (don't): every request the filter decides still follows the
    filter (our rules win), and the requests it never touched are split by
    KServe at random instead of landing on stable."""
    cluster.get("InferenceService", "kserve-test", "sklearn-iris")["spec"]["canary"][0]["trafficPercent"] = 50
    kserve.reconcile(cluster)
    config = with_weights(kserve.plugin_config(kserve.plugin(cluster)), 90, 10)
    envoy = start_gateway(configured(cluster, config))
    route_users(envoy, config)  # every response by the formula, 90/10
    fail_open(envoy, cluster)
    served = [envoy.request({"host": HOSTS[0], "x-user-id": "alice"}).served_by for _ in range(200)]
    mesh.assert_share(served.count("model-v2"), len(served), 50)


def test_with_a_path_prefix_our_rules_lose_on_envoy_gateway_in_the_real_envoy(start_gateway, gateway_class, cluster):
    """The precedence the README explains, in Envoy: our rules with
    PathPrefix / instead of KServe's RegularExpression path still win on
    Istio and are never reached on Envoy Gateway (testers land on model-v1)."""
    for rule in cluster.get("HTTPRoute", "kserve-test", "sklearn-iris-canary-selector")["spec"]["rules"]:
        rule["matches"][0]["path"] = {"type": "PathPrefix", "value": "/"}
    envoy = start_gateway(cluster)
    r = envoy.request({"host": HOSTS[0], "x-user-id": "alice", **TESTER})
    assert r.header("x-upstream-saw-version") == "model-v2", "the filter chose model-v2"
    assert r.served_by == ("model-v2" if gateway_class == kserve.ISTIO else "model-v1")


def test_on_envoy_gateway_a_policy_on_our_httproute_never_sees_an_untouched_request(start_gateway):
    """Why the EnvoyExtensionPolicy targets the Gateway: targeting our
    HTTPRoute instead enables the filter on our rules only, and a request
    without the routing header matches KServe's rule, where the filter is
    off. Testers and canary users all land on model-v1, untouched."""
    cluster = kserve.shipped(kserve.ENVOY_GATEWAY)
    config = with_weights(kserve.plugin_config(kserve.plugin(cluster)), 0, 100)
    policy = kserve.plugin(configured(cluster, config))
    policy["metadata"]["namespace"] = "kserve-test"  # a policy's target is in its own namespace
    policy["spec"]["targetRefs"] = [
        {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "sklearn-iris-canary-selector"}
    ]
    assert mesh.validate(policy) == []
    envoy = start_gateway(cluster)
    assert_untouched_on_stable(envoy)


# --- Envoy Gateway: a config change is a listener update ----------------------


def test_a_listener_update_moves_users_forward_only_and_new_connections_at_once(start_gateway):
    cluster = kserve.shipped(kserve.ENVOY_GATEWAY)
    at_10 = with_weights(kserve.plugin_config(kserve.plugin(cluster)), 90, 10)
    envoy = start_gateway(configured(cluster, at_10))
    before = route_users(envoy, at_10)
    at_50 = with_weights(at_10, 50, 50)
    push(envoy, at_50)
    after = route_users(envoy, at_50)  # a new connection: the new config at once
    assert all(after[u] == "model-v2" for u, v in before.items() if v == "model-v2"), "nobody moved back"
    mesh.assert_share(sum(v == "model-v2" for v in after.values()), len(USERS), 50)
    # Fractions as written reach the filter as written ("weight": 0.5).
    at_half = with_weights(at_10, 99.5, 0.5)
    push(envoy, at_half)
    assert '"weight":0.5' in dumped_wasm(envoy)["configuration"]["value"]
    route_users(envoy, at_half)


def test_a_connection_open_across_a_listener_update_keeps_the_old_config_until_envoy_drains_it(start_gateway):
    """Envoy applies a listener update to new connections; a connection it
    accepted before keeps the old filter config until the drain closes it
    (`connection: close`). The README states the figure."""
    cluster = kserve.shipped(kserve.ENVOY_GATEWAY)
    old = with_weights(kserve.plugin_config(kserve.plugin(cluster)), 100, 0)
    envoy = start_gateway(configured(cluster, old))
    conn = envoy.connection()
    assert kept_alive_get(envoy, conn, "alice").served_by == "model-v1"
    push(envoy, with_weights(old, 0, 100))
    assert envoy.request({"host": HOSTS[0], "x-user-id": "alice"}).served_by == "model-v2"
    started, old_responses = time.monotonic(), 0
    while True:
        r = kept_alive_get(envoy, conn, "alice")
        assert r.served_by == "model-v1", "the old connection carries the old config until it closes"
        old_responses += 1
        if r.header("connection") == "close":
            break
        assert time.monotonic() - started < 60, "Envoy did not drain the old connection"
        time.sleep(0.05)
    print(f"old connection drained after {time.monotonic() - started:.2f} s, {old_responses} responses")
    # http.client opens a new connection for the next request: the new config.
    assert (
        envoy.request({"host": HOSTS[0], "x-user-id": "alice"}, conn=conn, method="GET", body=b"").served_by
        == "model-v2"
    )




def guard_trips(stats: dict[str, int]) -> int:
    """Trips, summed over the tag-encoded names (one per version)."""
    return sum(v for k, v in stats.items() if k.endswith("canary_selector_guard_trips_total"))

# Another policy's filter in the Gateway's listener (as a Lua
# EnvoyExtensionPolicy on some other route adds one): a listener update
# that leaves canary-selector's config as it is.
OTHER_POLICY_FILTER = {
    "name": "envoy.filters.http.lua/envoyextensionpolicy/kserve/other/lua/0",
    "disabled": True,
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
        "default_source_code": {"inline_string": "function envoy_on_request(h) end"},
    },
}


def test_a_tripped_guard_holds_across_a_listener_update_that_keeps_the_config(start_gateway):
    """Envoy Gateway rebuilds the listener, and with it the plugin's root
    context, whenever anything in it changes. A listener update with the
    same config keeps the guard's window and its trip (before the fix in
    src/glue.rs, a new root context sent canary users to the failing canary
    until its first tick: 1,088 requests in 0.8 s here); a changed config
    starts a fresh guard, as any push does."""
    cluster = kserve.shipped(kserve.ENVOY_GATEWAY)
    config = with_weights(kserve.plugin_config(kserve.plugin(cluster)), 50, 50)
    config["responseReasonHeader"] = "x-canary-reason"
    config["guard"] = {"windowSeconds": 10, "minRequests": 20, "maxErrorRate": 0.1}
    envoy = start_gateway(configured(cluster, config), bootstrap_hook=failing("model-v2", 30))
    canary_users = [u for u in USERS if expected_version(config, u) == "model-v2"]
    started = time.monotonic()
    while guard_trips(envoy.stats()) == 0:
        assert time.monotonic() - started < 20, "the guard did not trip"
        for u in USERS[:100]:
            envoy.request({"host": HOSTS[0], "x-user-id": u})
    time.sleep(1.5)  # every worker ticks once
    reasons = lambda: [
        envoy.request({"host": HOSTS[0], "x-user-id": u}).header("x-canary-reason") for u in canary_users[:40]
    ]  # noqa: E731

    assert set(reasons()) == {"guard"}
    envoy.extra_filter = OTHER_POLICY_FILTER
    push(envoy, config)
    assert set(reasons()) == {"guard"}, "right after the update, on new connections"
    time.sleep(1.5)
    assert set(reasons()) == {"guard"}
    assert guard_trips(envoy.flushed_stats()) == 1
    assert "guard reset" not in envoy.logs()

    changed = copy.deepcopy(config)
    changed["guard"]["maxErrorRate"] = 0.5
    push(envoy, changed)
    assert "guard reset" in envoy.wait_for_log("guard reset")
    assert set(reasons()) == {"sticky"}
