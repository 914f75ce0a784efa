"""The schemas a manifest is checked against, as `kubectl apply` checks it:
each CRD's served version from the CRD folders (made strict the way kubectl's
field validation is), the ObjectMeta every object carries, and the CRD's
defaults filled in as the API server does before it validates. A test that
needs a CRD is skipped, with the reason, where the CRD folders are absent."""

from __future__ import annotations

import copy
import functools
import os
from pathlib import Path

import jsonschema
import pytest
import yaml

from .paths import ROOT

# The CRD schemas manifests are checked against: Istio 1.32, Gateway API
# v1.6.1 and Envoy Gateway v1.9.0, KServe at aaac4e2, from the directory
# CANARY_SELECTOR_CRDS (the Makefile's CRD_DIR), by default ../shared beside
# the checkout, each in its folder: istio-crds/, gateway-crds/, kserve-crds/
# (and llm-crds/, below). Where they are absent, the tests that need a CRD
# (to check a manifest against it, or to default an object as the API
# server does) are skipped with the reason; everything else runs.
CRD_ROOT = Path(os.environ.get("CANARY_SELECTOR_CRDS") or ROOT.parent / "shared")
CRD_DIRS = [CRD_ROOT / d for d in ("istio-crds", "gateway-crds", "kserve-crds")]
# The API groups those CRDs serve.
CRD_GROUPS = {"networking.istio.io", "extensions.istio.io", "gateway.networking.k8s.io",
              "gateway.envoyproxy.io", "serving.kserve.io"}

# Kubernetes ObjectMeta, as much of it as a manifest sets.
_DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
METADATA = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "maxLength": 253, "pattern": _DNS_SUBDOMAIN},
        "namespace": {"type": "string", "maxLength": 63, "pattern": _DNS_LABEL},
        "labels": {"type": "object", "additionalProperties": {"type": "string", "maxLength": 63}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


def strict(schema: dict) -> dict:
    """A CRD's structural schema (OpenAPI v3) as JSON Schema, strict the way
    `kubectl apply` is: a field the schema does not know is an error unless
    the object has x-kubernetes-preserve-unknown-fields (pluginConfig)."""
    out: dict = {}
    for key, value in schema.items():
        if key == "properties":
            out[key] = {name: strict(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            out[key] = strict(value)
        elif key in ("oneOf", "anyOf", "allOf"):
            out[key] = [strict(sub) for sub in value]
        elif key != "nullable":
            out[key] = value
    if schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if (
        schema.get("type") == "object"
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def _load(directories: list[Path]) -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) -> the served version's openAPIV3Schema, for every
    CRD in `directories`."""
    out = {}
    for directory in directories:
        for path in sorted(directory.glob("*.yaml")):
            # The InferenceService CRD is 2 MB: libyaml's loader when there is one.
            for crd in yaml.load_all(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
                if not crd or crd.get("kind") != "CustomResourceDefinition":
                    continue
                group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
                for version in crd["spec"]["versions"]:
                    if version.get("served"):
                        out[(f"{group}/{version['name']}", kind)] = version["schema"]["openAPIV3Schema"]
    return out


def _crds() -> tuple[dict[tuple[str, str], dict], str | None]:
    """(apiVersion, kind) -> the served version's openAPIV3Schema, for every
    CRD in CRD_DIRS; or nothing and why, where a directory is missing."""
    missing = [str(d) for d in CRD_DIRS if not d.is_dir()]
    if missing:
        return {}, (f"CRD schemas not found ({', '.join(missing)}): schema checks skipped; "
                    "point CRD_DIR at a folder holding istio-crds/, gateway-crds/ and kserve-crds/")
    return _load(CRD_DIRS), None


CRDS, CRDS_MISSING = _crds()

# The generative models' CRDs (KServe's LLMInferenceService, the Inference
# Extension's InferencePool), in their own folder beside the others,
# llm-crds/: read on first use (the LLMInferenceService CRD is 2.7 MB), and
# where it is absent, the tests that need them are skipped with the reason
# while the others run.
LLM_CRD_DIR = CRD_ROOT / "llm-crds"
LLM_KINDS = {"LLMInferenceService", "LLMInferenceServiceConfig", "InferencePool"}
LLM_CRD_GROUPS = {"inference.networking.k8s.io"}


@functools.cache
def llm_crds() -> tuple[dict[tuple[str, str], dict], str | None]:
    """The llm-crds/ schemas as CRDS holds the others; or nothing and why."""
    if not LLM_CRD_DIR.is_dir():
        return {}, (f"CRD schemas of generative models not found ({LLM_CRD_DIR}): their schema checks skipped; "
                    "point CRD_DIR at a folder holding llm-crds/ too")
    return _load([LLM_CRD_DIR]), None


def served(key: tuple[str, str]) -> dict | None:
    """The schema of (apiVersion, kind) from the folder its kind's CRDs are
    in (None: no CRD there serves it); the calling test is skipped, with the
    reason, where that folder is absent."""
    crds, missing = llm_crds() if key[1] in LLM_KINDS else (CRDS, CRDS_MISSING)
    if missing:
        pytest.skip(missing)
    return crds.get(key)


def crd(key: tuple[str, str]) -> dict:
    """The schema of (apiVersion, kind); the calling test is skipped, with
    the reason, where the CRD schemas are absent."""
    schema = served(key)
    if schema is None:
        raise KeyError(key)
    return schema


def defaulted(schema: dict, value):
    """`value` with the schema's defaults filled in, as the API server does
    before it validates (and stores) an object: a missing property with a
    `default` gets it, recursively."""
    if isinstance(value, dict):
        props = schema.get("properties", {})
        out = {}
        for name, sub in value.items():
            sub_schema = props.get(name) or schema.get("additionalProperties")
            out[name] = defaulted(sub_schema, sub) if isinstance(sub_schema, dict) else sub
        for name, sub_schema in props.items():
            if name not in out and "default" in sub_schema:
                out[name] = defaulted(sub_schema, copy.deepcopy(sub_schema["default"]))
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [defaulted(schema["items"], v) for v in value]
    return value


def schema_errors(schema: dict, doc) -> list[str]:
    """`doc`'s errors against a JSON Schema, each `path: message`, in path
    order (empty when valid)."""
    validator = jsonschema.Draft202012Validator(schema)
    return [
        f"{'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
        for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    ]
