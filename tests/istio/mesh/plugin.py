"""What Istio makes of the plugin resource (a WasmPlugin, or a
TrafficExtension with the same fields under spec.wasm): the name of its
Envoy filter and ECDS resource, its pluginConfig as the JSON istiod hands
Envoy, and what Istio's agent sends instead when it cannot fetch the module
of a FAIL_OPEN plugin."""

from __future__ import annotations

import json

# The kinds that carry the plugin.
WASM_PLUGIN = "WasmPlugin"
TRAFFIC_EXTENSION = "TrafficExtension"
# The filter Istio's agent puts in the plugin's place (istio_allow_all).
RBAC_FILTER = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"


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


def istio_allow_all(name: str) -> dict:
    """What Istio's agent sends Envoy instead of a FAIL_OPEN plugin whose
    module it cannot fetch: an RBAC filter with no rules (allow all)."""
    return {
        "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
        "name": name,
        "typed_config": {"@type": RBAC_FILTER, "rules_stat_prefix": "wasm-default-allow"},
    }
