"""Chat traffic through the gateway as a user sees it: OpenAI-style
conversations (`POST /v1/chat/completions`, the body's `messages` growing
turn by turn, `model` after them as OpenAI's Python SDK writes it), and the
README's decision for a chat rollout as the oracle (rules on headers, then
the first user id of userIdHeaders and userIdBodyFields, bucketed by the
documented formula)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import harness  # tests/e2e/harness.py

from .llm import fully_qualified

CHAT_PATH = "/v1/chat/completions"
MODEL = fully_qualified("kserve-llm", "chat")
JSON = {"content-type": "application/json"}


def expected(rollout: dict, headers: dict, body: dict) -> str | None:
    """The version the rollout gives the request (None: no user id, a
    random pick)."""
    values = {k.lower(): v for k, v in headers.items()}
    for rule in rollout.get("rules", []):
        conditions = rule["match"]["headers"]
        if all(values.get(h.lower()) == c["exact"] for h, c in conditions.items()):
            return rule["version"]
    stickiness = rollout.get("stickiness", {})
    for header in stickiness.get("userIdHeaders", []):
        user = values.get(header.lower(), "").strip(" \t")
        if user:
            return harness.expected_version(rollout, user)
    for name in stickiness.get("userIdBodyFields", []):
        user = body.get(name)
        if isinstance(user, str) and user.strip(" \t"):
            return harness.expected_version(rollout, user.strip(" \t"))
    return None


@dataclass
class Turn:
    """What one request sent and what came back."""

    body: bytes
    status: int
    served_by: str | None
    shown: str | None  # the response header that names the version
    upstream_model_header: str | None
    upstream_body_sha256: str | None
    answer: bytes


@dataclass
class Conversation:
    """One user's chat: each turn sends the whole history so far. The user
    id goes in the body's `user` (`in_header` False) or in x-user-id."""

    envoy: object
    user: str
    in_header: bool = False
    model: str = MODEL
    extra: dict = field(default_factory=dict)
    messages: list = field(default_factory=list)
    turns: list = field(default_factory=list)

    def body(self) -> dict:
        body = {"messages": self.messages, "model": self.model}
        if not self.in_header:
            body["user"] = self.user
        return body

    def headers(self) -> dict:
        return {**JSON, **({"x-user-id": self.user} if self.in_header else {}), **self.extra}

    def say(self, text: str, conn=None) -> Turn:
        self.messages.append({"role": "user", "content": text})
        sent = json.dumps(self.body(), separators=(",", ":")).encode()
        r = self.envoy.request(self.headers(), path=CHAT_PATH, body=sent, conn=conn)
        turn = Turn(
            sent,
            r.status,
            r.served_by,
            r.header("x-canary-version"),
            r.header("x-upstream-saw-model"),
            r.header("x-upstream-body-sha256"),
            r.body,
        )
        if r.status == 200:
            answer = json.loads(r.body)["choices"][0]["message"]
            self.messages.append({"role": answer["role"], "content": answer["content"]})
        self.turns.append(turn)
        return turn


def converse(envoy, rollout: dict, users, turns: int = 3, in_header: bool = False, extra: dict | None = None,
             model: str = MODEL, bbr: bool = False) -> dict[str, str]:
    """A conversation of `turns` turns per user: every turn lands on the
    version the oracle gives the user (the server that answered, the
    response header, the model header KServe's rule needs upstream, the body
    as sent); user -> its one version. `bbr`: a body-based router in front
    copies the body's `user` into x-user-id before the filter sees it."""
    served = {}
    conn = envoy.connection()
    for user in users:
        chat = Conversation(envoy, user, in_header, model, dict(extra or {}))
        for i in range(turns):
            turn = chat.say(f"turn {i} of {user}", conn)
            body = json.loads(turn.body)
            seen = {**chat.headers(), **({"x-user-id": body["user"]} if bbr and "user" in body else {})}
            want = expected(rollout, seen, body)
            assert turn.status == 200, (user, i, turn)
            assert (turn.served_by, turn.shown) == (want, want), (user, i, turn)
            assert turn.upstream_model_header == model, (user, i, turn)
            assert turn.upstream_body_sha256 == hashlib.sha256(turn.body).hexdigest(), "the body reached the model as sent"
        versions = {t.served_by for t in chat.turns}
        assert len(versions) == 1, f"{user} moved between versions within a conversation: {versions}"
        served[user] = versions.pop()
    return served
