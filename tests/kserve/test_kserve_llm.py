"""A chat model's two versions on KServe's shared Gateway
(docs/kserve-llm.md; istio/kserve/llm/, envoy/gateway/llm/): the manifests
against the CRDs, what KServe writes for them (InferencePools, workload
Services, each version's HTTPRoute with the route group's weights), our
routes outranking KServe's model-routing rule on each gateway, and in the
real Envoy, shaped like each gateway and fed as each gateway feeds it, with
OpenAI-compatible model servers behind the pools: every user on one version
through a whole conversation, the split, testers, a ramp that moves users
only forward, a rollback, the model header KServe's rule needs reaching the
model server, with the filter reading the body and with a body-based router
in front of it."""

import copy
import hashlib
import json
from pathlib import Path

import pytest

import kserve
import mesh
from harness import canary_selector
from kserve import llm, llm_gateway as lg, llm_traffic as chat

USERS = [f"user-{i}" for i in range(200)]
MODEL = chat.MODEL
V1_POOL, V2_POOL = "kserve-llm/chat-v1-inference-pool", "kserve-llm/chat-v2-inference-pool"
VARIANTS = [
    pytest.param((kserve.ISTIO, False), id="istio"),
    pytest.param((kserve.ISTIO, True), id="istio-bbr"),
    pytest.param((kserve.ENVOY_GATEWAY, False), id="envoy-gateway"),
    pytest.param((kserve.ENVOY_GATEWAY, True), id="envoy-gateway-bbr"),
]
# Kinds whose CRDs ../shared does not hold (Istio's EnvoyFilter, Envoy
# Gateway's EnvoyPatchPolicy and ClientTrafficPolicy): checked where CRD_DIR
# has them, skipped with the reason where not.
NOT_IN_SHARED = {"EnvoyFilter", "EnvoyPatchPolicy", "ClientTrafficPolicy"}


def validate(doc: dict) -> list[str]:
    """mesh.validate, but a kind ../shared holds no CRD for passes where
    CRD_DIR lacks it too (the manifest test says so by skipping)."""
    if doc["kind"] in NOT_IN_SHARED and mesh.served((doc["apiVersion"], doc["kind"])) is None:
        return []
    return mesh.validate(doc)


def llm_manifests() -> list:
    return mesh.manifest_files(kserve.LLM_DIR) + mesh.manifest_files(kserve.ENVOY_GATEWAY_LLM_DIR)


MANIFESTS = [
    pytest.param(path, i, id=f"{path.relative_to(mesh.ROOT)}#{i}")
    for path in llm_manifests()
    for i, _ in enumerate(mesh.load(path))
]


@pytest.fixture(params=VARIANTS)
def variant(request) -> tuple[str, bool]:
    """(gateway class, a body-based router in front)."""
    return request.param


@pytest.fixture
def start(tmp_path: Path):
    """Start the model servers and the gateway's Envoy for a cluster; all
    stopped after the test."""
    started = []

    def start(cluster, bbr: bool = False, **kwargs):
        servers = lg.model_servers(cluster)
        envoy = lg.llm_gateway(cluster, tmp_path / f"gateway{len(started)}", servers, bbr, **kwargs)
        envoy.model_servers = lg.start_model_servers(servers)
        started.append(envoy)
        return envoy.start()

    yield start
    for envoy in started:
        envoy.stop()
        for server in envoy.model_servers:
            server.shutdown()
            server.server_close()


def body_of(**fields) -> bytes:
    return json.dumps({"messages": [{"role": "user", "content": "Hello"}], **fields}).encode()


def bodies_read(envoy) -> int:
    return sum(v for k, v in envoy.flushed_stats().items() if k.endswith("canary_selector_bodies_read_total"))


# --- The manifests -------------------------------------------------------------------


@pytest.mark.parametrize("path,index", MANIFESTS)
def test_every_manifest_passes_the_schema_of_its_api_version(path, index):
    doc = mesh.load(path)[index]
    if doc["kind"] in NOT_IN_SHARED and mesh.served((doc["apiVersion"], doc["kind"])) is None:
        pytest.skip(f"no CRD for {doc['kind']} {doc['apiVersion']} in {mesh.CRD_ROOT}: add it to check the manifest")
    assert mesh.validate(doc) == []


