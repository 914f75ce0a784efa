"""istio/rollouts/wasmplugin.yaml in the client's sidecar as Istio builds
it: the rollout scoped to the model Service's host names. Every form of
the name a client sends (short, with the namespace, .svc, the full name;
with or without the port, in any letter case) takes the split; a request
for another Service, or for the ClusterIP, loses a routing header the
client sent and takes the default route, to stable."""

import pytest

import mesh

ROLLOUTS = mesh.ISTIO_DIR / "rollouts" / "wasmplugin.yaml"
USERS = [f"user-{i}" for i in range(200)]
NAMES = ["model", "model.models", "model.models.svc", "model.models.svc.cluster.local"]
# What a client's Host header holds: each name, alone or with the Service's port.
AUTHORITIES = [form for name in NAMES for form in (name, f"{name}:8080")]


@pytest.fixture
def scoped(cluster) -> mesh.Cluster:
    """The seed's cluster after `kubectl apply -f istio/rollouts/wasmplugin.yaml`."""
    cluster.apply(ROLLOUTS)
    return cluster


def config_of(cluster) -> dict:
    return mesh.wasm_fields(cluster.plugin())["pluginConfig"]


def test_the_scoped_plugin_is_the_seeds_with_its_rollout_keyed_by_every_form_of_the_name(scoped):
    (seed,) = mesh.load(mesh.ISTIO_DIR / "wasmplugin.yaml")
    plugin = scoped.plugin()
    assert mesh.validate(plugin) == []
    assert plugin["metadata"] == seed["metadata"], "applying it replaces the seed's plugin"
    assert {k: v for k, v in plugin["spec"].items() if k != "pluginConfig"} == {
        k: v for k, v in seed["spec"].items() if k != "pluginConfig"
    }
    (rollout,) = config_of(scoped)["rollouts"]
    assert rollout["hosts"] == NAMES
    # The seed's config, scoped: no user moves when it is applied.
    assert {k: v for k, v in rollout.items() if k not in ("name", "hosts")} == {
        "routingHeader": "x-canary-version",
        **seed["spec"]["pluginConfig"],
    }
    # Its routes are the seed's: the rollout, as a plugin of its own, is
    # consistent with the VirtualService and the DestinationRule.
    scoped.plugin()["spec"]["pluginConfig"] = {k: v for k, v in rollout.items() if k not in ("name", "hosts")}
    assert mesh.inconsistencies(scoped) == []


@pytest.mark.parametrize("authority", AUTHORITIES + ["MODEL.Models.SVC.cluster.local:8080"])
def test_every_form_of_the_service_name_takes_the_rollout(scoped, start_sidecar, authority):
    (rollout,) = config_of(scoped)["rollouts"]
    envoy = start_sidecar(scoped)
    conn = envoy.connection()
    on_v2 = 0
    for user in USERS:
        headers = {"host": authority, "x-user-id": user}
        r = envoy.request(headers, conn=conn)
        want = mesh.expected(rollout, headers)
        assert (r.status, r.served_by, r.header("x-upstream-saw-version"), r.header("x-canary-version")) == (
            200,
            want,
            want,
            want,
        ), user
        on_v2 += want == "model-v2"
    mesh.assert_share(on_v2, len(USERS), 10)
    r = envoy.request({"host": authority, "x-user-id": "alice", "x-canary-tester": "true"}, conn=conn)
    assert (r.served_by, r.header("x-canary-version")) == ("model-v2", "model-v2")


@pytest.mark.parametrize(
    "authority",
    [
        "other.models.svc.cluster.local:8080",  # another Service on the port
        "model.other:8080",  # a Service named model in another namespace
        "10.96.14.2:8080",  # the ClusterIP
    ],
)
def test_a_request_for_another_host_cannot_pick_a_version(scoped, start_sidecar, authority):
    """No rollout takes it: the routing header a client sent is removed (it
    cannot pick model-v2 by calling a host no rollout lists), so it takes
    the default route, to stable; nothing is added to the response."""
    envoy = start_sidecar(scoped)
    for sent in ({}, {"x-canary-version": "model-v2"}):
        for user in USERS[:40]:
            r = envoy.request({"host": authority, "x-user-id": user, "x-canary-tester": "true", **sent})
            assert (r.status, r.served_by, r.header("x-upstream-saw-version"), r.header("x-canary-version")) == (
                200,
                "model-v1",
                None,
                None,
            ), sent
