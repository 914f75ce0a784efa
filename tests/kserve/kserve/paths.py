"""Where the KServe scenario's files are: its manifests under istio/kserve/
(Istio) and envoy/gateway/ (Envoy Gateway), each gateway's many-models
folder, and the Gateway KServe's quick install creates.

Importing it puts tests/istio on sys.path, so that `mesh` (the cluster model,
the schemas, Istio's proxy) imports here, and through it tests/e2e's
`harness`; the package imports it first.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "tests" / "istio"))

KSERVE_DIR = ROOT / "istio" / "kserve"
ENVOY_GATEWAY_DIR = ROOT / "envoy" / "gateway"
# The second model beside sklearn-iris, and the one plugin for both
# (docs/kserve-many-models.md).
MANY_MODELS_DIR = KSERVE_DIR / "many-models"
ENVOY_GATEWAY_MANY_MODELS_DIR = ENVOY_GATEWAY_DIR / "many-models"
# The chat model's two versions, our routes, and the filter with and without
# a body-based router in front (docs/kserve-llm.md).
LLM_DIR = KSERVE_DIR / "llm"
ENVOY_GATEWAY_LLM_DIR = ENVOY_GATEWAY_DIR / "llm"
# The Gateway KServe's quick install creates (gatewayClassName envoy; Istio's is istio).
GATEWAY_FIXTURE = ROOT / "tests" / "kserve" / "kserve-ingress-gateway.yaml"
