"""Every command of docs/kserve-llm.md's two runbooks, in order, on each
gateway: the filter reading bodies (section kserve-llm: Istio's EnvoyFilter,
Envoy Gateway's policies) and behind a body-based router (section
kserve-llm-bbr). The applies and patches change the simulated cluster as
the API server and KServe's controller would (each object validated again),
the gateway's Envoy follows (routes as that gateway orders them, the config
delivered as it delivers it, the model servers behind the pools), every
user keeps one version through a conversation and lands where the chat
rollout says, testers where their rules say, a ramp moves no one back, a
rollback puts everyone on stable, and each curl prints what the page
says. Istio's steps are `kubectl get -o json | jq ... | kubectl replace -f
-` pipelines, run with the real jq (and the repository's chat-rollout.jq),
each previewed first as the page says, with `canary-selector diff`."""

import json
import tempfile

import pytest

import kserve
import mesh
from harness import canary_selector
from kserve import gateway_of, llm_gateway as lg, llm_traffic as chat, step_name, steps_for, weight_of

USERS = [f"user-{i}" for i in range(150)]
# Kinds whose CRDs ../shared does not hold: validated where CRD_DIR has them.
NOT_IN_SHARED = {"EnvoyFilter", "EnvoyPatchPolicy", "ClientTrafficPolicy"}
# What the page says to put in place of `kubectl replace -f -` to preview a
# step on Istio.
PREVIEW = "canary-selector diff <(kubectl -n kserve get envoyfilter canary-selector -o json) -"


class Runbook(kserve.Runbook):
    """The chat model's commands: two LLMInferenceServices, our HTTPRoute and
    the plugin resource of one gateway."""

    def __init__(self, start, gateway_class: str, bbr: bool):
        super().__init__(None, gateway_class)
        self.start, self.bbr = start, bbr
        self.served: dict[str, str] = {}
        self.weight = None

    def validate(self, doc: dict) -> list[str]:
        if doc["kind"] in NOT_IN_SHARED and mesh.served((doc["apiVersion"], doc["kind"])) is None:
            return []
        return mesh.validate(doc)

    def command(self, argv: list[str], step: mesh.Step) -> bool:
        if argv[0] == "kubectl":
            ns, args, _ = mesh.split_kubectl(argv)
            if args[0] == "wait":
                kind, name = args[2].split("/")
                assert args[1] == "--for=condition=Ready" and mesh.kind_of(kind) == "LLMInferenceService", step.line
                self.cluster.get("LLMInferenceService", ns, name)
                return False
        return super().command(argv, step)

    def replace(self, doc: dict, step: mesh.Step) -> None:
        """`kubectl replace -f -` of the EnvoyFilter jq changed, after its
        preview: `canary-selector diff` of the EnvoyFilter as it is and as
        the step leaves it prints the share of users that moves to chat-v2
        and exits 1 exactly when users move back to chat-v1; only the chat
        rollout's fields the step sets changed."""
        meta = doc["metadata"]
        current = self.cluster.get(doc["kind"], meta["namespace"], meta["name"])
        before, after = lg.plugin_config(current), lg.plugin_config(doc)
        old, new = lg.chat_rollout(before), lg.chat_rollout(after)
        changed = {k for k in old.keys() | new.keys() if old.get(k) != new.get(k)}
        assert changed and changed <= set(json.loads(step.argv[step.argv.index("set") + 1])), step.line
        others = [
            ({**c, "rollouts": None}, [r for r in c["rollouts"] if r["name"] != "chat"]) for c in (before, after)
        ]
        assert others[0] == others[1], f"{step.line} changed more than the chat rollout"
        with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
            f.write(self.cluster.get_json(doc["kind"], meta["namespace"], meta["name"]))
            f.flush()
            out = canary_selector("diff", f.name, "-", stdin=json.dumps(doc))
        moved = weight_of(new, "chat-v2") - weight_of(old, "chat-v2")
        assert out.returncode == (1 if moved < 0 else 0), f"{step.line}\n{out.stdout}{out.stderr}"
        if moved > 0:
            assert f"chat-v1 -> chat-v2: {moved:g}% of users" in out.stdout, out.stdout
        elif moved < 0:
            assert f"chat-v2 -> chat-v1: {-moved:g}% of users" in out.stdout, out.stdout
        super().replace(doc, step)

    def changed(self, step: mesh.Step) -> None:
        ready = (
            len(self.cluster.all("LLMInferenceService")) == 2
            and any(r["metadata"]["name"] == "chat-canary-selector" for r in self.cluster.all("HTTPRoute"))
        )
        if ready:
            self.sync(step)

    def restart_gateway(self) -> None:
        """A new gateway proxy for new routes or a new plugin resource,
        started failed open: every chat request on the stable version."""
        self.envoy = self.start(self.cluster, self.bbr)
        lg.fail_open(self.envoy, lg.plugin(self.cluster))
        for user in USERS[:20]:
            body = json.dumps({"messages": [{"role": "user", "content": "Hi"}], "model": chat.MODEL, "user": user})
            r = self.envoy.request({**chat.JSON, "x-canary-tester": "true"}, path=chat.CHAT_PATH, body=body.encode())
            assert (r.status, r.served_by, r.header("x-canary-version")) == (200, "chat-v1", None)

    def sync(self, step: mesh.Step) -> None:
        routes = self.routes_now()
        doc = lg.plugin(self.cluster)
        text = lg.config_text(doc)
        if (routes, doc["kind"]) != self.routes:
            self.restart_gateway()
            self.routes, self.config = (routes, doc["kind"]), None
        if text != self.config:
            lg.push(self.envoy, doc)
            self.config = text
        rollout = lg.chat_rollout(json.loads(text))
        served = chat.converse(self.envoy, rollout, USERS, turns=2, bbr=self.bbr)
        weight = weight_of(rollout, "chat-v2")
        mesh.assert_share(sum(v == "chat-v2" for v in served.values()), len(USERS), weight)
        if self.weight is not None and weight >= self.weight:
            moved_back = [u for u, v in self.served.items() if v == "chat-v2" and served[u] != "chat-v2"]
            assert not moved_back, f"{step.line}: the ramp moved users back"
        for rule in rollout.get("rules", []):
            (value,) = [c["exact"] for c in rule["match"]["headers"].values()]
            pinned = chat.converse(self.envoy, rollout, USERS[:10], extra={"x-canary-tester": value}, bbr=self.bbr)
            assert set(pinned.values()) == {rule["version"]}, rule["name"]
        self.served, self.weight = served, weight

    def curl_headers(self, headers: dict[str, str]) -> dict[str, str]:
        # curl -d sends a form unless told otherwise.
        return {"content-type": "application/x-www-form-urlencoded", **{k.lower(): v for k, v in headers.items()}}

    def curl(self, argv: list[str], step: mesh.Step) -> None:
        r, body = self.send_curl(argv, step)
        assert r.header("x-upstream-saw-model") == json.loads(body)["model"], "the model header KServe's rule needs"
        assert [r.header("x-canary-version")] == step.output, step.line


