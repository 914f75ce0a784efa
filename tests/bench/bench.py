#!/usr/bin/env python3
"""`make bench`: what canary-selector costs Envoy per request, next to no
filter and next to the Lua filter mesh users write today (envoy/lua/).

Every variant is the same Envoy (envoy/lua/envoy.yaml: one listener, routes
keyed on x-canary-version with a default route, direct responses) with only
the HTTP filter in front of the router swapped. All variants run side by side
(`--concurrency 1`, pinned to one core); wrk (pinned to the other core) loads
them in turn, A B C A B C, with the identical request sequence
(tests/bench/load.lua: a different user id on each request). For each run:

- CPU µs per request: the Envoy process's utime+stime (/proc/<pid>/stat)
  over the run, divided by the requests Envoy completed in it;
- requests per second and p50/p99 latency, from wrk;
- Envoy's VmRSS after the run (/proc/<pid>/status).

The table shows medians over the rounds, and the overhead ratio
(canary-selector - none) / (lua - none) of the median CPU per request. With
CANARY_WASM_PREV (the module of an earlier commit; `make bench` builds
PREV_REV's), it also runs that module as `canary-selector-prev` and prints
the ratio (canary-selector - none) / (canary-selector-prev - none), per round
and of the medians. With CANARY_WASM_ALLOCS (the module built with
`--features alloc-stats`), it counts the module's heap allocations per
request.
Before loading, each variant is checked to route as it should (the README's
formula is the oracle); the bench fails on a misroute, on any non-2xx
response or wrk socket error.

Settings (environment): ROUNDS (12), DURATION seconds per run (3),
CONNECTIONS (32), WARMUP seconds before each run (0), BENCH_EXTRA_RULES (0), VARIANTS
(none,lua,canary-selector, and canary-selector-prev with CANARY_WASM_PREV;
more in VARIANTS below), ENVOY_CPU (0), LOAD_CPU (1),
QUIET_WAIT (0: seconds each run may first wait for other processes to go quiet).
"""

from __future__ import annotations

import json
import math
import os
import re
import resource
import socket
import statistics
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import mmh3
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "envoy"))
import ecds  # noqa: E402  (envoy/ecds.py: the filter config exactly as Istio delivers it)

ENVOY = Path(os.environ.get("ENVOY_BIN", ROOT / ".venv/bin/envoy"))
WASM = Path(os.environ.get("CANARY_WASM", ROOT / "target/canary-selector.wasm"))
WASM_B = Path(os.environ.get("CANARY_WASM_B", WASM))
WASM_PREV = Path(os.environ["CANARY_WASM_PREV"]) if os.environ.get("CANARY_WASM_PREV") else None
WASM_ALLOCS = Path(os.environ["CANARY_WASM_ALLOCS"]) if os.environ.get("CANARY_WASM_ALLOCS") else None
BASE_CONFIG = ROOT / "envoy/lua/envoy.yaml"
LUA = ROOT / "envoy/lua/canary.lua"
LOAD = ROOT / "tests/bench/load.lua"
FLOOR = ROOT / "tests/bench/floor.rs"
OUT = ROOT / "target/bench"
PATH = "/v1/models/model:predict"
QUIET = 0.10  # cores of other CPU use above which a run is measured again
RETRIES = 1
QUIET_WAIT = float(os.environ.get("QUIET_WAIT", 0))  # seconds a run may wait for a quiet machine

# The rollout both canary-selector and the Lua peer implement.
PLUGIN_CONFIG = {
    "routingHeader": "x-canary-version",
    "versions": [{"name": "model-v1", "weight": 90}, {"name": "model-v2", "weight": 10}],
    "stickiness": {"userIdHeaders": ["x-user-id"]},
    "rules": [
        {
            "name": "testers",
            "match": {"headers": {"x-canary-tester": {"exact": "true"}}},
            "version": "model-v2",
        }
    ],
}
# BENCH_GUARD=1 adds a guard, so every response is judged (for gRPC, by its
# grpc-status in the trailers).
if os.environ.get("BENCH_GUARD") == "1":
    PLUGIN_CONFIG["guard"] = {"windowSeconds": 60, "minRequests": 1000, "maxErrorRate": 0.5}
