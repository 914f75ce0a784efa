"""The Istio side of the tests: the manifests in istio/ read the way a cluster
with Istio 1.32 reads them, and a real Envoy shaped like the client sidecar
Istio would build from them.

- `validate()`: a manifest against the schema `kubectl apply` would apply: a
  custom resource (Istio, Gateway API, Envoy Gateway, KServe) against its CRD
  in ../shared (the CRD's defaults applied, unknown fields are errors as with
  kubectl's strict field validation, the CRD's CEL rules evaluated by
  cel-python), a Kubernetes kind against Kubernetes' own schemas
  (kubernetes-validate), the PrometheusRule against its own schema (no
  Prometheus Operator CRD is at hand) and its rule groups against promtool,
  the RequestAuthentication against its own schema (no CRD of its group is
  at hand either).
- `Cluster`: the objects `kubectl apply -f` creates, changed by the README's
  `kubectl patch` and `delete` commands exactly as the API server would.
- `plugin_config_json()`: a WasmPlugin's pluginConfig as Istio delivers it.
- `sidecar()`: the harness' Envoy with the VirtualService's routes, the
  DestinationRule's subsets and the plugin over ECDS as Istio names it.

One module per part, each imported here so that the tests (and tests/kserve)
keep writing `mesh.<name>`:

- paths.py: where istio/ and its observability files are; tests/e2e on sys.path.
- manifests.py: reading manifest files, the scenario's manifests, `kubectl apply -f`'s files.
- schemas.py: the CRD schemas (strict, defaulted) and ObjectMeta; JSON Schema errors.
- cel.py: the CRDs' CEL rules on cel-python.
- prometheus_rule.py: the PrometheusRule's schema and `promtool check rules`.
- request_authentication.py: the RequestAuthentication's schema, from Istio's API reference.
- validation.py: `validate()`, a manifest against the schema its kind takes.
- cluster.py: `Cluster`, the objects the runbooks' kubectl commands leave.
- plugin.py: what Istio makes of a WasmPlugin or TrafficExtension.
- decision.py: the README's decision, the tests' oracle.
- routes.py: the Service, subsets and VirtualService routes as the sidecar's Envoy routes.
- consistency.py: `inconsistencies()`, what would make the rollout misroute.
- stats.py: Istio's stats inclusion and tag extractors, extraStatTags.
- proxy.py: `istio_proxy()` and `sidecar()`, the real Envoy shaped as Istio's proxy.
- runbook.py: a doc page's marked section as steps, kubectl's command line,
  `kubectl get -o json | jq ...` pipelines (the real jq).
"""

from __future__ import annotations

from .paths import (  # first: puts tests/e2e (harness) on sys.path
    DASHBOARD,
    ISTIO_DIR,
    MESH_RULES,
    NOT_MANIFESTS,
    OBSERVABILITY_DIR,
    QUALITY_RULES,
    ROOT,
    RULES,
)
from .manifests import OTHER_SCENARIOS, demo_bootstrap, kubectl_files, load, manifest_files
from .schemas import (
    CRD_DIRS,
    CRD_GROUPS,
    CRD_ROOT,
    CRDS,
    CRDS_MISSING,
    LLM_CRD_DIR,
    LLM_CRD_GROUPS,
    LLM_KINDS,
    METADATA,
    crd,
    defaulted,
    llm_crds,
    schema_errors,
    served,
)
from .cel import CEL_FUNCTIONS
from .prometheus_rule import PROMETHEUS_RULE, promtool_check_rules, validate_prometheus_rule
from .request_authentication import REQUEST_AUTHENTICATION, validate_request_authentication
from .validation import K8S_VERSIONS, validate, validate_custom_resource, validate_kubernetes
from .plugin import (
    RBAC_FILTER,
    TRAFFIC_EXTENSION,
    WASM_PLUGIN,
    filter_name,
    istio_allow_all,
    plugin_config_json,
    wasm_fields,
)
from .cluster import KIND_NAMES, Cluster, json_patch, kind_of, merge_patch, shipped
from .decision import assert_share, expected
from .routes import envoy_routes, service_host, service_port, subset_deployments
from .consistency import DEFAULT_ROUTING_HEADER, inconsistencies
from .stats import (
    EXTRA_STAT_TAGS_ANNOTATION,
    ISTIO_STATS_INCLUSION,
    ISTIO_STATS_TAGS,
    extra_stat_tags,
    istio_stats_config,
)
from .proxy import add_upstreams, istio_proxy, istio_shape, sidecar
from .runbook import (
    COMMANDS,
    DOC_PAGES,
    PREVIEWS,
    README,
    Step,
    apply_or_patch,
    flag,
    jq,
    pipeline_stages,
    readme_section,
    readme_steps,
    run_pipeline,
    split_kubectl,
)
