"""KServe in Standard mode behind Gateway API, as the tests read it: the
manifests of istio/kserve/ and envoy/gateway/, what KServe's controller
writes for them, how each gateway orders the HTTPRoutes, and a real Envoy
shaped like each gateway with the plugin delivered as that gateway
delivers it.

- `installed()`: the cluster after KServe's install (namespace kserve, the
  Gateway kserve/kserve-ingress-gateway of one gateway class).
- `reconcile()`: the Services and HTTPRoutes KServe writes for each
  InferenceService (Standard mode, Gateway API ingress).
- `entries()`, `resolve()`: the HTTPRoute rules attached to the Gateway,
  ordered as Istio or Envoy Gateway orders them, and where a request lands.
- `inconsistencies()`: what would make the rollout misroute.
- `istio_gateway()`, `EnvoyGatewayProxy`: the gateway's Envoy, the plugin
  over ECDS (Istio) or inline in a listener updated over LDS (Envoy Gateway).
"""

from __future__ import annotations

import copy
import hashlib
import http.server
import json
import re
import shlex
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "istio"))
import mesh  # noqa: E402
from harness import Envoy  # noqa: E402  (on the path once mesh is imported)
import ecds  # noqa: E402

KSERVE_DIR = ROOT / "istio" / "kserve"
ENVOY_GATEWAY_DIR = ROOT / "envoy" / "gateway"
# The second model beside sklearn-iris, and the one plugin for both
# (docs/kserve-many-models.md).
MANY_MODELS_DIR = KSERVE_DIR / "many-models"
ENVOY_GATEWAY_MANY_MODELS_DIR = ENVOY_GATEWAY_DIR / "many-models"
# The Gateway KServe's quick install creates (gatewayClassName envoy; Istio's is istio).
GATEWAY_FIXTURE = Path(__file__).resolve().parent / "kserve-ingress-gateway.yaml"

# KServe's defaults (its inferenceservice-config ConfigMap, "ingress").
GATEWAY_NAMESPACE, GATEWAY_NAME = "kserve", "kserve-ingress-gateway"
INGRESS_DOMAIN = "example.com"
SERVICE_PORT = 80  # a predictor Service's port (to the container's 8080)
FALLBACK_PATH = "^/.*$"  # KServe's one path match, a RegularExpression
# KServe's gRPC rule, first in its HTTPRoutes when a predictor's Service has
# a REST and a gRPC port (its HTTPRoute reconciler, createGRPCRouteMatches).
GRPC_PATH = r"^/inference\.GRPCInferenceService/.*$"
GRPC_CONTENT_TYPE = {"type": "RegularExpression", "name": "content-type", "value": "^application/grpc.*"}
GRPC_APP_PROTOCOL = "kubernetes.io/h2c"
REQUEST_TIMEOUT = "60s"
OWNER = "serving.kserve.io/inferenceservice"  # the label on what KServe writes

ISTIO, ENVOY_GATEWAY = "istio", "envoy"  # gatewayClassName
PLUGIN_KINDS = {ISTIO: (mesh.WASM_PLUGIN, mesh.TRAFFIC_EXTENSION), ENVOY_GATEWAY: ("EnvoyExtensionPolicy",)}


def manifest_files() -> list[Path]:
    """Every manifest of the KServe scenario, both gateways."""
    return mesh.manifest_files(KSERVE_DIR) + mesh.manifest_files(ENVOY_GATEWAY_DIR)


def installed(gateway_class: str) -> mesh.Cluster:
    """The cluster after KServe's install: its namespace and its Gateway."""
    cluster = mesh.Cluster()
    cluster.objects[("Namespace", "", GATEWAY_NAMESPACE)] = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": GATEWAY_NAMESPACE},
    }
    (gateway,) = mesh.load(GATEWAY_FIXTURE)
    gateway["spec"]["gatewayClassName"] = gateway_class
    cluster.objects[("Gateway", GATEWAY_NAMESPACE, GATEWAY_NAME)] = gateway
    return cluster


