#!/usr/bin/env python3
"""`make bench-memory`: what canary-selector adds to Envoy's memory, next to
no filter, the Lua peer and a minimal proxy-wasm SDK filter (the floor any
SDK filter pays: tests/bench/sdk_floor/main.rs).

Every variant is the bench's Envoy (envoy/lua/envoy.yaml, direct responses;
see tests/bench/bench.py) with 1, 2 and 8 worker threads (each worker runs
its own Wasm VM, and the main thread one more). For each: Envoy's RSS
(`VmRSS`, /proc) and its heap (tcmalloc's `allocated` and `heap_size`, from
the admin `/memory` endpoint) after a warm-up (3 s of load), and again after
a million requests (wrk, a new user id on each). canary-selector runs with
the demo config (envoy/plugin-config.json's `model` rollout, as a config of
its own) and with a config at the limits
(16 versions, 32 rules, 16 regexes, 32 headers read, 8 user id sources, 32
schedule steps, a guard).

Settings (environment): REQUESTS (1000000), WORKERS (1,2,8), VARIANTS
(none,lua,sdk-floor,canary-selector,canary-selector-large), CANARY_WASM,
SDK_FLOOR_WASM, MEMORY_WASM_EXTRA (more modules), MEMORY_RELEASE (tcmalloc
returns free pages to the OS). Results go to target/bench/memory.json.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import bench
from bench import ROOT, Envoy, Variant, client_expect, last_digit_expect, wasm_filter

SDK_FLOOR_WASM = Path(os.environ.get("SDK_FLOOR_WASM", ROOT / "target/bench/sdk-floor.wasm"))


def demo_config() -> str:
    """The demo's `model` rollout (envoy/plugin-config.json) as a config of
    its own: the single-rollout demo config every figure in BENCHMARKS.md
    was measured with, and one that a module from before `rollouts` and
    `models` (MEMORY_WASM_EXTRA) accepts too."""
    demo = json.loads((ROOT / "envoy/plugin-config.json").read_text())
    (model,) = [r for r in demo["rollouts"] if r["name"] == "model"]
    return json.dumps({k: v for k, v in model.items() if k not in ("name", "hosts", "pathPrefixes", "models")})


DEMO_CONFIG = demo_config()


def large_config() -> str:
    """A config at the documented limits (README, Limits)."""
    names = [f"model-v{i}" for i in range(1, 17)]
    headers = [f"x-h{i}" for i in range(1, 25)]  # + 4 id headers, cookie, :path... = 32 read
    rules = []
    for r in range(32):
        conditions = {headers[(r * 8 + c) % len(headers)]: {"prefix": f"v{r}-{c}"} for c in range(7)}
        if r < 16:
            conditions[":path"] = {"regex": f"/v1/models/[a-z]+{r}:(predict|explain)"}
        else:
            conditions[":authority"] = {"exact": f"model-{r}.example.com"}
        rules.append({"name": f"rule-{r}", "match": {"headers": conditions}, "version": names[r % 16]})
    weights = [10] + [6] * 15
    steps = []
    for s in range(32):
        first = max(10 - s, 0)  # weight moves from the first version to the last: forward only
        w = [first] + [6] * 14 + [16 - first]
        steps.append({"afterSeconds": 3600 * s, "weights": dict(zip(names, w))})
    return json.dumps({
        "versions": [{"name": n, "weight": w} for n, w in zip(names, weights)],
        "stickiness": {
            "userIdHeaders": ["x-user-id", "x-session-id", "x-account-id", "x-device-id"],
            "userIdCookies": ["user_id", "session_id", "account_id"],
            "anonymousCookie": {"name": "canary_id"},
        },
        "rules": rules,
        "responseHeader": "x-canary-version",
        "responseReasonHeader": "x-canary-reason",
        "guard": {"windowSeconds": 60, "minRequests": 50, "maxErrorRate": 0.1,
                  "slowResponseMs": 1000, "maxSlowRate": 0.2},
        "schedule": {"start": "2026-01-01T00:00:00Z", "steps": steps},
    })


VARIANTS = {
    "none": bench.VARIANTS["none"],
    "lua": bench.VARIANTS["lua"],
    "sdk-floor": Variant("sdk-floor", "tests/bench/sdk_floor: read x-user-id, write x-canary-version",
                         lambda _: wasm_filter(SDK_FLOOR_WASM), last_digit_expect, module=lambda: SDK_FLOOR_WASM),
    "canary-selector": Variant("canary-selector", "the module, envoy/plugin-config.json's model rollout",
                               lambda _: wasm_filter(bench.WASM, DEMO_CONFIG), client_expect,
                               module=lambda: bench.WASM),
    "canary-selector-large": Variant("canary-selector-large", "the module, a config at the limits",
                                     lambda _: wasm_filter(bench.WASM, large_config()), client_expect,
                                     module=lambda: bench.WASM),
}


# More modules to measure: MEMORY_WASM_EXTRA=name=path[,name=path...] adds a
# variant per module, run with the demo config (how BENCHMARKS.md's
# breakdown was measured).
for _spec in filter(None, os.environ.get("MEMORY_WASM_EXTRA", "").split(",")):
    _name, _, _path = _spec.partition("=")
    VARIANTS[_name] = Variant(_name, f"the module at {_path}", lambda _, p=Path(_path): wasm_filter(p, DEMO_CONFIG),
                              client_expect, module=lambda p=Path(_path): p)


def mappings(pid: int) -> list[dict]:
    """/proc/<pid>/smaps: each mapping's size, permissions, path and RSS (KiB)."""
    out: list[dict] = []
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if "-" in fields[0] and len(fields) >= 5 and len(fields[1]) == 4:
            start, end = (int(x, 16) for x in fields[0].split("-"))
            out.append({"kib": (end - start) // 1024, "perm": fields[1], "path": fields[5] if len(fields) > 5 else "",
                        "rss": 0})
        elif fields[0] == "Rss:":
            out[-1]["rss"] = int(fields[1])
    return out


