"""A manifest against the schema `kubectl apply` would apply: a custom
resource (Istio, Gateway API, Envoy Gateway, KServe) against its CRD (its
defaults applied, unknown fields errors, its CEL rules evaluated), a
Kubernetes kind against Kubernetes' own schemas (kubernetes-validate), the
PrometheusRule against prometheus_rule.py, the RequestAuthentication against
request_authentication.py."""

from __future__ import annotations

import kubernetes_validate

from .cel import cel_errors
from .prometheus_rule import validate_prometheus_rule
from .request_authentication import validate_request_authentication
from .schemas import CRD_GROUPS, CRD_ROOT, LLM_CRD_GROUPS, METADATA, defaulted, schema_errors, served, strict

# Kubernetes releases whose schemas the Kubernetes kinds must pass: every
# minor from 1.30 to the newest kubernetes-validate ships.
K8S_VERSIONS = sorted(
    {v for v in kubernetes_validate.utils.all_versions() if tuple(map(int, v.split(".")[:2])) >= (1, 30)},
    key=lambda v: tuple(map(int, v.split("."))),
)


def validate_custom_resource(doc: dict) -> list[str]:
    """Errors of a custom resource against its CRD (empty when valid), after
    the CRD's defaults are applied, as the API server checks it."""
    key = (doc.get("apiVersion"), doc.get("kind"))
    definition = served(key)
    if definition is None:
        return [f"no CRD in {CRD_ROOT} serves {key[1]} {key[0]}"]
    schema = strict(definition)
    schema["properties"].update(
        apiVersion={"const": key[0]},
        kind={"const": key[1]},
        metadata=METADATA,
    )
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata"})
    doc = defaulted(definition, doc)
    return schema_errors(schema, doc) + cel_errors(definition, doc, "")


def validate_kubernetes(doc: dict) -> list[str]:
    """Errors of a built-in Kubernetes kind against Kubernetes' own schemas,
    strict (unknown fields rejected), for every version in K8S_VERSIONS."""
    errors = []
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            where = ".".join(map(str, e.absolute_path)) or "(root)"
            errors.append(f"Kubernetes {version}: {where}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            errors.append(e.message)
    return errors


def validate(doc: dict) -> list[str]:
    """A manifest against the schema `kubectl apply` would apply: a kind of a
    group with CRDs in ../shared against its CRD, the PrometheusRule against
    its schema (prometheus_rule.py), the RequestAuthentication against its
    schema (request_authentication.py: no CRD of its group is at hand), any
    other kind against Kubernetes' own schemas."""
    group = str(doc.get("apiVersion", "")).split("/")[0]
    if group in CRD_GROUPS or group in LLM_CRD_GROUPS:
        return validate_custom_resource(doc)
    if group == "monitoring.coreos.com":
        return validate_prometheus_rule(doc)
    if group == "security.istio.io":
        return validate_request_authentication(doc)
    return validate_kubernetes(doc)
