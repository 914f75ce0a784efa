"""The model Service, the DestinationRule's subsets and the VirtualService's
routes as Istio writes them into the client sidecar's Envoy: the Service's
host and port, the Deployment each subset selects, the route table."""

from __future__ import annotations

from .cluster import Cluster


def service_port(cluster: Cluster) -> int:
    ports = cluster.one("Service")["spec"]["ports"]
    assert len(ports) == 1, "the model Service has one port"
    return ports[0]["port"]


def service_host(cluster: Cluster) -> str:
    svc = cluster.one("Service")["metadata"]
    return f"{svc['name']}.{svc['namespace']}.svc.cluster.local"


def subset_deployments(cluster: Cluster) -> dict[str, str]:
    """DestinationRule subset -> the one Deployment whose pods it selects
    (pods the Service selects, with the subset's labels)."""
    selector = cluster.one("Service")["spec"]["selector"]
    out = {}
    for subset in cluster.one("DestinationRule")["spec"]["subsets"]:
        wanted = {**selector, **subset.get("labels", {})}
        matches = [
            d["metadata"]["name"]
            for d in cluster.all("Deployment")
            if wanted.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(matches) == 1, f"subset {subset['name']} selects the pods of {matches or 'no Deployment'}"
        out[subset["name"]] = matches[0]
    return out


def _string_match(cond: dict) -> dict:
    (kind, value), *rest = cond.items()
    if rest or kind not in ("exact", "prefix", "regex"):
        raise NotImplementedError(f"header match {cond}")
    return {"safe_regex": {"regex": value}} if kind == "regex" else {kind: value}


def envoy_routes(cluster: Cluster) -> list[dict]:
    """The VirtualService's http routes as Istio writes them into the client
    sidecar's route table for the Service's port (the features it uses: header
    matches and one destination subset per route)."""
    vs = cluster.one("VirtualService")
    port = service_port(cluster)
    routes = []
    for http in vs["spec"]["http"]:
        unsupported = set(http) - {"name", "match", "route"}
        if unsupported:
            raise NotImplementedError(f"VirtualService http fields {sorted(unsupported)} (add them to envoy_routes)")
        (dest,) = http["route"]
        d = dest["destination"]
        cluster_name = f"outbound|{port}|{d['subset']}|{d['host']}"
        for m in http.get("match") or [{}]:
            if set(m) - {"headers"}:
                raise NotImplementedError(f"VirtualService match fields {sorted(m)}")
            headers = [{"name": h, "string_match": _string_match(c)} for h, c in m.get("headers", {}).items()]
            match = {"prefix": "/", **({"headers": headers} if headers else {})}
            routes.append({"name": http.get("name", ""), "match": match, "route": {"cluster": cluster_name}})
    return routes
