"""The mesh verdict's wiring (docs/mesh-verdict.md): the page's Istio
examples pass their CRDs, its `guard.mesh` examples (the error verdict's
query, and the one that polls the quality verdict beside it) and its
`check` output are what the CLI says, and Envoy Gateway's EnvoyProxy
(envoy/gateway/mesh-verdict/envoyproxy.yaml) adds a cluster and tag
extractors a real Envoy takes. No EnvoyProxy CRD is at hand (CRD_DIR's
gateway-crds/ holds the EnvoyExtensionPolicy and the Gateway API), so its
shape is checked by hand."""

from __future__ import annotations

import json
import re
import shlex
import subprocess

import pytest
import yaml

import harness
import mesh

PAGE = mesh.ROOT / "docs" / "mesh-verdict.md"
ENVOY_PROXY = mesh.ROOT / "envoy" / "gateway" / "mesh-verdict" / "envoyproxy.yaml"
ADDON_CLUSTER = "outbound|9090||prometheus.istio-system.svc.cluster.local"
OWN_CLUSTER = "canary-selector-prometheus"
# The Gateway KServe's quick install creates (tests/kserve's fixture).
KSERVE_GATEWAY = mesh.ROOT / "tests" / "kserve" / "kserve-ingress-gateway.yaml"


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", PAGE.read_text(), re.M | re.S)


def manifests() -> list[dict]:
    """The page's YAML blocks that are Kubernetes objects (the other one, a
    scrape job that renames an evaluator's labels, runs in
    tests/e2e/test_quality.py)."""
    docs = [yaml.safe_load(b) for b in blocks("yaml")]
    objects = [d for d in docs if isinstance(d, dict) and "kind" in d]
    assert len(docs) - len(objects) == 1
    return objects


def mesh_config(mesh_fields: dict) -> dict:
    return {"versions": [{"name": "model-v1", "weight": 90}, {"name": "model-v2", "weight": 10}],
            "guard": {"mesh": mesh_fields}}


def check(tmp_path, config: dict) -> str:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    run = harness.canary_selector("check", str(path))
    return (run.stdout + run.stderr).replace(str(path), "config.json").strip()


def test_the_istio_examples_pass_their_crds_and_name_the_addon():
    docs = manifests()
    assert [d["kind"] for d in docs] == ["Sidecar", "EnvoyFilter"]
    # CRD_DIR's istio-crds/ holds neither the Sidecar nor the EnvoyFilter
    # CRD today: each is checked against its CRD where there is one, and by
    # hand below in any case.
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in mesh.CRDS:
            assert mesh.validate(doc) == [], doc["kind"]
    sidecar, envoy_filter = docs
    assert (sidecar["apiVersion"], envoy_filter["apiVersion"]) == ("networking.istio.io/v1", "networking.istio.io/v1alpha3")
    assert set(sidecar["spec"]) == {"egress"} and set(envoy_filter["spec"]) == {"workloadSelector", "configPatches"}
    # The Sidecar lets in the host of the cluster the page's config names.
    fqdn = ADDON_CLUSTER.split("|")[-1]
    assert f"istio-system/{fqdn}" in sidecar["spec"]["egress"][0]["hosts"]
    (patch,) = envoy_filter["spec"]["configPatches"]
    assert (patch["applyTo"], patch["patch"]["operation"]) == ("CLUSTER", "ADD")
    assert patch["patch"]["value"]["name"] == OWN_CLUSTER


def test_the_pages_mesh_config_is_accepted(tmp_path):
    configs = [json.loads("{" + b + "}")["mesh"] for b in blocks("json") if '"cluster"' in b]
    (fields,) = [c for c in configs if "quality_failing" not in c["query"]]
    (with_quality,) = [c for c in configs if "quality_failing" in c["query"]]
    assert fields["cluster"] == ADDON_CLUSTER
    assert fields["query"] == 'canary_selector:canary_failing{plugin="models.canary-selector"}'
    assert check(tmp_path, mesh_config(fields)).startswith("config.json: accepted")
    # Rolling back on model quality: the same poll, the quality verdict
    # beside the error verdict.
    assert with_quality == fields | {"query": fields["query"] + ' or canary_selector:quality_failing{plugin="models.canary-selector"}'}
    assert check(tmp_path, mesh_config(with_quality)).startswith("config.json: accepted")
    assert check(tmp_path, mesh_config(fields | {"cluster": OWN_CLUSTER})).startswith("config.json: accepted")
    # A waypoint's cluster for a service it serves is taken, as the page says.
    waypoint = "inbound-vip|9090|http|prometheus.istio-system.svc.cluster.local"
    assert "`inbound-vip|...` clusters are taken" in PAGE.read_text()
    assert check(tmp_path, mesh_config(fields | {"cluster": waypoint})).startswith("config.json: accepted")


