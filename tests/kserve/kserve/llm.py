"""What KServe's controller writes for an LLMInferenceService
(serving.kserve.io/v1alpha2, kserve at aaac4e2) on its shared Gateway, as
far as routing goes: the InferencePool and the workload Service of each
service, and its HTTPRoute `<name>-kserve-route` rendered from the template
config/llmisvcconfig/config-llm-router-route.yaml, with a route group's
weighted backendRefs (pkg/controller/v1alpha2/llmisvc/router_group*.go).

- The model's name on the Gateway is `publishers/<namespace>/models/<model>`
  (`fully_qualified`, router_discovery_filter.go's fullyQualifiedModelName),
  `<model>` being spec.model.name, which defaults to the service's name
  (llm_inference_service_defaults.go). KServe's model-routing rule matches
  it in the header the ingress config names (`MODEL_HEADER`, the default of
  modelBasedRoutingHeaderName), which KServe never writes.
- The model-routing matches are kept because the presets set
  spec.annotations serving.kserve.io/model-based-routing-enabled: "true"
  (config-llm-template.yaml; isModelBasedRoutingEnabled, config_merge.go):
  modelled as always on.
- A route group (spec.router.route.group): the members of the namespace with
  that group and the same model names, by name (resolveGroupMembers), each a
  backendRef to its InferencePool on port 8000 with its weight (0 when
  unset), given to every rule of each member's HTTPRoute that has a backend
  of the controller's, but the member's own /<namespace>/<name>/... rules
  (rewriteRulesForGroup). Every member is taken as routable (ready).

Not modelled: the endpoint picker (the InferencePool's EPP, an ext_proc the
gateway calls to pick a pod: the tests play each pool by one model server),
TLS to the pods, the EPP's own Deployment and Service, status.
"""

from __future__ import annotations

import copy

from .controller import GATEWAY_NAME, GATEWAY_NAMESPACE

MODEL_HEADER = "X-Gateway-Model-Name"  # modelBasedRoutingHeaderName's default (configmap.go)
POOL_GROUP = "inference.networking.k8s.io"  # InferencePool v1, once the route has migrated to it
POOL_PORT = 8000
EPP_PORT = 9002
PART_OF = {"app.kubernetes.io/part-of": "llminferenceservice"}
ROUTING_GROUP_LABEL = "serving.kserve.io/routing-group"
# The OpenAI-style endpoints KServe's template routes (each with and without
# a trailing slash in the model-routing rule).
ENDPOINTS = ("/v1/completions", "/v1/chat/completions", "/v1/responses", "/v1/messages")
MODEL_ROUTING_PATHS = tuple(p for e in ENDPOINTS for p in (e, e + "/"))


def model_name(llmisvc: dict) -> str:
    """spec.model.name, defaulted to the service's name."""
    return llmisvc["spec"].get("model", {}).get("name") or llmisvc["metadata"]["name"]


def fully_qualified(namespace: str, model: str) -> str:
    """The model's name on KServe's shared Gateway, the header value its
    model-routing rule matches."""
    return f"publishers/{namespace}/models/{model}"


def pool_name(llmisvc: dict) -> str:
    return f"{llmisvc['metadata']['name']}-inference-pool"


def workload_service(llmisvc: dict) -> str:
    return f"{llmisvc['metadata']['name']}-kserve-workload-svc"


def is_llm_owned(doc: dict) -> bool:
    """What KServe's controller wrote for an LLMInferenceService."""
    labels = doc["metadata"].get("labels", {})
    return labels.get("app.kubernetes.io/part-of") == PART_OF["app.kubernetes.io/part-of"] and doc["kind"] in (
        "InferencePool",
        "Service",
        "HTTPRoute",
    )


def _pool_ref(name: str, weight: int | None = None) -> dict:
    ref = {"group": POOL_GROUP, "kind": "InferencePool", "name": name, "port": POOL_PORT}
    return ref if weight is None else {**ref, "weight": weight}


def _service_ref(name: str) -> dict:
    return {"kind": "Service", "name": name, "port": POOL_PORT, "weight": 1}


NO_TIMEOUT = {"backendRequest": "0s", "request": "0s"}


def template_rules(llmisvc: dict) -> list[dict]:
    """config-llm-router-route.yaml's rules for the service, in its order."""
    ns, name = llmisvc["metadata"]["namespace"], llmisvc["metadata"]["name"]
    pool, svc = pool_name(llmisvc), workload_service(llmisvc)
    fq = fully_qualified(ns, model_name(llmisvc))

    def rewrite(replacement: str) -> dict:
        return {
            "type": "URLRewrite",
            "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": replacement}},
        }

    def prefix_rule(rule_name: str, prefix: str, replacement: str, backend: dict) -> dict:
        return {
            "name": rule_name,
            "backendRefs": [backend],
            "matches": [{"path": {"type": "PathPrefix", "value": prefix}}],
            "filters": [rewrite(replacement)],
            "timeouts": dict(NO_TIMEOUT),
        }

    slug = {"/v1/completions": "completions", "/v1/chat/completions": "chat-completions",
            "/v1/responses": "responses", "/v1/messages": "messages"}
    rules = [prefix_rule(f"v1-{slug[e]}-path", f"/{ns}/{name}{e}", e, _pool_ref(pool, 1)) for e in ENDPOINTS]
    rules.append(
        {
            "name": "v1-model-routing",
            "backendRefs": [_pool_ref(pool, 1)],
            "matches": [
                {"path": {"type": "Exact", "value": p}, "headers": [{"type": "Exact", "name": MODEL_HEADER, "value": fq}]}
                for p in MODEL_ROUTING_PATHS
            ],
            "timeouts": dict(NO_TIMEOUT),
        }
    )
    rules += [
        prefix_rule(f"v1-{slug[e]}-publisher-path", f"/{fq}{e}", e, _pool_ref(pool, 1)) for e in ENDPOINTS
    ]
    rules.append(prefix_rule("v1-publisher-path-catch-all", f"/{fq}", "/", _service_ref(svc)))
    rules.append(prefix_rule("v1-catch-all-path", f"/{ns}/{name}", "/", _service_ref(svc)))
    rules.append(
        {
            "name": "v1-catch-all-model-routing",
            "backendRefs": [_service_ref(svc)],
            "matches": [{"headers": [{"type": "Exact", "name": MODEL_HEADER, "value": fq}]}],
            "timeouts": dict(NO_TIMEOUT),
        }
    )
    return rules


