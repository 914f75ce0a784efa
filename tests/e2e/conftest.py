import json
from pathlib import Path

import pytest

from harness import ROOT, Envoy

# envoy/plugin-config.json, the config `make run` serves: two rollouts, `model`
# (every host and path: KServe V1 and V2 over HTTP and gRPC) and `chat` (the
# OpenAI paths, scoped by the model the body names).
DEMO_FILE = json.loads((ROOT / "envoy" / "plugin-config.json").read_text())
# Fields that scope an entry of `rollouts`; a config without `rollouts` has none.
SCOPE_FIELDS = ("name", "hosts", "pathPrefixes", "models")


def single_rollout(rollout: dict) -> dict:
    """A `rollouts` entry as a config of its own (no `rollouts`): what it does
    to a request it takes, without the scope."""
    return {k: v for k, v in rollout.items() if k not in SCOPE_FIELDS}


# The tests that start from the demo start from its first rollout, as a
# config of its own: the `model` rollout takes every request the KServe-style
# tests send (every host and path), so it decides them as the demo does,
# and a config without `rollouts` keeps their metrics without a `rollout`
# label and their pushes (weights, rules, guard) at the top level. The demo
# file as a whole, with its chat rollout, is tests/e2e/test_models.py's.
# (test_models.py checks that the `model` rollout takes every host and path.)
(DEMO_MODEL_ROLLOUT,) = [r for r in DEMO_FILE["rollouts"] if r["name"] == "model"]
DEMO_CONFIG = single_rollout(DEMO_MODEL_ROLLOUT)


@pytest.fixture
def start_envoy(tmp_path: Path):
    """Start an Envoy with the given plugin config; stopped after the test."""
    started: list[Envoy] = []

    def start(plugin_config, **kwargs) -> Envoy:
        e = Envoy(tmp_path / f"envoy{len(started)}", plugin_config, **kwargs)
        started.append(e)
        return e.start()

    yield start
    for e in started:
        e.stop()


@pytest.fixture
def demo_config() -> dict:
    """A copy of the demo's `model` rollout (envoy/plugin-config.json) as a
    config of its own, the config the KServe-style tests start from."""
    return json.loads(json.dumps(DEMO_CONFIG))
