#!/usr/bin/env python3
"""`make bench-rollouts`: what many rollouts in one config cost, as a shared
gateway runs them (BENCHMARKS.md, "Many rollouts").

CPU per request (tests/bench/bench.py's method: one worker pinned to one
core, wrk on the other, variants in turn round after round, medians) of the
filter with a config of 1, 50 and 500 rollouts, two hosts each, the requests
spread evenly over every host of the config (tests/bench/load_hosts.lua);
with 500 rollouts again for requests to a host no rollout lists and for
requests to the two hosts of one rollout; next to no filter (with the 2 host
names of one rollout and with the 1,000 of 500) and the single-rollout
config without `rollouts`. Then Envoy's RSS at 2 workers with 1 and 500
rollouts (after a warm-up), and the time Envoy takes to accept a push of 500
rollouts over ECDS (file rename to `update_success`), each push changing
every rollout.

Then a sidecar's series (issue 25 item 3): a sidecar is handed every
rollout of the mesh's config but serves one or two of them. With 500
rollouts and requests to 2, the number of canary_selector series in
`/stats/prometheus` (with Istio's stat tags, as envoy/envoy.yaml has them),
the rollouts they name, and Envoy's RSS and heap at 2 workers; for the
module, for the module of CANARY_WASM_BEFORE (`make bench-rollouts` and
`make bench-sidecar` pass 6d19f8e's, which defined every rollout's series
when a push listed it), and for the module with a config of the 2 served
rollouts alone (the floor), each started afresh, SIDECAR_ROUNDS times in
turn.

Settings (environment): ROUNDS (12), DURATION (3), CONNECTIONS (32),
PUSHES (5), PARTS (cpu,rss,push,sidecar), SIDECAR_ROUNDS (3),
CANARY_WASM_BEFORE (a module to compare the sidecar's series with).
"""

from __future__ import annotations

import json
import os
import re
import statistics
import sys
import time
from pathlib import Path

import yaml

import bench
import memory
from bench import ROOT, Envoy, Variant, canary_expect, client_expect, wasm_filter

sys.path.insert(0, str(ROOT / "envoy"))
import ecds  # noqa: E402

bench.LOAD = ROOT / "tests/bench/load_hosts.lua"


def entry(i: int, canary: float = 10) -> dict:
    """Rollout i: bench.PLUGIN_CONFIG (90/10, sticky on x-user-id, a testers
    rule) on two hosts, as KServe names an InferenceService's."""
    return {"name": f"m{i}", "hosts": [f"m{i}.models.example.com", f"m{i}-predictor.models.example.com"],
            **{k: v for k, v in bench.PLUGIN_CONFIG.items() if k != "versions"},
            "versions": [{"name": "model-v1", "weight": 100 - canary}, {"name": "model-v2", "weight": canary}]}


def rollouts(n: int, canary: float = 10) -> str:
    return json.dumps({"rollouts": [entry(i, canary) for i in range(n)]})


# (variant, BENCH_HOSTS for the load)
VARIANTS: dict[str, tuple[Variant, int]] = {
    "none": (bench.VARIANTS["none"], 2),
    "unscoped": (Variant("unscoped", "bench.py's config, without `rollouts`",
                         lambda _: wasm_filter(bench.WASM, json.dumps(bench.PLUGIN_CONFIG)), canary_expect,
                         module=lambda: bench.WASM, counts_requests=True), 2),
}
for _n in (1, 50, 500):
    VARIANTS[f"rollouts-{_n}"] = (
        Variant(f"rollouts-{_n}", f"{_n} rollouts, requests over their {2 * _n} hosts",
                lambda _, n=_n: wasm_filter(bench.WASM, rollouts(n)), canary_expect,
                module=lambda: bench.WASM, counts_requests=True), 2 * _n)
# Controls for the comparison the issue sets: the same Envoy without the
# filter, fed the 1,000 host names of 500 rollouts (does Envoy itself pay for
# them?), and 500 rollouts whose requests all go to one model (is it the size
# of the config or the spread of the requests over it?).
VARIANTS["rollouts-500-one-model"] = (
    Variant("rollouts-500-one-model", "500 rollouts, requests over the two hosts of one",
            lambda _: wasm_filter(bench.WASM, rollouts(500)), canary_expect,
            module=lambda: bench.WASM, counts_requests=True), 2)
VARIANTS["none-1000-hosts"] = (
    Variant("none-1000-hosts", "no filter, requests over 1,000 host names", lambda _: None, client_expect), 1000)
VARIANTS["rollouts-500-unmatched"] = (
    Variant("rollouts-500-unmatched", "500 rollouts, requests to a host none lists",
            lambda _: wasm_filter(bench.WASM, rollouts(500)), client_expect, module=lambda: bench.WASM), 0)