def shipped(gateway_class: str) -> mesh.Cluster:
    """The cluster after the README's deploy step for that gateway, with
    KServe's objects written."""
    cluster = installed(gateway_class)
    cluster.apply(KSERVE_DIR / "namespace.yaml")
    if gateway_class == ISTIO:
        cluster.apply(KSERVE_DIR)
    else:
        for path in (KSERVE_DIR / "inferenceservice.yaml", KSERVE_DIR / "httproute.yaml", ENVOY_GATEWAY_DIR):
            cluster.apply(path)
    reconcile(cluster)
    return cluster


def shipped_many_models(gateway_class: str) -> mesh.Cluster:
    """The cluster after the many-models runbook's deploy step for that
    gateway: sklearn-iris and xgboost-iris, their HTTPRoutes, and the one
    plugin resource holding both rollouts, with KServe's objects written."""
    cluster = installed(gateway_class)
    cluster.apply(KSERVE_DIR / "namespace.yaml")
    for directory in (KSERVE_DIR, MANY_MODELS_DIR):
        cluster.apply(directory / "inferenceservice.yaml")
        cluster.apply(directory / "httproute.yaml")
    if gateway_class == ISTIO:
        cluster.apply(MANY_MODELS_DIR / "wasmplugin.yaml")
    else:
        cluster.apply(ENVOY_GATEWAY_MANY_MODELS_DIR)
    reconcile(cluster)
    return cluster


def gateway(cluster: mesh.Cluster) -> dict:
    return cluster.get("Gateway", GATEWAY_NAMESPACE, GATEWAY_NAME)


# --- What KServe writes -------------------------------------------------------


def host(name: str, namespace: str) -> str:
    """KServe's default domainTemplate, {{ .Name }}-{{ .Namespace }}.{{ .IngressDomain }}."""
    return f"{name}-{namespace}.{INGRESS_DOMAIN}"


def predictor_service(isvc: dict, predictor: dict) -> str:
    """The Service KServe makes for a predictor: {isvc}-{name}-predictor, or
    {isvc}-predictor for a stable predictor without a name."""
    name = isvc["metadata"]["name"]
    return f"{name}-{predictor['name']}-predictor" if predictor.get("name") else f"{name}-predictor"


def predictors(isvc: dict) -> list[tuple[str, str, int]]:
    """(predictor name, Service, KServe's weight): the stable one first, then
    the canaries in order; the stable one gets what the canaries leave."""
    spec = isvc["spec"]
    canaries = [
        (c["predictor"]["name"], predictor_service(isvc, c["predictor"]), c["trafficPercent"])
        for c in spec.get("canary", [])
    ]
    stable = spec["predictor"]
    return [(stable.get("name", ""), predictor_service(isvc, stable), 100 - sum(w for *_, w in canaries))] + canaries


def service_ports(predictor: dict) -> list[dict]:
    """The ports of the Service KServe makes for a predictor: the
    container's first port on 80 (to 8080 when it lists none), each other
    one on its own number; a port whose name holds grpc or h2c gets
    appProtocol kubernetes.io/h2c (its service reconciler)."""
    listed = predictor.get("model", {}).get("ports", [])
    first = listed[0] if listed else {"name": "http", "containerPort": 8080}
    ports = [{"name": first.get("name", "http"), "port": SERVICE_PORT, "targetPort": first["containerPort"]}]
    for p in listed[1:]:
        ports.append({"name": p["name"], "port": p["containerPort"], "targetPort": p["containerPort"]})
    for port in ports:
        if _is_grpc_port(port):
            port["appProtocol"] = GRPC_APP_PROTOCOL
    return ports


def _is_grpc_port(port: dict) -> bool:
    name = port.get("name", "").lower()
    return port.get("appProtocol") == GRPC_APP_PROTOCOL or "grpc" in name or "h2c" in name


def protocol_ports(ports: list[dict]) -> tuple[int | None, int | None]:
    """(REST port, gRPC port) of a Service, the first of each kind
    (detectServiceProtocolPorts)."""
    rest = next((p["port"] for p in ports if not _is_grpc_port(p)), None)
    grpc = next((p["port"] for p in ports if _is_grpc_port(p)), None)
    return rest, grpc


