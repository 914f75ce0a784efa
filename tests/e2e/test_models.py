"""End to end: generative models (issue 27) in the real Envoy. OpenAI-style
calls go through the filter to two OpenAI-compatible model servers
(envoy/openai_models.py, `chat-v1` and `chat-v2`), which echo what reached
them: the routing header, the model header, and the body's length, SHA-256
and framing. So each test sees what a user and a model server would see:
which rollout took the call (by the model the body or `modelHeader` names,
or the fallback rollout, or none), which version (sticky per user, the id
from a header, then the body, then a cookie), and the body the server got,
byte for byte, rewritten only where a version names another model.

One Envoy serves the module's tests (`chat`), its routes sending each
version name to the server of its suffix (`*-v1` to chat-v1, `*-v2` to
chat-v2); tests that need another config push it, and each test pushes the
shared one back first. Counters are read as differences, once the filter's
tick (200 ms for a config that reads bodies) has flushed them.
"""

from __future__ import annotations

import copy
import hashlib
import http.client
import json
import time
from collections import Counter
from dataclasses import dataclass

import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness import ROOT, Envoy, Response, expected_version
import openai_models  # noqa: E402  (envoy/openai_models.py, on the path through harness)

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
JSON = "application/json"
LLAMA = "llama-3-8b"
# chat-v2 serves a fine-tune of llama: the filter rewrites the model to it.
FINE_TUNE = "llama-3-8b-ft"
# The fallback rollout's canary rewrites to a name shorter than most models,
# that JSON escapes (the quotes) and that is not ASCII.
ODD = 'tiny "q" \u00e9'
# Seconds between a stream's events (the servers' --chunk-delay).
CHUNK_DELAY = 0.25
MiB = 1 << 20
USERS = [f"user-{i}" for i in range(200)]
TESTERS = [{"name": "testers", "match": {"headers": {"x-canary-tester": {"exact": "true"}}}, "version": "chat-v2"}]


def rollout(name: str, versions: list[dict], **more) -> dict:
    return {
        "name": name,
        "hosts": ["*"],
        "versions": versions,
        "stickiness": {"userIdHeaders": ["x-user-id"]},
        "responseHeader": "x-canary-version",
        "responseReasonHeader": "x-canary-reason",
        **more,
    }


def two(name: str) -> list[dict]:
    """Two versions at 50/50, `<name>-v1` and `<name>-v2`."""
    return [{"name": f"{name}-v1", "weight": 50}, {"name": f"{name}-v2", "weight": 50}]


def config() -> dict:
    """The shared config: `llama` takes llama-3-8b on both OpenAI paths, its
    canary a fine-tune, sticky by header, body `user`, then cookie; `other`
    is the fallback of the chat path (a model unknown or unlisted), its
    canary rewriting to ODD; the completions path has no fallback; `iris`
    takes KServe V1 calls, whose bodies it never needs."""
    return {
        "modelHeader": "x-gateway-model-name",
        "rollouts": [
            rollout(
                "llama",
                [{"name": "chat-v1", "weight": 50}, {"name": "chat-v2", "weight": 50, "model": FINE_TUNE}],
                pathPrefixes=[CHAT, COMPLETIONS],
                models=[LLAMA],
                stickiness={"userIdHeaders": ["x-user-id"], "userIdBodyFields": ["user"], "userIdCookies": ["user_id"]},
                rules=TESTERS,
            ),
            rollout(
                "other",
                [{"name": "other-v1", "weight": 50}, {"name": "other-v2", "weight": 50, "model": ODD}],
                pathPrefixes=[CHAT],
            ),
            rollout("iris", two("iris"), pathPrefixes=["/v1/models"]),
        ],
    }


def server_of(version: str) -> str:
    """The chat server the test routes send a version to (chat_routes)."""
    return "chat-v2" if version.endswith("-v2") else "chat-v1"


def entry(cfg: dict, name: str) -> dict:
    (found,) = [r for r in cfg["rollouts"] if r["name"] == name]
    return found


def users_on(cfg: dict, name: str, version: str, n: int = 5) -> list[str]:
    """`n` user ids that rollout `name` of `cfg` puts on `version` (the
    documented formula, harness.expected_version)."""
    found = [u for u in USERS if expected_version(entry(cfg, name), u) == version]
    assert len(found) >= n, (name, version)
    return found[:n]


def chat_routes(cfg: dict) -> None:
    """Bootstrap hook: the ingress routes each version to the chat server of
    its suffix, `mistral-v2` excepted (Envoy answers it 503: a failing model
    version), and a call with no routing header to chat-v1."""
    (ingress,) = [x for x in cfg["static_resources"]["listeners"] if x["name"] == "ingress"]

    def by(how: dict) -> dict:
        return {"prefix": "/", "headers": [{"name": "x-canary-version", "string_match": how}]}

    routes = [
        {"match": by({"exact": "mistral-v2"}), "direct_response": {"status": 503}},
        {"match": by({"suffix": "-v1"}), "route": {"cluster": "chat-v1"}},
        {"match": by({"suffix": "-v2"}), "route": {"cluster": "chat-v2"}},
        {"match": {"prefix": "/"}, "route": {"cluster": "chat-v1"}},
    ]
    ingress["filter_chains"][0]["filters"][0]["typed_config"]["route_config"] = {
        "name": "chat",
        "virtual_hosts": [{"name": "chat", "domains": ["*"], "routes": routes}],
    }


# --- Bodies -----------------------------------------------------------------


def field(key: str, value) -> bytes:
    return json.dumps(key).encode() + b":" + json.dumps(value, ensure_ascii=False).encode()


def obj(*fields: bytes) -> bytes:
    return b"{" + b",".join(fields) + b"}"


