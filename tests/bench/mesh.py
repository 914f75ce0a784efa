#!/usr/bin/env python3
"""`make bench-mesh`: the mesh verdict's figures (BENCHMARKS.md, "The mesh
verdict").

1. Time to follow: a real Prometheus (Debian's) with the shipped rules
   (istio/observability/canary-selector-mesh-rules.yaml) scrapes PROXIES
   Envoys (2 workers each) that poll it (`guard.mesh`, mesh verdict only, no
   local thresholds). One carries steady traffic; at t0 the canary starts to
   fail half its requests (Envoy's fault filter, on every proxy). The figure
   is the time from t0 to the last proxy tripped (its
   `canary_selector_mesh_trips_total` read every 100 ms), over RUNS runs,
   each with fresh Envoys and a fresh Prometheus. Intervals: SCRAPE and EVAL
   seconds for Prometheus (default 15 and 60, Istio's Prometheus addon), POLL
   seconds for the filter (default 5, the filter's). EVAL is the Prometheus'
   evaluation_interval, which the shipped groups' own `interval` (5 s)
   overrides: the rules run every 5 s whatever EVAL, as they would in the
   addon. The same run gives the queries per second PROXIES proxies send
   Prometheus (each Envoy's `cluster.prometheus.upstream_rq_total`, over 4
   poll intervals after the trip).
2. CPU per request with the mesh verdict on against off (tests/bench/bench.py's
   method: one worker on one core, wrk on the other, rounds alternating):
   the bench's config with a guard, and the same with `guard.mesh` polling an
   HTTP server that answers an empty verdict every second.

Settings (environment): RUNS (5), PROXIES (3), SCRAPE (15), EVAL (60),
POLL (5), ROUNDS (12), DURATION (3), CONNECTIONS (32), PARTS (latency,cpu).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

import bench
from bench import ROOT, Envoy, Variant, canary_expect, wasm_filter

sys.path.insert(0, str(ROOT / "tests" / "e2e"))
from prometheus import FakePrometheus, Prometheus, envoy_cluster  # noqa: E402  (tests/e2e/prometheus.py)

RULES = ROOT / "istio/observability/canary-selector-mesh-rules.yaml"
# Seconds between the shipped groups' evaluations (their `interval`).
RULES_INTERVAL = max(int(g["interval"].removesuffix("s")) for g in yaml.safe_load(RULES.read_text())["groups"])
PLUGIN = "canary-selector"  # the bench's inline filter: plugin name = root id
STATS_CONFIG = yaml.safe_load((ROOT / "envoy/envoy.yaml").read_text())["stats_config"]


def fault(percent: int) -> dict:
    """Envoy's fault filter after the plugin: 503 for `percent`% of the
    requests it sent to model-v2; the runtime key changes it."""
    return {"name": "envoy.filters.http.fault", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
        "abort": {"http_status": 503, "percentage": {"numerator": percent, "denominator": "HUNDRED"}},
        "headers": [{"name": "x-canary-version", "string_match": {"exact": "model-v2"}}]}}


def mesh_config(port: int, poll: int, local: bool, canary: float = 10) -> dict:
    """The bench's config (90/10 by default) with a guard that reads the mesh
    verdict, and local thresholds if `local`."""
    cfg = json.loads(json.dumps(bench.PLUGIN_CONFIG))
    cfg["versions"] = [{"name": "model-v1", "weight": 100 - canary}, {"name": "model-v2", "weight": canary}]
    cfg["guard"] = {"windowSeconds": 60, "minRequests": 1000, "maxErrorRate": 0.5} if local else {}
    cfg["guard"]["mesh"] = {"cluster": "prometheus", "authority": f"127.0.0.1:{port}",
                            "query": f'canary_selector:canary_failing{{plugin="{PLUGIN}"}}',
                            "pollSeconds": poll, "timeoutMs": 500}
    return cfg


def polls_sent(envoy: Envoy) -> int:
    """Requests this Envoy sent to Prometheus (its cluster's counter)."""
    return sum(envoy.counters(r"^cluster\.prometheus\.upstream_rq_total$").values())


def mesh_trips(envoy: Envoy) -> int:
    return sum(envoy.counters(r"canary_selector_mesh_trips_total").values())


def one_run(run: int, proxies: int, scrape: int, evaluation: int, poll: int) -> dict:
    prom_port = bench.free_port()
    cfg = mesh_config(prom_port, poll, local=False, canary=50)
    variant = Variant("mesh", "mesh verdict only", lambda _: wasm_filter(bench.WASM, json.dumps(cfg)), canary_expect)
    envoys = []
    work = Path(tempfile.mkdtemp(prefix="mesh-bench-"))
    prom = None
    load = None
    try:
        for i in range(proxies):
            v = Variant(f"mesh-{i}", variant.what, variant.http_filter, canary_expect)
            e = Envoy(v, None, concurrency=2, bootstrap_extra={
                "layered_runtime": {"layers": [{"name": "admin", "admin_layer": {}}]},
                # The labels the rules sum by, extracted as envoy/envoy.yaml
                # (and Istio's extraStatTags) extract them.
                "stats_config": STATS_CONFIG}, extra_clusters=[envoy_cluster(prom_port)])
            e.start()
            envoys.append(e)
        # The fault filter goes after the plugin: restart each with it in.
        for e in envoys:
            insert_fault(e)
        prom = Prometheus(work, [(e.admin, {}) for e in envoys], [RULES], prom_port,
                          scrape_interval=scrape, evaluation_interval=evaluation).start()
        # Steady traffic on the first proxy, a request a second on the others.
        load = subprocess.Popen(["wrk", "-t1", "-c4", "-d600s", "-s", str(ROOT / "tests/bench/load.lua"),
                                 f"http://127.0.0.1:{envoys[0].port}{bench.PATH}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(2 * scrape + 2)  # the counters are in Prometheus before the canary fails
        t0 = time.monotonic()
        for e in envoys:
            set_runtime(e, "fault.http.abort.abort_percent", "50")
        tripped: dict[int, float] = {}
        while len(tripped) < len(envoys):
            if time.monotonic() - t0 > 10 * (scrape + evaluation + poll) + 120:
                raise SystemExit(f"run {run}: not every proxy followed the mesh verdict: {tripped}")
            for i, e in enumerate(envoys):
                if i not in tripped and mesh_trips(e) > 0:
                    tripped[i] = time.monotonic() - t0
            time.sleep(0.1)
        # Queries Prometheus gets: every proxy's calls to it, at Envoy's own
        # cluster counter, over 4 poll intervals.
        window = 4 * poll
        before = sum(polls_sent(e) for e in envoys)
        time.sleep(window)
        sent = sum(polls_sent(e) for e in envoys) - before
        return {"last_tripped_s": max(tripped.values()), "first_tripped_s": min(tripped.values()),
                "per_proxy_s": [tripped[i] for i in range(len(envoys))],
                "queries_per_s": sent / window}
    finally:
        if load:
            load.terminate()
            load.wait()
        for e in envoys:
            e.stop()
        if prom:
            prom.stop()
        shutil.rmtree(work, ignore_errors=True)


def insert_fault(envoy: Envoy) -> None:
    """Restarts `envoy` with the fault filter after the plugin (0% until the
    runtime key says otherwise)."""
    path = envoy.workdir / "envoy.yaml"
    cfg = yaml.safe_load(path.read_text())
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["http_filters"].insert(len(hcm["http_filters"]) - 1, fault(0))
    path.write_text(yaml.safe_dump(cfg))
    envoy.stop()
    envoy.proc = subprocess.Popen(
        [str(bench.ENVOY), "-c", str(path), "--concurrency", str(envoy.concurrency), "--disable-hot-restart",
         "-l", "warning", "--log-path", str(envoy.log)], cwd=ROOT, stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while True:
        try:
            if envoy.admin_get("/ready") == "LIVE\n":
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit("Envoy not ready after the restart")
        time.sleep(0.1)


def set_runtime(envoy: Envoy, key: str, value: str) -> None:
    req = urllib.request.Request(f"http://127.0.0.1:{envoy.admin}/runtime_modify?{urllib.parse.urlencode({key: value})}",
                                 method="POST")
    with urllib.request.urlopen(req, timeout=5) as r:
        r.read()


def cpu(rounds: int, seconds: int, connections: int) -> dict:
    # A Prometheus API that answers every query with an empty vector.
    verdict = FakePrometheus()
    port = verdict.port
    off = mesh_config(port, 1, local=True)
    del off["guard"]["mesh"]
    on = mesh_config(port, 1, local=True)
    variants = {
        "none": bench.VARIANTS["none"],
        "mesh-off": Variant("mesh-off", "a guard, no mesh verdict", lambda _: wasm_filter(bench.WASM, json.dumps(off)),
                            canary_expect, module=lambda: bench.WASM, counts_requests=True),
        "mesh-on": Variant("mesh-on", "the same guard with guard.mesh, polled every second",
                           lambda _: wasm_filter(bench.WASM, json.dumps(on)), canary_expect,
                           module=lambda: bench.WASM, counts_requests=True),
    }
    envoys = {}
    runs: dict[str, list[dict]] = {n: [] for n in variants}
    try:
        for n, v in variants.items():
            envoys[n] = Envoy(v, 0, extra_clusters=[envoy_cluster(port)]).start()
            bench.check_routing(envoys[n])
            bench.load(envoys[n], 3, connections, 1)
        for r in range(rounds):
            for n in variants:
                m = bench.measure(envoys[n], seconds, connections, 1)
                runs[n].append(m)
                print(f"  round {r + 1}/{rounds} {n:10} {m['cpu_us_per_req']:6.2f} µs/req  other CPU {m['other_cores']:.2f}",
                      flush=True)
        polls = sum(envoys["mesh-on"].counters(r"canary_selector_mesh_polls_total").values())
    finally:
        for e in envoys.values():
            e.stop()
        verdict.stop()
    median = {n: statistics.median(m["cpu_us_per_req"] for m in runs[n]) for n in variants}
    per_round = sorted((a["cpu_us_per_req"] - z["cpu_us_per_req"]) / (b["cpu_us_per_req"] - z["cpu_us_per_req"])
                       for z, a, b in zip(runs["none"], runs["mesh-on"], runs["mesh-off"]))
    return {"median_cpu_us_per_req": median, "ratio_on_to_off": (median["mesh-on"] - median["none"]) /
            (median["mesh-off"] - median["none"]), "ratio_per_round": per_round, "polls_during_bench": polls,
            "runs": runs}


def main() -> int:
    parts = os.environ.get("PARTS", "latency,cpu").split(",")
    result: dict = {"machine": bench.machine()}
    bench.OUT.mkdir(parents=True, exist_ok=True)
    if "latency" in parts:
        runs, proxies = int(os.environ.get("RUNS", 5)), int(os.environ.get("PROXIES", 3))
        scrape, evaluation, poll = (int(os.environ.get(k, d)) for k, d in (("SCRAPE", 15), ("EVAL", 60), ("POLL", 5)))
        print(f"mesh verdict latency: {runs} runs, {proxies} proxies, scrape {scrape}s, rules every {RULES_INTERVAL}s "
              f"(their groups' interval; evaluation_interval {evaluation}s), poll {poll}s", flush=True)
        out = []
        for r in range(runs):
            m = one_run(r, proxies, scrape, evaluation, poll)
            out.append(m)
            print(f"  run {r + 1}: first proxy {m['first_tripped_s']:.1f} s, last {m['last_tripped_s']:.1f} s after "
                  f"the first failing response; {m['queries_per_s']:.2f} queries/s to Prometheus", flush=True)
        last = [m["last_tripped_s"] for m in out]
        result["latency"] = {"settings": {"proxies": proxies, "scrape_s": scrape, "eval_s": evaluation,
                                          "rules_s": RULES_INTERVAL, "poll_s": poll},
                             "runs": out}
        print(f"last proxy tripped: median {statistics.median(last):.1f} s, {min(last):.1f} to {max(last):.1f} s; "
              f"queries/s: {statistics.median(m['queries_per_s'] for m in out):.2f} for {proxies} proxies "
              f"(expected {proxies / poll:.2f})")
    if "cpu" in parts:
        rounds = int(os.environ.get("ROUNDS", 12))
        c = cpu(rounds, int(os.environ.get("DURATION", 3)), int(os.environ.get("CONNECTIONS", 32)))
        result["cpu"] = c
        med = c["median_cpu_us_per_req"]
        q = statistics.quantiles(c["ratio_per_round"], n=4) if len(c["ratio_per_round"]) > 1 else [c["ratio_on_to_off"]] * 3
        print(f"\nCPU per request: none {med['none']:.2f}, mesh off {med['mesh-off']:.2f} "
              f"(+{med['mesh-off'] - med['none']:.2f}), mesh on {med['mesh-on']:.2f} (+{med['mesh-on'] - med['none']:.2f}) µs; "
              f"overhead on/off {c['ratio_on_to_off']:.3f} (per round quartiles {q[0]:.3f} .. {q[2]:.3f}); "
              f"{c['polls_during_bench']} polls answered during the bench")
    (bench.OUT / "mesh.json").write_text(json.dumps(result, indent=2))
    print(f"raw: {(bench.OUT / 'mesh.json').relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