def isvc_headers(isvc: dict) -> dict:
    """The filter KServe puts on its rules (KServe-Isvc-Name, -Namespace)."""
    meta = isvc["metadata"]
    return {
        "type": "RequestHeaderModifier",
        "requestHeaderModifier": {
            "set": [
                {"name": "KServe-Isvc-Name", "value": meta["name"]},
                {"name": "KServe-Isvc-Namespace", "value": meta["namespace"]},
            ]
        },
    }


def kserve_objects(isvc: dict) -> list[dict]:
    """What KServe's controller writes for an InferenceService in Standard
    mode with Gateway API ingress: a Service per predictor, and the
    HTTPRoutes {isvc} (its URL's host) and {isvc}-predictor on the Gateway,
    whose one rule splits by the canaries' trafficPercent."""
    name, ns = isvc["metadata"]["name"], isvc["metadata"]["namespace"]
    labels = {OWNER: name}
    out = []
    backends = []
    specs = [isvc["spec"]["predictor"]] + [c["predictor"] for c in isvc["spec"].get("canary", [])]
    # The ports of the stable predictor's Service decide the rules.
    rest_port, grpc_port = protocol_ports(service_ports(specs[0]))
    for (predictor, service, weight), spec in zip(predictors(isvc), specs):
        out.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {
                    "name": service,
                    "namespace": ns,
                    "labels": {**labels, "serving.kserve.io/predictor": predictor},
                },
                "spec": {
                    "selector": {"app": f"isvc.{service}"},
                    "ports": service_ports(spec),
                },
            }
        )
        backends.append({"kind": "Service", "name": service, "namespace": ns, "port": SERVICE_PORT, "weight": weight})
    if len(backends) == 1:
        del backends[0]["weight"]  # no canary: one backend, no split
    rules = [
        {
            "matches": [{"path": {"type": "RegularExpression", "value": FALLBACK_PATH}}],
            "filters": [isvc_headers(isvc)],
            "backendRefs": backends,
            "timeouts": {"request": REQUEST_TIMEOUT},
        }
    ]
    if rest_port is not None and grpc_port is not None:
        # REST and gRPC: the gRPC rule first, to the gRPC port; the REST
        # rule to the REST port.
        rules = [
            {
                "matches": [
                    {"path": {"type": "RegularExpression", "value": GRPC_PATH}, "headers": [dict(GRPC_CONTENT_TYPE)]}
                ],
                "filters": [isvc_headers(isvc)],
                "backendRefs": [{**b, "port": grpc_port} for b in backends],
                "timeouts": {"request": REQUEST_TIMEOUT},
            },
            {**rules[0], "backendRefs": [{**b, "port": rest_port} for b in backends]},
        ]
    for route_name in (name, f"{name}-predictor"):
        out.append(
            {
                "apiVersion": "gateway.networking.k8s.io/v1",
                "kind": "HTTPRoute",
                "metadata": {"name": route_name, "namespace": ns, "labels": labels},
                "spec": {
                    "parentRefs": [
                        {
                            "group": "gateway.networking.k8s.io",
                            "kind": "Gateway",
                            "namespace": GATEWAY_NAMESPACE,
                            "name": GATEWAY_NAME,
                        }
                    ],
                    "hostnames": [host(route_name, ns)],
                    "rules": copy.deepcopy(rules),
                },
            }
        )
    return out


def reconcile(cluster: mesh.Cluster) -> None:
    """KServe's controller: write what every InferenceService needs, delete
    what it wrote for predictors that are gone. An object it updates keeps
    its place (its creation time); new ones come last."""
    wanted = {}
    for isvc in cluster.all("InferenceService"):
        for doc in kserve_objects(isvc):
            wanted[(doc["kind"], doc["metadata"]["namespace"], doc["metadata"]["name"])] = doc
    for key, doc in list(cluster.objects.items()):
        if is_kserve_owned(doc) and key not in wanted:
            del cluster.objects[key]
    cluster.objects.update(wanted)


def is_kserve_owned(doc: dict) -> bool:
    return OWNER in doc["metadata"].get("labels", {})


# --- Gateway API: what attaches, in which order, where a request lands -------


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


