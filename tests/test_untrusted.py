"""Issue 12 on the sandbox: what a cluster hands meshctl runs nothing on this machine, and
every connection failure is one line naming the cluster and the cause.

Tampered remote secret: cluster1's ``istio-remote-secret-cluster2`` is rewritten to carry
an exec plugin (whose command would create a marker file), a ``tokenFile``, client
certificate/key paths, an auth-provider, a YAML list, binary junk or an alias bomb.  For
each, ``verify``, ``status``, ``certs.status`` and ``preflight`` run: the marker never
appears, there is no traceback, verify FAILs naming the Secret and the field, status
lists it as refused.  Then a plain ``bootstrap`` re-run puts the real secret back and
says whose field it took over (the tampering client's, under server-side apply).

TLS: a kubeconfig for cluster1 that trusts cluster2's CA, and one whose server is a
plain-HTTP listener: ``preflight``, ``status`` and ``certs.status`` each name the cluster
and the cause in one line and exit 1 or 3.

What this does not show: anything about traffic (no containers in the sandbox).
"""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client as k8s

from tests import tls_servers
from tests.factories import meshctl
from tests.sandbox_fixtures import SandboxFactory, SandboxHandle
from tests.traffic_sandbox import bootstrapped

pytestmark = pytest.mark.sandbox

NS = "istio-system"
SECRET = "istio-remote-secret-cluster2"


@pytest.fixture(scope="module")
def mesh(sandbox_factory: SandboxFactory) -> SandboxHandle:
    return bootstrapped(sandbox_factory)


def _alias_bomb() -> bytes:
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for i in range(9):
        prev, cur = chr(97 + i), chr(98 + i)
        lines.append(f"{cur}: &{cur} [" + ", ".join([f"*{prev}"] * 9) + "]")
    return ("\n".join(lines) + "\n").encode()


def _with_user(user: dict) -> Callable[[dict, Path], bytes]:
    def make(real: dict, tmp: Path) -> bytes:
        doc = json.loads(json.dumps(real))
        doc["users"][0]["user"] = {k: (v.replace("MARKER", str(tmp / "marker"))
                                       if isinstance(v, str) else v)
                                   for k, v in user.items()}
        if "exec" in user:
            doc["users"][0]["user"]["exec"]["args"] = ["-c", f"touch {tmp / 'marker'}"]
        return yaml.safe_dump(doc).encode()
    return make


TAMPERED: dict[str, tuple[Callable[[dict, Path], bytes], str]] = {
    "exec-plugin": (_with_user({"exec": {"apiVersion": "client.authentication.k8s.io/v1",
                                         "command": "sh", "args": [],
                                         "interactiveMode": "Never"}}),
                    "users[0].user.exec"),
    "token-file": (_with_user({"tokenFile": "/etc/hostname"}), "users[0].user.tokenFile"),
    "client-key-path": (_with_user({"client-certificate": "/etc/hostname",
                                    "client-key": "/etc/hostname"}),
                        "users[0].user.client-certificate"),
    "auth-provider": (_with_user({"auth-provider": {"name": "gcp", "config": {
        "cmd-path": "sh", "cmd-args": "-c 'touch MARKER'"}}}), "users[0].user.auth-provider"),
    "yaml-list": (lambda real, tmp: b"- apiVersion: v1\n- kind: Config\n", "is a list"),
    "binary-junk": (lambda real, tmp: bytes(range(256)) * 8, "binary data"),
    "alias-bomb": (lambda real, tmp: _alias_bomb(), "YAML anchors are not allowed"),
}


@pytest.fixture
def saved_secret(mesh: SandboxHandle) -> Iterator[k8s.V1Secret]:
    core = mesh[0].core()
    saved = core.read_namespaced_secret(SECRET, NS)
    yield saved
    current = core.read_namespaced_secret(SECRET, NS)
    if current.data != saved.data:  # bootstrap did not repair it: put it back for the others
        core.patch_namespaced_secret(SECRET, NS, {"data": saved.data})


