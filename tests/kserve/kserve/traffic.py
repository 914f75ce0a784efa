"""Driving a gateway in tests: the users, host names and tester header, a
config set in the cluster or pushed as each gateway delivers it, and requests
checked against the README's decision (mesh.expected)."""

from __future__ import annotations

import copy

import mesh

from .proxies import EnvoyGatewayProxy, eg_config_text
from .scenario import plugin, plugin_config

USERS = [f"user-{i}" for i in range(400)]
HOSTS = ["sklearn-iris-kserve-test.example.com", "sklearn-iris-predictor-kserve-test.example.com"]
TESTER = {"x-canary-tester": "true"}


def configured(cluster, config: dict):
    """The cluster with `config` in its plugin resource (as a patch sets it)."""
    current = plugin_config(plugin(cluster))
    current.clear()
    current.update(copy.deepcopy(config))
    return cluster


def with_weights(config: dict, v1: float, v2: float) -> dict:
    config = copy.deepcopy(config)
    config["versions"] = [{"name": "model-v1", "weight": v1}, {"name": "model-v2", "weight": v2}]
    return config


def route_users(
    envoy, config: dict, users=USERS, extra: dict | None = None, hostname: str = HOSTS[0]
) -> dict[str, str]:
    """One request per user through the gateway: each must land where the
    README's decision says, with the routing header reaching the model
    server and named in the response."""
    served = {}
    conn = envoy.connection()
    for user in users:
        headers = {"x-user-id": user, **(extra or {})}
        r = envoy.request({"host": hostname, **headers}, conn=conn)
        assert r.status == 200, r.body
        want = mesh.expected(config, headers)
        assert (r.served_by, r.header("x-upstream-saw-version"), r.header("x-canary-version")) == (want,) * 3, (
            user,
            r.headers,
        )
        served[user] = r.served_by
    return served


def assert_untouched_on_stable(envoy, stable: str = "model-v1", users=USERS[:100]):
    """Every request, testers' too, served by KServe's rule: the stable
    predictor, no routing header, no response header."""
    for hostname in HOSTS:
        for user in users:
            r = envoy.request({"host": hostname, "x-user-id": user, **TESTER})
            assert (r.status, r.served_by, r.header("x-upstream-saw-version"), r.header("x-canary-version")) == (
                200,
                stable,
                None,
                None,
            )


def fail_open(envoy, cluster) -> None:
    """Push what each gateway runs when it cannot fetch the module of a
    fail-open plugin: Istio's agent an allow-all RBAC filter under the
    plugin's name; Envoy Gateway a listener without the filter."""
    if isinstance(envoy, EnvoyGatewayProxy):
        assert envoy.push(None)
    else:
        assert envoy.push_resource(mesh.istio_allow_all(mesh.filter_name(plugin(cluster))))


def push(envoy, config: dict) -> None:
    """A config as the gateway delivers it: Istio's pluginConfig over ECDS,
    Envoy Gateway's config in a listener update."""
    text = eg_config_text(config) if isinstance(envoy, EnvoyGatewayProxy) else mesh.plugin_config_json(config)
    assert envoy.push(text), envoy.logs()[-2000:]
