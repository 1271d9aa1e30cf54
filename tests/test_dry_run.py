"""``bootstrap --dry-run``: every file it would apply, plan.json, and not one connection."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import threading
from pathlib import Path

import pytest
import yaml

from meshctl import config, topology
from meshctl.mesh import bootstrap
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
    """The README's main job, on the shipped clusters/ folder, from a clean working dir."""
    result = meshctl("bootstrap", "--main", "cluster1", "--remote", "cluster2", "--dry-run",
                     "--clusters-dir", str(REPO / "clusters"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out"
    for cluster in ("cluster1", "cluster2"):
        names = sorted(p.name for p in (out / cluster).iterdir())
        assert names == sorted(["ca-cert.pem", "ca-key.pem", "root-cert.pem", "cert-chain.pem",
                                "cacerts.yaml", "namespace.yaml", "istio-operator.yaml",
                                "eastwest-gateway.yaml", "expose-services.yaml"])
        for private in ("ca-key.pem", "cacerts.yaml"):
            assert stat.S_IMODE(os.stat(out / cluster / private).st_mode) == 0o600
        verify = subprocess.run(["openssl", "verify", "-CAfile", out / cluster / "root-cert.pem",
                                 out / cluster / "ca-cert.pem"], capture_output=True, text=True)
        assert verify.returncode == 0, verify.stderr
    roots = {(out / c / "root-cert.pem").read_bytes() for c in ("cluster1", "cluster2")}
    assert len(roots) == 1, "both clusters must share one root"
    plan = json.loads((out / "plan.json").read_text())
    assert plan["ca"]["root"] == "ephemeral"
    assert not (tmp_path / ".meshctl").exists(), "a dry-run must not create CA state"
    assert "BEGIN" not in result.stdout + result.stderr
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


def test_dry_run_uses_existing_root_and_intermediates(tmp_path: Path) -> None:
    folder = write_folder(tmp_path, [cluster_doc("c1"), cluster_doc("c2")])
    assert meshctl("certs.init", "--clusters-dir", str(folder)).returncode == 0
    assert meshctl("certs.issue", "--no-apply", "--clusters-dir",
                   str(folder)).returncode == 0
    out = tmp_path / "out"
    result = meshctl("bootstrap", "--main", "c1", "--remote", "c2", "--dry-run",
                     "--clusters-dir", str(folder), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert (out / "c1" / "ca-cert.pem").read_bytes() == (tmp_path / "ca" / "c1" /
                                                          "ca-cert.pem").read_bytes()
    assert json.loads((out / "plan.json").read_text())["ca"]["root"] == "existing"
    assert not (out / "root-key.pem").exists()
    assert not list(out.rglob("root-key.pem"))


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