# --- The Envoy routes a gateway builds from them -----------------------------


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
            routes.append(route)
        vhosts.append({"name": hostname, "domains": [hostname, f"{hostname}:*"], "routes": routes})
    return {"name": f"{GATEWAY_NAMESPACE}/{GATEWAY_NAME}/http", "virtual_hosts": vhosts}


def upstreams(cluster: mesh.Cluster) -> dict[str, str]:
    """Envoy cluster -> the demo server that plays it: each predictor's
    Service is played by the server of the predictor's name (model-v1 or
    model-v2, envoy/envoy.yaml), its gRPC port by that version's gRPC
    server (model-v1-grpc, model-v2-grpc: envoy/grpc_models.py, which the
    test starts)."""
    out = {}
    for doc in cluster.all("Service"):
        if not is_kserve_owned(doc):
            continue
        service = f"{doc['metadata']['namespace']}/{doc['metadata']['name']}"
        server = doc["metadata"]["labels"]["serving.kserve.io/predictor"]
        for port in doc["spec"]["ports"]:
            out[cluster_name(service, port["port"])] = f"{server}-grpc" if _is_grpc_port(port) else server
    return out


def services(cluster: mesh.Cluster) -> set[str]:
    return {f"{d['metadata']['namespace']}/{d['metadata']['name']}" for d in cluster.all("Service")}


# --- The plugin resource --------------------------------------------------------


def plugin(cluster: mesh.Cluster) -> dict:
    """The canary-selector resource in force (exactly one)."""
    docs = [d for kinds in PLUGIN_KINDS.values() for kind in kinds for d in cluster.all(kind)]
    assert len(docs) == 1, f"expected one plugin resource, found {[d['kind'] for d in docs]}"
    return docs[0]


def plugin_config(doc: dict) -> dict:
    """The canary-selector config of a WasmPlugin, TrafficExtension or
    EnvoyExtensionPolicy."""
    if doc["kind"] == "EnvoyExtensionPolicy":
        (wasm,) = doc["spec"]["wasm"]
        return wasm["config"]
    return mesh.wasm_fields(doc)["pluginConfig"]


def target_refs(doc: dict) -> list[dict]:
    return doc["spec"].get("targetRefs", [])


# --- Do the pieces agree? ----------------------------------------------------


