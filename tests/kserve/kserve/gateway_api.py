"""Gateway API as each implementation reads it: the HTTPRoute rules attached
to KServe's Gateway, ordered as Istio or Envoy Gateway orders them (the
spec's precedence, each with its own rank for regular expressions and its
own tie-break), and the rule a request lands on."""

from __future__ import annotations

import re
from dataclasses import dataclass

import mesh

from .controller import GATEWAY_NAME, GATEWAY_NAMESPACE, gateway
from .scenario import ENVOY_GATEWAY, ISTIO


@dataclass
class Entry:
    """One match of one HTTPRoute rule, on one hostname (what both
    implementations turn into one Envoy route)."""

    hostname: str
    route: dict
    rule_index: int
    match_index: int
    rule: dict
    match: dict

    @property
    def name(self) -> str:
        meta = self.route["metadata"]
        return f"httproute/{meta['namespace']}/{meta['name']}/rule/{self.rule_index}/match/{self.match_index}/{self.hostname}"


def _listener_admits(listener: dict, route: dict, gateway_doc: dict) -> bool:
    allowed = listener.get("allowedRoutes", {}).get("namespaces", {}).get("from", "Same")
    if allowed == "All":
        return True
    if allowed == "Same":
        return route["metadata"]["namespace"] == gateway_doc["metadata"]["namespace"]
    raise NotImplementedError(f"allowedRoutes from {allowed}")


def _host_matches(pattern: str | None, hostname: str) -> bool:
    if not pattern:
        return True
    if pattern.startswith("*."):
        return hostname.endswith(pattern[1:])
    return pattern == hostname


def attached(cluster: mesh.Cluster) -> list[tuple[dict, list[str]]]:
    """The HTTPRoutes attached to KServe's Gateway, in creation order, each
    with the hostnames it serves there."""
    gw = mesh.defaulted(mesh.crd(("gateway.networking.k8s.io/v1", "Gateway")), gateway(cluster))
    out = []
    for (kind, ns, _), route in cluster.objects.items():
        if kind != "HTTPRoute":
            continue
        for ref in route["spec"].get("parentRefs", []):
            if (ref.get("kind", "Gateway"), ref.get("namespace", ns), ref["name"]) != (
                "Gateway",
                GATEWAY_NAMESPACE,
                GATEWAY_NAME,
            ):
                continue
            listeners = [
                l for l in gw["spec"]["listeners"] if l["protocol"] == "HTTP" and _listener_admits(l, route, gw)
            ]
            hostnames = [
                h
                for h in route["spec"].get("hostnames", ["*"])
                if any(_host_matches(l.get("hostname"), h) for l in listeners)
            ]
            if hostnames:
                out.append((route, hostnames))
    return out


_PATH_RANK = {
    # Istio (pilot's gateway conversion, getURIRank): Exact > Prefix > Regex.
    ISTIO: {"Exact": 3, "PathPrefix": 2, "RegularExpression": 1},
    # Envoy Gateway (internal/gatewayapi/sort.go): Exact > RegularExpression > PathPrefix.
    ENVOY_GATEWAY: {"Exact": 3, "RegularExpression": 2, "PathPrefix": 1},
}


def _precedence(implementation: str):
    """The sort key each implementation orders matches by: the spec's
    criteria (path type and length, method, header matches, query matches),
    with its own rank for RegularExpression paths; ties keep creation order
    (Istio) or go by route name (Envoy Gateway)."""
    rank = _PATH_RANK[implementation]

    def key(e: Entry):
        path, headers, queries = e.match["path"], e.match.get("headers", []), e.match.get("queryParams", [])
        common = (-rank[path["type"]], -len(path["value"]))
        if implementation == ISTIO:
            return (*common, "method" not in e.match, -len(headers), -len(queries))
        exact = lambda ms: -sum(m["type"] == "Exact" for m in ms)  # noqa: E731
        return (*common, -len(headers), exact(headers), -len(queries), exact(queries), e.name)

    return key


def entries(
    cluster: mesh.Cluster, implementation: str, preserve_route_order: bool = False
) -> dict[str, list[Entry]]:
    """hostname -> the matches of every attached rule for it, in the order
    the implementation's Envoy tries them. `preserve_route_order`: Envoy
    Gateway's EnvoyProxy spec.preserveRouteOrder, which skips the ranking
    (the HTTPRoutes in creation order, each one's rules as written)."""
    schema = mesh.crd(("gateway.networking.k8s.io/v1", "HTTPRoute"))
    by_host: dict[str, list[Entry]] = {}
    for route, hostnames in attached(cluster):
        route = mesh.defaulted(schema, route)
        for hostname in hostnames:
            for i, rule in enumerate(route["spec"].get("rules", [])):
                for j, match in enumerate(rule["matches"]):
                    by_host.setdefault(hostname, []).append(Entry(hostname, route, i, j, rule, match))
    if preserve_route_order:
        assert implementation == ENVOY_GATEWAY, "preserveRouteOrder is Envoy Gateway's"
        return by_host
    return {h: sorted(es, key=_precedence(implementation)) for h, es in by_host.items()}


def _matches(match: dict, path: str, headers: dict[str, str]) -> bool:
    p = match["path"]
    if p["type"] == "Exact" and path != p["value"]:
        return False
    if p["type"] == "PathPrefix":
        prefix = p["value"].rstrip("/")
        if not (path == prefix or path.startswith(prefix + "/")):
            return False
    if p["type"] == "RegularExpression" and not re.fullmatch(p["value"], path):
        return False
    given = {k.lower(): v for k, v in headers.items()}
    for h in match.get("headers", []):
        value = given.get(h["name"].lower())
        if value is None or (value != h["value"] if h["type"] == "Exact" else not re.fullmatch(h["value"], value)):
            return False
    return not match.get("queryParams") and "method" not in match


def resolve(
    cluster: mesh.Cluster,
    implementation: str,
    hostname: str,
    headers: dict[str, str],
    path: str = "/v1/models/sklearn-iris:predict",
    preserve_route_order: bool = False,
) -> Entry | None:
    """The rule a request takes on that implementation (None: 404)."""
    ordered = entries(cluster, implementation, preserve_route_order).get(hostname, [])
    return next((e for e in ordered if _matches(e.match, path, headers)), None)


def backends(entry: Entry) -> dict[str, int]:
    """Service -> weight, of a rule's backendRefs that get traffic."""
    ns = entry.route["metadata"]["namespace"]
    return {
        f"{b.get('namespace', ns)}/{b['name']}": b.get("weight", 1)
        for b in entry.rule.get("backendRefs", [])
        if b.get("weight", 1) > 0
    }
