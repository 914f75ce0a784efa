"""The gateways' Envoys: Istio's gateway (mesh.istio_proxy with the routes as
Istio orders them, the plugin over ECDS) and Envoy Gateway's proxy (its
listener over LDS with the Wasm filter inline, the module from a server of
its own), and `gateway_proxy()`, the one of the Gateway's class."""

from __future__ import annotations

import copy
import hashlib
import http.server
import json
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import mesh
from harness import Envoy  # tests/e2e/harness.py, on sys.path once mesh is imported
import ecds  # envoy/ecds.py, on sys.path once harness is imported

from .controller import SERVICE_PORT, gateway
from .gateway_routes import route_config, services, upstreams
from .scenario import ENVOY_GATEWAY, ISTIO, plugin, plugin_config, target_refs


def istio_gateway(cluster: mesh.Cluster, workdir: Path, **kwargs) -> Envoy:
    """Istio's gateway for the Gateway: its routes as Istio orders them, the
    plugin over ECDS named <namespace>.<name> (mesh.istio_proxy). Not started."""
    return mesh.istio_proxy(
        plugin(cluster),
        workdir,
        route_config(cluster, ISTIO, services(cluster)),
        upstreams(cluster),
        f"outbound_0.0.0.0_{SERVICE_PORT}",
        **kwargs,
    )


WASM_FILTER = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
FILTER_CONFIG = "type.googleapis.com/envoy.config.route.v3.FilterConfig"


def eg_config_text(config: dict) -> str:
    """A policy's `config` as Envoy Gateway hands it to Envoy: the JSON the
    API server stored (its keys sorted, numbers as written), as it is."""
    return json.dumps(config, sort_keys=True, separators=(",", ":"))


def eg_names(policy: dict, index: int = 0) -> dict[str, str]:
    """Envoy Gateway's names for wasm[index] of an EnvoyExtensionPolicy: the
    HTTP filter, the VM (one per filter: VMs are never shared) and the
    plugin (wasm[].name, else the IR name)."""
    meta = policy["metadata"]
    ir_name = f"envoyextensionpolicy/{meta['namespace']}/{meta['name']}/wasm/{index}"
    return {
        "filter": f"envoy.filters.http.wasm/{ir_name}",
        "vm_id": ir_name,
        "plugin": policy["spec"]["wasm"][index].get("name", ir_name),
    }


class _ModuleServer:
    """Envoy Gateway serves each proxy the module it fetched, over HTTP, with
    its sha256: this plays that server, for one file."""

    def __init__(self, module: Path):
        body = module.read_bytes()
        self.sha256 = hashlib.sha256(body).hexdigest()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                self.send_response(200)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@dataclass