def test_the_manifests_are_the_documented_set():
    kinds = sorted(
        (str(p.relative_to(mesh.ROOT)), d["kind"], d["metadata"]["name"]) for p in llm_manifests() for d in mesh.load(p)
    )
    assert kinds == [
        ("envoy/gateway/llm/bbr/envoyextensionpolicy.yaml", "EnvoyExtensionPolicy", "canary-selector"),
        ("envoy/gateway/llm/clienttrafficpolicy.yaml", "ClientTrafficPolicy", "canary-selector-buffer"),
        ("envoy/gateway/llm/envoyextensionpolicy.yaml", "EnvoyExtensionPolicy", "canary-selector"),
        ("envoy/gateway/llm/envoypatchpolicy.yaml", "EnvoyPatchPolicy", "canary-selector-bodies"),
        ("istio/kserve/llm/bbr/wasmplugin.yaml", "WasmPlugin", "canary-selector"),
        ("istio/kserve/llm/envoyfilter.yaml", "EnvoyFilter", "canary-selector"),
        ("istio/kserve/llm/httproute.yaml", "HTTPRoute", "chat-canary-selector"),
        ("istio/kserve/llm/llminferenceservice.yaml", "LLMInferenceService", "chat-v1"),
        ("istio/kserve/llm/llminferenceservice.yaml", "LLMInferenceService", "chat-v2"),
        ("istio/kserve/llm/namespace.yaml", "Namespace", "kserve-llm"),
    ]


def test_an_llminferenceservice_mistake_is_caught_by_the_crd():
    """The LLMInferenceService CRD really is applied: a weight out of range,
    a group that is no DNS label, a missing model URI are errors."""
    (good, _) = mesh.load(kserve.LLM_DIR / "llminferenceservice.yaml")
    assert mesh.validate(good) == []
    for change, error in [
        (lambda d: d["spec"]["router"]["route"].update(weight=2_000_000), "is greater than the maximum"),
        (lambda d: d["spec"]["router"]["route"].update(group="Chat_Model"), "does not match"),
        (lambda d: d["spec"]["model"].pop("uri"), "'uri' is a required property"),
    ]:
        doc = copy.deepcopy(good)
        change(doc)
        assert any(error in e for e in mesh.validate(doc)), (error, mesh.validate(doc))


def test_the_plugin_resources_hold_one_chat_rollout():
    """The four plugin resources (Istio and Envoy Gateway, with and without a
    body-based router) route the same model with the same versions, rules
    and user ids in headers; those that read bodies add the body's user
    fields, those behind a router do not. No rollout for the Gateway's
    other models: the filter writes the model header for every model it
    reads from a body. The EnvoyFilter's config is JSON text: Envoy hands a
    Wasm filter a google.protobuf.Struct as protobuf bytes, not as JSON."""
    reads, behind = [], []
    for gateway_class in (kserve.ISTIO, kserve.ENVOY_GATEWAY):
        reads.append(lg.plugin_config(lg.plugin(lg.shipped_llm(gateway_class))))
        behind.append(lg.plugin_config(lg.plugin(lg.shipped_llm(gateway_class, bbr=True))))
    assert reads[0] == reads[1] and behind[0] == behind[1]
    config, bbr = reads[0], behind[0]
    rollout = lg.chat_rollout(config)
    assert config["modelHeader"] == bbr["modelHeader"] == llm.MODEL_HEADER.lower()
    assert rollout["models"] == [MODEL]
    assert rollout["stickiness"]["userIdBodyFields"] == ["user", "safety_identifier"]
    assert [r["name"] for r in config["rollouts"]] == [r["name"] for r in bbr["rollouts"]] == ["chat"]
    assert set(rollout["pathPrefixes"]) == set(llm.ENDPOINTS)
    without_body = {k: v for k, v in rollout.items() if k != "stickiness"}
    assert [without_body] == [{k: v for k, v in r.items() if k != "stickiness"} for r in bbr["rollouts"]]
    assert bbr["rollouts"][0]["stickiness"] == {"userIdHeaders": ["x-user-id"]}
    assert "maxBodyBytes" not in bbr


# --- What KServe writes, and how each gateway ranks it --------------------------------


@pytest.fixture
def llm_cluster(gateway_class):
    return lg.shipped_llm(gateway_class)


