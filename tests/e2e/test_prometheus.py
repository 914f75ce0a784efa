"""End to end with a real Prometheus (Debian's `prometheus` package): it
scrapes the test Envoys' /stats/prometheus while a rollout runs (90/10, then
50/50, then a failing canary that trips the guard), and every query of the
Grafana dashboard and every alert rule in istio/observability/ is evaluated
through Prometheus' HTTP API. A panel or rule that names a metric or label
the filter does not export returns nothing, and fails.

Two Envoys play two client pods: `models/client-1`, whose users carry their
own ids, and `batch/batch-1`, a batch job that sends every request with the
same id (so one of its versions never gets a request: the weighted-version
alert's case). Their target labels are the ones Istio's Prometheus
(samples/addons, job kubernetes-pods) gives a pod's series: `namespace`,
`pod`, and the pod's labels, `app` among them.
"""

from __future__ import annotations

import json
import math
import re
import time

import pytest
import yaml

from harness import ROOT, Envoy, Traffic, failing, failing_version, free_port
from prometheus import Prometheus

OBSERVABILITY = ROOT / "istio" / "observability"
DASHBOARD = json.loads((OBSERVABILITY / "canary-selector-dashboard.json").read_text())
RULES_FILE = OBSERVABILITY / "canary-selector-rules.yaml"
RULES = yaml.safe_load(RULES_FILE.read_text())
PLUGIN = "default.canary-selector"
# Istio's own metrics the dashboard may use; this Envoy has no Istio stats
# filter, so their panels are only checked to parse and to name Istio's
# standard metric.
ISTIO_METRICS = {"istio_requests_total"}
# Seconds: Prometheus' scrape and rule evaluation interval here.
INTERVAL = 1


def start_prometheus(workdir, pods: list[tuple[Envoy, dict]]) -> Prometheus:
    """Prometheus with the alert rules, scraping each Envoy as Istio's
    scrapes a pod with these labels, every INTERVAL."""
    targets = [(envoy.ports["admin"], labels) for envoy, labels in pods]
    return Prometheus(workdir, targets, [RULES_FILE], free_port(),
                      scrape_interval=INTERVAL, evaluation_interval=INTERVAL).start()


def rollout(weights: tuple[float, float]) -> dict:
    return {
        "versions": [{"name": "model-v1", "weight": weights[0]}, {"name": "model-v2", "weight": weights[1]}],
        "stickiness": {"userIdHeaders": ["x-user-id"]},
        "rules": [{"name": "testers", "match": {"headers": {"x-canary-tester": {"exact": "true"}}},
                   "version": "model-v2"}],
        # Loose enough that a healthy canary never trips it, tight enough for
        # one failing 30% of requests; slowResponseMs gives the slow series.
        "guard": {"windowSeconds": 10, "minRequests": 20, "maxErrorRate": 0.1,
                  "slowResponseMs": 2000, "maxSlowRate": 0.5},
    }


