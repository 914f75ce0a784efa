"""Where the Istio side's files are: the checkout, istio/, and the files in
istio/observability/ that are no Kubernetes object (the Grafana dashboard and
the plain Prometheus rule files).

Importing it puts tests/e2e on sys.path, so that `harness` (the real Envoy the
sidecar and gateway tests run) imports here as it does in tests/e2e; the
package imports it first.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
ISTIO_DIR = ROOT / "istio"
OBSERVABILITY_DIR = ISTIO_DIR / "observability"
DASHBOARD = OBSERVABILITY_DIR / "canary-selector-dashboard.json"
RULES = OBSERVABILITY_DIR / "canary-selector-rules.yaml"
MESH_RULES = OBSERVABILITY_DIR / "canary-selector-mesh-rules.yaml"
QUALITY_RULES = OBSERVABILITY_DIR / "canary-selector-quality-rules.yaml"
# Files under istio/ that are no Kubernetes object: the Grafana dashboard and
# the plain Prometheus rule files.
NOT_MANIFESTS = (DASHBOARD, RULES, MESH_RULES, QUALITY_RULES)

sys.path.insert(0, str(ROOT / "tests" / "e2e"))
