"""Injection labels, offline: which labels a revision needs, and the bootstrap step that
puts them on every cluster file's ``injectNamespaces`` (listed by the dry-run too).

The record entry's shape is checked with the rest of the install record in
``tests/test_install_record.py``; the labels on a real API server in
``tests/test_injection.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from meshctl import config
from meshctl.mesh import bootstrap, flow, injection
from meshctl.topology import plan as make_plan
from tests.factories import cluster_doc, mesh_doc, write_folder


@pytest.mark.parametrize(("revision", "wanted"), [
    ("", {"istio-injection": "enabled", "istio.io/rev": None}),
    ("default", {"istio-injection": "enabled", "istio.io/rev": None}),
    ("canary", {"istio-injection": None, "istio.io/rev": "canary"}),
    ("1-31-0", {"istio-injection": None, "istio.io/rev": "1-31-0"}),
], ids=["none", "default", "canary", "dashed"])
def test_labels_for_sets_one_label_and_removes_the_other(revision: str, wanted) -> None:
    """istio-injection overrides istio.io/rev, so exactly one of them may be there."""
    assert injection.labels_for(revision) == wanted
    assert list(wanted) == [injection.LABEL_INJECTION, injection.LABEL_REV]


def test_record_entry_is_parsed_only_when_meshctl_wrote_it() -> None:
    good = {"apps": {"uid": "u-1", "created": True,
                     "previous": {"istio-injection": None, "istio.io/rev": None}}}
    assert injection.recorded_namespaces(
        {injection.REC_INJECTION: json.dumps(good)}) == good
    bad = {"apps": {**good["apps"], "previous": {"istio-injection": None, "team": "x"}}}
    assert injection.recorded_namespaces({injection.REC_INJECTION: json.dumps(bad)}) == {}
    assert injection.recorded_namespaces({}) == {}


def _folder(tmp: Path, revision: str = "") -> Path:
    mesh = mesh_doc(tmp)
    if revision:
        mesh["istio"] = {"revision": revision}
    return write_folder(tmp, [
        cluster_doc("cluster1", injectNamespaces=["default", "apps"]),
        cluster_doc("cluster2", role="remote", network="network2",
                    injectNamespaces=["shop"]),
        cluster_doc("cluster3", injectNamespaces=[])], mesh)


@pytest.mark.parametrize("revision", ["", "canary"])
def test_every_cluster_labels_its_namespaces_after_its_istio(tmp_path: Path,
                                                             revision: str) -> None:
    """Remote-role clusters too (their injector is the remote profile's); a cluster
    without injectNamespaces gets no step; the dry-run's plan.json lists the step."""
    cfg = config.load(_folder(tmp_path, revision))
    plan = make_plan(cfg, "cluster1", ["cluster2", "cluster3"])
    steps = flow.steps(cfg, plan)
    labelled = [s for s in steps if s.action == "label injection"]
    assert [(s.cluster, s.objects) for s in labelled] == [
        ("cluster1", ("Namespace default", "Namespace apps")),
        ("cluster2", ("Namespace shop",))]
    for s in labelled:
        mine = [x for x in steps if x.lane == s.cluster and x.phase == s.phase]
        assert mine[-1] is s and s.phase.startswith("install")  # after istioctl install
        assert s.files == () and s.live and s.do is not None
        want = "istio.io/rev=canary" if revision else "istio-injection=enabled"
        assert s.note.startswith(want + ";")
    bootstrap.dry_run(cfg, plan, tmp_path / "out")
    document = json.loads((tmp_path / "out" / bootstrap.PLAN_FILE).read_text())
    listed = [s for s in document["steps"] if s["action"] == "label injection"]
    assert [s["objects"] for s in listed] == [list(s.objects) for s in labelled]
    assert all(s["files"] == [] for s in listed)