def test_kserve_writes_pools_services_and_a_route_per_version_with_the_groups_weights(llm_cluster):
    """Each version gets its InferencePool (the scheduler preset's spec), its
    workload Service and its HTTPRoute; the route group gives every shared
    rule of both routes the weighted pools of both members (chat-v1 100,
    chat-v2 0), and leaves each version's own /kserve-llm/<name>/... rules to
    its own pool. All of it passes the schemas (InferencePool v1 included)."""
    for doc in llm_cluster.objects.values():
        assert validate(doc) == [], (doc["kind"], doc["metadata"]["name"])
    written = sorted((d["kind"], d["metadata"]["name"]) for d in llm_cluster.objects.values() if kserve.is_kserve_owned(d))
    assert written == [
        ("HTTPRoute", "chat-v1-kserve-route"),
        ("HTTPRoute", "chat-v2-kserve-route"),
        ("InferencePool", "chat-v1-inference-pool"),
        ("InferencePool", "chat-v2-inference-pool"),
        ("Service", "chat-v1-kserve-workload-svc"),
        ("Service", "chat-v2-kserve-workload-svc"),
    ]
    grouped = [
        {"group": llm.POOL_GROUP, "kind": "InferencePool", "name": "chat-v1-inference-pool", "port": 8000, "weight": 100},
        {"group": llm.POOL_GROUP, "kind": "InferencePool", "name": "chat-v2-inference-pool", "port": 8000, "weight": 0},
    ]
    for name in ("chat-v1", "chat-v2"):
        route = llm_cluster.get("HTTPRoute", "kserve-llm", f"{name}-kserve-route")
        rules = {r["name"]: r for r in route["spec"]["rules"]}
        model_rule = rules["v1-model-routing"]
        assert model_rule["backendRefs"] == grouped
        assert {(m["path"]["value"], m["headers"][0]["value"]) for m in model_rule["matches"]} == {
            (p, MODEL) for p in llm.MODEL_ROUTING_PATHS
        }
        assert rules["v1-chat-completions-path"]["backendRefs"] == [
            {"group": llm.POOL_GROUP, "kind": "InferencePool", "name": f"{name}-inference-pool", "port": 8000, "weight": 1}
        ]
        assert rules["v1-catch-all-model-routing"]["backendRefs"] == grouped


def test_our_rules_match_the_header_value_kserve_expects(llm_cluster):
    """KServe renders publishers/{namespace}/models/{spec.model.name} in its
    model-routing rule; our rules and the chat rollout's `models` name the
    same value, so the header the filter writes from the body (or a
    body-based router copies) matches both."""
    ours = llm_cluster.get("HTTPRoute", "kserve-llm", "chat-canary-selector")
    values = {
        h["value"]
        for r in ours["spec"]["rules"]
        for m in r["matches"]
        for h in m.get("headers", [])
        if h["name"].lower() == llm.MODEL_HEADER.lower()
    }
    kserve_values = {
        h["value"]
        for name in ("chat-v1", "chat-v2")
        for r in llm_cluster.get("HTTPRoute", "kserve-llm", f"{name}-kserve-route")["spec"]["rules"]
        for m in r["matches"]
        for h in m.get("headers", [])
    }
    assert values == kserve_values == {MODEL} == set(lg.chat_rollout(lg.plugin_config(lg.plugin(llm_cluster)))["models"])


def test_each_version_header_lands_on_its_pool_and_a_request_without_on_stable(llm_cluster, gateway_class):
    """In each gateway's order of matches, on every path of KServe's
    model-routing rule: the routing header picks the version's pool (two
    header matches beat KServe's one); the model header alone takes KServe's
    rule (the group's weights: chat-v1 only); no model header takes our
    no-model-header rule to chat-v1; each version's own path ignores the
    routing header."""
    for path in llm.MODEL_ROUTING_PATHS:
        for version, pool in (("chat-v1", V1_POOL), ("chat-v2", V2_POOL)):
            e = kserve.resolve(llm_cluster, gateway_class, "*", {"x-gateway-model-name": MODEL, "x-canary-llm-version": version}, path)
            assert (e.route["metadata"]["name"], kserve.backends(e)) == ("chat-canary-selector", {pool: 1}), path
        e = kserve.resolve(llm_cluster, gateway_class, "*", {"x-gateway-model-name": MODEL}, path)
        assert e.rule["name"] == "v1-model-routing" and kserve.backends(e) == {V1_POOL: 100}, path
        e = kserve.resolve(llm_cluster, gateway_class, "*", {}, path)
        assert (e.rule["name"], kserve.backends(e)) == ("no-model-header", {V1_POOL: 1}), path
        # Another model's header: not ours, not this model's.
        assert kserve.resolve(llm_cluster, gateway_class, "*", {"x-gateway-model-name": "publishers/kserve-llm/models/other", "x-canary-llm-version": "chat-v2"}, path).rule["name"] == "no-model-header"
    e = kserve.resolve(llm_cluster, gateway_class, "*", {"x-canary-llm-version": "chat-v1"}, "/kserve-llm/chat-v2/v1/chat/completions")
    assert (e.rule["name"], kserve.backends(e)) == ("v1-chat-completions-path", {V2_POOL: 1})


