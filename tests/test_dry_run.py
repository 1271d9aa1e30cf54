"""``bootstrap --dry-run``: every file it would apply, plan.json, and not one connection."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import threading
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from meshctl import config, topology
from meshctl.ca import pki
from meshctl.mesh import bootstrap, dry_run
from tests.factories import REPO, cluster_doc, mesh_doc, meshctl, write_folder


class Listener:
    """A TCP port on loopback that counts every connection made to it."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


def kubeconfig_pointing_at(path: Path, port: int, contexts: list[str]) -> Path:
    doc = {"apiVersion": "v1", "kind": "Config", "current-context": contexts[0],
           "clusters": [{"name": c, "cluster": {"server": f"https://127.0.0.1:{port}"}}
                        for c in contexts],
           "users": [{"name": "u", "user": {"token": "not-a-real-token"}}],
           "contexts": [{"name": c, "context": {"cluster": c, "user": "u"}} for c in contexts]}
    path.write_text(yaml.safe_dump(doc))
    return path


def test_dry_run_contacts_no_cluster(tmp_path: Path) -> None:
    listener = Listener()
    try:
        kc = kubeconfig_pointing_at(tmp_path / "kubeconfig", listener.port, ["c1", "c2"])
        folder = write_folder(tmp_path, [
            cluster_doc("cluster1", context="c1", kubeconfig=str(kc), apiServer=None),
            cluster_doc("cluster2", context="c2", kubeconfig=str(kc), network="network2",
                        apiServer=None)])
        result = meshctl("bootstrap", "--main", "cluster1", "--remote", "cluster2", "--dry-run",
                         "--clusters-dir", str(folder), "--out", str(tmp_path / "out"),
                         env={"KUBECONFIG": str(kc)})
    finally:
        listener.close()
    assert result.returncode == 0, result.stderr
    assert listener.accepted == 0
    assert "no cluster was contacted" in result.stdout


