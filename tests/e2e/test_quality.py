"""End to end: rolling back on model quality, in a real Prometheus (Debian's)
with the shipped rules loaded (istio/observability/
canary-selector-quality-rules.yaml and the mesh rules beside it, their 5 s
groups as shipped), scraping every second:

- a fake evaluator and application (`Exporter` at /metrics): per-version
  scores with their scored-prediction counters, and feedback counters;
- a second fake evaluator with other label names (`model`,
  `model_version`), scraped by the job docs/mesh-verdict.md gives to rename
  them;
- a fake proxy (`Exporter` at /stats/prometheus): the filter's own series as
  Envoy shows them, which version is stable for two plugins, and the
  responses and failures the error verdict reads.

The guard.mesh query that docs/mesh-verdict.md gives, sent to Prometheus'
query API as the filter sends it, must name exactly the failing canaries,
by either verdict, and nothing else at any time. No Envoy runs: what the
filter does with an answer (a positive, finite value trips the version its
series names) is tested in test_mesh.py; the point here is what the
shipped rules answer.
"""

from __future__ import annotations

import json
import math
import re
import time

import yaml

from harness import ROOT, free_port
from prometheus import Exporter, Prometheus, exporter_job

OBSERVABILITY = ROOT / "istio" / "observability"
RULE_FILES = [OBSERVABILITY / "canary-selector-quality-rules.yaml", OBSERVABILITY / "canary-selector-mesh-rules.yaml"]
DOC = ROOT / "docs" / "mesh-verdict.md"
PLUGIN = "models.canary-selector"
# Another plugin serving an iris rollout of its own (a batch gateway, say):
# the evaluator's iris scores count for both, each plugin's query its own.
OTHER_PLUGIN = "batch.canary-selector"

# The evaluator, per (rollout, version): its score, and how many predictions
# a second it scores (None: it stopped long ago, its counter stands still).
SCORES = {
    # 0.08 below the stable version: fails.
    ("iris", "iris-v1"): (0.92, 500), ("iris", "iris-v2"): (0.84, 500),
    # 0.02 below: within the margin.
    ("flowers", "flowers-v1"): (0.92, 500), ("flowers", "flowers-v2"): (0.90, 500),
    # A bad score on 2 predictions a second: far below the minimum count.
    ("tulips", "tulips-v1"): (0.92, 500), ("tulips", "tulips-v2"): (0.50, 2),
    # A bad score the evaluator no longer updates: stale.
    ("roses", "roses-v1"): (0.92, 500), ("roses", "roses-v2"): (0.50, None),
}
# The evaluator with other label names: model="poppies", model_version="1".
# 0.12 below the stable version: fails, once its labels are renamed.
LEGACY_SCORES = {("poppies", "1"): (0.92, 500), ("poppies", "2"): (0.80, 500)}
# The application's feedback a second, per (rollout, version): (good, bad);
# daisies-v2 gets three thumbs down in all, one a second.
FEEDBACK = {
    # 30% bad against 5%: fails.
    ("lilies", "lilies-v1"): (95, 5), ("lilies", "lilies-v2"): (35, 15),
    ("daisies", "daisies-v1"): (95, 5),
}
# The proxies' responses a second, per (rollout, version): (all, failed).
RESPONSES = {
    # Half the canary's responses fail: the error verdict names it.
    ("asters", "asters-v1"): (100, 0), ("asters", "asters-v2"): (100, 50),
    # iris answers fine; only its quality fails.
    ("iris", "iris-v1"): (100, 0), ("iris", "iris-v2"): (100, 0),
}
ROLLOUTS = ["iris", "flowers", "tulips", "roses", "lilies", "daisies", "asters", "poppies"]
# What the guard's query must name: the error verdict's canary and the
# quality verdict's three.
FAILING = {("asters", "asters-v2"), ("iris", "iris-v2"), ("lilies", "lilies-v2"), ("poppies", "poppies-v2")}


