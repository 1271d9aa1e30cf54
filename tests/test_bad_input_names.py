"""More of the bad-input catalogue (``tests/test_bad_input.py``): values that end up in
label values, object names and fields the API server validates, and a relative
``ca.dir`` that used to follow the working directory.

Each case runs the real ``meshctl`` through the catalogue's own runners: one line on
stderr naming the file and the key, exit 2, and nothing written.  Before these checks a
bad meshID, trust domain, revision, cluster name, east-west address or API server URL
passed config validation and failed halfway through a live run (a 422 from the API
server, istioctl refusing its IstioOperator, a remote secret meshctl's own reader
refuses), after other clusters were already written.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from meshctl import config
from meshctl.ca import certs, pki
from tests import test_bad_input as catalogue
from tests.factories import cluster_doc, meshctl, write_folder

Case = catalogue.Case
LONG = "x" * 64


def _mesh(**fields: object) -> dict:
    return {"meshID": "mesh1", **fields}


def _istio(revision: str) -> dict:
    return _mesh(istio={"revision": revision})


def _clusters(**second: object) -> list[dict]:
    return [cluster_doc("cluster1"), cluster_doc("cluster2", **{"network": "network2",
                                                                **second})]


def _root_at(where: str, organization: str = "old") -> object:
    """A setup that puts a root CA (certificate and key) in ``where`` under tmp_path."""
    def setup(folder: Path) -> None:
        ca = folder.parent / where
        ca.mkdir(parents=True, mode=0o700)
        key = pki.generate_key("ecdsa-p256")
        cert = pki.self_signed_ca(subject=pki.name(organization=organization,
                                                   common_name="Root CA"), key=key, days=9)
        (ca / certs.ROOT_CERT).write_bytes(pki.cert_pem(cert))
        (ca / certs.ROOT_KEY).write_bytes(pki.key_pem(key))
    return setup


def _roots_in_both(folder: Path) -> None:
    _root_at("ca", "old")(folder)
    _root_at("clusters/ca", "new")(folder)


NAME_47 = "c" * 47  # meshctl-eastwest-<name> would be a 64-character label value
CASES = [
    Case("meshid-too-long", mesh=_mesh(meshID="m" * 64), needles=("mesh.yaml", "'meshID'",
                                                                    "label value")),
    Case("meshid-with-space", mesh=_mesh(meshID="mesh one"), needles=("mesh.yaml", "'meshID'")),
    Case("meshid-with-slash", mesh=_mesh(meshID="team/mesh"), needles=("'meshID'",
                                                                       "meshctl.io/mesh")),
    Case("meshid-ends-with-dash", mesh=_mesh(meshID="mesh-"), needles=("'meshID'",)),
    Case("meshid-not-ascii", mesh=_mesh(meshID="méš"), needles=("'meshID'",)),
    Case("trust-domain-upper-case", mesh=_mesh(trustDomain="Cluster.Local"),
         needles=("mesh.yaml", "'trustDomain'")),
    Case("trust-domain-underscore", mesh=_mesh(trustDomain="cluster_local"),
         needles=("'trustDomain'",)),
    Case("trust-domain-empty-label", mesh=_mesh(trustDomain="cluster..local"),
         needles=("'trustDomain'",)),
    Case("trust-domain-a-uri", mesh=_mesh(trustDomain="spiffe://cluster.local"),
         needles=("'trustDomain'",)),
    Case("trust-domain-label-too-long", mesh=_mesh(trustDomain=f"{LONG}.local"),
         needles=("'trustDomain'",)),
    Case("revision-too-long-for-istiod-service", mesh=_istio("r" * 57),
         needles=("mesh.yaml", "'istio.revision'", "at most 56")),
    Case("revision-upper-case", mesh=_istio("Canary"), needles=("'istio.revision'",)),
    Case("revision-with-dot", mesh=_istio("1.24"), needles=("'istio.revision'",)),
    Case("cluster-name-too-long-for-eastwest-label",
         clusters=[*_clusters(), cluster_doc(NAME_47)],
         needles=(f"{NAME_47}.yaml", "'name'", "at most 46")),
    Case("network-too-long", clusters=_clusters(network="n" * 64),
         needles=("cluster2.yaml", "'network'")),
    Case("network-with-slash", clusters=_clusters(network="net/2"),
         needles=("cluster2.yaml", "'network'")),
    Case("eastwest-address-with-space", clusters=_clusters(eastWestAddress="gw example"),
         needles=("cluster2.yaml", "'eastWestAddress'")),
    Case("eastwest-address-a-url", clusters=_clusters(eastWestAddress="https://gw.example"),
         needles=("cluster2.yaml", "'eastWestAddress'")),
    Case("eastwest-address-upper-case", clusters=_clusters(eastWestAddress="GW.example.com"),
         needles=("'eastWestAddress'",)),
    Case("apiserver-with-credentials",
         clusters=_clusters(apiServer="https://admin:pw@cluster2.example.test:6443"),
         needles=("cluster2.yaml", "'apiServer'", "credentials")),
    Case("apiserver-with-query", clusters=_clusters(apiServer="https://c2.example:6443/?a=b"),
         needles=("'apiServer'", "query")),
    Case("apiserver-with-fragment", clusters=_clusters(apiServer="https://c2.example:6443#x"),
         needles=("'apiServer'", "fragment")),
    Case("apiserver-port-out-of-range", clusters=_clusters(apiServer="https://c2.example:99999"),
         needles=("'apiServer'", "bad port")),
    Case("apiserver-port-not-a-number", clusters=_clusters(apiServer="https://c2.example:abc"),
         needles=("'apiServer'", "bad port")),
    Case("cluster-domain-upper-case", mesh=_mesh(clusterDomain="Cluster.Local"),
         needles=("mesh.yaml", "'clusterDomain'")),
    Case("cluster-domain-a-url", mesh=_mesh(clusterDomain="https://cluster.local"),
         needles=("'clusterDomain'",)),
    Case("cluster-domain-not-a-string", mesh=_mesh(clusterDomain=["cluster.local"]),
         needles=("'clusterDomain'",)),
    Case("ca-dir-root-left-in-working-dir", mesh=_mesh(ca={"dir": "ca"}), setup=_root_at("ca"),
         needles=("mesh.yaml", "'ca.dir'", "/ca (working directory)",
                  "no root CA in", "/clusters/ca (mesh.yaml's folder)")),
    Case("ca-dir-two-different-roots", mesh=_mesh(ca={"dir": "ca"}), setup=_roots_in_both,
         needles=("'ca.dir'", "a different root CA in", "/clusters/ca")),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bootstrap_dry_run_refuses_bad_names(tmp_path: Path, case: Case) -> None:
    catalogue.test_bootstrap_dry_run_refuses_bad_input(tmp_path, case)


def _stray_root(tmp: Path) -> Path:
    folder = write_folder(tmp, _clusters(), {**_mesh(), "ca": {"dir": "ca",
                                                                "key": "ecdsa-p256"}})
    _root_at("ca")(folder)
    return folder


@pytest.mark.parametrize("args", [("certs.init",), ("certs.issue", "--no-apply"),
                                  ("certs.status",)], ids=lambda a: a[0])
def test_stray_root_stops_every_ca_command(tmp_path: Path, args: tuple[str, ...]) -> None:
    """certs.init would make the second root; the others would use none, or another."""
    folder = _stray_root(tmp_path)
    catalogue._run_cli(tmp_path, *args, "--clusters-dir", str(folder), code=2,
                       needles=("'ca.dir'", f"{tmp_path}/ca ", f"{folder}/ca "))


def test_relative_ca_dir_is_one_root_from_any_folder(tmp_path: Path) -> None:
    """certs.init from one folder, the dry-run from another: the same root, no second."""
    folder = write_folder(tmp_path, _clusters(), {**_mesh(), "ca": {"dir": ".meshctl/ca",
                                                                    "key": "ecdsa-p256"}})
    here, there = tmp_path / "here", tmp_path / "there"
    here.mkdir()
    there.mkdir()
    assert meshctl("certs.init", "--clusters-dir", str(folder), cwd=here).returncode == 0
    root = folder / ".meshctl" / "ca" / certs.ROOT_CERT
    assert root.is_file() and not (here / ".meshctl").exists()
    result = meshctl("bootstrap", "--main", "cluster1", "--remote", "cluster2", "--dry-run",
                     "--clusters-dir", str(folder), "--out", str(tmp_path / "out"), cwd=there)
    assert result.returncode == 0, result.stderr
    assert f"existing root from {folder}/.meshctl/ca" in " ".join(result.stdout.split())
    assert not (there / ".meshctl").exists()


def test_relative_kubeconfig_is_read_beside_the_cluster_file(tmp_path: Path) -> None:
    """Like ca.dir: a relative path in a file is the file's, not the working directory's."""
    folder = write_folder(tmp_path, [cluster_doc("c1", kubeconfig="kube/config"),
                                     cluster_doc("c2", kubeconfig="~/kc", network="n2")])
    cfg = config.load(folder)
    assert cfg.clusters["c1"].kubeconfig == str(folder / "kube" / "config")
    assert cfg.clusters["c2"].kubeconfig == "~/kc"  # the home folder, as the client reads it


@pytest.mark.parametrize("field,value", [
    ("meshID", "a" * 63), ("meshID", "Mesh_1.prod"), ("trustDomain", "corp.example.com"),
    ("trustDomain", "td"), ("revision", "r" * 56), ("revision", "1-24-0")])
def test_good_names_are_accepted(tmp_path: Path, field: str, value: str) -> None:
    mesh = _istio(value) if field == "revision" else _mesh(**{field: value})
    folder = write_folder(tmp_path, [cluster_doc("c" * 46, eastWestAddress="2001:db8::1"),
                                     cluster_doc("c2", eastWestAddress="gw.example.com",
                                                 network="n2")],
                          {**mesh, "ca": {"dir": str(tmp_path / "ca")}})
    assert config.load(folder)


@pytest.mark.parametrize("value", ["abc", "0", "-5", "10001", "1.5"])
def test_canary_observe_needs_a_count(tmp_path: Path, value: str) -> None:
    """--observe N is checked before any cluster is contacted (exit 2, one line)."""
    folder = write_folder(tmp_path, _clusters(), _mesh())
    catalogue._run_cli(tmp_path, "canary", "--cluster", "cluster1", "--namespace", "shop",
                       "--service", "reviews", "--weights", "v1=80,v2=20", "--observe", value,
                       "--clusters-dir", str(folder), code=2, needles=("--observe",))


def test_canary_observe_off_the_sandbox_is_refused_before_any_write(tmp_path: Path) -> None:
    """Only the sandbox has a probe that tells versions apart: elsewhere --observe is a
    usage error, and it comes before canary contacts a cluster (these clusters do not
    exist, so any contact would be exit 3)."""
    folder = write_folder(tmp_path, _clusters(), _mesh())
    catalogue._run_cli(tmp_path, "canary", "--cluster", "cluster1", "--namespace", "shop",
                       "--service", "reviews", "--weights", "v1=80,v2=20", "--observe", "100",
                       "--clusters-dir", str(folder), code=2,
                       needles=("--observe", "sandbox"))