# BENCH_PROTOCOL=grpc: the load is KServe V2 / Triton ModelInfer calls
# (h2load, HTTP/2, one user id), to envoy/grpc_models.py's servers behind
# Envoy, instead of wrk's HTTP/1.1 requests to direct responses.
PROTOCOL = os.environ.get("BENCH_PROTOCOL", "http")
GRPC_PATH = "/inference.GRPCInferenceService/ModelInfer"
# BENCH_EXTRA_RULES=K puts K more rules first, each on a header of its own
# that no request carries: every request then reads K + 2 headers (how the
# cost of reading headers grows with a config's rules).
PLUGIN_CONFIG["rules"][:0] = [
    {"name": f"extra-{i}", "match": {"headers": {f"x-extra-{i}": {"exact": "1"}}}, "version": "model-v2"}
    for i in range(int(os.environ.get("BENCH_EXTRA_RULES", 0)))
]
# The rollout as configured, whatever the config's shape (below).
ROLLOUT = PLUGIN_CONFIG
# BENCH_ROLLOUTS=1: the same rollout as the one entry of a `rollouts` list
# (hosts *), so every request is looked up by its host.
if os.environ.get("BENCH_ROLLOUTS") == "1":
    PLUGIN_CONFIG = {"rollouts": [{"name": "model", "hosts": ["*"], **PLUGIN_CONFIG}]}
V1_BELOW = math.floor(90 * 2**32 / 100)


def sticky_version(user_id: str) -> str:
    """The README's bucket formula for PLUGIN_CONFIG (salt = first version)."""
    bucket = mmh3.hash(b"model-v1:" + user_id.encode()[:256], 0, signed=False)
    return "model-v1" if bucket < V1_BELOW else "model-v2"


# --- variants ---------------------------------------------------------------


def wasm_filter(path: Path, configuration: str = "", root_id: str = "canary-selector") -> dict:
    """An inline Wasm HTTP filter, built like the ECDS resource Istio sends."""
    typed = ecds.resource(configuration, str(path), name=root_id, root_id=root_id)["resources"][0]["typed_config"]
    return {"name": "envoy.filters.http.wasm", "typed_config": typed}


def floor_module(flags: list[str]) -> Path:
    """tests/bench/floor.rs built with `--cfg` flags (a few hundred bytes)."""
    out = OUT / ("floor" + "".join("-" + f for f in flags) + ".wasm")
    cfgs = [a for f in flags for a in ("--cfg", f)]
    subprocess.run(
        ["rustc", "--edition", "2021", "--target", "wasm32-wasip1", "--crate-type", "cdylib",
         "-O", "-C", "panic=abort", *cfgs, "-o", str(out), str(FLOOR)],
        check=True,
    )
    return out


@dataclass
class Variant:
    name: str
    what: str
    # Builds the HTTP filter in front of the router (None: the router alone),
    # given the variant's work directory.
    http_filter: Callable[[Path], dict | None]
    # Expected x-served-by for a request with these headers.
    expect: Callable[[dict], str]
    module: Callable[[], Path | None] = lambda: None
    # canary-selector's own counters must add up to the requests served.
    counts_requests: bool = False


def canary_expect(h: dict) -> str:
    if h.get("x-canary-tester") == "true":
        return "model-v2"
    if h.get("x-user-id"):
        return sticky_version(h["x-user-id"])
    return h.get("x-canary-version", "model-v1")  # anonymous: random, not checked


def client_expect(h: dict) -> str:
    return h.get("x-canary-version", "model-v1")


def last_digit_expect(h: dict) -> str:
    return "model-v2" if h.get("x-user-id", "").endswith("0") else "model-v1"


def lua_filter(_: Path) -> dict:
    return {
        "name": "envoy.filters.http.lua",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
            "default_source_code": {"filename": str(LUA)},
        },
    }


def ecds_filter(workdir: Path) -> dict:
    path = workdir / "ecds" / "canary-selector.json"
    ecds.write_atomically(str(path), ecds.resource(json.dumps(PLUGIN_CONFIG), str(WASM)))
    return {
        "name": ecds.DEFAULT_NAME,
        "config_discovery": {
            "config_source": {
                "resource_api_version": "V3",
                "path_config_source": {"path": str(path), "watched_directory": {"path": str(path.parent)}},
            },
            "type_urls": [ecds.WASM_FILTER],
        },
    }