def inconsistencies(cluster: mesh.Cluster) -> list[str]:
    """What would make the rollout misroute, on the Gateway's implementation:
    a version that is no predictor, a header value routed to another
    predictor's Service, a request without the header that does not land on
    the stable predictor, host names that are not the InferenceService's, a
    plugin that does not run in this Gateway."""
    problems = []
    gw = gateway(cluster)
    implementation = gw["spec"]["gatewayClassName"]
    (isvc,) = cluster.all("InferenceService")
    ns = isvc["metadata"]["namespace"]
    kserve_hosts = [host(isvc["metadata"]["name"], ns), host(f"{isvc['metadata']['name']}-predictor", ns)]
    by_predictor = {name: f"{ns}/{service}" for name, service, _ in predictors(isvc)}
    stable = predictors(isvc)[0][0]

    doc = plugin(cluster)
    if doc["kind"] not in PLUGIN_KINDS[implementation]:
        problems.append(f"a {doc['kind']} does nothing on a Gateway of class {implementation}")
    refs = [(r.get("group"), r["kind"], r["name"]) for r in target_refs(doc)]
    if (
        refs != [("gateway.networking.k8s.io", "Gateway", GATEWAY_NAME)]
        or doc["metadata"]["namespace"] != GATEWAY_NAMESPACE
    ):
        problems.append(
            f"the plugin must target the Gateway {GATEWAY_NAMESPACE}/{GATEWAY_NAME} from its namespace, not {refs}"
        )
    config = plugin_config(doc)
    header = config.get("routingHeader", mesh.DEFAULT_ROUTING_HEADER).lower()
    versions = [v["name"] for v in config["versions"]]
    for v in versions:
        if v not in by_predictor:
            problems.append(f"version {v!r} is no predictor of {isvc['metadata']['name']} ({', '.join(by_predictor)})")
    if versions and versions[0] != stable:
        problems.append(
            f"the first version is {versions[0]!r}; the stable predictor (spec.predictor.name) is {stable!r}"
        )

    ours = [r for r, _ in attached(cluster) if not is_kserve_owned(r)]
    if len(ours) != 1:
        return problems + [f"expected one HTTPRoute of ours on the Gateway, found {len(ours)}"]
    (route,) = ours
    if sorted(route["spec"].get("hostnames", [])) != sorted(kserve_hosts):
        problems.append(
            f"the HTTPRoute's hostnames {route['spec'].get('hostnames')} are not KServe's for the InferenceService, {kserve_hosts}"
        )
    if route["metadata"]["namespace"] != ns:
        problems.append("the HTTPRoute must be in the InferenceService's namespace (its Services', no ReferenceGrant)")
    for i, rule in enumerate(route["spec"].get("rules", [])):
        for m in rule.get("matches", []):
            names = [h["name"].lower() for h in m.get("headers", [])]
            if names != [header]:
                problems.append(f"rule {i} matches headers {names}; the plugin writes {header!r}")
            if m.get("path") != {"type": "RegularExpression", "value": FALLBACK_PATH}:
                problems.append(
                    f"rule {i}: path {m.get('path')} is not KServe's ({FALLBACK_PATH}), so its precedence depends on the gateway"
                )

    for hostname in kserve_hosts:
        for v in versions:
            e = resolve(cluster, implementation, hostname, {header: v})
            got = sorted(backends(e)) if e else None
            if got != [by_predictor.get(v)]:
                problems.append(f"{hostname}: {header}: {v} lands on {got}, not {by_predictor.get(v)}")
        e = resolve(cluster, implementation, hostname, {})
        got = sorted(backends(e)) if e else None
        if got != [by_predictor[stable]]:
            problems.append(
                f"{hostname}: a request without {header} lands on {got}, not only on {by_predictor[stable]}"
            )
    for e in (e for es in entries(cluster, implementation).values() for e in es):
        missing = set(backends(e)) - services(cluster)
        if missing:
            problems.append(f"{e.name} routes to {sorted(missing)}, which KServe did not make")
    return problems


# --- The gateways' Envoys -----------------------------------------------------


def istio_gateway(cluster: mesh.Cluster, workdir: Path, **kwargs) -> Envoy:
    """Istio's gateway for the Gateway: its routes as Istio orders them, the
    plugin over ECDS named <namespace>.<name> (mesh.istio_proxy). Not started."""
    return mesh.istio_proxy(
        plugin(cluster),
        workdir,
        route_config(cluster, ISTIO, services(cluster)),
        upstreams(cluster),
        f"outbound_0.0.0.0_{SERVICE_PORT}",
        **kwargs,
    )


WASM_FILTER = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
FILTER_CONFIG = "type.googleapis.com/envoy.config.route.v3.FilterConfig"


def eg_config_text(config: dict) -> str:
    """A policy's `config` as Envoy Gateway hands it to Envoy: the JSON the
    API server stored (its keys sorted, numbers as written), as it is."""
    return json.dumps(config, sort_keys=True, separators=(",", ":"))


def eg_names(policy: dict, index: int = 0) -> dict[str, str]:
    """Envoy Gateway's names for wasm[index] of an EnvoyExtensionPolicy: the
    HTTP filter, the VM (one per filter: VMs are never shared) and the
    plugin (wasm[].name, else the IR name)."""
    meta = policy["metadata"]
    ir_name = f"envoyextensionpolicy/{meta['namespace']}/{meta['name']}/wasm/{index}"
    return {
        "filter": f"envoy.filters.http.wasm/{ir_name}",
        "vm_id": ir_name,
        "plugin": policy["spec"]["wasm"][index].get("name", ir_name),
    }


class _ModuleServer:
    """Envoy Gateway serves each proxy the module it fetched, over HTTP, with
    its sha256: this plays that server, for one file."""

    def __init__(self, module: Path):
        body = module.read_bytes()
        self.sha256 = hashlib.sha256(body).hexdigest()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                self.send_response(200)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@dataclass
