"""Reading manifests: a file's objects, the manifests of the Istio scenario
(those of the scenarios inside istio/ that other tests check left out), and
the files `kubectl apply -f` reads from a path."""

from __future__ import annotations

from pathlib import Path

import yaml

from .paths import ISTIO_DIR, NOT_MANIFESTS, ROOT


def load(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def demo_bootstrap() -> dict:
    """envoy/envoy.yaml, the local demo the sidecar tests are built from."""
    return yaml.safe_load((ROOT / "envoy" / "envoy.yaml").read_text())


# Scenarios of their own inside istio/, which other tests check.
# The mesh verdict's EnvoyProxy is applied on its own (docs/mesh-verdict.md),
# not with the KServe steps' `kubectl apply -f envoy/gateway/`; the chat
# model's manifests (docs/kserve-llm.md) are tests/kserve's LLM scenario.
OTHER_SCENARIOS = (
    ISTIO_DIR / "kserve",
    ROOT / "envoy" / "gateway" / "mesh-verdict",
    ISTIO_DIR / "kserve" / "llm",
    ROOT / "envoy" / "gateway" / "llm",
)


def manifest_files(directory: Path = ISTIO_DIR) -> list[Path]:
    """Every manifest under `directory`, subdirectories included, but those
    of another scenario inside it (istio/kserve/ is tests/kserve's) and the
    files that are not Kubernetes objects (the dashboard, the rule files)."""
    others = [d for d in OTHER_SCENARIOS if d != directory and d.is_relative_to(directory)]
    return sorted(
        p
        for p in directory.rglob("*")
        if p.suffix in (".yaml", ".yml", ".json")
        and p not in NOT_MANIFESTS
        and not any(p.is_relative_to(d) for d in others)
    )


def kubectl_files(path: Path) -> list[Path]:
    """What `kubectl apply -f path` reads: the file, or the directory's
    manifests (not its subdirectories; kubectl needs -R for those)."""
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and p.suffix in (".yaml", ".yml", ".json"))
    return [path]