def test_example_dry_run_writes_everything(tmp_path: Path) -> None:
    """The README's main job, on the shipped clusters/ folder (a copy, so that a root a
    developer made beside the example cannot change it), from a clean working dir."""
    shutil.copytree(REPO / "clusters", tmp_path / "clusters")
    result = meshctl("bootstrap", "--main", "cluster1", "--remote", "cluster2", "--dry-run",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out"
    for cluster in ("cluster1", "cluster2"):
        names = sorted(p.name for p in (out / cluster).iterdir())
        assert names == sorted(["ca-cert.pem", "ca-key.pem", "root-cert.pem", "cert-chain.pem",
                                "cacerts.yaml", "namespace.yaml", "istio-operator.yaml",
                                "eastwest-gateway.yaml", "expose-services.yaml",
                                dry_run.INTERMEDIATE_FILE])
        for private in ("ca-key.pem", "cacerts.yaml"):
            assert stat.S_IMODE(os.stat(out / cluster / private).st_mode) == 0o600
        # ephemeral CA material says so in its first line (issue 21, item 1)
        for name in ("ca-cert.pem", "ca-key.pem", "root-cert.pem", "cert-chain.pem",
                     "cacerts.yaml"):
            first = (out / cluster / name).read_text().splitlines()[0]
            assert "EPHEMERAL" in first, (name, first)
        verify = subprocess.run(["openssl", "verify", "-CAfile", out / cluster / "root-cert.pem",
                                 out / cluster / "ca-cert.pem"], capture_output=True, text=True)
        assert verify.returncode == 0, verify.stderr
    roots = {(out / c / "root-cert.pem").read_bytes() for c in ("cluster1", "cluster2")}
    assert len(roots) == 1, "both clusters must share one root"
    plan = json.loads((out / "plan.json").read_text())
    assert plan["ca"]["root"] == "ephemeral" and "EPHEMERAL" in plan["ca"]["ephemeral"]
    assert plan["ca"]["intermediates"]["cluster1"]["status"] == "ephemeral"
    assert not (tmp_path / ".meshctl").exists(), "a dry-run must not create CA state"
    assert not (tmp_path / "clusters" / ".meshctl").exists()
    assert "BEGIN" not in result.stdout + result.stderr
    assert "EPHEMERAL root" in " ".join(result.stdout.split())
    secret = yaml.safe_load((out / "cluster1" / "cacerts.yaml").read_text())
    assert sorted(secret["data"]) == ["ca-cert.pem", "ca-key.pem", "cert-chain.pem",
                                      "root-cert.pem"]


def test_plan_json_steps_and_placeholders(tmp_path: Path) -> None:
    folder = write_folder(tmp_path, [cluster_doc("c1"),
                                     cluster_doc("c2", role="remote", network="n2")])
    cfg = config.load(folder)
    plan = topology.plan(cfg, "c1", ["c2"])
    result = bootstrap.dry_run(cfg, plan, tmp_path / "out")
    doc = json.loads((tmp_path / "out" / "plan.json").read_text())
    assert doc["mesh"]["model"] == topology.PRIMARY_REMOTE
    steps = doc["steps"]
    assert [s["order"] for s in steps] == list(range(1, len(steps) + 1))
    assert all({"cluster", "action", "objects", "live", "files", "needs"} <= set(s)
               for s in steps)
    assert not any(s["live"] for s in steps if s["cluster"] is None)
    # the remote's install waits for the main's east-west address, named, not invented
    placeholder = topology.east_west_placeholder("c1")
    remote_install = next(s for s in steps if s["cluster"] == "c2"
                          and s["action"] == "istioctl install")
    assert placeholder in remote_install["needs"] and placeholder in doc["placeholders"]
    iop = yaml.safe_load((tmp_path / "out" / "c2" / "istio-operator.yaml").read_text())
    assert iop["spec"]["values"]["global"]["remotePilotAddress"] == placeholder
    # the link needs a token only a live cluster can give
    link = next(s for s in steps if s["action"] == "link")
    assert link["cluster"] == "c1" and link["needs"] == ["<service-account-token:c2>"]
    # every file a step names was written
    for s in steps:
        for f in s["files"]:
            assert (tmp_path / "out" / f).is_file(), f
    assert result.root_source == "ephemeral"


def _pem_certs(out: Path) -> list[tuple[Path, x509.Certificate]]:
    found = []
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if b"BEGIN CERTIFICATE" in data:
            found += [(path, c) for c in x509.load_pem_x509_certificates(data)]
    return found


def _secret_values(path: Path) -> dict[str, str]:
    return yaml.safe_load(path.read_text())["data"]


def test_dry_run_uses_existing_root_and_intermediates(tmp_path: Path) -> None:
    folder = write_folder(tmp_path, [cluster_doc("c1"), cluster_doc("c2")])
    assert meshctl("certs.init", "--clusters-dir", str(folder)).returncode == 0
    assert meshctl("certs.issue", "--no-apply", "--clusters-dir",
                   str(folder)).returncode == 0
    out = tmp_path / "out"
    result = meshctl("bootstrap", "--main", "c1", "--remote", "c2", "--dry-run",
                     "--clusters-dir", str(folder), "--out", str(out))
    assert result.returncode == 0, result.stderr
    for name in ("ca-cert.pem", "cert-chain.pem", "root-cert.pem"):  # what will be applied
        assert (out / "c1" / name).read_bytes() == (tmp_path / "ca" / "c1" / name).read_bytes()
    plan = json.loads((out / "plan.json").read_text())
    assert plan["ca"]["root"] == "existing"
    assert plan["ca"]["intermediates"]["c1"]["status"] == "existing"
    # the intermediate's key stays in ca.dir: a named placeholder where it would go
    assert not list(out.rglob("*key.pem"))
    assert _secret_values(out / "c1" / "cacerts.yaml")["ca-key.pem"] == "<ca-key:c1>"
    assert "<ca-key:c1>" in plan["placeholders"]


def test_dry_run_never_signs_with_the_real_root(tmp_path: Path) -> None:
    """Issue 21, item 1: after certs.init, a dry-run minted a 730-day CA:TRUE intermediate
    under the production root and left it in --out with its key.  Now it signs nothing
    with the root, writes no key, and describes the intermediate bootstrap would issue."""
    folder = write_folder(tmp_path, [cluster_doc("c1"), cluster_doc("c2")])
    assert meshctl("certs.init", "--clusters-dir", str(folder)).returncode == 0
    ca = tmp_path / "ca"
    before = {p: p.read_bytes() for p in ca.rglob("*") if p.is_file()}
    root = x509.load_pem_x509_certificate((ca / "root-cert.pem").read_bytes())
    out = tmp_path / "out"
    for _ in range(2):
        result = meshctl("bootstrap", "--main", "c1", "--remote", "c2", "--dry-run",
                         "--clusters-dir", str(folder), "--out", str(out))
        assert result.returncode == 0, result.stderr
    assert {p: p.read_bytes() for p in ca.rglob("*") if p.is_file()} == before
    assert not [p for p in out.rglob("*") if p.is_file() and b"PRIVATE KEY" in p.read_bytes()]
    signed = [(p, c) for p, c in _pem_certs(out) if c != root and c.issuer == root.subject]
    assert not signed, [str(p) for p, _ in signed]
    for cluster in ("c1", "c2"):
        assert sorted(p.name for p in (out / cluster).glob("*.pem")) == ["root-cert.pem"]
        values = _secret_values(out / cluster / "cacerts.yaml")
        assert {k: v for k, v in values.items() if k != "root-cert.pem"} == {
            "ca-cert.pem": f"<ca-cert:{cluster}>", "ca-key.pem": f"<ca-key:{cluster}>",
            "cert-chain.pem": f"<cert-chain:{cluster}>"}
        described = json.loads((out / cluster / dry_run.INTERMEDIATE_FILE).read_text())
        assert described["status"] == "to be issued" and described["serial"] is None
        assert described["subject"] == f"L={cluster},CN=Intermediate CA,O=meshctl-test"
        assert described["subjectAltNames"] == ["DNS:istiod.istio-system.svc"]
        assert described["basicConstraints"] == {"ca": True, "pathLength": 0}
        assert described["issuer"] == {"subject": root.subject.rfc4514_string(),
                                       "sha256Fingerprint": pki.fingerprint(root)}
        days = (datetime.fromisoformat(described["notAfter"])
                - datetime.fromisoformat(described["notBefore"])).days
        assert days == 730
    plan = json.loads((out / "plan.json").read_text())
    assert plan["ca"]["rootFingerprint"] == pki.fingerprint(root)
    step = next(s for s in plan["steps"] if s["action"] == "intermediate CA")
    assert step["files"] == ["c1/root-cert.pem", f"c1/{dry_run.INTERMEDIATE_FILE}"]


def test_rerun_replaces_files_of_an_older_plan(tmp_path: Path) -> None:
    folder = write_folder(tmp_path, [cluster_doc("c1"), cluster_doc("c2", network="n2")])
    out = tmp_path / "out"
    assert meshctl("bootstrap", "--main", "c1", "--remote", "c2", "--dry-run", "--clusters-dir",
                   str(folder), "--out", str(out)).returncode == 0
    assert (out / "c1" / "expose-services.yaml").exists()
    (folder / "c2.yaml").write_text(yaml.safe_dump(cluster_doc("c2")))  # now one network
    assert meshctl("bootstrap", "--main", "c1", "--remote", "c2", "--dry-run", "--clusters-dir",
                   str(folder), "--out", str(out)).returncode == 0
    assert not (out / "c1" / "expose-services.yaml").exists()


def test_rerun_removes_only_what_a_dry_run_wrote(tmp_path: Path) -> None:
    """Issue 21, item 9: the sweep took every *.yaml and *.pem under --out/<cluster>/."""
    folder = write_folder(tmp_path, [cluster_doc("c1"), cluster_doc("c2")])
    out = tmp_path / "out"
    args = ("bootstrap", "--main", "c1", "--remote", "c2", "--dry-run", "--clusters-dir",
            str(folder), "--out", str(out))
    assert meshctl(*args).returncode == 0
    mine = {out / "c1" / "values-override.yaml": b"user: data\n",
            out / "c1" / "my-ca.pem": b"not meshctl's\n",
            out / "c3" / "cacerts.yaml": b"a cluster this plan does not name\n"}
    for path, data in mine.items():
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
    # then a root: the ephemeral key files of the first run are the ones to go
    assert meshctl("certs.init", "--clusters-dir", str(folder)).returncode == 0
    result = meshctl(*args)
    assert result.returncode == 0, result.stderr
    assert {p: p.read_bytes() for p in mine} == mine
    assert not (out / "c1" / "ca-key.pem").exists() and not (out / "c1" / "ca-cert.pem").exists()
    assert f"removed {out}/c1/ca-key.pem" in result.stderr


def test_a_record_cannot_reach_outside_out(tmp_path: Path) -> None:
    """The record of written files is read from disk: names that climb out, absolute
    names and deeper paths are not acted on."""
    folder = write_folder(tmp_path, [cluster_doc("c1"), cluster_doc("c2")])
    out = tmp_path / "out"
    victim = tmp_path / "victim.yaml"
    victim.write_text("keep me")
    (out / "c1" / "deep").mkdir(parents=True)
    (out / "c1" / "deep" / "x.yaml").write_text("keep me too")
    (out / dry_run.WRITTEN_FILE).write_text(json.dumps({
        "kind": "DryRunFiles", "files": ["../victim.yaml", "c1/../../victim.yaml",
                                         str(victim), "c1/deep/x.yaml"]}))
    result = meshctl("bootstrap", "--main", "c1", "--remote", "c2", "--dry-run",
                     "--clusters-dir", str(folder), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert victim.read_text() == "keep me"
    assert (out / "c1" / "deep" / "x.yaml").read_text() == "keep me too"


@pytest.mark.parametrize("record", ["[1, 2]", "not json", '{"kind": "DryRunFiles", "files": 7}',
                                    '{"kind": "Other", "files": ["c1/namespace.yaml"]}'])
def test_a_record_of_another_shape_removes_nothing(tmp_path: Path, record: str) -> None:
    folder = write_folder(tmp_path, [cluster_doc("c1"), cluster_doc("c2")])
    out = tmp_path / "out"
    (out / "c9").mkdir(parents=True)
    (out / "c9" / "namespace.yaml").write_text("mine")
    (out / dry_run.WRITTEN_FILE).write_text(record.replace("c1/", "c9/"))
    result = meshctl("bootstrap", "--main", "c1", "--remote", "c2", "--dry-run",
                     "--clusters-dir", str(folder), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert (out / "c9" / "namespace.yaml").read_text() == "mine"


def test_a_key_left_by_an_older_dry_run_is_named_not_removed(tmp_path: Path) -> None:
    folder = write_folder(tmp_path, [cluster_doc("c1"), cluster_doc("c2")])
    assert meshctl("certs.init", "--clusters-dir", str(folder)).returncode == 0
    out = tmp_path / "out"
    (out / "c1").mkdir(parents=True)
    (out / "c1" / "ca-key.pem").write_text("an old dry-run's key")
    result = meshctl("bootstrap", "--main", "c1", "--remote", "c2", "--dry-run",
                     "--clusters-dir", str(folder), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert (out / "c1" / "ca-key.pem").read_text() == "an old dry-run's key"
    assert f"warning: {out}/c1/ca-key.pem: a CA key this dry-run did not write" \
        in " ".join(result.stderr.split())


@pytest.mark.parametrize("tool", ["meshctl", "invoke"])
def test_list_shows_every_task(tool: str) -> None:
    result = meshctl("--list", tool=tool)
    assert result.returncode == 0, result.stderr
    for name in ("preflight", "bootstrap", "install", "link", "unlink", "status", "verify",
                 "canary", "teardown", "certs.init", "certs.issue", "certs.status",
                 "certs.rotate", "sandbox.build", "sandbox.up", "sandbox.down",
                 "sandbox.status"):
        assert name in result.stdout, name


def test_mesh_doc_factory_is_valid(tmp_path: Path) -> None:
    assert config.load(write_folder(tmp_path, [cluster_doc("a")], mesh_doc(tmp_path)))