def test_without_our_routes_the_group_splits_at_random(llm_cluster, gateway_class):
    """The counterexample: KServe's route group at 90/10 and no HTTPRoute of
    ours: the model's requests take KServe's rule, whose backendRefs Envoy
    picks from per request, whoever sends them."""
    llm_cluster.delete("HTTPRoute", "kserve-llm", "chat-canary-selector")
    for name, weight in (("chat-v1", 90), ("chat-v2", 10)):
        llm_cluster.get("LLMInferenceService", "kserve-llm", name)["spec"]["router"]["route"]["weight"] = weight
    kserve.reconcile(llm_cluster)
    e = kserve.resolve(llm_cluster, gateway_class, "*", {"x-gateway-model-name": MODEL, "x-canary-llm-version": "chat-v2"}, "/v1/chat/completions")
    assert e.rule["name"] == "v1-model-routing" and kserve.backends(e) == {V1_POOL: 90, V2_POOL: 10}


def test_check_wires_the_shipped_plugins_to_our_routes():
    """`canary-selector check` on the chat model's manifests: every plugin
    config accepted, its chat rollout (its only one) wired to our HTTPRoute
    by the model header's value."""
    for files, plugins in (
        (["istio/kserve/llm/"], 2),  # the EnvoyFilter, and bbr/'s WasmPlugin
        (["istio/kserve/llm/bbr/", "istio/kserve/llm/httproute.yaml"], 1),
    ):
        r = canary_selector("check", *files)
        assert r.returncode == 0, r.stdout + r.stderr
        wired = [l for l in r.stdout.splitlines() if " with " in l]
        assert len(wired) == plugins and all("rollout chat with" in l for l in wired), r.stdout
        for line in wired:
            assert "wiring ok: chat-v1 -> chat-v1-inference-pool, chat-v2 -> chat-v2-inference-pool" in line, r.stdout
            assert f"model header x-gateway-model-name: {MODEL}" in line, r.stdout


# --- In the real Envoy -----------------------------------------------------------------


def test_every_user_keeps_one_version_for_a_whole_conversation(variant, start):
    """At 50%: each user's three turns (the body growing, the user id in the
    body, or in x-user-id) reach one version, the one the documented formula
    gives; about half the users are on chat-v2; the model header KServe's
    rule needs reached the model server, and the body as sent. Testers reach
    chat-v2 on every turn."""
    gateway_class, bbr = variant
    cluster = lg.shipped_llm(gateway_class, bbr)
    envoy = start(cluster, bbr)
    doc = lg.with_chat(lg.plugin(cluster), versions=lg.weights(50))
    lg.push(envoy, doc)
    rollout = lg.chat_rollout(lg.plugin_config(doc))
    served = chat.converse(envoy, rollout, USERS, bbr=bbr)
    mesh.assert_share(sum(v == "chat-v2" for v in served.values()), len(USERS), 50)
    assert chat.converse(envoy, rollout, USERS[:50], in_header=True, bbr=bbr) == {u: served[u] for u in USERS[:50]}
    testers = chat.converse(envoy, rollout, USERS[:20], extra={"x-canary-tester": "true"}, bbr=bbr)
    assert set(testers.values()) == {"chat-v2"}
    # Behind a body-based router the filter never reads a body: the model
    # and the user are in headers.
    assert (bodies_read(envoy) == 0) == bbr


