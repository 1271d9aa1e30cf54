"""The tree shows the architecture, and keeps showing it.

Layers, lowest first; a module may import its own layer and the ones below, never above:
a package is importable (``python -c "import meshctl.<pkg>"``) without anything above it.
The sandbox stands apart: it uses only the base layer.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys

import pytest

from tests.factories import REPO

MESHCTL = REPO / "meshctl"
LAYERS: list[set[str]] = [
    {"errors", "files", "ownership", "render", "report", "tables", "verdicts", "versions",
     "ca.pki", "durations", "envvars", "names", "probes", "split"},
    {"config"},
    {"topology"},
    {"kube", "istio", "revisions"},
    {"ca"},
    {"preflight", "manifests"},
    {"mesh", "traffic"},
    {"verify"},
    {"upgrade"},
    {"tasks", "cli"},
]
SANDBOX_MAY_USE = {"errors", "files", "ca.pki", "envvars", "names", "sandbox"}
MAX_LINES = 400


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(MESHCTL.rglob("*.py")):
        rel = path.relative_to(MESHCTL).with_suffix("")
        name = ".".join(p for p in rel.parts if p != "__init__")
        out[name or "__init__"] = ast.parse(path.read_text(), str(path))
    return out


def _unit(module: str) -> str:
    """The layer unit of a module: ``ca.pki`` alone (with the ``ca`` package's own
    ``__init__``, which imports nothing), else its package or its own name."""
    if module in ("ca", "ca.pki"):
        return "ca.pki"
    return module.split(".")[0]


def _layer(unit: str) -> int:
    if unit == "sandbox":  # apart from the layers; only tasks may start one
        return len(LAYERS) - 1
    for i, units in enumerate(LAYERS):
        if unit in units:
            return i
    raise AssertionError(f"meshctl.{unit} is in no layer: add it to LAYERS")


def _imports(tree: ast.Module) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and (
                node.module == "meshctl" or node.module.startswith("meshctl.")):
            base = node.module.removeprefix("meshctl").lstrip(".")
            for alias in node.names:
                full = f"{base}.{alias.name}" if base else alias.name
                found.add(full if (MESHCTL / full.replace(".", "/")).with_suffix(".py").exists()
                          or (MESHCTL / full.replace(".", "/")).is_dir() else base)
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("meshctl.") for a in node.names
                      if a.name.startswith("meshctl.")}
    return {f for f in found if f and f != "__version__"}


def test_no_module_imports_a_layer_above_it() -> None:
    wrong = []
    for name, tree in _modules().items():
        if name == "__init__":
            continue
        unit = _unit(name)
        for target in _imports(tree):
            other = _unit(target)
            if unit == "sandbox":
                if other not in SANDBOX_MAY_USE:
                    wrong.append(f"{name} -> {target} (the sandbox uses only the base layer)")
            elif other == "sandbox":
                if unit != "tasks":
                    wrong.append(f"{name} -> {target} (only tasks start sandboxes)")
            elif _layer(other) > _layer(unit):
                wrong.append(f"{name} -> {target}")
    assert not wrong, wrong


PACKAGES = sorted(p.name for p in MESHCTL.iterdir() if (p / "__init__.py").exists())


@pytest.mark.parametrize("package", PACKAGES)
def test_importing_a_package_loads_nothing_above_it(package: str) -> None:
    code = (f"import sys, json, meshctl.{package}; "
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('meshctl.'))))")
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True,
                                       text=True, check=True, cwd=REPO).stdout)
    units = {_unit(m.removeprefix("meshctl.")) for m in loaded} - {_unit(package)}
    if package == "sandbox":
        above = units - SANDBOX_MAY_USE
    else:
        above = {u for u in units if _layer(u) > _layer(_unit(package))}
    assert not above, sorted(above)


def test_every_package_says_its_job() -> None:
    for package in PACKAGES:
        doc = ast.get_docstring(ast.parse((MESHCTL / package / "__init__.py").read_text()))
        assert doc and len(doc.splitlines()) >= 5, package  # its job and its public names


def test_no_module_is_over_400_lines() -> None:
    long = {str(p.relative_to(REPO)): n for p in MESHCTL.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long


@pytest.mark.parametrize(("pattern", "what"), [
    (r"^DNS1123_LABEL = ", "the DNS-1123 label pattern"),
    (r"^def is_loopback\(", "the loopback test"),
    (r"^def has_proxy\(", "the 'pod has a sidecar' test"),
    (r"^def worst\(", "the verdict combination"),
    (r"^def istiod_name\(", "the istiod Deployment name"),
    (r"^def major_minor\(", "the version parser"),
    (r"^def backup_dir\(|^def backup\(", "the backup layout"),
])
def test_one_of_each_helper(pattern: str, what: str) -> None:
    where = [str(p.relative_to(REPO)) for p in MESHCTL.rglob("*.py")
             if re.search(pattern, p.read_text(), flags=re.M)]
    assert len(where) <= 1, (what, where)
    assert where or "backup" in pattern, what


def test_nothing_cites_a_file_outside_the_repo() -> None:
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.split()
    outside = re.compile(r"\b(DESIGN|TESTING|STYLE)\.md\b|\.\./shared")
    cited = [f for f in tracked if (REPO / f).is_file() and not f.startswith("tests/test_layout")
             and outside.search((REPO / f).read_text(errors="replace"))]
    assert not cited, cited
