"""The Envoy routes a gateway builds from the attached HTTPRoutes: the
RouteConfiguration of the Gateway's HTTP listener, and the Envoy clusters
of the predictors' Services with the demo server that plays each."""

from __future__ import annotations

import re

import mesh

from .controller import GATEWAY_NAME, GATEWAY_NAMESPACE, SERVICE_PORT, is_grpc_port, is_kserve_owned
from .gateway_api import Entry, backends, entries
from .llm import POOL_PORT, llm_server


def cluster_name(service: str, port: int = SERVICE_PORT) -> str:
    """The Envoy cluster of a Service "ns/name" and port."""
    return f"{service}:{port}"


def weighted_clusters(entry: Entry) -> dict[str, int]:
    """Envoy cluster -> weight, of a rule's backendRefs that get traffic."""
    ns = entry.route["metadata"]["namespace"]
    return {
        cluster_name(f"{b.get('namespace', ns)}/{b['name']}", b.get("port", SERVICE_PORT)): b.get("weight", 1)
        for b in entry.rule.get("backendRefs", [])
        if b.get("weight", 1) > 0
    }


def _envoy_match(match: dict) -> dict:
    path = match["path"]
    if path["type"] == "RegularExpression":
        out = {"safe_regex": {"regex": path["value"]}}
    elif path["type"] == "Exact":
        out = {"path": path["value"]}
    elif path["value"] == "/":
        out = {"prefix": "/"}
    else:
        out = {"path_separated_prefix": path["value"].rstrip("/")}
    headers = []
    for h in match.get("headers", []):
        kind = {"Exact": "exact", "RegularExpression": "safe_regex"}[h["type"]]
        value = {"regex": h["value"]} if kind == "safe_regex" else h["value"]
        headers.append({"name": h["name"].lower(), "string_match": {kind: value}})
    return {**out, **({"headers": headers} if headers else {})}


def _rewrite(e: Entry) -> dict:
    """A rule's URLRewrite ReplacePrefixMatch (KServe's LLM routes) as Envoy
    does it for a PathPrefix match: the matched prefix replaced, and for a
    replacement of `/` the slash after the prefix dropped with it (Gateway
    API's reading, `/ns/name/v1/models` to `/v1/models`)."""
    for f in e.rule.get("filters", []):
        path = f.get("urlRewrite", {}).get("path", {}) if f["type"] == "URLRewrite" else {}
        if path.get("type") != "ReplacePrefixMatch":
            continue
        prefix = e.match["path"]["value"].rstrip("/")
        if path["replacePrefixMatch"] == "/":
            return {"regex_rewrite": {"pattern": {"regex": f"^{re.escape(prefix)}/*"}, "substitution": "/"}}
        return {"prefix_rewrite": path["replacePrefixMatch"]}
    return {}


def route_config(cluster: mesh.Cluster, implementation: str, services: set[str]) -> dict:
    """The Envoy RouteConfiguration of the Gateway's HTTP listener: a
    virtual host per hostname, the matches in the implementation's order.
    A backend whose Service does not exist answers 500, as both do."""
    vhosts = []
    for hostname, es in sorted(entries(cluster, implementation).items()):
        routes = []
        for e in es:
            route = {"name": e.name, "match": _envoy_match(e.match)}
            weights = weighted_clusters(e)
            if not weights or not set(backends(e)) <= services:
                route["direct_response"] = {"status": 500}
            else:
                action: dict = {"timeout": e.rule.get("timeouts", {}).get("request", "15s")}
                if len(weights) == 1:
                    action["cluster"] = next(iter(weights))
                else:
                    action["weighted_clusters"] = {"clusters": [{"name": c, "weight": w} for c, w in weights.items()]}
                route["route"] = action
            sets = [
                h
                for f in e.rule.get("filters", [])
                if f["type"] == "RequestHeaderModifier"
                for h in f["requestHeaderModifier"].get("set", [])
            ]
            if sets:
                route["request_headers_to_add"] = [
                    {"header": {"key": h["name"], "value": h["value"]}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
                    for h in sets
                ]
            if "route" in route:
                route["route"].update(_rewrite(e))
            routes.append(route)
        # A route without hostnames serves every host of the listener.
        domains = ["*"] if hostname == "*" else [hostname, f"{hostname}:*"]
        vhosts.append({"name": hostname, "domains": domains, "routes": routes})
    return {"name": f"{GATEWAY_NAMESPACE}/{GATEWAY_NAME}/http", "virtual_hosts": vhosts}


def upstreams(cluster: mesh.Cluster) -> dict[str, str]:
    """Envoy cluster -> the demo server that plays it: each predictor's
    Service is played by the server of the predictor's name (model-v1 or
    model-v2, envoy/envoy.yaml), its gRPC port by that version's gRPC
    server (model-v1-grpc, model-v2-grpc: envoy/grpc_models.py, which the
    test starts); an LLMInferenceService's InferencePool and workload
    Service by the server named after it (envoy/openai_models.py, which the
    test starts: llm_gateway.py)."""
    out = {}
    for doc in cluster.all("InferencePool") + cluster.all("Service"):
        if not is_kserve_owned(doc):
            continue
        service = f"{doc['metadata']['namespace']}/{doc['metadata']['name']}"
        llm = llm_server(doc)
        if llm is not None:
            ports = [p["port"] for p in doc["spec"].get("ports", [])] or [POOL_PORT]
            out.update({cluster_name(service, port): llm for port in ports})
            continue
        server = doc["metadata"]["labels"]["serving.kserve.io/predictor"]
        for port in doc["spec"]["ports"]:
            out[cluster_name(service, port["port"])] = f"{server}-grpc" if is_grpc_port(port) else server
    return out


def services(cluster: mesh.Cluster) -> set[str]:
    """The backends a rule may name that exist: Services, and the
    InferencePools of KServe's LLM routes ("namespace/name")."""
    return {
        f"{d['metadata']['namespace']}/{d['metadata']['name']}"
        for d in cluster.all("Service") + cluster.all("InferencePool")
    }
