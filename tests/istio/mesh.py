"""The Istio side of the tests: the manifests in istio/ read the way a cluster
with Istio 1.32 reads them, and a real Envoy shaped like the client sidecar
Istio would build from them.

- `validate()`: a manifest against the schema `kubectl apply` would apply: a
  custom resource (Istio, Gateway API, Envoy Gateway, KServe) against its CRD
  in ../shared (the CRD's defaults applied, unknown fields are errors as with
  kubectl's strict field validation, the CRD's CEL rules evaluated by
  cel-python), a Kubernetes kind against Kubernetes' own schemas
  (kubernetes-validate), the PrometheusRule against the schema below (no
  Prometheus Operator CRD is at hand) and its rule groups against promtool.
- `Cluster`: the objects `kubectl apply -f` creates, changed by the README's
  `kubectl patch` and `delete` commands exactly as the API server would.
- `plugin_config_json()`: a WasmPlugin's pluginConfig as Istio delivers it.
- `sidecar()`: the harness' Envoy with the VirtualService's routes, the
  DestinationRule's subsets and the plugin over ECDS as Istio names it.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import celpy
import jsonschema
import pytest
import kubernetes_validate
import yaml
from celpy import celtypes

ROOT = Path(__file__).resolve().parents[2]
ISTIO_DIR = ROOT / "istio"
# The CRD schemas manifests are checked against: Istio 1.32, Gateway API
# v1.6.1 and Envoy Gateway v1.9.0, KServe at aaac4e2, from the directory
# CANARY_SELECTOR_CRDS (the Makefile's CRD_DIR), by default ../shared beside
# the checkout, each in its folder: istio-crds/, gateway-crds/, kserve-crds/.
# Where they are absent, the tests that need a CRD (to check a manifest
# against it, or to default an object as the API server does) are skipped
# with the reason; everything else runs.
CRD_ROOT = Path(os.environ.get("CANARY_SELECTOR_CRDS") or ROOT.parent / "shared")
CRD_DIRS = [CRD_ROOT / d for d in ("istio-crds", "gateway-crds", "kserve-crds")]
# The API groups those CRDs serve.
CRD_GROUPS = {"networking.istio.io", "extensions.istio.io", "gateway.networking.k8s.io",
              "gateway.envoyproxy.io", "serving.kserve.io"}
README = ROOT / "README.md"
# The pages whose marked sections the tests run: the README and the manual beside it.
DOC_PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
OBSERVABILITY_DIR = ISTIO_DIR / "observability"
DASHBOARD = OBSERVABILITY_DIR / "canary-selector-dashboard.json"
RULES = OBSERVABILITY_DIR / "canary-selector-rules.yaml"
MESH_RULES = OBSERVABILITY_DIR / "canary-selector-mesh-rules.yaml"
# Files under istio/ that are no Kubernetes object: the Grafana dashboard and
# the plain Prometheus rule file.
NOT_MANIFESTS = (DASHBOARD, RULES, MESH_RULES)

sys.path.insert(0, str(ROOT / "tests" / "e2e"))
import harness  # noqa: E402
from harness import Envoy  # noqa: E402

# Kubernetes releases whose schemas the Kubernetes kinds must pass: every
# minor from 1.30 to the newest kubernetes-validate ships.
K8S_VERSIONS = sorted(
    {v for v in kubernetes_validate.utils.all_versions() if tuple(map(int, v.split(".")[:2])) >= (1, 30)},
    key=lambda v: tuple(map(int, v.split("."))),
)

WASM_PLUGIN = "WasmPlugin"
TRAFFIC_EXTENSION = "TrafficExtension"
RBAC_FILTER = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"


# --- Reading manifests ------------------------------------------------------


def load(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def demo_bootstrap() -> dict:
    """envoy/envoy.yaml, the local demo the sidecar tests are built from."""
    return yaml.safe_load((ROOT / "envoy" / "envoy.yaml").read_text())


# Scenarios of their own inside istio/, which other tests check.
# The mesh verdict's EnvoyProxy is applied on its own (docs/mesh-verdict.md),
# not with the KServe steps' `kubectl apply -f envoy/gateway/`.
OTHER_SCENARIOS = (ISTIO_DIR / "kserve", ROOT / "envoy" / "gateway" / "mesh-verdict")


def manifest_files(directory: Path = ISTIO_DIR) -> list[Path]:
    """Every manifest under `directory`, subdirectories included, but those
    of another scenario inside it (istio/kserve/ is tests/kserve's) and the
    files that are not Kubernetes objects (the dashboard, the rule files)."""
    others = [d for d in OTHER_SCENARIOS if d != directory and d.is_relative_to(directory)]
    return sorted(
        p
        for p in directory.rglob("*")
        if p.suffix in (".yaml", ".yml", ".json")
        and p not in NOT_MANIFESTS
        and not any(p.is_relative_to(d) for d in others)
    )


def kubectl_files(path: Path) -> list[Path]:
    """What `kubectl apply -f path` reads: the file, or the directory's
    manifests (not its subdirectories; kubectl needs -R for those)."""
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and p.suffix in (".yaml", ".yml", ".json"))
    return [path]


# --- Schemas ------------------------------------------------------------------

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


def _strict(schema: dict) -> dict:
    """A CRD's structural schema (OpenAPI v3) as JSON Schema, strict the way
    `kubectl apply` is: a field the schema does not know is an error unless
    the object has x-kubernetes-preserve-unknown-fields (pluginConfig)."""
    out: dict = {}
    for key, value in schema.items():
        if key == "properties":
            out[key] = {name: _strict(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            out[key] = _strict(value)
        elif key in ("oneOf", "anyOf", "allOf"):
            out[key] = [_strict(sub) for sub in value]
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


def _crds() -> tuple[dict[tuple[str, str], dict], str | None]:
    """(apiVersion, kind) -> the served version's openAPIV3Schema, for every
    CRD in CRD_DIRS; or nothing and why, where a directory is missing."""
    missing = [str(d) for d in CRD_DIRS if not d.is_dir()]
    if missing:
        return {}, (f"CRD schemas not found ({', '.join(missing)}): schema checks skipped; "
                    "point CRD_DIR at a folder holding istio-crds/, gateway-crds/ and kserve-crds/")
    out = {}
    for directory in CRD_DIRS:
        for path in sorted(directory.glob("*.yaml")):
            # The InferenceService CRD is 2 MB: libyaml's loader when there is one.
            for crd in yaml.load_all(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
                if not crd or crd.get("kind") != "CustomResourceDefinition":
                    continue
                group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
                for version in crd["spec"]["versions"]:
                    if version.get("served"):
                        out[(f"{group}/{version['name']}", kind)] = version["schema"]["openAPIV3Schema"]
    return out, None


CRDS, CRDS_MISSING = _crds()


def crd(key: tuple[str, str]) -> dict:
    """The schema of (apiVersion, kind); the calling test is skipped, with
    the reason, where the CRD schemas are absent."""
    if CRDS_MISSING:
        pytest.skip(CRDS_MISSING)
    return CRDS[key]


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


# The CRDs' CEL rules (x-kubernetes-validations) run on cel-python, with the
# few functions of Kubernetes' CEL libraries that these rules call.
def _request_uri_scheme(text: str) -> str | None:
    """The scheme of `text` if Go's url.ParseRequestURI accepts it (an
    absolute URI or an absolute path), else None."""
    if re.search(r"[\s\x00-\x1f\x7f]", text):
        return None
    if text.startswith("/"):
        return ""
    scheme = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*):", text)
    return scheme.group(1).lower() if scheme else None


def _cel_url(text):
    if _request_uri_scheme(str(text)) is None:
        raise ValueError(f"url: invalid URL {text!r}")
    return text


CEL_FUNCTIONS = {
    "isURL": lambda text: celtypes.BoolType(_request_uri_scheme(str(text)) is not None),
    "url": _cel_url,
    "getScheme": lambda url: celtypes.StringType(_request_uri_scheme(str(url)) or ""),
    "split": lambda text, sep: celtypes.ListType([celtypes.StringType(p) for p in str(text).split(str(sep))]),
    "upperAscii": lambda text: celtypes.StringType(str(text).upper()),
}
_CEL = celpy.Environment()
_CEL_RESERVED = {
    "true", "false", "null", "in", "as", "break", "const", "continue", "else", "for", "function", "if",
    "import", "let", "loop", "package", "namespace", "return", "var", "void", "while",
}


@functools.cache
def _cel_program(rule: str):
    return _CEL.program(_CEL.compile(rule), functions=CEL_FUNCTIONS)


def _cel_name(name: str) -> str:
    """A property name as Kubernetes exposes it to CEL (`namespace` is
    `__namespace__`, `-` is `__dash__`, ...)."""
    if name in _CEL_RESERVED:
        return f"__{name}__"
    for raw, escaped in (("__", "__underscores__"), (".", "__dot__"), ("-", "__dash__"), ("/", "__slash__")):
        name = name.replace(raw, escaped)
    return name


def _cel_value(schema: dict, value):
    """`value` as a rule sees it: the properties of a structural object under
    their CEL names (map keys stay as they are)."""
    if isinstance(value, dict):
        props = schema.get("properties")
        if props is not None:
            return {_cel_name(k): _cel_value(props.get(k, {}), v) for k, v in value.items()}
        sub = schema.get("additionalProperties")
        return {k: _cel_value(sub if isinstance(sub, dict) else {}, v) for k, v in value.items()}
    if isinstance(value, list):
        return [_cel_value(schema.get("items", {}), v) for v in value]
    return value


def _cel_errors(schema: dict, value, path: str) -> list[str]:
    errors = []
    for check in schema.get("x-kubernetes-validations", []):
        rule = check["rule"]
        try:
            holds = _cel_program(rule).evaluate({"self": celpy.json_to_cel(_cel_value(schema, value))})
            reason = ""
        except celpy.CELEvalError as e:
            holds, reason = False, f" (evaluation error: {e.args[0]})"
        if not (isinstance(holds, celtypes.BoolType) and holds):
            errors.append(f"{path}: {check.get('message', rule)}{reason}")
    if isinstance(value, dict):
        for name, sub in value.items():
            sub_schema = schema.get("properties", {}).get(name) or schema.get("additionalProperties")
            if isinstance(sub_schema, dict):
                errors += _cel_errors(sub_schema, sub, f"{path}.{name}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, sub in enumerate(value):
            errors += _cel_errors(schema["items"], sub, f"{path}[{i}]")
    return errors


def validate_custom_resource(doc: dict) -> list[str]:
    """Errors of a custom resource against its CRD (empty when valid), after
    the CRD's defaults are applied, as the API server checks it."""
    key = (doc.get("apiVersion"), doc.get("kind"))
    if CRDS_MISSING:
        pytest.skip(CRDS_MISSING)
    if key not in CRDS:
        return [f"no CRD in {CRD_ROOT} serves {key[1]} {key[0]}"]
    definition = CRDS[key]
    schema = _strict(definition)
    schema["properties"].update(
        apiVersion={"const": key[0]},
        kind={"const": key[1]},
        metadata=METADATA,
    )
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata"})
    doc = defaulted(definition, doc)
    validator = jsonschema.Draft202012Validator(schema)
    errors = [
        f"{'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
        for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    ]
    return errors + _cel_errors(definition, doc, "")


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


