from pathlib import Path

import pytest

import kserve


@pytest.fixture(params=[kserve.ISTIO, kserve.ENVOY_GATEWAY], ids=["istio", "envoy-gateway"])
def gateway_class(request) -> str:
    """Each gateway KServe runs behind: Istio's, or Envoy Gateway's."""
    return request.param


@pytest.fixture
def cluster(gateway_class):
    """The cluster after the README's deploy step on that gateway."""
    return kserve.shipped(gateway_class)


@pytest.fixture
def start_gateway(tmp_path: Path):
    """Start the gateway's Envoy for a cluster; stopped after the test."""
    started = []

    def start(cluster, **kwargs):
        envoy = kserve.gateway_proxy(cluster, tmp_path / f"gateway{len(started)}", **kwargs)
        started.append(envoy)
        return envoy.start()

    yield start
    for envoy in started:
        envoy.stop()
