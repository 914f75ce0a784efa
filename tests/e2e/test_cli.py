"""The canary-selector CLI against the filter in the real Envoy: `explain`
names the version the Wasm filter picks for every user of random configs,
and `diff`'s predicted shares are the shares measured by sending 10,000 users
through Envoy before and after a push."""

import json
import math
import os
import random
import re
import shlex
from collections import Counter

import harness
from harness import canary_selector

SEED = int(os.environ.get("CLI_PROPERTY_SEED", "20261201"))


def random_config(rng: random.Random) -> dict:
    """2 to 4 versions at random weights (zeros and fractions included), a
    salt or the default, ids from a header then a cookie, maybe a rule."""
    n = rng.randint(2, 4)
    cuts = sorted(round(rng.uniform(0, 100), rng.choice([0, 1, 3])) for _ in range(n - 1))
    bounds = [0.0, *cuts, 100.0]
    weights = [round(b - a, 6) for a, b in zip(bounds, bounds[1:])]
    weights[-1] = round(100 - sum(weights[:-1]), 6)
    versions = [{"name": f"model-v{i + 1}", "weight": w} for i, w in enumerate(weights)]
    config = {
        "versions": versions,
        "stickiness": {"userIdHeaders": ["x-user-id"], "userIdCookies": ["uid"]},
    }
    if rng.random() < 0.5:
        config["stickiness"]["salt"] = f"salt-{rng.randrange(10**6)}"
    if rng.random() < 0.5:
        config["rules"] = [
            {"name": "team", "match": {"headers": {"x-team": {"prefix": "qa-"}}}, "version": versions[-1]["name"]}
        ]
    return config


def request_of(rng: random.Random, i: int) -> list[tuple[str, str]]:
    user = f"{rng.choice(['user', 'u', 'acct'])}-{rng.randrange(10**9)}-{i}"
    shape = rng.random()
    if shape < 0.6:
        headers = [("x-user-id", user)]
    elif shape < 0.85:
        headers = [("cookie", f"theme=dark; uid={user}")]
    else:
        headers = [("x-user-id", user), ("x-team", rng.choice(["qa-1", "ops"]))]
    return headers


def explain_args(headers: list[tuple[str, str]]) -> list[str]:
    args = []
    for name, value in headers:
        if name == "cookie":
            args += [a for part in value.split("; ") for a in ("--cookie", part)]
        else:
            args += ["-H", f"{name}: {value}"]
    return args


def test_explain_and_the_filter_in_envoy_agree_on_every_user_of_random_configs(start_envoy, tmp_path):
    rng = random.Random(SEED)
    envoy = None
    for k in range(5):
        config = random_config(rng)
        path = tmp_path / f"config{k}.json"
        path.write_text(json.dumps(config))
        if envoy is None:
            envoy = start_envoy(config)
        else:
            assert envoy.push(config), envoy.logs()[-1500:]
        conn = envoy.connection()
        for i in range(60):
            headers = request_of(rng, i)
            # What the filter wrote in the routing header, as the backend saw it.
            served = envoy.request(headers, conn=conn).header("x-upstream-saw-version")
            out = canary_selector("explain", str(path), *explain_args(headers), "--output", "json")
            assert out.returncode == 0, out.stderr
            explained = json.loads(out.stdout)
            assert explained["version"] == served, (SEED, config, headers, explained)
            assert explained["reason"] in ("rule", "sticky")


def send_users(envoy, users: list[str]) -> dict[str, str]:
    conn = envoy.connection()
    return {u: envoy.request({"x-user-id": u}, conn=conn).header("x-upstream-saw-version") for u in users}


def predicted(diff: dict) -> dict[tuple[str, str], float]:
    return {(m["from"], m["to"]): m["share"] for m in diff["moves"] + diff["stays"]}


def assert_measured_shares_match(before: dict, after: dict, shares: dict, names: list[str]):
    n = len(before)
    seen = Counter((before[u], after[u]) for u in before)
    assert set(seen) <= set(shares), f"moves diff did not predict: {set(seen) - set(shares)}"
    for a in names:
        for b in names:
            p = shares.get((a, b), 0.0)
            sigma = math.sqrt(n * p * (1 - p))
            assert abs(seen[(a, b)] - n * p) <= 5 * sigma + 1, f"{a} -> {b}: {seen[(a, b)]} of {n}, predicted {p:.4%}"


def three(weights: list[float], salt: str | None = None) -> dict:
    config = {
        "versions": [{"name": f"model-v{i + 1}", "weight": w} for i, w in enumerate(weights)],
        "stickiness": {"userIdHeaders": ["x-user-id"]},
    }
    if salt:
        config["stickiness"]["salt"] = salt
    return config


