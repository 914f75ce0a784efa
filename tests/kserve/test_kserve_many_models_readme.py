"""Every command of docs/kserve-many-models.md's runbook, in order, on each
gateway: the applies and patches change the simulated cluster as the API
server and KServe's controller would (each object validated again), the
gateway's Envoy follows (routes as that gateway orders them, the plugin
config pushed as it delivers it), each model's users land where their own
rollout says, a model whose rollout a step leaves alone keeps every user
where it was, and each curl prints what the page says."""

import copy

import kserve
import mesh
from kserve import USERS, gateway_of, push, route_users, step_name, steps_for, weight_of

SECTION = "kserve-many-models"
MODELS = ("sklearn-iris", "xgboost-iris")


class Runbook(kserve.Runbook):
    """The many-models page's commands, two models on one gateway."""

    def __init__(self, start_gateway, gateway_class: str):
        super().__init__(start_gateway, gateway_class)
        # model -> (its rollout as last pushed, user -> version)
        self.served: dict[str, tuple[dict, dict[str, str]]] = {}

    def changed(self, step: mesh.Step) -> None:
        if len(self.cluster.all("InferenceService")) == len(MODELS):
            self.sync()

    def sync(self) -> None:
        """Bring the gateway in line with the cluster (new routes: a new
        proxy, started failed open, which must leave every model's requests
        on its stable predictor; a new config: a push the filter must
        accept), then route every user of each model."""
        routes = self.routes_now()
        config = kserve.plugin_config(kserve.plugin(self.cluster))
        if routes != self.routes:
            self.restart_gateway()
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


def test_the_many_models_runbook_runs_as_documented(start_gateway, gateway_class):
    runbook = Runbook(start_gateway, gateway_class)
    for step in steps_for(SECTION, gateway_class):
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
