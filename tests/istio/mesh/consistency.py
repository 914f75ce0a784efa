"""Do the Istio pieces agree? What would make the rollout misroute: a
version without a route or a subset, routes on another header than the
plugin writes, a default route that is not the stable version, a plugin that
does not run where the routes are chosen."""

from __future__ import annotations

from .cluster import Cluster
from .plugin import wasm_fields
from .routes import service_host, service_port

DEFAULT_ROUTING_HEADER = "x-canary-version"


def inconsistencies(cluster: Cluster) -> list[str]:
    """What would make the rollout misroute: a version without a route or a
    subset, routes on another header, a default route that is not the stable
    (first) version, a plugin that does not run where the routes are chosen."""
    problems = []
    plugin = cluster.plugin()
    config = wasm_fields(plugin)["pluginConfig"]
    header = config.get("routingHeader", DEFAULT_ROUTING_HEADER).lower()
    versions = [v["name"] for v in config["versions"]]
    vs, dr, svc = cluster.one("VirtualService"), cluster.one("DestinationRule"), cluster.one("Service")
    subsets = {s["name"] for s in dr["spec"]["subsets"]}
    host = service_host(cluster)

    if dr["spec"]["host"] != host or vs["spec"]["hosts"] != [host]:
        problems.append(f"the DestinationRule host and VirtualService hosts must be the Service, {host}")
    routed: dict[str, str] = {}  # version -> subset
    default = None
    for http in vs["spec"]["http"]:
        (dest,) = http["route"]
        d = dest["destination"]
        if d["host"] != host or d.get("port", {}).get("number", service_port(cluster)) != service_port(cluster):
            problems.append(f"route {http.get('name')!r} goes to {d['host']}:{d.get('port')}, not the model Service")
        if d["subset"] not in subsets:
            problems.append(f"route {http.get('name')!r} goes to subset {d['subset']!r}, not in the DestinationRule")
        if not http.get("match"):
            default = d["subset"]
            continue
        for m in http["match"]:
            for name, cond in m.get("headers", {}).items():
                if name.lower() != header:
                    problems.append(f"route {http.get('name')!r} matches header {name!r}, the plugin writes {header!r}")
                elif "exact" in cond:
                    routed.setdefault(cond["exact"], d["subset"])
    if vs["spec"]["http"] and vs["spec"]["http"][-1].get("match"):
        problems.append("the last VirtualService route must have no match (the default route)")
    for v in versions:
        if v not in routed:
            problems.append(f"version {v!r} has no VirtualService route on {header}: {v}")
    if versions and default != routed.get(versions[0]):
        problems.append(
            f"the default route goes to subset {default!r}; the stable version {versions[0]!r} is subset "
            f"{routed.get(versions[0])!r}"
        )

    # The plugin runs in the callers' sidecars, on their calls to the model.
    selector = plugin["spec"].get("selector", {}).get("matchLabels", {})
    pods = {d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"] for d in cluster.all("Deployment")}
    selected = sorted(n for n, labels in pods.items() if selector.items() <= labels.items())
    models = sorted(n for n, labels in pods.items() if svc["spec"]["selector"].items() <= labels.items())
    if not selected or set(selected) & set(models):
        problems.append(f"the plugin selects {selected}: it must run in callers' sidecars, not the model's {models}")
    for m in plugin["spec"].get("match", []):
        ports = [p["number"] for p in m.get("ports", [])]
        if m.get("mode") != "CLIENT" or ports not in ([], [service_port(cluster)]):
            problems.append(f"plugin match {m}: it must take the callers' outbound traffic to the model's port")
    return problems
