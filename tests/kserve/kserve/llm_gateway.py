"""The chat model's scenario on KServe's shared Gateway (docs/kserve-llm.md):
the cluster after its deploy steps, the canary-selector resource in it, and
the gateway's real Envoy built as each gateway builds it, with the model
servers (envoy/openai_models.py) behind the InferencePools.

How each delivery reaches Envoy, as the tests build it:

- Istio, WasmPlugin (istio/kserve/llm/bbr/): over ECDS as istiod renders a
  WasmPlugin (named <namespace>.<name>, the pluginConfig as jsonpb JSON, in
  Istio's filter chain: mesh.istio_shape), which sets no
  allow_on_headers_stop_iteration: Envoy hands the filter no body while it
  holds the headers.
- Istio, EnvoyFilter (istio/kserve/llm/envoyfilter.yaml): its HTTP_FILTER
  patch puts a filter taking its config over ECDS first in the chain, and its
  EXTENSION_CONFIG patch is the ECDS resource, as written, with the module's
  remote code made a local file (what Istio's agent does) and the config text
  passed as it is (a StringValue).
- Envoy Gateway (envoy/gateway/llm/): the EnvoyExtensionPolicy's filter
  inline in the listener (proxies.EnvoyGatewayProxy), then the
  EnvoyPatchPolicy's JSON patches applied to that listener when they name it
  (`jsonPath` evaluated as Envoy Gateway does, for the forms used here), and
  the listener's buffer limit: the ClientTrafficPolicy's bufferLimit, else
  Envoy Gateway's default of 32 KiB.
- A body-based router in front (`bbr=True`): a Lua filter first in the chain
  standing in for the Inference Extension's BBR: it buffers the body and
  copies its top-level `model` into X-Gateway-Model-Name and its `user` into
  x-user-id (BBR's body-field-to-header plugin, twice), then clears the
  route cache. It reads the JSON with a pattern, not a parser: enough for the
  bodies the tests send.
"""

from __future__ import annotations

import copy
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from pathlib import Path

import mesh
from harness import Envoy, free_port  # tests/e2e/harness.py
import ecds  # envoy/ecds.py
import openai_models  # envoy/openai_models.py, on the path through harness

from .controller import GATEWAY_NAME, GATEWAY_NAMESPACE, SERVICE_PORT, gateway, reconcile
from .gateway_routes import route_config, services, upstreams
from .paths import ENVOY_GATEWAY_LLM_DIR, LLM_DIR
from .proxies import LISTENER, EnvoyGatewayProxy, eg_config_text
from .scenario import ENVOY_GATEWAY, ISTIO, installed

WASM_TYPE = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
STRING_VALUE = "type.googleapis.com/google.protobuf.StringValue"
# Envoy Gateway's default listener buffer limit (v1.9, internal/xds/translator/listener.go).
EG_DEFAULT_BUFFER_LIMIT = 32768
VERSIONS = ("chat-v1", "chat-v2")


# --- The cluster ---------------------------------------------------------------


def shipped_llm(gateway_class: str, bbr: bool = False) -> mesh.Cluster:
    """The cluster after the runbook's deploy step on that gateway: the two
    LLMInferenceServices and our HTTPRoute, with the filter reading bodies
    (EnvoyFilter on Istio; the policies of envoy/gateway/llm/ on Envoy
    Gateway) or, `bbr`, behind a body-based router (istio/kserve/llm/bbr/,
    envoy/gateway/llm/bbr/); KServe's objects written."""
    cluster = installed(gateway_class)
    cluster.apply(LLM_DIR / "namespace.yaml")
    cluster.apply(LLM_DIR / "llminferenceservice.yaml")
    cluster.apply(LLM_DIR / "httproute.yaml")
    if gateway_class == ISTIO:
        cluster.apply(LLM_DIR / ("bbr/wasmplugin.yaml" if bbr else "envoyfilter.yaml"))
    else:
        cluster.apply(ENVOY_GATEWAY_LLM_DIR / "bbr" if bbr else ENVOY_GATEWAY_LLM_DIR)
    reconcile(cluster)
    return cluster


