"""End to end: testers picked by their token, in the real Envoy, the way
Istio builds KServe's gateway from istio/kserve/security/ (docs/operations.md,
"Security").

The Envoy is the harness' own with Istio's jwt_authn filter in front of the
Wasm filter: providers, requirement and flags as istiod renders the shipped
RequestAuthentication (pilot/pkg/security/authn/policy_applier.go: one
provider `origins-0`, `requires_any` of it and `allow_missing`,
`bypass_cors_preflight`, `claim_to_headers` from `outputClaimToHeaders`, the
route cache cleared on a gateway), and the JWKS inline, as istiod delivers a
`jwksUri` it fetched itself. The key pair is made here, at test time; the
shipped jwksUri is replaced by its public half. The plugin config is the
shipped WasmPlugin's pluginConfig, delivered over ECDS as Istio does; the
filter order is Istio's for phase AUTHZ (jwt_authn first).

What a user would see: a request whose verified token says `canary_tester:
true` reaches the canary (rule); the same header forged, with no token, with
a token that does not say so, or on a CORS preflight, pins nobody; a forged
token is refused (401), as Istio refuses any invalid token. The plain rule on
a header the client sends (istio/kserve/wasmplugin.yaml, the demo's) lets
anyone in, and a plugin that runs before jwt_authn (phase AUTHN) does too.

That a request no rollout takes cannot pick a version with a forged routing
header is tests/e2e/test_rollouts.py's
test_a_request_no_rollout_takes_loses_the_routing_header_and_nothing_else.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import time

import pytest
import yaml
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from harness import ENVOY_BIN, ROOT

SECURITY_DIR = ROOT / "istio" / "kserve" / "security"
(REQUEST_AUTHENTICATION,) = yaml.safe_load_all((SECURITY_DIR / "requestauthentication.yaml").read_text())
(PLUGIN,) = yaml.safe_load_all((SECURITY_DIR / "wasmplugin.yaml").read_text())
(PLAIN_PLUGIN,) = yaml.safe_load_all((ROOT / "istio" / "kserve" / "wasmplugin.yaml").read_text())
(JWT_RULE,) = REQUEST_AUTHENTICATION["spec"]["jwtRules"]
ISSUER = JWT_RULE["issuer"]
(CLAIM_TO_HEADER,) = JWT_RULE["outputClaimToHeaders"]
CLAIM_HEADER, CLAIM = CLAIM_TO_HEADER["header"], CLAIM_TO_HEADER["claim"]

USERS = [f"user-{i}" for i in range(20)]


# --- Tokens -----------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Issuer:
    """An RS256 key pair made at test time, its JWKS, and tokens it signs."""

    def __init__(self, kid: str = "test-key"):
        self.kid = kid
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwks(self) -> str:
        numbers = self.key.public_key().public_numbers()
        n = numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")
        e = numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big")
        return json.dumps({"keys": [{"kty": "RSA", "alg": "RS256", "use": "sig", "kid": self.kid, "n": _b64(n), "e": _b64(e)}]})

    def token(self, **claims) -> str:
        now = int(time.time())
        payload = {"iss": ISSUER, "sub": "someone", "iat": now, "exp": now + 600, **claims}
        head = _b64(json.dumps({"alg": "RS256", "typ": "JWT", "kid": self.kid}).encode())
        body = _b64(json.dumps(payload).encode())
        signature = self.key.sign(f"{head}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{head}.{body}.{_b64(signature)}"


@pytest.fixture(scope="module")
def issuer() -> Issuer:
    return Issuer()


# --- The Envoy Istio would build --------------------------------------------


def istio_jwt_authn(request_authentication: dict, jwks: str) -> dict:
    """The jwt_authn filter istiod renders for a RequestAuthentication with
    one jwtRule on a gateway (policy_applier.go, convertToEnvoyJwtConfig),
    with `jwks` inline in place of the jwksUri (what istiod does when it
    fetches the URI itself: JwksResolver.BuildLocalJwks)."""
    (rule,) = request_authentication["spec"]["jwtRules"]
    provider = {
        "issuer": rule["issuer"],
        "local_jwks": {"inline_string": jwks},
        "forward": rule.get("forwardOriginalToken", False),
        "payload_in_metadata": "payload",
        "claim_to_headers": [
            {"header_name": c["header"], "claim_name": c["claim"]} for c in rule.get("outputClaimToHeaders", [])
        ],
        # Istio sets it on gateways (a proxy that is not a sidecar).
        "clear_route_cache": True,
    }
    if rule.get("audiences"):
        provider["audiences"] = rule["audiences"]
    return {
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {"origins-0": provider},
            # A token, if present, must be valid; no token is allowed.
            "rules": [
                {
                    "match": {"prefix": "/"},
                    "requires": {"requires_any": {"requirements": [{"provider_name": "origins-0"}, {"allow_missing": {}}]}},
                }
            ],
            "bypass_cors_preflight": True,
        },
    }


def with_jwt_authn(jwt_filter: dict, before_plugin: bool = True):
    """A bootstrap hook: jwt_authn in the ingress' filter chain, in front of
    the Wasm filter (Istio's order for phase AUTHZ), or behind it (phase
    AUTHN: Istio puts AUTHN plugins before its authn filters)."""

    def hook(cfg: dict) -> None:
        (ingress,) = [l for l in cfg["static_resources"]["listeners"] if l["name"] == "ingress"]
        filters = ingress["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]
        filters.insert(0 if before_plugin else len(filters) - 1, jwt_filter)

    return hook


def plugin_config(plugin: dict) -> dict:
    config = json.loads(json.dumps(plugin["spec"]["pluginConfig"]))
    config["responseReasonHeader"] = "x-canary-reason"  # to tell a rule from a sticky decision
    return config


@pytest.fixture
def gateway(start_envoy, issuer):
    """KServe's gateway as Istio builds it from istio/kserve/security/."""
    return start_envoy(
        plugin_config(PLUGIN),
        filter_name="kserve.canary-selector",
        bootstrap_hook=with_jwt_authn(istio_jwt_authn(REQUEST_AUTHENTICATION, issuer.jwks())),
    )