def test_a_ramp_moves_users_only_forward_and_a_rollback_puts_everyone_on_stable(variant, start):
    gateway_class, bbr = variant
    cluster = lg.shipped_llm(gateway_class, bbr)
    envoy = start(cluster, bbr)
    doc = lg.plugin(cluster)
    rollout = lg.chat_rollout(lg.plugin_config(doc))
    assert set(chat.converse(envoy, rollout, USERS, turns=1, bbr=bbr).values()) == {"chat-v1"}
    before: dict[str, str] = {}
    for weight in (10, 50, 100):
        doc = lg.with_chat(doc, versions=lg.weights(weight))
        lg.push(envoy, doc)
        served = chat.converse(envoy, lg.chat_rollout(lg.plugin_config(doc)), USERS, turns=2, bbr=bbr)
        mesh.assert_share(sum(v == "chat-v2" for v in served.values()), len(USERS), weight)
        assert not [u for u, v in before.items() if v == "chat-v2" and served[u] != "chat-v2"], "a ramp moved users back"
        before = served
    doc = lg.with_chat(doc, versions=lg.weights(0))
    lg.push(envoy, doc)
    rollout = lg.chat_rollout(lg.plugin_config(doc))
    assert set(chat.converse(envoy, rollout, USERS, turns=2, bbr=bbr).values()) == {"chat-v1"}
    testers = chat.converse(envoy, rollout, USERS[:10], extra={"x-canary-tester": "true"}, bbr=bbr)
    assert set(testers.values()) == {"chat-v2"}


def test_a_filter_that_failed_open_leaves_every_chat_request_on_stable(variant, start):
    """No filter (its module could not be fetched, fail-open): without a
    body-based router no request carries the model header, and our
    no-model-header rule sends it to chat-v1; behind one, KServe's rule takes
    it, and the group's weights send it to chat-v1."""
    gateway_class, bbr = variant
    cluster = lg.shipped_llm(gateway_class, bbr)
    envoy = start(cluster, bbr)
    lg.push(envoy, lg.with_chat(lg.plugin(cluster), versions=lg.weights(100)))
    lg.fail_open(envoy, lg.plugin(cluster))
    for user in USERS[:30]:
        for extra in ({}, {"x-canary-tester": "true"}):
            r = envoy.request({**chat.JSON, **extra}, path=chat.CHAT_PATH, body=body_of(model=MODEL, user=user))
            assert (r.status, r.served_by, r.header("x-canary-version")) == (200, "chat-v1", None)
            assert r.header("x-upstream-saw-model") == (MODEL if bbr else "")


def test_other_models_on_the_gateway_are_routed_by_kserve(gateway_class, start):
    """A third LLMInferenceService on the Gateway, `other`, which no rollout
    lists: without a body-based router the filter reads its model from the
    body too (on the chat rollout's paths a request waits for its body, to
    learn its model), writes X-Gateway-Model-Name for it though no rollout
    takes it, and KServe's rule for `other` routes it, the body as sent:
    no response header of ours, and a routing or tester header the client
    sent changes nothing (the filter removes our routing header from a
    request no rollout takes). A model header the client sent itself stays
    as sent. The chat model is canaried beside it as before."""
    cluster = lg.shipped_llm(gateway_class)
    (other, _) = copy.deepcopy(mesh.load(kserve.LLM_DIR / "llminferenceservice.yaml"))
    other["metadata"]["name"] = "other"
    other["spec"]["model"]["name"] = "other"
    del other["spec"]["router"]["route"]["group"], other["spec"]["router"]["route"]["weight"]
    cluster.objects[("LLMInferenceService", "kserve-llm", "other")] = other
    kserve.reconcile(cluster)
    envoy = start(cluster)
    assert [r["name"] for r in lg.plugin_config(lg.plugin(cluster))["rollouts"]] == ["chat"]
    other_model = llm.fully_qualified("kserve-llm", "other")
    read = bodies_read(envoy)
    for path in llm.ENDPOINTS:
        for user in USERS[:5]:
            body = body_of(model=other_model, user=user)
            for extra in ({}, {"x-canary-tester": "true"}, {"x-canary-llm-version": "chat-v2"}, {"x-user-id": user}):
                r = envoy.request({**chat.JSON, **extra}, path=path, body=body)
                assert (r.status, r.served_by, r.header("x-canary-version"), r.header("x-upstream-saw-model")) == (
                    200, "other", None, other_model,
                ), (path, extra)
                assert r.header("x-upstream-body-sha256") == hashlib.sha256(body).hexdigest()
    assert bodies_read(envoy) - read == len(llm.ENDPOINTS) * 5 * 4
    # Named by the client in the header: left as sent, and routed by it.
    r = envoy.request({**chat.JSON, llm.MODEL_HEADER: other_model}, path=chat.CHAT_PATH, body=body_of(model=other_model))
    assert (r.status, r.served_by, r.header("x-upstream-saw-model")) == (200, "other", other_model)
    # The chat model beside it, canaried as before.
    r = envoy.request({**chat.JSON, "x-canary-tester": "true"}, path=chat.CHAT_PATH, body=body_of(model=MODEL, user="user-1"))
    assert (r.status, r.served_by, r.header("x-canary-version"), r.header("x-upstream-saw-model")) == (
        200, "chat-v2", "chat-v2", MODEL,
    )


