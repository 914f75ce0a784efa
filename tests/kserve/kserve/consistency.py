"""Do the KServe pieces agree? What would make the rollout misroute on the
Gateway's implementation: versions that are no predictors, a header value
routed to another predictor, a request without the header off the stable
predictor, host names that are not the InferenceService's, a plugin that
does not run in this Gateway."""

from __future__ import annotations

import mesh

from .controller import FALLBACK_PATH, GATEWAY_NAME, GATEWAY_NAMESPACE, gateway, host, is_kserve_owned, predictors
from .gateway_api import attached, backends, entries, resolve
from .gateway_routes import services
from .scenario import PLUGIN_KINDS, plugin, plugin_config, target_refs


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