class EnvoyGatewayProxy(Envoy):
    """The harness' Envoy shaped like the proxy Envoy Gateway runs for the
    Gateway: the gateway's listener comes over LDS (from a file replaced
    atomically, as the harness does for ECDS), with the Wasm filter inline
    in it, disabled by default and enabled on the routes of what the policy
    targets (every route, for the Gateway); the module fetched over
    HTTP with its sha256; a VM of its own; `fail_open` from failOpen; the
    config a StringValue of the raw JSON. A push is a listener update.
    `plugin_config` None: the listener Envoy Gateway writes when it cannot
    fetch the module of a failOpen policy, without the filter."""

    policy: dict = field(default_factory=dict)
    routes: dict = field(default_factory=dict)
    upstream_clusters: dict = field(default_factory=dict)
    # Another (disabled) filter in the listener, as another policy adds one:
    # a listener update that leaves the plugin's config as it is.
    extra_filter: dict | None = None
    module_server: _ModuleServer | None = None

    @property
    def ecds_stats(self) -> str:
        return "listener_manager.lds"

    @property
    def names(self) -> dict[str, str]:
        return eg_names(self.policy)

    def start(self, timeout: float = 60.0) -> "EnvoyGatewayProxy":
        self.module_server = self.module_server or _ModuleServer(self.wasm)
        super().start(timeout)
        self._await_warm(timeout)
        return self

    def _await_warm(self, timeout: float) -> None:
        """Until no listener is warming (the module fetched, the VMs up)."""
        deadline = time.monotonic() + timeout
        while self.gauge("listener_manager.total_listeners_warming") != 0:
            assert time.monotonic() < deadline, f"the listener did not warm:\n{self.logs()[-3000:]}"
            time.sleep(0.05)

    def stop(self) -> None:
        super().stop()
        if self.module_server:
            self.module_server.close()
            self.module_server = None

    def _bootstrap(self) -> dict:
        cfg = super()._bootstrap()
        static = cfg["static_resources"]
        (self._listener,) = [x for x in static["listeners"] if x["name"] == "ingress"]
        static["listeners"].remove(self._listener)
        mesh.add_upstreams(cfg, self.upstream_clusters)
        # Envoy Gateway's bootstrap names its module server wasm_cluster.
        address = {"socket_address": {"address": "127.0.0.1", "port_value": self.module_server.port}}
        static["clusters"].append(
            {
                "name": "wasm_cluster",
                "connect_timeout": "1s",
                "load_assignment": {
                    "cluster_name": "wasm_cluster",
                    "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
                },
            }
        )
        self.lds_path = self.ecds_dir / "lds.json"
        cfg["dynamic_resources"] = {
            "lds_config": {
                "resource_api_version": "V3",
                "path_config_source": {"path": str(self.lds_path), "watched_directory": {"path": str(self.ecds_dir)}},
            }
        }
        return cfg

    def targets(self, route_name: str) -> bool:
        """Whether the policy's filter is enabled on a route: every route of
        the listener for a Gateway target, the routes of an HTTPRoute target
        (Envoy Gateway matches them by route name prefix)."""
        ns = self.policy["metadata"]["namespace"]
        for ref in target_refs(self.policy):
            if ref["kind"] == "Gateway" or route_name.startswith(f"httproute/{ns}/{ref['name']}/"):
                return True
        return False

    def wasm_filter(self, config_text: str) -> dict:
        (wasm,) = self.policy["spec"]["wasm"]
        names = self.names
        return {
            "name": names["filter"],
            "disabled": True,
            "typed_config": {
                "@type": WASM_FILTER,
                "config": {
                    "name": names["plugin"],
                    "root_id": wasm.get("rootID", ""),
                    "vm_config": {
                        "vm_id": names["vm_id"],
                        "runtime": "envoy.wasm.runtime.v8",
                        "code": {
                            "remote": {
                                "http_uri": {
                                    "uri": f"http://127.0.0.1:{self.module_server.port}/{names['vm_id']}.wasm",
                                    "cluster": "wasm_cluster",
                                    "timeout": "10s",
                                },
                                "sha256": self.module_server.sha256,
                            }
                        },
                    },
                    "configuration": {"@type": ecds.STRING_VALUE, "value": config_text},
                    "fail_open": wasm.get("failOpen", False),
                },
            },
        }

    def listener(self, plugin_config: str | None) -> dict:
        listener = copy.deepcopy(self._listener)
        listener["@type"] = LISTENER
        hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["stat_prefix"] = f"http-{SERVICE_PORT}"
        filters = [self.wasm_filter(plugin_config)] if plugin_config is not None else []
        if self.extra_filter:
            filters.append(self.extra_filter)
        hcm["route_config"] = copy.deepcopy(self.routes)
        if plugin_config is not None:
            for vh in hcm["route_config"]["virtual_hosts"]:
                for route in vh["routes"]:
                    if self.targets(route["name"]):
                        route["typed_per_filter_config"] = {
                            self.names["filter"]: {"@type": FILTER_CONFIG, "config": {}}
                        }
        hcm["http_filters"] = filters + [hcm["http_filters"][-1]]  # ..., router
        return listener

    def _write_ecds(self, plugin_config: str | dict | None) -> None:
        text = (
            plugin_config if plugin_config is None or isinstance(plugin_config, str) else eg_config_text(plugin_config)
        )
        doc = {"version_info": str(time.monotonic_ns()), "resources": [self.listener(text)]}
        ecds.write_atomically(str(self.lds_path), doc)

    def push(self, plugin_config: str | dict | None, timeout: float = 20.0) -> bool:
        """A listener update carrying this config (None: without the
        filter); True once Envoy accepted it and the new listener serves."""
        accepted = self._push(lambda: self._write_ecds(plugin_config), timeout)
        if accepted:
            self._await_warm(timeout)
        return accepted

    def gauge(self, name: str) -> int:
        for line in self._admin(f"/stats?filter=^{re.escape(name)}$").splitlines():
            if line.startswith(name + ": "):
                return int(line.split(": ", 1)[1])
        raise KeyError(name)


