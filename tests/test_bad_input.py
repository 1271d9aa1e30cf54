"""The bad-input catalogue: every case one line on stderr, its exit code, no traceback,
nothing written.

Cluster files and flags (exit 2, naming the file and key), the operator's kubeconfigs
(exit 2), certificate files in ``ca.dir`` (exit 2), remote-secret contents as istioctl
would print them (exit 3, naming the field; nothing of them runs), canary weights
(exit 2), and TLS/socket failures against real local servers (exit 3 naming the
cluster and the cause in words).  Runs the installed ``meshctl`` console script as a
user would; no cluster is needed.  Not covered: a full disk and a read-only filesystem
(this machine has neither to offer a test; ``files.write_all`` turns any ``OSError``
into the same one line, and ``/sys`` stands in for a folder that refuses writes).
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from meshctl.ca import pki
from meshctl.errors import MeshctlError
from meshctl.kube import remote_kubeconfig
from meshctl.mesh import remote_secret
from tests import tls_servers
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


# --- the rest of the catalogue (issue 12): flags, kubeconfigs, remote secrets, certificate
# files, weights and TLS.  Each case: the exit code, one line on stderr naming what is
# wrong, no traceback, and nothing written (the tree under tmp_path is compared, the CA
# folder byte for byte; meshctl's scratch folder for key files must be empty afterwards).

TOKEN = "eyJhbGciOiJSUzI1NiJ9.c2VjcmV0LXRva2VuLXZhbHVl.c2lnbmF0dXJl"  # never in a message


def _tree(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(root.rglob("*")) if "cache" not in p.relative_to(root).parts}


def _kubeconfig(tmp: Path, server: str, *, ca: bytes | None = None, context: str = "ctx",
                user: dict | None = None) -> Path:
    cluster: dict = {"server": server}
    if ca is not None:
        cluster["certificate-authority-data"] = base64.b64encode(ca).decode()
    path = tmp / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": context,
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": "u", "user": user or {"token": TOKEN}}],
        "contexts": [{"name": context, "context": {"cluster": "c", "user": "u"}}]}))
    return path


def _folder(tmp: Path, kubeconfig: Path | None = None, **extra: object) -> Path:
    kc = {"kubeconfig": str(kubeconfig), "context": "ctx"} if kubeconfig else {}
    return write_folder(tmp, [cluster_doc("cluster1", **kc, **extra),
                              cluster_doc("cluster2", network="network2")])


def _run_cli(tmp: Path, *args: str, code: int, needles: tuple[str, ...],
             tool: str = "meshctl") -> None:
    cache = tmp / "cache"
    before = _tree(tmp)
    result = meshctl(*args, cwd=tmp, env={"XDG_CACHE_HOME": str(cache),
                                          "MESHCTL_API_DEADLINE": "2"}, tool=tool)
    assert_one_line_error(result, code, *needles)
    assert TOKEN not in result.stdout + result.stderr
    assert _tree(tmp) == before
    assert not [p for p in cache.rglob("*") if p.is_file()]  # no key file left behind


@dataclass
class CliCase:
    id: str
    args: tuple[str, ...]
    needles: tuple[str, ...]
    code: int = 2
    setup: Callable[[Path], Path] | None = None  # returns the clusters folder


def _plain(tmp: Path) -> Path:
    return _folder(tmp)


def _kc_missing(tmp: Path) -> Path:
    return _folder(tmp, tmp / "no-such-kubeconfig")


def _kc_folder(tmp: Path) -> Path:
    (tmp / "kcdir").mkdir()
    return _folder(tmp, tmp / "kcdir")


def _kc_junk(tmp: Path) -> Path:
    path = tmp / "kubeconfig"
    path.write_bytes(bytes(range(256)) * 4)
    return _folder(tmp, path)


def _kc_list(tmp: Path) -> Path:
    path = tmp / "kubeconfig"
    path.write_text("- just\n- a list\n")
    return _folder(tmp, path)


def _kc_no_context(tmp: Path) -> Path:
    return _folder(tmp, _kubeconfig(tmp, "https://127.0.0.1:1", context="other"))


def _sys_junit(tmp: Path) -> Path:
    return _folder(tmp)


def _root_files(tmp: Path, cert: bytes, key: bytes) -> Path:
    folder = _folder(tmp)
    ca = tmp / "ca"
    ca.mkdir(mode=0o700)
    (ca / "root-cert.pem").write_bytes(cert)
    (ca / "root-key.pem").write_bytes(key)
    return folder


def _truncated_root(tmp: Path) -> Path:
    key = pki.generate_key("ecdsa-p256")
    cert = pki.cert_pem(pki.self_signed_ca(subject=pki.name(common_name="r"), key=key, days=9))
    return _root_files(tmp, cert[: len(cert) // 2], pki.key_pem(key))


def _key_not_matching(tmp: Path) -> Path:
    key, other = pki.generate_key("ecdsa-p256"), pki.generate_key("ecdsa-p256")
    cert = pki.self_signed_ca(subject=pki.name(common_name="r"), key=key, days=9)
    return _root_files(tmp, pki.cert_pem(cert), pki.key_pem(other))


def _expired_root(tmp: Path) -> Path:
    key = pki.generate_key("ecdsa-p256")
    cert = pki.self_signed_ca(subject=pki.name(common_name="r"), key=key, days=1,
                              not_before=datetime.now(UTC) - timedelta(days=5))
    return _root_files(tmp, pki.cert_pem(cert), pki.key_pem(key))


def _non_ca_root(tmp: Path) -> Path:
    key = pki.generate_key("ecdsa-p256")
    subject = pki.name(common_name="not a CA")
    cert = pki.sign(subject=subject, public_key=key.public_key(), issuer_name=subject,
                    issuer_key=key, usage=pki.Usage(server=True), days=9)
    return _root_files(tmp, pki.cert_pem(cert), pki.key_pem(key))


def _ca_in_sys(tmp: Path) -> Path:
    """ca.dir where even root may not write (sysfs refuses new files)."""
    return write_folder(tmp, [cluster_doc("cluster1"), cluster_doc("cluster2")],
                        {**mesh_doc(tmp), "ca": {**mesh_doc(tmp)["ca"],
                                                 "dir": "/sys/meshctl-ca"}})


def _junk_intermediate(tmp: Path) -> Path:
    folder = _folder(tmp)
    assert meshctl("certs.init", "--clusters-dir", str(folder)).returncode == 0
    (tmp / "ca" / "cluster1").mkdir(mode=0o700)
    (tmp / "ca" / "cluster1" / "ca-cert.pem").write_text("-----BEGIN CERTIFICATE-----\nAAA")
    return folder


VERIFY = ("verify", "--main", "cluster1", "--remote", "cluster2")
CANARY = ("canary", "--cluster", "cluster1", "--namespace", "ns", "--service", "s")
ISSUE = ("certs.issue", "--cluster", "cluster1", "--no-apply")
CLI_CASES = [
    CliCase("flag-requests-not-a-number", (*VERIFY, "--requests", "ten"),
            ("--requests ten", "whole number")),
    CliCase("flag-requests-zero", (*VERIFY, "--requests", "0"), ("--requests 0",)),
    CliCase("flag-timeout-negative", (*VERIFY, "--timeout", "-5"), ("--timeout -5",)),
    CliCase("flag-namespace-not-dns1123", (*VERIFY, "--namespace", "Bad_NS"),
            ("--namespace", "DNS-1123")),
    CliCase("flag-junit-permission-denied", (*VERIFY, "--junit", "/sys/verify.xml"),
            ("/sys/verify.xml", "Permission denied")),
    CliCase("flag-junit-parent-is-a-file", (*VERIFY, "--junit", "clusters/mesh.yaml/x.xml"),
            ("x.xml", "Not a directory")),
    CliCase("flag-junit-is-a-folder", (*VERIFY, "--junit", "clusters"),
            ("clusters", "is a folder")),
    CliCase("flag-step-not-a-number", ("certs.rotate", "--root", "--step", "x"),
            ("--step x",)),
    CliCase("flag-unknown-cluster", ("status", "--cluster", "nosuch"),
            ("--cluster nosuch", "nosuch.yaml")),
    CliCase("weights-not-100", (*CANARY, "--weights", "v1=80,v2=30"), ("add up to 110",)),
    CliCase("weights-not-a-number", (*CANARY, "--weights", "v1=abc"), ("v1=abc",)),
    CliCase("weights-out-of-range", (*CANARY, "--weights", "v1=120,v2=-20"), ("v1=120",)),
    CliCase("kubeconfig-missing", ("status", "--cluster", "cluster1"),
            ("cluster1.yaml", "'kubeconfig'", "no such file"), setup=_kc_missing),
    CliCase("kubeconfig-is-a-folder", ("status", "--cluster", "cluster1"),
            ("cluster1.yaml", "'kubeconfig'", "is a folder"), setup=_kc_folder),
    CliCase("kubeconfig-binary-junk", ("status", "--cluster", "cluster1"),
            ("cluster1.yaml", "kubeconfig"), setup=_kc_junk),
    CliCase("kubeconfig-a-yaml-list", ("status", "--cluster", "cluster1"),
            ("cluster1.yaml", "kubeconfig"), setup=_kc_list),
    CliCase("kubeconfig-context-missing", ("status", "--cluster", "cluster1"),
            ("cluster1.yaml", "'context'", "not found"), setup=_kc_no_context),
    CliCase("root-pem-truncated", ISSUE, ("root-cert.pem", "not PEM"), setup=_truncated_root),
    CliCase("root-key-not-its-cert", ISSUE, ("root-key.pem does not belong",),
            setup=_key_not_matching),
    CliCase("root-expired", ISSUE, ("root-cert.pem expired", "certs.rotate --root"),
            setup=_expired_root),
    CliCase("root-not-a-ca", ISSUE, ("root-cert.pem is not a CA",), setup=_non_ca_root),
    CliCase("intermediate-pem-truncated", ISSUE, ("cluster1", "cannot read the intermediate"),
            setup=_junk_intermediate),
    CliCase("ca-dir-not-writable", ("certs.init",),
            ("/sys/meshctl-ca/root-key.pem", "cannot write", "Operation not permitted"),
            setup=_ca_in_sys),
    CliCase("out-not-writable", ("bootstrap", "--main", "cluster1", "--remote",
                                 "cluster2", "--dry-run", "--out", "/sys/meshctl-out"),
            ("/sys/meshctl-out/", "cannot write", "Operation not permitted")),
    CliCase("flag-unknown-under-invoke", ("--invoke", "bootstrap", "--mian", "x"),
            ("'--mian'",), code=1),
]


@pytest.mark.parametrize("case", CLI_CASES, ids=[c.id for c in CLI_CASES])
def test_cli_refuses_bad_input(tmp_path: Path, case: CliCase) -> None:
    folder = (case.setup or _plain)(tmp_path)
    args = case.args
    tool = "meshctl"
    if args[0] == "--invoke":  # README: the plain invoke binary keeps its own code 1
        tool, args = "invoke", args[1:]
    _run_cli(tmp_path, *args, "--clusters-dir", str(folder), code=case.code,
             needles=case.needles, tool=tool)


# --- remote-secret contents: istioctl's output, before anything is applied ---------------

SERVER = "https://cluster2.example.test:6443"
_CA = pki.cert_pem(pki.self_signed_ca(subject=pki.name(common_name="c2 CA"),
                                      key=pki.generate_key("ecdsa-p256"), days=30))


def _kc_doc() -> dict:
    return {"apiVersion": "v1", "kind": "Config", "preferences": {},
            "clusters": [{"name": "cluster2", "cluster": {
                "server": SERVER, "certificate-authority-data": base64.b64encode(_CA).decode()}}],
            "contexts": [{"name": "cluster2", "context": {"cluster": "cluster2",
                                                          "user": "cluster2"}}],
            "current-context": "cluster2",
            "users": [{"name": "cluster2", "user": {"token": TOKEN}}]}


def _secret_text(kubeconfig: str | bytes, *, kind: str = "Secret",
                 extra_key: bool = False) -> str:
    secret: dict = {
        "apiVersion": "v1", "kind": kind,
        "metadata": {"name": "istio-remote-secret-cluster2", "namespace": "istio-system",
                     "labels": {"istio/multiCluster": "true"},
                     "annotations": {"networking.istio.io/cluster": "cluster2"}}}
    if isinstance(kubeconfig, bytes):
        secret["data"] = {"cluster2": base64.b64encode(kubeconfig).decode()}
    else:
        secret["stringData"] = {"cluster2": kubeconfig}
    if extra_key:
        secret.setdefault("stringData", {})["cluster9"] = yaml.safe_dump(_kc_doc())
    return "# This file is autogenerated, do not edit.\n" + yaml.safe_dump(secret) + "---\n"


def _mutated(change: Callable[[dict], object]) -> str:
    doc = _kc_doc()
    change(doc)
    return yaml.safe_dump(doc)


def _user(**fields: object) -> Callable[[dict], object]:
    return lambda d: d["users"][0]["user"].update(fields)


def _cluster(**fields: object) -> Callable[[dict], object]:
    return lambda d: d["clusters"][0]["cluster"].update(fields)


def _twice(key: str) -> Callable[[dict], object]:
    """A second, separate entry (a copy, so YAML has no anchor to share)."""
    return lambda d: d[key].append(copy.deepcopy(d[key][0]))


MARKER = "/tmp/meshctl-bad-input-marker-must-not-exist"
ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
    f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
    for i in range(9))

SECRET_CASES = [
    ("exec-plugin", _secret_text(_mutated(_user(exec={
        "apiVersion": "client.authentication.k8s.io/v1", "command": "sh",
        "args": ["-c", f"touch {MARKER}"]}))), ("users[0].user.exec", "runs a command")),
    ("token-file", _secret_text(_mutated(_user(tokenFile="/etc/hostname"))),
     ("users[0].user.tokenFile", "reads a file")),
    ("client-key-path", _secret_text(_mutated(_user(**{"client-key": "/root/.ssh/id_rsa"}))),
     ("users[0].user.client-key", "reads a file")),
    ("client-key-data", _secret_text(_mutated(_user(**{"client-key-data": "AAAA"}))),
     ("users[0].user.client-key-data",)),
    ("client-certificate-data", _secret_text(_mutated(_user(
        **{"client-certificate-data": "AAAA"}))), ("users[0].user.client-certificate-data",)),
    ("auth-provider", _secret_text(_mutated(_user(**{"auth-provider": {
        "name": "gcp", "config": {"cmd-path": "sh", "cmd-args": f"-c 'touch {MARKER}'"}}}))),
     ("users[0].user.auth-provider",)),
    ("basic-auth", _secret_text(_mutated(_user(username="admin", password="pw"))),
     ("users[0].user.password", "basic-auth")),
    ("impersonation", _secret_text(_mutated(_user(**{"as": "system:admin"}))),
     ("users[0].user.as", "impersonation")),
    ("two-users", _secret_text(_mutated(_twice("users"))),
     ("users has 2 entries",)),
    ("two-clusters", _secret_text(_mutated(_twice("clusters"))),
     ("clusters has 2 entries",)),
    ("two-contexts", _secret_text(_mutated(_twice("contexts"))),
     ("contexts has 2 entries",)),
    ("insecure-skip-tls-verify", _secret_text(_mutated(_cluster(
        **{"insecure-skip-tls-verify": True}))), ("insecure-skip-tls-verify", "TLS")),
    ("ca-file-path", _secret_text(_mutated(_cluster(
        **{"certificate-authority": "/etc/ssl/certs/ca.pem"}))),
     ("clusters[0].cluster.certificate-authority", "reads a file")),
    ("proxy-url", _secret_text(_mutated(_cluster(**{"proxy-url": "http://evil:3128"}))),
     ("proxy-url",)),
    ("ca-not-pem", _secret_text(_mutated(_cluster(
        **{"certificate-authority-data": base64.b64encode(b"junk").decode()}))),
     ("certificate-authority-data",)),
    ("server-not-https", _secret_text(_mutated(_cluster(server="http://cluster2:6443"))),
     ("server", "https")),
    ("token-with-newline", _secret_text(_mutated(_user(token="abc\nX-Injected: 1"))),
     ("users[0].user.token",)),
    ("yaml-list", _secret_text("- a\n- list\n"), ("is a list",)),
    ("binary-junk", _secret_text(bytes(range(256)) * 8), ("binary",)),
    ("alias-bomb", _secret_text(ALIAS_BOMB), ("YAML anchors are not allowed",)),
    ("duplicate-key", _secret_text(yaml.safe_dump(_kc_doc()) + "kind: Config\n"),
     ("duplicate key 'kind'",)),
    ("extra-data-key", _secret_text(yaml.safe_dump(_kc_doc()), extra_key=True),
     ("'cluster9'",)),
    ("not-a-secret", _secret_text(yaml.safe_dump(_kc_doc()), kind="ConfigMap"),
     ("expected one Secret", "ConfigMap")),
    ("oversized", _secret_text(yaml.safe_dump(_kc_doc()) + "#" * 200_000),
     ("larger than",)),
    ("points-elsewhere", _secret_text(_mutated(_cluster(server="https://elsewhere:6443"))),
     ("points at https://elsewhere:6443",)),
]


@pytest.mark.parametrize("text,needles", [(t, n) for _, t, n in SECRET_CASES],
                         ids=[i for i, _, _ in SECRET_CASES])
def test_remote_secret_refused_before_apply(text: str, needles: tuple[str, ...]) -> None:
    """What ``link``/``bootstrap`` do with istioctl's output: one line (exit 3), the field
    named, the token never; nothing of it runs (the marker never appears)."""
    with pytest.raises(MeshctlError) as info:
        remote_secret.parse(text, source="cluster2",
                            server=remote_secret.Server(SERVER, True))
    message = str(info.value)
    assert info.value.exit_code == 3 and "\n" not in message
    assert "cluster2" in message and TOKEN not in message
    for needle in needles:
        assert needle in message, (needle, message)
    assert not Path(MARKER).exists()


def test_remote_secret_as_istioctl_writes_it_is_accepted() -> None:
    """The positive control: the allow-list takes exactly what istioctl prints."""
    secret = remote_secret.parse(_secret_text(yaml.safe_dump(_kc_doc())), source="cluster2",
                                 server=remote_secret.Server(SERVER, True), mesh_id="mesh1")
    # read back the way status and verify read a remote secret from a cluster
    parsed = remote_kubeconfig.from_secret(secret.body, "cluster2", "cluster2: remote secret")
    assert (parsed.server, parsed.token, parsed.ca_pem) == (SERVER, TOKEN, _CA)
    assert secret.body["metadata"]["labels"] == {
        "istio/multiCluster": "true", "app.kubernetes.io/managed-by": "meshctl",
        "meshctl.io/mesh": "mesh1"}
    assert TOKEN not in repr(secret) and TOKEN not in repr(parsed)


# --- TLS and sockets: a real local server per case, one line naming the cluster ----------


def _tls_ca_mismatch(tmp: Path) -> tuple[object, bytes]:
    cert, key = tls_servers.server_cert(tls_servers.make_ca("served"), tmp / "srv")
    return tls_servers.https_server(cert, key), tls_servers.make_ca("trusted").pem


def _tls_hostname(tmp: Path) -> tuple[object, bytes]:
    ca = tls_servers.make_ca()
    cert, key = tls_servers.server_cert(ca, tmp / "srv", ips=(), dns=("other.example",))
    return tls_servers.https_server(cert, key), ca.pem


def _tls_expired(tmp: Path) -> tuple[object, bytes]:
    ca = tls_servers.make_ca()
    cert, key = tls_servers.server_cert(ca, tmp / "srv", expired=True)
    return tls_servers.https_server(cert, key), ca.pem


def _plain_http(tmp: Path) -> tuple[object, bytes]:
    return tls_servers.http_server(), tls_servers.make_ca().pem


def _refused(tmp: Path) -> tuple[object, bytes]:
    return contextlib.nullcontext(tls_servers.free_port_url()), tls_servers.make_ca().pem


def _dns(tmp: Path) -> tuple[object, bytes]:
    return contextlib.nullcontext("https://no-such-host.invalid:6443"), \
        tls_servers.make_ca().pem


TLS_CASES = [
    ("tls-wrong-ca", _tls_ca_mismatch, "certificate verify failed: self-signed certificate"),
    ("tls-hostname-mismatch", _tls_hostname, "IP address mismatch"),
    ("tls-expired-server-cert", _tls_expired, "certificate verify failed: certificate has "
                                              "expired"),
    ("tls-plain-http-listener", _plain_http, "does not speak TLS"),
    ("connection-refused", _refused, "connection refused"),
    ("dns-failure", _dns, "DNS: the host name does not resolve"),
]


@pytest.mark.parametrize("make,cause", [(m, c) for _, m, c in TLS_CASES],
                         ids=[i for i, _, _ in TLS_CASES])
def test_status_names_cluster_and_tls_cause(tmp_path: Path, make: Callable, cause: str) -> None:
    server, ca = make(tmp_path / "tls")
    with server as url:
        folder = _folder(tmp_path, _kubeconfig(tmp_path, url, ca=ca))
        _run_cli(tmp_path, "status", "--cluster", "cluster1", "--clusters-dir", str(folder),
                 code=3, needles=("cluster1", cause))


def test_certs_status_tls_failure_is_a_fail_row(tmp_path: Path) -> None:
    server, ca = _tls_ca_mismatch(tmp_path / "tls")
    with server as url:
        folder = _folder(tmp_path, _kubeconfig(tmp_path, url, ca=ca))
        assert meshctl("certs.init", "--clusters-dir", str(folder)).returncode == 0
        result = meshctl("certs.status", "--cluster", "cluster1", "--json", "--clusters-dir",
                         str(folder), env={"XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert result.returncode == 1 and "Traceback" not in result.stderr
    [row] = json.loads(result.stdout)["clusters"]
    [check] = row["checks"]
    assert row["level"] == "FAIL" and "cluster1" in check["message"]
    assert "certificate verify failed" in check["message"]


# === issue 21, items 6 and 7: environment variables, istioctl, unreadable CA files,
# ca.workloadCertTTL, certs.rotate --force.  One block, apart from the cases above.
# Each case: one line on stderr naming what is wrong (the variable, the file, the key),
# its exit code, no traceback, nothing written.


def _two_loadable(tmp: Path, *, user: dict | None = None) -> Path:
    """Both clusters with a kubeconfig that loads (nothing listens on its port)."""
    kc = _kubeconfig(tmp, tls_servers.free_port_url(), user=user)
    doc = yaml.safe_load(kc.read_text())
    doc["contexts"].append({"name": "ctx2", "context": {"cluster": "c", "user": "u"}})
    kc.write_text(yaml.safe_dump(doc))
    return write_folder(tmp, [cluster_doc("cluster1", kubeconfig=str(kc), context="ctx"),
                              cluster_doc("cluster2", network="network2", kubeconfig=str(kc),
                                          context="ctx2")])


def _script(tmp: Path, body: str) -> Path:
    path = tmp / "fake-istioctl"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def _encrypted(key: pki.PrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.BestAvailableEncryption(b"pw"))


@dataclass
class EnvCase:
    id: str
    args: tuple[str, ...]
    env: Callable[[Path], dict[str, str]]
    needles: tuple[str, ...]
    code: int = 2
    setup: Callable[[Path], Path] = _two_loadable


def _env(**values: str) -> Callable[[Path], dict[str, str]]:
    return lambda tmp: values


def _istioctl(body: str | None = None, *, kind: str = "script") -> Callable[[Path], dict]:
    def make(tmp: Path) -> dict[str, str]:
        if kind == "folder":
            (tmp / "istioctl-dir").mkdir()
            return {"MESHCTL_ISTIOCTL": str(tmp / "istioctl-dir")}
        path = _script(tmp, body or "")
        if kind == "not-executable":
            path.chmod(0o644)
        if kind == "not-a-program":
            path.write_bytes(b"\x7fELF" + bytes(range(256)))  # exec: Exec format error
        return {"MESHCTL_ISTIOCTL": str(path)}
    return make


def _client_cert_user() -> dict:
    key = pki.generate_key("ecdsa-p256")
    cert = pki.self_signed_ca(subject=pki.name(common_name="admin"), key=key, days=1)
    return {"client-certificate-data": base64.b64encode(pki.cert_pem(cert)).decode(),
            "client-key-data": base64.b64encode(pki.key_pem(key)).decode()}


def _with_client_cert(tmp: Path) -> Path:
    return _two_loadable(tmp, user=_client_cert_user())


STATUS = ("status", "--cluster", "cluster1")
LINK = ("link", "--main", "cluster1", "--remote", "cluster2")
ENV_CASES = [
    EnvCase("env-api-deadline-not-a-number", STATUS, _env(MESHCTL_API_DEADLINE="abc"),
            ("MESHCTL_API_DEADLINE='abc'", "not a number")),
    EnvCase("env-api-deadline-negative", STATUS, _env(MESHCTL_API_DEADLINE="-1"),
            ("MESHCTL_API_DEADLINE='-1'", "at least 0")),
    EnvCase("env-api-deadline-nan", STATUS, _env(MESHCTL_API_DEADLINE="nan"),
            ("MESHCTL_API_DEADLINE='nan'", "not a finite number")),
    EnvCase("env-api-deadline-inf", STATUS, _env(MESHCTL_API_DEADLINE="inf"),
            ("MESHCTL_API_DEADLINE='inf'", "not a finite number")),
    EnvCase("env-api-deadline-overflow", STATUS, _env(MESHCTL_API_DEADLINE="1e999"),
            ("MESHCTL_API_DEADLINE='1e999'",)),
    EnvCase("env-api-deadline-two-words", ("certs.status", "--cluster", "cluster1"),
            _env(MESHCTL_API_DEADLINE="6 0"), ("MESHCTL_API_DEADLINE='6 0'",)),
    EnvCase("env-istioctl-a-folder", LINK, _istioctl(kind="folder"),
            ("istioctl not found", "MESHCTL_ISTIOCTL=")),
    EnvCase("env-istioctl-not-executable", LINK, _istioctl(kind="not-executable"),
            ("istioctl not found", "MESHCTL_ISTIOCTL=")),
    EnvCase("env-istioctl-not-a-program", LINK, _istioctl(kind="not-a-program"),
            ("MESHCTL_ISTIOCTL=", "cannot run it", "Exec format error")),
    EnvCase("env-istioctl-fails", LINK, _istioctl("echo 'unknown flag: -o' >&2; exit 1\n"),
            ("MESHCTL_ISTIOCTL=", "unexpected output", "unknown flag: -o"), code=3),
    EnvCase("env-istioctl-version-not-a-string", LINK,
            _istioctl("""echo '{"clientVersion": {"version": 131}}'\n"""),
            ("MESHCTL_ISTIOCTL=", "unexpected output"), code=3),
    EnvCase("env-xdg-cache-home-a-file", STATUS, _env(XDG_CACHE_HOME="/dev/null"),
            ("$XDG_CACHE_HOME", "/dev/null/meshctl/scratch", "Not a directory"),
            setup=_with_client_cert),
]


@pytest.mark.parametrize("case", ENV_CASES, ids=[c.id for c in ENV_CASES])
def test_env_and_istioctl_refused_in_one_line(tmp_path: Path, case: EnvCase) -> None:
    folder = case.setup(tmp_path)
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache"), "MESHCTL_API_DEADLINE": "1",
           **case.env(tmp_path)}
    before = _tree(tmp_path)
    result = meshctl(*case.args, "--clusters-dir", str(folder), cwd=tmp_path, env=env)
    assert_one_line_error(result, case.code, *case.needles)
    assert _tree(tmp_path) == before
    assert TOKEN not in result.stdout + result.stderr


def test_bad_api_deadline_does_not_break_commands_that_need_no_api(tmp_path: Path) -> None:
    """It used to be read at import: --help and a dry-run died with a ValueError."""
    folder = _folder(tmp_path)
    env = {"MESHCTL_API_DEADLINE": "abc"}
    assert meshctl("--help", env=env).returncode == 0
    dry = meshctl("bootstrap", "--main", "cluster1", "--remote", "cluster2", "--dry-run",
                  "--clusters-dir", str(folder), "--out", str(tmp_path / "out"), env=env)
    assert dry.returncode == 0 and "Traceback" not in dry.stderr, dry.stderr


def test_columns_zero_still_prints_the_plan(tmp_path: Path) -> None:
    """rich took COLUMNS=0 as a width of 0: the dry-run's plan vanished, exit 0."""
    folder = _folder(tmp_path)
    runs = {c: meshctl("bootstrap", "--main", "cluster1", "--remote", "cluster2",
                       "--dry-run", "--clusters-dir", str(folder), "--out",
                       str(tmp_path / f"out{c}"), env={"COLUMNS": c}) for c in ("0", "80")}
    assert runs["0"].returncode == 0 and "cluster2" in runs["0"].stdout
    assert runs["0"].stdout == runs["80"].stdout.replace(str(tmp_path / "out80"),
                                                        str(tmp_path / "out0"))