@pytest.fixture
def start(tmp_path):
    """Start the model servers and the gateway's Envoy for a cluster (one
    at a time: a new one stops the last); all stopped after the test."""
    started = []

    def start(cluster, bbr):
        if started:
            stop(started[-1])
        servers = lg.model_servers(cluster)
        envoy = lg.llm_gateway(cluster, tmp_path / f"gateway{len(started)}", servers, bbr)
        envoy.model_servers = lg.start_model_servers(servers)
        started.append(envoy)
        return envoy.start()

    def stop(envoy):
        envoy.stop()
        for server in envoy.model_servers:
            server.shutdown()
            server.server_close()

    yield start
    if started:
        stop(started[-1])


def test_the_llm_runbook_runs_as_documented(start, gateway_class):
    runbook = Runbook(start, gateway_class, bbr=False)
    steps = steps_for("kserve-llm", gateway_class)
    for step in steps:
        runbook.run(step)
    # Istio's steps are jq pipelines into `kubectl replace`, whose preview
    # the page describes as Runbook.replace runs it.
    piped = [s for s in steps if " | jq " in s.line]
    assert len(piped) == (4 if gateway_class == kserve.ISTIO else 0)
    assert all(s.line.endswith(" | kubectl replace -f -") for s in piped)
    assert PREVIEW in " ".join(mesh.readme_section("kserve-llm").split())
    assert runbook.labels == ["", "deploy", "pin testers", "10%", "50%", "roll back"]
    # Where it ends: everyone on chat-v1, testers' rules kept, KServe's
    # group weights as deployed.
    rollout = lg.chat_rollout(lg.plugin_config(lg.plugin(runbook.cluster)))
    assert weight_of(rollout, "chat-v2") == 0
    assert [r["name"] for r in rollout["rules"]] == ["testers", "prev-testers"]
    assert [
        d["spec"]["router"]["route"]["weight"] for d in runbook.cluster.all("LLMInferenceService")
    ] == [100, 0]


def test_the_runbook_behind_a_body_based_router_runs_as_documented(start, gateway_class):
    runbook = Runbook(start, gateway_class, bbr=True)
    for step in steps_for("kserve-llm-bbr", gateway_class):
        runbook.run(step)
    assert runbook.labels == ["", "deploy", "10%", "roll back"]
    assert lg.plugin(runbook.cluster)["kind"] == ("WasmPlugin" if gateway_class == kserve.ISTIO else "EnvoyExtensionPolicy")
    # The filter never read a body: the router put the model and the user
    # in headers.
    stats = runbook.envoy.flushed_stats()
    assert sum(v for k, v in stats.items() if k.endswith("canary_selector_bodies_read_total")) == 0


@pytest.mark.parametrize(
    "section,names",
    [
        ("kserve-llm", ["deploy", "pin testers", "10%", "50%", "roll back"]),
        ("kserve-llm-bbr", ["deploy", "10%", "roll back"]),
    ],
)
def test_each_gateway_has_a_command_for_every_step(section, names):
    labels = [s.label for s in mesh.readme_steps(section)]
    for gateway_class in (kserve.ISTIO, kserve.ENVOY_GATEWAY):
        assert [step_name(label) for label in labels if gateway_of(label) == gateway_class] == names