def group_members(llmisvc: dict, services: list[dict]) -> list[tuple[str, int]]:
    """(name, weight) of the service's route group members that serve the
    same model names, itself included, by name (none: not in a group)."""
    route = llmisvc["spec"].get("router", {}).get("route") or {}
    group = route.get("group")
    if group is None:
        return []
    ns = llmisvc["metadata"]["namespace"]
    out = []
    for m in services:
        m_route = m["spec"].get("router", {}).get("route") or {}
        if m["metadata"]["namespace"] == ns and m_route.get("group") == group and model_name(m) == model_name(llmisvc):
            out.append((m["metadata"]["name"], m_route.get("weight", 0)))
    return sorted(out)


def _grouped(rules: list[dict], llmisvc: dict, members: list[tuple[str, int]]) -> list[dict]:
    """rewriteRulesForGroup: every rule with a backend of the controller's,
    but the service's own /<namespace>/<name>/... ones, gets the weighted
    backendRefs of all members."""
    ns, name = llmisvc["metadata"]["namespace"], llmisvc["metadata"]["name"]
    own = f"/{ns}/{name}"
    mine = {pool_name(llmisvc), workload_service(llmisvc)}
    refs = [_pool_ref(f"{m}-inference-pool", w) for m, w in members]
    out = []
    for rule in rules:
        paths = [m.get("path", {}).get("value", "") for m in rule["matches"]]
        per_participant = any(p == own or p.startswith(own + "/") for p in paths)
        managed = any(b["name"] in mine for b in rule["backendRefs"])
        out.append({**rule, "backendRefs": copy.deepcopy(refs)} if managed and not per_participant else rule)
    return out


def llm_objects(llmisvc: dict, services: list[dict]) -> list[dict]:
    """What KServe writes for one LLMInferenceService (`services`: every
    LLMInferenceService of the cluster, for its route group)."""
    meta = llmisvc["metadata"]
    name, ns = meta["name"], meta["namespace"]
    route = llmisvc["spec"].get("router", {}).get("route")
    out = [
        {
            "apiVersion": f"{POOL_GROUP}/v1",
            "kind": "InferencePool",
            "metadata": {
                "name": pool_name(llmisvc),
                "namespace": ns,
                "labels": {**PART_OF, "app.kubernetes.io/name": name,
                           "app.kubernetes.io/component": "llminferenceservice-scheduler"},
            },
            # The scheduler preset, config-llm-scheduler.yaml.
            "spec": {
                "endpointPickerRef": {
                    "failureMode": "FailOpen",
                    "kind": "Service",
                    "name": f"{name}-epp-service",
                    "port": {"number": EPP_PORT},
                },
                "selector": {
                    "matchLabels": {**PART_OF, "app.kubernetes.io/name": name, "kserve.io/component": "workload"}
                },
                "targetPorts": [{"number": POOL_PORT}],
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": workload_service(llmisvc),
                "namespace": ns,
                "labels": {**PART_OF, "app.kubernetes.io/name": name,
                           "app.kubernetes.io/component": "llminferenceservice-workload"},
            },
            "spec": {
                "type": "ClusterIP",
                "selector": {**PART_OF, "app.kubernetes.io/name": name, "kserve.io/component": "workload"},
                "ports": [
                    {"name": "http", "protocol": "TCP", "appProtocol": "http", "port": POOL_PORT, "targetPort": POOL_PORT}
                ],
            },
        },
    ]
    if route is None or route.get("http", {}).get("refs"):
        return out  # no managed HTTPRoute
    rules = template_rules(llmisvc)
    members = group_members(llmisvc, services)
    labels = {**PART_OF, "app.kubernetes.io/name": name, "app.kubernetes.io/component": "llminferenceservice-router"}
    if members:
        rules = _grouped(rules, llmisvc, members)
        labels[ROUTING_GROUP_LABEL] = route["group"]
    out.append(
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "HTTPRoute",
            "metadata": {
                "name": f"{name}-kserve-route",
                "namespace": ns,
                "labels": labels,
                "annotations": {"serving.kserve.io/inference-pool-migrated": "v1"},
            },
            "spec": {
                "parentRefs": [
                    {
                        "group": "gateway.networking.k8s.io",
                        "kind": "Gateway",
                        "name": GATEWAY_NAME,
                        "namespace": GATEWAY_NAMESPACE,
                    }
                ],
                "rules": rules,
            },
        }
    )
    return out


def llm_server(doc: dict) -> str | None:
    """The LLMInferenceService whose model server a KServe-written
    InferencePool or workload Service leads to."""
    return doc["metadata"].get("labels", {}).get("app.kubernetes.io/name") if is_llm_owned(doc) else None