VARIANTS = {
    v.name: v
    for v in [
        Variant("none", "no filter; the client sets x-canary-version", lambda _: None, client_expect),
        Variant("lua", "envoy/lua/canary.lua (same rule, same stickiness)", lua_filter, canary_expect,
                module=lambda: LUA),
        Variant("canary-selector", "the module, inline typed_config", lambda _: wasm_filter(WASM, json.dumps(PLUGIN_CONFIG)),
                canary_expect, module=lambda: WASM, counts_requests=True),
        # Another build of the module, to compare two builds in one run:
        # CANARY_WASM_B=path/to/other.wasm VARIANTS=none,canary-selector,canary-selector-b
        Variant("canary-selector-b", "the module at $CANARY_WASM_B, inline typed_config",
                lambda _: wasm_filter(WASM_B, json.dumps(PLUGIN_CONFIG)), canary_expect,
                module=lambda: WASM_B, counts_requests=True),
        # The module of an earlier commit (CANARY_WASM_PREV; `make bench` builds PREV_REV's).
        Variant("canary-selector-prev", "the module at $CANARY_WASM_PREV (an earlier commit)",
                lambda _: wasm_filter(WASM_PREV, json.dumps(PLUGIN_CONFIG)), canary_expect,
                module=lambda: WASM_PREV, counts_requests=True),
        # Breakdown variants (VARIANTS=...): where canary-selector's cost goes.
        Variant("canary-selector-ecds", "the module over ECDS, as Istio delivers it", ecds_filter, canary_expect,
                module=lambda: WASM, counts_requests=True),
        Variant("wasm-empty", "floor.rs: 2 exported callbacks, no-op", lambda _: wasm_filter(floor_module([])),
                client_expect, module=lambda: OUT / "floor.wasm"),
        Variant("wasm-headers", "floor.rs: + get x-canary-tester, x-user-id; replace x-canary-version",
                lambda _: wasm_filter(floor_module(["work", "noclear"])), last_digit_expect,
                module=lambda: OUT / "floor-work-noclear.wasm"),
        Variant("wasm-pairs", "floor.rs: as wasm-headers, reading all headers with one get_header_map_pairs",
                lambda _: wasm_filter(floor_module(["work", "noclear", "pairs"])), last_digit_expect,
                module=lambda: OUT / "floor-work-noclear-pairs.wasm"),
        Variant("wasm-headers-clear", "floor.rs: + clear_route_cache (canary-selector's 4 host calls)",
                lambda _: wasm_filter(floor_module(["work"])), last_digit_expect, module=lambda: OUT / "floor-work.wasm"),
        Variant("wasm-headers-clear-metric", "floor.rs: + 1 counter increment",
                lambda _: wasm_filter(floor_module(["work", "metric"])), last_digit_expect,
                module=lambda: OUT / "floor-work-metric.wasm"),
        Variant("wasm-headers-clear-metric-cb", "floor.rs: + no-op on_response_headers, on_delete exported",
                lambda _: wasm_filter(floor_module(["work", "metric", "callbacks"])), last_digit_expect,
                module=lambda: OUT / "floor-work-metric-callbacks.wasm"),
        # In every default run: the floor any proxy-wasm module doing this job
        # pays, next to Lua. canary-selector's ABI crossings (the callbacks
        # it exports: request headers, response headers, delete; one
        # get_header_map_pairs, the header replace, the clear_route_cache
        # call) with no logic and no config behind them.
        Variant("wasm-floor", "floor.rs: canary-selector's exports and host calls, no logic",
                lambda _: wasm_filter(floor_module(["work", "pairs", "callbacks", "nocreate"])), last_digit_expect,
                module=lambda: OUT / "floor-work-pairs-callbacks-nocreate.wasm"),
    ]
}
# More builds to compare in one run: CANARY_WASM_EXTRA=name=path[,name=path...]
# adds a variant "canary-selector-<name>" per module.
for _spec in filter(None, os.environ.get("CANARY_WASM_EXTRA", "").split(",")):
    _name, _, _path = _spec.partition("=")
    VARIANTS[f"canary-selector-{_name}"] = Variant(
        f"canary-selector-{_name}", f"the module at {_path}, inline typed_config",
        lambda _, p=Path(_path): wasm_filter(p, json.dumps(PLUGIN_CONFIG)), canary_expect,
        module=lambda p=Path(_path): p, counts_requests=True)


# --- one Envoy per variant --------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pin(cpu: int | None) -> Callable[[], None] | None:
    return None if cpu is None else (lambda: os.sched_setaffinity(0, {cpu}))


