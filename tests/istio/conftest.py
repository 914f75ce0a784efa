from pathlib import Path

import pytest

import mesh


@pytest.fixture
def cluster() -> mesh.Cluster:
    """The objects `kubectl apply -f istio/namespace.yaml; kubectl apply -f istio/` creates."""
    return mesh.shipped()


@pytest.fixture
def start_sidecar(tmp_path: Path):
    """Start the Istio-shaped client sidecar for a cluster; stopped after the test."""
    started = []

    def start(cluster: mesh.Cluster, **kwargs):
        envoy = mesh.sidecar(cluster, tmp_path / f"sidecar{len(started)}", **kwargs)
        started.append(envoy)
        # The harness picks free ports before Envoy binds them; another
        # process may take one in between. Start again on fresh ports then.
        for attempt in range(3):
            try:
                return envoy.start()
            except RuntimeError as e:
                if "Address already in use" not in str(e) or attempt == 2:
                    raise

    yield start
    for envoy in started:
        envoy.stop()
