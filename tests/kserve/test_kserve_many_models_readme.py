"""Every command of docs/kserve-many-models.md's runbook, in order, on each
gateway: the applies and patches change the simulated cluster as the API
server and KServe's controller would (each object validated again), the
gateway's Envoy follows (routes as that gateway orders them, the plugin
config pushed as it delivers it), each model's users land where their own
rollout says, a model whose rollout a step leaves alone keeps every user
where it was, and each curl prints what the page says."""

import copy
import json
import shlex

import kserve
import mesh
from kserve import USERS, fail_open, push, route_users
from test_kserve_readme import gateway_of, step_name

SECTION = "kserve-many-models"
MODELS = ("sklearn-iris", "xgboost-iris")


def steps_for(gateway_class: str) -> list[mesh.Step]:
    return [s for s in mesh.readme_steps(SECTION) if gateway_of(s.label) in (None, gateway_class)]


def weight_of(entry: dict, version: str) -> float:
    return sum(v["weight"] for v in entry["versions"] if v["name"] == version)


class Runbook:
    """Runs the section's commands against the simulated cluster and the
    gateway's real Envoy kept in step with it."""

    def __init__(self, start_gateway, gateway_class: str):
        self.start_gateway = start_gateway
        self.cluster = kserve.installed(gateway_class)
        self.envoy = None
        self.routes = None
        self.config = None
        # model -> (its rollout as last pushed, user -> version)
        self.served: dict[str, tuple[dict, dict[str, str]]] = {}
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
        if len(self.cluster.all("InferenceService")) == len(MODELS):
            self.sync()

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
        raise AssertionError(f"the test does not know this command: {step.line}")

    def sync(self) -> None:
        """Bring the gateway in line with the cluster (new routes: a new
        proxy, started failed open, which must leave every model's requests
        on its stable predictor; a new config: a push the filter must
        accept), then route every user of each model."""
        implementation = kserve.gateway(self.cluster)["spec"]["gatewayClassName"]
        routes = json.dumps(
            kserve.route_config(self.cluster, implementation, kserve.services(self.cluster)), sort_keys=True
        )
        config = kserve.plugin_config(kserve.plugin(self.cluster))
        if routes != self.routes:
            if self.envoy:
                self.envoy.stop()
            self.envoy = self.start_gateway(self.cluster)
            fail_open(self.envoy, self.cluster)
            self.assert_untouched_on_stable()
            self.routes, self.config = routes, None
        if config != self.config:
            push(self.envoy, config)
            self.config = copy.deepcopy(config)
        for name in MODELS:
            isvc = self.cluster.get("InferenceService", "kserve-test", name)
            first, second = kserve.isvc_hosts(isvc)
            entry = kserve.rollout_for(config, first)
            assert entry["name"] == name
            served = route_users(self.envoy, entry, hostname=first)
            assert route_users(self.envoy, entry, hostname=second) == served
            mesh.assert_share(sum(v == "model-v2" for v in served.values()), len(USERS), weight_of(entry, "model-v2"))
            if name in self.served:
                before_entry, before = self.served[name]
                if before_entry == entry:
                    assert served == before, f"{name}'s users moved though its rollout did not change"
                elif weight_of(entry, "model-v2") >= weight_of(before_entry, "model-v2"):
                    moved_back = [u for u, v in before.items() if v == "model-v2" and served[u] != "model-v2"]
                    assert not moved_back, f"{name}'s ramp moved canary users back"
            self.served[name] = (copy.deepcopy(entry), served)

    def assert_untouched_on_stable(self) -> None:
        for name in MODELS:
            for hostname in kserve.isvc_hosts(self.cluster.get("InferenceService", "kserve-test", name)):
                for user in USERS[:20]:
                    r = self.envoy.request({"host": hostname, "x-user-id": user, **kserve.TESTER})
                    assert (r.status, r.served_by, r.header("x-canary-version")) == (200, "model-v1", None)

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


def test_the_many_models_runbook_runs_as_documented(start_gateway, gateway_class):
    runbook = Runbook(start_gateway, gateway_class)
    for step in steps_for(gateway_class):
        runbook.run(step)
    assert runbook.labels == [
        "",
        "deploy",
        "pin testers",
        "sklearn-iris 10%",
        "sklearn-iris 50%",
        "xgboost-iris 10%",
        "roll back sklearn-iris",
    ]
    # Where it ends: sklearn-iris rolled back, xgboost-iris at 10%, both
    # rollouts in the one plugin resource, testers pinned in both.
    config = runbook.config
    assert [(r["name"], weight_of(r, "model-v2")) for r in config["rollouts"]] == [
        ("sklearn-iris", 0),
        ("xgboost-iris", 10),
    ]
    assert all([rule["name"] for rule in r["rules"]] == ["testers", "prev-testers"] for r in config["rollouts"])
    for name in MODELS:
        hostname = f"{name}-kserve-test.example.com"
        entry = kserve.rollout_for(config, hostname)
        prev = route_users(runbook.envoy, entry, USERS[:20], {"x-canary-tester": "prev"}, hostname=hostname)
        assert set(prev.values()) == {"model-v1"}


def test_each_gateway_has_a_command_for_every_step():
    labels = [s.label for s in mesh.readme_steps(SECTION)]
    for gateway_class in (kserve.ISTIO, kserve.ENVOY_GATEWAY):
        assert [step_name(label) for label in labels if gateway_of(label) == gateway_class] == [
            "deploy",
            "pin testers",
            "sklearn-iris 10%",
            "sklearn-iris 50%",
            "xgboost-iris 10%",
            "roll back sklearn-iris",
        ]
