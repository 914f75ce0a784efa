"""The PrometheusRule (monitoring.coreos.com/v1) the way `kubectl apply`
would check it with the Prometheus Operator installed: its schema (written
here: no Prometheus Operator CRD is at hand), then its rule groups against
`promtool check rules`."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import yaml
from prometheus import tool  # tests/e2e/prometheus.py, on sys.path (paths.py)

from .schemas import METADATA, schema_errors

# The PrometheusRule (monitoring.coreos.com/v1) as the Prometheus Operator's
# API reference describes it: groups of rules, nothing else, unknown fields
# rejected as `kubectl apply` does with the CRD installed. Written here, since
# ../shared has no Prometheus Operator CRD; promtool checks the rules
# themselves (the PromQL, the templates, `alert` xor `record`).
_DURATION = {"type": "string", "pattern": r"^(0|(\d+y)?(\d+w)?(\d+d)?(\d+h)?(\d+m)?(\d+s)?(\d+ms)?)$"}
_STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}
PROMETHEUS_RULE = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PrometheusRule"},
        "metadata": METADATA,
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "groups": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name"],
                        "additionalProperties": False,
                        "properties": {
                            "name": {"type": "string", "minLength": 1},
                            "interval": _DURATION,
                            "query_offset": _DURATION,
                            "limit": {"type": "integer"},
                            "labels": _STRINGS,
                            "partial_response_strategy": {"type": "string"},
                            "rules": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["expr"],
                                    "additionalProperties": False,
                                    "properties": {
                                        "alert": {"type": "string"},
                                        "record": {"type": "string"},
                                        "expr": {"type": ["string", "integer"]},
                                        "for": _DURATION,
                                        "keep_firing_for": _DURATION,
                                        "labels": _STRINGS,
                                        "annotations": _STRINGS,
                                    },
                                },
                            },
                        },
                    },
                }
            },
        },
    },
}


def promtool_check_rules(path: Path) -> list[str]:
    """`promtool check rules` on a rule file (empty when valid)."""
    run = subprocess.run([tool("promtool"), "check", "rules", str(path)], capture_output=True, text=True)
    return [] if run.returncode == 0 else [f"promtool: {(run.stdout + run.stderr).strip()}"]


def validate_prometheus_rule(doc: dict) -> list[str]:
    errors = schema_errors(PROMETHEUS_RULE, doc)
    if errors:
        return errors
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        yaml.safe_dump(doc["spec"], f)
        f.flush()
        return promtool_check_rules(Path(f.name))