def envoy_gateway(cluster: mesh.Cluster, workdir: Path, **kwargs) -> EnvoyGatewayProxy:
    """Envoy Gateway's proxy for the Gateway: its routes as Envoy Gateway
    orders them, the policy's filter inline in the listener. Not started."""
    policy = plugin(cluster)
    return EnvoyGatewayProxy(
        workdir,
        eg_config_text(plugin_config(policy)),
        policy=policy,
        routes=route_config(cluster, ENVOY_GATEWAY, services(cluster)),
        upstream_clusters=upstreams(cluster),
        **kwargs,
    )


def gateway_proxy(cluster: mesh.Cluster, workdir: Path, **kwargs) -> Envoy:
    """The Envoy of the Gateway's implementation, for this cluster."""
    if gateway(cluster)["spec"]["gatewayClassName"] == ISTIO:
        return istio_gateway(cluster, workdir, **kwargs)
    return envoy_gateway(cluster, workdir, **kwargs)


# --- Driving a gateway in tests ------------------------------------------------

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


# --- Many models: one plugin, a rollout per InferenceService ------------------


def rollout_for(config: dict, authority: str) -> dict | None:
    """The rollout a request for `authority` takes (docs/many-models.md):
    the most specific host pattern (exact, the longest `*.` suffix, `*`),
    port and letter case ignored; the whole config when it has no
    `rollouts`; None when no rollout takes it. Path prefixes are not
    modelled (the manifests here have none)."""
    if "rollouts" not in config:
        return config
    hostname = authority.rsplit(":", 1)[0] if ":" in authority else authority
    hostname = hostname.lower().rstrip(".")

    def rank(pattern: str) -> int | None:
        if pattern == hostname:
            return 1 << 20
        if pattern.startswith("*.") and hostname.endswith(pattern[1:]):
            return len(pattern)
        return 0 if pattern == "*" else None

    ranked = [(rank(p.lower()), r) for r in config["rollouts"] for p in r["hosts"]]
    ranked = [(k, r) for k, r in ranked if k is not None]
    return max(ranked, key=lambda kr: kr[0])[1] if ranked else None


def isvc_hosts(isvc: dict) -> list[str]:
    """KServe's two host names for an InferenceService: its URL's, the predictor's."""
    name, ns = isvc["metadata"]["name"], isvc["metadata"]["namespace"]
    return [host(name, ns), host(f"{name}-predictor", ns)]


