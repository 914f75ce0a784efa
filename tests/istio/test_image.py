"""The plugin image, checked without a Docker engine: the Dockerfile is the
layout Istio's image fetcher reads, and `make image` hands it the module."""

import hashlib
import os
import re
import subprocess

import mesh
from harness import WASM

DOCKERFILE = mesh.ROOT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [(line.split()[0].upper(), " ".join(line.split()[1:])) for line in lines if line and not line.startswith("#")]


def test_the_dockerfile_is_a_single_layer_from_scratch_with_the_module_at_plugin_wasm():
    # Istio's fetcher takes a single-layer image and reads the file named
    # plugin.wasm from it; RUN, ADD or a second COPY would add layers.
    assert instructions() == [("FROM", "scratch"), ("COPY", "plugin.wasm /plugin.wasm")]


def make(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["make", "--no-print-directory", *args],
        cwd=mesh.ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "MAKEFLAGS": ""},
    )


def test_make_image_builds_from_a_context_holding_only_the_module():
    image = "registry.example.com/ml/canary-selector:test"
    # DOCKER=true runs the recipe with a docker that does nothing.
    r = make("image", f"IMAGE={image}", "DOCKER=true")
    assert r.returncode == 0, r.stdout + r.stderr
    context = mesh.ROOT / "target" / "image"
    assert sorted(p.name for p in context.iterdir()) == ["plugin.wasm"]
    module = WASM.read_bytes()
    assert (context / "plugin.wasm").read_bytes() == module
    assert module[:4] == b"\0asm"
    assert f"module sha256 {hashlib.sha256(module).hexdigest()}" in r.stdout
    commands = make("-n", "image", f"IMAGE={image}").stdout
    assert f"docker build --provenance=false -f Dockerfile -t {image} target/image" in commands


def test_make_push_pushes_the_image_and_wants_a_registry():
    image = "registry.example.com/ml/canary-selector:0.1.0"
    r = make("-n", "push", f"IMAGE={image}")
    assert r.returncode == 0 and f"docker push {image}" in r.stdout, r.stdout + r.stderr
    r = make("push", "IMAGE=canary-selector:0.1.0", "DOCKER=false")
    assert r.returncode != 0 and "set IMAGE=<registry>/<name>:<tag>" in r.stdout


def test_the_readme_builds_with_these_targets_and_the_wasmplugin_pulls_that_image(cluster):
    pushes = [s.argv for s in mesh.readme_steps() if s.argv[:2] == ["make", "push"]]
    assert len(pushes) == 1
    image = pushes[0][2].removeprefix("IMAGE=")
    assert mesh.wasm_fields(cluster.plugin())["url"] == f"oci://{image}"