def panel_queries(window: float, time_range: float) -> list[tuple[str, str, str]]:
    """(panel title, PromQL, legend format) of every dashboard target, with
    the dashboard's variables at "All" and Grafana's interval variables set
    as Grafana would for this Prometheus."""
    out = []
    for panel in DASHBOARD["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for name in ("namespace", "workload", "plugin", "rollout"):
                expr = expr.replace(f"${name}", ".*")
            expr = expr.replace("$__rate_interval", f"{window:.0f}s").replace("$__range", f"{time_range:.0f}s")
            assert "$" not in expr, f"{panel['title']}: a variable the test does not know: {expr}"
            out.append((panel["title"], expr, target.get("legendFormat", "")))
    return out


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b((?:canary_selector|istio)_[a-z_]+)\b", expr))


def check_panels(
    prom: Prometheus, window: float, time_range: float, phase: str, unlabelled: frozenset = frozenset({"rollout"})
) -> dict[str, list[dict]]:
    """Every panel's query returns series carrying the labels its legend
    names, but for `unlabelled` ones (a config without `rollouts` has no
    rollout label); Istio's panels: the query parses, and names Istio's
    metric."""
    results = {}
    for title, expr, legend in panel_queries(window, time_range):
        result = prom.query(expr)
        if metric_names(expr) & ISTIO_METRICS:
            assert metric_names(expr) <= ISTIO_METRICS, (title, expr)
            assert result == [], "no Istio stats filter here"
            continue
        assert result, f"{phase}: panel {title!r} returned no series:\n{expr}"
        for series in result:
            for label in set(re.findall(r"\{\{(\w+)\}\}", legend)) - unlabelled:
                assert series["metric"].get(label), (phase, title, label, series)
        results[f"{title}: {legend}"] = result
    return results


def values(result: list[dict], key: str = "version") -> dict[str, float]:
    return {s["metric"][key]: float(s["value"][1]) for s in result}


def assert_share(share: float, weight: float, n: float) -> None:
    """A version's share of n requests, each an independent draw at its
    weight: within 5 standard deviations."""
    p = weight / 100
    bound = 5 * math.sqrt(p * (1 - p) / n) + 1e-9
    assert abs(share - p) <= bound, (share, p, n)


def alerts(prom: Prometheus) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for a in prom.api("alerts")["alerts"]:
        out.setdefault(a["labels"]["alertname"], []).append(a)
    return out


def test_the_dashboard_and_the_alert_rules_against_a_real_prometheus(start_envoy, tmp_path):
    client = start_envoy(rollout((99, 1)), bootstrap_hook=failing("model-v2", 0))
    batch = start_envoy(rollout((50, 50)))
    prom = start_prometheus(tmp_path, [
        (client, {"namespace": "models", "pod": "client-1", "app": "client"}),
        (batch, {"namespace": "batch", "pod": "batch-1", "app": "batch"}),
    ])
    traffic = [Traffic(client), Traffic(batch, same_user="batch-job")]
    started = time.monotonic()
    try:
        for t in traffic:
            t.start()
        # The dashboard's variables: Grafana's label_values() on the series.
        for namespace in ("models", "batch"):
            prom.wait_for_samples(f'canary_selector_requests_total{{namespace="{namespace}"}} > 0')
        for variable in DASHBOARD["templating"]["list"]:
            if variable["type"] != "query":
                continue
            m = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["query"]["query"])
            assert m, variable["query"]
            selector = m.group(1)
            for name in ("namespace", "workload", "plugin"):
                selector = selector.replace(f"${name}", ".*")
            found = prom.api(f"label/{m.group(2)}/values", **{"match[]": selector})
            assert set(found) == {
                "namespace": {"models", "batch"}, "workload": {"client", "batch"}, "plugin": {PLUGIN},
                "rollout": set(),  # no config here lists `rollouts`
            }[variable["name"]], variable["name"]

        # The rollout: each step served for `window` seconds, then every
        # panel queried over just that step (Grafana's $__rate_interval).
        window = 6
        client_share = 'canary_selector_requests_total{namespace="models", reason=~"sticky|anonymous|guard"}'
        for weights in [(90, 10), (50, 50)]:
            assert client.push(rollout(weights))
            time.sleep(window + 2 * INTERVAL + 1)  # the tick's flush and a scrape behind
            panels = check_panels(prom, window, time.monotonic() - started, f"{weights}")
            share = values([s for s in panels["Traffic share per version: {{namespace}}/{{plugin}} {{rollout}} {{version}}"]
                            if s["metric"]["namespace"] == "models"])
            n = float(prom.query(f"sum(increase({client_share}[{window}s]))")[0]["value"][1])
            assert n > 200, f"only {n} requests in {window} s"
            assert_share(share["model-v2"], weights[1], n)
            assert_share(share["model-v1"], weights[0], n)
            weight = values([s for s in panels["Traffic share per version: weight {{namespace}}/{{plugin}} {{rollout}} {{version}}"]
                             if s["metric"]["namespace"] == "models"])
            assert weight == {"model-v1": weights[0] / 100, "model-v2": weights[1] / 100}
            # No alert: a healthy rollout, every weighted version reached.
            assert "CanarySelectorGuardTripped" not in alerts(prom)
            assert "CanarySelectorCanaryErrorRateAboveStable" not in alerts(prom)

        # The batch job's ids all land on one version: the other one has a
        # weight and gets nothing, for its pod's plugin only.
        rules = {r["alert"]: r for g in RULES["groups"] for r in g["rules"]}
        starved = prom.query(rules["CanarySelectorWeightedVersionGetsNoTraffic"]["expr"])
        assert [(s["metric"]["namespace"], s["metric"]["plugin"]) for s in starved] == [("batch", PLUGIN)]
        assert starved[0]["metric"]["version"] in ("model-v1", "model-v2")

        # The canary fails 30% of its requests: the guard trips, its alert
        # fires, and the error-rate alert names model-v2.
        failing_since = time.monotonic()
        client.set_runtime("fault.http.abort.abort_percent", "30")
        tripped = prom.wait_for_samples("canary_selector_guard_tripped == 1", timeout=20)
        assert [(s["metric"]["namespace"], s["metric"]["plugin"]) for s in tripped] == [("models", PLUGIN)]
        deadline = time.monotonic() + 10
        while not [a for a in alerts(prom).get("CanarySelectorGuardTripped", []) if a["state"] == "firing"]:
            assert time.monotonic() < deadline, alerts(prom)
            time.sleep(INTERVAL / 2)
        (fired,) = alerts(prom)["CanarySelectorGuardTripped"]
        assert (fired["labels"]["namespace"], fired["labels"]["plugin"], fired["labels"]["severity"]) == (
            "models", PLUGIN, "page")
        above = prom.query(rules["CanarySelectorCanaryErrorRateAboveStable"]["expr"])
        assert [(s["metric"]["namespace"], s["metric"]["version"]) for s in above] == [("models", "model-v2")]
        assert float(above[0]["value"][1]) > 0.02
        # The tripped guard is not also a "weighted version without traffic".
        starved = prom.query(rules["CanarySelectorWeightedVersionGetsNoTraffic"]["expr"])
        assert [s["metric"]["namespace"] for s in starved] == ["batch"]

        time.sleep(2 * INTERVAL + 1)
        failing_for = time.monotonic() - failing_since
        panels = check_panels(prom, failing_for, time.monotonic() - started, "failing canary")
        failed = values([s for s in panels["5xx rate per version: {{namespace}}/{{plugin}} {{rollout}} {{version}}"]
                         if s["metric"]["namespace"] == "models"])
        assert failed["model-v1"] == 0 and 0.1 < failed["model-v2"] < 0.5, failed
        trips = panels["Guard trips in the time range: {{namespace}}/{{plugin}} {{rollout}} {{version}}"]
        assert {(s["metric"]["namespace"], s["metric"]["version"]): round(float(s["value"][1])) for s in trips
                if float(s["value"][1]) > 0} == {("models", "model-v2"): 1}
        reasons = values([s for s in panels["Requests by version and reason: {{rollout}} {{version}} {{reason}}"]
                          if s["metric"]["version"] == "model-v1"], key="reason")
        assert reasons["guard"] > 0, "the guard sends the canary's users to stable"
    finally:
        for t in traffic:
            t.stop()
        prom.stop()
    assert set(traffic[1].statuses) == {200}
    assert set(traffic[0].statuses) <= {200, 503}