def wasm_extension(envoy_filter: dict) -> tuple[dict, dict] | None:
    """(the HTTP_FILTER patch, the EXTENSION_CONFIG value) of an EnvoyFilter
    that delivers a Wasm filter over ECDS; None for any other EnvoyFilter."""
    patches = envoy_filter["spec"].get("configPatches", [])
    added = [
        p["patch"]["value"]
        for p in patches
        if p["applyTo"] == "EXTENSION_CONFIG"
        and p["patch"]["operation"] == "ADD"
        and p["patch"]["value"]["typed_config"]["@type"] == WASM_TYPE
    ]
    if len(added) != 1:
        return None
    (value,) = added
    (http_filter,) = [
        p for p in patches if p["applyTo"] == "HTTP_FILTER" and p["patch"]["value"]["name"] == value["name"]
    ]
    return http_filter, value


def plugin(cluster: mesh.Cluster) -> dict:
    """The canary-selector resource in force: exactly one WasmPlugin,
    EnvoyFilter delivering Wasm, or EnvoyExtensionPolicy."""
    docs = (
        cluster.all(mesh.WASM_PLUGIN)
        + [d for d in cluster.all("EnvoyFilter") if wasm_extension(d)]
        + cluster.all("EnvoyExtensionPolicy")
    )
    assert len(docs) == 1, f"expected one plugin resource, found {[d['kind'] for d in docs]}"
    return docs[0]


def config_text(doc: dict) -> str:
    """The config text the gateway hands the filter: a WasmPlugin's
    pluginConfig as istiod marshals it, an EnvoyFilter's StringValue as it
    is, an EnvoyExtensionPolicy's config as Envoy Gateway passes it."""
    if doc["kind"] == "EnvoyFilter":
        _, value = wasm_extension(doc)
        configuration = value["typed_config"]["config"]["configuration"]
        assert configuration["@type"] == STRING_VALUE, "Envoy hands a Wasm filter only a StringValue as JSON"
        return configuration["value"]
    if doc["kind"] == "EnvoyExtensionPolicy":
        (wasm,) = doc["spec"]["wasm"]
        return eg_config_text(wasm["config"])
    return mesh.plugin_config_json(mesh.wasm_fields(doc)["pluginConfig"])


def plugin_config(doc: dict) -> dict:
    return json.loads(config_text(doc))


def chat_rollout(config: dict) -> dict:
    """The rollout scoped by the chat model."""
    (rollout,) = [r for r in config["rollouts"] if r.get("models")]
    return rollout


def with_config(doc: dict, config: dict) -> dict:
    """The plugin resource with `config` in it (as a patch leaves it)."""
    doc = copy.deepcopy(doc)
    if doc["kind"] == "EnvoyFilter":
        _, value = wasm_extension(doc)
        value["typed_config"]["config"]["configuration"]["value"] = json.dumps(config)
    elif doc["kind"] == "EnvoyExtensionPolicy":
        doc["spec"]["wasm"][0]["config"] = config
    else:
        mesh.wasm_fields(doc)["pluginConfig"] = config
    return doc


def with_chat(doc: dict, **fields) -> dict:
    """The plugin resource with these fields of its chat rollout replaced."""
    config = copy.deepcopy(plugin_config(doc))
    chat_rollout(config).update(copy.deepcopy(fields))
    return with_config(doc, config)


def weights(v2: float) -> list[dict]:
    """The chat rollout's versions with chat-v2 at `v2` percent."""
    return [{"name": "chat-v1", "weight": 100 - v2}, {"name": "chat-v2", "weight": v2}]


# --- The gateway's Envoy ---------------------------------------------------------


def model_servers(cluster: mesh.Cluster) -> dict[str, int]:
    """A free port for the model server of each LLMInferenceService."""
    return {d["metadata"]["name"]: free_port() for d in cluster.all("LLMInferenceService")}