def test_the_pages_check_output_is_what_check_prints(tmp_path):
    (session,) = blocks("text")
    command, shown = session.strip().splitlines()
    assert command == "$ canary-selector check wasmplugin.yaml"
    cluster = re.search(r'guard\.mesh\.cluster: "([^"]+)"', shown).group(1)
    printed = check(tmp_path, mesh_config({"cluster": cluster, "authority": "p:9090", "query": "q"}))
    assert printed == shown.replace("wasmplugin.yaml:", "config.json:")


@pytest.mark.parametrize("cluster", ["PassthroughCluster", "AllowAnyDynamicDNSCluster", "outer_connect_originate",
                                     "inner_connect_originate", "main_internal", "inbound|8080||"])
def test_every_cluster_the_page_says_is_refused_is_refused(tmp_path, cluster):
    assert f"`{cluster.split('|')[0]}" in PAGE.read_text()
    printed = check(tmp_path, mesh_config({"cluster": cluster, "authority": "p:9090", "query": "q"}))
    assert printed.startswith("config.json: rejected: guard.mesh.cluster:"), printed


def envoy_proxy() -> dict:
    (doc,) = mesh.load(ENVOY_PROXY)
    return doc


def test_the_envoy_proxy_merges_a_cluster_and_the_tag_extractors():
    doc = envoy_proxy()
    assert (doc["apiVersion"], doc["kind"]) == ("gateway.envoyproxy.io/v1alpha1", "EnvoyProxy")
    assert set(doc["spec"]) == {"bootstrap"}
    assert doc["spec"]["bootstrap"]["type"] == "Merge"
    value = yaml.safe_load(doc["spec"]["bootstrap"]["value"])
    assert set(value) == {"static_resources", "stats_config"}
    (cluster,) = value["static_resources"]["clusters"]
    assert cluster["name"] == cluster["load_assignment"]["cluster_name"] == OWN_CLUSTER
    # The same extractors as the Envoy the tests run: the labels the rules sum by.
    shipped = yaml.safe_load((mesh.ROOT / "envoy" / "envoy.yaml").read_text())["stats_config"]
    assert value["stats_config"] == shipped


def envoy_validates(tmp_path, bootstrap: dict) -> subprocess.CompletedProcess:
    if not harness.ENVOY_BIN.exists():
        pytest.skip(f"no Envoy at {harness.ENVOY_BIN}: make venv")
    path = tmp_path / "bootstrap.yaml"
    path.write_text(yaml.safe_dump(bootstrap))
    return subprocess.run([str(harness.ENVOY_BIN), "--mode", "validate", "-c", str(path)],
                          capture_output=True, text=True, timeout=60)


def test_a_real_envoy_takes_the_envoy_proxys_bootstrap(tmp_path):
    value = yaml.safe_load(envoy_proxy()["spec"]["bootstrap"]["value"])
    run = envoy_validates(tmp_path, value)
    assert run.returncode == 0, run.stdout + run.stderr
    # And Envoy refuses a broken one: the check can fail.
    value["static_resources"]["clusters"][0]["type"] = "NO_SUCH_TYPE"
    assert envoy_validates(tmp_path, value).returncode != 0


def test_a_real_envoy_takes_the_envoy_filters_cluster(tmp_path):
    (envoy_filter,) = [d for d in manifests() if d["kind"] == "EnvoyFilter"]
    cluster = envoy_filter["spec"]["configPatches"][0]["patch"]["value"]
    run = envoy_validates(tmp_path, {"static_resources": {"clusters": [cluster]}})
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_gateway_patched_as_the_page_says_passes_the_gateway_crd():
    (session,) = blocks("sh")
    patch = json.loads(shlex.split(session.replace("\\\n", " ").splitlines()[1])[-1])
    ref = patch["spec"]["infrastructure"]["parametersRef"]
    assert (ref["kind"], ref["name"]) == ("EnvoyProxy", envoy_proxy()["metadata"]["name"])
    (gateway,) = mesh.load(KSERVE_GATEWAY)
    assert gateway["metadata"]["namespace"] == envoy_proxy()["metadata"]["namespace"]
    assert mesh.validate(mesh.merge_patch(gateway, patch)) == []
    # The manifest's own comment says the same.
    assert json.dumps(patch, separators=(",", ":")) in ENVOY_PROXY.read_text()


def test_the_kserve_steps_do_not_apply_it():
    envoy_gateway = mesh.ROOT / "envoy" / "gateway"
    assert ENVOY_PROXY not in mesh.kubectl_files(envoy_gateway)
    # Nor do tests/kserve count it among the KServe scenario's manifests.
    assert ENVOY_PROXY not in mesh.manifest_files(envoy_gateway)