def test_istioctl_that_never_answers_is_one_error(tmp_path: Path) -> None:
    """istio.find used to let TimeoutExpired escape (a hung program, or not istioctl)."""
    import os

    from meshctl import istio

    hung = _script(tmp_path, "exec sleep 30\n")
    old = os.environ.get("MESHCTL_ISTIOCTL")
    os.environ["MESHCTL_ISTIOCTL"] = str(hung)
    try:
        with pytest.raises(MeshctlError) as info:
            istio.find(timeout=0.5)
    finally:
        if old is None:
            del os.environ["MESHCTL_ISTIOCTL"]
        else:
            os.environ["MESHCTL_ISTIOCTL"] = old
    message = str(info.value)
    assert info.value.exit_code == 3 and "\n" not in message
    assert "no answer within 0s" not in message and "MESHCTL_ISTIOCTL=" in message
    assert "no answer within" in message


# --- CA files in ca.dir that do not parse, and lifetimes ----------------------------------


def _encrypted_root_key(tmp: Path) -> Path:
    key = pki.generate_key("ecdsa-p256")
    cert = pki.self_signed_ca(subject=pki.name(common_name="r"), key=key, days=9)
    return _root_files(tmp, pki.cert_pem(cert), _encrypted(key))


def _ed25519_root_key(tmp: Path) -> Path:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = pki.generate_key("ecdsa-p256")
    cert = pki.self_signed_ca(subject=pki.name(common_name="r"), key=key, days=9)
    other = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    return _root_files(tmp, pki.cert_pem(cert), other)