def memory(envoy: Envoy) -> dict:
    """RSS, and where the filters' part of it is: Envoy's heap (tcmalloc:
    what is allocated, and what it keeps of what was freed), V8's compiled
    code (anonymous executable mappings), and the Wasm VMs' linear memories
    (each the mapping at the start of V8's guard-region reservation)."""
    maps = mappings(envoy.proc.pid)
    rss = next(int(line.split()[1]) for line in Path(f"/proc/{envoy.proc.pid}/status").read_text().splitlines()
               if line.startswith("VmRSS:"))
    heap = json.loads(envoy.admin_get("/memory"))
    mib = 1024 * 1024
    linear = [a["rss"] for a, b in zip(maps, maps[1:])
              if a["perm"] == "rw-p" and not a["path"] and b["perm"] == "---p" and b["kib"] > 4 * 1024 * 1024]
    return {
        "rss_mib": rss / 1024,
        "heap_allocated_mib": int(heap["allocated"]) / mib,
        "heap_size_mib": int(heap["heap_size"]) / mib,
        # Freed but kept by tcmalloc, still resident: where a peak goes.
        "heap_free_mib": int(heap["pageheap_free"]) / mib,
        "code_mib": sum(m["rss"] for m in maps if m["perm"] == "rwxp" and not m["path"]) / 1024,
        "wasm_memories": len(linear),
        "wasm_memory_mib": sum(linear) / 1024,
    }


def completed(envoy: Envoy) -> int:
    return envoy.counters(r"^http\.ingress\.downstream_rq_completed$")["http.ingress.downstream_rq_completed"]


# MEMORY_RELEASE=1: Envoy's bootstrap has tcmalloc hand free pages back to the
# OS (`memory_allocator_manager`), as a pod could configure it.
RELEASE = {"bytes_to_release": 64 * 1024 * 1024, "memory_release_interval": "1s"}


def measure(variant: Variant, workers: int, requests: int) -> dict:
    envoy = Envoy(variant, None, concurrency=workers)
    if os.environ.get("MEMORY_RELEASE"):
        envoy.bootstrap_extra = {"memory_allocator_manager": RELEASE}
    envoy.start()
    try:
        bench.wrk(envoy, 3, 32, None)
        time.sleep(1)
        warm = memory(envoy)
        start = completed(envoy)
        while completed(envoy) - start < requests:
            out = bench.wrk(envoy, 5, 32, None)
            if out["errors"]["status"] or sum(v for k, v in out["errors"].items() if k != "status"):
                raise SystemExit(f"{variant.name}: errors under load: {out['errors']}")
        time.sleep(1)
        after = memory(envoy)
        return {"warm": warm, "after": after, "requests": completed(envoy) - start}
    finally:
        envoy.stop()


def main() -> int:
    requests = int(os.environ.get("REQUESTS", 1_000_000))
    workers = [int(w) for w in os.environ.get("WORKERS", "1,2,8").split(",")]
    names = os.environ.get("VARIANTS", ",".join(VARIANTS)).split(",")
    for path in (bench.ENVOY, bench.WASM, SDK_FLOOR_WASM):
        if not path.exists():
            raise SystemExit(f"{path} missing: run `make bench-memory`")
    bench.OUT.mkdir(parents=True, exist_ok=True)
    print(f"memory: {', '.join(names)} at {workers} workers; {requests:,} requests each", flush=True)
    results: dict[str, dict[int, dict]] = {n: {} for n in names}
    for w in workers:
        for n in names:
            r = results[n][w] = measure(VARIANTS[n], w, requests)
            m = r["after"]
            print(f"  {n:24} {w} workers: RSS {r['warm']['rss_mib']:6.1f} MiB warm, {m['rss_mib']:6.1f} "
                  f"after {r['requests']:,} requests; heap {m['heap_allocated_mib']:.1f} allocated of "
                  f"{m['heap_size_mib']:.1f} MiB ({m['heap_free_mib']:.1f} free), compiled code {m['code_mib']:.1f} MiB, "
                  f"{m['wasm_memories']} Wasm memories {m['wasm_memory_mib']:.2f} MiB", flush=True)
    print()
    print("| variant | " + " | ".join(f"{w} worker{'s' * (w > 1)}: warm / after" for w in workers) + " |")
    print("|---|" + "---:|" * len(workers))
    for n in names:
        cells = [f"{results[n][w]['warm']['rss_mib']:.1f} / {results[n][w]['after']['rss_mib']:.1f}" for w in workers]
        print(f"| {n} | " + " | ".join(cells) + " |")
    if {"sdk-floor", "canary-selector"} <= set(names):
        print("\ncanary-selector over the SDK floor, after the load: " + ", ".join(
            f"{w} workers {results['canary-selector'][w]['after']['rss_mib'] - results['sdk-floor'][w]['after']['rss_mib']:+.1f} MiB"
            for w in workers) + " (target: within 3 MiB)")
    sizes = {n: p.stat().st_size for n in names if (p := VARIANTS[n].module()) is not None and p.exists()}
    (bench.OUT / "memory.json").write_text(json.dumps({"machine": bench.machine(), "requests": requests,
                                                       "results": results, "module_bytes": sizes}, indent=2))
    print(f"raw: {(bench.OUT / 'memory.json').relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
