"""The KServe runbooks' steps (docs/kserve.md, docs/kserve-many-models.md,
docs/kserve-llm.md): which gateway each step is for, and `Runbook`, which
carries them out on the cluster model and the gateway's real Envoy."""

from __future__ import annotations

import json
import shlex

import mesh

from .controller import gateway, reconcile
from .gateway_routes import route_config, services
from .scenario import ENVOY_GATEWAY, ISTIO, installed
from .traffic import fail_open

# A step's label ends with the gateway it is for; a step without is for both.
GATEWAY_SUFFIXES = {" on Istio": ISTIO, " on Envoy Gateway": ENVOY_GATEWAY}


def gateway_of(label: str) -> str | None:
    """The gateway a step is for (its label says), None for both."""
    return next((g for suffix, g in GATEWAY_SUFFIXES.items() if label.endswith(suffix)), None)


def step_name(label: str) -> str:
    return next((label.removesuffix(s) for s in GATEWAY_SUFFIXES if label.endswith(s)), label)


def steps_for(section: str, gateway_class: str) -> list[mesh.Step]:
    """The section's steps that run on `gateway_class`, in order."""
    return [s for s in mesh.readme_steps(section) if gateway_of(s.label) in (None, gateway_class)]


def weight_of(config: dict, version: str) -> float:
    """A version's weight in a rollout's config (0 when it is not listed)."""
    return sum(v["weight"] for v in config["versions"] if v["name"] == version)


class Runbook:
    """Runs a runbook's commands against the simulated cluster and the
    gateway's real Envoy kept in step with it: kubectl applies and patches
    change the cluster as the API server and KServe's controller would, each
    object validated again; then `changed` brings the gateway in line. Each
    curl must print what the page says."""

    def __init__(self, start_gateway, gateway_class: str):
        self.start_gateway = start_gateway
        self.cluster = installed(gateway_class)
        self.envoy = None
        self.routes = None
        self.config = None
        self.labels: list[str] = []

    def run(self, step: mesh.Step) -> None:
        changed = False
        for part in step.line.split(" && "):
            changed |= self.command(shlex.split(part), step)
        if not changed:
            return
        self.labels.append(step_name(step.label))
        reconcile(self.cluster)
        for doc in self.cluster.objects.values():
            assert self.validate(doc) == [], (step.line, doc["kind"], doc["metadata"]["name"])
        self.changed(step)

    def validate(self, doc: dict) -> list[str]:
        """An object's errors against the schema the API server applies."""
        return mesh.validate(doc)

    def changed(self, step: mesh.Step) -> None:
        """What a step that changed the cluster does to the gateway."""
        raise NotImplementedError

    def command(self, argv: list[str], step: mesh.Step) -> bool:
        """Runs one command; whether it changed the cluster."""
        if "|" in argv:
            return self.pipeline(argv, step)
        if argv[0] == "curl":
            self.curl(argv, step)
            return False
        assert argv[0] == "kubectl", step.line
        ns, args, _ = mesh.split_kubectl(argv)
        if mesh.apply_or_patch(self.cluster, ns, args):
            return True
        verb = args[0]
        if verb == "wait":
            kind, name = args[2].split("/")
            assert args[1] == "--for=condition=Ready" and mesh.kind_of(kind) == "InferenceService", step.line
            self.cluster.get("InferenceService", ns, name)
            return False
        raise AssertionError(f"the test does not know this command: {step.line}")

    def pipeline(self, argv: list[str], step: mesh.Step) -> bool:
        """`kubectl get KIND NAME -o json | jq ... | kubectl replace -f -`:
        the object as the real jq leaves it replaces the one read, unless
        it changed in between (resourceVersion)."""
        text, last = mesh.run_pipeline(self.cluster, argv)
        assert last is not None and mesh.split_kubectl(last)[1] == ["replace", "-f", "-"], step.line
        self.replace(json.loads(text), step)
        return True

    def replace(self, doc: dict, step: mesh.Step) -> None:
        self.cluster.replace(doc)

    def routes_now(self) -> str:
        """The gateway's routes for the cluster as it is (JSON, to compare)."""
        implementation = gateway(self.cluster)["spec"]["gatewayClassName"]
        return json.dumps(route_config(self.cluster, implementation, services(self.cluster)), sort_keys=True)

    def restart_gateway(self) -> None:
        """A new gateway proxy for new routes, started failed open."""
        if self.envoy:
            self.envoy.stop()
        self.envoy = self.start_gateway(self.cluster)
        fail_open(self.envoy, self.cluster)

    def curl(self, argv: list[str], step: mesh.Step) -> None:
        r, _ = self.send_curl(argv, step)
        assert [r.header("x-canary-version")] == step.output, step.line

    def send_curl(self, argv: list[str], step: mesh.Step):
        """Sends the page's `curl -H ... -d BODY -w '%header{x-canary-version}\\n'
        http://$INGRESS_HOST/...` to the gateway: the response, which must be
        a 200 from the version it names, and the body sent."""
        headers = self.curl_headers(dict(argv[i + 1].split(": ", 1) for i, a in enumerate(argv) if a == "-H"))
        (url,) = [a for a in argv if a.startswith("http://")]
        address, path = url.removeprefix("http://").split("/", 1)
        assert address == "$INGRESS_HOST", url
        assert argv[argv.index("-w") + 1] == "%header{x-canary-version}\\n"
        body = argv[argv.index("-d") + 1].encode()
        r = self.envoy.request(headers, path="/" + path, body=body)
        assert r.status == 200, (step.line, r.status)
        assert r.served_by == r.header("x-canary-version"), "the response header names the version that answered"
        return r, body

    def curl_headers(self, headers: dict[str, str]) -> dict[str, str]:
        """The headers the page's curl sends, from its `-H` options."""
        return headers