# The PrometheusRule (monitoring.coreos.com/v1) as the Prometheus Operator's
# API reference describes it: groups of rules, nothing else, unknown fields
# rejected as `kubectl apply` does with the CRD installed. Written here, since
# ../shared has no Prometheus Operator CRD; promtool checks the rules
# themselves (the PromQL, the templates, `alert` xor `record`).
_DURATION = {"type": "string", "pattern": r"^(0|(\d+y)?(\d+w)?(\d+d)?(\d+h)?(\d+m)?(\d+s)?(\d+ms)?)$"}
_STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}
PROMETHEUS_RULE = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PrometheusRule"},
        "metadata": METADATA,
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "groups": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name"],
                        "additionalProperties": False,
                        "properties": {
                            "name": {"type": "string", "minLength": 1},
                            "interval": _DURATION,
                            "query_offset": _DURATION,
                            "limit": {"type": "integer"},
                            "labels": _STRINGS,
                            "partial_response_strategy": {"type": "string"},
                            "rules": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["expr"],
                                    "additionalProperties": False,
                                    "properties": {
                                        "alert": {"type": "string"},
                                        "record": {"type": "string"},
                                        "expr": {"type": ["string", "integer"]},
                                        "for": _DURATION,
                                        "keep_firing_for": _DURATION,
                                        "labels": _STRINGS,
                                        "annotations": _STRINGS,
                                    },
                                },
                            },
                        },
                    },
                }
            },
        },
    },
}