def prose(n: int) -> str:
    """`n` characters of chat text with what JSON escapes and what is not
    ASCII."""
    unit = 'Ein "Wort" \\ über\tzwei\nZeilen, 日本語 '
    return (unit * (n // len(unit) + 1))[:n]


def messages(n: int = 40) -> bytes:
    return field("messages", [{"role": "user", "content": prose(n)}])


def sized(length: int, model: str = LLAMA) -> bytes:
    """A chat body of exactly `length` bytes."""
    empty = obj(field("model", model), field("messages", [{"role": "user", "content": ""}]))
    return obj(field("model", model), field("messages", [{"role": "user", "content": "a" * (length - len(empty))}]))


def chat_body(model=LLAMA, user: str | None = None, size: int = 40, model_last: bool = False, **more) -> bytes:
    fields = [messages(size)] + [field(k, v) for k, v in more.items()]
    if user is not None:
        fields.append(field("user", user))
    model_field = [field("model", model)]
    return obj(*(fields + model_field if model_last else model_field + fields))


@dataclass
class Token:
    """A body built around its `model` token, so the expected rewrite is
    known without parsing: `before + token + after`."""

    before: bytes
    token: bytes
    after: bytes

    @property
    def body(self) -> bytes:
        return self.before + self.token + self.after

    def rewritten(self, model: str) -> bytes:
        """The body as it must reach the server: only the token replaced,
        by the model as JSON writes it."""
        return self.before + json.dumps(model, ensure_ascii=False).encode() + self.after


def sha(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


# --- The Envoy and its model servers ----------------------------------------


@dataclass
class Sent:
    """A call and what came back: the response, what the server said it
    received, and how long the call took."""

    body: bytes
    response: Response
    seconds: float

    def header(self, name: str) -> str | None:
        return self.response.header(name)

    @property
    def status(self) -> int:
        return self.response.status

    @property
    def version(self) -> str | None:
        return self.header("x-canary-version")

    @property
    def reason(self) -> str | None:
        return self.header("x-canary-reason")

    @property
    def served_by(self) -> str | None:
        return self.response.served_by

    @property
    def upstream_sha(self) -> str | None:
        return self.header("x-upstream-body-sha256")

    @property
    def upstream_model_header(self) -> str | None:
        """The model header as the server got it ("" when absent), its bytes
        read as UTF-8 (http.client reads header values as latin-1)."""
        value = self.header("x-upstream-saw-model")
        return None if value is None else value.encode("latin-1").decode("utf-8")

    @property
    def answered_model(self) -> str | None:
        """The model the server answered with: the body's `model` it read."""
        try:
            return json.loads(self.response.body)["model"]
        except (ValueError, KeyError, TypeError):
            return None

    def reached_unchanged(self) -> bool:
        return (self.upstream_sha, self.header("x-upstream-body-length")) == (sha(self.body), str(len(self.body)))


class Chat:
    """The shared Envoy: calls, pushes, and the filter's counters."""

    def __init__(self, envoy: Envoy, current: dict):
        self.envoy = envoy
        self.current = current

    def use(self, cfg: dict) -> None:
        """Serve `cfg` (pushed only if another config is serving)."""
        if cfg != self.current:
            assert self.envoy.push(cfg), self.envoy.logs()[-2000:]
            self.current = copy.deepcopy(cfg)

    def post(
        self,
        body: bytes,
        headers: dict | list | None = None,
        path: str = CHAT,
        content_type: str | None = JSON,
        chunks: list[bytes] | None = None,
        pause: float = 0.0,
        timeout: float = 20,
        at_once: bool = False,
    ) -> Sent:
        """POSTs `body` with its content-length, or, given `chunks` (pieces
        of `body`), with transfer-encoding: chunked, one piece at a time,
        `pause` seconds apart (or, `at_once`, the headers and every chunk in
        one write, as a client that has its whole body at hand sends it)."""
        items = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
        if content_type:
            items.append(("content-type", content_type))
        c = http.client.HTTPConnection("127.0.0.1", self.envoy.ports["ingress"], timeout=timeout)
        started = time.monotonic()
        try:
            c.putrequest("POST", path, skip_accept_encoding=True)
            for k, v in items:
                c.putheader(k, v)
            if chunks is None:
                c.putheader("content-length", str(len(body)))
                c.endheaders(body)
            else:
                assert b"".join(chunks) == body
                c.putheader("transfer-encoding", "chunked")
                framed = [f"{len(piece):x}\r\n".encode() + piece + b"\r\n" for piece in chunks]
                if at_once:
                    c.endheaders(b"".join(framed) + b"0\r\n\r\n")
                    chunks = []
                else:
                    c.endheaders()
                for i, piece in enumerate(chunks):
                    if i and pause:
                        time.sleep(pause)
                    c.send(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                if not at_once:
                    c.send(b"0\r\n\r\n")
            r = c.getresponse()
            response = Response(r.status, r.getheaders(), r.read())
        finally:
            c.close()
        return Sent(body, response, time.monotonic() - started)

    def counts(self) -> Counter:
        """The filter's counters of bodies and models, and its requests by
        rollout and version."""
        out: Counter = Counter()
        for family in text_string_to_metric_families(self.envoy.prometheus()):
            for s in family.samples:
                if s.name == "canary_selector_model_unknown_total":
                    out[f"unknown:{s.labels['reason']}"] += s.value
                elif s.name == "canary_selector_bodies_read_total":
                    out["bodies_read"] += s.value
                elif s.name == "canary_selector_no_rollout_requests_total":
                    out["no_rollout"] += s.value
                elif s.name == "canary_selector_requests_total":
                    out[f"requests:{s.labels.get('rollout')}:{s.labels['version']}"] += s.value
        return out

    def baseline(self) -> Counter:
        """The counters once every call made so far is counted (each
        worker flushes its counts on its tick, 200 ms for a config that
        reads bodies, a second for one that does not)."""
        time.sleep(0.5 if self.reads_bodies() else 1.2)
        return self.counts()

    def reads_bodies(self) -> bool:
        c = self.current
        rollouts = c.get("rollouts", [c])
        return any(
            "models" in r or r.get("stickiness", {}).get("userIdBodyFields") or any("model" in v for v in r["versions"])
            for r in rollouts
        )

    def counted(self, before: Counter, expected: dict, only=("unknown:", "bodies_read", "no_rollout")) -> None:
        """Waits for the counters to move by `expected` from `before`, then
        checks that those starting with `only` moved by exactly that (a
        request counted twice, or a body read that should not be, fails)."""
        deadline = time.monotonic() + 5
        while True:
            moved = self.counts() - before
            if all(moved[k] >= v for k, v in expected.items()) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        time.sleep(0.5)  # a tick or two more: nothing else comes
        moved = self.counts() - before
        got = {k: v for k, v in moved.items() if k.startswith(only)}
        want = {k: v for k, v in expected.items() if v and k.startswith(only)}
        assert got == want, f"counted {got}, expected {want}"
        for k, v in expected.items():
            if not k.startswith(only):
                assert moved[k] == v, (k, moved[k], v)


@pytest.fixture(scope="module")
def chat_envoy(tmp_path_factory):
    envoy = Envoy(tmp_path_factory.mktemp("models") / "envoy", config(), bootstrap_hook=chat_routes)
    envoy.start()
    servers = [openai_models.serve(v, envoy.ports[v], CHUNK_DELAY) for v in ("chat-v1", "chat-v2")]
    try:
        yield Chat(envoy, config())
    finally:
        envoy.stop()
        for s in servers:
            s.shutdown()


@pytest.fixture
def chat(chat_envoy: Chat) -> Chat:
    """The shared Envoy, serving the shared config."""
    chat_envoy.use(config())
    return chat_envoy


# --- Which rollout takes a call ---------------------------------------------


def test_the_model_named_first_or_last_in_the_body_picks_the_rollout(chat):
    """A client names the model anywhere in the body, after a long
    conversation too: the filter reads the whole body for it, and the call
    takes the model's rollout, its user on their sticky version."""
    cfg = config()
    before = chat.baseline()
    routed = Counter()
    for model_last in (False, True):
        for user in USERS[:12]:
            body = chat_body(LLAMA, size=300_000, model_last=model_last)
            sent = chat.post(body, {"x-user-id": user})
            want = expected_version(entry(cfg, "llama"), user)
            assert (sent.status, sent.version, sent.reason) == (200, want, "sticky"), (user, model_last)
            assert sent.served_by == want
            assert sent.answered_model == (FINE_TUNE if want == "chat-v2" else LLAMA)
            routed[f"requests:llama:{want}"] += 1
        # The same body naming a model the llama rollout does not list.
        sent = chat.post(chat_body("mistral-7b", size=300_000, model_last=model_last), {"x-user-id": "user-1"})
        assert sent.version == expected_version(entry(cfg, "other"), "user-1"), model_last
    assert set(routed) == {"requests:llama:chat-v1", "requests:llama:chat-v2"}
    chat.counted(before, {"bodies_read": 26, **routed})


def test_the_model_header_names_the_model_before_the_body(chat):
    """With `modelHeader`, a call that names its model in the header is
    routed by it, and its body is not read unless its version rewrites the
    model: a body that is not even JSON goes through untouched."""
    cfg = config()
    before = chat.baseline()
    (stable,) = users_on(cfg, "llama", "chat-v1", 1)
    sent = chat.post(b"this is not JSON", {"x-user-id": stable, "x-gateway-model-name": LLAMA})
    assert (sent.status, sent.version, sent.served_by) == (200, "chat-v1", "chat-v1")
    assert sent.reached_unchanged() and sent.upstream_model_header == LLAMA
    chat.counted(before, {})  # no body read, no model unknown

    # The header wins over the body: another model in the header, the
    # fallback; and no body is read for it.
    (other_stable,) = users_on(cfg, "other", "other-v1", 1)
    sent = chat.post(chat_body(LLAMA), {"x-user-id": other_stable, "x-gateway-model-name": "mistral-7b"})
    assert sent.version == "other-v1" and sent.reached_unchanged()
    assert sent.upstream_model_header == "mistral-7b"
    chat.counted(before, {})

    # A version that rewrites the model reads the body to do it.
    (canary,) = users_on(cfg, "llama", "chat-v2", 1)
    body = chat_body(LLAMA)
    sent = chat.post(body, {"x-user-id": canary, "x-gateway-model-name": LLAMA})
    assert (sent.version, sent.answered_model, sent.upstream_model_header) == ("chat-v2", FINE_TUNE, FINE_TUNE)
    chat.counted(before, {"bodies_read": 1})


UNKNOWN = [
    # (why, body, content type)
    ("absent", obj(messages(), field("user", "x")), JSON),
    ("not_string", obj(field("model", 7), messages()), JSON),
    ("not_string", obj(field("model", None), messages()), JSON),
    ("not_string", obj(field("model", [LLAMA]), messages()), JSON),
    ("duplicate", obj(field("model", LLAMA), messages(), field("model", LLAMA)), JSON),
    ("duplicate", obj(field("model", "mistral-7b"), field("model", LLAMA)), JSON),
    ("duplicate", b'{"model":"llama-3-8b","mod\\u0065l":"llama-3-8b"}', JSON),
    ("not_json_content_type", chat_body(LLAMA), "text/plain"),
    ("not_json_content_type", chat_body(LLAMA), None),
    ("no_body", b"", JSON),
]


def test_a_model_the_filter_cannot_know_takes_the_fallback_and_is_counted(chat):
    """No model, a model that is not a string, the model twice (servers keep
    the last copy and parsers differ: no copy routes), a body that is not
    JSON by its content type, no body: the call takes the path's fallback
    rollout, its body as sent, and the reason is counted."""
    cfg = config()
    users = users_on(cfg, "other", "other-v1", len(UNKNOWN))
    before = chat.baseline()
    for (why, body, content_type), user in zip(UNKNOWN, users):
        sent = chat.post(body, {"x-user-id": user}, content_type=content_type)
        assert (sent.status, sent.version, sent.reason) == (200, "other-v1", "sticky"), (why, body[:60])
        assert sent.reached_unchanged(), why
        assert sent.upstream_model_header == "", f"{why}: the filter named a model it did not know"
    chat.counted(before, Counter(f"unknown:{why}" for why, _, _ in UNKNOWN) + Counter(
        {"bodies_read": sum(why not in ("not_json_content_type", "no_body") for why, _, _ in UNKNOWN)}
    ))


def test_an_unlisted_model_takes_the_fallback_or_no_rollout(chat):
    """A model no rollout lists takes the fallback rollout of its path, with
    its own split; on a path with no fallback, no rollout takes the call: it
    goes on untouched but for the routing header the client sent, removed so
    that a client cannot pick a version."""
    cfg = config()
    before = chat.baseline()
    for user in USERS[:20]:
        sent = chat.post(chat_body("mistral-7b"), {"x-user-id": user})
        want = expected_version(entry(cfg, "other"), user)
        assert (sent.status, sent.version, sent.reason, sent.served_by) == (200, want, "sticky", server_of(want))
    for body in (chat_body("mistral-7b"), obj(messages())):
        sent = chat.post(body, {"x-user-id": "user-1", "x-canary-version": "chat-v2"}, path=COMPLETIONS)
        assert sent.status == 200
        assert sent.served_by == "chat-v1", "the client's routing header reached the router"
        assert sent.header("x-upstream-saw-version") == ""
        assert sent.version is None and sent.reason is None
        assert sent.reached_unchanged()
        # The model still routes the call: KServe's model-based routes
        # match the header the filter writes, whichever rollout took it.
        assert sent.upstream_model_header == ("mistral-7b" if b"mistral" in body else "")
    chat.counted(before, {"no_rollout": 2, "unknown:absent": 1, "bodies_read": 22})


def test_the_user_id_comes_from_the_body_after_the_headers_and_before_the_cookies(chat):
    """`userIdBodyFields`: a user who names themselves only in the OpenAI
    body's `user` sticks to one version by the documented formula; a
    `userIdHeaders` id comes first, the body before a cookie."""
    llama = entry(config(), "llama")
    seen = Counter()
    for user in USERS[:60]:
        versions = {chat.post(chat_body(LLAMA, user=user)).version for _ in range(2)}
        assert versions == {expected_version(llama, user)}, user
        seen[expected_version(llama, user)] += 1
    assert 0.3 < seen["chat-v2"] / 60 < 0.7, seen
    # Two ids the formula sends to different versions.
    a = users_on(config(), "llama", "chat-v1", 1)[0]
    b = users_on(config(), "llama", "chat-v2", 1)[0]
    assert chat.post(chat_body(LLAMA, user=b), {"x-user-id": a}).version == "chat-v1"
    assert chat.post(chat_body(LLAMA, user=a), {"x-user-id": b}).version == "chat-v2"
    assert chat.post(chat_body(LLAMA, user=b), {"cookie": f"user_id={a}"}).version == "chat-v2"
    assert chat.post(chat_body(LLAMA, user=a), {"cookie": f"user_id={b}"}).version == "chat-v1"
    assert chat.post(chat_body(LLAMA), {"cookie": f"user_id={b}"}).version == "chat-v2"
    sent = chat.post(chat_body(LLAMA))
    assert sent.reason == "anonymous" and sent.version in ("chat-v1", "chat-v2")
    # A rule holds before any id.
    assert chat.post(chat_body(LLAMA, user=a), {"x-canary-tester": "true"}).reason == "rule"


def rewrite_cases() -> list[tuple[str, Token]]:
    """Bodies whose model token sits where a rewrite can go wrong."""
    big = messages(300_000)
    # A body whose model token straddles byte 65,536, where the filter's
    # 64 KiB slices of the body meet.
    head = b'{"messages":[{"role":"user","content":"' + b"x" * 70_000 + b'"}],"user":"u","model":'
    straddle_pad = 65_536 - 5 - len(b'{"pad":"",' + b'"model":')
    return [
        ("first", Token(b'{"model":', b'"llama-3-8b"', b"," + big + b"}")),
        ("last", Token(b"{" + big + b',"model":', b'"llama-3-8b"', b"}")),
        ("last byte", Token(head, b'"llama-3-8b"', b"}")),
        ("across 64 KiB", Token(b'{"pad":"' + b"p" * straddle_pad + b'","model":', b'"llama-3-8b"', b"," + big + b"}")),
        ("spaced", Token(b'{\n  "model" :\t ', b'"llama-3-8b"', b' ,\n  "messages": [] }\n')),
        ("escaped model", Token(b'{"model":', b'"llama\\u002d3-8b"', b',"stream":false}')),
        ("escaped key", Token(b'{"mod\\u0065l":', b'"llama-3-8b"', b"," + messages() + b"}")),
        ("not ASCII around", Token('{"user":"Zoë","model":'.encode(), b'"llama-3-8b"', ',"x":"日本"}'.encode())),
    ]


def test_the_rewrite_reaches_the_server_byte_for_byte(chat):
    """A version with `model` replaces the body's model token, and nothing
    else: the server gets the body as sent with only that string changed
    (JSON-escaped), with its content-length right. A shorter name, and one
    that JSON escapes and is not ASCII, likewise; a version without `model`
    leaves the body as sent."""
    cfg = config()
    (canary,) = users_on(cfg, "llama", "chat-v2", 1)
    (stable,) = users_on(cfg, "llama", "chat-v1", 1)
    (other_canary,) = users_on(cfg, "other", "other-v2", 1)
    for name, token in rewrite_cases():
        sent = chat.post(token.body, {"x-user-id": canary})
        want = token.rewritten(FINE_TUNE)
        assert (sent.status, sent.version) == (200, "chat-v2"), name
        assert (sent.upstream_sha, sent.header("x-upstream-body-length")) == (sha(want), str(len(want))), name
        assert sent.header("x-upstream-content-length") == str(len(want)), name
        assert sent.answered_model == FINE_TUNE, name
        sent = chat.post(token.body, {"x-user-id": stable})
        assert sent.version == "chat-v1" and sent.reached_unchanged(), name
        # The fallback's canary: a longer name in, a shorter one out.
        unlisted = Token(token.before, b'"gpt-4o-mini-2024-07-18"', token.after)
        sent = chat.post(unlisted.body, {"x-user-id": other_canary})
        want = unlisted.rewritten(ODD)
        assert sent.version == "other-v2", name
        assert (sent.upstream_sha, sent.header("x-upstream-content-length")) == (sha(want), str(len(want))), name
        assert sent.answered_model == ODD, name


def test_the_model_header_is_written_when_learnt_from_the_body_and_when_rewritten(chat):
    """With `modelHeader`, the filter writes the model it routed by into the
    header (model-based routes behind it match it with no body-based router
    in front), and the version's model when it rewrites; a model named by
    the client in the header stays as sent unless the version rewrites it.
    A model no rollout takes is written too; a model a header cannot carry
    as it is (a CR LF would end the header, and start another, on an HTTP/1
    upstream) is never written."""
    cfg = config()
    (stable,) = users_on(cfg, "llama", "chat-v1", 1)
    (canary,) = users_on(cfg, "llama", "chat-v2", 1)
    (other_stable,) = users_on(cfg, "other", "other-v1", 1)
    (other_canary,) = users_on(cfg, "other", "other-v2", 1)
    cases = [
        ({"x-user-id": stable}, LLAMA, LLAMA),
        ({"x-user-id": canary}, LLAMA, FINE_TUNE),
        ({"x-user-id": canary, "x-gateway-model-name": LLAMA}, LLAMA, FINE_TUNE),
        ({"x-user-id": stable, "x-gateway-model-name": LLAMA}, "whatever the body says", LLAMA),
        ({"x-user-id": other_stable}, "mistral-7b", "mistral-7b"),
        ({"x-user-id": other_canary}, "mistral-7b", ODD),
    ]
    for headers, body_model, upstream in cases:
        sent = chat.post(chat_body(body_model), headers)
        assert sent.upstream_model_header == upstream, (headers, body_model)
    for path in (CHAT, COMPLETIONS):  # the fallback rollout, and no rollout
        sent = chat.post(chat_body("mistral-7b"), {"x-user-id": other_stable}, path=path)
        assert sent.upstream_model_header == "mistral-7b", path
        for unwritable in ("mistral\r\nx-canary-tester: true", "mistral\n", " mistral", "mistral\t", "\u0000", ""):
            sent = chat.post(chat_body(unwritable), {"x-user-id": other_stable}, path=path)
            assert (sent.status, sent.upstream_model_header) == (200, ""), (path, unwritable)
            assert sent.reached_unchanged(), (path, unwritable)


def test_a_body_over_max_body_bytes_is_not_read_and_passes_on(chat):
    """A body longer than `maxBodyBytes` is not read: its model is unknown
    (`too_large`), the call takes the fallback and reaches the server as
    sent, never answered 413. By its content-length it is known at the
    headers: a body of exactly the limit is read. A body without
    content-length is read only if it arrives whole at once: Envoy adds each
    read to its buffer before the filter sees it, so a held streamed body
    could pass the buffer limit. One that streams passes on unread."""
    cfg = config()
    users = users_on(cfg, "other", "other-v1", 3)
    (stable,) = users_on(cfg, "llama", "chat-v1", 1)
    before = chat.baseline()
    body = sized(MiB + 1)
    sent = chat.post(body, {"x-user-id": users[0]})
    assert (sent.status, sent.version) == (200, "other-v1") and sent.reached_unchanged()
    chat.counted(before, {"unknown:too_large": 1})
    # On a path with no rollout of any model, no rollout takes it: counted
    # all the same.
    sent = chat.post(body, {"x-user-id": users[0]}, path=COMPLETIONS)
    assert (sent.status, sent.version) == (200, None) and sent.reached_unchanged()
    chat.counted(before, {"unknown:too_large": 2, "no_rollout": 1})
    before = chat.baseline()

    at_limit = sized(MiB)
    sent = chat.post(at_limit, {"x-user-id": stable})
    assert (sent.status, sent.version, sent.answered_model) == (200, "chat-v1", LLAMA)
    assert sent.reached_unchanged()
    chat.counted(before, {"bodies_read": 1})

    # A body without content-length is never held: Envoy adds each read to
    # its buffer before the filter sees it, so a held streamed body could
    # pass the buffer limit. It passes on unread (`streamed`), whatever its
    # size, sent at once or in pieces.
    before = chat.baseline()
    small = chat_body(LLAMA)
    for body, chunk, at_once in [(small, 100, True), (sized(64 * 1024), 16 * 1024, False),
                                 (sized(MiB // 2 + 1), 16 * 1024, False), (sized(MiB), 64 * 1024, False),
                                 (sized(3 * MiB), MiB, False)]:
        sent = chat.post(body, {"x-user-id": users[1]}, chunks=pieces(body, chunk), at_once=at_once)
        assert (sent.status, sent.version) == (200, "other-v1"), (len(body), chunk, sent.response.body[:80])
        assert sent.reached_unchanged(), (len(body), chunk)
    chat.counted(before, {"unknown:streamed": 5})

    # Streamed past a smaller limit.
    small = config() | {"maxBodyBytes": 256 * 1024}
    chat.use(small)
    before = chat.baseline()
    KiB = 1024
    for size, chunk in [(300 * KiB, 64 * KiB), (2 * MiB, 64 * KiB), (2 * MiB, MiB), (300 * KiB, 300 * KiB)]:
        body = sized(size)
        sent = chat.post(body, {"x-user-id": users[1]}, chunks=pieces(body, chunk))
        assert (sent.status, sent.version) == (200, "other-v1"), (size, chunk, sent.response.body[:80])
        assert sent.reached_unchanged(), (size, chunk)
    # Each is counted once: `too_large` if its first read already passed the
    # limit, else `streamed`.
    time.sleep(0.5)
    moved = chat.counts() - before
    assert moved["unknown:streamed"] + moved["unknown:too_large"] == 4, moved


def test_a_body_near_the_default_max_body_bytes_is_never_answered_413(chat):
    """The contract: never a 413 on the filter's account, with the default
    `maxBodyBytes` and Envoy's default buffer limit (both 1 MiB). A body
    streamed one byte past the limit, in reads of every size (it passes on
    unread); a body of exactly the limit whose version rewrites the model to
    a longer name (the rewrite would take it past the limit: it passes on as
    sent, counted `too_large`)."""
    (user,) = users_on(config(), "other", "other-v1", 1)
    for size in (MiB + 1, 2 * MiB):
        body = sized(size)
        for chunk in (16 * 1024, 64 * 1024, 256 * 1024, MiB):
            sent = chat.post(body, {"x-user-id": user}, chunks=pieces(body, chunk))
            assert sent.status == 200, (size, chunk, sent.status, sent.response.body[:80])
    before = chat.baseline()
    body = sized(MiB)
    (canary,) = users_on(config(), "llama", "chat-v2", 1)
    sent = chat.post(body, {"x-user-id": canary})
    assert (sent.status, sent.version) == (200, "chat-v2"), (sent.status, sent.response.body[:80])
    assert sent.reached_unchanged(), "a rewrite past the limit is not made"
    chat.counted(before, {"unknown:too_large": 1, "bodies_read": 1})


def pieces(body: bytes, size: int) -> list[bytes]:
    return [body[i : i + size] for i in range(0, len(body), size)]


def test_a_chunked_upload_is_never_held_and_passes_on_unread(chat):
    """A client that sends its body chunked (transfer-encoding: chunked, no
    content-length), in one write or in pieces with pauses (cut inside the
    `model` key and value): the filter does not hold it, since a held
    streamed body could pass Envoy's buffer limit (Envoy adds a read to its
    buffer before the filter sees it, and answers 413). Its model is
    unknown (`streamed`): it takes the fallback and reaches the server as
    sent, chunked. With the model in `modelHeader` it is routed by it."""
    cfg = config()
    token = Token(b'{"messages":[{"role":"user","content":"hi"}],"user":"u","model":', b'"llama-3-8b"', b',"n":1}')
    body = token.body
    cut = [body.index(b'"model"') + 3, body.index(b"llama") + 4, len(body) - 3]
    chunks = [body[: cut[0]], body[cut[0] : cut[1]], body[cut[1] : cut[2]], body[cut[2] :]]
    (other,) = users_on(cfg, "other", "other-v1", 1)
    before = chat.baseline()
    for at_once, pause in [(True, 0.0), (False, 0.15)]:
        sent = chat.post(body, {"x-user-id": other}, chunks=chunks, pause=pause, at_once=at_once)
        assert (sent.status, sent.version) == (200, "other-v1")
        assert sent.reached_unchanged()
        assert sent.header("x-upstream-transfer-encoding") == "chunked"
    chat.counted(before, {"unknown:streamed": 2})
    (stable,) = users_on(cfg, "llama", "chat-v1", 1)
    sent = chat.post(body, {"x-user-id": stable, "x-gateway-model-name": LLAMA}, chunks=chunks, pause=0.05)
    assert (sent.status, sent.version) == (200, "chat-v1") and sent.reached_unchanged()


def test_a_stream_s_first_event_reaches_the_client_before_the_server_sends_its_last(chat):
    """`"stream": true`: the server sends an event every CHUNK_DELAY
    seconds; the client reads the first one while the server has not sent
    the last, so the filter passes the response on as it comes (it buffers
    only a request's body, never a response)."""
    (canary,) = users_on(config(), "llama", "chat-v2", 1)
    c = http.client.HTTPConnection("127.0.0.1", chat.envoy.ports["ingress"], timeout=20)
    body = chat_body(LLAMA, stream=True)
    started = time.monotonic()
    c.request("POST", CHAT, body=body, headers={"content-type": JSON, "x-user-id": canary})
    r = c.getresponse()
    assert r.status == 200 and r.getheader("content-type") == "text/event-stream"
    assert r.getheader("x-canary-version") == "chat-v2"
    events, first, last = [], None, None
    while True:
        line = r.readline()
        assert line, "the stream ended before data: [DONE]"
        if line.startswith(b"data: "):
            first = first or time.monotonic()
            events.append(line[6:].strip())
            if events[-1] == b"[DONE]":
                last = time.monotonic()
                break
    c.close()
    spread = len(openai_models.WORDS) - 1
    # The server slept CHUNK_DELAY between its events: had anything held the
    # response back, they would arrive together.
    assert last - first >= 0.8 * spread * CHUNK_DELAY, (first - started, last - first)
    answers = [json.loads(e) for e in events[:-1]]
    assert [a["model"] for a in answers] == [FINE_TUNE] * len(openai_models.WORDS)
    assert "".join(a["choices"][0]["delta"]["content"] for a in answers) == "".join(openai_models.WORDS)


def guarded() -> dict:
    """The shared config with a second model, mistral, whose canary fails
    (its route answers 503), and a guard on both models' rollouts."""
    cfg = config()
    guard = {"windowSeconds": 10, "minRequests": 10, "maxErrorRate": 0.2}
    entry(cfg, "llama")["guard"] = guard
    mistral = rollout("mistral", two("mistral"), pathPrefixes=[CHAT], models=["mistral-7b"], guard=guard)
    cfg["rollouts"].insert(1, mistral)
    return cfg


def test_a_failing_model_version_trips_only_its_own_rollout(chat):
    """Two models on one path, told apart by the body: mistral's canary
    fails, its guard trips and its users go back to mistral-v1; llama's
    canary users, on the same path, stay where they are."""
    cfg = guarded()
    chat.use(cfg)
    envoy = chat.envoy
    started = time.monotonic()
    while envoy.metric("canary_selector_guard_trips_total", rollout="mistral") == 0:
        assert time.monotonic() - started < 20, "mistral's guard did not trip"
        for user in USERS[:30]:
            chat.post(chat_body("mistral-7b"), {"x-user-id": user})
            chat.post(chat_body(LLAMA), {"x-user-id": user})
    time.sleep(0.6)  # every worker ticks
    for user in users_on(cfg, "mistral", "mistral-v2", 10):
        sent = chat.post(chat_body("mistral-7b"), {"x-user-id": user})
        assert (sent.status, sent.version, sent.reason) == (200, "mistral-v1", "guard"), user
    for user in users_on(cfg, "llama", "chat-v2", 10):
        sent = chat.post(chat_body(LLAMA), {"x-user-id": user})
        assert (sent.status, sent.version, sent.reason, sent.served_by) == (200, "chat-v2", "sticky", "chat-v2"), user
    time.sleep(0.5)
    assert envoy.metric("canary_selector_guard_tripped", rollout="mistral") == 1
    assert envoy.metric("canary_selector_guard_tripped", rollout="llama") == 0
    assert "guard tripped of rollout mistral: mistral-v2 error rate above maxErrorRate" in envoy.wait_for_log(
        "guard tripped of rollout mistral"
    )


BAD = [
    # (reason counted, body)
    ("not_json", b'{"model": "llama-3-8b", "messages": [}'),
    ("not_json", b'{"model": "llama-3-8b"} and more'),
    ("not_json", b"{'model': 'llama-3-8b'}"),
    ("not_object", b'[{"model": "llama-3-8b"}]'),
    ("not_object", b'"llama-3-8b"'),
    ("not_object", b"null"),
    ("truncated", b'{"model": "llama-3-8b", "messages": [{"role": "us'),
    ("truncated", b'{"model": "llama-3-8b"'),
    ("not_utf8", b'{"model": "llama-3-8b", "messages": [{"role": "user", "content": "\xff\xfe caf\xe9"}]}'),
    ("not_utf8", b'{"model": "llama\\ud800", "messages": []}'),
    ("too_long", b'{"model": "' + b"l" * 5000 + b'", "messages": []}'),
    ("too_deep", b'{"model": "llama-3-8b", "x": ' + b"[" * 200 + b"]" * 200 + b"}"),
    ("too_long_key", b'{"' + b"k" * 10_000 + b'": 1, "model": "llama-3-8b"}'),
    ("empty_body", b"  \n "),
]


def test_bad_bodies_are_never_changed_and_take_the_model_unknown_path(chat):
    """Malformed JSON, a body that is no object, a truncated one, bytes that
    are not UTF-8, a huge model string, nesting past the bound, a huge key,
    only whitespace: never a changed body (the server gets what was sent,
    byte for byte), the fallback rollout, and the reason counted once. A
    huge string the filter does not need (a long message) is no reason."""
    cfg = config()
    users = users_on(cfg, "other", "other-v1", len(BAD))
    before = chat.baseline()
    for (why, body), user in zip(BAD, users):
        sent = chat.post(body, {"x-user-id": user})
        assert (sent.status, sent.version) == (200, "other-v1"), (why, body[:50])
        assert sent.reached_unchanged(), why
        assert sent.upstream_model_header == "", why
    chat.counted(before, Counter(f"unknown:{why}" for why, _ in BAD) + Counter({"bodies_read": len(BAD)}))
    # A 900 KB message is read past, not a reason.
    (canary,) = users_on(cfg, "llama", "chat-v2", 1)
    long_message = obj(field("messages", [{"role": "user", "content": "a" * 900_000}]), field("model", LLAMA))
    sent = chat.post(long_message, {"x-user-id": canary})
    assert (sent.version, sent.answered_model) == ("chat-v2", FINE_TUNE)


def test_a_call_that_needs_no_body_is_decided_at_its_headers(chat):
    """Only calls whose rollout, id or version depends on the body wait for
    it: a KServe V1 call with a JSON body is decided at its headers, as in a
    config that reads no body; and a config without `models`,
    `userIdBodyFields` or a version's `model` never reads one."""
    cfg = config()
    before = chat.baseline()
    for user in USERS[:20]:
        body = b'{"instances": [[6.8, 2.8, 4.8, 1.4]], "model": "llama-3-8b"}'
        sent = chat.post(body, {"x-user-id": user}, path="/v1/models/iris:predict")
        assert (sent.version, sent.reason) == (expected_version(entry(cfg, "iris"), user), "sticky")
        assert sent.reached_unchanged() and sent.upstream_model_header == ""
    chat.counted(before, {})

    no_bodies = {"rollouts": [rollout("llama", two("chat"), pathPrefixes=[CHAT])]}
    chat.use(no_bodies)
    before = chat.baseline()
    for user in USERS[:20]:
        sent = chat.post(chat_body(LLAMA, user=user), {"x-user-id": user})
        assert sent.version == expected_version(entry(no_bodies, "llama"), user) and sent.reached_unchanged()
    time.sleep(1.3)  # this config's tick is once a second
    chat.counted(before, {})


# --- Envoy that delivers no body while the filter holds the headers ---------


@dataclass
class Bodiless:
    chat: Chat
    before: Counter
    # The first three calls that waited for a body, ten after them, and
    # five after those on a path no rollout of any model takes.
    rescued: list[Sent]
    after: list[Sent]
    unclaimed: list[Sent]

    def moved(self) -> Counter:
        return self.chat.counts() - self.before


@pytest.fixture(scope="module")
def bodiless(tmp_path_factory):
    """An Envoy whose Wasm filter lacks allow_on_headers_stop_iteration (the
    default): it hands the filter no body while the filter holds the
    headers. One worker, so the filter's count of such calls is one VM's."""
    envoy = Envoy(
        tmp_path_factory.mktemp("bodiless") / "envoy",
        config(),
        bootstrap_hook=chat_routes,
        concurrency=1,
        allow_on_headers_stop_iteration=False,
    )
    envoy.start()
    servers = [openai_models.serve(v, envoy.ports[v], CHUNK_DELAY) for v in ("chat-v1", "chat-v2")]
    chat = Chat(envoy, config())
    try:
        # The calls, once for the module: the tests read what they did.
        before = chat.baseline()
        rescued = [chat.post(chat_body(LLAMA), {"x-user-id": u}) for u in users_on(config(), "other", "other-v1", 3)]
        after = [chat.post(chat_body(LLAMA), {"x-user-id": u}) for u in USERS[:10]]
        unclaimed = [chat.post(chat_body(LLAMA), {"x-user-id": u}, path=COMPLETIONS) for u in USERS[:5]]
        time.sleep(0.6)  # flushed
        yield Bodiless(chat, before, rescued, after, unclaimed)
    finally:
        envoy.stop()
        for s in servers:
            s.shutdown()


def test_without_bodies_delivered_a_call_is_decided_without_its_body_and_the_filter_stops_waiting(bodiless):
    """Without allow_on_headers_stop_iteration, a call that waits for its
    body is never left waiting: the filter decides it without the body
    within a fraction of a second (model unknown, `not_delivered`: the
    fallback rollout), the body reaches the server as sent; after three
    such calls it stops waiting, so later calls are not delayed, and it
    says why in Envoy's log."""
    for sent in bodiless.rescued:
        assert (sent.status, sent.version) == (200, "other-v1")
        assert sent.reached_unchanged()
        assert sent.seconds < 1.0, f"a waiting call took {sent.seconds:.2f} s"
    later = sorted(s.seconds for s in bodiless.after)
    assert later[len(later) // 2] < 0.1 and min(s.seconds for s in bodiless.rescued) > later[len(later) // 2], (
        [round(s.seconds, 3) for s in bodiless.rescued],
        [round(x, 3) for x in later],
    )
    for sent in bodiless.after:
        assert sent.status == 200 and sent.reached_unchanged()
        assert sent.version in ("other-v1", "other-v2"), "routed by a body the filter was never given"
    assert bodiless.moved()["unknown:not_delivered"] >= 3
    log = bodiless.chat.envoy.wait_for_log("Envoy delivered none")
    assert "turn on the Wasm filter's allow_on_headers_stop_iteration" in log


def test_after_the_filter_stops_waiting_each_call_of_unknown_model_is_still_counted(bodiless):
    """The counter is what tells an operator that calls of a model-scoped
    path take the fallback for want of a body: it must go on counting them
    once the filter has stopped waiting (here as `not_delivered`, or any
    reason: every call of the fixture took the fallback), and count those
    of a path with no fallback, which no rollout takes, too."""
    for sent in bodiless.unclaimed:
        assert (sent.status, sent.version, sent.served_by) == (200, None, "chat-v1")
        assert sent.reached_unchanged() and sent.upstream_model_header == ""
    moved = bodiless.moved()
    assert moved["unknown:not_delivered"] == len(bodiless.rescued) + len(bodiless.after) + len(bodiless.unclaimed)
    assert moved["no_rollout"] == len(bodiless.unclaimed)


# --- Contracts the filter breaks today --------------------------------------


def test_a_call_of_unknown_model_is_counted_once(chat):
    """`canary_selector_model_unknown_total` counts calls: a body that is not
    JSON, sent by a user of the fallback's canary (whose version would
    rewrite the model), is one call with one reason."""
    (other_canary,) = users_on(config(), "other", "other-v2", 1)
    before = chat.baseline()
    sent = chat.post(b'{"model": "llama-3-8b", "messages": [}', {"x-user-id": other_canary})
    assert sent.version == "other-v2" and sent.reached_unchanged()
    chat.counted(before, {"unknown:not_json": 1, "bodies_read": 1})


def test_a_version_that_could_not_rewrite_the_body_names_no_other_model_in_the_header(chat):
    """The model header and the body's model must not disagree because of
    the filter: a model-based route would send the call to the pool of one
    model while the server reads another. A body the filter could not read
    is not rewritten, so its header must not be either."""
    (other_canary,) = users_on(config(), "other", "other-v2", 1)
    sent = chat.post(b'{"model": "gpt-4o", "messages": [}', {"x-user-id": other_canary})
    assert sent.version == "other-v2" and sent.reached_unchanged()
    assert sent.upstream_model_header == "", "the header names a model the body does not"


# --- The demo ----------------------------------------------------------------


def test_the_demo_serves_the_readme_tour(start_envoy):
    """`make run`'s Envoy (envoy/envoy.yaml's routes) and config
    (envoy/plugin-config.json): the README's tour, the chat lines included;
    its `model` rollout takes every host and path, so the tests that start
    from it as a config of its own (conftest) decide as the demo does."""
    demo = json.loads((ROOT / "envoy" / "plugin-config.json").read_text())
    (model,) = [r for r in demo["rollouts"] if r["name"] == "model"]
    assert model["hosts"] == ["*"] and "pathPrefixes" not in model and "models" not in model
    envoy = start_envoy(demo)
    servers = [openai_models.serve(v, envoy.ports[v]) for v in ("chat-v1", "chat-v2")]
    chat = Chat(envoy, demo)
    try:
        r = envoy.request({"x-user-id": "user-27"}, body=b"{}")
        assert (r.served_by, r.header("x-canary-version")) == ("model-v2", "model-v2")
        assert envoy.request({"x-user-id": "alice"}, body=b"{}").served_by == "model-v1"
        assert envoy.request({"x-canary-tester": "true"}, body=b"{}").served_by == "model-v2"
        tour = b'{"model":"llama-3-8b","messages":[{"role":"user","content":"hi"}],"user":"bob"}'
        sent = chat.post(tour)
        assert (sent.status, sent.served_by, sent.version) == (200, "chat-v2", "chat-v2")
        assert (sent.upstream_model_header, sent.answered_model) == ("llama-3-8b-ft", "llama-3-8b-ft")
        shown = b'{"id": "chatcmpl-1", "object": "chat.completion", "model": "llama-3-8b-ft", '  # README
        assert sent.response.body.startswith(shown)
        sent = chat.post(tour.replace(b"bob", b"alice"))
        assert (sent.served_by, sent.version, sent.answered_model) == ("chat-v1", "chat-v1", "llama-3-8b")
        sent = chat.post(tour.replace(b"llama-3-8b", b"mistral-7b"))
        assert (sent.served_by, sent.version, sent.answered_model) == ("chat-v1", None, "mistral-7b")
    finally:
        for s in servers:
            s.shutdown()
