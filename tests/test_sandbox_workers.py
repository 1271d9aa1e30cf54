"""Sandbox tests on two pytest-xdist workers: each worker gets a slot of its own.

``pytest -m sandbox -n 2 --dist loadfile`` runs two test modules at once, each starting
its own clusters; two workers in one slot would bind the same node addresses, Service
ranges and workload addresses.  tests/sandbox_fixtures.py gives worker ``gwN`` the slot
``base + N`` (``base``: the user's ``$MESHCTL_SANDBOX_SLOT``, default 0).  The pure rule
is tested here, and a child pytest on two real workers shows what each worker sees.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.factories import REPO
from tests.sandbox_fixtures import worker_slot


@pytest.mark.parametrize("base, worker, slot", [
    (None, "gw0", 0), (None, "gw1", 1), ("0", "gw1", 1), ("6", "gw0", 6), ("6", "gw1", 7),
    ("8", "gw1", 9),
])
def test_each_worker_takes_the_base_slot_plus_its_number(base: str | None, worker: str,
                                                          slot: int) -> None:
    assert worker_slot(base, worker) == slot


@pytest.mark.parametrize("base, worker, words", [
    ("9", "gw1", "would need slot 10"),
    ("12", "gw0", "expected a number from 0 to 9"),
    ("x", "gw0", "expected a number from 0 to 9"),
    ("0", "master", "is not gw<N>"),
])
def test_a_worker_without_a_slot_is_named(base: str, worker: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        worker_slot(base, worker)


PROBE = '''
import os

def test_a():
    open(os.environ["PYTEST_XDIST_WORKER"] + "-a", "w").write(os.environ["MESHCTL_SANDBOX_SLOT"])

def test_b():
    open(os.environ["PYTEST_XDIST_WORKER"] + "-b", "w").write(os.environ["MESHCTL_SANDBOX_SLOT"])
'''


def _run_on_two_workers(tmp: Path, base: str | None) -> dict[str, str]:
    (tmp / "conftest.py").write_text('pytest_plugins = ["tests.sandbox_fixtures"]\n')
    (tmp / "test_probe_a.py").write_text(PROBE)
    (tmp / "test_probe_b.py").write_text(PROBE.replace("test_a", "test_c")
                                         .replace("test_b", "test_d"))
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTEST_ADDOPTS="")
    env.pop("PYTEST_XDIST_WORKER", None)
    env.pop("MESHCTL_SANDBOX_SLOT", None)
    if base is not None:
        env["MESHCTL_SANDBOX_SLOT"] = base
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2",
         "--dist", "loadfile", "--rootdir", str(tmp)],
        cwd=tmp, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return {p.name: p.read_text() for p in tmp.iterdir() if p.name.startswith("gw")}


@pytest.mark.parametrize("base, slots", [(None, {"0", "1"}), ("6", {"6", "7"})])
def test_two_real_workers_see_two_slots(tmp_path: Path, base: str | None,
                                        slots: set[str]) -> None:
    seen = _run_on_two_workers(tmp_path, base)
    by_worker: dict[str, set[str]] = {}
    for name, slot in seen.items():
        by_worker.setdefault(name.split("-")[0], set()).add(slot)
    assert len(seen) == 4, seen
    # one slot per worker, each worker's own, and together the two the base gives
    assert all(len(s) == 1 for s in by_worker.values()), seen
    assert {s for v in by_worker.values() for s in v} == slots, seen
    assert {w: s.pop() for w, s in by_worker.items()} == {
        "gw0": min(slots), "gw1": max(slots)}, seen
