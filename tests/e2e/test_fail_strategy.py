"""What users see when the module cannot load or fails at run time, under
Envoy's failure policies, in the real Envoy 1.40 with the repository's
routes (a default route to model-v1, the stable version).

Envoy's `failure_policy` governs a plugin whose module loaded: once its VM
fails (a trap), FAIL_OPEN skips the filter, FAIL_CLOSED answers 503. A module
or config that cannot load at all is an ECDS update Envoy rejects: the last
good config keeps serving, and with none yet every request gets 500,
whatever the policy. Istio's agent covers the module it cannot fetch itself:
it delivers an allow-all RBAC filter in its place (FAIL_OPEN) or a deny-all
one (FAIL_CLOSE), which the first tests deliver the same way.
"""

import json
import re

import pytest
import yaml

from harness import ECDS_STATS, FILTER_NAME, ROOT, expected_version
import ecds  # noqa: E402  (envoy/ecds.py, on the path once harness is imported)

RBAC = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"


def istio_fallback(fail_open: bool) -> dict:
    """The ECDS resource Istio's agent sends in place of a WasmPlugin whose
    module it cannot fetch (istio pkg/wasm/convert.go)."""
    rbac = {"@type": RBAC, "rules_stat_prefix": "wasm-default-allow"}
    if not fail_open:
        rbac = {"@type": RBAC, "rules": {}, "rules_stat_prefix": "wasm-default-deny"}
    return {"@type": ecds.EXTENSION_CONFIG, "name": FILTER_NAME, "typed_config": rbac}


CANARY_USER = "user-27"  # on model-v2 at 90/10 (README)
STABLE_USER = "user-1"  # on model-v1 at 90/10 (canary-selector explain)
# The first seed's testers ask for the canary in the routing header itself.
SEED_TESTERS = {
    "name": "seed-testers",
    "match": {"headers": {"x-canary-version": {"exact": "v2"}}},
    "version": "model-v2",
}
REQUESTS = [
    {"x-user-id": CANARY_USER},
    {"cookie": f"user_id={CANARY_USER}"},
    {"x-canary-tester": "true"},
    {},
]


def assert_untouched_on_stable(r):
    """Served by the default route, with no trace of the filter."""
    assert r.status == 200, (r.status, r.body)
    assert r.served_by == "model-v1"
    assert r.header("x-canary-version") is None, "the filter did not run"
    assert r.header("x-upstream-saw-version") is None
    assert r.all("set-cookie") == []


def trapping_module() -> bytes:
    """A minimal proxy-wasm module whose proxy_on_request_headers traps
    (`unreachable`), as a Rust panic does under panic=abort."""

    def leb(n: int) -> bytes:
        out = bytearray()
        while True:
            byte, n = n & 0x7F, n >> 7
            out.append(byte | (0x80 if n else 0))
            if not n:
                return bytes(out)

    def vec(items: list[bytes]) -> bytes:
        return leb(len(items)) + b"".join(items)

    def section(kind: int, body: bytes) -> bytes:
        return bytes([kind]) + leb(len(body)) + body

    i32 = b"\x7f"
    types = [  # (params) -> (results)
        b"\x60" + vec([]) + vec([]),
        b"\x60" + vec([i32]) + vec([i32]),
        b"\x60" + vec([i32, i32]) + vec([]),
        b"\x60" + vec([i32, i32]) + vec([i32]),
        b"\x60" + vec([i32, i32, i32]) + vec([i32]),
    ]
    bodies = [
        b"\x0b",  # proxy_abi_version_0_2_1: nothing
        b"\x41" + leb(1024) + b"\x0b",  # proxy_on_memory_allocate: a fixed buffer
        b"\x0b",  # proxy_on_context_create: nothing
        b"\x41\x01\x0b",  # proxy_on_configure / proxy_on_vm_start: true
        b"\x00\x0b",  # proxy_on_request_headers: unreachable
    ]
    exports = [
        ("memory", 2, 0),
        ("proxy_abi_version_0_2_1", 0, 0),
        ("proxy_on_memory_allocate", 0, 1),
        ("proxy_on_context_create", 0, 2),
        ("proxy_on_configure", 0, 3),
        ("proxy_on_vm_start", 0, 3),
        ("proxy_on_request_headers", 0, 4),
    ]
    return (
        b"\0asm\x01\0\0\0"
        + section(1, vec(types))
        + section(3, vec([leb(t) for t in range(len(bodies))]))
        + section(5, vec([b"\x00" + leb(2)]))
        + section(7, vec([leb(len(n)) + n.encode() + bytes([kind, index]) for n, kind, index in exports]))
        + section(10, vec([leb(len(b) + 1) + b"\x00" + b for b in bodies]))
    )