def _run(mesh: SandboxHandle, *args: str):
    result = meshctl(*args, "--clusters-dir", str(mesh.clusters_dir), env=mesh.env())
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return result


@pytest.mark.parametrize("kind", list(TAMPERED), ids=list(TAMPERED))
def test_tampered_remote_secret_runs_nothing(mesh: SandboxHandle, tmp_path: Path,
                                             saved_secret: k8s.V1Secret, kind: str) -> None:
    _, field = TAMPERED[kind]
    real = _tamper(mesh, saved_secret, kind, tmp_path)
    marker = tmp_path / "marker"

    verify = _run(mesh, "verify", "--main", "cluster1", "--remote", "cluster2", "--json",
                  "--requests", "1", "--timeout", "60")
    assert verify.returncode == 1
    checks = {c["name"]: c for c in json.loads(verify.stdout)["checks"]}
    link = checks["remote secret cluster2 on cluster1"]
    assert link["status"] == "FAIL"
    assert f"Secret istio-system/{SECRET}" in link["message"] and field in link["message"]
    assert checks["remote secret cluster1 on cluster2"]["status"] == "PASS"

    status = _run(mesh, "status", "--json")
    assert status.returncode == 0, status.stderr
    rows = {r["name"]: r for r in json.loads(status.stdout)["clusters"]}
    assert rows["cluster1"]["links"] == []
    [refused] = rows["cluster1"]["link_errors"]
    assert SECRET in refused and field in refused

    certs_status = _run(mesh, "certs.status")
    assert certs_status.returncode in (0, 1)
    preflight = _run(mesh, "preflight", "--cluster", "cluster1", "--cluster", "cluster2")
    assert preflight.returncode in (0, 1)
    real_token = real["users"][0]["user"]["token"]
    for result in (verify, status, certs_status, preflight):
        assert real_token not in result.stdout + result.stderr
    assert not marker.exists(), "a command from a remote secret ran on this machine"



def _tamper(mesh: SandboxHandle, saved: k8s.V1Secret, kind: str, tmp: Path) -> dict:
    make, _ = TAMPERED[kind]
    real = yaml.safe_load(base64.b64decode(saved.data["cluster2"]))
    mesh[0].core().patch_namespaced_secret(
        SECRET, NS, {"data": {"cluster2": base64.b64encode(make(real, tmp)).decode()}})
    return real


def test_plain_bootstrap_repairs_a_tampered_secret(mesh: SandboxHandle, tmp_path: Path,
                                                   saved_secret: k8s.V1Secret) -> None:
    _tamper(mesh, saved_secret, "exec-plugin", tmp_path)
    repair = _run(mesh, "bootstrap", "--main", "cluster1", "--remote", "cluster2")
    assert not (tmp_path / "marker").exists()
    assert repair.returncode == 0, (repair.stdout[-2000:], repair.stderr[-2000:])
    assert "took over" in repair.stderr  # said, never silent
    assert "--force" not in repair.stderr  # and not blamed on a flag nobody gave
    again = mesh[0].core().read_namespaced_secret(SECRET, NS)
    fixed = yaml.safe_load(base64.b64decode(again.data["cluster2"]))
    assert set(fixed["users"][0]["user"]) == {"token"}


# --- TLS failures ----------------------------------------------------------------------


def _clusters_dir(mesh: SandboxHandle, tmp: Path, edit: Callable[[dict], None]) -> Path:
    """A copy of the sandbox's cluster files whose cluster1 uses an edited kubeconfig."""
    kubeconfig = yaml.safe_load(mesh.kubeconfig.read_text())
    edit(kubeconfig)
    path = tmp / "kubeconfig"
    path.write_text(yaml.safe_dump(kubeconfig))
    folder = tmp / "clusters"
    shutil.copytree(mesh.clusters_dir, folder)
    doc = yaml.safe_load((folder / "cluster1.yaml").read_text())
    doc["kubeconfig"] = str(path)
    (folder / "cluster1.yaml").write_text(yaml.safe_dump(doc))
    return folder


