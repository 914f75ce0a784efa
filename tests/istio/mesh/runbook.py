"""The runbooks in the docs: a marked section of a page, its shell commands
as steps (each with its label and documented output), and kubectl's command
line as the cluster model carries it out."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field

from .cluster import Cluster, kind_of
from .paths import ROOT

README = ROOT / "README.md"
# The pages whose marked sections the tests run: the README and the manual beside it.
DOC_PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]


def split_kubectl(argv: list[str]) -> tuple[str, list[str], list[str]]:
    """kubectl argv -> (namespace, arguments, the command after `--`)."""
    namespace, args, rest = "", [], []
    i = 1
    while i < len(argv):
        if argv[i] in ("-n", "--namespace"):
            namespace, i = argv[i + 1], i + 2
        elif argv[i] == "--":
            rest = argv[i + 1 :]
            break
        else:
            args, i = args + [argv[i]], i + 1
    return namespace, args, rest


def flag(args: list[str], name: str) -> str:
    """The value after a kubectl flag."""
    return args[args.index(name) + 1]


def apply_or_patch(cluster: Cluster, namespace: str, args: list[str]) -> bool:
    """Carries out `kubectl apply -f FILE...` or `kubectl patch KIND NAME`
    (`args` as split_kubectl gives them) on the cluster; whether it was one
    of the two."""
    verb = args[0]
    if verb == "apply":
        for i, a in enumerate(args):
            if a == "-f":
                cluster.apply(ROOT / args[i + 1])
        return True
    if verb == "patch":
        cluster.patch(kind_of(args[1]), namespace, args[2], flag(args, "--type"), flag(args, "-p"))
        return True
    return False


def pipeline_stages(argv: list[str]) -> list[list[str]]:
    """A command line's argv (shlex's) split at its pipes: one argv per stage."""
    stages: list[list[str]] = [[]]
    for a in argv:
        if a == "|":
            stages.append([])
        else:
            stages[-1].append(a)
    assert all(stages), f"an empty stage in {shlex.join(argv)}"
    return stages


def run_pipeline(cluster: Cluster, argv: list[str]) -> tuple[str, list[str] | None]:
    """Carries out `kubectl get KIND NAME -o json | jq ... [| jq ...]` on the
    cluster, jq being the real jq run from the checkout (its `-f` files are
    the repository's); (what it prints, the last stage's argv if that is
    not jq, for the caller: `kubectl replace -f -`, say). `kubectl get`
    prints the object with its resourceVersion."""
    first, *rest = pipeline_stages(argv)
    assert first[0] == "kubectl", shlex.join(argv)
    namespace, args, _ = split_kubectl(first)
    assert args[0] == "get" and flag(args, "-o") == "json" and len(args) == 5, shlex.join(first)
    text = cluster.get_json(kind_of(args[1]), namespace, args[2])
    last = None
    for i, stage in enumerate(rest):
        if stage[0] != "jq":
            assert i == len(rest) - 1, f"only jq runs between kubectl get and the last command: {shlex.join(argv)}"
            last = stage
            break
        text = jq(stage, text)
    return text, last


def jq(argv: list[str], stdin: str) -> str:
    """The real jq on `stdin`, run from the checkout; its output, or an
    AssertionError with jq's error."""
    path = shutil.which("jq")
    if path is None:
        raise RuntimeError("jq not found: apt-get install jq (.ci/run does)")
    out = subprocess.run([path, *argv[1:]], input=stdin, capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, f"{shlex.join(argv)}: exit {out.returncode}: {out.stderr}"
    return out.stdout


def readme_section(name: str = "istio") -> str:
    """The text between `<!-- section: name -->` and its end marker, on
    whichever page of the docs holds it (README.md or docs/)."""
    start, end = f"<!-- section: {name} -->", f"<!-- end section: {name} -->"
    for page in DOC_PAGES:
        text = page.read_text()
        if start in text:
            assert end in text, f"{page.name} opens the {name} section but never ends it"
            return text.split(start, 1)[1].split(end, 1)[0]
    raise AssertionError(f"no page of the docs has the {name} section markers")


@dataclass
class Step:
    """One command line of a README shell block, with the comment above it
    (its label) and the lines printed below it (its documented output)."""

    section: str
    label: str
    line: str
    output: list[str] = field(default_factory=list)

    @property
    def argv(self) -> list[str]:
        return shlex.split(self.line)


COMMANDS = ("kubectl", "make", "sha256sum", "docker", "curl", "canary-selector")
# Commands that preview the next one (`canary-selector diff` before a patch):
# the label above them belongs to the command they preview.
PREVIEWS = ("canary-selector",)


def readme_steps(name: str = "istio") -> list[Step]:
    """Every command in the section's ```sh blocks, in order."""
    steps: list[Step] = []
    section = ""
    for part in re.split(r"(^```sh\n.*?^```$)", readme_section(name), flags=re.S | re.M):
        if not part.startswith("```sh"):
            headings = re.findall(r"^#+ (.+)$", part, re.M)
            section = headings[-1] if headings else section
            continue
        label = ""
        for line in part.splitlines()[1:-1]:
            if not line.strip():
                continue
            if line.startswith("#"):
                label = line.lstrip("# ").strip()
            elif line.split()[0] in PREVIEWS:
                steps.append(Step(section, "", line))
            elif line.split()[0] in COMMANDS:
                steps.append(Step(section, label, line))
                label = ""
            elif steps:
                steps[-1].output.append(line)
    return steps