def _encrypted_intermediate_key(tmp: Path) -> Path:
    folder = _folder(tmp)
    assert meshctl("certs.init", "--clusters-dir", str(folder)).returncode == 0
    assert meshctl("certs.issue", "--no-apply", "--cluster", "cluster1",
                   "--clusters-dir", str(folder)).returncode == 0
    key = tmp / "ca" / "cluster1" / "ca-key.pem"
    key.write_bytes(_encrypted(pki.load_key(key.read_bytes())))
    return folder


def _expired_root_two(tmp: Path) -> Path:
    _expired_root(tmp)
    return _two_loadable(tmp)


def _junk_rotation_time(tmp: Path) -> Path:
    folder = _two_loadable(tmp)
    assert meshctl("certs.init", "--clusters-dir", str(folder)).returncode == 0
    (tmp / "ca" / "rotation.json").write_text(json.dumps({
        "old_root": "A", "new_root": "B", "step": 2, "complete": True,
        "clusters": ["cluster1", "cluster2"], "started": "t", "updated": "t",
        "step2_finished": "after lunch"}))
    return folder


CA_CASES = [
    CliCase("root-key-encrypted", ISSUE, ("root-key.pem is unreadable or not PEM",
                                          "the private key is encrypted"),
            setup=_encrypted_root_key),
    CliCase("root-key-ed25519", ISSUE, ("root-key.pem", "unsupported private key type"),
            setup=_ed25519_root_key),
    CliCase("intermediate-key-encrypted", ISSUE,
            ("cluster1", "ca-key.pem: the private key is encrypted"),
            setup=_encrypted_intermediate_key),
    CliCase("rotate-cluster-under-expired-root", ("certs.rotate", "--cluster", "cluster1"),
            ("root-cert.pem expired", "no intermediate is issued"), setup=_expired_root_two),
    CliCase("rotation-state-time-junk", ("certs.status",),
            ("rotation.json", "unreadable root rotation state"), setup=_junk_rotation_time),
    CliCase("rotate-force-without-step-3", ("certs.rotate", "--cluster", "cluster1",
                                            "--force"),
            ("--force only goes with --root --step 3",)),
    CliCase("rotate-force-with-step-2", ("certs.rotate", "--root", "--step", "2", "--force"),
            ("--force only goes with --root --step 3",)),
]