def cpu_per_request(names: list[str], rounds: int, seconds: int, connections: int) -> dict:
    envoys: dict[str, Envoy] = {}
    runs: dict[str, list[dict]] = {n: [] for n in names}
    try:
        for n in names:
            variant, hosts = VARIANTS[n]
            os.environ["BENCH_HOSTS"] = str(hosts)
            envoys[n] = Envoy(variant, 0).start()
            # The bench's routing check sends no Host of the config's: a
            # request there is untouched, so check one host per variant.
            if hosts:
                for user in ("user-1", "user-2", "user-3", "user-27"):
                    status, served = envoys[n].request({"host": "m0.models.example.com", "x-user-id": user})
                    want = "model-v1" if n.startswith("none") else canary_expect({"x-user-id": user})
                    assert (status, served) == (200, want), (n, user, status, served)
            bench.load(envoys[n], 3, connections, 1)
        for r in range(rounds):
            for n in names:
                os.environ["BENCH_HOSTS"] = str(VARIANTS[n][1])
                m = bench.measure(envoys[n], seconds, connections, 1)
                runs[n].append(m)
                print(f"  round {r + 1}/{rounds} {n:24} {m['cpu_us_per_req']:6.2f} µs/req {m['rps']:9,.0f} req/s  "
                      f"non-2xx {m['non_2xx']}  other CPU {m['other_cores']:.2f}", flush=True)
    finally:
        for e in envoys.values():
            e.stop()
    return runs


def rss_at_two_workers(n: int) -> float:
    variant = Variant(f"rss-{n}", f"{n} rollouts", lambda _: wasm_filter(bench.WASM, rollouts(n)), canary_expect)
    os.environ["BENCH_HOSTS"] = str(2 * n)
    envoy = Envoy(variant, None, concurrency=2).start()
    try:
        bench.wrk(envoy, 3, 32, None)
        time.sleep(1)
        return envoy.rss_mib()
    finally:
        envoy.stop()


def push_seconds(n: int, pushes: int) -> list[float]:
    """Seconds from the ECDS file's rename to Envoy's update_success, for
    pushes of `n` rollouts that each change every rollout's weights."""
    variant = Variant("push", "over ECDS", bench.ecds_filter, canary_expect)
    envoy = Envoy(variant, None, concurrency=2).start()
    path = envoy.workdir / "ecds" / "canary-selector.json"
    stat = f"extension_config_discovery.http_filter.{ecds.DEFAULT_NAME}.update_success"
    out = []
    try:
        for p in range(pushes):
            before = envoy.counters("^" + stat.replace(".", r"\.") + "$")[stat]
            resource = ecds.resource(rollouts(n, canary=10 + p + 1), str(bench.WASM))
            t0 = time.monotonic()
            ecds.write_atomically(str(path), resource)
            while envoy.counters("^" + stat.replace(".", r"\.") + "$")[stat] == before:
                if time.monotonic() - t0 > 60:
                    raise SystemExit(f"push {p} of {n} rollouts not accepted in 60 s:\n{envoy.log.read_text()[-2000:]}")
                time.sleep(0.005)
            out.append(time.monotonic() - t0)
            status, served = envoy.request({"host": f"m{n - 1}.models.example.com", "x-user-id": "user-27"})
            assert status == 200 and served in ("model-v1", "model-v2")
    finally:
        envoy.stop()
    return out


# --- A sidecar's series: every rollout of the mesh, requests to two ----------

SIDECAR_ROLLOUTS, SIDECAR_SERVED = 500, 2
WASM_BEFORE = Path(os.environ["CANARY_WASM_BEFORE"]) if os.environ.get("CANARY_WASM_BEFORE") else None
# Istio's stat tags (envoy/envoy.yaml's, as `extraStatTags` makes them): the
# series carry rollout, version, reason... as labels, as a sidecar's do.
ISTIO_STATS_CONFIG = yaml.safe_load((ROOT / "envoy/envoy.yaml").read_text())["stats_config"]


def series(text: str) -> dict:
    """The filter's series on a /stats/prometheus page (those named
    canary_selector_*; not Envoy's own envoy_wasm_canary_selector_vm_*):
    how many, how many per metric, the bytes of their lines (what each
    scrape of the sidecar carries), and the rollouts they name."""
    names: dict[str, int] = {}
    rollouts = set()
    size = 0
    for line in text.splitlines():
        name = line.split("{")[0].split(" ")[0]
        if line.startswith("#") or not name.startswith("canary_selector"):
            continue
        names[name] = names.get(name, 0) + 1
        size += len(line) + 1
        if m := re.search(r'rollout="([^"]*)"', line):
            rollouts.add(m.group(1))
    return {"series": sum(names.values()), "by_metric": names, "bytes": size, "rollouts": sorted(rollouts)}


