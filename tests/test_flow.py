"""One flow, not two: the live bootstrap executes exactly the steps its dry-run lists.

The offline half checks the step list itself (every step can do itself, phases are
contiguous, links fan out per source).  The sandbox half runs a dry-run and then the
live bootstrap on real API servers with the real istioctl and istiod, and compares the
steps the live run reported as done (its ``step N/M … done`` lines) with ``plan.json``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from meshctl import config
from meshctl.mesh import bootstrap, flow
from meshctl.topology import plan as make_plan
from tests.factories import REPO, cluster_doc, meshctl, write_folder
from tests.test_bootstrap import assert_torn_down, clusters_dir

DONE = re.compile(r"(?P<cluster>\S+): step (?P<n>\d+)/(?P<total>\d+) (?P<action>.+) done$")
PHASES = ["facts", "root CA", "intermediates", "check cacerts", "prepare",
          "install primaries", "install remotes", "link"]


def primary_remote(tmp: Path) -> Path:
    return write_folder(tmp, [
        cluster_doc("cluster1"),
        cluster_doc("cluster2", role="remote", network="network2"),
        cluster_doc("cluster3", network="network2")])


def _phases_in_order(steps: list[flow.Step]) -> list[str]:
    seen: list[str] = []
    for s in steps:
        if not seen or seen[-1] != s.phase:
            seen.append(s.phase)
    return seen


@pytest.mark.parametrize("folder", ["example", "primary-remote"])
def test_every_step_can_do_itself_and_phases_are_contiguous(tmp_path: Path, folder) -> None:
    where = REPO / "clusters" if folder == "example" else primary_remote(tmp_path)
    cfg = config.load(where)
    names = sorted(cfg.clusters)
    plan = make_plan(cfg, names[0], names[1:])
    steps = flow.steps(cfg, plan)
    assert all(s.do is not None for s in steps)
    phases = _phases_in_order(steps)
    assert len(phases) == len(set(phases)), phases  # no phase comes back after another
    assert phases == [p for p in PHASES if p in phases]
    assert not any(s.live for s in steps if s.cluster is None)
    links = [s for s in steps if s.phase == "link"]
    assert links and all(s.lane != s.cluster for s in links)  # a lane per source
    result = bootstrap.dry_run(cfg, plan, tmp_path / "out")
    document = json.loads((tmp_path / "out" / bootstrap.PLAN_FILE).read_text())
    for i, (s, planned) in enumerate(zip(result.steps, document["steps"], strict=True)):
        # "files": what this dry-run wrote for the step (no key, no unsigned intermediate)
        assert dict(s.describe(), order=i + 1, files=planned["files"]) == planned
        assert all((tmp_path / "out" / f).is_file() for f in planned["files"])


def _reported(stderr: str) -> list[dict[str, str]]:
    return [m.groupdict() for line in stderr.splitlines() if (m := DONE.search(line.strip()))]


def _check_against_plan(done: list[dict[str, str]], planned: list[dict]) -> None:
    assert {int(d["total"]) for d in done} == {len(planned)}
    numbers = [int(d["n"]) for d in done]
    assert sorted(numbers) == list(range(1, len(planned) + 1)), numbers  # each once, all
    for d in done:
        step = planned[int(d["n"]) - 1]
        assert (step["cluster"] or "*", step["action"]) == (d["cluster"], d["action"])
    position = {n: i for i, n in enumerate(numbers)}
    by_phase = [PHASES.index(planned[n - 1]["phase"]) for n in numbers]
    assert by_phase == sorted(by_phase)  # a phase ends before the next begins
    for lane in {s["cluster"] for s in planned}:  # one cluster's steps keep their order
        mine = [n for n in range(1, len(planned) + 1) if planned[n - 1]["cluster"] == lane
                and planned[n - 1]["phase"] not in ("facts", "link")]
        assert [position[n] for n in mine] == sorted(position[n] for n in mine)


@pytest.mark.sandbox
def test_live_run_executes_the_dry_run_steps(tmp_path: Path, sandbox_factory) -> None:
    mesh = sandbox_factory(2, nodes=1, cpu="8", memory="16Gi", label="flow")
    folder = clusters_dir(tmp_path, mesh, {"cluster2": "remote"},
                          {"cluster1": "network1", "cluster2": "network2"})
    args = ["--main", "cluster1", "--remote", "cluster2", "--clusters-dir", str(folder)]
    dry = meshctl("bootstrap", *args, "--dry-run", "--out", str(tmp_path / "out"),
                  env=mesh.env())
    assert dry.returncode == 0, dry.stderr[-2000:]
    planned = json.loads((tmp_path / "out" / bootstrap.PLAN_FILE).read_text())["steps"]
    try:
        for _ in range(2):  # the first run changes, the re-run only checks: same steps
            live = meshctl("bootstrap", *args, env=mesh.env())
            assert live.returncode == 0, live.stderr[-3000:]
            _check_against_plan(_reported(live.stderr), planned)
        assert "nothing to do" in live.stdout
    finally:
        down = meshctl("teardown", *args, "--yes", env=mesh.env())
    assert down.returncode == 0, down.stderr[-2000:]
    assert_torn_down(mesh, ["cluster1", "cluster2"])