def test_maxbodybytes_and_envoy_gateways_buffer_limit(start):
    """On Envoy Gateway a chat request of 100 KiB fits the 1 MiB buffer the
    ClientTrafficPolicy sets (the filter reads it and routes it); without
    the policy, Envoy Gateway's 32 KiB limit is below maxBodyBytes and Envoy
    answers 413 while the filter waits for the body."""
    big = "x" * (100 << 10)
    body = body_of(model=MODEL, user="user-3", pad=big)
    cluster = lg.shipped_llm(kserve.ENVOY_GATEWAY)
    envoy = start(cluster)
    r = envoy.request(chat.JSON, path=chat.CHAT_PATH, body=body)
    assert (r.status, r.header("x-upstream-saw-model")) == (200, MODEL)
    cluster.delete("ClientTrafficPolicy", "kserve", "canary-selector-buffer")
    envoy = start(cluster)
    assert envoy.request(chat.JSON, path=chat.CHAT_PATH, body=body).status == 413
    assert envoy.request(chat.JSON, path=chat.CHAT_PATH, body=body_of(model=MODEL, user="user-3")).status == 200


def test_a_body_over_maxbodybytes_is_not_waited_for(gateway_class, start):
    """A body longer than maxBodyBytes (960 KiB) with its content-length: the
    filter does not hold it (no 413, on either gateway's buffer limit with
    the shipped policies), its model is unknown, no model header is written,
    and our no-model-header rule takes it to the stable version."""
    cluster = lg.shipped_llm(gateway_class)
    envoy = start(cluster)
    lg.push(envoy, lg.with_chat(lg.plugin(cluster), versions=lg.weights(100)))
    body = body_of(model=MODEL, user="user-3", pad="x" * (1000 << 10))
    r = envoy.request(chat.JSON, path=chat.CHAT_PATH, body=body)
    assert (r.status, r.served_by, r.header("x-upstream-saw-model")) == (200, "chat-v1", "")
    stats = envoy.flushed_stats()
    assert sum(v for k, v in stats.items() if "too_large" in k and k.endswith("canary_selector_model_unknown_total")) == 1


def without_body_delivery(gateway_class: str) -> mesh.Cluster:
    """The body-reading config where Envoy delivers no body while the filter
    holds the headers: in a WasmPlugin on Istio (which cannot set
    allow_on_headers_stop_iteration), in the EnvoyExtensionPolicy alone on
    Envoy Gateway (no EnvoyPatchPolicy)."""
    cluster = lg.shipped_llm(gateway_class)
    if gateway_class == kserve.ISTIO:
        config = lg.plugin_config(lg.plugin(cluster))
        cluster.delete("EnvoyFilter", "kserve", "canary-selector")
        wasmplugin = lg.with_config(mesh.load(kserve.LLM_DIR / "bbr" / "wasmplugin.yaml")[0], config)
        cluster.objects[("WasmPlugin", "kserve", "canary-selector")] = wasmplugin
    else:
        cluster.delete("EnvoyPatchPolicy", "kserve", "canary-selector-bodies")
    return cluster


def test_without_allow_on_headers_stop_iteration_the_filter_reads_no_body(gateway_class, start):
    """Envoy hands the filter no body while it holds the headers: the filter
    decides such requests without it a tick later and says why, no model
    header is written, and every chat request lands on the stable version,
    canary users and testers too. Why the runbook delivers the filter by an
    EnvoyFilter on Istio and patches the policy's filter on Envoy Gateway."""
    cluster = without_body_delivery(gateway_class)
    envoy = start(cluster)
    lg.push(envoy, lg.with_chat(lg.plugin(cluster), versions=lg.weights(100)))
    for user in USERS[:5]:
        for extra in ({}, {"x-canary-tester": "true"}):
            r = envoy.request({**chat.JSON, **extra}, path=chat.CHAT_PATH, body=body_of(model=MODEL, user=user))
            assert (r.status, r.served_by, r.header("x-upstream-saw-model")) == (200, "chat-v1", "")
    assert "turn on the Wasm filter's allow_on_headers_stop_iteration" in envoy.wait_for_log("allow_on_headers_stop_iteration")
    assert bodies_read(envoy) == 0


