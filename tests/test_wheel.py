"""A non-editable install works (issue 21, item 8).

``templates/`` lives at the top of the repository, so an editable install found it and
a wheel did not: ``pip install .`` or ``pipx install`` gave ``TemplateNotFound`` on every
command that renders.  This test builds the wheel from a copy of the sources, installs it
into a fresh venv outside the repository and runs the README's dry-run from another
folder.  The venv borrows the dependencies (jinja2, kubernetes, ...) from the running
venv's site-packages through a ``.pth`` line, so nothing but meshctl's own build needs
the network (pip fetches setuptools for the isolated build, as ``pip install .`` does).
About 15 s on the project's machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

from tests.factories import REPO

SOURCES = ("pyproject.toml", "setup.py", "README.md", "meshctl", "templates")


def _run(*cmd: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    result = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=300, check=False)
    assert result.returncode == 0, (cmd, result.stdout[-2000:], result.stderr[-2000:])
    return result


def test_wheel_installed_elsewhere_runs_the_dry_run(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:  # what a fresh clone holds for the build, nothing of .venv or out/
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(REPO / name, src / name)
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", tmp_path / "dist", src)
    [wheel] = (tmp_path / "dist").glob("meshctl-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    for template in (REPO / "templates").glob("*.j2"):
        assert f"meshctl/templates/{template.name}" in shipped, template.name

    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    _run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
         "-q", wheel)
    # the dependencies from this venv; meshctl itself only from the wheel
    site = Path(_run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"
                     ).stdout.strip())
    (site / "meshctl-test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(REPO / "clusters", elsewhere / "clusters")
    where = _run(python, "-c", "import meshctl.render as r; print(r.__file__)", cwd=elsewhere)
    assert where.stdout.strip().startswith(str(site)), where.stdout
    result = _run(venv / "bin" / "meshctl", "bootstrap", "--main", "cluster1", "--remote",
                  "cluster2", "--dry-run", cwd=elsewhere)
    assert "no cluster was contacted" in " ".join(result.stdout.split())
    for cluster in ("cluster1", "cluster2"):
        for name in ("istio-operator.yaml", "namespace.yaml", "cacerts.yaml",
                     "eastwest-gateway.yaml"):
            assert (elsewhere / "out" / cluster / name).is_file(), (cluster, name)