@pytest.mark.parametrize("case", CA_CASES, ids=[c.id for c in CA_CASES])
def test_ca_files_and_rotate_flags_refused(tmp_path: Path, case: CliCase) -> None:
    folder = (case.setup or _plain)(tmp_path)
    _run_cli(tmp_path, *case.args, "--clusters-dir", str(folder), code=case.code,
             needles=case.needles)


TTL_CASES = [
    ("ttl-bare-number", 24, "24"), ("ttl-bare-number-text", "24", "'24'"),
    ("ttl-not-a-duration", "a day", "'a day'"), ("ttl-zero", "0s", "longer than 0"),
    ("ttl-negative", "-1h", "longer than 0"), ("ttl-space-inside", "1h 30m", "'1h 30m'"),
    ("ttl-unknown-unit", "1d", "'1d'"), ("ttl-a-list", ["24h"], "['24h']"),
]


@pytest.mark.parametrize("value,needle", [c[1:] for c in TTL_CASES],
                         ids=[c[0] for c in TTL_CASES])
def test_workload_cert_ttl_refused(tmp_path: Path, value: object, needle: str) -> None:
    mesh = {**mesh_doc(tmp_path)}
    mesh["ca"] = {**mesh["ca"], "workloadCertTTL": value}
    folder = write_folder(tmp_path, [cluster_doc("cluster1"),
                                     cluster_doc("cluster2", network="network2")], mesh)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    result = meshctl("bootstrap", "--main", "cluster1", "--remote", "cluster2", "--dry-run",
                     "--clusters-dir", str(folder), "--out", str(tmp_path / "out"))
    assert_one_line_error(result, 2, "mesh.yaml", "'ca.workloadCertTTL'", needle)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