def start_model_servers(servers: dict[str, int], chunk_delay: float = 0.05) -> list[ThreadingHTTPServer]:
    """envoy/openai_models.py's server, one per version, named after it
    (openai_models.serve's, with TCP_NODELAY: a response's headers and body
    are two writes, and on a connection Envoy reuses Nagle's algorithm would
    hold the body for Envoy's delayed ACK, 40 ms a request)."""
    out = []
    for name, port in servers.items():
        handler = type(
            "VersionHandler",
            (openai_models.Handler,),
            {"version_name": name, "chunk_delay": chunk_delay, "disable_nagle_algorithm": True},
        )
        server = ThreadingHTTPServer(("127.0.0.1", port), handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        out.append(server)
    return out


def _base_clusters(servers: dict[str, int]):
    """A bootstrap hook: a cluster per model server (before the routes'
    clusters are copied from them, mesh.add_upstreams), in place of the
    demo's cluster of the same name (envoy/envoy.yaml has its own chat-v1
    and chat-v2, on the demo's ports)."""

    def hook(cfg: dict) -> None:
        clusters = cfg["static_resources"]["clusters"]
        (template,) = [c for c in clusters if c["name"] == "model-v1"]
        clusters[:] = [c for c in clusters if c["name"] not in servers]
        for name, port in servers.items():
            c = copy.deepcopy(template)
            c["name"] = c["load_assignment"]["cluster_name"] = name
            (ep,) = c["load_assignment"]["endpoints"]
            (lb,) = ep["lb_endpoints"]
            lb["endpoint"]["address"]["socket_address"].update(address="127.0.0.1", port_value=port)
            clusters.append(c)

    return hook


BBR_LUA = r"""
-- A stand-in for the Inference Extension's body-based router (BBR): the
-- body's top-level "model" to X-Gateway-Model-Name, its "user" to x-user-id.
function envoy_on_request(handle)
  local ct = handle:headers():get("content-type") or ""
  if not string.find(ct, "application/json", 1, true) then return end
  local body = handle:body()
  if body == nil then return end
  local text = body:getBytes(0, body:length())
  local model = string.match(text, '^%s*{.-"model"%s*:%s*"([^"]*)"')
  if model ~= nil and model ~= "" then handle:headers():replace("x-gateway-model-name", model) end
  local user = string.match(text, '"user"%s*:%s*"([^"]*)"')
  if user ~= nil and user ~= "" then handle:headers():replace("x-user-id", user) end
  handle:clearRouteCache()
end
"""


def bbr_filter() -> dict:
    return {
        "name": "envoy.filters.http.ext_proc.bbr",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
            "default_source_code": {"inline_string": BBR_LUA},
        },
    }


@dataclass
class IstioLLMGateway(Envoy):
    """Istio's gateway with the filter over ECDS: `extension_config` None,
    as istiod renders a WasmPlugin (no allow_on_headers_stop_iteration);
    else the EnvoyFilter's extension config as written, the code local."""

    extension_config: dict | None = None

    def _write_ecds(self, plugin_config: str | dict) -> None:
        text = plugin_config if isinstance(plugin_config, str) else json.dumps(plugin_config)
        if self.extension_config is None:
            (resource,) = ecds.resource(
                text, str(self.wasm), name=self.filter_name, root_id=self.root_id, failure_policy=self.failure_policy
            )["resources"]
            resource["typed_config"]["config"].pop("allow_on_headers_stop_iteration", None)
        else:
            resource = {"@type": ecds.EXTENSION_CONFIG, **copy.deepcopy(self.extension_config)}
            config = resource["typed_config"]["config"]
            config["vm_config"]["code"] = {"local": {"filename": str(self.wasm)}}
            config["configuration"] = {"@type": STRING_VALUE, "value": text}
        ecds.write_atomically(str(self.ecds_path), {"version_info": str(time.monotonic_ns()), "resources": [resource]})


