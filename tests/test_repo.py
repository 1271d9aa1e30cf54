"""The repository keeps its promises: README and CI run the same command; lint is clean."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.factories import REPO


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    block = text.split("## The two commands", 1)[1].split("## What it does", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", block, flags=re.S)


def test_readme_has_the_two_commands() -> None:
    install, tests = readme_commands()
    assert "invoke bootstrap --main cluster1 --remote cluster2 --dry-run" in install
    assert "pytest" in tests and "sandbox.build" in tests


def test_ci_runs_the_readme_test_command() -> None:
    _, tests = readme_commands()
    ci = (REPO / ".ci" / "run").read_text()
    assert tests in ci.splitlines()
    assert "MESHCTL_REQUIRE_SANDBOX=1" in tests


def test_ruff_is_clean() -> None:
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert ruff, "ruff is in the test extra"
    result = subprocess.run([ruff, "check", str(REPO)], capture_output=True, text=True,
                            cwd=REPO, check=False)
    assert result.returncode == 0, result.stdout[-3000:]
