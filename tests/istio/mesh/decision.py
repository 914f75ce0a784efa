"""What the filter decides for a request (README, How a request is decided),
as the tests' oracle: the first matching rule, else the user's bucket; and
whether a share of requests matches a weight."""

from __future__ import annotations

import math
import re

import harness  # tests/e2e/harness.py, on sys.path (paths.py)


def expected(config: dict, headers: dict) -> str | None:
    """The README's decision: the first matching rule, else the user's bucket
    (None for a request with no user id: a random pick)."""
    values = {k.lower(): v for k, v in headers.items()}
    for rule in config.get("rules", []):
        if set(rule["match"]) - {"headers"}:
            raise NotImplementedError(f"rule {rule['name']}: only header conditions are modelled here")
        if all(_holds(cond, values.get(h.lower())) for h, cond in rule["match"]["headers"].items()):
            return rule["version"]
    for header in config.get("stickiness", {}).get("userIdHeaders", []):
        user = values.get(header.lower(), "").strip(" \t")
        if user:
            return harness.expected_version(config, user)
    return None


def _holds(cond: dict, value: str | None) -> bool:
    if value is None:
        return False
    if "exact" in cond:
        return value == cond["exact"]
    if "prefix" in cond:
        return value.startswith(cond["prefix"])
    return re.fullmatch(cond["regex"], value) is not None


def assert_share(n_hits: int, n: int, percent: float):
    """n_hits of n requests is `percent`% of them, within 5 sigma."""
    p = percent / 100
    sigma = math.sqrt(n * p * (1 - p))
    assert abs(n_hits - n * p) <= 5 * sigma + 1e-9, f"{n_hits}/{n}, expected {percent}%"
