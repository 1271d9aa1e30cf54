"""Every bad input of the foundation issue: exit 2, one line naming file and key, nothing written.

Runs the installed ``meshctl`` console script as a user would; no cluster is needed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.factories import assert_one_line_error, cluster_doc, mesh_doc, meshctl, write_folder


@dataclass
class Case:
    id: str
    clusters: list[dict] = field(default_factory=lambda: [
        cluster_doc("cluster1"), cluster_doc("cluster2", network="network2")])
    mesh: dict | None = None  # None: default; {"__raw__": text} writes text as is
    args: tuple[str, ...] = ("--main", "cluster1", "--remote", "cluster2")
    needles: tuple[str, ...] = ()
    setup: Callable[[Path], None] | None = None


def _raw(name: str, text: str) -> Callable[[Path], None]:
    def setup(folder: Path) -> None:
        (folder / name).write_text(text)
    return setup


def _unreadable(folder: Path) -> None:
    path = folder / "cluster2.yaml"
    path.unlink()
    path.mkdir()  # a folder where a file should be: reading it fails for root too


def _dup_name(folder: Path) -> None:
    (folder / "cluster2.yml").write_text(yaml.safe_dump(cluster_doc("cluster2")))


CASES = [
    Case("unknown-key", clusters=[cluster_doc("cluster1", netwrok="x"),
                                  cluster_doc("cluster2")],
         needles=("cluster1.yaml", "netwrok")),
    Case("missing-name",
         setup=_raw("cluster2.yaml", "context: c\nnetwork: n\n"),
         needles=("cluster2.yaml", "'name'")),
    Case("missing-context", setup=_raw("cluster2.yaml", "name: cluster2\nnetwork: n\n"),
         needles=("cluster2.yaml", "'context'")),
    Case("missing-network", setup=_raw("cluster2.yaml", "name: cluster2\ncontext: c\n"),
         needles=("cluster2.yaml", "'network'")),
    Case("name-not-dns1123", setup=_raw("Cluster_2.yaml", "name: Cluster_2\ncontext: c\n"
                                        "network: n\n"),
         needles=("Cluster_2.yaml", "'name'", "DNS-1123")),
    Case("name-not-file-name", clusters=[cluster_doc("cluster1"), cluster_doc("cluster2")],
         setup=_raw("cluster2.yaml", "name: cluster3\ncontext: c\nnetwork: n\n"),
         needles=("cluster2.yaml", "'name'", "file name")),
    Case("two-files-one-name", setup=_dup_name, needles=("cluster2.yml", "'name'", "cluster2")),
    Case("network-not-a-label", clusters=[cluster_doc("cluster1"),
                                          cluster_doc("cluster2", network="net work")],
         needles=("cluster2.yaml", "'network'")),
    Case("bad-role", clusters=[cluster_doc("cluster1"), cluster_doc("cluster2", role="spoke")],
         needles=("cluster2.yaml", "'role'", "spoke")),
    Case("apiserver-not-https", clusters=[cluster_doc("cluster1"),
                                          cluster_doc("cluster2", apiServer="http://x:6443")],
         needles=("cluster2.yaml", "'apiServer'", "https")),
    Case("unknown-key-type", mesh={"meshID": "m", "ca": {"key": "dsa-1024"}},
         needles=("mesh.yaml", "'ca.key'", "dsa-1024")),
    Case("zero-days", mesh={"meshID": "m", "ca": {"rootDays": 0}},
         needles=("mesh.yaml", "'ca.rootDays'")),
    Case("negative-days", mesh={"meshID": "m", "ca": {"intermediateDays": -5}},
         needles=("mesh.yaml", "'ca.intermediateDays'")),
    Case("intermediate-outlives-root", mesh={"meshID": "m", "ca": {"rootDays": 100,
                                                                    "intermediateDays": 200}},
         needles=("mesh.yaml", "'ca.intermediateDays'", "'ca.rootDays'")),
    Case("main-equals-remote", args=("--main", "cluster1", "--remote", "cluster1"),
         needles=("--remote cluster1", "--main")),
    Case("main-names-no-file", args=("--main", "nosuch", "--remote", "cluster2"),
         needles=("--main nosuch", "nosuch.yaml")),
    Case("remote-names-no-file", args=("--main", "cluster1", "--remote", "nosuch"),
         needles=("--remote nosuch", "nosuch.yaml")),
    Case("remote-role-as-main", clusters=[cluster_doc("cluster1", role="remote"),
                                          cluster_doc("cluster2")],
         needles=("--main cluster1", "role 'remote'")),
    Case("malformed-yaml", setup=_raw("cluster2.yaml", "name: cluster2\ncontext: [oops\n"),
         needles=("cluster2.yaml", "malformed YAML", "line")),
    Case("duplicate-yaml-key", setup=_raw("cluster2.yaml", "name: cluster2\nname: cluster2\n"
                                          "context: c\nnetwork: n\n"),
         needles=("cluster2.yaml", "duplicate key 'name'")),
    Case("unreadable-file", setup=_unreadable, needles=("cluster2.yaml", "cannot read")),
    Case("mesh-not-a-mapping", mesh={"__raw__": "- just\n- a list\n"},
         needles=("mesh.yaml", "mapping")),
    Case("bad-sidecar-quantity", mesh={"meshID": "m", "istio": {"sidecar": {"cpu": "lots"}}},
         needles=("mesh.yaml", "'istio.sidecar.cpu'")),
    Case("no-remote", args=("--main", "cluster1"), needles=("--remote",)),
    Case("same-context-twice", clusters=[cluster_doc("cluster1", context="one"),
                                         cluster_doc("cluster2", context="one")],
         needles=("cluster2.yaml", "'context'", "cluster1")),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bootstrap_dry_run_refuses_bad_input(tmp_path: Path, case: Case) -> None:
    mesh = case.mesh
    if mesh is not None and "__raw__" not in mesh:
        mesh = {**mesh_doc(tmp_path), **mesh,
                "ca": {**mesh_doc(tmp_path)["ca"], **mesh.get("ca", {})}}
    folder = write_folder(tmp_path, case.clusters, None if mesh and "__raw__" in mesh else mesh)
    if mesh and "__raw__" in mesh:
        (folder / "mesh.yaml").write_text(mesh["__raw__"])
    if case.setup:
        case.setup(folder)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    result = meshctl("bootstrap", *case.args, "--dry-run", "--clusters-dir", str(folder),
                     "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert_one_line_error(result, 2, *case.needles)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_out_that_is_a_file(tmp_path: Path) -> None:
    folder = write_folder(tmp_path, [cluster_doc("cluster1"), cluster_doc("cluster2")])
    (tmp_path / "out").write_text("not a folder")
    result = meshctl("bootstrap", "--main", "cluster1", "--remote", "cluster2", "--dry-run",
                     "--clusters-dir", str(folder), "--out", str(tmp_path / "out"))
    assert_one_line_error(result, 2, "--out", "not a folder")
    assert (tmp_path / "out").read_text() == "not a folder"


def test_certs_init_refuses_existing_root(tmp_path: Path) -> None:
    folder = write_folder(tmp_path, [cluster_doc("cluster1")])
    assert meshctl("certs.init", "--clusters-dir", str(folder)).returncode == 0
    ca = tmp_path / "ca"
    before = {p.name: p.read_bytes() for p in ca.iterdir()}
    result = meshctl("certs.init", "--clusters-dir", str(folder))
    assert_one_line_error(result, 2, "already exists", "--force")
    assert {p.name: p.read_bytes() for p in ca.iterdir()} == before


def test_missing_clusters_folder(tmp_path: Path) -> None:
    result = meshctl("bootstrap", "--main", "a", "--remote", "b", "--dry-run",
                     "--clusters-dir", str(tmp_path / "nope"))
    assert_one_line_error(result, 2, "nope", "--clusters-dir")


def test_unknown_flag_is_usage_error(tmp_path: Path) -> None:
    result = meshctl("bootstrap", "--mian", "cluster1")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_canary_without_flags_is_usage_error(tmp_path: Path) -> None:
    """canary exists since issue 8; missing flags stay a one-line usage error."""
    folder = write_folder(tmp_path, [cluster_doc("cluster1")])
    result = meshctl("canary", "--clusters-dir", str(folder))
    assert_one_line_error(result, 2, "--cluster is required")
