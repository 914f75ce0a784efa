"""Run the real Envoy with the freshly built canary-selector module.

`Envoy` starts the repository's own `envoy/envoy.yaml` (ports moved to free
ones, ECDS pointed at a temporary directory), delivers the plugin config over
ECDS exactly as `make run` and Istio do, and lets tests push new configs live,
send real HTTP, and read Envoy's stats and logs.

Nothing here skips: if Envoy or the module is missing, or Envoy does not come
up, the test fails with the reason.
"""

from __future__ import annotations

import copy
import http.client
import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import mmh3
import yaml
from prometheus_client.parser import text_string_to_metric_families

from prometheus import envoy_cluster

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "envoy"))
import ecds  # noqa: E402  (envoy/ecds.py, shared with `make run`)

ENVOY_YAML = ROOT / "envoy" / "envoy.yaml"
WASM = Path(os.environ.get("CANARY_WASM", ROOT / "target/canary-selector.wasm"))
ENVOY_BIN = Path(os.environ.get("ENVOY_BIN", ROOT / ".venv/bin/envoy"))
CLI = Path(os.environ.get("CANARY_SELECTOR_CLI", ROOT / "target/release/canary-selector"))
FILTER_NAME = ecds.DEFAULT_NAME
ECDS_STATS = f"extension_config_discovery.http_filter.{FILTER_NAME}"


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


# Ports are handed out below the kernel's ephemeral range, in turn from a
# random start: a port is picked free but bound (by Envoy or a test's
# server) only later, and an outgoing connection, whose local port the
# kernel takes from the ephemeral range, could take it in between
# ("Address already in use" for a gRPC model server, once in CI).
_PORTS_HIGH = _ephemeral_low()
_PORTS_LOW = max(1024, _PORTS_HIGH - 12000)
_next_port = [_PORTS_LOW + (os.getpid() * 7919) % (_PORTS_HIGH - _PORTS_LOW)]


def free_port() -> int:
    """A port nothing listens on, outside the ephemeral range, not handed
    out before in this run (until the range wraps around)."""
    span = _PORTS_HIGH - _PORTS_LOW
    for _ in range(span):
        port = _PORTS_LOW + (_next_port[0] - _PORTS_LOW) % span
        _next_port[0] = port + 1
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


# --- The documented assignment formula (docs/config.md), used as the oracle. -


def bucket(salt: str, user_id: str | bytes) -> int:
    uid = user_id.encode() if isinstance(user_id, str) else user_id
    return mmh3.hash(salt.encode() + b":" + uid[:256], 0, signed=False)


def expected_version(config: dict, user_id: str | bytes) -> str:
    versions = config["versions"]
    salt = config.get("stickiness", {}).get("salt", versions[0]["name"])
    b = bucket(salt, user_id)
    last = max(i for i, v in enumerate(versions) if v["weight"] > 0)
    acc = 0.0
    for i, v in enumerate(versions):
        acc += v["weight"]
        if b < math.floor(acc * 2**32 / 100) or i == last:
            return v["name"]


def canary_selector(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    """Run the canary-selector CLI (`make cli`) from the repository root."""
    if not CLI.exists():
        raise RuntimeError(f"CLI not found at {CLI}: run `make cli`")
    return subprocess.run(
        [str(CLI), *args], input=stdin, capture_output=True, text=True, timeout=60, cwd=ROOT
    )


# --- Bootstrap hooks ---------------------------------------------------------


def failing(listener: str, percent: int):
    """A bootstrap hook: the model server `listener` answers 503 to `percent`%
    of requests (Envoy's fault filter in front of it). The runtime key
    `fault.http.abort.abort_percent` (`Envoy.set_runtime`) changes the
    percentage while Envoy runs."""

    def hook(cfg: dict) -> None:
        # The runtime layer /runtime_modify writes (Istio's bootstrap has one too).
        cfg.setdefault("layered_runtime", {"layers": [{"name": "admin", "admin_layer": {}}]})
        for l in cfg["static_resources"]["listeners"]:
            if l["name"] != listener:
                continue
            hcm = l["filter_chains"][0]["filters"][0]["typed_config"]
            hcm["http_filters"].insert(
                0,
                {
                    "name": "envoy.filters.http.fault",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
                        "abort": {
                            "http_status": 503,
                            "percentage": {"numerator": percent, "denominator": "HUNDRED"},
                        },
                    },
                },
            )

    return hook