def decision(r) -> tuple:
    return r.status, r.served_by, r.header("x-canary-reason")


# --- The shipped pair -------------------------------------------------------


def test_the_plugin_reads_the_header_the_request_authentication_writes_after_it_does():
    spec = PLUGIN["spec"]
    (rule,) = spec["pluginConfig"]["rules"]
    assert rule["match"]["headers"][CLAIM_HEADER] == {"exact": "true"}
    assert rule["version"] == "model-v2"
    # AUTHZ runs after Istio's authn filters; AUTHN would run before them.
    assert spec["phase"] == "AUTHZ"
    # On the same proxies: the same Gateway, from the same namespace.
    assert spec["targetRefs"] == REQUEST_AUTHENTICATION["spec"]["targetRefs"]
    assert PLUGIN["metadata"]["namespace"] == REQUEST_AUTHENTICATION["metadata"]["namespace"]
    # It replaces the plain plugin: the same resource, only the rule differs.
    assert PLUGIN["metadata"] == PLAIN_PLUGIN["metadata"]
    plain, secure = dict(PLAIN_PLUGIN["spec"]), dict(spec)
    plain["pluginConfig"] = {k: v for k, v in plain["pluginConfig"].items() if k != "rules"}
    secure["pluginConfig"] = {k: v for k, v in secure["pluginConfig"].items() if k != "rules"}
    assert plain == secure


# --- What a user sees -------------------------------------------------------


def test_a_verified_tester_claim_pins_the_canary(gateway, issuer):
    for user in USERS[:5]:
        token = issuer.token(sub=user, **{CLAIM: True})
        r = gateway.request({"authorization": f"Bearer {token}", "x-user-id": user})
        assert decision(r) == (200, "model-v2", "rule"), r.body
    # Anyone else stays on the stable version, at the canary's weight 0.
    for user in USERS[:5]:
        r = gateway.request({"authorization": f"Bearer {issuer.token(sub=user)}", "x-user-id": user})
        assert decision(r) == (200, "model-v1", "sticky"), r.body


FORGED = [
    pytest.param({CLAIM_HEADER: "true", "x-user-id": "mallory"}, id="no token"),
    pytest.param({CLAIM_HEADER.upper(): "true", "x-user-id": "mallory"}, id="no token, upper case"),
    pytest.param([(CLAIM_HEADER, "true"), (CLAIM_HEADER, "true"), ("x-user-id", "mallory")], id="no token, twice"),
    pytest.param({CLAIM_HEADER: "true", "authorization": "Basic bWFsbG9yeTpwdw==", "x-user-id": "mallory"},
                 id="no bearer token"),
]