def sidecar(name: str, module: Path, n: int) -> dict:
    """Envoy at 2 workers with `module` and n rollouts, 3 s of requests to
    the first SIDECAR_SERVED of them, then a tick (the served rollouts'
    series are defined on the first tick after a request): its
    canary_selector series and its memory (memory.py's figures)."""
    variant = Variant(f"sidecar-{name}", f"{name}: {n} rollouts, requests to {SIDECAR_SERVED}",
                      lambda _: wasm_filter(module, rollouts(n)), canary_expect)
    os.environ["BENCH_HOSTS"] = str(2 * SIDECAR_SERVED)
    envoy = Envoy(variant, None, concurrency=2, bootstrap_extra={"stats_config": ISTIO_STATS_CONFIG})
    envoy.start()
    try:
        load = bench.wrk(envoy, 3, 32, None)
        if load["errors"]["status"] or sum(v for k, v in load["errors"].items() if k != "status"):
            raise SystemExit(f"{variant.name}: errors under load: {load['errors']}")
        time.sleep(2.5)  # two ticks: the series defined, the counts flushed
        return {**series(envoy.admin_get("/stats/prometheus")), **memory.memory(envoy), "requests": load["requests"]}
    finally:
        envoy.stop()


def sidecar_series(rounds: int) -> dict:
    """`sidecar` for the module and the module of CANARY_WASM_BEFORE with
    SIDECAR_ROLLOUTS rollouts, and for the module with the served rollouts
    alone, `rounds` times in turn (RSS differs by up to about 0.8 MiB from
    one process to the next)."""
    cases = {"module": (bench.WASM, SIDECAR_ROLLOUTS)}
    if WASM_BEFORE:
        cases["before"] = (WASM_BEFORE, SIDECAR_ROLLOUTS)
    cases["module-served-only"] = (bench.WASM, SIDECAR_SERVED)
    runs: dict[str, list[dict]] = {c: [] for c in cases}
    for r in range(rounds):
        for case, (module, n) in cases.items():
            m = sidecar(case, module, n)
            runs[case].append(m)
            print(f"  round {r + 1}/{rounds} {case:20} {n} rollouts: {m['series']:6} series naming "
                  f"{len(m['rollouts'])} rollouts; RSS {m['rss_mib']:.1f} MiB, heap {m['heap_allocated_mib']:.1f} "
                  f"MiB allocated", flush=True)
    summary = {case: {"rollouts": cases[case][1], "module": str(cases[case][0]),
                      "series": statistics.median(m["series"] for m in runs[case]),
                      "bytes": statistics.median(m["bytes"] for m in runs[case]),
                      "rollouts_with_series": statistics.median(len(m["rollouts"]) for m in runs[case]),
                      "rss_mib": statistics.median(m["rss_mib"] for m in runs[case]),
                      "rss_mib_range": [min(m["rss_mib"] for m in runs[case]), max(m["rss_mib"] for m in runs[case])],
                      "heap_allocated_mib": statistics.median(m["heap_allocated_mib"] for m in runs[case])}
               for case in cases}
    return {"summary": summary, "runs": runs}


def main() -> int:
    parts = os.environ.get("PARTS", "cpu,rss,push,sidecar").split(",")
    rounds = int(os.environ.get("ROUNDS", 12))
    seconds = int(os.environ.get("DURATION", 3))
    connections = int(os.environ.get("CONNECTIONS", 32))
    pushes = int(os.environ.get("PUSHES", 5))
    names = os.environ.get("VARIANTS", ",".join(VARIANTS)).split(",")
    bench.OUT.mkdir(parents=True, exist_ok=True)
    result: dict = {"machine": bench.machine()}
    failures = []
    if "cpu" in parts:
        print(f"rollouts: {', '.join(names)}; {rounds} rounds of {seconds}s at {connections} connections", flush=True)
        runs = cpu_per_request(names, rounds, seconds, connections)
        failures += [f"{n} round {i + 1}: {m['non_2xx']} non-2xx, {m['socket_errors']} socket errors"
                     for n in names for i, m in enumerate(runs[n]) if m["non_2xx"] or m["socket_errors"]]
        result |= {"rounds": rounds, "runs": runs, **cpu_summary(names, runs)}
    if "rss" in parts:
        rss = {n: rss_at_two_workers(n) for n in (1, 500)}
        result["rss_mib_2_workers"] = rss
        print(f"\nEnvoy RSS at 2 workers, warm: 1 rollout {rss[1]:.1f} MiB, 500 rollouts {rss[500]:.1f} MiB "
              f"({rss[500] - rss[1]:+.1f})")
    if "push" in parts:
        times = push_seconds(500, pushes)
        result["push_500_seconds"] = times
        print(f"a push of 500 rollouts accepted in {statistics.median(times) * 1000:.0f} ms (median of {pushes}; "
              f"{min(times) * 1000:.0f} to {max(times) * 1000:.0f} ms), 2 workers")
    if "sidecar" in parts:
        sidecar_rounds = int(os.environ.get("SIDECAR_ROUNDS", 3))
        print(f"\na sidecar's series: {SIDECAR_ROLLOUTS} rollouts, requests to {SIDECAR_SERVED}; 2 workers; "
              f"{sidecar_rounds} rounds", flush=True)
        s = result["sidecar"] = sidecar_series(sidecar_rounds)
        print("\n| module | rollouts | canary_selector series | their bytes per scrape | rollouts with series | "
              "RSS MiB (range) | heap allocated MiB |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for case, m in s["summary"].items():
            lo, hi = m["rss_mib_range"]
            print(f"| {case} | {m['rollouts']} | {m['series']:.0f} | {m['bytes']:,.0f} | {m['rollouts_with_series']:.0f} | "
                  f"{m['rss_mib']:.1f} ({lo:.1f} .. {hi:.1f}) | {m['heap_allocated_mib']:.1f} |")
        expect = s["summary"]["module"]
        if expect["rollouts_with_series"] > SIDECAR_SERVED:
            failures.append(f"the module defined the series of {expect['rollouts_with_series']:.0f} rollouts, "
                            f"{SIDECAR_SERVED} served")
    (bench.OUT / "rollouts.json").write_text(json.dumps(result, indent=2))
    print(f"raw: {(bench.OUT / 'rollouts.json').relative_to(ROOT)}")
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures))
        return 1
    return 0