@dataclass
class Envoy:
    variant: Variant
    cpu: int | None
    # Worker threads (each with its own Wasm VM); the CPU comparison runs one.
    concurrency: int = 1
    workdir: Path = field(init=False)
    proc: subprocess.Popen | None = None
    # Top-level bootstrap fields to add (memory.py's MEMORY_RELEASE).
    bootstrap_extra: dict = field(default_factory=dict)
    # More clusters (mesh.py's Prometheus).
    extra_clusters: list = field(default_factory=list)
    # HTTP filters between the variant's filter and the router (models.py's
    # buffer filter, so that a direct response comes after the whole body).
    before_router: list = field(default_factory=list)

    def start(self) -> "Envoy":
        self.workdir = OUT / self.variant.name
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.admin, self.port = free_port(), free_port()
        cfg = yaml.safe_load(BASE_CONFIG.read_text())
        cfg["admin"]["address"]["socket_address"]["port_value"] = self.admin
        listener = cfg["static_resources"]["listeners"][0]
        listener["address"]["socket_address"]["port_value"] = self.port
        hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
        router = hcm["http_filters"][-1]
        extra = self.variant.http_filter(self.workdir)
        hcm["http_filters"] = ([extra] if extra else []) + self.before_router + [router]
        if PROTOCOL == "grpc":
            grpc_routes(cfg, hcm)
        if "config_discovery" in (extra or {}):
            cfg["node"] = {"id": "bench", "cluster": "bench"}  # xDS needs a node identity
        cfg.update(self.bootstrap_extra)
        cfg["static_resources"].setdefault("clusters", []).extend(self.extra_clusters)
        (self.workdir / "envoy.yaml").write_text(yaml.safe_dump(cfg))
        self.log = self.workdir / "envoy.log"
        self.proc = subprocess.Popen(
            [str(ENVOY), "-c", str(self.workdir / "envoy.yaml"), "--concurrency", str(self.concurrency),
             "--disable-hot-restart", "-l", "warning", "--log-path", str(self.log)],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, preexec_fn=pin(self.cpu),
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.variant.name}: Envoy exited:\n{self.log.read_text()[-3000:]}")
            try:
                # (gRPC mode: check_grpc_routing makes the first calls.)
                if self.admin_get("/ready") == "LIVE\n" and (
                    PROTOCOL == "grpc" or self.request({"x-user-id": "warm"})[0] == 200
                ):
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.variant.name}: Envoy not ready in 60s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def admin_get(self, path: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}{path}", timeout=5) as r:
            return r.read().decode()

    def counters(self, regex: str) -> dict[str, int]:
        text = self.admin_get("/stats?type=Counters&filter=" + urllib.parse.quote(regex))
        return {k: int(v) for k, _, v in (line.partition(": ") for line in text.splitlines()) if v.isdigit()}

    def cpu_seconds(self) -> float:
        stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def request(self, headers: dict) -> tuple[int, str | None]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{PATH}", headers=headers)
        with urllib.request.urlopen(req, timeout=5) as r:
            r.read()
            return r.status, r.headers.get("x-served-by")


def check_routing(envoy: Envoy) -> None:
    """The variant routes as it should before it is measured."""
    cases = [{"x-user-id": f"user-{n}", "x-canary-version": "model-v1" if n % 2 else "model-v2"} for n in range(1, 201)]
    cases += [
        {"x-user-id": "alice", "x-canary-tester": "true"},
        {"x-user-id": "user-27"},
        {"x-canary-version": "model-v2"},
        {},
    ]
    for headers in cases:
        status, served = envoy.request(headers)
        anonymous = "x-user-id" not in headers and "x-canary-tester" not in headers
        if envoy.variant.expect is canary_expect and anonymous:
            ok = status == 200 and served in ("model-v1", "model-v2")  # a random pick
        else:
            ok = status == 200 and served == envoy.variant.expect(headers)
        if not ok:
            raise SystemExit(f"{envoy.variant.name}: {headers} -> {status} {served}, "
                             f"expected {envoy.variant.expect(headers)}")


# --- gRPC -------------------------------------------------------------------

GRPC_PORTS = {"model-v1": 0, "model-v2": 0}  # set when the servers start