def test_diff_predicts_the_shares_measured_through_envoy(start_envoy, tmp_path):
    users = [f"diff-user-{i}" for i in range(10_000)]
    names = ["model-v1", "model-v2", "model-v3"]
    steps = [three([60, 25, 15]), three([30, 30, 40]), three([30, 30, 40], salt="next-rollout")]
    paths = []
    for k, config in enumerate(steps):
        paths.append(tmp_path / f"step{k}.json")
        paths[-1].write_text(json.dumps(config))
    envoy = start_envoy(steps[0])
    served = [send_users(envoy, users)]
    for config in steps[1:]:
        assert envoy.push(config)
        served.append(send_users(envoy, users))

    # Same salt: exact slice overlaps, all forward.
    out = canary_selector("diff", str(paths[0]), str(paths[1]), "--output", "json")
    assert out.returncode == 0, out.stdout + out.stderr
    diff = json.loads(out.stdout)
    assert not diff["saltChanged"] and diff["backward"] == []
    # Slices [0, 60) [60, 85) [85, 100) become [0, 30) [30, 60) [60, 100).
    assert {(m["from"], m["to"]): m["percent"] for m in diff["moves"]} == {
        ("model-v1", "model-v2"): "30%", ("model-v2", "model-v3"): "25%"
    }
    assert_measured_shares_match(served[0], served[1], predicted(diff), names)
    # Nobody measured moved back, as the verdict says.
    assert not [u for u in users if names.index(served[1][u]) < names.index(served[0][u])]

    # The reverse is a rollback: refused without --allow-backward.
    out = canary_selector("diff", str(paths[1]), str(paths[0]))
    assert out.returncode == 1 and "BACKWARD" in out.stdout, out.stdout

    # A new salt: every user drawn again, independent of before.
    out = canary_selector("diff", str(paths[1]), str(paths[2]), "--output", "json")
    assert out.returncode == 0, out.stdout + out.stderr
    diff = json.loads(out.stdout)
    assert diff["saltChanged"]
    assert_measured_shares_match(served[1], served[2], predicted(diff), names)


def rollouts_config(rng: random.Random, catch_all: bool) -> dict:
    """Rollouts on overlapping host patterns and path prefixes (an exact
    name, wildcards one within the other, `*` or not), each at random
    weights, its versions named after it."""

    def rollout(name: str, hosts: list[str], prefixes: list[str] | None = None) -> dict:
        canary = round(rng.uniform(0, 100), rng.choice([0, 2]))
        entry = {
            "name": name,
            "hosts": hosts,
            "versions": [{"name": f"{name}-v1", "weight": 100 - canary}, {"name": f"{name}-v2", "weight": canary}],
            "stickiness": {"userIdHeaders": ["x-user-id"]},
        }
        if prefixes:
            entry["pathPrefixes"] = prefixes
        return entry

    rollouts = [
        rollout("iris", ["iris.example.com"]),
        rollout("catalog", ["*.example.com"], ["/v1/"]),
        rollout("eu", ["*.eu.example.com"]),
        rollout("api-v2", ["api.example.com"], ["/v2/"]),
        rollout("api", ["api.example.com"], ["/v1/", "/v2/models/legacy"]),
    ]
    if catch_all:
        rollouts.append(rollout("any", ["*"]))
    rng.shuffle(rollouts)
    return {"rollouts": rollouts}


HOSTS = [
    "iris.example.com",
    "IRIS.Example.com:8080",
    "iris.example.com.",
    "a.example.com",
    "x.eu.example.com",
    "eu.example.com",
    "api.example.com",
    "example.com",
    "models.other.org",
]
PATHS = ["/v1/models/m:predict", "/v2/models/x/infer", "/v2/models/legacy/infer", "/v1beta/models/m:predict", "/health"]


def test_explain_picks_the_rollout_the_filter_in_envoy_picks_for_each_host_and_path(start_envoy, tmp_path):
    rng = random.Random(SEED)
    envoy = None
    for k, catch_all in enumerate([False, True]):
        config = rollouts_config(rng, catch_all)
        path = tmp_path / f"rollouts{k}.json"
        path.write_text(json.dumps(config))
        if envoy is None:
            envoy = start_envoy(config)
        else:
            assert envoy.push(config), envoy.logs()[-1500:]
        conn = envoy.connection()
        picked = Counter()
        for host in HOSTS:
            for request_path in PATHS:
                user = f"user-{rng.randrange(10**6)}"
                # A client's own pick of a version: the filter overwrites it, or
                # removes it when no rollout takes the request.
                headers = [("host", host), ("x-user-id", user), ("x-canary-version", "spoofed")]
                response = envoy.request(headers, path=request_path, conn=conn)
                # The routing header as the backend saw it.
                served = response.header("x-upstream-saw-version") or None
                out = canary_selector(
                    "explain", str(path), "--host", host, "--path", request_path, "-H", f"x-user-id: {user}", "-o", "json"
                )
                assert out.returncode == 0, out.stderr
                explained = json.loads(out.stdout)
                where = (SEED, catch_all, host, request_path)
                assert explained["version"] == served, (where, explained)
                rollout = explained["rollout"]["name"]
                if served is None:
                    assert explained["reason"] == "unclaimed" and rollout is None, (where, explained)
                    assert explained["unclaimed"]["removed"] == ["x-canary-version"], (where, explained)
                else:
                    assert served.startswith(f"{rollout}-v"), (where, explained)
                picked[rollout] += 1
        # Every rollout was picked somewhere, and some requests were taken by none.
        names = {r["name"] for r in config["rollouts"]}
        assert set(picked) == names | {None}, picked


# --- docs/cli.md's examples, run ----------------------------------------------


def _cli_page() -> str:
    return (harness.ROOT / "docs" / "cli.md").read_text()


def test_check_on_istio_prints_what_docs_cli_shows():
    """The page's `check istio/` output is what the CLI prints today, line
    for line, so the manual cannot fall behind the shipped manifests."""
    page = _cli_page()
    shown = re.search(r"On `istio/`:\n\n```\n(.*?)```", page, re.S)
    assert shown, "docs/cli.md shows no output of `check istio/`"
    result = canary_selector("check", "istio/")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == shown.group(1).splitlines()


def test_every_dollar_line_of_docs_cli_prints_what_it_shows():
    """Each `$ canary-selector ...` example prints the lines below it."""
    examples = re.findall(r"^\$ canary-selector (.*)\n((?:(?!\$ |```).*\n)*)", _cli_page(), re.M)
    assert len(examples) >= 3
    for line, output in examples:
        result = canary_selector(*shlex.split(line))
        assert result.stdout.splitlines() == output.splitlines(), line
