"""The quality verdict's Prometheus rules (istio/observability/
canary-selector-quality-rules.yaml and its PrometheusRule,
quality-prometheusrule.yaml): promtool checks them and runs their unit tests
(tests/istio/quality-rules.test.yaml: a canary scoring or liked worse than
the stable version fails, one within the margin, below the minimum count,
with a stale evaluator, or as bad as a failing stable version does not,
the stable version never; and the documented query returns both verdicts),
and the unit tests catch each condition loosened or broken. Real Prometheus
scraping a fake evaluator and application with these rules:
tests/e2e/test_quality.py."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

import mesh

UNIT_TESTS = Path(__file__).with_name("quality-rules.test.yaml")
PROMETHEUS_RULE = mesh.OBSERVABILITY_DIR / "quality-prometheusrule.yaml"
PROMTOOL = shutil.which("promtool")
SHIPPED = "- ../../istio/observability/canary-selector-quality-rules.yaml\n"

pytestmark = pytest.mark.skipif(PROMTOOL is None, reason="promtool not found: apt-get install prometheus")


def promtool_test(rules: Path, workdir: Path | None = None) -> subprocess.CompletedProcess:
    """`promtool test rules` on the unit tests, with the quality rules taken
    from `rules` (the mesh rules stay the shipped ones)."""
    tests = UNIT_TESTS
    if workdir is not None:
        # The text, not a yaml round trip: PyYAML reads `0x40` (the series
        # notation for 40 zeros) as the hexadecimal 64.
        text = tests.read_text()
        assert SHIPPED in text
        text = text.replace(SHIPPED, f"- {rules}\n", 1).replace("- ../../istio/", f"- {mesh.ISTIO_DIR}/")
        tests = workdir / "quality-rules.test.yaml"
        tests.write_text(text)
    return subprocess.run([PROMTOOL, "test", "rules", str(tests)], capture_output=True, text=True)


def test_the_rule_file_passes_promtool_check():
    assert mesh.promtool_check_rules(mesh.QUALITY_RULES) == []


def test_the_unit_tests_pass():
    run = promtool_test(mesh.QUALITY_RULES)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS" in run.stdout


def test_the_unit_tests_load_the_shipped_files():
    rule_files = yaml.safe_load(UNIT_TESTS.read_text())["rule_files"]
    assert [(UNIT_TESTS.parent / f).resolve() for f in rule_files] == [mesh.QUALITY_RULES, mesh.MESH_RULES]


# Each condition loosened (or dropped) in a copy of the rules, and the case
# of the unit tests that then fails: a rollout whose canary shows up, or
# goes missing, in what the filter polls.
LOOSENED = [
    # The evaluator's minimum count dropped: tulips' 300 scored predictions
    # an hour are judged.
    ("\n      and on (rollout, version) canary_selector:quality_evaluated:increase1h >= 500", "", 'rollout="tulips"'),
    # The freshness dropped: roses' evaluator stopped 20 minutes ago, its
    # last score still trips.
    ("\n      and on (rollout, version) canary_selector:quality_evaluated:increase15m > 0", "", 'rollout="roses"'),
    # The score's margin dropped: flowers, 0.03 below, trips.
    ("(canary_selector:stable_quality_score - 0.05)", "(canary_selector:stable_quality_score - 0)",
     'rollout="flowers"'),
    # The floor held against a canary whose stable version is below it too:
    # lilies trips.
    ("\n            unless on (plugin, rollout) canary_selector:stable_quality_score < 0.8", "",
     'rollout="lilies"'),
    # The floor dropped: daisies-v2 goes missing.
    ("canary_selector:quality_score:judged < 0.8\n", "canary_selector:quality_score:judged < 0\n",
     'rollout="daisies"'),
    # Canaries only, dropped: orchids-v1, still the stable version on proxy
    # a, is named.
    ("\n      and on (plugin, rollout, version) max by (plugin, rollout, version) (canary_selector_stable_version) == 0",
     "", 'rollout="orchids"'),
    # The feedback's minimum count dropped: violets' three thumbs down trip.
    ("\n      and on (plugin, rollout, version) canary_selector:feedback:increase1h >= 100", "",
     'rollout="violets"'),
    # The feedback's margin dropped: poppies, 3 points above, trips.
    ("            0.05\n          )", "            0\n          )", 'rollout="poppies"'),
    # The noise term dropped: irises, 7 points above on 120 events, trips.
    ("            4 * sqrt(\n", "            0 * sqrt(\n", 'rollout="irises"'),
    # A stable version without complaints has no bad share: lotus-v2 goes
    # missing.
    ("\n        or\n          0 * sum by (rollout, version) (rate(model_feedback_total{verdict=\"good\"}[1h]))", "",
     'rollout="lotus"'),
    # The feedback signal left out of what the filter polls: peonies goes
    # missing.
    ("(canary_selector:quality_score_failing or canary_selector:feedback_failing)",
     "canary_selector:quality_score_failing", 'rollout="peonies"'),
]


@pytest.mark.parametrize("old, new, caught", LOOSENED, ids=[c for _, _, c in LOOSENED])
def test_the_unit_tests_catch_a_loosened_rule(tmp_path, old, new, caught):
    rules = mesh.QUALITY_RULES.read_text()
    assert rules.count(old) == 1, old
    (tmp_path / "rules.yaml").write_text(rules.replace(old, new))
    assert mesh.promtool_check_rules(tmp_path / "rules.yaml") == []
    run = promtool_test(tmp_path / "rules.yaml", workdir=tmp_path)
    assert run.returncode != 0, run.stdout
    assert caught in run.stdout + run.stderr


def test_the_group_evaluates_every_few_seconds():
    """As the mesh groups: the two halves of the guard's query are as fresh
    as each other, whatever the Prometheus' evaluation_interval."""
    (group,) = mesh.load(mesh.QUALITY_RULES)[0]["groups"]
    assert (group["name"], group.get("interval")) == ("canary-selector-quality", "5s")


def test_the_failing_series_keep_the_labels_the_filter_reads():
    """What the filter polls carries `plugin`, `rollout` and `version`,
    and nothing sums them away on the way."""
    (group,) = mesh.load(mesh.QUALITY_RULES)[0]["groups"]
    rules = {r.get("record") or r["alert"]: r["expr"] for r in group["rules"]}
    for name in ("canary_selector:quality_score", "canary_selector:feedback:increase1h",
                 "canary_selector:feedback_bad_ratio:rate1h"):
        assert "group_right\ngroup by (plugin, rollout, version) (canary_selector_stable_version)" in rules[name], name
    for name in ("canary_selector:quality_score_failing", "canary_selector:feedback_failing"):
        assert rules[name].startswith("count by (plugin, rollout, version) ("), name
    assert rules["CanarySelectorCanaryQualityFailing"] == "canary_selector:quality_failing == 1"


def test_the_prometheus_rule_holds_the_same_group_and_passes_its_schema():
    (rule,) = mesh.load(PROMETHEUS_RULE)
    assert rule["spec"] == mesh.load(mesh.QUALITY_RULES)[0]
    assert mesh.validate_prometheus_rule(rule) == []
    assert rule["metadata"]["name"] == "canary-selector-quality"