# --- The module cannot be fetched: Istio's agent substitutes a filter. -------


def test_fail_open_without_the_module_sends_everyone_to_stable(start_envoy, demo_config):
    envoy = start_envoy(demo_config, initial_resource=istio_fallback(True), extra_type_urls=(RBAC,))
    for headers in REQUESTS:
        assert_untouched_on_stable(envoy.request(headers))
    # The module arrives: the filter takes over without a restart.
    assert envoy.push(demo_config)
    assert envoy.request({"x-user-id": CANARY_USER}).served_by == "model-v2"
    assert envoy.request({"x-canary-tester": "true"}).served_by == "model-v2"


def test_fail_close_without_the_module_denies_every_request(start_envoy, demo_config):
    envoy = start_envoy(demo_config, initial_resource=istio_fallback(False), extra_type_urls=(RBAC,))
    for headers in REQUESTS:
        r = envoy.request(headers)
        assert (r.status, r.body) == (403, b"RBAC: access denied")
        assert r.served_by is None


def early_strip() -> dict:
    """The `early_header_mutation_extensions` block of docs/operations.md
    (Fail strategy), as a user would paste it into envoy/envoy.yaml's
    connection manager."""
    page = (ROOT / "docs" / "operations.md").read_text()
    block = re.search(r"```yaml\n(early_header_mutation_extensions:\n.*?)```", page, re.S)
    assert block, "docs/operations.md shows no early_header_mutation_extensions block"
    return yaml.safe_load(block.group(1))


def with_early_strip(cfg: dict) -> None:
    for listener in cfg["static_resources"]["listeners"]:
        if listener["name"] == "ingress":
            listener["filter_chains"][0]["filters"][0]["typed_config"].update(early_strip())


def test_when_the_filter_fails_open_the_router_follows_a_client_sent_routing_header(start_envoy, demo_config):
    # As on an Istio sidecar: nothing replaces the header when the filter
    # does not run.
    envoy = start_envoy(demo_config, initial_resource=istio_fallback(True), extra_type_urls=(RBAC,))
    assert envoy.request({"x-canary-version": "model-v2"}).served_by == "model-v2"
    assert envoy.request({}).served_by == "model-v1"


def test_the_documented_early_strip_keeps_a_failed_open_filter_from_letting_a_client_pick(
    start_envoy, demo_config
):
    envoy = start_envoy(
        demo_config, initial_resource=istio_fallback(True), extra_type_urls=(RBAC,), bootstrap_hook=with_early_strip
    )
    r = envoy.request({"x-canary-version": "model-v2"})
    assert (r.served_by, r.header("x-upstream-saw-version")) == ("model-v1", None)
    # The filter arrives and runs as usual behind the strip.
    assert envoy.push(demo_config)
    assert envoy.request({"x-user-id": CANARY_USER}).served_by == "model-v2"
    assert envoy.request({"x-canary-tester": "true"}).served_by == "model-v2"


def test_the_early_strip_hides_the_routing_header_from_a_rule_on_it(start_envoy, demo_config):
    """The trade-off: a rule on the routing header (the first seed's testers,
    `x-canary-version: v2`) never sees what the client sent once the header
    is removed before the filter runs. Use one or the other."""
    config = {**demo_config, "rules": [SEED_TESTERS]}
    # A stable user: without an id the request would take a random anonymous
    # one and land on model-v2 one time in ten whatever the strip did.
    asks_for_v2 = {"x-canary-version": "v2", "x-user-id": STABLE_USER}
    plain = start_envoy(config)
    assert plain.request(asks_for_v2).served_by == "model-v2"
    stripped = start_envoy(config, bootstrap_hook=with_early_strip)
    r = stripped.request(asks_for_v2)
    assert (r.served_by, r.header("x-canary-version")) == ("model-v1", "model-v1")