def promtool_check_rules(path: Path) -> list[str]:
    """`promtool check rules` on a rule file (empty when valid)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        raise RuntimeError("promtool not found: apt-get install prometheus")
    run = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    return [] if run.returncode == 0 else [f"promtool: {(run.stdout + run.stderr).strip()}"]


def validate_prometheus_rule(doc: dict) -> list[str]:
    validator = jsonschema.Draft202012Validator(PROMETHEUS_RULE)
    errors = [
        f"{'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
        for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    ]
    if errors:
        return errors
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        yaml.safe_dump(doc["spec"], f)
        f.flush()
        return promtool_check_rules(Path(f.name))


def validate(doc: dict) -> list[str]:
    """A manifest against the schema `kubectl apply` would apply: a kind of a
    group with CRDs in ../shared against its CRD, the PrometheusRule against
    the schema below, any other kind against Kubernetes' own schemas."""
    group = str(doc.get("apiVersion", "")).split("/")[0]
    if group in CRD_GROUPS:
        return validate_custom_resource(doc)
    if group == "monitoring.coreos.com":
        return validate_prometheus_rule(doc)
    return validate_kubernetes(doc)


# --- The cluster the README's commands act on -------------------------------


def merge_patch(target, patch):
    """RFC 7386 JSON merge patch: what `kubectl patch --type merge` does (a
    custom resource has no strategic merge)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def _pointer(path: str) -> list[str]:
    return [p.replace("~1", "/").replace("~0", "~") for p in path.split("/")[1:]]


def json_patch(target, ops: list[dict]):
    """RFC 6902 JSON patch (`kubectl patch --type json`): add, replace,
    remove, move and test."""
    doc = copy.deepcopy(target)
    for op in ops:
        if op["op"] == "move":
            value = doc
            for p in _pointer(op["from"]):
                value = value[int(p)] if isinstance(value, list) else value[p]
            doc = json_patch(doc, [{"op": "remove", "path": op["from"]}, {"op": "add", "path": op["path"], "value": value}])
            continue
        *parents, last = _pointer(op["path"])
        node = doc
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        key = (len(node) if last == "-" else int(last)) if isinstance(node, list) else last
        exists = key < len(node) if isinstance(node, list) else key in node
        if op["op"] != "add" and not exists:
            raise KeyError(f"{op['path']}: not found")
        if op["op"] == "add" and isinstance(node, list):
            node.insert(key, op["value"])
        elif op["op"] in ("add", "replace"):
            node[key] = op["value"]
        elif op["op"] == "remove":
            del node[key]
        elif op["op"] == "test":
            if node[key] != op["value"]:
                raise ValueError(f"{op['path']}: is {node[key]!r}, not {op['value']!r}")
        else:
            raise ValueError(f"unsupported JSON patch op {op['op']}")
    return doc


# kubectl's resource names for the kinds here (singular, plural, short).
KIND_NAMES = {
    "Namespace": {"namespace", "namespaces", "ns"},
    "Deployment": {"deployment", "deployments", "deploy"},
    "Service": {"service", "services", "svc"},
    "DestinationRule": {"destinationrule", "destinationrules", "dr"},
    "VirtualService": {"virtualservice", "virtualservices", "vs"},
    "WasmPlugin": {"wasmplugin", "wasmplugins"},
    "TrafficExtension": {"trafficextension", "trafficextensions"},
    "InferenceService": {"inferenceservice", "inferenceservices", "isvc"},
    "HTTPRoute": {"httproute", "httproutes"},
    "Gateway": {"gateway", "gateways", "gtw"},
    "EnvoyExtensionPolicy": {"envoyextensionpolicy", "envoyextensionpolicies", "eep"},
}


def kind_of(resource: str) -> str:
    for kind, names in KIND_NAMES.items():
        if resource.lower() in names:
            return kind
    raise ValueError(f"unknown resource type {resource!r}")


@dataclass
class Cluster:
    """The objects `kubectl apply` created, keyed by (kind, namespace, name)."""

    objects: dict[tuple[str, str, str], dict] = field(default_factory=dict)

    def apply(self, path: Path) -> None:
        for file in kubectl_files(path):
            for doc in load(file):
                ns = doc["metadata"].get("namespace", "")
                if doc["kind"] != "Namespace" and ("Namespace", "", ns) not in self.objects:
                    raise LookupError(f"{file.relative_to(ROOT)}: namespace {ns!r} not found (apply it first)")
                self.objects[(doc["kind"], ns, doc["metadata"]["name"])] = doc

    def get(self, kind: str, namespace: str, name: str) -> dict:
        try:
            return self.objects[(kind, namespace, name)]
        except KeyError:
            raise LookupError(f'{kind.lower()}s "{name}" not found in namespace {namespace!r}') from None

    def patched(self, kind: str, namespace: str, name: str, patch_type: str, patch: str) -> dict:
        """The object as the patch would leave it (`kubectl patch --dry-run=server -o yaml`)."""
        current = self.get(kind, namespace, name)
        body = json.loads(patch)
        if patch_type == "merge":
            return merge_patch(current, body)
        if patch_type == "json":
            return json_patch(current, body)
        raise ValueError(f"--type {patch_type}: a custom resource takes merge or json patches")

    def patch(self, kind: str, namespace: str, name: str, patch_type: str, patch: str) -> dict:
        patched = self.patched(kind, namespace, name, patch_type, patch)
        self.objects[(kind, namespace, name)] = patched
        return patched

    def delete(self, kind: str, namespace: str, name: str) -> None:
        self.get(kind, namespace, name)
        del self.objects[(kind, namespace, name)]

    def all(self, kind: str) -> list[dict]:
        return [doc for (k, _, _), doc in sorted(self.objects.items()) if k == kind]

    def one(self, kind: str) -> dict:
        docs = self.all(kind)
        assert len(docs) == 1, f"expected one {kind}, found {len(docs)}"
        return docs[0]

    def plugin(self) -> dict:
        """The canary-selector plugin resource in force (WasmPlugin or
        TrafficExtension; exactly one of them)."""
        docs = self.all(WASM_PLUGIN) + self.all(TRAFFIC_EXTENSION)
        assert len(docs) == 1, f"expected one WasmPlugin or TrafficExtension, found {len(docs)}"
        return docs[0]


def shipped() -> Cluster:
    """The cluster after the README's apply step: namespace.yaml, then istio/."""
    cluster = Cluster()
    cluster.apply(ISTIO_DIR / "namespace.yaml")
    cluster.apply(ISTIO_DIR)
    return cluster


