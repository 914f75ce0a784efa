"""The bucket formula's Python snippet in docs/config.md, run as a reader
would paste it: it gives the answers its comments show, and the same version
as the end-to-end tests' oracle (tests/e2e/harness.py) for every user of a
sample at several splits, so the page cannot drift from what is tested."""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
from harness import expected_version  # noqa: E402

PAGE = ROOT / "docs" / "config.md"


def snippet() -> str:
    text = PAGE.read_text()
    section = text[text.index("### The bucket formula"):]
    block = re.search(r"```python\n(.*?)```", section, re.S)
    assert block, "docs/config.md shows no Python snippet under the bucket formula"
    return block.group(1)


def test_the_snippet_gives_the_answers_its_comments_show():
    code = snippet()
    shown = re.findall(r"^(version_of\(.*\))\s+#\s+'([^']+)'$", code, re.M)
    assert len(shown) >= 2, "the snippet shows no worked examples"
    scope: dict = {}
    exec(code, scope)  # noqa: S102 - the page's own code
    for call, answer in shown:
        assert eval(call, scope) == answer, call  # noqa: S307


def test_the_snippet_agrees_with_the_tests_oracle():
    scope: dict = {}
    exec(snippet(), scope)  # noqa: S102
    version_of = scope["version_of"]
    splits = [
        [("model-v1", 90), ("model-v2", 10)],
        [("model-v1", 99.999), ("model-v2", 0.001)],
        [("a", 33.3), ("b", 33.3), ("c", 33.4)],
        [("stable", 0), ("canary", 100)],
    ]
    for versions in splits:
        config = {"versions": [{"name": n, "weight": w} for n, w in versions]}
        for i in range(2000):
            user = f"user-{i}"
            assert version_of(user, versions) == expected_version(config, user), (versions, user)
        salted = {**config, "stickiness": {"salt": "ramp-2"}}
        for i in range(200):
            assert version_of(f"u{i}", versions, "ramp-2") == expected_version(salted, f"u{i}")