def istio_llm_gateway(cluster: mesh.Cluster, workdir: Path, servers: dict[str, int], bbr: bool = False, **kwargs):
    doc = plugin(cluster)
    routes = route_config(cluster, ISTIO, services(cluster))
    front = (lambda chain: chain.insert(0, bbr_filter())) if bbr else None
    if doc["kind"] == "EnvoyFilter":
        http_filter, value = wasm_extension(doc)
        # INSERT_FIRST: first in the chain, where istio_shape puts the plugin.
        assert http_filter["patch"]["operation"] == "INSERT_FIRST", http_filter
        config = value["typed_config"]["config"]
        name, root_id = value["name"], config["root_id"]
        policy = config.get("failure_policy", "FAIL_CLOSED")
        extension = value
    else:
        wasm = mesh.wasm_fields(doc)
        name, root_id = mesh.filter_name(doc), wasm["pluginName"]
        policy = {"FAIL_OPEN": "FAIL_OPEN", "FAIL_CLOSE": "FAIL_CLOSED"}[wasm.get("failStrategy", "FAIL_CLOSE")]
        extension = None
    hook = mesh.istio_shape(name, f"outbound_0.0.0.0_{SERVICE_PORT}", routes, upstreams(cluster), front, [])
    base = _base_clusters(servers)
    return IstioLLMGateway(
        workdir,
        config_text(doc),
        filter_name=name,
        root_id=root_id,
        failure_policy=policy,
        extra_type_urls=(mesh.RBAC_FILTER,),
        bootstrap_hook=lambda cfg: (base(cfg), hook(cfg)),
        extension_config=extension,
        **kwargs,
    )


# --- Envoy Gateway's EnvoyPatchPolicy ----------------------------------------------


_STEP = re.compile(r"\.\.(\w+)|\.(\w+)|\[(\d+)\]|\[\?\(@\.(\w+)\s*==\s*'([^']*)'\)\]|\[\*\]")


def json_path(doc, expression: str) -> list[str]:
    """The JSON pointers of what a JSONPath selects in `doc`, for the forms
    Envoy Gateway's EnvoyPatchPolicy examples use: `$`, `.key`, `..key`,
    `[n]`, `[*]` and `[?(@.key=='value')]` (ojg's jp.Locate)."""
    text = expression[1:] if expression.startswith("$") else expression
    if text and not text.startswith((".", "[")):
        text = "." + text
    found: list[tuple[str, object]] = [("", doc)]
    pos = 0
    while pos < len(text):
        m = _STEP.match(text, pos)
        assert m, f"unsupported JSONPath at {text[pos:]!r}"
        pos = m.end()
        descend, child, nth, key, value = m.groups()
        out = []
        for pointer, node in found:
            if descend:
                out += _descendants(pointer, node, descend)
            elif child:
                if isinstance(node, dict) and child in node:
                    out.append((f"{pointer}/{child}", node[child]))
            elif nth is not None:
                if isinstance(node, list) and int(nth) < len(node):
                    out.append((f"{pointer}/{nth}", node[int(nth)]))
            else:
                items = enumerate(node) if isinstance(node, list) else (node.items() if isinstance(node, dict) else [])
                for k, v in items:
                    if key is None or (isinstance(v, dict) and v.get(key) == value):
                        out.append((f"{pointer}/{k}", v))
        found = out
    return [p for p, _ in found]


def _descendants(pointer: str, node, key: str) -> list[tuple[str, object]]:
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key:
                out.append((f"{pointer}/{k}", v))
            out += _descendants(f"{pointer}/{k}", v, key)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _descendants(f"{pointer}/{i}", v, key)
    return out


def apply_patch_policy(resource: dict, policy: dict, type_url: str, name: str) -> dict:
    """An EnvoyPatchPolicy's JSON patches for (type_url, name) applied to
    that xDS resource (as JSON with proto field names, as Envoy Gateway
    marshals it). A patch whose jsonPath selects nothing is skipped, as
    Envoy Gateway skips it (saying so in the policy's status): the listener
    without the filter (a fail-open policy whose module it could not fetch)
    is left as it is."""
    for patch in policy["spec"]["jsonPatches"]:
        if (patch["type"], patch["name"]) != (type_url, name):
            continue
        op = patch["operation"]
        if "jsonPath" in op:
            pointers = [p + op.get("path", "") for p in json_path(resource, op["jsonPath"])]
        else:
            pointers = [op["path"]]
        for pointer in pointers:
            resource = mesh.json_patch(resource, [{k: v for k, v in {**op, "path": pointer}.items() if k != "jsonPath"}])
    return resource


