"""The cluster the runbooks' commands act on: the objects `kubectl apply -f`
creates, changed by `kubectl patch` (merge and JSON patches), `replace` and
`delete` exactly as the API server would, and the cluster after the README's
apply step (`shipped`)."""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from .manifests import kubectl_files, load
from .paths import ISTIO_DIR, ROOT
from .plugin import TRAFFIC_EXTENSION, WASM_PLUGIN


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
    "LLMInferenceService": {"llminferenceservice", "llminferenceservices", "llmisvc"},
    "InferencePool": {"inferencepool", "inferencepools"},
    "EnvoyFilter": {"envoyfilter", "envoyfilters"},
    "EnvoyPatchPolicy": {"envoypatchpolicy", "envoypatchpolicies"},
    "ClientTrafficPolicy": {"clienttrafficpolicy", "clienttrafficpolicies", "ctp"},
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

    def resource_version(self, kind: str, namespace: str, name: str) -> str:
        """The object's metadata.resourceVersion: a digest of it here, so
        that every change to the object changes it, as the API server's does."""
        text = json.dumps(self.get(kind, namespace, name), sort_keys=True)
        return str(int(hashlib.sha256(text.encode()).hexdigest()[:12], 16))

    def get_json(self, kind: str, namespace: str, name: str) -> str:
        """`kubectl get KIND NAME -o json`: the object with its resourceVersion."""
        doc = copy.deepcopy(self.get(kind, namespace, name))
        doc["metadata"]["resourceVersion"] = self.resource_version(kind, namespace, name)
        return json.dumps(doc, indent=4)

    def replace(self, doc: dict) -> None:
        """`kubectl replace -f`: the object, which must exist, in place of the
        one of its kind, namespace and name. With a resourceVersion (as
        `kubectl get` printed it), only if the object has not changed since:
        else the API server's conflict."""
        meta = doc["metadata"]
        key = (doc["kind"], meta.get("namespace", ""), meta["name"])
        self.get(*key)
        version = meta.get("resourceVersion")
        if version is not None and version != self.resource_version(*key):
            raise ValueError(
                f"Operation cannot be fulfilled on {key[0].lower()}s {key[2]!r}: the object has been modified; "
                "please apply your changes to the latest version and try again"
            )
        doc = copy.deepcopy(doc)
        doc["metadata"].pop("resourceVersion", None)
        self.objects[key] = doc

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