def cpu_summary(names: list[str], runs: dict) -> dict:
    """Prints the CPU table and the ratios the issue asks for; returns them."""
    median = {n: statistics.median(m["cpu_us_per_req"] for m in runs[n]) for n in names}
    result: dict = {"median_cpu_us_per_req": median}
    print("\n| variant | CPU µs/req | Δ vs none |\n|---|---:|---:|")
    for n in names:
        print(f"| {n} | {median[n]:.2f} | {median[n] - median['none']:+.2f} |" if "none" in median else f"| {n} | {median[n]:.2f} | |")
    if {"none", "rollouts-1", "rollouts-500"} <= set(names):
        over = {n: median[n] - median["none"] for n in names}
        ratio = over["rollouts-500"] / over["rollouts-1"]
        per_round = sorted((a["cpu_us_per_req"] - z["cpu_us_per_req"]) / (b["cpu_us_per_req"] - z["cpu_us_per_req"])
                           for z, a, b in zip(runs["none"], runs["rollouts-500"], runs["rollouts-1"]))
        result["ratio_500_to_1"] = ratio
        result["ratio_500_to_1_per_round"] = per_round
        q = statistics.quantiles(per_round, n=4) if len(per_round) > 1 else [ratio] * 3
        print(f"\noverhead at 500 rollouts / overhead at 1 = {ratio:.3f} of the medians "
              f"(per-round median {statistics.median(per_round):.3f}, quartiles {q[0]:.3f} .. {q[2]:.3f}; target ≤ 1.05)")
        if "none-1000-hosts" in names:
            # Each rollout count against no filter fed the same host names.
            fair = sorted((a["cpu_us_per_req"] - z1000["cpu_us_per_req"]) / (b["cpu_us_per_req"] - z["cpu_us_per_req"])
                          for z, z1000, a, b in zip(runs["none"], runs["none-1000-hosts"], runs["rollouts-500"],
                                                    runs["rollouts-1"]))
            result["ratio_500_to_1_same_hosts"] = (median["rollouts-500"] - median["none-1000-hosts"]) / over["rollouts-1"]
            result["ratio_500_to_1_same_hosts_per_round"] = fair
            q = statistics.quantiles(fair, n=4) if len(fair) > 1 else [fair[0]] * 3
            print(f"no filter over 1,000 host names: {median['none-1000-hosts'] - median['none']:+.2f} µs against 2; "
                  f"against that baseline the ratio is {result['ratio_500_to_1_same_hosts']:.3f} of the medians "
                  f"(per-round median {statistics.median(fair):.3f}, quartiles {q[0]:.3f} .. {q[2]:.3f})")
        if "rollouts-500-one-model" in names:
            print(f"500 rollouts, requests to one model: +{over['rollouts-500-one-model']:.2f} µs against "
                  f"+{over['rollouts-500']:.2f} spread over all and +{over['rollouts-1']:.2f} at 1 rollout")
        if "rollouts-500-unmatched" in names:
            print(f"unmatched request at 500 rollouts: +{over['rollouts-500-unmatched']:.2f} µs against "
                  f"+{over['rollouts-500']:.2f} for a matched one")
    return result


if __name__ == "__main__":
    sys.exit(main())
