"""Small factories for cluster folders and for running the CLI as a user would."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def cluster_doc(name: str, **overrides: Any) -> dict[str, Any]:
    doc = {"name": name, "context": f"ctx-{name}", "network": "network1", "role": "primary",
           "apiServer": f"https://{name}.example.test:6443", "injectNamespaces": ["default"]}
    doc.update(overrides)
    return {k: v for k, v in doc.items() if v is not None}


def mesh_doc(tmp: Path, **ca: Any) -> dict[str, Any]:
    settings = {"dir": str(tmp / "ca"), "key": "ecdsa-p256", "rootDays": 3650,
                "intermediateDays": 730, "organization": "meshctl-test"}
    settings.update(ca)
    return {"meshID": "mesh1", "trustDomain": "cluster.local", "ca": settings}


def write_folder(tmp: Path, clusters: list[dict[str, Any]], mesh: dict[str, Any] | None = None,
                 *, folder: str = "clusters") -> Path:
    """A clusters folder with one file per cluster doc (file name = its name) and mesh.yaml."""
    directory = tmp / folder
    directory.mkdir(parents=True, exist_ok=True)
    for doc in clusters:
        (directory / f"{doc['name']}.yaml").write_text(yaml.safe_dump(doc))
    (directory / "mesh.yaml").write_text(yaml.safe_dump(mesh or mesh_doc(tmp)))
    return directory


def two_networks(tmp: Path) -> Path:
    return write_folder(tmp, [cluster_doc("cluster1"),
                              cluster_doc("cluster2", network="network2")])


def meshctl(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
            tool: str = "meshctl") -> subprocess.CompletedProcess[str]:
    """Run the installed console script (or ``invoke`` with the repo's tasks.py)."""
    exe = shutil.which(tool, path=str(BIN)) or shutil.which(tool)
    assert exe, f"{tool} is not installed (pip install -e .)"
    cmd = [exe, *args]
    if tool == "invoke":
        cmd = [exe, "--search-root", str(REPO), *args]
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=300, check=False)


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int,
                          *needles: str) -> None:
    """Exit ``code``, exactly one non-empty line on stderr, no traceback, naming ``needles``."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