# --- The runbooks' steps (docs/kserve.md, docs/kserve-many-models.md) --------

# A step's label ends with the gateway it is for; a step without is for both.
GATEWAY_SUFFIXES = {" on Istio": ISTIO, " on Envoy Gateway": ENVOY_GATEWAY}


def gateway_of(label: str) -> str | None:
    """The gateway a step is for (its label says), None for both."""
    return next((g for suffix, g in GATEWAY_SUFFIXES.items() if label.endswith(suffix)), None)


def step_name(label: str) -> str:
    return next((label.removesuffix(s) for s in GATEWAY_SUFFIXES if label.endswith(s)), label)


def steps_for(section: str, gateway_class: str) -> list[mesh.Step]:
    """The section's steps that run on `gateway_class`, in order."""
    return [s for s in mesh.readme_steps(section) if gateway_of(s.label) in (None, gateway_class)]


def weight_of(config: dict, version: str) -> float:
    """A version's weight in a rollout's config (0 when it is not listed)."""
    return sum(v["weight"] for v in config["versions"] if v["name"] == version)


class Runbook:
    """Runs a runbook's commands against the simulated cluster and the
    gateway's real Envoy kept in step with it: kubectl applies and patches
    change the cluster as the API server and KServe's controller would, each
    object validated again; then `changed` brings the gateway in line. Each
    curl must print what the page says."""

    def __init__(self, start_gateway, gateway_class: str):
        self.start_gateway = start_gateway
        self.cluster = installed(gateway_class)
        self.envoy = None
        self.routes = None
        self.config = None
        self.labels: list[str] = []

    def run(self, step: mesh.Step) -> None:
        changed = False
        for part in step.line.split(" && "):
            changed |= self.command(shlex.split(part), step)
        if not changed:
            return
        self.labels.append(step_name(step.label))
        reconcile(self.cluster)
        for doc in self.cluster.objects.values():
            assert mesh.validate(doc) == [], (step.line, doc["kind"], doc["metadata"]["name"])
        self.changed(step)

    def changed(self, step: mesh.Step) -> None:
        """What a step that changed the cluster does to the gateway."""
        raise NotImplementedError

    def command(self, argv: list[str], step: mesh.Step) -> bool:
        """Runs one command; whether it changed the cluster."""
        if argv[0] == "curl":
            self.curl(argv, step)
            return False
        assert argv[0] == "kubectl", step.line
        ns, args, _ = mesh.split_kubectl(argv)
        if mesh.apply_or_patch(self.cluster, ns, args):
            return True
        verb = args[0]
        if verb == "wait":
            kind, name = args[2].split("/")
            assert args[1] == "--for=condition=Ready" and mesh.kind_of(kind) == "InferenceService", step.line
            self.cluster.get("InferenceService", ns, name)
            return False
        raise AssertionError(f"the test does not know this command: {step.line}")

    def routes_now(self) -> str:
        """The gateway's routes for the cluster as it is (JSON, to compare)."""
        implementation = gateway(self.cluster)["spec"]["gatewayClassName"]
        return json.dumps(route_config(self.cluster, implementation, services(self.cluster)), sort_keys=True)

    def restart_gateway(self) -> None:
        """A new gateway proxy for new routes, started failed open."""
        if self.envoy:
            self.envoy.stop()
        self.envoy = self.start_gateway(self.cluster)
        fail_open(self.envoy, self.cluster)

    def curl(self, argv: list[str], step: mesh.Step) -> None:
        headers = dict(argv[i + 1].split(": ", 1) for i, a in enumerate(argv) if a == "-H")
        (url,) = [a for a in argv if a.startswith("http://")]
        address, path = url.removeprefix("http://").split("/", 1)
        assert address == "$INGRESS_HOST", url
        assert argv[argv.index("-w") + 1] == "%header{x-canary-version}\\n"
        body = argv[argv.index("-d") + 1].encode()
        r = self.envoy.request(headers, path="/" + path, body=body)
        assert r.status == 200
        assert r.served_by == r.header("x-canary-version"), "the response header names the version that answered"
        assert [r.header("x-canary-version")] == step.output, step.line