@pytest.mark.parametrize("headers", FORGED)
def test_a_forged_claim_header_without_a_token_pins_nobody(gateway, headers):
    r = gateway.request(headers)
    assert decision(r) == (200, "model-v1", "sticky"), r.body


def test_a_forged_claim_header_beside_a_token_that_does_not_say_so_pins_nobody(gateway, issuer):
    for claims in ({}, {CLAIM: False}, {CLAIM: "no"}):
        token = issuer.token(sub="mallory", **claims)
        r = gateway.request({"authorization": f"Bearer {token}", CLAIM_HEADER: "true", "x-user-id": "mallory"})
        assert decision(r) == (200, "model-v1", "sticky"), (claims, r.body)


def test_a_forged_token_is_refused(gateway, issuer):
    """Istio rejects a request whose token is invalid (only a missing token
    passes), so a token signed by another key, or an expired one, never
    reaches the plugin, whatever it claims."""
    forger = Issuer(kid=issuer.kid)
    expired = issuer.token(**{CLAIM: True, "exp": int(time.time()) - 3600})
    for token in (forger.token(**{CLAIM: True}), expired, "not-a-jwt"):
        r = gateway.request({"authorization": f"Bearer {token}", CLAIM_HEADER: "true", "x-user-id": "mallory"})
        assert r.status == 401, r.body
        assert r.served_by is None and r.header("x-canary-version") is None


def cors_preflight(envoy, **headers):
    return envoy.request(
        {"origin": "https://app.example.com", "access-control-request-method": "POST", **headers},
        method="OPTIONS",
        body=b"",
    )


def test_a_cors_preflight_with_a_forged_claim_header_pins_nobody(gateway):
    r = cors_preflight(gateway, **{CLAIM_HEADER: "true", "x-user-id": "mallory"})
    assert decision(r) == (200, "model-v1", "sticky"), r.body


def envoy_version() -> tuple[int, int]:
    out = subprocess.run([str(ENVOY_BIN), "--version"], capture_output=True, text=True).stdout
    major, minor = re.search(r"/(\d+)\.(\d+)\.\d+/", out).groups()
    return int(major), int(minor)


def test_before_envoy_1_40_a_cors_preflight_keeps_a_forged_claim_header(start_envoy, issuer):
    """Why the shipped rule also matches `:method`: jwt_authn skips a CORS
    preflight (Istio sets bypass_cors_preflight), and before Envoy 1.40 it
    removed the claim headers only when it checked a token, so a forged one
    reached the plugin on a preflight (envoy#46586 removes them on every
    request). Without the `:method` condition the rule then pins it."""
    config = plugin_config(PLUGIN)
    config["rules"][0]["match"]["headers"].pop(":method")
    envoy = start_envoy(config, bootstrap_hook=with_jwt_authn(istio_jwt_authn(REQUEST_AUTHENTICATION, issuer.jwks())))
    r = cors_preflight(envoy, **{CLAIM_HEADER: "true", "x-user-id": "mallory"})
    pinned = envoy_version() < (1, 40)
    assert decision(r) == (200, "model-v2" if pinned else "model-v1", "rule" if pinned else "sticky"), r.body


# --- Why the doc warns ------------------------------------------------------


def test_a_rule_on_a_header_the_client_sends_lets_anyone_in(start_envoy, issuer):
    """The plain plugin's rule (x-canary-tester: true, the demo's): jwt_authn
    in front changes nothing, since the header is no claim's."""
    envoy = start_envoy(
        plugin_config(PLAIN_PLUGIN),
        bootstrap_hook=with_jwt_authn(istio_jwt_authn(REQUEST_AUTHENTICATION, issuer.jwks())),
    )
    for user in USERS[:5]:
        r = envoy.request({"x-canary-tester": "true", "x-user-id": user})
        assert decision(r) == (200, "model-v2", "rule"), r.body


def test_a_plugin_in_front_of_jwt_authn_sees_the_forged_header(start_envoy, issuer):
    """Phase AUTHN: Istio puts the plugin before its jwt_authn filter, so the
    rule reads the header before jwt_authn removes it."""
    envoy = start_envoy(
        plugin_config(PLUGIN),
        bootstrap_hook=with_jwt_authn(istio_jwt_authn(REQUEST_AUTHENTICATION, issuer.jwks()), before_plugin=False),
    )
    r = envoy.request({CLAIM_HEADER: "true", "x-user-id": "mallory"})
    assert decision(r) == (200, "model-v2", "rule"), r.body