# --- The module or its first config cannot load: Envoy rejects the update. --


@pytest.mark.parametrize("policy", ["FAIL_OPEN", "FAIL_CLOSED"])
@pytest.mark.parametrize("broken", ["missing module", "corrupt module", "rejected config"])
def test_a_first_config_that_cannot_load_fails_every_request_whatever_the_policy(
    start_envoy, demo_config, tmp_path, broken, policy
):
    wasm = {
        "missing module": tmp_path / "missing.wasm",
        "corrupt module": tmp_path / "corrupt.wasm",
    }.get(broken)
    if broken == "corrupt module":
        wasm.write_bytes(b"\0asm\x01\0\0\0" + b"\xff" * 64)
    config = "{not json" if broken == "rejected config" else demo_config
    kwargs = {"wasm": wasm} if wasm else {}
    envoy = start_envoy(config, failure_policy=policy, **kwargs)
    stats = envoy.stats()
    assert (stats[f"{ECDS_STATS}.update_success"], stats[f"{ECDS_STATS}.update_rejected"]) == (0, 1)
    for headers in REQUESTS:
        r = envoy.request(headers)
        # Envoy's placeholder for a filter that has no config yet.
        assert (r.status, r.body, r.served_by) == (500, b"", None)


def test_a_default_config_makes_a_bad_first_config_fail_open(start_envoy, demo_config):
    """What the 500s above call for: the subscription's default_config (here
    the same allow-all filter Istio uses) serves until a good config arrives."""
    envoy = start_envoy(
        "{not json",
        extra_type_urls=(RBAC,),
        default_config=istio_fallback(True)["typed_config"],
    )
    assert envoy.stats()[f"{ECDS_STATS}.update_rejected"] == 1
    for headers in REQUESTS:
        assert_untouched_on_stable(envoy.request(headers))
    assert envoy.push(demo_config)
    assert envoy.request({"x-user-id": CANARY_USER}).served_by == "model-v2"


def test_a_module_that_cannot_load_later_leaves_the_last_good_config_serving(start_envoy, demo_config, tmp_path):
    envoy = start_envoy(demo_config)
    users = [f"user-{i}" for i in range(60)]
    before = {u: envoy.request({"x-user-id": u}).served_by for u in users}
    assert before == {u: expected_version(demo_config, u) for u in users}
    broken = ecds.resource(json.dumps(demo_config), str(tmp_path / "missing.wasm"))["resources"][0]
    assert not envoy.push_resource(broken)
    assert {u: envoy.request({"x-user-id": u}).served_by for u in users} == before
    assert envoy.request({"x-canary-tester": "true"}).served_by == "model-v2"


# --- The module loaded, then its VM fails: the failure policy applies. ------


@pytest.mark.parametrize(
    "policy, later",
    [
        ("FAIL_OPEN", 200),  # the filter is skipped: stable, untouched
        ("FAIL_CLOSED", 503),
        ("FAIL_RELOAD", 503),  # reloads (with back-off) into a VM that traps again
    ],
)
def test_a_vm_that_traps_fails_the_request_then_follows_the_policy(start_envoy, demo_config, tmp_path, policy, later):
    wasm = tmp_path / "trap.wasm"
    wasm.write_bytes(trapping_module())
    envoy = start_envoy(demo_config, wasm=wasm, failure_policy=policy, concurrency=1)
    first = envoy.request({"x-user-id": CANARY_USER})
    assert (first.status, first.body) == (503, b""), "the request that trapped"
    logs = envoy.wait_for_log("failed: Uncaught RuntimeError: unreachable")
    assert "Function: proxy_on_request_headers failed: Uncaught RuntimeError: unreachable" in logs
    for headers in REQUESTS:
        r = envoy.request(headers)
        assert r.status == later, (headers, r.status)
        if later == 200:
            assert_untouched_on_stable(r)
    reloads = envoy.stats().get(f"wasm.{FILTER_NAME}.vm_reload_backoff", 0)
    assert (reloads > 0) == (policy == "FAIL_RELOAD")