def grpc_routes(cfg: dict, hcm: dict) -> None:
    """Routes on x-canary-version to the gRPC model servers, as in
    envoy/envoy.yaml, over HTTP/2 upstream."""
    routes = [
        {"match": {"prefix": "/", "headers": [{"name": "x-canary-version", "string_match": {"exact": v}}]},
         "route": {"cluster": f"{v}-grpc"}}
        for v in GRPC_PORTS
    ] + [{"match": {"prefix": "/"}, "route": {"cluster": "model-v1-grpc"}}]
    hcm["route_config"] = {"name": "model", "virtual_hosts": [{"name": "model", "domains": ["*"], "routes": routes}]}
    http2 = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}}}}
    cfg["static_resources"]["clusters"] = [
        {"name": f"{v}-grpc", "connect_timeout": "1s", "typed_extension_protocol_options": http2,
         "load_assignment": {"cluster_name": f"{v}-grpc", "endpoints": [{"lb_endpoints": [{"endpoint": {
             "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}}
        for v, port in GRPC_PORTS.items()
    ]


def start_grpc_models(cpu: int | None) -> subprocess.Popen:
    """envoy/grpc_models.py's two servers, in a process on the load's CPU."""
    for v in GRPC_PORTS:
        GRPC_PORTS[v] = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "envoy/grpc_models.py"),
         "--port-v1", str(GRPC_PORTS["model-v1"]), "--port-v2", str(GRPC_PORTS["model-v2"])],
        stdout=subprocess.PIPE, text=True, preexec_fn=pin(cpu))
    proc.stdout.readline()  # "grpc models: ..." once both listen
    return proc


def grpc_body() -> Path:
    """One ModelInfer request as a gRPC message on the wire (uncompressed
    flag, big-endian length, the protobuf), for h2load to send."""
    sys.path.insert(0, str(ROOT / "envoy"))
    import grpc_models

    message = grpc_models.infer_request().SerializeToString()
    path = OUT / "model-infer.bin"
    path.write_bytes(b"\0" + len(message).to_bytes(4, "big") + message)
    return path


def h2load(envoy: "Envoy", seconds: int, connections: int, cpu: int | None) -> dict:
    """gRPC calls with h2load: `connections` HTTP/2 connections, one stream
    at a time on each, as user-1 (model-v1 at 90/10)."""
    out = subprocess.run(
        ["h2load", "-c", str(connections), "-m", "1", "-D", str(seconds), "-d", str(grpc_body()),
         "-H", "content-type: application/grpc", "-H", "te: trailers",
         "-H", "x-user-id: user-1", "-H", "x-canary-version: model-v1",
         f"http://127.0.0.1:{envoy.port}{GRPC_PATH}"],
        capture_output=True, text=True, preexec_fn=pin(cpu), check=True,
    )
    text = out.stdout
    done = int(re.search(r"requests: \d+ total, \d+ started, (\d+) done", text).group(1))
    failed = re.search(r"(\d+) failed, (\d+) errored, (\d+) timeout", text)
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+(\S+)", text).group(1)
    mean_us = float(mean[:-2]) * 1000 if mean.endswith("ms") else float(mean[:-2])
    errors = sum(int(x) for x in failed.groups())
    return {"requests": done, "duration_us": seconds * 1_000_000, "p50_us": mean_us, "p99_us": float("nan"),
            "errors": {"h2load": errors, "status": 0}}


def check_grpc_routing(envoy: "Envoy") -> None:
    import grpc
    sys.path.insert(0, str(ROOT / "envoy"))
    import grpc_models
    from tritonclient.grpc import service_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{envoy.port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for n in range(1, 101):
            headers = {"x-user-id": f"user-{n}", "x-canary-version": "model-v1" if n % 2 else "model-v2"}
            response = stub.ModelInfer(grpc_models.infer_request(), metadata=list(headers.items()), timeout=5)
            if response.model_version != envoy.variant.expect(headers):
                raise SystemExit(f"{envoy.variant.name}: gRPC {headers} -> {response.model_version}")


# --- load -------------------------------------------------------------------


def wrk(envoy: Envoy, seconds: int, connections: int, cpu: int | None) -> dict:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s", "-s", str(LOAD),
         f"http://127.0.0.1:{envoy.port}{PATH}"],
        capture_output=True, text=True, preexec_fn=pin(cpu), check=True,
    )
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("BENCH ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result:\n{out.stdout}\n{out.stderr}")
    return json.loads(line[len("BENCH "):])


def busy_ticks() -> int:
    """CPU time spent by everything on the machine (/proc/stat), in ticks."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return f[0] + f[1] + f[2] + f[5] + f[6]  # user, nice, system, irq, softirq


def wait_quiet(envoys: list[Envoy], limit: float) -> float:
    """Waits (up to `limit` seconds) until other processes leave the CPUs
    alone for a second; returns the seconds waited."""
    start = time.monotonic()
    while True:
        busy0, own0 = busy_ticks(), sum(e.cpu_seconds() for e in envoys)
        time.sleep(1)
        other = (busy_ticks() - busy0) / os.sysconf("SC_CLK_TCK") - (sum(e.cpu_seconds() for e in envoys) - own0)
        waited = time.monotonic() - start
        if other < QUIET or waited >= limit:
            return waited


def uncounted(envoy: Envoy, completed: int, slack: int) -> int:
    """Requests Envoy completed since it started that canary-selector's own
    counters do not show. The module may count in the VM and flush on its
    tick (once a second): wait up to 3 s for the counters to catch up. (A
    few requests sent while an ECDS config was still on its way may pass
    without the filter: up to `slack` are tolerated.)"""
    if not envoy.variant.counts_requests:
        return 0
    deadline = time.monotonic() + 3
    while True:
        # The decision counters, as modules before and after 30818bb name them.
        decided = r"^wasmcustom\.(canary_selector\.requests\.|.*;canary_selector_requests_total$)"
        counted = sum(envoy.counters(decided).values())
        if completed - counted <= slack or time.monotonic() > deadline:
            return completed - counted
        time.sleep(0.2)


GRPC_MODELS: subprocess.Popen | None = None  # the gRPC model servers, in grpc mode


def process_cpu(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def load(envoy: Envoy, seconds: int, connections: int, cpu: int | None) -> dict:
    return (h2load if PROTOCOL == "grpc" else wrk)(envoy, seconds, connections, cpu)


def measure(envoy: Envoy, seconds: int, connections: int, cpu: int | None) -> dict:
    rq = r"^http\.ingress\.downstream_rq_(completed|2xx)$"
    before = envoy.counters(rq)
    wrk0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    models0 = process_cpu(GRPC_MODELS.pid) if GRPC_MODELS else 0.0
    busy0, cpu0, t0 = busy_ticks(), envoy.cpu_seconds(), time.monotonic()
    load_ = load(envoy, seconds, connections, cpu)
    time.sleep(0.1)  # let Envoy finish the streams the load left behind
    busy1, cpu1, t1 = busy_ticks(), envoy.cpu_seconds(), time.monotonic()
    models1 = process_cpu(GRPC_MODELS.pid) if GRPC_MODELS else 0.0
    wrk1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    after = envoy.counters(rq)
    completed = after["http.ingress.downstream_rq_completed"] - before["http.ingress.downstream_rq_completed"]
    ok = after["http.ingress.downstream_rq_2xx"] - before["http.ingress.downstream_rq_2xx"]
    wrk_cpu = (wrk1.ru_utime + wrk1.ru_stime) - (wrk0.ru_utime + wrk0.ru_stime) + (models1 - models0)
    # CPU used by anything but this Envoy and wrk (other work on the machine).
    other = (busy1 - busy0) / os.sysconf("SC_CLK_TCK") - (cpu1 - cpu0) - wrk_cpu
    return {
        "cpu_us_per_req": (cpu1 - cpu0) * 1e6 / max(completed, 1),
        "rps": load_["requests"] / (load_["duration_us"] / 1e6),
        "p50_us": load_["p50_us"],
        "p99_us": load_["p99_us"],
        "rss_mib": envoy.rss_mib(),
        "envoy_cores": (cpu1 - cpu0) / (t1 - t0),
        "other_cores": max(other, 0.0) / (t1 - t0),
        "completed": completed,
        "non_2xx": completed - ok,
        "socket_errors": sum(v for k, v in load_["errors"].items() if k != "status"),
    }


# --- report -----------------------------------------------------------------


def machine() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next((ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if ln.startswith("model name")), "?")
    version = subprocess.run([str(ENVOY), "--version"], capture_output=True, text=True).stdout.split("version:")[-1]
    return {"nproc": os.cpu_count(), "cpu": model, "envoy": version.strip(), "kernel": os.uname().release}


def table(summary: dict, module_sizes: dict) -> str:
    head = "| variant | CPU µs/req | Δ vs none | req/s | p50 µs | p99 µs | RSS MiB | module |"
    rows = [head, "|---|---:|---:|---:|---:|---:|---:|---:|"]
    base = summary.get("none", {}).get("cpu_us_per_req")
    for name, s in summary.items():
        delta = f"+{s['cpu_us_per_req'] - base:.1f}" if base is not None and name != "none" else "–"
        size = module_sizes.get(name)
        rows.append(
            f"| {name} | {s['cpu_us_per_req']:.1f} | {delta} | {s['rps']:,.0f} | {s['p50_us']:.0f} | "
            f"{s['p99_us']:.0f} | {s['rss_mib']:.1f} | {f'{size:,} B' if size else '–'} |"
        )
    return "\n".join(rows)


def allocations_per_request(cpu: int | None, n: int = 2000) -> dict[str, float]:
    """The module built with `--features alloc-stats` counts its heap
    allocations in a counter (added to on the tick): per request, for a
    sticky request, a tester (rule) and an anonymous one, each on a new
    connection (urllib)."""
    variant = Variant("canary-selector-allocs", "the module counting its allocations",
                      lambda _: wasm_filter(WASM_ALLOCS, json.dumps(PLUGIN_CONFIG)), canary_expect)
    envoy = Envoy(variant, cpu).start()
    counter = r"^wasmcustom\.canary_selector\.debug\.allocations$"

    def allocations() -> int:
        time.sleep(1.2)  # a tick
        return envoy.counters(counter)["wasmcustom.canary_selector.debug.allocations"]

    out = {}
    try:
        for kind, headers in [("sticky", lambda i: {"x-user-id": f"user-{i}"}),
                              ("rule", lambda i: {"x-user-id": f"user-{i}", "x-canary-tester": "true"}),
                              ("anonymous", lambda i: {})]:
            before = allocations()
            for i in range(n):
                envoy.request(headers(i))
            out[kind] = (allocations() - before) / n
    finally:
        envoy.stop()
    return out


def main() -> int:
    rounds = int(os.environ.get("ROUNDS", 12))
    seconds = int(os.environ.get("DURATION", 3))  # wrk takes whole seconds
    connections = int(os.environ.get("CONNECTIONS", 32))
    warmup = int(os.environ.get("WARMUP", 0))
    default = "none,lua,canary-selector" + (",canary-selector-prev" if WASM_PREV else "")
    names = os.environ.get("VARIANTS", default).split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    pinned = (os.cpu_count() or 1) >= 2
    envoy_cpu = int(os.environ.get("ENVOY_CPU", 0)) if pinned else None
    load_cpu = int(os.environ.get("LOAD_CPU", 1)) if pinned else None
    for path in (ENVOY, WASM):
        if not path.exists():
            raise SystemExit(f"{path} missing: run `make venv build`")
    OUT.mkdir(parents=True, exist_ok=True)
    print(f"bench: {', '.join(names)}; {rounds} rounds of {seconds}s at {connections} connections "
          f"(+{warmup}s warm-up each); Envoy on CPU {envoy_cpu}, wrk on CPU {load_cpu}", flush=True)

    envoys: dict[str, Envoy] = {}
    disturbed = 0
    runs: dict[str, list[dict]] = {n: [] for n in names}
    global GRPC_MODELS
    if PROTOCOL == "grpc":
        GRPC_MODELS = start_grpc_models(load_cpu)
        print(f"gRPC: h2load to envoy/grpc_models.py's servers on {GRPC_PORTS}", flush=True)
    try:
        for n in names:
            envoys[n] = Envoy(VARIANTS[n], envoy_cpu).start()
            (check_grpc_routing if PROTOCOL == "grpc" else check_routing)(envoys[n])
            print(f"  {n:28} {VARIANTS[n].what}", flush=True)
            load(envoys[n], 3, connections, load_cpu)  # JIT tiers (V8, LuaJIT) warm up
        print("routing checked: every variant sends each request where it should", flush=True)
        for r in range(rounds):
            for n in names:
                # The machine may be shared: a run that other processes
                # disturbed is measured again (RETRIES times); with QUIET_WAIT,
                # each run first waits for them to leave the CPUs alone.
                for attempt in range(RETRIES + 1):
                    if QUIET_WAIT > 0 and wait_quiet(list(envoys.values()), QUIET_WAIT) > 1.5:
                        print("  (waited for other processes to leave the CPUs)", flush=True)
                    if warmup > 0:
                        load(envoys[n], warmup, connections, load_cpu)
                    m = measure(envoys[n], seconds, connections, load_cpu)
                    busy = m["other_cores"] > QUIET
                    print(f"  round {r + 1}/{rounds} {n:28} {m['cpu_us_per_req']:6.1f} µs/req "
                          f"{m['rps']:9,.0f} req/s  p50 {m['p50_us']:5.0f} µs  p99 {m['p99_us']:5.0f} µs  "
                          f"non-2xx {m['non_2xx']}  other CPU {m['other_cores']:.2f}"
                          + ("  (busy machine: again)" if busy and attempt < RETRIES else ""), flush=True)
                    if not busy:
                        break
                    disturbed += attempt == RETRIES
                runs[n].append(m)
        # Checked once, after the last run: the filter counts in the VM and
        # flushes once a second, so a per-run check would wait for a flush.
        missed = {n: uncounted(envoys[n], envoys[n].counters(r"^http\.ingress\.downstream_rq_completed$")
                               ["http.ingress.downstream_rq_completed"], connections) for n in names}
    finally:
        for e in envoys.values():
            e.stop()
        if GRPC_MODELS:
            GRPC_MODELS.terminate()
            GRPC_MODELS.wait()

    summary = {n: {k: statistics.median(run[k] for run in runs[n]) for k in runs[n][0]} for n in names}
    sizes = {n: p.stat().st_size for n in names if (p := VARIANTS[n].module()) is not None and p.exists()}
    result = {"machine": machine(), "settings": {"rounds": rounds, "duration_s": seconds,
              "connections": connections, "warmup_s": warmup, "protocol": PROTOCOL,
              "guard": "guard" in ROLLOUT, "extra_rules": len(ROLLOUT["rules"]) - 1,
              "rollouts": "rollouts" in PLUGIN_CONFIG},
              "runs": runs, "summary": summary,
              "module_bytes": sizes}

    print()
    print(table(summary, sizes))
    ratio = None
    if {"none", "lua", "canary-selector"} <= set(names):
        cpu = {n: summary[n]["cpu_us_per_req"] for n in ("none", "lua", "canary-selector")}
        ratio = (cpu["canary-selector"] - cpu["none"]) / (cpu["lua"] - cpu["none"])
        per_round = sorted(
            (c["cpu_us_per_req"] - z["cpu_us_per_req"]) / (lu["cpu_us_per_req"] - z["cpu_us_per_req"])
            for z, lu, c in zip(runs["none"], runs["lua"], runs["canary-selector"])
        )
        result["ratio"] = ratio
        result["ratio_per_round"] = per_round
        print(f"\noverhead ratio (canary-selector - none) / (lua - none) = {ratio:.2f}   "
              f"(per-round median {statistics.median(per_round):.2f}, quartiles "
              f"{statistics.quantiles(per_round, n=4)[0] if len(per_round) > 1 else ratio:.2f} .. "
              f"{statistics.quantiles(per_round, n=4)[2] if len(per_round) > 1 else ratio:.2f})")
        # Noise on this kind of machine only ever slows a run down: the
        # fastest runs of each variant are the least disturbed ones.
        low = {n: sorted(r["cpu_us_per_req"] for r in runs[n])[len(runs[n]) // 10]
               for n in ("none", "lua", "canary-selector")}
        result["ratio_p10"] = (low["canary-selector"] - low["none"]) / (low["lua"] - low["none"])
        print(f"  from each variant's 10th-percentile run (the least disturbed): none {low['none']:.1f}, "
              f"lua {low['lua']:.1f}, canary-selector {low['canary-selector']:.1f} µs/req, "
              f"ratio {result['ratio_p10']:.2f}")
        # The reference modules put the ratio in context: what the Wasm
        # runtime charges before a module does anything, and the least any
        # proxy-wasm module doing this job pays.
        refs = [n for n in ("wasm-empty", "wasm-floor") if n in names]
        for n in refs:
            result[f"ratio_{n}"] = (summary[n]["cpu_us_per_req"] - cpu["none"]) / (cpu["lua"] - cpu["none"])
        if refs:
            print("  same ratio for the reference modules: " + ", ".join(
                f"{n} {result[f'ratio_{n}']:.2f}" for n in refs))
        if "wasm-floor" in names:
            own = cpu["canary-selector"] - summary["wasm-floor"]["cpu_us_per_req"]
            print(f"  canary-selector - wasm-floor = {own:+.1f} µs/req: the cost of its own logic and state")
        quiet = [i for i in range(rounds)
                 if all(runs[n][i]["other_cores"] <= QUIET for n in ("none", "lua", "canary-selector"))]
        if len(quiet) >= 3:
            q = {n: statistics.median(runs[n][i]["cpu_us_per_req"] for i in quiet)
                 for n in ("none", "lua", "canary-selector")}
            result["ratio_quiet_rounds"] = (q["canary-selector"] - q["none"]) / (q["lua"] - q["none"])
            print(f"  over the {len(quiet)} rounds no other process disturbed: none {q['none']:.1f}, "
                  f"lua {q['lua']:.1f}, canary-selector {q['canary-selector']:.1f} µs/req, "
                  f"ratio {result['ratio_quiet_rounds']:.2f}")
    if {"none", "canary-selector", "canary-selector-prev"} <= set(names):
        cpu = {n: summary[n]["cpu_us_per_req"] for n in ("none", "canary-selector", "canary-selector-prev")}
        per_round = sorted(
            (c["cpu_us_per_req"] - z["cpu_us_per_req"]) / (p["cpu_us_per_req"] - z["cpu_us_per_req"])
            for z, c, p in zip(runs["none"], runs["canary-selector"], runs["canary-selector-prev"])
        )
        result["ratio_vs_prev"] = (cpu["canary-selector"] - cpu["none"]) / (cpu["canary-selector-prev"] - cpu["none"])
        result["ratio_vs_prev_per_round"] = per_round
        q = statistics.quantiles(per_round, n=4) if len(per_round) > 1 else [per_round[0]] * 3
        print(f"\nagainst the previous module: (canary-selector - none) / (canary-selector-prev - none) = "
              f"{result['ratio_vs_prev']:.3f} of the medians; per-round median {statistics.median(per_round):.3f} "
              f"(quartiles {q[0]:.3f} .. {q[2]:.3f}); overheads +{cpu['canary-selector'] - cpu['none']:.2f} "
              f"against +{cpu['canary-selector-prev'] - cpu['none']:.2f} µs/req")
    for n in ("canary-selector", "canary-selector-prev"):
        if n in sizes:
            print(f"module size {n}: {sizes[n]:,} bytes ({sizes[n] / 1024:.0f} KiB)")
    if WASM_ALLOCS:
        result["allocations_per_request"] = allocations_per_request(envoy_cpu)
        print("heap allocations per request, in the module: " + ", ".join(
            f"{k} {v:.2f}" for k, v in result["allocations_per_request"].items()))
    failures = [f"{n} round {i + 1}: {m['non_2xx']} non-2xx, {m['socket_errors']} socket errors"
                for n in names for i, m in enumerate(runs[n]) if m["non_2xx"] or m["socket_errors"]]
    # h2load stops at its duration with streams in flight: Envoy counts them
    # as reset, not completed, after the filter counted them; up to one per
    # connection for each load run (the warm-up and every round).
    slack = connections * (rounds + 2) if PROTOCOL == "grpc" else connections
    failures += [f"{n}: {k} requests served that the filter's counters do not show"
                 for n, k in missed.items() if abs(k) > slack]
    result["uncounted"] = missed
    total = sum(m["completed"] for n in names for m in runs[n])
    print(f"responses: {total:,}, non-2xx or errors: {'none' if not failures else len(failures)} "
          f"(machine: {result['machine']['nproc']} x {result['machine']['cpu']}, Envoy {result['machine']['envoy']})")
    if disturbed:
        print(f"note: {disturbed} run(s) kept although other processes used more than {QUIET} cores "
              "during them (see other_cores in results.json)")
    (OUT / "results.json").write_text(json.dumps(result, indent=2))
    print(f"raw runs: {OUT.relative_to(ROOT)}/results.json")
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
