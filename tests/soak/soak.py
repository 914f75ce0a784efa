#!/usr/bin/env python3
"""Soak: the real Envoy with the filter under sustained wrk load while a new
config is pushed over ECDS every few seconds, mixing valid weight changes and
invalid configs. It checks, and prints:

- zero non-2xx responses and zero socket errors (wrk and the checker);
- zero Wasm VM failures: no trap in Envoy's log, no `wasm.*vm_reload*`, the
  number of live VMs unchanged, and every request decided by the filter (the
  filter's counters add up to the listener's request count: a failed-open VM
  would skip requests);
- every valid push accepted and every invalid one rejected
  (`update_success` / `update_rejected`);
- every sticky response consistent with the config live at the time (see
  `allowed_configs` for the rule during a switch);
- Envoy's RSS growth after warm-up under 5 MB.

Usage: tests/soak/soak.py --duration 10m [--push-every 3] [--out .run/soak.json]
(`make soak DURATION=10m`). Exits 1 if any check fails.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
from harness import ECDS_STATS, Envoy, expected_version  # noqa: E402

LUA = Path(__file__).with_name("load.lua")
RSS_LIMIT_KB = 5 * 1024
# After Envoy reports a push accepted, a worker may still start a stream or
# two with the previous config; responses that straddle a switch may match
# the old or the new config.
SETTLE_S = 1.0
STICKY_USERS = [f"checker-{i}" for i in range(500)]


def parse_duration(text: str) -> float:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (try 600, 90s, 10m)")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


# --- Configs pushed during the run -------------------------------------------


def base_config() -> dict:
    # The demo's `model` rollout (every host and path) as a config of its own,
    # as tests/e2e/conftest.py derives it: the soak's pushes edit its weights
    # at the top level.
    demo = json.loads((ROOT / "envoy" / "plugin-config.json").read_text())
    (model,) = [r for r in demo["rollouts"] if r["name"] == "model"]
    config = {k: v for k, v in model.items() if k not in ("name", "hosts", "pathPrefixes", "models")}
    config["stickiness"].pop("anonymousCookie", None)  # keep anonymous picks random: no cookie churn
    return config


def with_weights(config: dict, v1: float, v2: float) -> dict:
    c = json.loads(json.dumps(config))
    c["versions"] = [{"name": "model-v1", "weight": v1}, {"name": "model-v2", "weight": v2}]
    return c


WEIGHTS = [(100, 0), (99, 1), (90, 10), (75, 25), (50, 50), (10, 90), (0, 100), (99.5, 0.5), (33.333, 66.667)]


def invalid_configs(good: dict) -> list[tuple[str, str | dict]]:
    """(label, config) pairs the filter must reject."""
    rule = {"name": "t", "match": {"headers": {"x-t": {"exact": "1"}}}, "version": "model-v2"}
    return [
        ("weights sum to 90", with_weights(good, 50, 40)),
        ("unknown field", {**good, "colour": "blue"}),
        ("not JSON", "{not json"),
        ("rule to an unknown version", {**good, "rules": [{**rule, "version": "model-v3"}]}),
        ("reserved routing header", {**good, "routingHeader": "cookie"}),
        ("CR/LF in a version name", {**good, "versions": [
            {"name": "model-v1", "weight": 50}, {"name": "model-v2\r\nx-evil: 1", "weight": 50}]}),
        ("regex past 512 bytes", {**good, "rules": [
            {**rule, "match": {"headers": {"x-t": {"regex": "a" * 513}}}}]}),
        ("17 versions", {**good, "versions": [{"name": f"v{i}", "weight": 100 if i == 0 else 0} for i in range(17)]}),
        ("invalid regex", {**good, "rules": [{**rule, "match": {"headers": {"x-t": {"regex": "("}}}}]}),
        ("empty object", {}),
    ]


# --- Load, checker, sampler ---------------------------------------------------


def wrk(envoy: Envoy, seconds: float, connections: int) -> subprocess.Popen:
    url = f"http://127.0.0.1:{envoy.ports['ingress']}/"
    return subprocess.Popen(
        ["wrk", "-t1", f"-c{connections}", f"-d{int(seconds)}s", "--timeout", "5s", "-s", str(LUA), url],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


class Checker(threading.Thread):
    """Sends sticky requests (x-user-id) one at a time, about `rate` per
    second, and records (sent, received, user, status, served_by)."""

    def __init__(self, envoy: Envoy, rate: float = 100.0):
        super().__init__(daemon=True)
        self.envoy, self.rate = envoy, rate
        self.stop = threading.Event()
        self.samples: list[tuple[float, float, str, int, str | None]] = []
        self.errors: list[str] = []

    def run(self):
        rng = random.Random(7)
        conn = self.envoy.connection()
        while not self.stop.is_set():
            user = rng.choice(STICKY_USERS)
            t0 = time.monotonic()
            try:
                r = self.envoy.request({"x-user-id": user}, conn=conn)
            except Exception as e:  # noqa: BLE001  (any failure is a finding)
                self.errors.append(repr(e))
                conn.close()
                conn = self.envoy.connection()
                continue
            t1 = time.monotonic()
            self.samples.append((t0, t1, user, r.status, r.served_by))
            time.sleep(max(0.0, 1 / self.rate - (t1 - t0)))


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS, and its anonymous and file-backed parts (the Envoy binary's
    code is paged in as new code paths run), from /proc."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0])
    return out


def rss_kb(pid: int) -> int:
    return memory_kb(pid)["VmRSS"]


class Sampler(threading.Thread):
    """Envoy's resident memory once a second: (monotonic time, kB), and every
    10 s its parts: anonymous, file-backed, and Envoy's own heap in use
    (`server.memory_allocated`)."""

    def __init__(self, envoy: Envoy):
        super().__init__(daemon=True)
        self.envoy = envoy
        self.stop = threading.Event()
        self.samples: list[tuple[float, int]] = []
        self.parts: list[dict] = []

    def run(self):
        while not self.stop.is_set():
            mem = memory_kb(self.envoy.proc.pid)
            self.samples.append((time.monotonic(), mem["VmRSS"]))
            if len(self.samples) % 10 == 1:
                heap = self.envoy._admin("/stats?filter=^server.memory_allocated$").partition(": ")[2]
                self.parts.append({"t": time.monotonic(), **mem, "heap": int(heap or 0) // 1024})
            self.stop.wait(1.0)


def wasm_stats(envoy: Envoy) -> dict[str, int]:
    """Counters and gauges whose name starts with wasm (not the filter's own)."""
    out = {}
    for line in envoy._admin("/stats?filter=^wasm").splitlines():
        name, _, value = line.partition(": ")
        if value.strip().isdigit() and not name.startswith("wasmcustom."):
            out[name] = int(value)
    return out


# --- The consistency rule -----------------------------------------------------


def allowed_configs(timeline: list[tuple[dict, float, float]], t0: float, t1: float) -> list[dict]:
    """Configs a response to a request sent at t0 and answered at t1 may follow.

    Config k (accepted push k: written at w_k, reported accepted at a_k) may
    serve from w_k until a_{k+1} + SETTLE_S. A response must match a config
    whose window overlaps [t0, t1]: outside a switch that is exactly one
    config; during one, the old or the new.
    """
    out = []
    for k, (config, written, _) in enumerate(timeline):
        until = timeline[k + 1][2] + SETTLE_S if k + 1 < len(timeline) else float("inf")
        if written <= t1 and t0 <= until:
            out.append(config)
    return out


# --- The run ------------------------------------------------------------------


def soak(duration: float, push_every: float, connections: int, warmup: float, wasm: Path | None = None) -> dict:
    rng = random.Random(2026)
    good = with_weights(base_config(), 90, 10)
    invalid = invalid_configs(good)
    workdir = Path(tempfile.mkdtemp(prefix="canary-soak-"))
    envoy = Envoy(workdir, good, concurrency=2, **({"wasm": wasm} if wasm else {})).start()
    try:
        vms_before = wasm_stats(envoy)
        counters_before = envoy.stats()
        start = time.monotonic()
        timeline = [(good, start, start)]
        pushes = []  # (label, expected accepted, accepted, seconds to verdict)
        sampler = Sampler(envoy)
        checker = Checker(envoy)
        sampler.start()
        load = wrk(envoy, duration, connections)
        checker.start()

        n = 0
        while (next_push := start + push_every * (n + 1)) < start + duration - push_every / 2:
            time.sleep(max(0.0, next_push - time.monotonic()))
            n += 1
            if n % 3 == 0:
                label, config = invalid[(n // 3 - 1) % len(invalid)]
                expect = False
            else:
                v1, v2 = rng.choice(WEIGHTS)
                label, config, expect = f"weights {v1}/{v2}", with_weights(good, v1, v2), True
            written = time.monotonic()
            accepted = envoy.push(config)
            acked = time.monotonic()
            pushes.append((label, expect, accepted, round(acked - written, 3)))
            if accepted and isinstance(config, dict):
                timeline.append((config, written, acked))

        out, _ = load.communicate(timeout=duration + 60)
        checker.stop.set()
        checker.join(10)
        sampler.stop.set()
        sampler.join(10)
        counters = envoy.flushed_stats()  # the filter flushes its counts once a second
        vms_after = wasm_stats(envoy)
        logs = envoy.logs()
    finally:
        envoy.stop()

    m = re.search(r"^SOAK_WRK (.*)$", out, re.M)
    if not m:
        raise RuntimeError(f"no result line from wrk:\n{out}")
    load_result = {k: int(v) for k, v in (kv.split("=") for kv in m.group(1).split())}

    # Sticky consistency.
    consistent = straddling = 0
    violations = []
    for t0, t1, user, status, served in checker.samples:
        allowed = {expected_version(c, user) for c in allowed_configs(timeline, t0, t1)}
        if served in allowed:
            consistent += 1
            straddling += len(allowed) > 1
        else:
            violations.append((round(t0 - start, 3), user, status, served, sorted(allowed)))
    checker_non2xx = sum(1 for s in checker.samples if s[3] != 200)

    def delta(name):
        return counters.get(name, 0) - counters_before.get(name, 0)

    decided = sum(v for k, v in counters.items() if k.startswith("wasmcustom.") and k.endswith(";canary_selector_requests_total"))
    requests = counters.get("http.ingress.downstream_rq_total", 0)
    traps = [line for line in logs.splitlines() if re.search(r"Function: proxy_on_\w+ failed", line)]
    reloads = {k: v for k, v in vms_after.items() if "vm_reload" in k and v}
    live_vms = ("wasm.envoy.wasm.runtime.v8.active",)

    rss = sampler.samples
    warm = [kb for t, kb in rss if t >= start + warmup] or [rss[-1][1]]
    result = {
        "duration_s": round(duration),
        "push_every_s": push_every,
        "requests": {
            "wrk": load_result["requests"],
            "checker": len(checker.samples),
            "envoy_total": requests,
            "decided_by_filter": decided,
            "wrk_rps": round(load_result["requests"] / (load_result["duration_us"] / 1e6)),
            "wrk_p50_ms": load_result["p50_us"] / 1000,
            "wrk_p99_ms": load_result["p99_us"] / 1000,
        },
        "non_2xx": load_result["non2xx"] + checker_non2xx,
        "socket_errors": sum(load_result[k] for k in ("connect", "read", "write", "timeout")) + len(checker.errors),
        "pushes": {
            "valid": sum(1 for p in pushes if p[1]),
            "valid_accepted": sum(1 for p in pushes if p[1] and p[2]),
            "invalid": sum(1 for p in pushes if not p[1]),
            "invalid_rejected": sum(1 for p in pushes if not p[1] and not p[2]),
            "update_success": delta(f"{ECDS_STATS}.update_success"),
            "update_rejected": delta(f"{ECDS_STATS}.update_rejected"),
            "slowest_verdict_s": max((p[3] for p in pushes), default=0),
            "wrong": [p for p in pushes if p[1] != p[2]],
        },
        "sticky": {
            "checked": len(checker.samples),
            "consistent": consistent,
            "during_a_switch": straddling,
            "violations": violations[:20],
            "violation_count": len(violations),
        },
        "wasm": {
            "vm_traps_in_log": len(traps),
            "vm_reloads": reloads,
            "live_vms_before": {k: vms_before.get(k) for k in live_vms},
            "live_vms_after": {k: vms_after.get(k) for k in live_vms},
            "vms_created": vms_after.get("wasm.envoy.wasm.runtime.v8.created", 0)
            - vms_before.get("wasm.envoy.wasm.runtime.v8.created", 0),
        },
        "rss_kb": {
            "start": rss[0][1],
            "after_warmup": warm[0],
            "end": rss[-1][1],
            "max": max(kb for _, kb in rss),
            "growth_after_warmup": rss[-1][1] - warm[0],
            "warmup_s": warmup,
            # every 10 s: seconds since start, VmRSS, RssAnon, RssFile, Envoy's heap in use (kB)
            "series": [
                (round(p["t"] - start), p["VmRSS"], p["RssAnon"], p["RssFile"], p["heap"]) for p in sampler.parts
            ],
        },
    }
    checks = {
        "non-2xx = 0": result["non_2xx"] == 0,
        "socket errors = 0": result["socket_errors"] == 0,
        "every request decided by the filter": decided == requests > 0,
        "no VM trap or reload": not traps and not reloads,
        "live VMs unchanged": result["wasm"]["live_vms_before"] == result["wasm"]["live_vms_after"],
        "every valid push accepted, every invalid rejected": not result["pushes"]["wrong"]
        and result["pushes"]["update_success"] == result["pushes"]["valid"]
        and result["pushes"]["update_rejected"] == result["pushes"]["invalid"],
        "pushes of both kinds": result["pushes"]["valid"] > 0 and result["pushes"]["invalid"] > 0,
        "sticky responses follow the live config": not violations and len(checker.samples) > 0,
        f"RSS growth after warm-up < {RSS_LIMIT_KB} kB": result["rss_kb"]["growth_after_warmup"] < RSS_LIMIT_KB,
    }
    result["checks"] = checks
    return result


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=parse_duration, default=60.0, help="600, 90s, 10m (default 60s)")
    p.add_argument("--push-every", type=float, default=3.0, help="seconds between config pushes")
    p.add_argument("--connections", type=int, default=16, help="wrk connections")
    p.add_argument("--warmup", type=parse_duration, default=None,
                   help="RSS baseline time (default: a quarter of the run, at most 60s)")
    p.add_argument("--out", default=str(ROOT / ".run" / "soak.json"), help="where to write the figures (JSON)")
    p.add_argument("--wasm", type=Path, default=None, help="another module to soak (default: the built one)")
    args = p.parse_args(argv)
    warmup = args.warmup if args.warmup is not None else min(60.0, args.duration / 4)

    print(f"soak: {args.duration:.0f}s of wrk load, a push every {args.push_every}s ...", flush=True)
    result = soak(args.duration, args.push_every, args.connections, warmup, args.wasm)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))

    r, pu, st, w, m = result["requests"], result["pushes"], result["sticky"], result["wasm"], result["rss_kb"]
    first, last = m["series"][0], m["series"][-1]
    print(f"""
requests     {r['envoy_total']} served ({r['wrk']} wrk at {r['wrk_rps']}/s, p50 {r['wrk_p50_ms']} ms, \
p99 {r['wrk_p99_ms']} ms; {r['checker']} checker), {r['decided_by_filter']} decided by the filter
non-2xx      {result['non_2xx']}   socket errors {result['socket_errors']}
pushes       {pu['valid_accepted']}/{pu['valid']} valid accepted, {pu['invalid_rejected']}/{pu['invalid']} invalid \
rejected (update_success +{pu['update_success']}, update_rejected +{pu['update_rejected']}), slowest verdict \
{pu['slowest_verdict_s']} s
sticky       {st['consistent']}/{st['checked']} consistent ({st['during_a_switch']} during a switch), \
{st['violation_count']} violations
wasm         {w['vm_traps_in_log']} traps, reloads {w['vm_reloads'] or 0}, live VMs {w['live_vms_before']} -> \
{w['live_vms_after']}, {w['vms_created']} VMs created for {pu['valid'] + pu['invalid']} pushes
RSS          {m['start']} kB at start, {m['after_warmup']} kB after {m['warmup_s']:.0f}s warm-up, {m['end']} kB at \
end (max {m['max']}): growth {m['growth_after_warmup']} kB
             (anonymous {first[2]} -> {last[2]} kB, file-backed {first[3]} -> {last[3]} kB, \
Envoy heap in use {first[4]} -> {last[4]} kB)
figures in {args.out}""")
    failed = [name for name, ok in result["checks"].items() if not ok]
    for name, ok in result["checks"].items():
        print(f"  {'ok  ' if ok else 'FAIL'} {name}")
    if st["violations"]:
        print("first violations (t, user, status, served, allowed):", st["violations"][:5])
    if pu["wrong"]:
        print("pushes with the wrong verdict:", pu["wrong"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
