"""The guard that keeps ``pytest -m "not sandbox"`` free of clusters and Go-built binaries.

A throw-away test folder loads tests/sandbox_fixtures.py as this suite does and is run by
a child pytest: unmarked tests that use the sandbox fixtures stop the collection, naming
each; one that reaches them at run time fails before anything is looked up or started.
No binaries are needed: nothing here gets that far.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.factories import REPO

PROBE = '''
import pytest

@pytest.fixture(scope="module")
def mesh(sandbox_factory):
    return sandbox_factory(2)

def test_indirect(mesh):
    pass

def test_direct(sandbox_bin):
    pass

@pytest.mark.sandbox
def test_marked(namespace):
    pass

def test_offline():
    pass

def test_dynamic(request):
    request.getfixturevalue("sandbox_factory")
'''


def run_probe(tmp: Path, source: str, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp / "conftest.py").write_text('pytest_plugins = ["tests.sandbox_fixtures"]\n')
    (tmp / "test_probe.py").write_text(source)
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTEST_ADDOPTS="")
    # no sandbox cache: if the guard let anything through it could not start either
    env["XDG_CACHE_HOME"] = str(tmp / "empty-cache")
    env.pop("MESHCTL_SANDBOX_BIN", None)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA",
         "-o", "markers=sandbox: needs the sandbox", "--rootdir", str(tmp), *args],
        cwd=tmp, env=env, capture_output=True, text=True, timeout=120, check=False)


def test_unmarked_users_of_the_fixtures_stop_the_collection(tmp_path: Path) -> None:
    for selection in (["-m", "not sandbox"], ["-m", "sandbox"]):
        result = run_probe(tmp_path, PROBE, *selection)
        out = result.stdout + result.stderr
        assert result.returncode == 4, (selection, out)  # a usage error: nothing ran
        assert "2 test(s) use the sandbox fixtures without @pytest.mark.sandbox" in out, out
        assert "test_probe.py::test_indirect (uses sandbox_bin, sandbox_factory)" in out, out
        assert "test_probe.py::test_direct (uses sandbox_bin)" in out, out
        assert "test_marked" not in out and "test_offline" not in out, out


def test_marked_tests_pass_the_collection_and_a_dynamic_use_fails(tmp_path: Path) -> None:
    marked = PROBE.replace("def test_indirect", "@pytest.mark.sandbox\ndef test_indirect")
    marked = marked.replace("def test_direct", "@pytest.mark.sandbox\ndef test_direct")
    result = run_probe(tmp_path, marked, "-m", "not sandbox")
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert "PASSED test_probe.py::test_offline" in out, out
    assert "FAILED test_probe.py::test_dynamic" in out, out
    assert ("test_probe.py::test_dynamic uses the sandbox binaries but is not marked "
            "@pytest.mark.sandbox") in out, out
    assert "1 failed, 1 passed, 3 deselected" in out, out