# --- What Istio makes of the plugin resource ---------------------------------


def wasm_fields(plugin: dict) -> dict:
    """The Wasm fields of a WasmPlugin (spec) or a TrafficExtension (spec.wasm)."""
    return plugin["spec"]["wasm"] if plugin["kind"] == TRAFFIC_EXTENSION else plugin["spec"]


def filter_name(plugin: dict) -> str:
    """Istio's name for the Envoy filter and its ECDS resource."""
    return f"{plugin['metadata']['namespace']}.{plugin['metadata']['name']}"


def _as_struct(value):
    """A YAML value as a protobuf Struct holds it: every number a double."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, list):
        return [_as_struct(v) for v in value]
    return {k: _as_struct(v) for k, v in value.items()}


def _go_numbers(value):
    """Doubles the way Go's encoding/json (and so golang/protobuf's jsonpb)
    writes them: whole numbers without a fraction."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return int(value)
    if isinstance(value, list):
        return [_go_numbers(v) for v in value]
    if isinstance(value, dict):
        return {k: _go_numbers(v) for k, v in value.items()}
    return value


def plugin_config_json(plugin_config: dict, numbers: str = "jsonpb") -> str:
    """`pluginConfig` as Istio hands it to Envoy (the StringValue in the Wasm
    filter's `configuration`): the object is a protobuf Struct, so every
    number is a double, and istiod marshals it with golang/protobuf's jsonpb:
    compact, keys sorted, `<`, `>`, `&` escaped. numbers="jsonpb" writes
    doubles as Go does (90, 0.5); numbers="double" writes every number as a
    double (90.0), as other protobuf JSON encoders may."""
    struct = _as_struct(plugin_config)
    if numbers == "jsonpb":
        struct = _go_numbers(struct)
    elif numbers != "double":
        raise ValueError(numbers)
    text = json.dumps(struct, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


# --- What the filter decides (README, How a request is decided) -------------


def expected(config: dict, headers: dict) -> str | None:
    """The README's decision: the first matching rule, else the user's bucket
    (None for a request with no user id: a random pick)."""
    values = {k.lower(): v for k, v in headers.items()}
    for rule in config.get("rules", []):
        if set(rule["match"]) - {"headers"}:
            raise NotImplementedError(f"rule {rule['name']}: only header conditions are modelled here")
        if all(_holds(cond, values.get(h.lower())) for h, cond in rule["match"]["headers"].items()):
            return rule["version"]
    for header in config.get("stickiness", {}).get("userIdHeaders", []):
        user = values.get(header.lower(), "").strip(" \t")
        if user:
            return harness.expected_version(config, user)
    return None


def _holds(cond: dict, value: str | None) -> bool:
    if value is None:
        return False
    if "exact" in cond:
        return value == cond["exact"]
    if "prefix" in cond:
        return value.startswith(cond["prefix"])
    return re.fullmatch(cond["regex"], value) is not None


def assert_share(n_hits: int, n: int, percent: float):
    """n_hits of n requests is `percent`% of them, within 5 sigma."""
    p = percent / 100
    sigma = math.sqrt(n * p * (1 - p))
    assert abs(n_hits - n * p) <= 5 * sigma + 1e-9, f"{n_hits}/{n}, expected {percent}%"


# --- Do the pieces agree? ----------------------------------------------------


DEFAULT_ROUTING_HEADER = "x-canary-version"


def inconsistencies(cluster: Cluster) -> list[str]:
    """What would make the rollout misroute: a version without a route or a
    subset, routes on another header, a default route that is not the stable
    (first) version, a plugin that does not run where the routes are chosen."""
    problems = []
    plugin = cluster.plugin()
    config = wasm_fields(plugin)["pluginConfig"]
    header = config.get("routingHeader", DEFAULT_ROUTING_HEADER).lower()
    versions = [v["name"] for v in config["versions"]]
    vs, dr, svc = cluster.one("VirtualService"), cluster.one("DestinationRule"), cluster.one("Service")
    subsets = {s["name"] for s in dr["spec"]["subsets"]}
    host = service_host(cluster)

    if dr["spec"]["host"] != host or vs["spec"]["hosts"] != [host]:
        problems.append(f"the DestinationRule host and VirtualService hosts must be the Service, {host}")
    routed: dict[str, str] = {}  # version -> subset
    default = None
    for http in vs["spec"]["http"]:
        (dest,) = http["route"]
        d = dest["destination"]
        if d["host"] != host or d.get("port", {}).get("number", service_port(cluster)) != service_port(cluster):
            problems.append(f"route {http.get('name')!r} goes to {d['host']}:{d.get('port')}, not the model Service")
        if d["subset"] not in subsets:
            problems.append(f"route {http.get('name')!r} goes to subset {d['subset']!r}, not in the DestinationRule")
        if not http.get("match"):
            default = d["subset"]
            continue
        for m in http["match"]:
            for name, cond in m.get("headers", {}).items():
                if name.lower() != header:
                    problems.append(f"route {http.get('name')!r} matches header {name!r}, the plugin writes {header!r}")
                elif "exact" in cond:
                    routed.setdefault(cond["exact"], d["subset"])
    if vs["spec"]["http"] and vs["spec"]["http"][-1].get("match"):
        problems.append("the last VirtualService route must have no match (the default route)")
    for v in versions:
        if v not in routed:
            problems.append(f"version {v!r} has no VirtualService route on {header}: {v}")
    if versions and default != routed.get(versions[0]):
        problems.append(
            f"the default route goes to subset {default!r}; the stable version {versions[0]!r} is subset "
            f"{routed.get(versions[0])!r}"
        )

    # The plugin runs in the callers' sidecars, on their calls to the model.
    selector = plugin["spec"].get("selector", {}).get("matchLabels", {})
    pods = {d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"] for d in cluster.all("Deployment")}
    selected = sorted(n for n, labels in pods.items() if selector.items() <= labels.items())
    models = sorted(n for n, labels in pods.items() if svc["spec"]["selector"].items() <= labels.items())
    if not selected or set(selected) & set(models):
        problems.append(f"the plugin selects {selected}: it must run in callers' sidecars, not the model's {models}")
    for m in plugin["spec"].get("match", []):
        ports = [p["number"] for p in m.get("ports", [])]
        if m.get("mode") != "CLIENT" or ports not in ([], [service_port(cluster)]):
            problems.append(f"plugin match {m}: it must take the callers' outbound traffic to the model's port")
    return problems


# --- Istio's client sidecar, as a real Envoy --------------------------------


def service_port(cluster: Cluster) -> int:
    ports = cluster.one("Service")["spec"]["ports"]
    assert len(ports) == 1, "the model Service has one port"
    return ports[0]["port"]


def service_host(cluster: Cluster) -> str:
    svc = cluster.one("Service")["metadata"]
    return f"{svc['name']}.{svc['namespace']}.svc.cluster.local"


def subset_deployments(cluster: Cluster) -> dict[str, str]:
    """DestinationRule subset -> the one Deployment whose pods it selects
    (pods the Service selects, with the subset's labels)."""
    selector = cluster.one("Service")["spec"]["selector"]
    out = {}
    for subset in cluster.one("DestinationRule")["spec"]["subsets"]:
        wanted = {**selector, **subset.get("labels", {})}
        matches = [
            d["metadata"]["name"]
            for d in cluster.all("Deployment")
            if wanted.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(matches) == 1, f"subset {subset['name']} selects the pods of {matches or 'no Deployment'}"
        out[subset["name"]] = matches[0]
    return out


def _string_match(cond: dict) -> dict:
    (kind, value), *rest = cond.items()
    if rest or kind not in ("exact", "prefix", "regex"):
        raise NotImplementedError(f"header match {cond}")
    return {"safe_regex": {"regex": value}} if kind == "regex" else {kind: value}


def envoy_routes(cluster: Cluster) -> list[dict]:
    """The VirtualService's http routes as Istio writes them into the client
    sidecar's route table for the Service's port (the features it uses: header
    matches and one destination subset per route)."""
    vs = cluster.one("VirtualService")
    port = service_port(cluster)
    routes = []
    for http in vs["spec"]["http"]:
        unsupported = set(http) - {"name", "match", "route"}
        if unsupported:
            raise NotImplementedError(f"VirtualService http fields {sorted(unsupported)} (add them to envoy_routes)")
        (dest,) = http["route"]
        d = dest["destination"]
        cluster_name = f"outbound|{port}|{d['subset']}|{d['host']}"
        for m in http.get("match") or [{}]:
            if set(m) - {"headers"}:
                raise NotImplementedError(f"VirtualService match fields {sorted(m)}")
            headers = [{"name": h, "string_match": _string_match(c)} for h, c in m.get("headers", {}).items()]
            match = {"prefix": "/", **({"headers": headers} if headers else {})}
            routes.append({"name": http.get("name", ""), "match": match, "route": {"cluster": cluster_name}})
    return routes


# Istio's default stats inclusion (its Envoy bootstrap), plus the ECDS
# counters the harness waits on.
ISTIO_STATS_INCLUSION = [
    {"prefix": p} for p in ("reporter=", "cluster_manager", "listener_manager", "server", "cluster.xds-grpc", "wasm")
] + [
    {"suffix": s} for s in ("rbac.allowed", "rbac.denied", "shadow_allowed", "shadow_denied")
] + [{"prefix": "component"}, {"prefix": "extension_config_discovery"}]


# Istio's tag extractors (its bootstrap template,
# tools/packaging/common/envoy_bootstrap.json: `use_all_default_tags: false`,
# then these), with one `(<tag>=\.=(.*?);\.;)` per `extraStatTags` entry in
# place of EXTRA. Kept whole so a test sees what Istio's other extractors do
# to the filter's names.
ISTIO_STATS_TAGS = [
    ("cluster_name", r"^cluster\.((.+?(\..+?\.svc\.cluster\.local)?)\.)"),
    ("tcp_prefix", r"^tcp\.((.*?)\.)\w+?$"),
    ("response_code", r"_rq(_(\d{3}))$"),
    ("response_code_class", r"_rq(_(\dxx))$"),
    ("http_conn_manager_listener_prefix",
     r"^listener(?=\.).*?\.http\.(((?:[_.[:digit:]]*|[_\[\]aAbBcCdDeEfF[:digit:]]*))\.)"),
    ("http_conn_manager_prefix", r"^http\.(((?:[_.[:digit:]]*|[_\[\]aAbBcCdDeEfF[:digit:]]*))\.)"),
    ("listener_address", r"^listener\.(((?:[_.[:digit:]]*|[_\[\]aAbBcCdDeEfF[:digit:]]*))\.)"),
    ("mongo_prefix", r"^mongo\.(.+?)\.(collection|cmd|cx_|op_|delays_|decoding_)(.*?)$"),
    "EXTRA",
    ("cache", r"(cache\.(.+?)\.)"),
    ("component", r"(component\.(.+?)\.)"),
    ("tag", r"(tag\.(.+?);\.)"),
    ("wasm_filter", r"(wasm_filter\.(.+?)\.)"),
    ("authz_enforce_result", r"rbac(\.(allowed|denied))"),
    ("authz_dry_run_action", r"(\.istio_dry_run_(allow|deny)_)"),
    ("authz_dry_run_result", r"(\.shadow_(allowed|denied))"),
]

EXTRA_STAT_TAGS_ANNOTATION = "sidecar.istio.io/extraStatTags"


def extra_stat_tags(cluster: Cluster) -> list[str]:
    """The extraStatTags of the pods the plugin selects (the annotation on
    their pod template), as Istio's agent reads them into the bootstrap."""
    selector = cluster.plugin()["spec"]["selector"]["matchLabels"]
    for d in cluster.all("Deployment"):
        template = d["spec"]["template"]["metadata"]
        if selector.items() <= template.get("labels", {}).items():
            text = template.get("annotations", {}).get(EXTRA_STAT_TAGS_ANNOTATION, "")
            return [t.strip() for t in text.split(",") if t.strip()]
    return []


def istio_stats_config(extra_tags: list[str]) -> dict:
    """The stats_config of Istio's bootstrap for these extraStatTags, with the
    stats inclusion above."""
    tags = []
    for entry in ISTIO_STATS_TAGS:
        if entry == "EXTRA":
            tags += [{"tag_name": t, "regex": rf"({t}=\.=(.*?);\.;)"} for t in extra_tags]
        else:
            tags.append({"tag_name": entry[0], "regex": entry[1]})
    return {
        "use_all_default_tags": False,
        "stats_tags": tags,
        "stats_matcher": {"inclusion_list": {"patterns": ISTIO_STATS_INCLUSION}},
    }


def _typed(name: str, type_url: str) -> dict:
    return {"name": name, "typed_config": {"@type": type_url}}


def add_upstreams(cfg: dict, upstreams: dict[str, str]) -> None:
    """Bootstrap: a cluster per `upstreams` entry (cluster name -> model-v1
    or model-v2), each a copy of that demo server's cluster."""
    by_name = {c["name"]: c for c in cfg["static_resources"]["clusters"]}
    for name, server in upstreams.items():
        c = copy.deepcopy(by_name[server])
        c["name"] = c["load_assignment"]["cluster_name"] = name
        cfg["static_resources"]["clusters"].append(c)


def _istio_shape(
    plugin_filter: str,
    stat_prefix: str,
    route_config: dict,
    upstreams: dict[str, str],
    edit_chain,
    stat_tags: list[str],
):
    """Bootstrap hook: turn the harness' envoy/envoy.yaml into an Istio proxy
    with `route_config`, each of its clusters played by a demo model server
    (`upstreams`: cluster name -> model-v1 or model-v2), Istio's filter order
    after the plugin and Istio's stats tags for `stat_tags` (its pods'
    extraStatTags)."""

    def hook(cfg: dict) -> None:
        add_upstreams(cfg, upstreams)
        (listener,) = [x for x in cfg["static_resources"]["listeners"] if x["name"] == "ingress"]
        hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["stat_prefix"] = stat_prefix
        hcm["route_config"] = route_config
        (plugin,) = [f for f in hcm["http_filters"] if f["name"] == plugin_filter]
        fault = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
        # Istio's chain: the Wasm plugins, then fault, CORS, stats, router.
        hcm["http_filters"] = [
            plugin,
            _typed("envoy.filters.http.fault", fault),
            _typed("envoy.filters.http.cors", "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"),
            hcm["http_filters"][-1],
        ]
        if edit_chain:
            edit_chain(hcm["http_filters"])
        cfg["stats_config"] = istio_stats_config(stat_tags)

    return hook


def istio_proxy(
    plugin: dict,
    workdir: Path,
    route_config: dict,
    upstreams: dict[str, str],
    stat_prefix: str,
    numbers: str = "jsonpb",
    edit_chain=None,
    stat_tags: list[str] = (),
    **kwargs,
) -> Envoy:
    """A real Envoy shaped like a proxy Istio builds (a sidecar or a
    gateway), with the plugin resource delivered as Istio delivers it: over
    ECDS, named <namespace>.<name>, root_id = pluginName, the pluginConfig
    marshalled to JSON in a StringValue, the failure policy from failStrategy,
    RBAC accepted as the substitute filter. `edit_chain` may change the
    list of HTTP filters (the plugin, fault, CORS, router). Not started."""
    wasm = wasm_fields(plugin)
    policy = {"FAIL_OPEN": "FAIL_OPEN", "FAIL_CLOSE": "FAIL_CLOSED", "FAIL_RELOAD": "FAIL_RELOAD"}
    return Envoy(
        workdir,
        plugin_config_json(wasm["pluginConfig"], numbers),
        filter_name=filter_name(plugin),
        root_id=wasm["pluginName"],
        failure_policy=policy[wasm.get("failStrategy", "FAIL_CLOSE")],
        extra_type_urls=(RBAC_FILTER,),
        bootstrap_hook=_istio_shape(filter_name(plugin), stat_prefix, route_config, upstreams, edit_chain, stat_tags),
        **kwargs,
    )


def sidecar(cluster: Cluster, workdir: Path, numbers: str = "jsonpb", edit_chain=None, **kwargs) -> Envoy:
    """The client sidecar Istio builds for this cluster: the VirtualService's
    routes for the model Service's port, each DestinationRule subset a
    cluster played by the demo server of its Deployment (istio_proxy)."""
    port, host = service_port(cluster), service_host(cluster)
    upstreams = {f"outbound|{port}|{subset}|{host}": d for subset, d in subset_deployments(cluster).items()}
    route_config = {
        "name": str(port),
        "virtual_hosts": [{"name": f"{host}:{port}", "domains": ["*"], "routes": envoy_routes(cluster)}],
    }
    return istio_proxy(
        cluster.plugin(),
        workdir,
        route_config,
        upstreams,
        f"outbound_0.0.0.0_{port}",
        numbers,
        edit_chain,
        stat_tags=extra_stat_tags(cluster),
        **kwargs,
    )


def istio_allow_all(name: str) -> dict:
    """What Istio's agent sends Envoy instead of a FAIL_OPEN plugin whose
    module it cannot fetch: an RBAC filter with no rules (allow all)."""
    return {
        "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
        "name": name,
        "typed_config": {"@type": RBAC_FILTER, "rules_stat_prefix": "wasm-default-allow"},
    }


# --- The README section -------------------------------------------------------


def split_kubectl(argv: list[str]) -> tuple[str, list[str], list[str]]:
    """kubectl argv -> (namespace, arguments, the command after `--`)."""
    namespace, args, rest = "", [], []
    i = 1
    while i < len(argv):
        if argv[i] in ("-n", "--namespace"):
            namespace, i = argv[i + 1], i + 2
        elif argv[i] == "--":
            rest = argv[i + 1 :]
            break
        else:
            args, i = args + [argv[i]], i + 1
    return namespace, args, rest


def flag(args: list[str], name: str) -> str:
    """The value after a kubectl flag."""
    return args[args.index(name) + 1]


def apply_or_patch(cluster: Cluster, namespace: str, args: list[str]) -> bool:
    """Carries out `kubectl apply -f FILE...` or `kubectl patch KIND NAME`
    (`args` as split_kubectl gives them) on the cluster; whether it was one
    of the two."""
    verb = args[0]
    if verb == "apply":
        for i, a in enumerate(args):
            if a == "-f":
                cluster.apply(ROOT / args[i + 1])
        return True
    if verb == "patch":
        cluster.patch(kind_of(args[1]), namespace, args[2], flag(args, "--type"), flag(args, "-p"))
        return True
    return False


def readme_section(name: str = "istio") -> str:
    """The text between `<!-- section: name -->` and its end marker, on
    whichever page of the docs holds it (README.md or docs/)."""
    start, end = f"<!-- section: {name} -->", f"<!-- end section: {name} -->"
    for page in DOC_PAGES:
        text = page.read_text()
        if start in text:
            assert end in text, f"{page.name} opens the {name} section but never ends it"
            return text.split(start, 1)[1].split(end, 1)[0]
    raise AssertionError(f"no page of the docs has the {name} section markers")


@dataclass
class Step:
    """One command line of a README shell block, with the comment above it
    (its label) and the lines printed below it (its documented output)."""

    section: str
    label: str
    line: str
    output: list[str] = field(default_factory=list)

    @property
    def argv(self) -> list[str]:
        return shlex.split(self.line)


COMMANDS = ("kubectl", "make", "sha256sum", "docker", "curl", "canary-selector")
# Commands that preview the next one (`canary-selector diff` before a patch):
# the label above them belongs to the command they preview.
PREVIEWS = ("canary-selector",)


def readme_steps(name: str = "istio") -> list[Step]:
    """Every command in the section's ```sh blocks, in order."""
    steps: list[Step] = []
    section = ""
    for part in re.split(r"(^```sh\n.*?^```$)", readme_section(name), flags=re.S | re.M):
        if not part.startswith("```sh"):
            headings = re.findall(r"^#+ (.+)$", part, re.M)
            section = headings[-1] if headings else section
            continue
        label = ""
        for line in part.splitlines()[1:-1]:
            if not line.strip():
                continue
            if line.startswith("#"):
                label = line.lstrip("# ").strip()
            elif line.split()[0] in PREVIEWS:
                steps.append(Step(section, "", line))
            elif line.split()[0] in COMMANDS:
                steps.append(Step(section, label, line))
                label = ""
            elif steps:
                steps[-1].output.append(line)
    return steps
