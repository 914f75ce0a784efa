#!/usr/bin/env python3
"""Push soak (`make soak-pushes`): what each config push leaves behind in
Envoy, for a gateway that holds many rollouts and is pushed to often.

Envoy keeps, for a VM's whole life, every metric a module defines (an id,
and the name's storage, even for a name it defined before) and every
shared-data key a module sets (proxy-wasm has no delete). A module that
defines its series, or names its shared records, anew on every push makes
Envoy's heap grow with every push until the VM is replaced, however many
series Prometheus shows. This soak makes that visible: the worst case for
state per push is a push that changes every rollout (each rollout's
generation moves, so each rollout's records start afresh), of a large
config whose rollouts each have a guard (a window per VM) and the mesh
verdict (a poll, a held record).

The run: Envoy 1.40 (`make venv`) with 2 workers and the filter over ECDS
(tests/e2e/harness.py), a config of `--rollouts` rollouts (2 hosts each, 2
versions; a guard that judges locally and `guard.mesh` polling a fake
Prometheus every second, tests/e2e/prometheus.py's FakePrometheus, which
names one rollout's canary failing so the mesh verdict trips it), light
traffic to a few rollouts (so their series are defined and their guard
judges), and `--pushes` pushes, one every `--push-every` seconds, each changing
every rollout's weights. Before each push, and after the last, it records
Envoy's heap (the admin `/memory`: tcmalloc's `allocated` and
`heap_size`), its RSS (`VmRSS`, /proc) and the number of canary_selector
lines in `/stats`.

Flat: the first third of the pushes is the warm-up (VMs created, the
series the traffic reaches defined, tcmalloc's caches filled); the growth
of a figure is then measured over the other two thirds, as the median of
its last 10 samples less the median of its first 10 (one sample caught
next to a push being parsed does not decide it). Two thirds span a factor
of three in pushes, so a container of Envoy's that grows by doubling its
capacity (and so shows a per-push leak as steps) steps at least once in
them. The run fails unless `allocated` grew by less than
HEAP_BOUND_PER_PUSH (8 KiB) per push measured plus HEAP_SLACK (256 KiB),
and RSS by less than that plus RSS_SLACK (4 MiB): 1.8 and 5.8 MiB over the
200 pushes of a default run. The bounds and the measurements behind them
are in BENCHMARKS.md, "Pushes: what a push leaves behind". Envoy's shared data
lives in its heap, so a shared-data key left behind per rollout and push
shows in `allocated` too (see `detection_limit`).

It also fails on any response outside 2xx or failed request, a request the
filter's counters miss (a config replaced between two ticks flushes its
counts when Envoy deletes it), a push not accepted, a Wasm VM trap or
reload, or a mesh verdict that never polled or never tripped.

`--before PATH` runs the same soak on another module afterwards (`make
soak-pushes` passes the module of HOST_STATE_REV, 6d19f8e by default: the
commit before metric ids and shared-data keys became stable) and prints
the two side by side; the checks apply to the module under test only.

Usage: tests/soak/pushes.py [--pushes 300] [--push-every 1] [--rollouts 300]
[--guard full|local|none] [--wasm PATH] [--before PATH]
[--out .run/soak-pushes.json]. Exits 1 if a check fails.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
from harness import ECDS_STATS, WASM, Envoy, hooks, prometheus_cluster  # noqa: E402
from prometheus import FakePrometheus, vector  # noqa: E402
from soak import memory_kb, wasm_stats  # noqa: E402

MIB = 1024 * 1024
# What the heap may grow by per push after the warm-up: 8 KiB. Envoy keeps
# about 2 KiB per push of this module whatever the config (1 or 300
# rollouts, BENCHMARKS.md): about 1 KiB for any Wasm filter pushed over ECDS
# (a minimal SDK filter shows it), and about 1 KiB for the tick timer of each
# replaced root context in each VM, which Envoy never frees. 8 KiB is four
# times that, 27 bytes per rollout of a 300-rollout config: one metric
# defined again per rollout and push (about 100 bytes over 3 VMs), or one
# shared-data key left behind per rollout and push (its name alone is 60),
# would pass it several times over. The module before (6d19f8e) grows by
# about 0.8 MiB per push.
HEAP_BOUND_PER_PUSH = 8 * 1024
# And 256 KiB whatever the number of pushes: a sample of `allocated` lies
# up to 82 KiB off the line through the others (standard deviation 17 KiB),
# so that a short run does not fail on noise.
HEAP_SLACK = 256 * 1024
# RSS may grow by what the heap may, and by two of tcmalloc's steps (it maps
# the heap 2 MiB at a time).
RSS_SLACK = 4 * MIB
# Samples at each end of the measured pushes whose median stands for that end.
ENDS = 10
# The rollouts that get requests, and the one the mesh verdict names failing.
SERVED = 4
MESH_TRIPPED = SERVED  # r4: tripped by the mesh verdict alone, no traffic
QUERY = 'canary_selector:canary_failing{plugin="default.canary-selector"}'
REQUESTS_PER_SECOND = 40
# The guard's window. The filter ticks once per slot of its shortest window
# (a tenth of it, 100 ms to 1 s), and a push starts a new root context whose
# first tick comes one period after it: with a 60 s window (a 1 s tick) and
# a push every second, most configs would be replaced before their first
# tick, and the tick's work (flushes, series defined, windows written, the
# mesh poll) would hardly run. A 5 s window ticks every 500 ms, so each
# push's config ticks at least once.
WINDOW_SECONDS = 5


# --- The config ---------------------------------------------------------------


def rollout(i: int, canary: float, prometheus_port: int, guard: str = "full") -> dict:
    """Rollout r<i>: two hosts (as KServe names an InferenceService's), two
    versions (the demo's model servers, so envoy/envoy.yaml's routes serve
    it), sticky on x-user-id, and a guard: `full` judges errors and slow
    responses locally and follows the mesh verdict of the fake Prometheus;
    `local` only judges locally; `none` has no guard (`--guard`, to tell
    apart what the guard's state costs per push)."""
    out = {
        "name": f"r{i}",
        "hosts": [f"r{i}.models.example.com", f"r{i}-predictor.models.example.com"],
        "versions": [{"name": "model-v1", "weight": round(100 - canary, 2)}, {"name": "model-v2", "weight": canary}],
        "stickiness": {"userIdHeaders": ["x-user-id"]},
    }
    if guard != "none":
        out["guard"] = {"windowSeconds": WINDOW_SECONDS, "minRequests": 50, "maxErrorRate": 0.5,
                        "slowResponseMs": 5000, "maxSlowRate": 0.5}
    if guard == "full":
        out["guard"]["mesh"] = {"cluster": "prometheus", "authority": f"127.0.0.1:{prometheus_port}", "query": QUERY,
                                "pollSeconds": 1, "timeoutMs": 500}
    return out


def config(push: int, rollouts: int, prometheus_port: int, guard: str = "full") -> dict:
    """The config of push `push`: every rollout's canary weight (1 to 49%,
    in steps of 0.01) differs from that of every push before it (up to 4,800
    pushes), so every rollout restarts, and never with a config it had
    before: state named by a config's fingerprint would pile up with every
    push, not cycle through a few (a module that keys state by config would
    look flat on weights that take a few values in turn)."""
    return {"rollouts": [rollout(i, round(1 + (push + i) % 4800 / 100, 2), prometheus_port, guard)
                         for i in range(rollouts)]}


# --- Traffic and measurements -------------------------------------------------


class Traffic(threading.Thread):
    """About REQUESTS_PER_SECOND requests a second, on one keep-alive
    connection, to the hosts of rollouts r0 .. r<SERVED-1> in turn, a new
    user id each; the statuses and any failure are kept."""

    def __init__(self, envoy: Envoy):
        super().__init__(daemon=True)
        self.envoy = envoy
        self.stop = threading.Event()
        self.statuses: dict[int, int] = {}
        self.errors: list[str] = []

    def run(self) -> None:
        conn = self.envoy.connection()
        n = 0
        while not self.stop.wait(1 / REQUESTS_PER_SECOND):
            n += 1
            host = f"r{n % SERVED}{'' if n % 2 else '-predictor'}.models.example.com"
            try:
                status = self.envoy.request({"host": host, "x-user-id": f"user-{n}"}, conn=conn).status
            except Exception as e:  # noqa: BLE001  (any failure is a finding)
                self.errors.append(repr(e))
                conn.close()
                conn = self.envoy.connection()
                continue
            self.statuses[status] = self.statuses.get(status, 0) + 1


def sample(envoy: Envoy) -> dict:
    """Envoy's heap (tcmalloc, bytes), RSS (kB) and the filter's stat lines
    (wasmcustom.*canary_selector*; not Envoy's own wasm.* stats)."""
    heap = json.loads(envoy._admin("/memory"))
    mem = memory_kb(envoy.proc.pid)
    stats = envoy._admin("/stats?filter=" + urllib.parse.quote(r"^wasmcustom\..*canary_selector"))
    return {
        "t": time.monotonic(),
        "allocated": int(heap["allocated"]),
        "heap_size": int(heap["heap_size"]),
        "rss_kb": mem["VmRSS"],
        "rss_anon_kb": mem["RssAnon"],
        "stat_lines": sum(1 for line in stats.splitlines() if "canary_selector" in line),
    }


def growth(values: list[float]) -> float:
    """How much a figure grew over `values` (one per push): the median of the
    last ENDS samples less the median of the first ENDS. A step anywhere but
    in the last few pushes counts in full (a container that doubles shows
    its growth in steps), and one sample caught next to a push being parsed
    does not decide it."""
    k = max(1, min(ENDS, len(values) // 4))
    return statistics.median(values[-k:]) - statistics.median(values[:k])


# --- The run ------------------------------------------------------------------


def soak(wasm: Path, pushes: int, push_every: float, rollouts: int, guard: str = "full") -> dict:
    prometheus = FakePrometheus()
    prometheus.answer = vector([{"rollout": f"r{MESH_TRIPPED}", "version": "model-v2"}])
    workdir = Path(tempfile.mkdtemp(prefix="canary-soak-pushes-"))
    envoy = Envoy(workdir, config(0, rollouts, prometheus.port, guard), concurrency=2, wasm=wasm,
                  bootstrap_hook=hooks(prometheus_cluster(prometheus.port))).start()
    try:
        vms_before = wasm_stats(envoy)
        traffic = Traffic(envoy)
        traffic.start()
        samples, verdicts = [], []
        start = time.monotonic()
        for p in range(1, pushes + 1):
            time.sleep(max(0.0, start + p * push_every - time.monotonic()))
            samples.append(sample(envoy))
            t0 = time.monotonic()
            accepted = envoy.push(config(p, rollouts, prometheus.port, guard), timeout=60)
            verdicts.append((accepted, round(time.monotonic() - t0, 3)))
            if p % 25 == 0:
                s = samples[-1]
                print(f"  push {p}/{pushes}: heap {s['allocated'] / MIB:.1f} MiB allocated of "
                      f"{s['heap_size'] / MIB:.1f}, RSS {s['rss_kb'] / 1024:.1f} MiB, "
                      f"{s['stat_lines']} stat lines", flush=True)
        time.sleep(max(push_every, 1.2))  # a tick after the last push
        samples.append(sample(envoy))
        traffic.stop.set()
        traffic.join(10)
        counters = envoy.flushed_stats()
        vms_after = wasm_stats(envoy)
        logs = envoy.logs()
        elapsed = time.monotonic() - start
    finally:
        envoy.stop()
        prometheus.stop()

    warm = pushes // 3
    window = samples[warm:]
    traps = [line for line in logs.splitlines() if re.search(r"Function: proxy_on_\w+ failed", line)]
    reloads = {k: v for k, v in vms_after.items() if "vm_reload" in k and v}
    mesh_trips = sum(v for k, v in counters.items() if k.endswith(";canary_selector_mesh_trips_total"))
    # A config replaced between two ticks flushes its counts when Envoy
    # deletes it: none may be lost over the pushes.
    decided = sum(v for k, v in counters.items()
                  if k.startswith("wasmcustom.") and k.endswith(";canary_selector_requests_total"))
    non_2xx = sum(n for status, n in traffic.statuses.items() if not 200 <= status < 300)
    measured = len(window) - 1  # pushes between the first and the last sample of the window
    result = {
        "module": str(wasm),
        "module_bytes": wasm.stat().st_size,
        "rollouts": rollouts,
        "guard": guard,
        "pushes": pushes,
        "push_every_s": push_every,
        "elapsed_s": round(elapsed, 1),
        "warmup_pushes": warm,
        "measured_pushes": measured,
        "accepted": sum(1 for a, _ in verdicts if a),
        "update_success": counters.get(f"{ECDS_STATS}.update_success", 0),
        "slowest_push_s": max(s for _, s in verdicts),
        "median_push_s": sorted(s for _, s in verdicts)[len(verdicts) // 2],
        "requests": sum(traffic.statuses.values()),
        "counted_by_filter": decided,
        "non_2xx": non_2xx,
        "request_errors": len(traffic.errors),
        "mesh_polls": prometheus.queries,
        "mesh_trips": mesh_trips,
        "vm_traps_in_log": len(traps),
        "vm_reloads": reloads,
        "vms_created": vms_after.get("wasm.envoy.wasm.runtime.v8.created", 0)
        - vms_before.get("wasm.envoy.wasm.runtime.v8.created", 0),
        "live_vms": vms_after.get("wasm.envoy.wasm.runtime.v8.active"),
        "start": samples[0],
        "after_warmup": window[0],
        "end": samples[-1],
        "growth_after_warmup": {
            "allocated_mib": growth([s["allocated"] for s in window]) / MIB,
            "heap_size_mib": growth([s["heap_size"] for s in window]) / MIB,
            "rss_mib": growth([s["rss_kb"] for s in window]) / 1024,
            "stat_lines": samples[-1]["stat_lines"] - window[0]["stat_lines"],
        },
        "allocated_per_push_after_warmup_kib": growth([s["allocated"] for s in window]) / measured / 1024,
        # From the first sample to the last: the average over every push,
        # warm-up and steps included.
        "allocated_per_push_whole_run_kib": (samples[-1]["allocated"] - samples[0]["allocated"]) / pushes / 1024,
        # One sample before each push and one after the last: seconds since
        # the start, allocated and heap_size (bytes), VmRSS and RssAnon (kB),
        # canary_selector stat lines.
        "series": [(round(s["t"] - start, 2), s["allocated"], s["heap_size"], s["rss_kb"], s["rss_anon_kb"],
                    s["stat_lines"]) for s in samples],
    }
    return result


def bounds(r: dict) -> tuple[float, float]:
    """The growth allowed over the measured pushes: heap, RSS (MiB)."""
    heap = (HEAP_BOUND_PER_PUSH * r["measured_pushes"] + HEAP_SLACK) / MIB
    return heap, heap + RSS_SLACK / MIB


def checks(r: dict) -> dict[str, bool]:
    g = r["growth_after_warmup"]
    heap, rss = bounds(r)
    return {
        "every push accepted": r["accepted"] == r["pushes"] and r["update_success"] >= r["pushes"] + 1,
        "traffic served, all 2xx, no failed request": r["requests"] > 0 and r["non_2xx"] == 0
        and r["request_errors"] == 0,
        "every request counted by the filter": r["counted_by_filter"] == r["requests"],
        "no VM trap or reload": not r["vm_traps_in_log"] and not r["vm_reloads"],
        "the mesh verdict polled and tripped": r["guard"] != "full" or r["mesh_polls"] > 0 and r["mesh_trips"] > 0,
        f"heap allocated flat after warm-up (growth {g['allocated_mib']:+.2f} < {heap:.2f} MiB)": g["allocated_mib"] < heap,
        f"RSS flat after warm-up (growth {g['rss_mib']:+.2f} < {rss:.2f} MiB)": g["rss_mib"] < rss,
    }


def detection_limit(r: dict) -> float:
    """Bytes per rollout and push below which a leak would pass the heap
    check: what a shared-data key (name and value) or a metric defined
    again, left behind per rollout and push, would have to stay under."""
    return HEAP_BOUND_PER_PUSH / r["rollouts"]


def report(name: str, r: dict) -> str:
    g, s, w, e = r["growth_after_warmup"], r["start"], r["after_warmup"], r["end"]
    return f"""{name}: {r['module']} ({r['module_bytes']:,} B)
  pushes     {r['accepted']}/{r['pushes']} accepted of {r['rollouts']} rollouts, one every {r['push_every_s']} s \
(median {r['median_push_s']} s to accept, slowest {r['slowest_push_s']} s); {r['elapsed_s']} s
  traffic    {r['requests']} requests to {SERVED} rollouts, {r['counted_by_filter']} counted by the filter, \
{r['non_2xx']} non-2xx, {r['request_errors']} failed
  mesh       {r['mesh_polls']} polls answered, {r['mesh_trips']} mesh trips counted
  wasm       {r['vm_traps_in_log']} traps, reloads {r['vm_reloads'] or 0}, {r['vms_created']} VMs created, \
{r['live_vms']} live
  heap       allocated {s['allocated'] / MIB:.1f} -> {w['allocated'] / MIB:.1f} (after {r['warmup_pushes']} pushes) \
-> {e['allocated'] / MIB:.1f} MiB; heap_size {s['heap_size'] / MIB:.1f} -> {w['heap_size'] / MIB:.1f} -> \
{e['heap_size'] / MIB:.1f} MiB
  RSS        {s['rss_kb'] / 1024:.1f} -> {w['rss_kb'] / 1024:.1f} -> {e['rss_kb'] / 1024:.1f} MiB
  stat lines {s['stat_lines']} -> {w['stat_lines']} -> {e['stat_lines']} (canary_selector lines in /stats)
  growth over the last {r['measured_pushes']} pushes: allocated {g['allocated_mib']:+.2f} MiB \
({r['allocated_per_push_after_warmup_kib']:+.1f} KiB/push), heap_size {g['heap_size_mib']:+.2f} MiB, \
RSS {g['rss_mib']:+.2f} MiB
  over the whole run: allocated {r['allocated_per_push_whole_run_kib']:+.1f} KiB/push"""


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pushes", type=int, default=300)
    p.add_argument("--push-every", type=float, default=1.0, help="seconds between pushes (at least the push's own time)")
    p.add_argument("--rollouts", type=int, default=300)
    p.add_argument("--wasm", type=Path, default=WASM, help="the module under test (default: the built one)")
    p.add_argument("--guard", choices=("full", "local", "none"), default="full",
                   help="each rollout's guard: local and mesh verdict (full), local only, or none")
    p.add_argument("--before", type=Path, default=None, help="another module to soak the same way, for comparison")
    p.add_argument("--out", default=str(ROOT / ".run" / "soak-pushes.json"), help="where to write the figures (JSON)")
    args = p.parse_args(argv)

    runs = {"module": args.wasm}
    if args.before:
        runs["before"] = args.before
    results = {}
    for name, wasm in runs.items():
        print(f"soak-pushes ({name}): {args.pushes} pushes of {args.rollouts} rollouts (guard: {args.guard}), one every "
              f"{args.push_every} s, {wasm} ...", flush=True)
        results[name] = soak(wasm, args.pushes, args.push_every, args.rollouts, args.guard)
        results[name]["checks"] = checks(results[name])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))

    print()
    for name, r in results.items():
        print(report(name, r))
    r = results["module"]
    print(f"\nthe heap check would catch a leak of {detection_limit(r):.0f} bytes or more per rollout and push")
    if "before" in results:
        b = results["before"]
        print(f"before - module, per push after warm-up: allocated "
              f"{b['allocated_per_push_after_warmup_kib'] - r['allocated_per_push_after_warmup_kib']:+.1f} KiB")
        for name, ok in checks(b).items():
            print(f"  (before) {'ok  ' if ok else 'fail'} {name}")
    print(f"figures in {args.out}")
    for name, ok in r["checks"].items():
        print(f"  {'ok  ' if ok else 'FAIL'} {name}")
    return 0 if all(r["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