@pytest.mark.parametrize("title,expr,legend", panel_queries(60, 3600), ids=lambda v: str(v)[:40])
def test_every_panel_names_only_exported_metrics(title, expr, legend):
    """The names the dashboard uses are the filter's (src/filter.rs) or
    Istio's; the e2e test above proves the filter's exist."""
    exported = set(re.findall(r'"(canary_selector_[a-z_]+)"', (ROOT / "src" / "filter.rs").read_text()))
    assert metric_names(expr) and metric_names(expr) <= exported | ISTIO_METRICS, (title, metric_names(expr))


def test_the_dashboard_is_a_grafana_dashboard_with_the_documented_variables():
    variables = {v["name"]: v for v in DASHBOARD["templating"]["list"]}
    assert list(variables) == ["datasource", "namespace", "workload", "plugin", "rollout"]
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for name in ("namespace", "workload", "plugin", "rollout"):
        assert variables[name]["includeAll"] and variables[name]["allValue"] == ".*", name
    ids = [p["id"] for p in DASHBOARD["panels"]]
    assert len(set(ids)) == len(ids)
    for panel in DASHBOARD["panels"]:
        assert panel["title"] and panel["description"] and panel["targets"], panel.get("title")
        for target in [panel, *panel["targets"]]:
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
    # Every panel named in docs/observability.md, and back.
    page = (ROOT / "docs" / "observability.md").read_text()
    section = page[page.index("Its panels:"):page.index("The alerts")]
    described = re.findall(r"^- \*\*(.+?)\*\*:", section, re.M)
    assert described == [p["title"] for p in DASHBOARD["panels"]]