def failing_version(version: str, percent: int = 0):
    """A bootstrap hook: the ingress answers 503 to `percent`% of the requests
    the filter sent to `version` (Envoy's fault filter after canary-selector,
    matching its routing header), whichever host they are for. The runtime
    key `fault.http.abort.abort_percent` (`Envoy.set_runtime`) changes the
    percentage while Envoy runs."""

    def hook(cfg: dict) -> None:
        cfg.setdefault("layered_runtime", {"layers": [{"name": "admin", "admin_layer": {}}]})
        (ingress,) = [l for l in cfg["static_resources"]["listeners"] if l["name"] == "ingress"]
        filters = ingress["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]
        filters.insert(
            len(filters) - 1,  # before the router
            {
                "name": "envoy.filters.http.fault",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
                    "abort": {"http_status": 503, "percentage": {"numerator": percent, "denominator": "HUNDRED"}},
                    "headers": [{"name": "x-canary-version", "string_match": {"exact": version}}],
                },
            },
        )

    return hook


def prometheus_cluster(port: int, name: str = "prometheus"):
    """A bootstrap hook: the cluster `name` to a Prometheus on
    127.0.0.1:`port` (prometheus.envoy_cluster), for the mesh verdict's polls."""

    def hook(cfg: dict) -> None:
        cfg["static_resources"]["clusters"].append(envoy_cluster(port, name))

    return hook


def hooks(*each):
    """One bootstrap hook that runs each of these in turn."""

    def hook(cfg: dict) -> None:
        for h in each:
            h(cfg)

    return hook


# --- HTTP -------------------------------------------------------------------


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    @property
    def served_by(self) -> str | None:
        """Which model server answered (set by the backend itself)."""
        return self.header("x-served-by")


