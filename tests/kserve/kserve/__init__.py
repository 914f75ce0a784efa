"""KServe in Standard mode behind Gateway API, as the tests read it: the
manifests of istio/kserve/ and envoy/gateway/, what KServe's controller
writes for them, how each gateway orders the HTTPRoutes, and a real Envoy
shaped like each gateway with the plugin delivered as that gateway
delivers it.

- `installed()`: the cluster after KServe's install (namespace kserve, the
  Gateway kserve/kserve-ingress-gateway of one gateway class).
- `reconcile()`: the Services and HTTPRoutes KServe writes for each
  InferenceService (Standard mode, Gateway API ingress).
- `entries()`, `resolve()`: the HTTPRoute rules attached to the Gateway,
  ordered as Istio or Envoy Gateway orders them, and where a request lands.
- `inconsistencies()`: what would make the rollout misroute.
- `istio_gateway()`, `EnvoyGatewayProxy`: the gateway's Envoy, the plugin
  over ECDS (Istio) or inline in a listener updated over LDS (Envoy Gateway).

One module per part, each imported here so that the tests keep writing
`kserve.<name>`:

- paths.py: where the scenario's manifests are; tests/istio (mesh) on sys.path.
- controller.py: KServe's defaults and what its controller writes; `reconcile()`.
- scenario.py: the gateway classes, the cluster after install and deploy, the plugin resource.
- gateway_api.py: the attached HTTPRoute rules in each implementation's order; `resolve()`.
- gateway_routes.py: the Envoy RouteConfiguration and clusters a gateway builds from them.
- consistency.py: `inconsistencies()`, what would make the rollout misroute.
- proxies.py: the gateways' real Envoys, Istio's and Envoy Gateway's; `gateway_proxy()`.
- traffic.py: driving a gateway in tests, requests checked against the README's decision.
- many_models.py: `rollout_for()`, which rollout of one plugin a request takes.
- runbook.py: the runbooks' steps per gateway and `Runbook`, which carries them out.
- llm.py: what KServe writes for an LLMInferenceService (InferencePool,
  workload Service, its HTTPRoute with a route group's weights); `reconcile()`
  calls it.
- llm_gateway.py: the chat model's scenario (docs/kserve-llm.md): its
  cluster, its plugin resource (WasmPlugin, EnvoyFilter or
  EnvoyExtensionPolicy), the gateway's Envoy with the model servers and
  Envoy Gateway's EnvoyPatchPolicy, a body-based router in front.
- llm_traffic.py: chat conversations through the gateway, checked against
  the decision of the chat rollout.
"""

from __future__ import annotations

from .paths import (  # first: puts tests/istio (mesh) on sys.path
    ENVOY_GATEWAY_DIR,
    ENVOY_GATEWAY_LLM_DIR,
    ENVOY_GATEWAY_MANY_MODELS_DIR,
    GATEWAY_FIXTURE,
    KSERVE_DIR,
    LLM_DIR,
    MANY_MODELS_DIR,
    ROOT,
)
from .controller import (
    FALLBACK_PATH,
    GATEWAY_NAME,
    GATEWAY_NAMESPACE,
    GRPC_APP_PROTOCOL,
    GRPC_CONTENT_TYPE,
    GRPC_PATH,
    INGRESS_DOMAIN,
    OWNER,
    REQUEST_TIMEOUT,
    SERVICE_PORT,
    gateway,
    host,
    is_grpc_port,
    is_kserve_owned,
    isvc_headers,
    isvc_hosts,
    kserve_objects,
    predictor_service,
    predictors,
    protocol_ports,
    reconcile,
    service_ports,
)
from .scenario import (
    ENVOY_GATEWAY,
    ISTIO,
    PLUGIN_KINDS,
    installed,
    manifest_files,
    plugin,
    plugin_config,
    shipped,
    shipped_many_models,
    target_refs,
)
from .gateway_api import Entry, _precedence, attached, backends, entries, resolve
from .gateway_routes import cluster_name, route_config, services, upstreams, weighted_clusters
from .consistency import inconsistencies
from .proxies import (
    FILTER_CONFIG,
    LISTENER,
    WASM_FILTER,
    EnvoyGatewayProxy,
    eg_config_text,
    eg_names,
    envoy_gateway,
    gateway_proxy,
    istio_gateway,
)
from .traffic import (
    HOSTS,
    TESTER,
    USERS,
    assert_untouched_on_stable,
    configured,
    fail_open,
    push,
    route_users,
    with_weights,
)
from .many_models import rollout_for
from .runbook import GATEWAY_SUFFIXES, Runbook, gateway_of, step_name, steps_for, weight_of
from . import llm, llm_gateway, llm_traffic