def eg_listener_name(cluster: mesh.Cluster) -> str:
    """Envoy Gateway's name for the Gateway's HTTP listener (its xDS name
    scheme before v1.10: <namespace>/<gateway>/<listener>)."""
    (listener,) = [l for l in gateway(cluster)["spec"]["listeners"] if l["protocol"] == "HTTP"]
    return f"{GATEWAY_NAMESPACE}/{GATEWAY_NAME}/{listener['name']}"


def _bytes(quantity: str) -> int:
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}
    for suffix, scale in units.items():
        if quantity.endswith(suffix):
            return int(quantity[: -len(suffix)]) * scale
    return int(quantity)


@dataclass
class EnvoyGatewayLLMProxy(EnvoyGatewayProxy):
    """Envoy Gateway's proxy as proxies.EnvoyGatewayProxy builds it, with
    the EnvoyPatchPolicies of the cluster applied to its listener, its buffer
    limit, and filters ahead of the plugin's (a body-based router)."""

    patch_policies: list = field(default_factory=list)
    listener_name: str = ""
    buffer_limit: int = EG_DEFAULT_BUFFER_LIMIT
    front_filters: list = field(default_factory=list)

    def listener(self, plugin_config: str | None) -> dict:
        listener = super().listener(plugin_config)
        listener["per_connection_buffer_limit_bytes"] = self.buffer_limit
        hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["http_filters"] = copy.deepcopy(self.front_filters) + hcm["http_filters"]
        for policy in self.patch_policies:
            listener = apply_patch_policy(listener, policy, LISTENER, self.listener_name)
        return listener


def envoy_gateway_llm(cluster: mesh.Cluster, workdir: Path, servers: dict[str, int], bbr: bool = False, **kwargs):
    policy = plugin(cluster)
    limits = [c["spec"]["connection"]["bufferLimit"] for c in cluster.all("ClientTrafficPolicy")
              if "bufferLimit" in c["spec"].get("connection", {})]
    return EnvoyGatewayLLMProxy(
        workdir,
        eg_config_text(policy["spec"]["wasm"][0]["config"]),
        policy=policy,
        routes=route_config(cluster, ENVOY_GATEWAY, services(cluster)),
        upstream_clusters=upstreams(cluster),
        bootstrap_hook=_base_clusters(servers),
        patch_policies=cluster.all("EnvoyPatchPolicy"),
        listener_name=eg_listener_name(cluster),
        buffer_limit=_bytes(limits[0]) if limits else EG_DEFAULT_BUFFER_LIMIT,
        front_filters=[bbr_filter()] if bbr else [],
        **kwargs,
    )


def llm_gateway(cluster: mesh.Cluster, workdir: Path, servers: dict[str, int], bbr: bool = False, **kwargs):
    """The gateway's Envoy for the chat model's cluster (not started)."""
    if gateway(cluster)["spec"]["gatewayClassName"] == ISTIO:
        return istio_llm_gateway(cluster, workdir, servers, bbr, **kwargs)
    return envoy_gateway_llm(cluster, workdir, servers, bbr, **kwargs)


def push(envoy, doc: dict) -> None:
    """The plugin resource's config as its gateway delivers it."""
    text = config_text(doc)
    assert envoy.push(text), envoy.logs()[-2000:]


def fail_open(envoy, doc: dict) -> None:
    """What each gateway runs when it cannot fetch the module of a fail-open
    plugin: Istio's agent an allow-all RBAC filter under the filter's name;
    Envoy Gateway a listener without the filter."""
    if isinstance(envoy, EnvoyGatewayProxy):
        assert envoy.push(None)
    else:
        assert envoy.push_resource(mesh.istio_allow_all(envoy.filter_name))