class EnvoyGatewayProxy(Envoy):
    """The harness' Envoy shaped like the proxy Envoy Gateway runs for the
    Gateway: the gateway's listener comes over LDS (from a file replaced
    atomically, as the harness does for ECDS), with the Wasm filter inline
    in it, disabled by default and enabled on the routes of what the policy
    targets (every route, for the Gateway); the module fetched over
    HTTP with its sha256; a VM of its own; `fail_open` from failOpen; the
    config a StringValue of the raw JSON. A push is a listener update.
    `plugin_config` None: the listener Envoy Gateway writes when it cannot
    fetch the module of a failOpen policy, without the filter."""

    policy: dict = field(default_factory=dict)
    routes: dict = field(default_factory=dict)
    upstream_clusters: dict = field(default_factory=dict)
    # Another (disabled) filter in the listener, as another policy adds one:
    # a listener update that leaves the plugin's config as it is.
    extra_filter: dict | None = None
    module_server: _ModuleServer | None = None

    @property
    def ecds_stats(self) -> str:
        return "listener_manager.lds"

    @property
    def names(self) -> dict[str, str]:
        return eg_names(self.policy)

    def start(self, timeout: float = 60.0) -> "EnvoyGatewayProxy":
        self.module_server = self.module_server or _ModuleServer(self.wasm)
        super().start(timeout)
        self._await_warm(timeout)
        return self

    def _await_warm(self, timeout: float) -> None:
        """Until no listener is warming (the module fetched, the VMs up)."""
        deadline = time.monotonic() + timeout
        while self.gauge("listener_manager.total_listeners_warming") != 0:
            assert time.monotonic() < deadline, f"the listener did not warm:\n{self.logs()[-3000:]}"
            time.sleep(0.05)

    def stop(self) -> None:
        super().stop()
        if self.module_server:
            self.module_server.close()
            self.module_server = None

    def _bootstrap(self) -> dict:
        cfg = super()._bootstrap()
        static = cfg["static_resources"]
        (self._listener,) = [x for x in static["listeners"] if x["name"] == "ingress"]
        static["listeners"].remove(self._listener)
        mesh.add_upstreams(cfg, self.upstream_clusters)
        # Envoy Gateway's bootstrap names its module server wasm_cluster.
        address = {"socket_address": {"address": "127.0.0.1", "port_value": self.module_server.port}}
        static["clusters"].append(
            {
                "name": "wasm_cluster",
                "connect_timeout": "1s",
                "load_assignment": {
                    "cluster_name": "wasm_cluster",
                    "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
                },
            }
        )
        self.lds_path = self.ecds_dir / "lds.json"
        cfg["dynamic_resources"] = {
            "lds_config": {
                "resource_api_version": "V3",
                "path_config_source": {"path": str(self.lds_path), "watched_directory": {"path": str(self.ecds_dir)}},
            }
        }
        return cfg

    def targets(self, route_name: str) -> bool:
        """Whether the policy's filter is enabled on a route: every route of
        the listener for a Gateway target, the routes of an HTTPRoute target
        (Envoy Gateway matches them by route name prefix)."""
        ns = self.policy["metadata"]["namespace"]
        for ref in target_refs(self.policy):
            if ref["kind"] == "Gateway" or route_name.startswith(f"httproute/{ns}/{ref['name']}/"):
                return True
        return False

    def wasm_filter(self, config_text: str) -> dict:
        (wasm,) = self.policy["spec"]["wasm"]
        names = self.names
        return {
            "name": names["filter"],
            "disabled": True,
            "typed_config": {
                "@type": WASM_FILTER,
                "config": {
                    "name": names["plugin"],
                    "root_id": wasm.get("rootID", ""),
                    "vm_config": {
                        "vm_id": names["vm_id"],
                        "runtime": "envoy.wasm.runtime.v8",
                        "code": {
                            "remote": {
                                "http_uri": {
                                    "uri": f"http://127.0.0.1:{self.module_server.port}/{names['vm_id']}.wasm",
                                    "cluster": "wasm_cluster",
                                    "timeout": "10s",
                                },
                                "sha256": self.module_server.sha256,
                            }
                        },
                    },
                    "configuration": {"@type": ecds.STRING_VALUE, "value": config_text},
                    "fail_open": wasm.get("failOpen", False),
                },
            },
        }

    def listener(self, plugin_config: str | None) -> dict:
        listener = copy.deepcopy(self._listener)
        listener["@type"] = LISTENER
        hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["stat_prefix"] = f"http-{SERVICE_PORT}"
        filters = [self.wasm_filter(plugin_config)] if plugin_config is not None else []
        if self.extra_filter:
            filters.append(self.extra_filter)
        hcm["route_config"] = copy.deepcopy(self.routes)
        if plugin_config is not None:
            for vh in hcm["route_config"]["virtual_hosts"]:
                for route in vh["routes"]:
                    if self.targets(route["name"]):
                        route["typed_per_filter_config"] = {
                            self.names["filter"]: {"@type": FILTER_CONFIG, "config": {}}
                        }
        hcm["http_filters"] = filters + [hcm["http_filters"][-1]]  # ..., router
        return listener

    def _write_ecds(self, plugin_config: str | dict | None) -> None:
        text = (
            plugin_config if plugin_config is None or isinstance(plugin_config, str) else eg_config_text(plugin_config)
        )
        doc = {"version_info": str(time.monotonic_ns()), "resources": [self.listener(text)]}
        ecds.write_atomically(str(self.lds_path), doc)

    def push(self, plugin_config: str | dict | None, timeout: float = 20.0) -> bool:
        """A listener update carrying this config (None: without the
        filter); True once Envoy accepted it and the new listener serves."""
        accepted = self._push(lambda: self._write_ecds(plugin_config), timeout)
        if accepted:
            self._await_warm(timeout)
        return accepted

    def gauge(self, name: str) -> int:
        for line in self._admin(f"/stats?filter=^{re.escape(name)}$").splitlines():
            if line.startswith(name + ": "):
                return int(line.split(": ", 1)[1])
        raise KeyError(name)


def envoy_gateway(cluster: mesh.Cluster, workdir: Path, **kwargs) -> EnvoyGatewayProxy:
    """Envoy Gateway's proxy for the Gateway: its routes as Envoy Gateway
    orders them, the policy's filter inline in the listener. Not started."""
    policy = plugin(cluster)
    return EnvoyGatewayProxy(
        workdir,
        eg_config_text(plugin_config(policy)),
        policy=policy,
        routes=route_config(cluster, ENVOY_GATEWAY, services(cluster)),
        upstream_clusters=upstreams(cluster),
        **kwargs,
    )


def gateway_proxy(cluster: mesh.Cluster, workdir: Path, **kwargs) -> Envoy:
    """The Envoy of the Gateway's implementation, for this cluster."""
    if gateway(cluster)["spec"]["gatewayClassName"] == ISTIO:
        return istio_gateway(cluster, workdir, **kwargs)
    return envoy_gateway(cluster, workdir, **kwargs)
