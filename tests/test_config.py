"""Config files → dataclasses: the values users write arrive where the code reads them."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshctl import config
from meshctl.errors import ConfigError, UsageError
from tests.factories import REPO, cluster_doc, mesh_doc, write_folder


def test_example_clusters_folder_loads() -> None:
    cfg = config.load(REPO / "clusters")
    assert sorted(cfg.clusters) == ["cluster1", "cluster2"]
    c1, c2 = cfg.clusters["cluster1"], cfg.clusters["cluster2"]
    assert (c1.role, c2.role) == ("primary", "primary")
    assert c1.network != c2.network
    assert cfg.mesh.mesh_id == "mesh1"
    assert cfg.mesh.ca.key == "rsa-4096"
    assert cfg.mesh.istio.sidecar.cpu_cores == pytest.approx(0.1)
    assert cfg.mesh.istio.sidecar.memory_bytes == 128 * 1024**2


def test_defaults_and_optional_keys(tmp_path: Path) -> None:
    folder = write_folder(tmp_path, [
        {"name": "east", "context": "ctx", "network": "n1"},
        cluster_doc("west", role="remote", kubeconfig="~/kc", eastWestAddress="192.0.2.7",
                    apiServer="https://west.example:6443/")],
        {"meshID": "m1"})
    cfg = config.load(folder)
    east, west = cfg.clusters["east"], cfg.clusters["west"]
    assert east.role == "primary" and east.inject_namespaces == () and east.api_server is None
    assert west.api_server == "https://west.example:6443"
    assert west.east_west_address == "192.0.2.7" and west.kubeconfig == "~/kc"
    assert cfg.mesh.trust_domain == "cluster.local"
    # a relative ca.dir is mesh.yaml's, not the working directory's (issue 21, item 10)
    assert cfg.mesh.ca == config.CASettings(dir=folder / ".meshctl/ca",
                                            cwd_dir=Path(".meshctl/ca"))
    assert dict(cfg.mesh.istio.values) == {}


def test_dataclasses_are_frozen(tmp_path: Path) -> None:
    cfg = config.load(write_folder(tmp_path, [cluster_doc("a")]))
    with pytest.raises(AttributeError):
        cfg.clusters["a"].network = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.clusters["b"] = cfg.clusters["a"]  # type: ignore[index]


def test_unknown_cluster_lists_known_ones(tmp_path: Path) -> None:
    cfg = config.load(write_folder(tmp_path, [cluster_doc("a"), cluster_doc("b")]))
    with pytest.raises(UsageError, match=r"--main zz: .*clusters in .*: a, b"):
        cfg.cluster("zz", flag="--main")


@pytest.mark.parametrize("revision", ["canary!", 3])
def test_bad_revision(tmp_path: Path, revision: object) -> None:
    mesh = {**mesh_doc(tmp_path), "istio": {"revision": revision}}
    with pytest.raises(ConfigError, match=r"istio\.revision"):
        config.load(write_folder(tmp_path, [cluster_doc("a")], mesh))


def test_istio_values_kept(tmp_path: Path) -> None:
    mesh = {**mesh_doc(tmp_path), "istio": {"values": {"pilot": {"replicaCount": 2}}}}
    cfg = config.load(write_folder(tmp_path, [cluster_doc("a")], mesh))
    assert cfg.mesh.istio.values["pilot"] == {"replicaCount": 2}


def test_missing_mesh_file(tmp_path: Path) -> None:
    folder = write_folder(tmp_path, [cluster_doc("a")])
    (folder / "mesh.yaml").unlink()
    with pytest.raises(ConfigError, match=r"mesh\.yaml: missing"):
        config.load(folder)
