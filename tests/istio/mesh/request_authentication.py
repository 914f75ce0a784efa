"""The RequestAuthentication (security.istio.io/v1) the way `kubectl apply`
and istiod would check it. ../shared holds no CRD of the security.istio.io
group, so its schema is written here from Istio's API reference
(istio.io/latest/docs/reference/config/security/request_authentication/):
every field of the spec with its type, unknown fields rejected as with the
CRD installed, plus the CRD's rules and istiod's webhook checks that a
manifest can break (one of selector, targetRef, targetRefs; no target in
another namespace; one of jwks,
jwksUri; a URL with an http or https scheme; a header name of token
characters; a JWKS that parses).

What this does not check: the CRD's length bounds other than those below,
and whether istiod can fetch the jwksUri (a cluster matter)."""

from __future__ import annotations

import json
import re

from .schemas import METADATA, schema_errors

_STRING = {"type": "string", "minLength": 1}
_STRINGS = {"type": "array", "items": _STRING}
_TARGET_REF = {
    "type": "object",
    "required": ["kind", "name"],
    "additionalProperties": False,
    "properties": {
        "group": {"type": "string", "pattern": r"^$|^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"},
        "kind": {"type": "string", "pattern": r"^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$", "maxLength": 63},
        "name": {"type": "string", "minLength": 1, "maxLength": 253},
        "namespace": {"type": "string"},
    },
}
_JWT_RULE = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "issuer": _STRING,
        "audiences": _STRINGS,
        "jwksUri": {"type": "string", "minLength": 1, "maxLength": 2048},
        "jwks": {"type": "string"},
        "fromHeaders": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name"],
                "additionalProperties": False,
                "properties": {"name": _STRING, "prefix": {"type": "string"}},
            },
        },
        "fromParams": _STRINGS,
        "fromCookies": _STRINGS,
        "outputPayloadToHeader": {"type": "string"},
        "forwardOriginalToken": {"type": "boolean"},
        "outputClaimToHeaders": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["header", "claim"],
                "additionalProperties": False,
                "properties": {
                    "header": {"type": "string", "minLength": 1, "pattern": r"^[-_A-Za-z0-9]+$"},
                    "claim": _STRING,
                },
            },
        },
        "timeout": {"type": "string", "pattern": r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$"},
        "spaceDelimitedClaims": {"type": "array", "maxItems": 64, "items": _STRING},
    },
}
REQUEST_AUTHENTICATION = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"enum": ["security.istio.io/v1", "security.istio.io/v1beta1"]},
        "kind": {"const": "RequestAuthentication"},
        "metadata": METADATA,
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "matchLabels": {"type": "object", "additionalProperties": {"type": "string", "maxLength": 63}},
                    },
                },
                "targetRef": _TARGET_REF,
                "targetRefs": {"type": "array", "maxItems": 16, "items": _TARGET_REF},
                "jwtRules": {"type": "array", "maxItems": 4096, "items": _JWT_RULE},
            },
        },
    },
}


def validate_request_authentication(doc: dict) -> list[str]:
    """Errors of a RequestAuthentication (empty when valid)."""
    errors = schema_errors(REQUEST_AUTHENTICATION, doc)
    if errors:
        return errors
    spec = doc["spec"]
    if sum(key in spec for key in ("selector", "targetRef", "targetRefs")) > 1:
        errors.append("spec: only one of targetRefs or selector can be set")
    refs = spec.get("targetRefs", []) + ([spec["targetRef"]] if "targetRef" in spec else [])
    for ref in refs:
        if ref.get("namespace"):
            errors.append("spec: targetRefs: cross namespace referencing is not currently supported")
    for i, rule in enumerate(spec.get("jwtRules", [])):
        at = f"spec.jwtRules.{i}"
        if "jwks" in rule and "jwksUri" in rule:
            errors.append(f"{at}: only one of jwks or jwksUri can be set")
        if not rule.get("issuer") and not rule.get("jwksUri"):
            errors.append(f"{at}: issuer or jwksUri must be non-empty string")
        if "jwksUri" in rule and not re.match(r"^https?://[^/\s]+", rule["jwksUri"]):
            errors.append(f"{at}.jwksUri: url must have scheme http:// or https://")
        if "jwks" in rule:
            try:
                keys = json.loads(rule["jwks"]).get("keys")
            except (ValueError, AttributeError):
                keys = None
            if not isinstance(keys, list):
                errors.append(f"{at}.jwks: jwks parse error: not a JSON Web Key Set")
    return errors
