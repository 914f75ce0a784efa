import json
from pathlib import Path

import pytest

from harness import ROOT, Envoy

DEMO_CONFIG = json.loads((ROOT / "envoy" / "plugin-config.json").read_text())


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
    """A copy of envoy/plugin-config.json, the config users start from."""
    return json.loads(json.dumps(DEMO_CONFIG))
