"""Every command of docs/kserve.md's runbook, in order, on each gateway:
the applies and patches change the simulated cluster exactly as the API
server and KServe's controller would (each object validated again), the
gateway's Envoy follows (routes translated as that gateway orders them,
the plugin config pushed as it delivers it), and each curl prints what the
page says."""

import json

import kserve
import mesh
from kserve import (
    HOSTS,
    USERS,
    assert_untouched_on_stable,
    fail_open,
    gateway_of,
    push,
    route_users,
    step_name,
    steps_for,
    weight_of,
)


class Readme(kserve.Runbook):
    """The KServe section's commands (docs/kserve.md), one model."""

    def changed(self, step: mesh.Step) -> None:
        if self.cluster.all("InferenceService") and self.cluster.all("HTTPRoute"):
            assert kserve.inconsistencies(self.cluster) == [], step.line
            self.sync(step)

    def sync(self, step: mesh.Step) -> None:
        """Bring the gateway in line with the cluster: new routes or a new
        plugin resource, a new gateway proxy (started failed open, which
        must send everything to the stable predictor, then given the
        plugin); a new config, a push the filter must accept."""
        routes = self.routes_now()
        config = kserve.plugin_config(kserve.plugin(self.cluster))
        stable = kserve.predictors(self.cluster.one("InferenceService"))[0][0]
        if routes != self.routes:
            self.restart_gateway()
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


def test_the_readme_kserve_rollout_runs_as_documented(start_gateway, gateway_class):
    readme = Readme(start_gateway, gateway_class)
    for step in steps_for("kserve", gateway_class):
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