def documented_query() -> str:
    """The guard.mesh query docs/mesh-verdict.md tells users to poll for
    both verdicts: its one JSON `"query"` line that names the quality
    verdict."""
    (line,) = [m for m in re.findall(r'"query": (".*")', DOC.read_text()) if "quality_failing" in m]
    return json.loads(line)


def documented_relabel_job(port: int) -> dict:
    """docs/mesh-verdict.md's scrape job that renames `model` and
    `model_version`, pointed at the exporter on `port`."""
    blocks = re.findall(r"^```yaml\n(.*?)^```$", DOC.read_text(), re.M | re.S)
    (job,) = [j for b in blocks if isinstance(d := yaml.safe_load(b), list) for j in d if "metric_relabel_configs" in j]
    return job | {"static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}


class Fakes:
    """The evaluator and application, and the proxy, counting from their
    start."""

    def __init__(self):
        self.started = time.monotonic()
        self.app = Exporter({"/metrics": self.app_metrics})
        self.legacy = Exporter({"/metrics": self.legacy_metrics})
        self.proxy = Exporter({"/stats/prometheus": self.proxy_metrics})

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def app_metrics(self) -> str:
        t = self.elapsed()
        lines = ["# TYPE model_quality_score gauge"]
        lines += [f'model_quality_score{{rollout="{r}",version="{v}"}} {score}' for (r, v), (score, _) in SCORES.items()]
        lines.append("# TYPE model_quality_evaluated_total counter")
        lines += [f'model_quality_evaluated_total{{rollout="{r}",version="{v}"}} {5000 if per_s is None else per_s * t}'
                  for (r, v), (_, per_s) in SCORES.items()]
        lines.append("# TYPE model_feedback_total counter")
        for (r, v), (good, bad) in FEEDBACK.items():
            lines.append(f'model_feedback_total{{rollout="{r}",version="{v}",verdict="good"}} {good * t}')
            lines.append(f'model_feedback_total{{rollout="{r}",version="{v}",verdict="bad"}} {bad * t}')
        lines.append(f'model_feedback_total{{rollout="daisies",version="daisies-v2",verdict="bad"}} {min(3, int(t))}')
        return "\n".join(lines) + "\n"

    def legacy_metrics(self) -> str:
        t = self.elapsed()
        lines = ["# TYPE model_quality_score gauge"]
        lines += [f'model_quality_score{{model="{m}",model_version="{v}"}} {score}'
                  for (m, v), (score, _) in LEGACY_SCORES.items()]
        lines.append("# TYPE model_quality_evaluated_total counter")
        lines += [f'model_quality_evaluated_total{{model="{m}",model_version="{v}"}} {per_s * t}'
                  for (m, v), (_, per_s) in LEGACY_SCORES.items()]
        return "\n".join(lines) + "\n"

    def proxy_metrics(self) -> str:
        t = self.elapsed()
        lines = ["# TYPE canary_selector_stable_version gauge"]
        for plugin, rollouts in ((PLUGIN, ROLLOUTS), (OTHER_PLUGIN, ["iris"])):
            for r in rollouts:
                for v, stable in ((f"{r}-v1", 1), (f"{r}-v2", 0)):
                    lines.append(f'canary_selector_stable_version{{plugin="{plugin}",rollout="{r}",version="{v}"}} {stable}')
        lines.append("# TYPE canary_selector_responses_total counter")
        lines += [f'canary_selector_responses_total{{plugin="{PLUGIN}",rollout="{r}",version="{v}",reason="sticky"}} {n * t}'
                  for (r, v), (n, _) in RESPONSES.items()]
        lines.append("# TYPE canary_selector_failed_responses_total counter")
        lines += [f'canary_selector_failed_responses_total{{plugin="{PLUGIN}",rollout="{r}",version="{v}",reason="sticky"}} {f * t}'
                  for (r, v), (_, f) in RESPONSES.items()]
        return "\n".join(lines) + "\n"

    def stop(self) -> None:
        self.app.stop()
        self.legacy.stop()
        self.proxy.stop()


def named(series: list[dict]) -> list[tuple[str, str]]:
    """The (rollout, version) each series names, as the filter reads them:
    only a positive, finite value names anything."""
    for s in series:
        value = float(s["value"][1])
        assert math.isfinite(value) and value > 0, s
    return [(s["metric"].get("rollout"), s["metric"]["version"]) for s in series]


def last_evaluation(prom: Prometheus) -> str:
    (group,) = [g for g in prom.api("rules")["groups"] if g["name"] == "canary-selector-quality"]
    return group["lastEvaluation"]


def test_the_documented_query_names_exactly_the_canaries_failing_on_errors_or_quality(tmp_path):
    query = documented_query()
    assert f'plugin="{PLUGIN}"' in query
    fakes = Fakes()
    prom = Prometheus(tmp_path, [(fakes.proxy.port, {"namespace": "models", "pod": "client-0"})], RULE_FILES,
                      free_port(), scrape_configs=[exporter_job("app", [fakes.app.port]),
                                                   documented_relabel_job(fakes.legacy.port)])
    try:
        prom.start()
        started = time.monotonic()
        # Until every failing canary is named, nothing else ever is.
        while set(answer := named(prom.query(query))) != FAILING:
            assert set(answer) <= FAILING, answer
            assert time.monotonic() - started < 30, f"after 30 s the query names {answer}"
            time.sleep(0.5)
        print(f"the query named {sorted(FAILING)} {time.monotonic() - started:.1f} s after Prometheus started")

        # And still exactly these after the next evaluation of the quality group.
        before = last_evaluation(prom)
        deadline = time.monotonic() + 15
        while last_evaluation(prom) == before:
            assert time.monotonic() < deadline, "the quality group is no longer evaluated"
            time.sleep(0.5)
        answer = named(prom.query(query))
        assert sorted(answer) == sorted(FAILING), "each failing canary once"

        # The recorded series: each plugin's failing canaries, value 1, by
        # the signal that failed them.
        quality = prom.query("canary_selector:quality_failing")
        assert sorted((s["metric"]["plugin"], s["metric"]["rollout"], s["metric"]["version"], s["value"][1])
                      for s in quality) == [
            (OTHER_PLUGIN, "iris", "iris-v2", "1"),
            (PLUGIN, "iris", "iris-v2", "1"),
            (PLUGIN, "lilies", "lilies-v2", "1"),
            (PLUGIN, "poppies", "poppies-v2", "1"),
        ]
        assert sorted(named(prom.query(f'canary_selector:quality_score_failing{{plugin="{PLUGIN}"}}'))) == [
            ("iris", "iris-v2"), ("poppies", "poppies-v2")]
        # The documented job renamed the labels: the rules' names, not the old.
        renamed = prom.query('model_quality_score{job="evaluator"}')
        assert sorted(tuple(s["metric"].get(k) for k in ("rollout", "version", "model", "model_version"))
                      for s in renamed) == [("poppies", "poppies-v1", None, None), ("poppies", "poppies-v2", None, None)]
        assert named(prom.query(f'canary_selector:feedback_failing{{plugin="{PLUGIN}"}}')) == [("lilies", "lilies-v2")]

        # Every rule of both groups evaluates without error on real data (a
        # vector matching PromQL refuses shows only here, as "err").
        groups = {g["name"]: g for g in prom.api("rules")["groups"]}
        assert set(groups) == {"canary-selector-quality", "canary-selector-mesh", "canary-selector-mesh-istio"}
        for group in groups.values():
            for rule in group["rules"]:
                assert rule["health"] == "ok", (rule["name"], rule.get("lastError"))
    finally:
        prom.stop()
        fakes.stop()
