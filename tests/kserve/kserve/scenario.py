"""The KServe scenario on each gateway: the gateway classes, the cluster after
KServe's install and after each runbook's deploy step, and the one
canary-selector resource in it (a WasmPlugin or TrafficExtension on Istio, an
EnvoyExtensionPolicy on Envoy Gateway)."""

from __future__ import annotations

from pathlib import Path

import mesh

from .controller import GATEWAY_NAME, GATEWAY_NAMESPACE, reconcile
from .paths import ENVOY_GATEWAY_DIR, ENVOY_GATEWAY_MANY_MODELS_DIR, GATEWAY_FIXTURE, KSERVE_DIR, MANY_MODELS_DIR

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
