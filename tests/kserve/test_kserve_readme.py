"""Every command of the README's KServe section, in order, on each gateway:
the applies and patches change the simulated cluster exactly as the API
server and KServe's controller would (each object validated again), the
gateway's Envoy follows (routes translated as that gateway orders them,
the plugin config pushed as it delivers it), and each curl prints what the
README says."""

import json
import shlex

import kserve
import mesh
from kserve import HOSTS, USERS, assert_untouched_on_stable, fail_open, push, route_users

VARIANTS = {" on Istio": kserve.ISTIO, " on Envoy Gateway": kserve.ENVOY_GATEWAY}


def gateway_of(label: str) -> str | None:
    """The gateway a step is for (its label says), None for both."""
    return next((g for suffix, g in VARIANTS.items() if label.endswith(suffix)), None)


def step_name(label: str) -> str:
    return next((label.removesuffix(s) for s in VARIANTS if label.endswith(s)), label)


def steps_for(gateway_class: str) -> list[mesh.Step]:
    return [s for s in mesh.readme_steps("kserve") if gateway_of(s.label) in (None, gateway_class)]


def weight_of(config: dict, version: str) -> float:
    return sum(v["weight"] for v in config["versions"] if v["name"] == version)


class Readme:
    """Runs the section's commands against the simulated cluster and the
    gateway's real Envoy kept in step with it."""

    def __init__(self, start_gateway, gateway_class: str):
        self.start_gateway = start_gateway
        self.cluster = kserve.installed(gateway_class)
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
        kserve.reconcile(self.cluster)
        for doc in self.cluster.objects.values():
            assert mesh.validate(doc) == [], (step.line, doc["kind"], doc["metadata"]["name"])
        if self.cluster.all("InferenceService") and self.cluster.all("HTTPRoute"):
            assert kserve.inconsistencies(self.cluster) == [], step.line
            self.sync(step)

    def command(self, argv: list[str], step: mesh.Step) -> bool:
        if argv[0] == "curl":
            self.curl(argv, step)
            return False
        assert argv[0] == "kubectl", step.line
        ns, args, _ = mesh.split_kubectl(argv)
        verb = args[0]
        if verb == "apply":
            for i, a in enumerate(args):
                if a == "-f":
                    self.cluster.apply(mesh.ROOT / args[i + 1])
            return True
        if verb == "patch":
            self.cluster.patch(mesh.kind_of(args[1]), ns, args[2], mesh.flag(args, "--type"), mesh.flag(args, "-p"))
            return True
        if verb == "wait":
            kind, name = args[2].split("/")
            assert args[1] == "--for=condition=Ready" and mesh.kind_of(kind) == "InferenceService", step.line
            self.cluster.get("InferenceService", ns, name)
            return False
        raise AssertionError(f"the test does not know this README command: {step.line}")

    def sync(self, step: mesh.Step) -> None:
        """Bring the gateway in line with the cluster: new routes or a new
        plugin resource, a new gateway proxy (started failed open, which
        must send everything to the stable predictor, then given the
        plugin); a new config, a push the filter must accept."""
        implementation = kserve.gateway(self.cluster)["spec"]["gatewayClassName"]
        routes = json.dumps(
            kserve.route_config(self.cluster, implementation, kserve.services(self.cluster)), sort_keys=True
        )
        config = kserve.plugin_config(kserve.plugin(self.cluster))
        stable = kserve.predictors(self.cluster.one("InferenceService"))[0][0]
        if routes != self.routes:
            if self.envoy:
                self.envoy.stop()
            self.envoy = self.start_gateway(self.cluster)
            fail_open(self.envoy, self.cluster)
            assert_untouched_on_stable(self.envoy, stable, USERS[:20])
            self.routes, self.config = routes, None
        if config != self.config:
            push(self.envoy, config)
            self.config = json.loads(json.dumps(config))
        for hostname in HOSTS:
            served = route_users(self.envoy, config, hostname=hostname)
            mesh.assert_share(sum(v == "model-v2" for v in served.values()), len(USERS), weight_of(config, "model-v2"))
        weights = {"10%": 10, "50%": 50, "100%": 100, "roll back": 0}
        label = self.labels[-1]
        if label in weights:
            assert weight_of(config, "model-v2") == weights[label], step.line

    def curl(self, argv: list[str], step: mesh.Step) -> None:
        headers = dict(argv[i + 1].split(": ", 1) for i, a in enumerate(argv) if a == "-H")
        (url,) = [a for a in argv if a.startswith("http://")]
        address, path = url.removeprefix("http://").split("/", 1)
        assert address == "$INGRESS_HOST", url
        assert argv[argv.index("-w") + 1] == "%header{x-canary-version}\\n"
        body = argv[argv.index("-d") + 1].encode()
        r = self.envoy.request(headers, path="/" + path, body=body)
        assert r.status == 200
        assert r.served_by == r.header("x-canary-version"), "the response header names the version that answered"
        assert [r.header("x-canary-version")] == step.output, step.line


def test_the_readme_kserve_rollout_runs_as_documented(start_gateway, gateway_class):
    readme = Readme(start_gateway, gateway_class)
    for step in steps_for(gateway_class):
        readme.run(step)
    # The seed's steps are all there, in this order.
    assert readme.labels == ["", "deploy", "pin testers", "10%", "50%", "100%", "roll back", "promote"]
    # After promotion: model-v2 is KServe's stable predictor, the only
    # version, and what the filter never touches lands there.
    assert kserve.predictors(readme.cluster.one("InferenceService")) == [
        ("model-v2", "sklearn-iris-model-v2-predictor", 100)
    ]
    assert [v["name"] for v in readme.config["versions"]] == ["model-v2"]
    fail_open(readme.envoy, readme.cluster)
    assert_untouched_on_stable(readme.envoy, "model-v2", USERS[:20])


def test_each_gateway_has_a_command_for_every_step():
    """Every step written for one gateway has its twin for the other."""
    labels = [s.label for s in mesh.readme_steps("kserve")]
    for gateway_class in (kserve.ISTIO, kserve.ENVOY_GATEWAY):
        assert [step_name(label) for label in labels if gateway_of(label) == gateway_class] == [
            "deploy",
            "pin testers",
            "10%",
            "50%",
            "100%",
            "roll back",
            "promote",
        ]
