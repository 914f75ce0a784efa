"""Istio's stats configuration for a proxy: the stats its bootstrap keeps,
its tag extractors, and the extraStatTags of the pods the plugin selects,
which turn the filter's tagged names into Prometheus labels."""

from __future__ import annotations

from .cluster import Cluster


# Istio's default stats inclusion (its Envoy bootstrap), plus the ECDS
# counters the harness waits on.
ISTIO_STATS_INCLUSION = [
    {"prefix": p} for p in ("reporter=", "cluster_manager", "listener_manager", "server", "cluster.xds-grpc", "wasm")
] + [
    {"suffix": s} for s in ("rbac.allowed", "rbac.denied", "shadow_allowed", "shadow_denied")
] + [{"prefix": "component"}, {"prefix": "extension_config_discovery"}]


# Istio's tag extractors (its bootstrap template,
# tools/packaging/common/envoy_bootstrap.json: `use_all_default_tags: false`,
# then these), with one `(<tag>=\.=(.*?);\.;)` per `extraStatTags` entry in
# place of EXTRA. Kept whole so a test sees what Istio's other extractors do
# to the filter's names.
ISTIO_STATS_TAGS = [
    ("cluster_name", r"^cluster\.((.+?(\..+?\.svc\.cluster\.local)?)\.)"),
    ("tcp_prefix", r"^tcp\.((.*?)\.)\w+?$"),
    ("response_code", r"_rq(_(\d{3}))$"),
    ("response_code_class", r"_rq(_(\dxx))$"),
    ("http_conn_manager_listener_prefix",
     r"^listener(?=\.).*?\.http\.(((?:[_.[:digit:]]*|[_\[\]aAbBcCdDeEfF[:digit:]]*))\.)"),
    ("http_conn_manager_prefix", r"^http\.(((?:[_.[:digit:]]*|[_\[\]aAbBcCdDeEfF[:digit:]]*))\.)"),
    ("listener_address", r"^listener\.(((?:[_.[:digit:]]*|[_\[\]aAbBcCdDeEfF[:digit:]]*))\.)"),
    ("mongo_prefix", r"^mongo\.(.+?)\.(collection|cmd|cx_|op_|delays_|decoding_)(.*?)$"),
    "EXTRA",
    ("cache", r"(cache\.(.+?)\.)"),
    ("component", r"(component\.(.+?)\.)"),
    ("tag", r"(tag\.(.+?);\.)"),
    ("wasm_filter", r"(wasm_filter\.(.+?)\.)"),
    ("authz_enforce_result", r"rbac(\.(allowed|denied))"),
    ("authz_dry_run_action", r"(\.istio_dry_run_(allow|deny)_)"),
    ("authz_dry_run_result", r"(\.shadow_(allowed|denied))"),
]

EXTRA_STAT_TAGS_ANNOTATION = "sidecar.istio.io/extraStatTags"


def extra_stat_tags(cluster: Cluster) -> list[str]:
    """The extraStatTags of the pods the plugin selects (the annotation on
    their pod template), as Istio's agent reads them into the bootstrap."""
    selector = cluster.plugin()["spec"]["selector"]["matchLabels"]
    for d in cluster.all("Deployment"):
        template = d["spec"]["template"]["metadata"]
        if selector.items() <= template.get("labels", {}).items():
            text = template.get("annotations", {}).get(EXTRA_STAT_TAGS_ANNOTATION, "")
            return [t.strip() for t in text.split(",") if t.strip()]
    return []


def istio_stats_config(extra_tags: list[str]) -> dict:
    """The stats_config of Istio's bootstrap for these extraStatTags, with the
    stats inclusion above."""
    tags = []
    for entry in ISTIO_STATS_TAGS:
        if entry == "EXTRA":
            tags += [{"tag_name": t, "regex": rf"({t}=\.=(.*?);\.;)"} for t in extra_tags]
        else:
            tags.append({"tag_name": entry[0], "regex": entry[1]})
    return {
        "use_all_default_tags": False,
        "stats_tags": tags,
        "stats_matcher": {"inclusion_list": {"patterns": ISTIO_STATS_INCLUSION}},
    }