@dataclass
class Envoy:
    """One Envoy process serving envoy/envoy.yaml with the filter over ECDS."""

    workdir: Path
    plugin_config: str | dict
    concurrency: int = 2
    envoy_bin: Path = ENVOY_BIN
    wasm: Path = WASM
    # Envoy's failure_policy for the Wasm filter (FAIL_OPEN, FAIL_CLOSED, FAIL_RELOAD).
    failure_policy: str = "FAIL_OPEN"
    # The Wasm filter's allow_on_headers_stop_iteration (ecds.resource): on,
    # Envoy hands the filter a body while it holds the headers.
    allow_on_headers_stop_iteration: bool = True
    # More filter types the ECDS subscription accepts (Istio also lists RBAC,
    # the filter its agent substitutes for a module it cannot fetch).
    extra_type_urls: tuple[str, ...] = ()
    # Start with this ECDS TypedExtensionConfig instead of the plugin config.
    initial_resource: dict | None = None
    # The subscription's default_config (a typed_config), used until a config
    # is accepted.
    default_config: dict | None = None
    # Called with the bootstrap dict before Envoy starts, to adjust it (e.g.
    # make a model server fail some requests).
    bootstrap_hook: Callable[[dict], None] | None = None
    # The filter's ECDS name (Istio: `<namespace>.<WasmPlugin name>`) and the
    # plugin's root_id (Istio: the WasmPlugin's `pluginName`).
    filter_name: str = FILTER_NAME
    root_id: str = ecds.DEFAULT_ROOT_ID
    ports: dict = field(default_factory=dict)
    proc: subprocess.Popen | None = None

    # -- lifecycle --

    def start(self, timeout: float = 60.0) -> "Envoy":
        # Ports are picked free but only bound by Envoy later; another process
        # may take one in between. Try again with fresh ports when that happens.
        for attempt in range(3):
            try:
                return self._start_once(timeout)
            except RuntimeError:
                if attempt == 2 or "Address already in use" not in self.logs():
                    raise
        raise AssertionError("unreachable")

    def _start_once(self, timeout: float) -> "Envoy":
        if not self.envoy_bin.exists():
            raise RuntimeError(f"Envoy binary not found at {self.envoy_bin}: run `make venv`")
        if not self.wasm.exists() and self.wasm == WASM:
            raise RuntimeError(f"module not found at {self.wasm}: run `make build`")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ecds_dir = self.workdir / "ecds"
        self.ecds_path = self.ecds_dir / "canary-selector.json"
        self.ports = {
            name: free_port()
            for name in (
                "admin", "ingress", "model-v1", "model-v2", "model-v1-grpc", "model-v2-grpc", "chat-v1", "chat-v2"
            )
        }
        config_path = self.workdir / "envoy.yaml"
        config_path.write_text(yaml.safe_dump(self._bootstrap()))
        if self.initial_resource is None:
            self._write_ecds(self.plugin_config)
        else:
            self._write_resource(self.initial_resource)
        self.log_path = self.workdir / "envoy.log"
        self.proc = subprocess.Popen(
            [
                str(self.envoy_bin),
                "-c", str(config_path),
                "--concurrency", str(self.concurrency),
                "--disable-hot-restart",
                "-l", "info",
                "--log-path", str(self.log_path),
                "--file-flush-interval-msec", "50",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Envoy exited with {self.proc.returncode}:\n{self.logs()[-4000:]}")
            try:
                if self._admin("/ready") == "LIVE\n":
                    stats = self.stats()
                    if stats.get(f"{self.ecds_stats}.update_success", 0) >= 1:
                        return self
                    if stats.get(f"{self.ecds_stats}.update_rejected", 0) >= 1:
                        # Started without a valid filter config: callers that
                        # test this case check the stats themselves.
                        return self
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"Envoy did not become ready in {timeout}s:\n{self.logs()[-4000:]}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> "Envoy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _bootstrap(self) -> dict:
        """envoy/envoy.yaml with free ports and this run's ECDS directory."""
        cfg = copy.deepcopy(yaml.safe_load(ENVOY_YAML.read_text()))
        cfg["admin"]["address"]["socket_address"]["port_value"] = self.ports["admin"]
        by_name = {"ingress": "ingress", "model-v1": "model-v1", "model-v2": "model-v2"}
        for listener in cfg["static_resources"]["listeners"]:
            addr = listener["address"]["socket_address"]
            addr["address"] = "127.0.0.1"
            addr["port_value"] = self.ports[by_name[listener["name"]]]
            # Envoy binds with SO_REUSEPORT by default: a port another test's
            # Envoy took meanwhile would then be shared, the kernel spreading
            # connections over both. Without it the bind fails, and start()
            # tries again on fresh ports.
            listener["enable_reuse_port"] = False
            for chain in listener["filter_chains"]:
                for f in chain["filters"]:
                    for hf in f["typed_config"].get("http_filters", []):
                        source = hf.get("config_discovery", {}).get("config_source", {})
                        if "path_config_source" in source:
                            hf["name"] = self.filter_name
                            source["path_config_source"] = {
                                "path": str(self.ecds_path),
                                "watched_directory": {"path": str(self.ecds_dir)},
                            }
                            hf["config_discovery"]["type_urls"] += list(self.extra_type_urls)
                            if self.default_config is not None:
                                hf["config_discovery"]["default_config"] = self.default_config
        for cluster in cfg["static_resources"]["clusters"]:
            for ep in cluster["load_assignment"]["endpoints"]:
                for lb in ep["lb_endpoints"]:
                    lb["endpoint"]["address"]["socket_address"]["port_value"] = self.ports[cluster["name"]]
        if self.bootstrap_hook:
            self.bootstrap_hook(cfg)
        return cfg

    # -- config pushes --

    @property
    def ecds_stats(self) -> str:
        """The prefix of Envoy's ECDS counters for this filter."""
        return f"extension_config_discovery.http_filter.{self.filter_name}"

    def _write_ecds(self, plugin_config: str | dict) -> None:
        text = plugin_config if isinstance(plugin_config, str) else json.dumps(plugin_config)
        resource = ecds.resource(
            text,
            str(self.wasm),
            name=self.filter_name,
            root_id=self.root_id,
            failure_policy=self.failure_policy,
            allow_on_headers_stop_iteration=self.allow_on_headers_stop_iteration,
        )
        ecds.write_atomically(str(self.ecds_path), resource)

    def _write_resource(self, extension_config: dict) -> None:
        doc = {"version_info": str(time.monotonic_ns()), "resources": [extension_config]}
        ecds.write_atomically(str(self.ecds_path), doc)

    def push(self, plugin_config: str | dict, timeout: float = 20.0) -> bool:
        """Push a plugin config over ECDS; True if Envoy accepted it, False if it
        rejected it (the previous config keeps serving)."""
        return self._push(lambda: self._write_ecds(plugin_config), timeout)

    def push_resource(self, extension_config: dict, timeout: float = 20.0) -> bool:
        """Push any ECDS TypedExtensionConfig (for example another filter under
        the same name); True if accepted."""
        return self._push(lambda: self._write_resource(extension_config), timeout)

    def _push(self, write, timeout: float) -> bool:
        # Envoy counts a rejected update in config_reload too; update_success
        # and update_rejected tell the two apart.
        before = self.stats()
        accepted = before.get(f"{self.ecds_stats}.update_success", 0)
        rejected = before.get(f"{self.ecds_stats}.update_rejected", 0)
        write()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            stats = self.stats()
            if stats.get(f"{self.ecds_stats}.update_success", 0) > accepted:
                # The new filter config is applied to new streams; wait a beat
                # for the workers to pick it up.
                time.sleep(0.2)
                return True
            if stats.get(f"{self.ecds_stats}.update_rejected", 0) > rejected:
                return False
            time.sleep(0.05)
        raise TimeoutError(f"Envoy neither accepted nor rejected the push in {timeout}s")

    # -- observation --

    def _admin(self, path: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ports['admin']}{path}", timeout=5) as r:
            return r.read().decode()

    def set_runtime(self, key: str, value: str) -> None:
        """Sets an Envoy runtime value (the admin layer)."""
        query = urllib.parse.urlencode({key: value})
        request = urllib.request.Request(f"http://127.0.0.1:{self.ports['admin']}/runtime_modify?{query}", method="POST")
        with urllib.request.urlopen(request, timeout=5) as r:
            assert r.status == 200, r.read()

    def stats(self) -> dict[str, int]:
        out = {}
        for line in self._admin("/stats?type=Counters").splitlines():
            name, _, value = line.partition(": ")
            if value.strip().isdigit():
                out[name] = int(value)
        return out

    def flushed_stats(self) -> dict[str, int]:
        """Counters once the filter has flushed its decision counts (it does
        so on each tick, once a second)."""
        time.sleep(1.3)
        return self.stats()

    def prometheus(self) -> str:
        return self._admin("/stats/prometheus")

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the /stats/prometheus series of `name` whose labels
        include `labels` (Envoy's Prometheus names: the filter's counters
        flush on the tick, see `flushed_stats`)."""
        total = 0.0
        for family in text_string_to_metric_families(self.prometheus()):
            for sample in family.samples:
                if sample.name == name and labels.items() <= sample.labels.items():
                    total += sample.value
        return total

    def wait_for_log(self, text: str, timeout: float = 10.0) -> str:
        """The log, once it contains `text` (the log file is flushed lazily)."""
        deadline = time.monotonic() + timeout
        while text not in (logs := self.logs()) and time.monotonic() < deadline:
            time.sleep(0.05)
        return logs

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except (OSError, AttributeError):
            return ""

    # -- traffic --

    def request(
        self,
        headers: list[tuple[str, str | bytes]] | dict | None = None,
        path: str = "/v1/models/model:predict",
        method: str = "POST",
        body: bytes = b'{"instances":[[6.8,2.8,4.8,1.4]]}',
        conn: http.client.HTTPConnection | None = None,
    ) -> Response:
        """One HTTP/1.1 request to the ingress listener. Header values may be
        bytes (sent as they are, for odd-byte tests); a list may repeat names.
        A `host` header replaces the one http.client would send."""
        items = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
        own = conn is None
        c = conn or http.client.HTTPConnection("127.0.0.1", self.ports["ingress"], timeout=10)
        try:
            c.putrequest(method, path, skip_host=any(k.lower() == "host" for k, _ in items))
            for k, v in items:
                c.putheader(k, v)
            c.putheader("content-length", str(len(body)))
            c.endheaders(body)
            r = c.getresponse()
            return Response(r.status, r.getheaders(), r.read())
        finally:
            if own:
                c.close()

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.ports["ingress"], timeout=10)


class Traffic(threading.Thread):
    """Requests to an Envoy on one keep-alive connection, in the background
    until stopped: a new user id on each (`user_prefix`-1, -2, ...) or always
    `same_user`, for each of `hosts` in turn (none: no host header). Their
    statuses in `statuses`."""

    def __init__(self, envoy: Envoy, same_user: str | None = None, hosts: Sequence[str] = (),
                 user_prefix: str = "user"):
        super().__init__(daemon=True)
        self.envoy, self.same_user, self.hosts, self.user_prefix = envoy, same_user, hosts, user_prefix
        self.stopping = threading.Event()
        self.statuses: list[int] = []

    def run(self) -> None:
        conn = self.envoy.connection()
        i = 0
        while not self.stopping.is_set():
            i += 1
            headers = {"host": self.hosts[i % len(self.hosts)]} if self.hosts else {}
            headers["x-user-id"] = self.same_user or f"{self.user_prefix}-{i}"
            self.statuses.append(self.envoy.request(headers, conn=conn).status)

    def stop(self) -> None:
        self.stopping.set()
        self.join(10)