def test_the_patch_policy_turns_body_delivery_on_in_envoy_gateways_listener():
    """envoypatchpolicy.yaml's jsonPath finds the filter Envoy Gateway builds
    from the policy (by its name) in the Gateway's listener and adds the
    field to its Wasm config, and nothing else."""
    cluster = lg.shipped_llm(kserve.ENVOY_GATEWAY)
    envoy = lg.llm_gateway(cluster, Path("/nonexistent"), {})
    envoy.module_server = type("Server", (), {"port": 1, "sha256": "0" * 64})()
    envoy._listener = mesh.demo_bootstrap()["static_resources"]["listeners"][0]
    patched = envoy.listener("{}")
    envoy.patch_policies = []
    plain = envoy.listener("{}")
    filters = patched["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]
    (wasm,) = [f for f in filters if f["name"] == "envoy.filters.http.wasm/envoyextensionpolicy/kserve/canary-selector/wasm/0"]
    assert wasm["typed_config"]["config"]["allow_on_headers_stop_iteration"] is True
    del wasm["typed_config"]["config"]["allow_on_headers_stop_iteration"]
    assert patched == plain


def test_an_envoyfilter_s_config_must_be_json_text(start):
    """The EnvoyFilter's extension config with its config as a
    google.protobuf.Struct (YAML, as a WasmPlugin's pluginConfig is
    written): Envoy hands the filter the Struct's protobuf bytes, the filter
    rejects them, and Envoy rejects the update; the JSON text serves on."""
    cluster = lg.shipped_llm(kserve.ISTIO)
    envoy = start(cluster)
    (resource,) = json.loads(envoy.ecds_path.read_text())["resources"]
    config = resource["typed_config"]["config"]
    config["configuration"] = {
        "@type": "type.googleapis.com/google.protobuf.Struct",
        "value": json.loads(config["configuration"]["value"]),
    }
    assert not envoy.push_resource(resource)
    assert "config rejected: (config): is not UTF-8" in envoy.wait_for_log("config rejected")
    r = envoy.request({**chat.JSON, "x-canary-tester": "true"}, path=chat.CHAT_PATH, body=body_of(model=MODEL))
    assert (r.status, r.served_by) == (200, "chat-v2")


@pytest.mark.parametrize("bbr", [False, True], ids=["reading-bodies", "bbr"])
def test_on_envoy_gateway_the_no_model_header_rule_is_what_runs_the_filter(bbr, start):
    """Without our no-model-header rule, a chat request without the model
    header matches no route when Envoy Gateway decides which of the
    Gateway's filters run on it (the route before any filter ran): the
    filter never runs. Reading bodies, the request gets 404; behind a
    body-based router, which writes the header only after that decision,
    KServe's rule takes it, testers too."""
    cluster = lg.shipped_llm(kserve.ENVOY_GATEWAY, bbr)
    route = cluster.get("HTTPRoute", "kserve-llm", "chat-canary-selector")
    route["spec"]["rules"] = [r for r in route["spec"]["rules"] if r["name"] != "no-model-header"]
    envoy = start(cluster, bbr)
    for user in USERS[:10]:
        r = envoy.request({**chat.JSON, "x-canary-tester": "true"}, path=chat.CHAT_PATH, body=body_of(model=MODEL, user=user))
        assert (r.status, r.served_by, r.header("x-canary-version")) == ((200, "chat-v1", None) if bbr else (404, None, None))


def test_a_streamed_answer_passes_through_the_gateway(variant, start):
    """`"stream": true`: the server-sent events reach the client from the
    version the user is on."""
    gateway_class, bbr = variant
    cluster = lg.shipped_llm(gateway_class, bbr)
    envoy = start(cluster, bbr)
    lg.push(envoy, lg.with_chat(lg.plugin(cluster), versions=lg.weights(100)))
    r = envoy.request(chat.JSON, path=chat.CHAT_PATH, body=body_of(model=MODEL, user="user-8", stream=True))
    assert (r.status, r.served_by, r.header("content-type")) == (200, "chat-v2", "text/event-stream")
    events = [line for line in r.body.decode().splitlines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]" and len(events) > 2
