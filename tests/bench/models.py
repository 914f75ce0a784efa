#!/usr/bin/env python3
"""`make bench-models`: what reading an OpenAI-style JSON body costs
(BENCHMARKS.md, "Generative models: reading the body";
docs/generative-models.md).

Every Envoy is the bench's (envoy/lua/envoy.yaml, routes keyed on
x-canary-version, direct responses; see tests/bench/bench.py) with one
change: Envoy's buffer filter (`envoy.filters.http.buffer`,
`max_request_bytes` 1 MiB, as the listener's default buffer limit) sits
between the variant's filter and the router, in every variant. A direct
response answers at the request's headers; a request whose body Envoy has
not read by then has its stream reset and its connection closed (HTTP/1.1),
so without it every POST would open a connection of its own, in every
variant but those that hold the request for its body. With it, Envoy reads
the whole body of every request, then answers, on keep-alive connections.

Parts (PARTS, in this order by default):

- native: `cargo bench --bench body` (tests/bench/body.rs): MiB of body
  scanned per CPU second natively, and serde_json's `from_slice::<Value>`.
- cpu: CPU per request (bench.py's method: one worker pinned to one core,
  wrk on the other, variants in turn round after round, medians) for
  OpenAI chat bodies of 1 KiB, 64 KiB and 1 MiB (the bodies of
  tests/bench/body.rs: `messages` with prose, code, escapes and non-ASCII;
  `model` first or last; a new user id in `user` and in x-user-id on every
  request, tests/bench/load_chat.lua), POSTed to /v1/chat/completions,
  through: no filter; the module of CANARY_WASM_PREV (default the commit
  before the feature) and this one with a config that reads no body (a
  rollout on /v1/chat/completions, sticky on x-user-id); this module with
  the rollout scoped by `models` (the body read for the model); the same
  with `userIdBodyFields` instead of `userIdHeaders` (the body read for the
  model and the user id); and (VARIANTS=...,ids) a rollout of any model
  with `userIdBodyFields` (the body read for the id alone). Each request
  is checked to route as its config says first, and the filter's counters
  to show every body read (and none where none should be).
- kserve: today's KServe V1 traffic, `POST /v1/models/model:predict` with a
  small JSON body (and `GET`, with no body, in the same rounds), the demo's
  config (envoy/plugin-config.json), this module against the previous one
  and no filter: the ratio of their overheads, per round and of the
  medians.
- body-memory: Envoy's RSS (and heap, and the Wasm VMs' linear memory) at 2
  workers after BODY_REQUESTS requests of 1 KiB and of 1 MiB, with no
  filter and with the filter reading every body (model and user ids);
  each a fresh Envoy, RUNS times.
- module-memory: Envoy's RSS at 2 and 8 workers with this module against
  the previous one (the demo config, tests/bench/memory.py's method: warm,
  then MODULE_REQUESTS requests), and no filter; RUNS times, alternating.

Settings (environment): PARTS, ROUNDS (8; cpu), KSERVE_ROUNDS (16),
DURATION (3), CONNECTIONS (32), SIZES (1024,65536,1048576), POSITIONS
(first,last), VARIANTS (none,prev,noread,model,model-ids), BODY_REQUESTS
(10000), MODULE_REQUESTS (200000), RUNS (2), CANARY_WASM_PREV, ENVOY_CPU
(0), LOAD_CPU (1). Results go to target/bench/models.json.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import bench
import memory
from bench import ROOT, Envoy, Variant, sticky_version, wasm_filter

WASM = bench.WASM
WASM_PREV = Path(os.environ.get("CANARY_WASM_PREV") or ROOT / "target/bench/prev-5c97fdc.wasm")
LOAD_CHAT = ROOT / "tests/bench/load_chat.lua"
LOAD_GET = ROOT / "tests/bench/load.lua"
CHAT_PATH = "/v1/chat/completions"
KSERVE_PATH = "/v1/models/model:predict"
KSERVE_BODY = b'{"instances": [[6.8, 2.8, 4.8, 1.4], [6.0, 3.4, 4.5, 1.6]]}'
def _kserve_config() -> str:
    """The demo's config (envoy/plugin-config.json) without what the
    previous module does not know: its KServe V1 rollout, `model`, alone,
    so that both modules run the same config."""
    demo = json.loads((ROOT / "envoy/plugin-config.json").read_text())
    return json.dumps({"rollouts": [r for r in demo["rollouts"] if "models" not in r]})


DEMO_CONFIG = _kserve_config()
QUIET = bench.QUIET
pinned = (os.cpu_count() or 1) >= 2
ENVOY_CPU = int(os.environ.get("ENVOY_CPU", 0)) if pinned else None
LOAD_CPU = int(os.environ.get("LOAD_CPU", 1)) if pinned else None

# Envoy reads the whole body before the direct response (module doc).
BUFFER = {
    "name": "envoy.filters.http.buffer",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer",
        "max_request_bytes": 1 << 20,
    },
}

# --- the bodies: tests/bench/body.rs's `chat`, byte for byte ----------------

PIECES = [
    "The quick brown fox jumps over the lazy dog. ",
    "Explain the difference between ",
    r'a \"canary\" and a blue/green rollout',
    r"\n\n",
    r'```python\nprint(\"hi\")\n```',
    r" caf\u00e9 ",
    " naïve façade ",
    " 日本語のテキスト ",
    " 😀 ",
    r"\ud83d\ude80 ",
    r"C:\\path\\to\\file ",
    r"\t- item\n",
    " 1,234.56 ",
    " see http://example.com/a?b=c ",
]
MODEL = "llama-3-8b-instruct"
USER = b'"user":"alice@example.com"'


def text(length: int, seed: int) -> bytes:
    out, i = bytearray(), seed
    while len(out) < length:
        out += PIECES[i % len(PIECES)].encode()
        i = (i * 31 + 7) % 2**64
    return bytes(out)


def chat(size: int, model_last: bool) -> bytes:
    """A chat completion request of about `size` bytes (body.rs's `chat`)."""
    model = f'"model":"{MODEL}"'.encode()
    rest = USER + b',"safety_identifier":"user-8d1f","prompt_cache_key":"conv-42","temperature":0.7,"stream":false'
    messages, k = bytearray(), 0
    while len(messages) + 250 < size:
        if k > 0:
            messages += b","
        role = ["system", "user", "assistant"][k % 3]
        room = size - 250 - len(messages)
        length = min(room, 300 if k % 3 == 0 else 3000)
        messages += b'{"role":"%s","content":"%s"}' % (role.encode(), text(max(length - 40, 1), k))
        k += 1
    if model_last:
        body = b'{"messages":[' + messages + b"]," + rest + b"," + model + b"}"
    else:
        body = b"{" + model + b',"messages":[' + messages + b"]," + rest + b"}"
    json.loads(body)
    return body


def body_file(size: int, last: bool) -> tuple[Path, int]:
    """The body as load_chat.lua reads it (the user id replaced by its
    marker), and its length with an id of 10 bytes."""
    body = chat(size, last)
    assert body.count(USER) == 1
    path = bench.OUT / f"chat-{size}-{'last' if last else 'first'}.json"
    path.write_bytes(body.replace(USER, b'"user":"@USER@"'))
    return path, len(body) - len(USER) + len(b'"user":"user-12345"')


def kserve_file() -> Path:
    path = bench.OUT / "kserve-v1.json"
    path.write_bytes(KSERVE_BODY)
    return path


# --- the configs ------------------------------------------------------------

VERSIONS = [{"name": "model-v1", "weight": 90}, {"name": "model-v2", "weight": 10}]
TESTERS = {"name": "testers", "match": {"headers": {"x-canary-tester": {"exact": "true"}}}, "version": "model-v2"}
ID_FIELDS = ["user", "safety_identifier", "prompt_cache_key"]
# Requests for another model take it (only version: model-v2).
FALLBACK = {"name": "chat", "hosts": ["*"], "pathPrefixes": [CHAT_PATH], "versions": [{"name": "model-v2", "weight": 100}]}


def chat_rollout(models: list[str] | None = None, body_ids: bool = False) -> dict:
    rollout = {"name": "llama", "hosts": ["*"], "pathPrefixes": [CHAT_PATH], "versions": VERSIONS,
               "stickiness": {"userIdBodyFields": ID_FIELDS} if body_ids else {"userIdHeaders": ["x-user-id"]},
               "rules": [TESTERS]}
    if models:
        rollout["models"] = models
    return rollout


CONFIGS = {
    "noread": {"rollouts": [chat_rollout()]},
    "model": {"rollouts": [chat_rollout([MODEL]), FALLBACK]},
    "model-ids": {"rollouts": [chat_rollout([MODEL], body_ids=True), FALLBACK]},
    "ids": {"rollouts": [chat_rollout(body_ids=True)]},
}


def expect(name: str, header_id: str, body_id: str, model: str, client: str) -> str:
    """The version a chat request gets under variant `name`."""
    if name == "none":
        return client
    if name in ("noread", "prev"):
        return sticky_version(header_id)
    if name == "ids":
        return sticky_version(body_id)
    if model != MODEL:
        return "model-v2"  # the fallback rollout
    return sticky_version(header_id if name == "model" else body_id)


# (what it is, module, config; None: no filter). Whether it reads bodies.
CHAT_VARIANTS = {
    "none": ("no filter", None, None, False),
    "prev": ("the previous module (CANARY_WASM_PREV), the same config as noread", WASM_PREV, "noread", False),
    "noread": ("this module, a rollout on /v1/chat/completions sticky on x-user-id: reads no body", WASM, "noread", False),
    "model": ("this module, the rollout scoped by `models`: the body read for the model", WASM, "model", True),
    "model-ids": ("this module, `models` and `userIdBodyFields`: the body read for the model and the id", WASM,
                  "model-ids", True),
    "ids": ("this module, a rollout of any model with `userIdBodyFields`: the body read for the id", WASM, "ids", True),
}


def chat_variant(name: str) -> Variant:
    what, module, config, _ = CHAT_VARIANTS[name]
    if module is None:
        return Variant(f"chat-{name}", what, lambda _: None, bench.client_expect)
    return Variant(f"chat-{name}", what, lambda _: wasm_filter(module, json.dumps(CONFIGS[config])),
                   bench.canary_expect, module=lambda: module, counts_requests=True)


def post(envoy: Envoy, path: str, body: bytes, headers: dict) -> tuple[int, str | None]:
    req = urllib.request.Request(f"http://127.0.0.1:{envoy.port}{path}", data=body, method="POST",
                                 headers={"content-type": "application/json", **headers})
    with urllib.request.urlopen(req, timeout=10) as r:
        r.read()
        return r.status, r.headers.get("x-served-by")


def check_chat(envoy: Envoy, name: str) -> None:
    """Each variant routes chat requests as its config says: by the model
    in the body (a listed one, another), by the user id in the header or
    in the body (different ids in the two, so the answer shows which)."""
    differ = 0
    for last in (False, True):
        template = chat(1024, last)
        for n in range(1, 41):
            header_id, body_id = f"user-{n}", f"user-{n + 1000}"
            differ += sticky_version(header_id) != sticky_version(body_id)
            for model in (MODEL, "another-model"):
                client = "model-v2" if n % 2 else "model-v1"
                body = template.replace(USER, f'"user":"{body_id}"'.encode()).replace(
                    f'"model":"{MODEL}"'.encode(), f'"model":"{model}"'.encode())
                status, served = post(envoy, CHAT_PATH, body, {"x-user-id": header_id, "x-canary-version": client})
                want = expect(name, header_id, body_id, model, client)
                if (status, served) != (200, want):
                    raise SystemExit(f"{name}: model {model}, x-user-id {header_id}, body user {body_id} -> "
                                     f"{status} {served}, expected {want}")
    assert differ, "no case tells the header's id from the body's"


def filter_counters(envoy: Envoy) -> dict[str, int]:
    """The filter's bodies read and models unknown (flushed on its tick)."""
    time.sleep(1.5)
    counters = envoy.counters(r"canary_selector_(bodies_read|model_unknown)_total$")
    return {"bodies_read": sum(v for k, v in counters.items() if k.endswith("bodies_read_total")),
            "model_unknown": sum(v for k, v in counters.items() if k.endswith("model_unknown_total"))}


def completed(envoy: Envoy) -> int:
    return envoy.counters(r"^http\.ingress\.downstream_rq_completed$")["http.ingress.downstream_rq_completed"]


def measure(envoy: Envoy, seconds: int, connections: int, others: list[Envoy]) -> dict:
    """bench.measure, measured again once if other processes disturbed it,
    with the connections Envoy accepted during it (wrk's own: one per
    connection and one more; more would mean Envoy closed connections).
    With QUIET_WAIT, each run first waits for a quiet machine."""
    for attempt in range(bench.RETRIES + 1):
        if bench.QUIET_WAIT > 0 and bench.wait_quiet(others, bench.QUIET_WAIT) > 1.5:
            print("  (waited for other processes to leave the CPUs)", flush=True)
        cx0 = envoy.counters(r"^http\.ingress\.downstream_cx_total$")["http.ingress.downstream_cx_total"]
        m = bench.measure(envoy, seconds, connections, LOAD_CPU)
        m["connections_opened"] = (
            envoy.counters(r"^http\.ingress\.downstream_cx_total$")["http.ingress.downstream_cx_total"] - cx0)
        if m["other_cores"] <= QUIET:
            break
    m["retried"] = attempt
    return m


def connections_for(size: int, connections: int) -> int:
    """Fewer connections for larger bodies: a run ends with a request in
    flight on every connection, whose CPU so far the run counts and whose
    response it does not. At about 20 ms a 1 MiB body, a 3 s run completes
    about 150; 32 in flight would skew it, 4 hardly, and four 1 MiB uploads
    at once keep Envoy's one worker busy. 32 up to 128 KiB."""
    return min(connections, max(4, (4 << 20) // max(size, 1)))


def use_load(path: str, body: Path | None) -> None:
    """The load bench.measure runs next: POST `body` (load_chat.lua) or GET
    (load.lua) to `path`."""
    bench.PATH = path
    if body is None:
        bench.LOAD = LOAD_GET
    else:
        bench.LOAD = LOAD_CHAT
        os.environ["BENCH_BODY"] = str(body)
        os.environ["BENCH_PATH"] = path
    os.environ.pop("BENCH_LIMIT", None)


def quartiles(xs: list[float]) -> tuple[float, float, float]:
    if len(xs) < 2:
        return xs[0], xs[0], xs[0]
    q = statistics.quantiles(xs, n=4)
    return q[0], statistics.median(xs), q[2]


# --- native -----------------------------------------------------------------


def native() -> dict:
    out = subprocess.run([os.environ.get("CARGO", "cargo"), "bench", "--bench", "body"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    print(out, flush=True)
    rows = {}
    cell = r"\s+(\d+) \(([\d.]+) ms\)"
    for line in out.splitlines():
        m = re.match(r"^(\d+) KiB, model (first|last)" + cell * 3, line)
        if m:
            g = m.groups()
            rows[f"{int(g[0]) << 10}-{g[1]}"] = {
                "scan_model_mib_s": int(g[2]), "scan_model_ms": float(g[3]),
                "scan_ids_mib_s": int(g[4]), "scan_ids_ms": float(g[5]),
                "from_slice_mib_s": int(g[6]), "from_slice_ms": float(g[7])}
    return rows


# --- cpu --------------------------------------------------------------------


def cpu(names: list[str], sizes: list[int], positions: list[str], rounds: int, seconds: int,
        connections: int) -> dict:
    shapes = [(s, p) for s in sizes for p in positions]
    files = {(s, p): body_file(s, p == "last") for s, p in shapes}
    envoys: dict[str, Envoy] = {}
    runs = {f"{s}-{p}": {n: [] for n in names} for s, p in shapes}
    try:
        for n in names:
            envoys[n] = Envoy(chat_variant(n), ENVOY_CPU, before_router=[BUFFER]).start()
            check_chat(envoys[n], n)
            print(f"  {n:10} {CHAT_VARIANTS[n][0]}", flush=True)
        print("routing checked: the model and the user id read from where each config says", flush=True)
        before = {n: filter_counters(envoys[n]) for n in names}
        start = {n: completed(envoys[n]) for n in names}
        for n in names:  # warm-up
            use_load(CHAT_PATH, files[shapes[0]][0])
            bench.load(envoys[n], 2, connections_for(shapes[0][0], connections), LOAD_CPU)
        for r in range(rounds):
            for s, p in shapes:
                use_load(CHAT_PATH, files[(s, p)][0])
                for n in names:
                    m = measure(envoys[n], seconds, connections_for(s, connections), list(envoys.values()))
                    runs[f"{s}-{p}"][n].append(m)
                    print(f"  round {r + 1}/{rounds} {s >> 10:5} KiB model {p:5} {n:10} "
                          f"{m['cpu_us_per_req']:8.1f} µs/req {m['rps']:8,.0f} req/s  p50 {m['p50_us']:6.0f} µs  "
                          f"non-2xx {m['non_2xx']}  new connections {m['connections_opened']}  "
                          f"other CPU {m['other_cores']:.2f}", flush=True)
        counts = {n: {k: v - before[n][k] for k, v in filter_counters(envoys[n]).items()} for n in names}
        served = {n: completed(envoys[n]) - start[n] for n in names}
        uncounted = {n: bench.uncounted(envoys[n], completed(envoys[n]), connections) for n in names}
    finally:
        for e in envoys.values():
            e.stop()

    failures = []
    for n in names:
        reads = CHAT_VARIANTS[n][3]
        want = served[n] if reads else 0
        if CHAT_VARIANTS[n][1] is not None and abs(counts[n]["bodies_read"] - want) > connections:
            failures.append(f"{n}: {counts[n]['bodies_read']} bodies read for {served[n]} requests (expected {want})")
        if counts[n]["model_unknown"]:
            failures.append(f"{n}: {counts[n]['model_unknown']} requests whose model was unknown")
        if abs(uncounted[n]) > connections:
            failures.append(f"{n}: {uncounted[n]} requests served that the filter's counters do not show")
    for shape, per in runs.items():
        for n, ms in per.items():
            for i, m in enumerate(ms):
                if m["non_2xx"] or m["socket_errors"]:
                    failures.append(f"{shape} {n} round {i + 1}: {m['non_2xx']} non-2xx, {m['socket_errors']} socket errors")
                if m["connections_opened"] > connections + 1:
                    failures.append(f"{shape} {n} round {i + 1}: {m['connections_opened']} connections opened")

    summary: dict = {}
    print("\n| body | variant | CPU µs/req, median (min .. max) | over none, per round: median (quartiles) | "
          "over noread (the body read) | req/s | p50 µs |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for s, p in shapes:
        shape = f"{s}-{p}"
        per = runs[shape]
        length = files[(s, p)][1]
        summary[shape] = {"body_bytes": length}
        for n in names:
            xs = [m["cpu_us_per_req"] for m in per[n]]
            row = {"cpu_us_per_req": statistics.median(xs), "min": min(xs), "max": max(xs),
                   "rps": statistics.median(m["rps"] for m in per[n]),
                   "p50_us": statistics.median(m["p50_us"] for m in per[n])}
            for base in ("none", "noread"):
                if base in names and n != base:
                    d = [a["cpu_us_per_req"] - b["cpu_us_per_req"] for a, b in zip(per[n], per[base])]
                    row[f"over_{base}"] = quartiles(d)
            if "noread" in names and CHAT_VARIANTS[n][3]:
                # MiB of body per CPU second of the read, per round.
                rates = [length / 2**20 / (d * 1e-6) for d in
                         (a["cpu_us_per_req"] - b["cpu_us_per_req"] for a, b in zip(per[n], per["noread"])) if d > 0]
                row["mib_per_cpu_s"] = quartiles(rates) if rates else None
            summary[shape][n] = row

            def fmt(q):
                return f"{q[1]:+.1f} ({q[0]:+.1f} .. {q[2]:+.1f})" if q else "–"
            print(f"| {s >> 10} KiB ({length:,} B), model {p} | {n} | {row['cpu_us_per_req']:.1f} "
                  f"({row['min']:.1f} .. {row['max']:.1f}) | {fmt(row.get('over_none'))} | "
                  f"{fmt(row.get('over_noread'))} | {row['rps']:,.0f} | {row['p50_us']:.0f} |")
    if "noread" in names:
        print("\nMiB of body per CPU second of the read ((variant - noread) per round; median, quartiles):")
        for n in names:
            if not CHAT_VARIANTS[n][3]:
                continue
            cells = []
            for s, p in shapes:
                q = summary[f"{s}-{p}"][n].get("mib_per_cpu_s")
                cells.append(f"{s >> 10} KiB {p}: " + (f"{q[1]:.1f} ({q[0]:.1f} .. {q[2]:.1f})" if q else "–"))
            print(f"  {n:10} " + "; ".join(cells))
        # The marginal rate, from the largest two sizes: what one more MiB costs.
        if len(sizes) >= 2:
            lo, hi = sorted(sizes)[-2:]
            for n in names:
                if not CHAT_VARIANTS[n][3]:
                    continue
                for p in positions:
                    a, b = runs[f"{lo}-{p}"], runs[f"{hi}-{p}"]
                    extra = (files[(hi, p)][1] - files[(lo, p)][1]) / 2**20
                    rates = [extra / ((h - hn - (l_ - ln)) * 1e-6) for h, hn, l_, ln in zip(
                        (m["cpu_us_per_req"] for m in b[n]), (m["cpu_us_per_req"] for m in b["noread"]),
                        (m["cpu_us_per_req"] for m in a[n]), (m["cpu_us_per_req"] for m in a["noread"]))
                        if h - hn - (l_ - ln) > 0]
                    if rates:
                        q = quartiles(rates)
                        summary.setdefault("marginal", {})[f"{n}-{p}"] = q
                        print(f"  {n:10} from {lo >> 10} KiB to {hi >> 10} KiB, model {p}: {q[1]:.1f} MiB/s "
                              f"({q[0]:.1f} .. {q[2]:.1f}) per extra MiB")
    print(f"bodies read: " + ", ".join(f"{n} {counts[n]['bodies_read']:,} of {served[n]:,}" for n in names
                                       if CHAT_VARIANTS[n][1] is not None))
    return {"runs": runs, "summary": summary, "counts": counts, "served": served, "failures": failures}


# --- kserve -----------------------------------------------------------------


def kserve(rounds: int, seconds: int, connections: int, loads: list[str]) -> dict:
    variants = {
        "none": Variant("kserve-none", "no filter", lambda _: None, bench.client_expect),
        "prev": Variant("kserve-prev", "the previous module, demo config",
                        lambda _: wasm_filter(WASM_PREV, DEMO_CONFIG), bench.canary_expect,
                        module=lambda: WASM_PREV, counts_requests=True),
        "new": Variant("kserve-new", "this module, demo config", lambda _: wasm_filter(WASM, DEMO_CONFIG),
                       bench.canary_expect, module=lambda: WASM, counts_requests=True),
    }
    body = kserve_file()
    envoys: dict[str, Envoy] = {}
    runs = {load: {n: [] for n in variants} for load in loads}
    try:
        for n, v in variants.items():
            envoys[n] = Envoy(v, ENVOY_CPU, before_router=[BUFFER]).start()
            bench.PATH = KSERVE_PATH
            bench.check_routing(envoys[n])
            for i in range(1, 41):
                h = {"x-user-id": f"user-{i}", "x-canary-version": "model-v2" if i % 2 else "model-v1"}
                status, served = post(envoys[n], KSERVE_PATH, KSERVE_BODY, h)
                assert (status, served) == (200, v.expect(h)), (n, h, status, served)
            use_load(KSERVE_PATH, body)
            bench.load(envoys[n], 2, connections, LOAD_CPU)
        for r in range(rounds):
            for load in loads:
                use_load(KSERVE_PATH, body if load == "post" else None)
                for n in variants:
                    m = measure(envoys[n], seconds, connections, list(envoys.values()))
                    runs[load][n].append(m)
                    print(f"  round {r + 1}/{rounds} {load:4} {n:4} {m['cpu_us_per_req']:6.2f} µs/req "
                          f"{m['rps']:9,.0f} req/s  non-2xx {m['non_2xx']}  new connections {m['connections_opened']}  "
                          f"other CPU {m['other_cores']:.2f}", flush=True)
        uncounted = {n: bench.uncounted(envoys[n], completed(envoys[n]), connections) for n in variants}
    finally:
        for e in envoys.values():
            e.stop()
    failures = [f"{n}: {k} requests the filter's counters do not show" for n, k in uncounted.items() if abs(k) > connections]
    failures += [f"kserve {load} {n} round {i + 1}: {m['non_2xx']} non-2xx, {m['socket_errors']} socket errors, "
                 f"{m['connections_opened']} connections opened"
                 for load in loads for n in variants for i, m in enumerate(runs[load][n])
                 if m["non_2xx"] or m["socket_errors"] or m["connections_opened"] > connections + 1]
    summary = {}
    print("\n| load | none µs/req | previous Δ | new Δ | new/previous, medians | per-round median (quartiles) | new − previous µs |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for load in loads:
        med = {n: statistics.median(m["cpu_us_per_req"] for m in runs[load][n]) for n in variants}
        per_round = [(c["cpu_us_per_req"] - z["cpu_us_per_req"]) / (p["cpu_us_per_req"] - z["cpu_us_per_req"])
                     for z, p, c in zip(runs[load]["none"], runs[load]["prev"], runs[load]["new"])]
        diff = [c["cpu_us_per_req"] - p["cpu_us_per_req"] for p, c in zip(runs[load]["prev"], runs[load]["new"])]
        ratio = (med["new"] - med["none"]) / (med["prev"] - med["none"])
        q, dq = quartiles(per_round), quartiles(diff)
        summary[load] = {"median": med, "ratio": ratio, "ratio_per_round": q, "new_minus_prev": dq}
        print(f"| {load} | {med['none']:.1f} | +{med['prev'] - med['none']:.2f} | +{med['new'] - med['none']:.2f} | "
              f"{ratio:.2f} | {q[1]:.2f} ({q[0]:.2f} .. {q[2]:.2f}) | {dq[1]:+.2f} ({dq[0]:+.2f} .. {dq[2]:+.2f}) |")
    return {"runs": runs, "summary": summary, "failures": failures}


# --- memory -----------------------------------------------------------------


def body_memory(requests: int, runs_: int, connections: int) -> dict:
    """RSS at 2 workers after `requests` bodies of 1 KiB, and of 1 MiB."""
    variants = {"none": chat_variant("none"), "model-ids": chat_variant("model-ids")}
    out: dict = {n: {s: [] for s in (1024, 1 << 20)} for n in variants}
    for run in range(runs_):
        order = list(variants) if run % 2 == 0 else list(reversed(variants))
        for size in (1024, 1 << 20):
            path, _ = body_file(size, False)
            for n in order:
                envoy = Envoy(variants[n], None, concurrency=2, before_router=[BUFFER]).start()
                try:
                    start = memory.memory(envoy)
                    c0 = completed(envoy)
                    errors = 0
                    while completed(envoy) - c0 < requests:
                        use_load(CHAT_PATH, path)
                        os.environ["BENCH_LIMIT"] = str(requests - (completed(envoy) - c0))
                        # Short runs, again until every request is done:
                        # wrk's thread stop at BENCH_LIMIT may leave it idle
                        # until its duration ends.
                        res = bench.wrk(envoy, 5, connections, None)
                        errors += sum(res["errors"].values())
                    os.environ.pop("BENCH_LIMIT", None)
                    time.sleep(1)
                    after = memory.memory(envoy)
                    counts = filter_counters(envoy) if n != "none" else {}
                    done = completed(envoy) - c0
                finally:
                    envoy.stop()
                out[n][size].append({"start": start, "after": after, "requests": done, "errors": errors, **counts})
                print(f"  run {run + 1} {n:10} {size >> 10:5} KiB x {done:,}: RSS {start['rss_mib']:.1f} -> "
                      f"{after['rss_mib']:.1f} MiB; heap {after['heap_allocated_mib']:.1f} allocated, "
                      f"{after['heap_free_mib']:.1f} free; {after['wasm_memories']} Wasm memories "
                      f"{start['wasm_memory_mib']:.2f} -> {after['wasm_memory_mib']:.2f} MiB"
                      + (f"; bodies read {counts['bodies_read']:,}" if counts else "") + f"; errors {errors}",
                      flush=True)
    print("\n| variant | body | requests | RSS MiB at start | after | growth (each run) | heap allocated | "
          "heap free (tcmalloc) | Wasm linear memory MiB, start -> after |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for n in variants:
        for size in (1024, 1 << 20):
            rs = out[n][size]

            def med(key, when="after"):
                return statistics.median(r[when][key] for r in rs)
            growth = [r["after"]["rss_mib"] - r["start"]["rss_mib"] for r in rs]
            print(f"| {n} | {size >> 10} KiB | {statistics.median(r['requests'] for r in rs):,.0f} | "
                  f"{med('rss_mib', 'start'):.1f} | {med('rss_mib'):.1f} | {statistics.median(growth):+.1f} "
                  f"({', '.join(f'{g:+.1f}' for g in growth)}) | {med('heap_allocated_mib'):.1f} | "
                  f"{med('heap_free_mib'):.1f} | {med('wasm_memory_mib', 'start'):.2f} -> {med('wasm_memory_mib'):.2f} |")
    failures = [f"body-memory {n} {s}: {r['errors']} errors, {r['requests']} requests"
                for n in variants for s in out[n] for r in out[n][s] if r["errors"] or r["requests"] < requests]
    failures += [f"body-memory {n} {s}: {r['bodies_read']} bodies read of {r['requests']}"
                 for n in variants if n != "none" for s in out[n] for r in out[n][s]
                 if r["bodies_read"] < r["requests"]]
    return {"runs": out, "failures": failures}


def module_memory(requests: int, runs_: int, workers: list[int]) -> dict:
    variants = {
        "none": bench.VARIANTS["none"],
        "prev": Variant("mem-prev", "the previous module, demo config", lambda _: wasm_filter(WASM_PREV, DEMO_CONFIG),
                        bench.client_expect, module=lambda: WASM_PREV),
        "new": Variant("mem-new", "this module, demo config", lambda _: wasm_filter(WASM, DEMO_CONFIG),
                       bench.client_expect, module=lambda: WASM),
    }
    use_load(KSERVE_PATH, None)
    out: dict = {n: {w: [] for w in workers} for n in variants}
    for run in range(runs_):
        order = ["none", "prev", "new"] if run % 2 == 0 else ["new", "prev", "none"]
        for w in workers:
            for n in order:
                r = memory.measure(variants[n], w, requests)
                out[n][w].append(r)
                print(f"  run {run + 1} {n:5} {w} workers: RSS {r['warm']['rss_mib']:.1f} MiB warm, "
                      f"{r['after']['rss_mib']:.1f} after {r['requests']:,} requests; heap "
                      f"{r['after']['heap_allocated_mib']:.1f} allocated, {r['after']['heap_free_mib']:.1f} free; "
                      f"code {r['after']['code_mib']:.1f} MiB", flush=True)
    sizes = {n: p.stat().st_size for n in ("prev", "new") if (p := variants[n].module())}
    print("\n| variant | module | " + " | ".join(f"{w} workers: warm / after, medians (each run after)" for w in workers) + " |")
    print("|---|---:|" + "---:|" * len(workers))
    for n in variants:
        cells = []
        for w in workers:
            rs = out[n][w]
            each = ", ".join(f"{r['after']['rss_mib']:.1f}" for r in rs)
            cells.append(f"{statistics.median(r['warm']['rss_mib'] for r in rs):.1f} / "
                         f"{statistics.median(r['after']['rss_mib'] for r in rs):.1f} ({each})")
        print(f"| {n} | {f'{sizes[n]:,} B' if n in sizes else '–'} | " + " | ".join(cells) + " |")
    for w in workers:
        d = [b["after"]["rss_mib"] - a["after"]["rss_mib"] for a, b in zip(out["prev"][w], out["new"][w])]
        print(f"new - previous at {w} workers, after the load, per run: " + ", ".join(f"{x:+.1f}" for x in d) + " MiB")
    return {"runs": out, "module_bytes": sizes}


def main() -> int:
    parts = os.environ.get("PARTS", "native,cpu,kserve,body-memory,module-memory").split(",")
    rounds = int(os.environ.get("ROUNDS", 8))
    seconds = int(os.environ.get("DURATION", 3))
    connections = int(os.environ.get("CONNECTIONS", 32))
    names = os.environ.get("VARIANTS", "none,prev,noread,model,model-ids").split(",")
    sizes = [int(s) for s in os.environ.get("SIZES", "1024,65536,1048576").split(",")]
    positions = os.environ.get("POSITIONS", "first,last").split(",")
    runs_ = int(os.environ.get("RUNS", 2))
    unknown = [n for n in names if n not in CHAT_VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; known: {', '.join(CHAT_VARIANTS)}")
    for path in (bench.ENVOY, WASM, WASM_PREV):
        if not path.exists():
            raise SystemExit(f"{path} missing: run `make bench-models`")
    bench.OUT.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "src"], cwd=ROOT, capture_output=True, text=True).stdout
    print(f"bench-models at {commit}{' (src/ modified)' if dirty else ''}: {', '.join(parts)}; module "
          f"{WASM.stat().st_size:,} B, previous {WASM_PREV.name} {WASM_PREV.stat().st_size:,} B", flush=True)
    result: dict = {"machine": bench.machine(), "commit": commit, "settings": {
        "rounds": rounds, "kserve_rounds": int(os.environ.get("KSERVE_ROUNDS", 16)), "duration_s": seconds,
        "connections": connections, "variants": names, "sizes": sizes, "positions": positions, "runs": runs_},
        "module_bytes": {"new": WASM.stat().st_size, "prev": WASM_PREV.stat().st_size}}
    failures: list[str] = []
    for part in parts:
        print(f"\n== {part}", flush=True)
        if part == "native":
            result["native"] = native()
        elif part == "cpu":
            result["cpu"] = cpu(names, sizes, positions, rounds, seconds, connections)
        elif part == "kserve":
            result["kserve"] = kserve(int(os.environ.get("KSERVE_ROUNDS", 16)), seconds, connections,
                                      os.environ.get("KSERVE_LOADS", "post,get").split(","))
        elif part == "body-memory":
            result["body_memory"] = body_memory(int(os.environ.get("BODY_REQUESTS", 10_000)), runs_, connections)
        elif part == "module-memory":
            result["module_memory"] = module_memory(int(os.environ.get("MODULE_REQUESTS", 200_000)), runs_, [2, 8])
        else:
            raise SystemExit(f"unknown part {part}")
        failures += result[part.replace("-", "_")].get("failures", []) if isinstance(result.get(part.replace("-", "_")), dict) else []
        (bench.OUT / "models.json").write_text(json.dumps(result, indent=2))
    print(f"\nraw: {(bench.OUT / 'models.json').relative_to(ROOT)}")
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
