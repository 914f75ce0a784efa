"""Istio's proxies as a real Envoy: the harness' Envoy reshaped into the
client sidecar (or, for tests/kserve, a gateway) Istio builds, with Istio's
filter chain and stats tags, and the plugin delivered over ECDS as Istio
delivers it."""

from __future__ import annotations

import copy
from pathlib import Path

from harness import Envoy  # tests/e2e/harness.py, on sys.path (paths.py)

from .cluster import Cluster
from .plugin import RBAC_FILTER, filter_name, plugin_config_json, wasm_fields
from .routes import envoy_routes, service_host, service_port, subset_deployments
from .stats import extra_stat_tags, istio_stats_config


def _typed(name: str, type_url: str) -> dict:
    return {"name": name, "typed_config": {"@type": type_url}}


def add_upstreams(cfg: dict, upstreams: dict[str, str]) -> None:
    """Bootstrap: a cluster per `upstreams` entry (cluster name -> model-v1
    or model-v2), each a copy of that demo server's cluster."""
    by_name = {c["name"]: c for c in cfg["static_resources"]["clusters"]}
    for name, server in upstreams.items():
        c = copy.deepcopy(by_name[server])
        c["name"] = c["load_assignment"]["cluster_name"] = name
        cfg["static_resources"]["clusters"].append(c)


def istio_shape(
    plugin_filter: str,
    stat_prefix: str,
    route_config: dict,
    upstreams: dict[str, str],
    edit_chain,
    stat_tags: list[str],
):
    """Bootstrap hook: turn the harness' envoy/envoy.yaml into an Istio proxy
    with `route_config`, each of its clusters played by a demo model server
    (`upstreams`: cluster name -> model-v1 or model-v2), Istio's filter order
    after the plugin and Istio's stats tags for `stat_tags` (its pods'
    extraStatTags)."""

    def hook(cfg: dict) -> None:
        add_upstreams(cfg, upstreams)
        (listener,) = [x for x in cfg["static_resources"]["listeners"] if x["name"] == "ingress"]
        hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["stat_prefix"] = stat_prefix
        hcm["route_config"] = route_config
        (plugin,) = [f for f in hcm["http_filters"] if f["name"] == plugin_filter]
        fault = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
        # Istio's chain: the Wasm plugins, then fault, CORS, stats, router.
        hcm["http_filters"] = [
            plugin,
            _typed("envoy.filters.http.fault", fault),
            _typed("envoy.filters.http.cors", "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"),
            hcm["http_filters"][-1],
        ]
        if edit_chain:
            edit_chain(hcm["http_filters"])
        cfg["stats_config"] = istio_stats_config(stat_tags)

    return hook


def istio_proxy(
    plugin: dict,
    workdir: Path,
    route_config: dict,
    upstreams: dict[str, str],
    stat_prefix: str,
    numbers: str = "jsonpb",
    edit_chain=None,
    stat_tags: list[str] = (),
    **kwargs,
) -> Envoy:
    """A real Envoy shaped like a proxy Istio builds (a sidecar or a
    gateway), with the plugin resource delivered as Istio delivers it: over
    ECDS, named <namespace>.<name>, root_id = pluginName, the pluginConfig
    marshalled to JSON in a StringValue, the failure policy from failStrategy,
    RBAC accepted as the substitute filter. `edit_chain` may change the
    list of HTTP filters (the plugin, fault, CORS, router). Not started."""
    wasm = wasm_fields(plugin)
    policy = {"FAIL_OPEN": "FAIL_OPEN", "FAIL_CLOSE": "FAIL_CLOSED", "FAIL_RELOAD": "FAIL_RELOAD"}
    return Envoy(
        workdir,
        plugin_config_json(wasm["pluginConfig"], numbers),
        filter_name=filter_name(plugin),
        root_id=wasm["pluginName"],
        failure_policy=policy[wasm.get("failStrategy", "FAIL_CLOSE")],
        extra_type_urls=(RBAC_FILTER,),
        bootstrap_hook=istio_shape(filter_name(plugin), stat_prefix, route_config, upstreams, edit_chain, stat_tags),
        **kwargs,
    )


def sidecar(cluster: Cluster, workdir: Path, numbers: str = "jsonpb", edit_chain=None, **kwargs) -> Envoy:
    """The client sidecar Istio builds for this cluster: the VirtualService's
    routes for the model Service's port, each DestinationRule subset a
    cluster played by the demo server of its Deployment (istio_proxy)."""
    port, host = service_port(cluster), service_host(cluster)
    upstreams = {f"outbound|{port}|{subset}|{host}": d for subset, d in subset_deployments(cluster).items()}
    route_config = {
        "name": str(port),
        "virtual_hosts": [{"name": f"{host}:{port}", "domains": ["*"], "routes": envoy_routes(cluster)}],
    }
    return istio_proxy(
        cluster.plugin(),
        workdir,
        route_config,
        upstreams,
        f"outbound_0.0.0.0_{port}",
        numbers,
        edit_chain,
        stat_tags=extra_stat_tags(cluster),
        **kwargs,
    )
