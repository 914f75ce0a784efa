"""Many models: one plugin, a rollout per InferenceService
(docs/many-models.md). Which rollout a request takes, the oracle the
many-models tests check the gateway against."""

from __future__ import annotations


def rollout_for(config: dict, authority: str) -> dict | None:
    """The rollout a request for `authority` takes (docs/many-models.md):
    the most specific host pattern (exact, the longest `*.` suffix, `*`),
    port and letter case ignored; the whole config when it has no
    `rollouts`; None when no rollout takes it. Path prefixes are not
    modelled (the manifests here have none)."""
    if "rollouts" not in config:
        return config
    hostname = authority.rsplit(":", 1)[0] if ":" in authority else authority
    hostname = hostname.lower().rstrip(".")

    def rank(pattern: str) -> int | None:
        if pattern == hostname:
            return 1 << 20
        if pattern.startswith("*.") and hostname.endswith(pattern[1:]):
            return len(pattern)
        return 0 if pattern == "*" else None

    ranked = [(rank(p.lower()), r) for r in config["rollouts"] for p in r["hosts"]]
    ranked = [(k, r) for k, r in ranked if k is not None]
    return max(ranked, key=lambda kr: kr[0])[1] if ranked else None