SANDBOX_ENV_CASES = [
    ("env-sandbox-istiod-typo", {"MESHCTL_SANDBOX_ISTIOD": "of"},
     ("MESHCTL_SANDBOX_ISTIOD='of'", "expected on or off")),
    ("env-sandbox-gogc-not-a-number", {"MESHCTL_SANDBOX_GOGC": "lots"},
     ("MESHCTL_SANDBOX_GOGC='lots'", "not a whole number")),
    ("env-sandbox-slot-out-of-range", {"MESHCTL_SANDBOX_SLOT": "12"},
     ("MESHCTL_SANDBOX_SLOT='12'", "0 to 9")),
]


@pytest.mark.parametrize("env,needles", [c[1:] for c in SANDBOX_ENV_CASES],
                         ids=[c[0] for c in SANDBOX_ENV_CASES])
def test_sandbox_env_refused_before_anything_starts(tmp_path: Path, env: dict,
                                                    needles: tuple[str, ...]) -> None:
    """sandbox.up reads its variables before it looks for binaries or starts a process
    (Go took a junk GOGC silently as 100; 'of' meant 'on'); the state folder is not made.
    The binaries folder is empty, so a run that got past the variables would stop at
    'binaries missing' instead, never start a cluster."""
    (tmp_path / "bin").mkdir()
    before = _tree(tmp_path)
    result = meshctl("sandbox.up", "--clusters", "1", cwd=tmp_path, env={
        "MESHCTL_SANDBOX_BIN": str(tmp_path / "bin"),
        "MESHCTL_SANDBOX_DIR": str(tmp_path / "sbx"), **env})
    assert_one_line_error(result, 2, *needles)
    assert _tree(tmp_path) == before
