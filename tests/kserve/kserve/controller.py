"""What KServe's controller writes for an InferenceService in Standard mode
with Gateway API ingress: a Service per predictor and the HTTPRoutes on
KServe's Gateway, with KServe's defaults (its inferenceservice-config), and
`reconcile()`, which keeps them in step with the InferenceServices."""

from __future__ import annotations

import copy

import mesh

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


def gateway(cluster: mesh.Cluster) -> dict:
    return cluster.get("Gateway", GATEWAY_NAMESPACE, GATEWAY_NAME)


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
        if is_grpc_port(port):
            port["appProtocol"] = GRPC_APP_PROTOCOL
    return ports


def is_grpc_port(port: dict) -> bool:
    name = port.get("name", "").lower()
    return port.get("appProtocol") == GRPC_APP_PROTOCOL or "grpc" in name or "h2c" in name


def protocol_ports(ports: list[dict]) -> tuple[int | None, int | None]:
    """(REST port, gRPC port) of a Service, the first of each kind
    (detectServiceProtocolPorts)."""
    rest = next((p["port"] for p in ports if not is_grpc_port(p)), None)
    grpc = next((p["port"] for p in ports if is_grpc_port(p)), None)
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
    """KServe's controllers: write what every InferenceService and
    LLMInferenceService (llm.py) needs, delete what they wrote for
    predictors and services that are gone. An object they update keeps its
    place (its creation time); new ones come last."""
    from .llm import llm_objects  # llm.py imports this module

    wanted = {}
    for isvc in cluster.all("InferenceService"):
        for doc in kserve_objects(isvc):
            wanted[(doc["kind"], doc["metadata"]["namespace"], doc["metadata"]["name"])] = doc
    services = cluster.all("LLMInferenceService")
    for llmisvc in services:
        for doc in llm_objects(llmisvc, services):
            wanted[(doc["kind"], doc["metadata"]["namespace"], doc["metadata"]["name"])] = doc
    for key, doc in list(cluster.objects.items()):
        if is_kserve_owned(doc) and key not in wanted:
            del cluster.objects[key]
    cluster.objects.update(wanted)


def is_kserve_owned(doc: dict) -> bool:
    from .llm import is_llm_owned

    return OWNER in doc["metadata"].get("labels", {}) or is_llm_owned(doc)


def isvc_hosts(isvc: dict) -> list[str]:
    """KServe's two host names for an InferenceService: its URL's, the predictor's."""
    name, ns = isvc["metadata"]["name"], isvc["metadata"]["namespace"]
    return [host(name, ns), host(f"{name}-predictor", ns)]
