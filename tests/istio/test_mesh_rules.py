"""The mesh verdict's Prometheus rules (istio/observability/
canary-selector-mesh-rules.yaml and its PrometheusRule): promtool checks
them and runs their unit tests (tests/istio/mesh-rules.test.yaml: a failing
canary fires, a healthy one does not, one below the minimum count does not,
the stable version never), and the unit tests catch a rule loosened or
broken. Real Prometheus scraping real Envoys with these rules:
tests/e2e/test_mesh.py."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

import mesh

UNIT_TESTS = Path(__file__).with_name("mesh-rules.test.yaml")
PROMETHEUS_RULE = mesh.OBSERVABILITY_DIR / "mesh-prometheusrule.yaml"
PROMTOOL = shutil.which("promtool")

pytestmark = pytest.mark.skipif(PROMTOOL is None, reason="promtool not found: apt-get install prometheus")


def promtool_test(rules: Path, tests: Path = UNIT_TESTS, workdir: Path | None = None) -> subprocess.CompletedProcess:
    """`promtool test rules` with the unit tests pointed at `rules`."""
    if workdir is not None:
        # The text, not a yaml round trip: PyYAML reads `0x40` (the series
        # notation for 40 zeros) as the hexadecimal 64.
        text = tests.read_text()
        shipped = "- ../../istio/observability/canary-selector-mesh-rules.yaml\n"
        assert shipped in text
        tests = workdir / "mesh-rules.test.yaml"
        tests.write_text(text.replace(shipped, f"- {rules}\n", 1))
    return subprocess.run([PROMTOOL, "test", "rules", str(tests)], capture_output=True, text=True)


def test_the_rule_file_passes_promtool_check():
    assert mesh.promtool_check_rules(mesh.MESH_RULES) == []


def test_the_unit_tests_pass():
    run = promtool_test(mesh.MESH_RULES)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS" in run.stdout


def test_the_unit_tests_load_the_shipped_file():
    (rule_file,) = yaml.safe_load(UNIT_TESTS.read_text())["rule_files"]
    assert (UNIT_TESTS.parent / rule_file).resolve() == mesh.MESH_RULES


STABLE_FAILS = """      unless on (plugin, rollout) (
        canary_selector:version_failing and on (plugin, rollout, version) canary_selector:stable_version == 1
      )
"""


@pytest.mark.parametrize(
    "old, new, caught",
    [
        # No minimum count: tulips' 36 responses a minute fail it.
        ("\n      and on (plugin, rollout, version) canary_selector:responses:increase1m >= 100", "",
         'rollout="tulips"'),
        # The stable version told by the wrong marker: roses-v1 shows up.
        ("canary_selector:stable_version == 1\n", "canary_selector:stable_version == 0\n", 'rollout="roses"'),
        # A shared outage blamed on the canary: lilies shows up.
        (STABLE_FAILS, "", 'rollout="lilies"'),
        # The slow rate left out: daisies-v2 goes missing.
        ("\n        or canary_selector:slow_ratio:rate1m > 0.2", "", 'rollout="daisies"'),
    ],
)
def test_the_unit_tests_catch_a_loosened_rule(tmp_path, old, new, caught):
    rules = mesh.MESH_RULES.read_text()
    assert rules.count(old) == 1
    (tmp_path / "rules.yaml").write_text(rules.replace(old, new))
    assert mesh.promtool_check_rules(tmp_path / "rules.yaml") == []
    run = promtool_test(tmp_path / "rules.yaml", workdir=tmp_path)
    assert run.returncode != 0
    assert caught in run.stdout + run.stderr


def test_the_groups_evaluate_every_few_seconds():
    """The verdict costs seconds: every group sets its own interval, short,
    whatever the Prometheus' evaluation_interval (Istio's addon: 1 m)."""
    groups = mesh.load(mesh.MESH_RULES)[0]["groups"]
    assert {g["name"] for g in groups} == {"canary-selector-mesh", "canary-selector-mesh-istio"}
    assert all(g.get("interval") == "5s" for g in groups)


def test_the_failing_series_keep_the_labels_the_filter_reads():
    """`rollout` and `version` survive every aggregation up to what the
    filter polls; nothing sums them away."""
    rules = {r.get("record") or r["alert"]: r["expr"] for g in mesh.load(mesh.MESH_RULES)[0]["groups"] for r in g["rules"]}
    for name in ("canary_selector:responses:increase1m", "canary_selector:error_ratio:rate1m",
                 "canary_selector:slow_ratio:rate1m", "canary_selector:version_failing"):
        assert "by (plugin, rollout, version)" in rules[name], name
    assert '"rollout", "$1", "destination_service_name"' in rules["canary_selector:istio_canary_failing"]
    assert '"version", "$1", "destination_version"' in rules["canary_selector:istio_canary_failing"]


def test_the_prometheus_rule_holds_the_same_groups_and_passes_its_schema():
    (rule,) = mesh.load(PROMETHEUS_RULE)
    assert rule["spec"] == mesh.load(mesh.MESH_RULES)[0]
    assert mesh.validate_prometheus_rule(rule) == []
    assert rule["metadata"]["name"] == "canary-selector-mesh"