def _cluster(doc: dict, name: str) -> dict:
    return next(c["cluster"] for c in doc["clusters"] if c["name"] == name)


def _trust_other_ca(doc: dict) -> None:
    _cluster(doc, "cluster1")["certificate-authority-data"] = \
        _cluster(doc, "cluster2")["certificate-authority-data"]


def _check_tls(folder: Path, mesh: SandboxHandle, cause: str) -> None:
    env = mesh.env()
    pre = meshctl("preflight", "--cluster", "cluster1", "--json", "--clusters-dir", str(folder),
                  env=env)
    assert pre.returncode in (1, 3) and "Traceback" not in pre.stderr, pre.stderr
    [cluster] = json.loads(pre.stdout)["clusters"]
    api = next(r for r in cluster["results"] if r["check"] == "api")
    assert api["status"] == "FAIL" and "cluster1" in api["message"] and cause in api["message"]
    assert "\n" not in api["message"]

    status = meshctl("status", "--cluster", "cluster1", "--clusters-dir", str(folder), env=env)
    lines = [ln for ln in status.stderr.splitlines() if ln.strip()]
    assert status.returncode == 3 and "Traceback" not in status.stderr
    assert len(lines) == 1 and "cluster1" in lines[0] and cause in lines[0], status.stderr

    cs = meshctl("certs.status", "--cluster", "cluster1", "--json", "--clusters-dir",
                 str(folder), env=env)
    assert cs.returncode == 1 and "Traceback" not in cs.stderr, cs.stderr
    [row] = json.loads(cs.stdout)["clusters"]
    [check] = row["checks"]
    assert row["level"] == "FAIL" and "cluster1" in check["message"]
    assert cause in check["message"] and "\n" not in check["message"]


def test_kubeconfig_trusting_the_other_clusters_ca(mesh: SandboxHandle, tmp_path: Path) -> None:
    folder = _clusters_dir(mesh, tmp_path, _trust_other_ca)
    _check_tls(folder, mesh, "certificate verify failed")


def test_kubeconfig_pointing_at_plain_http(mesh: SandboxHandle, tmp_path: Path) -> None:
    with tls_servers.http_server() as url:
        folder = _clusters_dir(mesh, tmp_path,
                               lambda doc: _cluster(doc, "cluster1").update(server=url))
        _check_tls(folder, mesh, "does not speak TLS")


def test_remote_secret_trusting_the_wrong_ca_is_a_fail_row(
        mesh: SandboxHandle, saved_secret: k8s.V1Secret) -> None:
    """An allowed kubeconfig whose CA is not the server's: verify's check connects, and the
    TLS failure is that check's FAIL with the cause in words, not a traceback."""
    real = yaml.safe_load(base64.b64decode(saved_secret.data["cluster2"]))
    own = yaml.safe_load(mesh.kubeconfig.read_text())
    real["clusters"][0]["cluster"]["certificate-authority-data"] = _cluster(
        own, "cluster1")["certificate-authority-data"]
    mesh[0].core().patch_namespaced_secret(SECRET, NS, {"data": {
        "cluster2": base64.b64encode(yaml.safe_dump(real).encode()).decode()}})
    result = _run(mesh, "verify", "--main", "cluster1", "--remote", "cluster2", "--json",
                  "--requests", "1", "--timeout", "60")
    assert result.returncode == 1
    link = {c["name"]: c for c in json.loads(result.stdout)["checks"]}[
        "remote secret cluster2 on cluster1"]
    assert link["status"] == "FAIL" and "\n" not in link["message"]
    assert f"Secret istio-system/{SECRET}" in link["message"]
    assert "certificate verify failed" in link["message"]