def test_each_rollout_of_one_plugin_has_its_own_series_and_alerts(start_envoy, tmp_path):
    """A gateway's one plugin with two rollouts: the rollout variable lists
    both, every panel splits by rollout, and a failing model trips and
    alerts for its own rollout only."""
    from test_rollouts import rollout as scoped, with_routes

    # minRequests 120: the error-rate alert wants 100 responses of the
    # canary, and a tripped guard sends it no more.
    guard = {"windowSeconds": 30, "minRequests": 120, "maxErrorRate": 0.1, "slowResponseMs": 2000, "maxSlowRate": 0.5}
    config = {"rollouts": [
        scoped("iris", ["iris.example.com"], 20, guard=guard),
        scoped("flowers", ["flowers.example.com"], 50, guard=guard),
    ]}

    def hook(cfg: dict) -> None:
        with_routes()(cfg)
        failing_version("flowers-v2")(cfg)

    gateway = start_envoy(config, bootstrap_hook=hook)
    prom = start_prometheus(tmp_path, [(gateway, {"namespace": "kserve", "pod": "gateway-1", "app": "gateway"})])
    traffic = Traffic(gateway, hosts=["iris.example.com", "flowers.example.com"])
    started = time.monotonic()
    try:
        traffic.start()
        # Healthy for a few scrapes, so that the counters' rates start at
        # the first failure; then flowers' canary fails every request.
        prom.wait_for_samples('canary_selector_responses_total{rollout="flowers", version="flowers-v2"} > 0')
        time.sleep(3 * INTERVAL)
        gateway.set_runtime("fault.http.abort.abort_percent", "100")
        tripped = prom.wait_for_samples("canary_selector_guard_tripped == 1", timeout=20)
        assert [s["metric"]["rollout"] for s in tripped] == ["flowers"]
        (variable,) = [v for v in DASHBOARD["templating"]["list"] if v["name"] == "rollout"]
        selector = re.fullmatch(r"label_values\((.+), rollout\)", variable["query"]["query"]).group(1)
        for name in ("namespace", "workload", "plugin"):
            selector = selector.replace(f"${name}", ".*")
        assert set(prom.api("label/rollout/values", **{"match[]": selector})) == {"iris", "flowers"}

        deadline = time.monotonic() + 10
        while not [a for a in alerts(prom).get("CanarySelectorGuardTripped", []) if a["state"] == "firing"]:
            assert time.monotonic() < deadline, alerts(prom)
            time.sleep(INTERVAL / 2)
        (fired,) = alerts(prom)["CanarySelectorGuardTripped"]
        assert (fired["labels"]["plugin"], fired["labels"]["rollout"]) == (PLUGIN, "flowers")
        assert "rollout flowers sends its users" in fired["annotations"]["summary"]
        rules = {r["alert"]: r for g in RULES["groups"] for r in g["rules"]}
        above = prom.query(rules["CanarySelectorCanaryErrorRateAboveStable"]["expr"])
        assert [(s["metric"]["rollout"], s["metric"]["version"]) for s in above] == [("flowers", "flowers-v2")]

        time.sleep(2 * INTERVAL + 1)
        elapsed = time.monotonic() - started
        panels = check_panels(prom, elapsed, elapsed, "two rollouts", unlabelled=frozenset())
        weight = {
            (s["metric"]["rollout"], s["metric"]["version"]): float(s["value"][1])
            for s in panels["Traffic share per version: weight {{namespace}}/{{plugin}} {{rollout}} {{version}}"]
        }
        assert weight == {("iris", "iris-v1"): 0.8, ("iris", "iris-v2"): 0.2,
                          ("flowers", "flowers-v1"): 0.5, ("flowers", "flowers-v2"): 0.5}
        failed = {
            (s["metric"]["rollout"], s["metric"]["version"]): float(s["value"][1])
            for s in panels["5xx rate per version: {{namespace}}/{{plugin}} {{rollout}} {{version}}"]
        }
        assert failed[("flowers", "flowers-v2")] > 0.1 and failed[("flowers", "flowers-v1")] == 0, failed
        assert failed[("iris", "iris-v2")] == failed[("iris", "iris-v1")] == 0, failed
    finally:
        traffic.stop()
        prom.stop()
    assert set(traffic.statuses) <= {200, 503}
